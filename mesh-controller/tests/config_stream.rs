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
            chunked_full_state: false,
        })),
    }
}

#[tokio::test]
async fn a_full_state_goes_in_parts_to_a_proxy_that_takes_them_and_whole_to_one_that_does_not() {
    // A few Services a part.
    let publisher = Publisher::new().with_full_state_part_bytes(300);
    let names: Vec<String> = (0..20).map(|i| format!("svc-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    publisher.publish(config_with(&names));
    let url = start(publisher.clone()).await;

    let mut parts = ProxyMessage {
        message: Some(proxy_message::Message::Subscribe(Subscribe {
            node: "node-new".into(),
            proxy_version: "test".into(),
            chunked_full_state: true,
        })),
    };
    let mut new = Proxy::connect(&url, parts.clone()).await.expect("subscribed");
    let mut gathering = mesh_api::delta::FullStateParts::default();
    let mut received = 0;
    let held = loop {
        let part = new.next().await;
        received += 1;
        assert!(part.full_state && part.version == 1, "{part:?}");
        match gathering.take(&part).expect("a good part") {
            mesh_api::delta::Part::Pending => assert!(part.more),
            mesh_api::delta::Part::Complete { version, config } => {
                assert_eq!(version, 1);
                break config;
            }
            mesh_api::delta::Part::Whole => panic!("a 20-Service state at 300 bytes a part is in parts"),
        }
    };
    assert!(received >= 5, "{received} parts");
    assert_eq!(held, config_with(&names));
    new.ack(1).await;
    // Deltas are one message, as before.
    publisher.publish(config_with(&names[1..]));
    let delta = new.next().await;
    assert!(!delta.full_state && !delta.more);
    assert_eq!((delta.version, delta.removals.len()), (2, 1));
    new.ack(2).await;

    // A proxy that does not say it takes parts (an older one) gets the full state whole.
    let mut old = Proxy::connect(&url, subscribe("node-old")).await.expect("subscribed");
    let whole = old.next().await;
    assert!(whole.full_state && !whole.more);
    assert_eq!(Config::default().apply(&whole).expect("applies"), config_with(&names[1..]));
    old.ack(2).await;
    old.nothing_within(Duration::from_millis(300)).await;

    // The parts are answered once: an ACK of the version after the last part is what counts.
    if let Some(proxy_message::Message::Subscribe(s)) = &mut parts.message {
        s.node = "node-third".into();
    }
    let mut third = Proxy::connect(&url, parts).await.expect("subscribed");
    loop {
        if !third.next().await.more {
            break;
        }
    }
    third.ack(2).await;
    third.nothing_within(Duration::from_millis(300)).await;
    let nodes = publisher.proxies.snapshot();
    for node in ["node-new", "node-old", "node-third"] {
        assert_eq!(nodes[node].acked_version, Some(2), "{node}");
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

/// A Service `name` with one ready endpoint, and (with `prefix`) its GAMMA route.
fn service_yaml(name: &str, address: &str, prefix: Option<&str>) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{clusterIP: 10.96.0.{}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [{address}], conditions: {{ready: true}}}}]\n---\n",
        name.as_bytes()[0]
    );
    if let Some(prefix) = prefix {
        yaml.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {name}, port: 80}}]\n\
             \x20 rules:\n  - matches: [{{path: {{type: PathPrefix, value: \"{prefix}\"}}}}]\n\
             \x20   backendRefs: [{{name: {name}, port: 80}}]\n"
        ));
    }
    yaml
}

/// Replaces `path` by rename, as editors and ConfigMap mounts do.
fn replace(path: &std::path::Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// The resource ids (`kind key`) an update carries, sorted.
fn ids(update: &ConfigUpdate) -> (Vec<String>, Vec<String>) {
    let name = |id: &mesh_api::proto::ResourceId| format!("{:?} {}", id.kind(), id.key);
    let mut upserts: Vec<String> = update.upserts.iter().filter_map(|r| r.id.as_ref()).map(name).collect();
    let mut removals: Vec<String> = update.removals.iter().map(name).collect();
    upserts.sort();
    removals.sort();
    (upserts, removals)
}

/// A source on a folder with `a.yaml` (Service a, its route on `/a`) and `b.yaml` (Service b,
/// its route on `/b`), read once, and a proxy that holds (and ACKed) its first version.
async fn standalone_folder() -> (tempfile::TempDir, ManifestSource, Publisher, Proxy, Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), service_yaml("a", "10.1.0.1", Some("/a"))).expect("write");
    std::fs::write(dir.path().join("b.yaml"), service_yaml("b", "10.1.0.2", Some("/b"))).expect("write");
    let publisher = Publisher::new();
    let mut source = ManifestSource::new(dir.path().to_path_buf(), Settings::default(), publisher.clone());
    assert_eq!(source.reload().expect("valid folder"), 1);
    let url = start(publisher.clone()).await;
    let mut proxy = Proxy::connect(&url, subscribe("node-1")).await.expect("subscribed");
    let first = proxy.next().await;
    let held = Config::default().apply(&first).expect("applies");
    assert_eq!(held.routes.len(), 2, "{:?}", held.routes.keys());
    proxy.ack(first.version).await;
    (dir, source, publisher, proxy, held)
}

