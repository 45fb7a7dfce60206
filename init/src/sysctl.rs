//! Setting a network sysctl of the namespace the calling thread is in.
//!
//! A `/proc/sys/net/...` file belongs to the network namespace of the thread that opens it, not
//! to the procfs mount it is reached through, so a thread that has `setns`-ed into a pod sets
//! the pod's value. What can stop it is the mount: a container's `/proc/sys` is a read-only bind
//! mount (runc's `readonlyPaths`). weft-cni runs on the host and never meets that; the enrolment
//! agent, which enrols pods that are already running, runs in a container with `CAP_SYS_ADMIN`
//! (it needs it for `setns`), and so may remount its own `/proc/sys` read-write. The remount
//! changes the agent's mount namespace only; the host's and the pods' views stay as they were.
//! Without the capability (weft-init, an unprivileged init container) the write fails as
//! before, with an error that says why.

use std::io;

use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot set {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error(
        "cannot set {path}: {PROC_SYS} is read-only here and remounting it read-write was refused \
         ({remount}); that needs CAP_SYS_ADMIN and no AppArmor profile denying mount, or \
         weft-cni sets it when the pod starts"
    )]
    ReadOnly { path: String, remount: nix::errno::Errno },
}

/// Writes `value` to the sysctl file `path` (under `/proc/sys`), remounting `/proc/sys`
/// read-write first when it is a read-only mount.
pub fn set(path: &str, value: &str) -> Result<(), SysctlError> {
    let write = || std::fs::write(path, value);
    match write() {
        Err(error) if error.kind() == io::ErrorKind::ReadOnlyFilesystem => {
            remount_writable()
                .map_err(|remount| SysctlError::ReadOnly { path: path.to_string(), remount })?;
            write().map_err(|source| SysctlError::Write { path: path.to_string(), source })
        }
        other => other.map_err(|source| SysctlError::Write { path: path.to_string(), source }),
    }
}

/// Remounts `/proc/sys` read-write, keeping its other flags: a remount that dropped `nosuid`,
/// `nodev` or `noexec` would be refused where they are locked, and would loosen more than the
/// one thing needed.
fn remount_writable() -> Result<(), nix::errno::Errno> {
    let current = statvfs(PROC_SYS)?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (kept, as_mount) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(kept) {
            flags |= as_mount;
        }
    }
    mount(None::<&str>, PROC_SYS, None::<&str>, flags, None::<&str>)
}
