//! The config stream over a real gRPC connection on loopback.

use std::time::Duration;

use mesh_api::model::{Config, ObjectKey, Service};
use mesh_api::proto::config_discovery_client::ConfigDiscoveryClient;
use mesh_api::proto::{Ack, ConfigUpdate, Nack, ProxyMessage, Subscribe, proxy_message};
use mesh_controller::config_server::Publisher;
use mesh_controller::manifest_source::ManifestSource;
use mesh_controller::resolve::Settings;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Long enough for a loopback round trip on a loaded 2-core CI machine; tests that expect a
/// message wait at most this long, so they fail rather than hang.
const ANSWER: Duration = Duration::from_secs(10);

fn config_with(names: &[&str]) -> Config {
    let mut c = Config::default();
    for n in names {
        c.insert_service(Service {
            key: ObjectKey::new("default", *n),
            hostname: format!("{n}.default.svc.cluster.local"),
            vips: vec![],
            ports: vec![],
        });
    }
    c
}

async fn start(publisher: Publisher) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    // Plaintext, anyone subscribing: the stream's semantics are under test here, its security
    // in mesh-proxy/tests/controller_tls.rs.
    let security = mesh_controller::app::GrpcSecurity::insecure(None);
    tokio::spawn(mesh_controller::app::serve(publisher, None, listener, security, std::future::pending()));
    format!("http://{addr}")
}

struct Proxy {
    tx: mpsc::Sender<ProxyMessage>,
    updates: tonic::Streaming<ConfigUpdate>,
}

impl Proxy {
    async fn connect(url: &str, first: ProxyMessage) -> Result<Self, tonic::Status> {
        let mut client = ConfigDiscoveryClient::connect(url.to_string()).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(first).await.expect("queue subscribe");
        let updates = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Proxy { tx, updates })
    }

    async fn next(&mut self) -> ConfigUpdate {
        tokio::time::timeout(ANSWER, self.updates.next())
            .await
            .expect("an update arrives in time")
            .expect("stream open")
            .expect("update, not error")
    }

    async fn nothing_within(&mut self, wait: Duration) {
        if let Ok(Some(update)) = tokio::time::timeout(wait, self.updates.next()).await {
            panic!("expected no update, got {update:?}");
        }
    }

    async fn ack(&self, version: u64) {
        let m = ProxyMessage { message: Some(proxy_message::Message::Ack(Ack { version })) };
        self.tx.send(m).await.expect("send ack");
    }

    async fn nack(&self, version: u64, reason: &str) {
        let m = ProxyMessage {
            message: Some(proxy_message::Message::Nack(Nack { version, reason: reason.into() })),
        };
        self.tx.send(m).await.expect("send nack");
    }
}

fn subscribe(node: &str) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Subscribe(Subscribe {
            node: node.into(),
            proxy_version: "test".into(),
        })),
    }
}

#[tokio::test]
async fn full_state_then_deltas_anchored_on_the_last_ack() {
    let publisher = Publisher::new();
    publisher.publish(config_with(&["a"]));
    let url = start(publisher.clone()).await;
    let mut proxy = Proxy::connect(&url, subscribe("node-1")).await.expect("subscribed");

    let first = proxy.next().await;
    assert!(first.full_state);
    assert_eq!(first.version, 1);
    let held = Config::default().apply(&first).expect("full state applies");
    assert_eq!(held, config_with(&["a"]));
    proxy.ack(1).await;

    // A delta: only what changed.
    publisher.publish(config_with(&["a", "b"]));
    let second = proxy.next().await;
    assert!(!second.full_state);
    assert_eq!((second.version, second.upserts.len(), second.removals.len()), (2, 1, 0));
    // The proxy refuses it and stays on version 1.
    proxy.nack(2, "cannot bind port 80").await;
    // Exactly the refused version is not resent.
    proxy.nothing_within(Duration::from_millis(300)).await;

    // The next version is a delta from version 1, which is what the proxy holds.
    publisher.publish(config_with(&["c"]));
    let third = proxy.next().await;
    assert_eq!(third.version, 3);
    let held = held.apply(&third).expect("delta from the acked version applies");
    assert_eq!(held, config_with(&["c"]));
    proxy.ack(3).await;

    // Publishing an identical config is not a new version.
    assert_eq!(publisher.publish(config_with(&["c"])), 3);
    proxy.nothing_within(Duration::from_millis(300)).await;

    let state = &publisher.proxies.snapshot()["node-1"];
    assert_eq!((state.acked_version, state.acks, state.nacks), (Some(3), 2, 1));
    assert_eq!(state.last_nack.as_deref(), Some("cannot bind port 80"));
    assert!(publisher.proxies.metrics().contains("weft_controller_proxy_nacks_total{node=\"node-1\"} 1"));
}

#[tokio::test]
async fn a_stream_that_does_not_start_with_subscribe_is_refused() {
    let publisher = Publisher::new();
    publisher.publish(config_with(&["a"]));
    let url = start(publisher).await;
    let ack_first = ProxyMessage { message: Some(proxy_message::Message::Ack(Ack { version: 1 })) };
    match Proxy::connect(&url, ack_first).await {
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}"),
        Ok(mut proxy) => {
            let err = tokio::time::timeout(ANSWER, proxy.updates.next()).await.expect("answer in time");
            assert!(matches!(err, Some(Err(ref s)) if s.code() == tonic::Code::InvalidArgument), "{err:?}");
        }
    }
}

const ROUTE_FOLDER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 80}]}
"#;

#[tokio::test]
async fn a_broken_manifest_edit_keeps_the_last_good_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, ROUTE_FOLDER).expect("write");
    let publisher = Publisher::new();
    let mut source = ManifestSource::new(dir.path().to_path_buf(), Settings::default(), publisher.clone());
    assert_eq!(source.reload().expect("valid folder"), 1);
    tokio::spawn(source.watch());
    let url = start(publisher.clone()).await;
    let mut proxy = Proxy::connect(&url, subscribe("node-1")).await.expect("subscribed");
    let first = proxy.next().await;
    let held = Config::default().apply(&first).expect("applies");
    assert!(held.services.contains_key("default/web"));
    proxy.ack(first.version).await;

    std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n").expect("write");
    proxy.nothing_within(Duration::from_millis(1200)).await;
    assert_eq!(publisher.current().version, 1, "nothing was published from the broken folder");

    std::fs::write(&file, ROUTE_FOLDER.replace("name: web", "name: api")).expect("write");
    let fixed = proxy.next().await;
    let held = held.apply(&fixed).expect("delta applies");
    assert!(held.services.contains_key("default/api") && !held.services.contains_key("default/web"));
}
