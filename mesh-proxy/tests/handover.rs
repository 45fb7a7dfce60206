//! Gateway listeners during an upgrade (inpod::handover): a new proxy binds the same addresses
//! beside the old one (SO_REUSEPORT), and the old one, stopped with a hand-over, keeps each
//! listener until the new one listens there too, so no new connection is refused.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn simple(l: &mesh_api::model::Listener, backend: std::net::SocketAddr) -> mesh_api::model::Config {
    config(
        l,
        vec![service_backend("b", &[backend])],
        vec![route("r", 1, &[], l, vec![rule(vec![prefix("/")], vec![to("b", 1)])])],
    )
}

/// One request on a new connection: the status line, or what went wrong.
async fn once(port: u16) -> Result<(), String> {
    let attempt = async {
        let mut conn =
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        conn.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        match answer.starts_with(b"HTTP/1.1 200") {
            true => Ok(()),
            false => Err(format!("answered {:?}", String::from_utf8_lossy(&answer[..answer.len().min(40)]))),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_proxy_keeps_its_gateway_listener_until_the_new_one_listens() {
    let backend = backend("b", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cfg = simple(&l, backend);
    let mut old = start(cfg.clone()).await;
    wait_listening(l.port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn({
        let (stop, port) = (stop.clone(), l.port);
        async move {
            let (mut answered, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match once(port).await {
                    Ok(()) => answered += 1,
                    Err(error) => failed.push(error),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (answered, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The old proxy is told to stop with a hand-over (the in-pod socket says a new proxy has
    // started) before the new proxy has bound anything: it must serve on until it has.
    let stopped = Instant::now();
    let shutdown = tokio::spawn(async move {
        old.shutdown(Instant::now() + Duration::from_secs(5), true).await;
        old
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!shutdown.is_finished(), "the old proxy waits for its successor");
    let new = start(cfg).await;
    let old = shutdown.await.expect("shutdown");
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(2), "the old proxy let go once the new one listened, took {took:?}");
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = stream.await.expect("stream");
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), answered + failed.len());
    assert!(answered >= 50, "only {answered} requests: the test proves nothing");
    once(l.port).await.expect("the new proxy serves alone");
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_successor_a_stopped_proxy_closes_its_gateway_listener_at_once() {
    let backend = backend("b", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut old = start(simple(&l, backend)).await;
    wait_listening(l.port).await;
    let stopped = Instant::now();
    old.shutdown(Instant::now() + Duration::from_secs(5), false).await;
    assert!(stopped.elapsed() < Duration::from_secs(1));
    assert!(once(l.port).await.is_err(), "nothing listens any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_the_close_still_gets_its_first_request_served() {
    let backend = backend("b", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut proxy = start(simple(&l, backend)).await;
    wait_listening(l.port).await;
    // Connected (accepted by the proxy) before the stop; its request leaves after the listener
    // has closed, as a request in flight at the close would arrive.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shutdown = tokio::spawn(async move {
        proxy.shutdown(Instant::now() + Duration::from_secs(5), false).await;
        proxy
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(once(l.port).await.is_err(), "the listener is closed");
    conn.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(read.is_ok(), "the connection closes after its answer: {answer:?}");
    assert!(answer.starts_with("http/1.1 200"), "served, not dropped: {answer:?}");
    assert!(answer.contains("connection: close"), "and told it closes: {answer:?}");
    let stopped = shutdown.await.expect("shutdown");
    drop(stopped);
}
