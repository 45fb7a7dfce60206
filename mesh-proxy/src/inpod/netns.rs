//! A pod's network namespace, held by file descriptor, and the two ways the proxy enters it.
//!
//! Sockets belong to the namespace they were created in, whatever thread later uses them. So
//! the proxy never runs its async code inside a pod's namespace: it only *creates* sockets
//! there, then drives them from its ordinary runtime.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::{CloneFlags, setns};
use nix::sys::stat::fstat;

/// The namespace a thread of this process starts in, captured once: where every thread returns
/// to after a visit to a pod.
fn home() -> io::Result<&'static OwnedFd> {
    static HOME: std::sync::OnceLock<Result<OwnedFd, i32>> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| e.raw_os_error().unwrap_or(0))
    })
    .as_ref()
    .map_err(|errno| io::Error::from_raw_os_error(*errno))
}

#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    /// (device, inode) of the namespace: two fds name the same namespace iff these are equal.
    id: (u64, u64),
}

impl PodNetns {
    /// Takes ownership of a descriptor received from the plugin. Checks that it really is a
    /// network namespace by entering it once on a throwaway thread, so a wrong descriptor is
    /// refused at once instead of failing later on the first connection.
    pub fn new(fd: OwnedFd) -> io::Result<PodNetns> {
        let stat = fstat(&fd).map_err(io::Error::from)?;
        #[allow(clippy::unnecessary_cast)] // dev_t/ino_t widths differ between targets
        let netns = PodNetns { fd, id: (stat.st_dev as u64, stat.st_ino as u64) };
        netns.run_on_thread(|| ())?;
        Ok(netns)
    }

    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `f` on a new thread that lives in the pod's namespace and ends with `f`. For work
    /// that takes a while (opening listeners) or may block.
    pub fn run_on_thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let fd = self.fd.try_clone()?;
        std::thread::Builder::new()
            .name("weft-inpod-netns".into())
            .spawn(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("pod netns thread panicked"))?
    }

    /// Runs `f` on the calling thread inside the pod's namespace, then returns the thread to the
    /// proxy's namespace. For creating one socket per connection: two `setns` calls cost far
    /// less than a thread. `f` must not await or block.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = home()?;
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(error) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A runtime thread stuck in a pod's namespace would open every later socket in the
            // wrong place, silently; stopping the proxy is the only safe outcome.
            tracing::error!(%error, "cannot return to the proxy's network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }
}
