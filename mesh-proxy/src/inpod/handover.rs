//! Upgrades without lost connections: the old and the new proxy overlap (as Istio's ztunnel
//! does), and the old one lets go of each socket only once the new one listens beside it.
//!
//! The design, end to end:
//!
//! 1. **Both accept.** Every listener the proxy opens (the pods' 15001/15006/15008 inside their
//!    netns, the Gateway listeners and the admin port on the host) carries `SO_REUSEPORT`, so a
//!    second proxy binds the same addresses while the first still holds them and the kernel
//!    spreads new connections over both.
//! 2. **The new proxy gets every pod.** At start the proxy unlinks the in-pod socket path and
//!    binds a fresh socket there ([`super::server`]); the old proxy keeps its (now nameless)
//!    socket and the connections it had accepted. From then on every CNI call reaches the new
//!    proxy. `weft-cni install`'s repair loop watches the path: when the socket there is not
//!    the one it is connected to, it connects to the new one and sends its snapshot (every pod
//!    in the plugin's state dir, with its netns), so the new proxy opens listeners in every
//!    live pod. (The Kubernetes DaemonSet rolls with `maxSurge: 1, maxUnavailable: 0` so the
//!    new pod, with its own installer, starts before the old one is told to stop.)
//! 3. **The old proxy hands over, then drains.** On SIGTERM a proxy whose socket path now names
//!    another socket (a successor exists) keeps serving each pod until that pod's netns has a
//!    listener on each of the pod's proxy addresses that is not its own (read from
//!    `/proc/thread-self/net/tcp{,6}` in the pod's netns, by socket inode), then closes that
//!    pod's listeners — first accepting what is already queued on them — and lets open
//!    connections finish. Gateway listeners do the same on the host. Everything is bounded by
//!    one deadline (`--drain-seconds`): a successor that never takes a pod over only delays
//!    the drain. A proxy with no successor (uninstall, node drain) closes at once, as before.
//!
//! What remains racy is the kernel's: a connection whose SYN the kernel gave the old listener
//! between its last accept and its close is reset. Linux ≥ 5.14 migrates such connections to
//! another listener of the group when `net.ipv4.tcp_migrate_req` is 1 in that netns;
//! [`enable_migration_here`] sets it in each pod's netns where the proxy may write sysctls
//! (weft-cni sets it too, at ADD, from the host), and in the proxy's own netns for Gateway
//! listeners (`listener::run`).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _, Seek as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a draining proxy looks for its successor's sockets.
pub const POLL: Duration = Duration::from_millis(50);

/// The inode of a socket: the key `/proc/net/tcp` lists it under.
pub fn inode(socket: &impl AsFd) -> io::Result<u64> {
    #[allow(clippy::unnecessary_cast)] // ino_t widths differ between targets
    Ok(nix::sys::stat::fstat(socket.as_fd()).map_err(io::Error::from)?.st_ino as u64)
}

/// The (device, inode) of the file at `path`, `None` if there is none.
pub fn file_id(path: &Path) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which sockets a table lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// The socket tables (`/proc/thread-self/net/{tcp,tcp6}` or `udp`, `udp6`) of the network
/// namespace the opening thread was in; each read shows the table as it is now.
pub struct SocketTables {
    proto: Proto,
    v4: File,
    v6: Option<File>,
}

impl SocketTables {
    /// Opens the tables of the calling thread's network namespace.
    pub fn open_here(proto: Proto) -> io::Result<SocketTables> {
        let name = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let v4 = File::open(format!("/proc/thread-self/net/{name}"))?;
        // Absent when the namespace has no IPv6.
        let v6 = File::open(format!("/proc/thread-self/net/{name}6")).ok();
        Ok(SocketTables { proto, v4, v6 })
    }

