//! A tiny HTTP/1.1 server and client for inside pods: enough to see who answered, over
//! connections the tests control byte for byte.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::WAIT;
use crate::netns::in_netns;

/// An HTTP/1.1 server in a pod: answers every request with 200, `x-served-by: <name>`,
/// `x-peer: <the connection's source address>` (who the app sees calling) and the request head
/// as body; keeps connections alive unless asked to close. Stops on drop.
pub struct HttpEcho {
    stop: Arc<AtomicBool>,
}

impl HttpEcho {
    pub fn start(netns: &Path, port: u16, name: &'static str) -> HttpEcho {
        Self::serve_on(in_netns(netns, move || TcpListener::bind(("0.0.0.0", port)).expect("bind")), name)
    }

    /// [`start`](Self::start) on both families: one socket on `[::]`, which takes IPv4 too
    /// (as IPv4-mapped addresses) because a new netns has `net.ipv6.bindv6only=0`, as most
    /// dual-stack applications listen.
    pub fn start_dual_stack(netns: &Path, port: u16, name: &'static str) -> HttpEcho {
        Self::serve_on(in_netns(netns, move || TcpListener::bind(("::", port)).expect("bind [::]")), name)
    }

    fn serve_on(listener: TcpListener, name: &'static str) -> HttpEcho {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((conn, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // A dual-stack listener sees IPv4 callers as IPv4-mapped IPv6: name them as IPv4.
                let peer = peer.ip().to_canonical();
                std::thread::spawn(move || serve(conn, name, peer));
            }
        });
        HttpEcho { stop }
    }
}

fn serve(conn: TcpStream, name: &str, peer: std::net::IpAddr) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(WAIT));
    let mut reader = BufReader::new(&conn);
    loop {
        let mut head = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            head.push_str(&line);
            line.clear();
        }
        if head.is_empty() {
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nx-served-by: {name}\r\nx-peer: {peer}\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        let close = head.to_ascii_lowercase().contains("connection: close");
        if (&conn).write_all(answer.as_bytes()).is_err() || close {
            return;
        }
    }
}

impl Drop for HttpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n` requests over one keep-alive connection from inside `netns`, each with the extra
/// `headers` (CRLF-terminated lines); who served each.
pub fn served_by(
    netns: &Path,
    addr: SocketAddr,
    n: usize,
    headers: &'static str,
) -> std::io::Result<Vec<String>> {
    in_netns(netns, move || {
        let conn = TcpStream::connect_timeout(&addr, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut reader = BufReader::new(&conn);
        let mut served = Vec::with_capacity(n);
        for _ in 0..n {
            // One write per request, as real clients do: piecewise writes would meet Nagle
            // and the peer's delayed ACK, 40 ms a request.
            let request = format!("GET /cart HTTP/1.1\r\nhost: checkout\r\n{headers}\r\n");
            (&conn).write_all(request.as_bytes())?;
            let (mut length, mut by) = (0usize, String::new());
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().map_err(std::io::Error::other)?;
                }
                if let Some(v) = lower.strip_prefix("x-served-by:") {
                    by = v.trim().to_string();
                }
                line.clear();
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            served.push(by);
        }
        Ok(served)
    })
}

/// The `x-peer` header of an [`HttpEcho`] answer: the address the app saw the call come from.
pub fn peer_of(answer: &str) -> Option<std::net::IpAddr> {
    answer.lines().find_map(|line| line.strip_prefix("x-peer: ")?.trim().parse().ok())
}

/// `GET /` from inside `netns` to `addr` with `canary` in a header, on a connection closed
/// after it; the whole answer.
pub fn get_once(netns: &Path, addr: SocketAddr, canary: &'static str) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let request =
            format!("GET / HTTP/1.1\r\nhost: checkout\r\nx-canary: {canary}\r\nconnection: close\r\n\r\n");
        conn.write_all(request.as_bytes())?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    })
}
