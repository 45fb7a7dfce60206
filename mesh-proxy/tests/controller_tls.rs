//! The controller's gRPC port as node proxies meet it: TLS with a serving certificate from the
//! controller's own CA, verified by the proxy against the trust bundle and the URL's host; the
//! config stream (Gateway private keys included) only for a proxy presenting its node's token.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_api::identity::SpiffeId;
use mesh_api::model::{Certificate, Config, ObjectKey, Service};
use mesh_api::proto::config_discovery_client::ConfigDiscoveryClient;
use mesh_api::proto::{ConfigUpdate, ProxyMessage, Subscribe, proxy_message};
use mesh_controller::app::GrpcSecurity;
use mesh_controller::ca::CertificateService;
use mesh_controller::config_server::Publisher;
use mesh_proxy::Source;
use mesh_proxy::config::connection::ControllerEndpoint;
use mesh_proxy::config::controller::Subscription;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);
/// Stands for a Gateway's private key: it must reach node-a's proxy and nobody else.
const KEY_MARKER: &str = "weft-test-private-key-7c1e";

struct Controller {
    addr: std::net::SocketAddr,
    publisher: Publisher,
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl Controller {
    /// The controller on loopback, TLS for `names`, static tokens `token-a` (node-a) and
    /// `token-b` (node-b).
    async fn start(names: &[&str]) -> Self {
        Self::start_with_session_age(names, mesh_controller::config_server::MAX_SESSION_AGE).await
    }

    /// [`start`](Self::start), ending authenticated config streams after `session_age`.
    async fn start_with_session_age(names: &[&str], session_age: Duration) -> Self {
        let publisher = Publisher::new();
        let mut config = Config::default();
        config.insert_service(Service {
            key: ObjectKey::new("default", "web"),
            hostname: "web.default.svc.cluster.local".into(),
            vips: vec![],
            ports: vec![],
        });
        config.certificates.insert(
            "shop/gateway-tls".into(),
            Certificate {
                key: ObjectKey::new("shop", "gateway-tls"),
                chain_pem: "chain".into(),
                key_pem: KEY_MARKER.into(),
                dns_names: vec!["shop.example".into()],
            },
        );
        publisher.publish(config);
        let proxy: SpiffeId = "spiffe://cluster.local/ns/weft-system/sa/weft-proxy".parse().expect("id");
        let tokens = [("token-a", "node-a"), ("token-b", "node-b")];
        let service =
            CertificateService::ephemeral("cluster.local", &tokens, &proxy, publisher.clone()).expect("CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("ca.crt");
        std::fs::write(&bundle, service.authority().roots_pem()).expect("bundle");
        let security = GrpcSecurity::tls(&service, names.iter().map(|n| n.to_string()).collect())
            .expect("serving cert")
            .with_max_session_age(session_age);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(mesh_controller::app::serve(
            publisher.clone(),
            Some(service),
            listener,
            security,
            std::future::pending(),
        ));
        Controller { addr, publisher, dir, bundle }
    }

    fn endpoint(&self) -> ControllerEndpoint {
        ControllerEndpoint::new(&format!("https://{}", self.addr), Some(self.bundle.clone()), false)
            .expect("endpoint")
    }

    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{token}.token"));
        std::fs::write(&path, format!("{token}\n")).expect("token file");
        path
    }

    /// The source of a proxy subscribing as `node` with `token`, as weft-proxy runs it.
    fn proxy(&self, node: &str, token: &str) -> Source {
        Source::Controller(Subscription {
            endpoint: self.endpoint(),
            node: node.into(),
            token_file: Some(self.token_file(token)),
        })
    }
}

/// Subscribes as `node` with `token` over `endpoint`; the first update, or the refusal.
async fn subscribe(
    endpoint: &ControllerEndpoint,
    token: Option<&str>,
    node: &str,
) -> Result<ConfigUpdate, tonic::Status> {
    let channel = endpoint.connect(WAIT).await.expect("TLS connection");
    let mut client =
        ConfigDiscoveryClient::new(channel).max_decoding_message_size(mesh_api::MAX_CONFIG_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(4);
    let subscribe = proxy_message::Message::Subscribe(Subscribe {
        node: node.into(),
        proxy_version: "test".into(),
        chunked_full_state: false,
    });
    tx.send(ProxyMessage { message: Some(subscribe) }).await.expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    let mut updates =
        tokio::time::timeout(WAIT, client.stream(request)).await.expect("answer in time")?.into_inner();
    let update = tokio::time::timeout(WAIT, updates.message()).await.expect("update in time")?;
    let _keep_stream_open = tx;
    update.ok_or_else(|| tonic::Status::cancelled("stream ended"))
}

fn carries_key(update: &ConfigUpdate) -> bool {
    let bytes = prost::Message::encode_to_vec(update);
    bytes.windows(KEY_MARKER.len()).any(|w| w == KEY_MARKER.as_bytes())
}

#[tokio::test]
async fn a_proxy_with_its_nodes_token_gets_the_config_over_tls() {
    let controller = Controller::start(&["127.0.0.1"]).await;

    // The proxy as weft-proxy runs it.
    let proxy = start_with(controller.proxy("node-a", "token-a")).await;
    eventually("the proxy got its config", || proxy.store.is_ready()).await;
    proxy.store.read_config(|_, config| {
        assert!(config.services.contains_key("default/web"));
        assert!(config.certificates.contains_key("shop/gateway-tls"));
    });

    // And on the wire: the full state, Gateway keys included, to node-a's proxy.
    let update = subscribe(&controller.endpoint(), Some("token-a"), "node-a").await.expect("served");
    assert!(update.full_state);
    assert!(carries_key(&update), "the Gateway key reaches the authenticated proxy");
    let connected = controller.publisher.proxies.snapshot();
    assert!(connected.get("node-a").is_some_and(|s| s.connected), "{connected:?}");
}

#[tokio::test]
async fn no_token_a_wrong_token_or_another_nodes_token_is_refused() {
    let controller = Controller::start(&["127.0.0.1"]).await;
    let endpoint = controller.endpoint();

    let none = subscribe(&endpoint, None, "node-a").await.expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert!(none.message().contains("bearer token"), "{}", none.message());

    let wrong = subscribe(&endpoint, Some("guessed"), "node-a").await.expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");

    let other = subscribe(&endpoint, Some("token-b"), "node-a").await.expect_err("node-b's token");
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    assert!(other.message().contains("node-b") && other.message().contains("node-a"), "{}", other.message());

    let refused = controller.publisher.proxies.refused();
    assert_eq!(refused.get("no_token"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("bad_token"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("wrong_node"), Some(&1), "{refused:?}");
    let metrics = controller.publisher.proxies.metrics();
    assert!(
        metrics.contains("weft_controller_subscribe_refused_total{reason=\"wrong_node\"} 1"),
        "{metrics}"
    );
    assert!(
        !controller.publisher.proxies.snapshot().get("node-a").is_some_and(|s| s.connected),
        "no refused caller counts as connected"
    );

    // The proxy itself, with node-b's token, never installs node-a's config.
    let proxy = start_with(controller.proxy("node-a", "token-b")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!proxy.store.is_ready());
    assert!(proxy.store.read_config(|_, config| config.certificates.is_empty()));
}

fn other_ca_bundle(dir: &Path) -> PathBuf {
    let other = mesh_controller::ca::authority::CaMaterial::generate(
        "cluster.local",
        time::OffsetDateTime::now_utc(),
    )
    .expect("another CA");
    let path = dir.join("other-ca.crt");
    std::fs::write(&path, other.chain_pem).expect("write");
    path
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_or_expects_another_name_fails_the_handshake() {
    let controller = Controller::start(&["127.0.0.1"]).await;

    let untrusting = ControllerEndpoint::new(
        &format!("https://{}", controller.addr),
        Some(other_ca_bundle(controller.dir.path())),
        false,
    )
    .expect("endpoint");
    let error = untrusting.connect(WAIT).await.expect_err("a CA the client does not trust");
    let text = format!("{error:#}");
    assert!(text.contains("TLS with the controller failed"), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");

    // The certificate holds 127.0.0.1, not localhost.
    let port = controller.addr.port();
    let misnamed =
        ControllerEndpoint::new(&format!("https://localhost:{port}"), Some(controller.bundle.clone()), false)
            .expect("endpoint");
    let error = misnamed.connect(WAIT).await.expect_err("a name the certificate does not hold");
    assert!(format!("{error:#}").to_lowercase().contains("name"), "{error:#}");

    // Plaintext gets nothing from a TLS port.
    let plaintext =
        ControllerEndpoint::new(&format!("http://{}", controller.addr), None, true).expect("endpoint");
    let refused = match plaintext.connect(WAIT).await {
        Err(_) => true,
        Ok(channel) => {
            let mut client = ConfigDiscoveryClient::new(channel);
            let (tx, rx) = mpsc::channel(1);
            let subscribe = proxy_message::Message::Subscribe(Subscribe {
                node: "node-a".into(),
                proxy_version: "test".into(),
                chunked_full_state: false,
            });
            let _ = tx.send(ProxyMessage { message: Some(subscribe) }).await;
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            request.metadata_mut().insert("authorization", "Bearer token-a".parse().expect("ascii"));
            tokio::time::timeout(WAIT, client.stream(request)).await.expect("answer in time").is_err()
        }
    };
    assert!(refused, "a plaintext client must not be served");
}

/// Waits until `condition` holds, or fails with `what`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token is checked when a stream opens, so the controller bounds every authenticated stream
/// (by the token's `exp`, at most 30 minutes; 1 s here): the stream ends with the
/// re-authenticate status, and the proxy reconnects with what its token file holds *then*. A
/// token that stopped being valid stops being served, and the proxy keeps serving its last good
/// config until a valid token is back.
#[tokio::test]
async fn a_stream_ends_when_its_session_age_runs_out_and_the_proxy_reconnects_with_its_current_token() {
    let controller = Controller::start_with_session_age(&["127.0.0.1"], Duration::from_secs(1)).await;

    // A raw client sees the status that ends the stream.
    let channel = controller.endpoint().connect(WAIT).await.expect("TLS connection");
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let subscribe = proxy_message::Message::Subscribe(Subscribe {
        node: "node-a".into(),
        proxy_version: "test".into(),
        chunked_full_state: false,
    });
    tx.send(ProxyMessage { message: Some(subscribe) }).await.expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", "Bearer token-a".parse().expect("ascii"));
    let mut updates = client.stream(request).await.expect("subscribed").into_inner();
    let first = tokio::time::timeout(WAIT, updates.message()).await.expect("update in time");
    assert!(first.expect("an update").is_some());
    let ended = tokio::time::timeout(WAIT, updates.message()).await.expect("the stream ends in time");
    let status = ended.expect_err("ended by a status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), mesh_api::STREAM_REAUTHENTICATE);
    assert!(controller.publisher.proxies.reauthentications() >= 1);
    drop(tx);

    // The proxy as weft-proxy runs it: it reconnects on its own, again and again.
    let proxy = start_with(controller.proxy("node-a", "token-a")).await;
    let token_file = controller.token_file("token-a");
    eventually("the proxy has its config", || proxy.store.is_ready()).await;
    let reauthenticated = controller.publisher.proxies.reauthentications();
    eventually("the proxy's stream was renewed twice", || {
        controller.publisher.proxies.reauthentications() >= reauthenticated + 2
    })
    .await;
    let connected =
        |publisher: &Publisher| publisher.proxies.snapshot().get("node-a").is_some_and(|s| s.connected);
    eventually("the proxy is subscribed again", || connected(&controller.publisher)).await;

    // Its token file now holds node-b's token: the next connection is refused, and the proxy
    // goes on serving the config it has.
    std::fs::write(&token_file, "token-b\n").expect("rewrite the token file");
    eventually("the controller refuses the proxy's new token", || {
        controller.publisher.proxies.refused().values().sum::<u64>() >= 1
    })
    .await;
    assert!(!connected(&controller.publisher), "a refused token must not keep a stream");
    assert!(
        proxy.store.read_config(|_, config| config.certificates.contains_key("shop/gateway-tls")),
        "last good config kept"
    );

    // A valid token again: the proxy is back.
    std::fs::write(&token_file, "token-a\n").expect("restore the token file");
    eventually("the proxy subscribes again with the restored token", || connected(&controller.publisher))
        .await;
}

/// A full state far past tonic's 4 MB default message size (a Service with 100k endpoints, as
/// at the scale `cargo xtask bench control` measures) reaches the proxy.
#[tokio::test]
async fn a_full_state_of_100k_endpoints_reaches_the_proxy() {
    let controller = Controller::start(&["127.0.0.1"]).await;
    let addrs: Vec<std::net::SocketAddr> = (0..100_000u32)
        .map(|i| std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)))
        .collect();
    let mut config = Config::default();
    config.insert_backend(service_backend("big", &addrs));
    let version = controller.publisher.publish(config);
    let update = subscribe(&controller.endpoint(), Some("token-a"), "node-a").await.expect("admitted");
    let size = prost::Message::encoded_len(&update);
    assert!(size > 4 * 1024 * 1024, "the test's state must exceed tonic's default: {size} bytes");

    let proxy = start_with(controller.proxy("node-a", "token-a")).await;
    eventually(&format!("the proxy took the {size}-byte full state"), || {
        proxy.store.load().version >= version
    })
    .await;
}

/// A change after the full state reaches the proxy as a delta, applied in place: traffic
/// follows the backend that moved, and the proxy holds exactly the controller's config.
#[tokio::test]
async fn a_delta_moves_traffic_and_leaves_the_proxy_holding_the_controllers_config() {
    let controller = Controller::start(&["127.0.0.1"]).await;
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let version_with = |addr, path: &str| {
        let backends = vec![service_backend("app", &[addr]), service_backend("other", &[v1])];
        let routes = vec![route("r", 1, &[], &l, vec![rule(vec![prefix(path)], vec![to("app", 1)])])];
        controller.publisher.publish(config(&l, backends, routes))
    };
    let first = version_with(v1, "/");
    let proxy = start_with(controller.proxy("node-a", "token-a")).await;
    eventually("the proxy holds the first version", || proxy.store.load().version >= first).await;
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v1");

    let acks = |c: &Controller| c.publisher.proxies.snapshot().get("node-a").map_or(0, |s| s.acks);
    let acks_before = acks(&controller);
    let second = version_with(v2, "/");
    eventually("the proxy holds the second version", || proxy.store.load().version >= second).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.backend(), "v2", "traffic follows the moved backend");
    assert_eq!(acks(&controller), acks_before + 1, "one update, ACKed");

    // The route changes and nothing else: the proxy's compiled route follows.
    let third = version_with(v2, "/new");
    eventually("the proxy holds the third version", || proxy.store.load().version >= third).await;
    assert_eq!(get(l.port, "h", "/", &[]).await.status, http::StatusCode::NOT_FOUND);
    assert_eq!(get(l.port, "h", "/new", &[]).await.backend(), "v2");
    let held = proxy.store.read_config(|version, config| (version, config.clone()));
    assert_eq!(held, (third, (*controller.publisher.current().config).clone()));
}