    /// Whether some socket not in `ours` listens on (TCP) or is bound to (UDP) exactly `addr`.
    pub fn someone_else_on(&mut self, addr: SocketAddr, ours: &HashSet<u64>) -> io::Result<bool> {
        let file = match (addr, &mut self.v6) {
            (SocketAddr::V4(_), _) => &mut self.v4,
            (SocketAddr::V6(_), Some(v6)) => v6,
            (SocketAddr::V6(_), None) => return Ok(false),
        };
        let mut text = String::new();
        file.rewind()?;
        file.read_to_string(&mut text)?;
        Ok(bound_sockets(&text, self.proto).any(|(a, ino)| a == addr && !ours.contains(&ino)))
    }
}

/// (local address, inode) of the listening (TCP) or unconnected (UDP) sockets in the text of a
/// `/proc/net/{tcp,udp}{,6}` table. Lines that do not parse are skipped.
fn bound_sockets(text: &str, proto: Proto) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    // TCP_LISTEN is 0A; an unconnected UDP socket is TCP_CLOSE, 07.
    let state = match proto {
        Proto::Tcp => "0A",
        Proto::Udp => "07",
    };
    text.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&state) {
            return None;
        }
        let addr = parse_addr(fields.get(1)?)?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((addr, inode))
    })
}

/// `0100007F:3A99` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address as a number in host byte order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes))
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = match (ip.len(), bytes.len()) {
        (8, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (32, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Waits until `taken` says yes, it fails (logged; the caller goes on as if taken), or `until`.
/// Returns whether it was taken over.
pub async fn wait_until_taken(
    what: &str,
    until: Instant,
    mut taken: impl FnMut() -> io::Result<bool>,
) -> bool {
    loop {
        match taken() {
            Ok(true) => return true,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(what, %error, "cannot tell whether the new proxy took over; closing");
                return false;
            }
        }
        if Instant::now() + POLL > until {
            tracing::warn!(what, "no successor took over before the deadline; closing");
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sets `net.ipv4.tcp_migrate_req` in the calling thread's network namespace, best effort: with
/// it, connections queued on a closing listener of a `SO_REUSEPORT` group move to another
/// listener of the group instead of being reset (Linux ≥ 5.14). Only sockets in such groups are
/// affected. Fails where `/proc/sys` is read-only (unprivileged containers).
pub fn enable_migration_here() -> io::Result<()> {
    std::fs::write(MIGRATE_REQ, "1")
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Whether `net.ipv4.tcp_migrate_req` is on in the calling thread's network namespace.
pub fn migration_enabled_here() -> io::Result<bool> {
    Ok(std::fs::read_to_string(MIGRATE_REQ)?.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   \
            1: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n   \
            2: 0100007F:3A99 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n   \
            3: garbage\n";
        let got: Vec<_> = bound_sockets(v4, Proto::Tcp).collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:15001".parse().expect("addr"), 4242),
                ("0.0.0.0:15006".parse().expect("addr"), 4343)
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 00000000000000000000000001000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0\n";
        let got: Vec<_> = bound_sockets(v6, Proto::Tcp).collect();
        assert_eq!(got, vec![("[::1]:15001".parse().expect("addr"), 77)]);
        assert_eq!(bound_sockets(v6, Proto::Udp).count(), 0, "a listening TCP socket is not a bound UDP one");
    }

    #[test]
    fn sees_another_listener_on_the_same_address() {
        let bind = |addr: SocketAddr| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            socket.set_reuse_port(true).expect("reuseport");
            socket.bind(&addr.into()).expect("bind");
            socket.listen(8).expect("listen");
            socket
        };
        let first = bind("127.0.0.1:0".parse().expect("addr"));
        let addr = first.local_addr().expect("addr").as_socket().expect("inet");
        let ours: HashSet<u64> = [inode(&first).expect("inode")].into();
        let mut tables = SocketTables::open_here(Proto::Tcp).expect("tables");
        assert!(!tables.someone_else_on(addr, &ours).expect("read"), "only ours so far");
        let second = bind(addr);
        assert!(tables.someone_else_on(addr, &ours).expect("read"), "the second listener is seen");
        drop(second);
        assert!(!tables.someone_else_on(addr, &ours).expect("read"), "and its closing too");
    }
}
