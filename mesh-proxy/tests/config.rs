//! Config intake: snapshots swapped under traffic, the controller stream with ACK/NACK and
//! reconnects, the manifests folder, listeners following the config, and the admin server.

mod support;

use std::time::Duration;

use http::StatusCode;
use mesh_api::model::*;
use mesh_api::proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use mesh_api::proto::{self, ConfigUpdate, ProxyMessage, ResourceKind, proxy_message};
use mesh_proxy::config::connection::ControllerEndpoint;
use mesh_proxy::config::controller::Subscription;
use mesh_proxy::{Running, Source};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

fn simple(l: &Listener, backends: Vec<Backend>, to_backend: &str) -> Config {
    config(l, backends, vec![route("r", 1, &[], l, vec![rule(vec![prefix("/")], vec![to(to_backend, 1)])])])
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_snapshot_it_began_with() {
    let slow = backend("slow", Behaviour::Slow(Duration::from_millis(400))).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let backends = vec![service_backend("slow", &[slow]), service_backend("v2", &[v2])];
    let proxy = start(simple(&l, backends.clone(), "slow")).await;
    wait_listening(l.port).await;

    let in_flight = tokio::spawn(get(l.port, "h", "/", &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The new version sends everything to v2 and drops the slow backend altogether.
    proxy.store.install(2, simple(&l, vec![service_backend("v2", &[v2])], "v2"));
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v2", "new requests see the new config");
    let reply = in_flight.await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "slow");
}

#[tokio::test]
async fn listeners_follow_the_config() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let kept = gateway_listener(free_port());
    let mut removed = gateway_listener(free_port());
    removed.key.section = "removed".into();
    let mut added = gateway_listener(free_port());
    added.key.section = "added".into();
    let both = |second: &Listener| {
        let mut c = simple(&kept, vec![service_backend("v1", &[v1])], "v1");
        c.insert_listener(second.clone());
        c.insert_route(route("second", 1, &[], second, vec![rule(vec![prefix("/")], vec![to("v1", 1)])]));
        c
    };
    let proxy = start(both(&removed)).await;
    wait_listening(kept.port).await;
    wait_listening(removed.port).await;
    // A keep-alive connection opened before the change.
    let before = tokio::net::TcpStream::connect(("127.0.0.1", kept.port)).await.expect("connect");

    proxy.store.install(2, both(&added));
    wait_listening(added.port).await;
    assert_eq!(get(added.port, "h", "/", &[]).await.backend(), "v1");
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", removed.port)).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "a removed listener stops accepting");
    assert_eq!(get(kept.port, "h", "/", &[]).await.backend(), "v1");
    // A connection to the unchanged listener opened before the change is still served.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut before = before;
    before.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), before.read_to_end(&mut answer)).await.expect("answer").ok();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

/// A stand-in for weft-controller's config server: each stream is handed to the test.
struct TestController {
    sessions: mpsc::Sender<Session>,
}

struct Session {
    from_proxy: tonic::Streaming<ProxyMessage>,
    to_proxy: mpsc::Sender<Result<ConfigUpdate, tonic::Status>>,
}

#[tonic::async_trait]
impl ConfigDiscovery for TestController {
    type StreamStream = ReceiverStream<Result<ConfigUpdate, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<ProxyMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        let _ = self.sessions.send(Session { from_proxy: request.into_inner(), to_proxy: tx }).await;
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

async fn next_message(session: &mut Session) -> proxy_message::Message {
    let message = tokio::time::timeout(Duration::from_secs(5), session.from_proxy.message())
        .await
        .expect("proxy answers in time")
        .expect("stream ok")
        .expect("a message");
    message.message.expect("message set")
}

/// A Gateway listener on a free port and two echo backends, `v1` and `v2`, each answering
/// with its own name.
async fn listener_and_two_versions() -> (Listener, Vec<Backend>) {
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    (gateway_listener(free_port()), vec![service_backend("v1", &[v1]), service_backend("v2", &[v2])])
}

/// A proxy subscribed to a stand-in controller as node `node-a`, the controller's sessions as
/// they open, and the controller's server task. Plaintext: the stream's semantics are under
/// test here, its security in controller_tls.rs.
async fn start_with_test_controller() -> (Running, mpsc::Receiver<Session>, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", socket.local_addr().expect("addr"));
    let (sessions_tx, sessions) = mpsc::channel(4);
    let server = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(ConfigDiscoveryServer::new(TestController { sessions: sessions_tx }))
            .serve_with_incoming(TcpListenerStream::new(socket))
            .await;
        if let Err(error) = served {
            eprintln!("test controller stopped: {error}");
        }
    });
    let endpoint = ControllerEndpoint::new(&url, None, true).expect("endpoint");
    let proxy =
        start_with(Source::Controller(Subscription { endpoint, node: "node-a".into(), token_file: None }))
            .await;
    (proxy, sessions, server)
}

