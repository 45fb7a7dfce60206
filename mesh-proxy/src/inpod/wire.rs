//! One packet in, one packet out, on a non-blocking unix `SOCK_SEQPACKET` socket driven by
//! tokio, with the file descriptors that came along.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mesh_api::inpod::MAX_MESSAGE;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
use tokio::io::unix::AsyncFd;

/// How many descriptors one packet may carry before the kernel truncates the rest. A valid
/// message carries at most one; room for a few more lets us see (and close) extras instead of
/// having the kernel drop them silently.
const MAX_FDS: usize = 4;

/// A received packet.
#[derive(Debug)]
pub struct Packet {
    pub bytes: Vec<u8>,
    /// Received descriptors, owned: whatever is not used is closed when dropped.
    pub fds: Vec<OwnedFd>,
    /// Longer than [`MAX_MESSAGE`] (the tail was discarded) or with too many descriptors.
    pub truncated: bool,
}

/// The next packet, or `None` when the peer closed the connection.
pub async fn recv(socket: &AsyncFd<OwnedFd>) -> io::Result<Option<Packet>> {
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|fd| recv_now(fd.get_ref().as_raw_fd())) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn recv_now(fd: RawFd) -> io::Result<Option<Packet>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for raw in raw {
                    // SAFETY: the kernel just installed `raw` in our table for this message;
                    // nothing else refers to it, so taking ownership here is the only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if len == 0 && fds.is_empty() {
        // SOCK_SEQPACKET has no empty messages from a live peer we send to: zero is EOF.
        return Ok(None);
    }
    buf.truncate(len);
    let truncated = flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok(Some(Packet { bytes: buf, fds, truncated }))
}

pub async fn send_packet(socket: &AsyncFd<OwnedFd>, bytes: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = socket.writable().await?;
        match guard.try_io(|fd| {
            send(fd.get_ref().as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
        }) {
            Ok(result) => return result.map(drop),
            Err(_would_block) => continue,
        }
    }
}

/// Registers a socket with the runtime.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped and always reports the same descriptor; the
    // AsyncFd owns it, so it cannot be closed behind the registration's back.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
