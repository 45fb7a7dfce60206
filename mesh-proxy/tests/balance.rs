//! Outlier ejection through a real proxy: an endpoint that refuses connections is left out
//! after a few failures, and the backend's other endpoint takes all the traffic.

mod support;

use http::StatusCode;
use mesh_proxy::balance::outlier::CONSECUTIVE_FAILURES;
use support::*;

#[tokio::test]
async fn an_endpoint_refusing_connections_is_ejected() {
    let live = backend("live", Behaviour::Echo).await;
    // A port nothing listens on: every connection is refused.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("app", &[live, dead])],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("app", 1)])])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;

    let ejections = || proxy.metrics.endpoint_ejections.load(std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    // Each request draws the dead endpoint about half the time; 200 is far more than needed.
    for _ in 0..200 {
        let reply = get(l.port, "h", "/", &[]).await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.backend(), "live"),
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("unexpected {other}"),
        }
        if ejections() > 0 {
            break;
        }
    }
    assert_eq!(ejections(), 1);
    assert_eq!(refused, CONSECUTIVE_FAILURES, "ejected after exactly that many refusals");
    // Ejected: every request now goes to the live endpoint.
    for _ in 0..20 {
        assert_eq!(get(l.port, "h", "/", &[]).await.status, StatusCode::OK);
    }
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains("weft_endpoint_ejections_total 1"), "{metrics}");
}

#[tokio::test]
async fn a_backend_whose_only_endpoint_is_dead_is_never_emptied() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("app", &[dead])],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("app", 1)])])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    for _ in 0..CONSECUTIVE_FAILURES * 2 {
        // Still tried (503 from the refused connection), never "no ready endpoint".
        let reply = get(l.port, "h", "/", &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.body, "backend unavailable");
    }
    assert_eq!(proxy.metrics.endpoint_ejections.load(std::sync::atomic::Ordering::Relaxed), 0);
}