async fn next_session(sessions: &mut mpsc::Receiver<Session>) -> Session {
    tokio::time::timeout(Duration::from_secs(5), sessions.recv())
        .await
        .expect("proxy connects")
        .expect("session")
}

#[tokio::test]
async fn controller_updates_are_acked_bad_ones_nacked_and_the_proxy_reconnects() {
    let (l, backends) = listener_and_two_versions().await;
    let good = simple(&l, backends.clone(), "v1");

    let (proxy, mut sessions, server) = start_with_test_controller().await;
    let mut session = next_session(&mut sessions).await;
    assert_eq!(admin_get(&proxy, "/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
    match next_message(&mut session).await {
        proxy_message::Message::Subscribe(s) => assert_eq!(s.node, "node-a"),
        other => panic!("expected Subscribe, got {other:?}"),
    }

    session.to_proxy.send(Ok(good.to_full_update(1))).await.expect("send");
    assert!(matches!(next_message(&mut session).await, proxy_message::Message::Ack(a) if a.version == 1));
    assert_eq!(admin_get(&proxy, "/ready").await.status, StatusCode::OK);
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1");

    // Version 2 removes a route the proxy never had: refused whole.
    let mut bad = good.diff(&simple(&l, backends.clone(), "v2"), 2);
    bad.removals
        .push(proto::ResourceId { kind: ResourceKind::Route as i32, key: "HTTPRoute/x/missing".into() });
    session.to_proxy.send(Ok(bad)).await.expect("send");
    match next_message(&mut session).await {
        proxy_message::Message::Nack(n) => {
            assert_eq!(n.version, 2);
            assert!(n.reason.contains("missing"), "{}", n.reason);
        }
        other => panic!("expected Nack, got {other:?}"),
    }
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1", "the last good config keeps serving");
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains("weft_config_nacks_total 1"), "{metrics}");
    assert!(metrics.contains("weft_config_version 1"), "{metrics}");

    // Version 3 is a clean delta from version 1.
    let next = simple(&l, backends.clone(), "v2");
    session.to_proxy.send(Ok(good.diff(&next, 3))).await.expect("send");
    assert!(matches!(next_message(&mut session).await, proxy_message::Message::Ack(a) if a.version == 3));
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v2");
    let dump = admin_get(&proxy, "/config_dump").await.json();
    assert_eq!(dump["version"], 3);

    // The controller goes away: the proxy keeps serving, then subscribes again.
    drop(session);
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v2");
    let mut again = next_session(&mut sessions).await;
    assert!(matches!(next_message(&mut again).await, proxy_message::Message::Subscribe(_)));
    server.abort();
}

#[tokio::test]
async fn a_full_state_in_parts_is_installed_whole_and_a_broken_one_keeps_the_last_good_config() {
    let (l, backends) = listener_and_two_versions().await;
    let good = simple(&l, backends.clone(), "v1");
    let next = simple(&l, backends.clone(), "v2");

    let (proxy, mut sessions, server) = start_with_test_controller().await;
    let mut session = next_session(&mut sessions).await;
    match next_message(&mut session).await {
        proxy_message::Message::Subscribe(s) => assert!(s.chunked_full_state, "the proxy takes parts"),
        other => panic!("expected Subscribe, got {other:?}"),
    }

    // One resource a part: the parts are answered once, after the last.
    let parts = good.to_full_parts(1, 1);
    assert!(parts.len() >= 4, "{} parts", parts.len());
    for part in parts {
        session.to_proxy.send(Ok(part)).await.expect("send");
    }
    assert!(matches!(next_message(&mut session).await, proxy_message::Message::Ack(a) if a.version == 1));
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1");

    // Version 2 in parts, one of them broken: one NACK, and version 1 keeps serving.
    let mut broken = next.to_full_parts(2, 1);
    broken[1].upserts[0].body = b"{not json".to_vec();
    for part in broken {
        session.to_proxy.send(Ok(part)).await.expect("send");
    }
    match next_message(&mut session).await {
        proxy_message::Message::Nack(n) => assert_eq!(n.version, 2),
        other => panic!("expected Nack, got {other:?}"),
    }
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1", "the last good config keeps serving");

    // Version 3, whole again: the parts of version 2 after the broken one were passed over,
    // and the first answer after the NACK is version 3's.
    for part in next.to_full_parts(3, 1) {
        session.to_proxy.send(Ok(part)).await.expect("send");
    }
    assert!(matches!(next_message(&mut session).await, proxy_message::Message::Ack(a) if a.version == 3));
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v2");
    let dump = admin_get(&proxy, "/config_dump").await.json();
    assert_eq!(dump["version"], 3);
    // A delta on top of a state that came in parts.
    session.to_proxy.send(Ok(next.diff(&good, 4))).await.expect("send");
    assert!(matches!(next_message(&mut session).await, proxy_message::Message::Ack(a) if a.version == 4));
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1");
    server.abort();
}

const MANIFESTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weft}
spec: {controllerName: weft.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: t}
spec:
  gatewayClassName: weft
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners: [{name: http, protocol: HTTP, port: GATEWAY_PORT}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: t}
spec: {ports: [{name: http, port: 80, targetPort: BACKEND_PORT}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: t, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{name: http, port: BACKEND_PORT, protocol: TCP}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: t}
spec:
  parentRefs: [{name: gw}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /PREFIX}}]
      backendRefs: [{name: app, port: 80}]
