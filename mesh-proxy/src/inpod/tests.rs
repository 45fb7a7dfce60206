//! The socket protocol against hostile or confused clients: every bad message gets an error
//! reply, the connection and the server stay usable, and nothing is adopted. Needs no
//! privileges: a descriptor that is not a network namespace is refused before any setns.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_api::inpod::{MAX_MESSAGE, PodInfo, Reply, Request};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, recv, sendmsg, socket,
};

use super::{InpodConfig, InpodServer, Passthrough};

fn client(path: &std::path::Path) -> OwnedFd {
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    connect(fd.as_raw_fd(), &UnixAddr::new(path).expect("addr")).expect("connect");
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )
    .expect("timeout");
    fd
}

fn exchange(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> Reply {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("send");
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("reply");
    Reply::decode(&buf[..n]).expect("reply is json")
}

fn add(uid: &str) -> Vec<u8> {
    Request::AddPod {
        pod: PodInfo { uid: uid.into(), namespace: "ns".into(), name: "p".into(), ..Default::default() },
    }
    .encode()
}

fn is_error(reply: &Reply, needle: &str) -> bool {
    matches!(reply, Reply::Error { message } if message.contains(needle))
}

async fn server(dir: &tempfile::TempDir) -> InpodServer {
    let config = InpodConfig { socket: dir.path().join("inpod.sock"), ..Default::default() };
    InpodServer::start(config, Arc::new(Passthrough)).await.expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_refused_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(&dir).await;
    let path = dir.path().join("inpod.sock");
    let replies = tokio::task::spawn_blocking(move || {
        let c = client(&path);
        let (pipe_r, pipe_w) = nix::unistd::pipe().expect("pipe");
        let too_long = vec![b' '; MAX_MESSAGE + 100];
        vec![
            ("garbage", exchange(&c, b"\x00\xffnot json", &[])),
            ("unknown type", exchange(&c, br#"{"type":"reboot"}"#, &[])),
            ("missing field", exchange(&c, br#"{"type":"add_pod"}"#, &[])),
            ("empty uid", exchange(&c, &add(""), &[pipe_r.as_raw_fd()])),
            ("no fd", exchange(&c, &add("u1"), &[])),
            ("two fds", exchange(&c, &add("u1"), &[pipe_r.as_raw_fd(), pipe_w.as_raw_fd()])),
            ("not a netns", exchange(&c, &add("u1"), &[pipe_r.as_raw_fd()])),
            (
                "fd on del",
                exchange(&c, &Request::DelPod { uid: "u1".into() }.encode(), &[pipe_r.as_raw_fd()]),
            ),
            ("too long", exchange(&c, &too_long, &[])),
            ("del unknown", exchange(&c, &Request::DelPod { uid: "nobody".into() }.encode(), &[])),
            ("snapshot", exchange(&c, &Request::SnapshotSent.encode(), &[])),
        ]
    })
    .await
    .expect("client");
    let expect = [
        ("garbage", "malformed message"),
        ("unknown type", "malformed message"),
        ("missing field", "malformed message"),
        ("empty uid", "without a uid"),
        ("no fd", "exactly one network namespace descriptor, got 0"),
        ("two fds", "got 2"),
        ("not a netns", "not a usable network namespace"),
        ("fd on del", "carries no descriptor"),
        ("too long", "longer than"),
    ];
    for ((name, reply), (want_name, needle)) in replies.iter().zip(expect.iter()) {
        assert_eq!(name, want_name);
        assert!(is_error(reply, needle), "{name}: {reply:?}");
    }
    assert_eq!(replies[9].1, Reply::Ack, "deleting an unknown pod is idempotent");
    assert_eq!(replies[10].1, Reply::Ack);
    assert!(server.pods().is_empty());
    let m = server.metrics();
    assert_eq!(m.malformed_messages.load(Ordering::Relaxed), 8);
    assert_eq!(m.adopt_failures.load(Ordering::Relaxed), 1);
    assert_eq!(m.pods_adopted.load(Ordering::Relaxed), 0);
    assert!(server.render_metrics().contains("weft_inpod_adopt_failures_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_conversation_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = server(&dir).await;
    let path = dir.path().join("inpod.sock");
    let reply = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            let c = client(&path);
            let iov = [IoSlice::new(b"{\"type\":")];
            sendmsg::<()>(c.as_raw_fd(), &iov, &[], MsgFlags::empty(), None).expect("send");
            drop(c); // gone before reading the reply
        }
        exchange(&client(&path), &Request::SnapshotSent.encode(), &[])
    })
    .await
    .expect("client");
    assert_eq!(reply, Reply::Ack);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
