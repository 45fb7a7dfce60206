//! The plugin's side of the proxy's in-pod socket: blocking, one request, one reply.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use mesh_api::inpod::{MAX_MESSAGE, Reply, Request};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg, sendmsg,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("the proxy is not listening on {path}: {source}")]
    Unreachable { path: String, source: nix::Error },
    #[error("the proxy connection failed: {0}")]
    Io(#[from] nix::Error),
    #[error("the proxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the proxy closed the connection without answering")]
    Closed,
    #[error("the proxy answered with something that is not a reply: {0}")]
    BadReply(serde_json::Error),
    #[error("the proxy refused: {0}")]
    Refused(String),
}

/// A connection to the proxy's in-pod socket.
pub struct Connection {
    fd: OwnedFd,
}

impl Connection {
    /// Connects; every later send and receive gives up after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Connection, HandoffError> {
        let unreachable = |source| HandoffError::Unreachable { path: path.display().to_string(), source };
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
            .map_err(unreachable)?;
        let addr = UnixAddr::new(path).map_err(unreachable)?;
        connect(fd.as_raw_fd(), &addr).map_err(unreachable)?;
        let tv =
            TimeVal::new(timeout.as_secs().try_into().unwrap_or(i64::MAX), timeout.subsec_micros().into());
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
        setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        Ok(Connection { fd })
    }

    /// Sends `request` (with `netns` as SCM_RIGHTS for AddPod) and waits for the reply.
    pub fn request(
        &self,
        request: &Request,
        netns: Option<&OwnedFd>,
        timeout: Duration,
    ) -> Result<(), HandoffError> {
        let bytes = request.encode();
        let iov = [IoSlice::new(&bytes)];
        let raw = netns.map(|fd| [fd.as_raw_fd()]);
        let cmsg = raw.as_ref().map(|raw| ControlMessage::ScmRights(raw));
        let cmsgs: Vec<ControlMessage<'_>> = cmsg.into_iter().collect();
        sendmsg::<()>(self.fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let len = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
                Ok(msg) => msg.bytes,
                Err(nix::Error::EAGAIN) => return Err(HandoffError::Timeout(timeout)),
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 {
            return Err(HandoffError::Closed);
        }
        match Reply::decode(&buf[..len]).map_err(HandoffError::BadReply)? {
            Reply::Ack => Ok(()),
            Reply::Error { message } => Err(HandoffError::Refused(message)),
        }
    }

    /// Blocks until the proxy closes the connection (it stopped) or `poll` returns true;
    /// `poll` runs every `interval`.
    pub fn wait_closed(&self, interval: Duration, mut poll: impl FnMut() -> bool) {
        let tv = TimeVal::new(0, interval.as_micros().try_into().unwrap_or(100_000));
        if setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
                Ok(msg) if msg.bytes == 0 => return,
                Ok(_) => {} // the proxy sends nothing unasked; ignore
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
            if poll() {
                return;
            }
        }
    }
}

/// One request on a fresh connection (what a CNI call does).
pub fn send(
    path: &Path,
    request: &Request,
    netns: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<(), HandoffError> {
    Connection::connect(path, timeout)?.request(request, netns, timeout)
}