#[tokio::test]
async fn a_standalone_edit_reads_only_its_file_and_publishes_only_its_objects() {
    let (dir, mut source, publisher, mut proxy, held) = standalone_folder().await;
    replace(&dir.path().join("b.yaml"), &service_yaml("b", "10.1.0.2", Some("/b-v2")));
    let scan = source.scan();
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!((scan.read, scan.removed), (1, 0), "only the edited file is read");
    assert_eq!(scan.version, 2);
    let delta = proxy.next().await;
    assert!(!delta.full_state);
    assert_eq!(ids(&delta), (vec!["Route HTTPRoute/shop/b".to_string()], vec![]), "only the edited route");
    let held = held.apply(&delta).expect("delta applies");
    assert_eq!(held, *publisher.current().config, "the proxy holds what a whole read resolves");
    proxy.ack(delta.version).await;

    // Nothing changed: nothing read, nothing published.
    let scan = source.scan();
    assert_eq!((scan.read, scan.removed, scan.version), (0, 0, 2));
    // A rewrite with the same content is read but publishes nothing.
    replace(&dir.path().join("a.yaml"), &service_yaml("a", "10.1.0.1", Some("/a")));
    let scan = source.scan();
    assert_eq!((scan.read, scan.version), (1, 2));
    proxy.nothing_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_good_objects_while_other_files_apply() {
    let (dir, mut source, publisher, mut proxy, held) = standalone_folder().await;
    replace(&dir.path().join("a.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n");
    replace(&dir.path().join("b.yaml"), &service_yaml("b", "10.1.0.9", Some("/b")));
    let scan = source.scan();
    assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
    assert!(scan.errors[0].to_string().contains("a.yaml:"), "{}", scan.errors[0]);
    let delta = proxy.next().await;
    assert_eq!(
        ids(&delta),
        (vec!["Backend shop/b:80".to_string()], vec![]),
        "b's new endpoint, and nothing of the broken a"
    );
    let held = held.apply(&delta).expect("applies");
    assert!(held.services.contains_key("shop/a") && held.routes.contains_key("HTTPRoute/shop/a"));
    proxy.ack(delta.version).await;

    // Not read again while unchanged; fixed, it applies.
    assert_eq!(source.scan().read, 0);
    replace(&dir.path().join("a.yaml"), &service_yaml("a", "10.1.0.1", Some("/a-fixed")));
    let scan = source.scan();
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    let delta = proxy.next().await;
    assert_eq!(ids(&delta), (vec!["Route HTTPRoute/shop/a".to_string()], vec![]));
    assert_eq!(held.apply(&delta).expect("applies"), *publisher.current().config);
}

#[tokio::test]
async fn removing_adding_and_renaming_files() {
    let (dir, mut source, publisher, mut proxy, held) = standalone_folder().await;
    // Removed: its Service, backend and route go.
    std::fs::remove_file(dir.path().join("b.yaml")).expect("remove");
    let scan = source.scan();
    assert_eq!((scan.read, scan.removed), (0, 1));
    let delta = proxy.next().await;
    let (upserts, removals) = ids(&delta);
    assert!(upserts.is_empty(), "{upserts:?}");
    assert_eq!(removals, ["Backend shop/b:80", "Route HTTPRoute/shop/b", "Service shop/b"]);
    let held = held.apply(&delta).expect("applies");
    proxy.ack(delta.version).await;

    // Added (in a subfolder): its objects arrive.
    std::fs::create_dir(dir.path().join("more")).expect("mkdir");
    std::fs::write(dir.path().join("more/c.yml"), service_yaml("c", "10.1.0.3", None)).expect("write");
    let scan = source.scan();
    assert_eq!(scan.read, 1);
    let delta = proxy.next().await;
    assert_eq!(ids(&delta), (vec!["Backend shop/c:80".to_string(), "Service shop/c".to_string()], vec![]));
    let held = held.apply(&delta).expect("applies");
    proxy.ack(delta.version).await;

    // Renamed: the same objects from another path; nothing to publish.
    let version = publisher.version();
    std::fs::rename(dir.path().join("a.yaml"), dir.path().join("renamed.yaml")).expect("rename");
    let scan = source.scan();
    assert_eq!((scan.read, scan.removed, scan.version), (1, 1, version));
    proxy.nothing_within(Duration::from_millis(200)).await;
    assert_eq!(held, *publisher.current().config);
}

#[tokio::test]
async fn an_object_in_two_files_comes_from_the_last_and_survives_its_removal() {
    let (dir, mut source, publisher, mut proxy, held) = standalone_folder().await;
    // z.yaml sorts last: its route for b wins over b.yaml's.
    std::fs::write(dir.path().join("z.yaml"), service_yaml("b", "10.1.0.2", Some("/from-z"))).expect("write");
    source.scan();
    let delta = proxy.next().await;
    assert_eq!(ids(&delta), (vec!["Route HTTPRoute/shop/b".to_string()], vec![]));
    let held = held.apply(&delta).expect("applies");
    proxy.ack(delta.version).await;
    // Without z.yaml, b.yaml's definition is back; nothing is removed.
    std::fs::remove_file(dir.path().join("z.yaml")).expect("remove");
    source.scan();
    let delta = proxy.next().await;
    assert_eq!(ids(&delta), (vec!["Route HTTPRoute/shop/b".to_string()], vec![]));
    let held = held.apply(&delta).expect("applies");
    assert_eq!(held, *publisher.current().config);
    let whole = mesh_controller::manifests::load_dir(dir.path()).expect("loads");
    let resolved = mesh_controller::resolve::resolve(&whole.store, &Settings::default());
    assert_eq!(held, resolved.config, "the same as reading the folder whole");
}

#[tokio::test]
async fn the_watch_notices_an_edit_without_waiting_for_the_poll() {
    let (dir, source, _publisher, mut proxy, _held) = standalone_folder().await;
    tokio::spawn(source.watch());
    // Let the watch task set up its inotify watch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fastest = Duration::MAX;
    for (n, prefix) in ["/one", "/two", "/three"].into_iter().enumerate() {
        let written = std::time::Instant::now();
        replace(&dir.path().join("b.yaml"), &service_yaml("b", "10.1.0.2", Some(prefix)));
        let delta = proxy.next().await;
        fastest = fastest.min(written.elapsed());
        assert_eq!(delta.version, 2 + n as u64);
        proxy.ack(delta.version).await;
    }
    // The poll runs every 250 ms; inotify answers in milliseconds. The fastest of three
    // leaves room for a loaded machine.
    assert!(fastest < Duration::from_millis(200), "fastest edit took {fastest:?}");
}