"#;

#[tokio::test]
async fn manifests_are_resolved_watched_and_a_broken_folder_keeps_the_last_good_config() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |prefix: &str| {
        let text = MANIFESTS
            .replace("GATEWAY_PORT", &port.to_string())
            .replace("BACKEND_PORT", &v1.port().to_string())
            .replace("PREFIX", prefix);
        std::fs::write(dir.path().join("all.yaml"), text).expect("write");
    };
    write("one");
    let proxy = start_with(Source::Manifests(dir.path().to_path_buf())).await;
    wait_listening(port).await;
    assert_eq!(admin_get(&proxy, "/ready").await.status, StatusCode::OK);
    assert_eq!(get(port, "h", "/one", &[]).await.backend(), "v1");
    assert_eq!(get(port, "h", "/two", &[]).await.status, StatusCode::NOT_FOUND);

    std::fs::write(dir.path().join("broken.yaml"), "kind: Service\nmetadata: [oops\n").expect("write");
    let mut errors = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        errors = proxy.metrics.config_errors.load(std::sync::atomic::Ordering::Relaxed);
        if errors > 0 {
            break;
        }
    }
    assert_eq!(errors, 1, "the broken folder is noticed");
    assert_eq!(get(port, "h", "/one", &[]).await.backend(), "v1", "and the last good config kept");

    std::fs::remove_file(dir.path().join("broken.yaml")).expect("remove");
    write("two");
    let mut switched = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(port, "h", "/two", &[]).await.status == StatusCode::OK {
            switched = true;
            break;
        }
    }
    assert!(switched, "an edited folder is picked up");
    assert_eq!(get(port, "h", "/one", &[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_endpoints_report_readiness_metrics_and_a_redacted_dump() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut cfg = simple(&l, vec![service_backend("v1", &[v1])], "v1");
    cfg.insert_certificate(Certificate {
        key: ObjectKey::new("infra", "tls"),
        chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        key_pem: "-----BEGIN PRIVATE KEY----- do-not-print".into(),
        dns_names: Vec::new(),
    });
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    for _ in 0..3 {
        get(l.port, "h", "/", &[]).await;
    }
    let ready = admin_get(&proxy, "/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    let metrics = admin_get(&proxy, "/metrics").await.body;
    let line = r#"weft_requests_total{listener="infra/gw/http",route="HTTPRoute/apps/r",backend="apps/v1:80",code="200"} 3"#;
    assert!(metrics.contains(line), "{metrics}");
    assert!(metrics.contains("weft_request_duration_seconds_count 3"), "{metrics}");
    assert!(metrics.contains("weft_config_version 1"));
    assert!(metrics.contains("weft_active_connections"));

    let dump = admin_get(&proxy, "/config_dump").await;
    assert!(!dump.body.contains("do-not-print"), "{}", dump.body);
    assert_eq!(dump.json()["config"]["certificates"]["infra/tls"]["key_pem"], "[redacted]");
    assert_eq!(admin_get(&proxy, "/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_json_config_file_is_served() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let file = tempfile::NamedTempFile::new().expect("file");
    let cfg = simple(&l, vec![service_backend("v1", &[v1])], "v1");
    std::fs::write(file.path(), serde_json::to_vec(&cfg).expect("json")).expect("write");
    let proxy = start_with(Source::File(file.path().to_path_buf())).await;
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1");
    assert_eq!(admin_get(&proxy, "/ready").await.status, StatusCode::OK);

    std::fs::write(file.path(), b"{ not json").expect("write");
    let refused = mesh_proxy::start(mesh_proxy::Options {
        source: Source::File(file.path().to_path_buf()),
        admin: "127.0.0.1:0".parse().expect("addr"),
        access_log: false,
    })
    .await;
    assert!(refused.is_err(), "a broken file is an error at start");
}
