//! The mesh end to end on two "nodes": network namespaces joined by a veth pair, each with its
//! own node proxy (config stream and certificates from an in-process weft-controller over
//! gRPC), pods attached by the real bridge/host-local plugins chained with weft-cni.
//!
//! A meshed client on node A calls a meshed Service on node B through its ClusterIP: the
//! request crosses the inter-node link only inside mutual TLS (HBONE), which a packet capture
//! on that link proves, while a call to an unmeshed pod crosses in plaintext (the capture's
//! positive control). The destination proxy reports the client's SPIFFE identity; a forged
//! certificate is refused. The server app sees its callers' own addresses: the meshed client
//! pod's through HBONE, the unmeshed pod's through the plaintext inbound path; DEL removes the
//! return route that makes this work along with the rules.
//!
//! Needs root, nft, tcpdump and the CNI plugins; skipped otherwise unless WEFT_REQUIRE_NETNS=1.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_api::identity::SpiffeId;
use mesh_proxy::config::connection::ControllerEndpoint;
use mesh_proxy::config::controller::Subscription;
use mesh_proxy::hbone::client::{HboneClient, PoolKey};
use mesh_proxy::identity::{CaSettings, IdentityManager, WorkloadCert};
use mesh_proxy::inpod::{InpodConfig, InpodServer};
use mesh_proxy::mesh::MeshTraffic;
use mesh_proxy::{Options, Running, Source};
use support::*;

use testbed::shop::{CHECKOUT_IDENTITY as CHECKOUT, FRONTEND_IDENTITY as FRONTEND};
/// Strings that must never cross the inter-node link in the clear (meshed), and one that must
/// (unmeshed: proves the capture would have seen it).
const MESHED_CANARY: &str = "weft-canary-meshed-5f3a9c";
const PLAINTEXT_CANARY: &str = "weft-canary-plaintext-81d2e7";

fn id(s: &str) -> SpiffeId {
    s.parse().expect("identity")
}

fn token_file(token: &str, dir: &Path) -> std::path::PathBuf {
    let token_file = dir.join(format!("{token}.token"));
    std::fs::write(&token_file, token).expect("token file");
    token_file
}

fn identities(url: &ControllerEndpoint, token: &str, dir: &Path) -> Arc<IdentityManager> {
    let token_file = token_file(token, dir);
    IdentityManager::new(CaSettings { endpoint: url.clone(), token_file, ttl: None })
        .expect("identity manager")
}

/// A node proxy as weft-proxy runs it: config from the controller, the mesh on its pods.
struct NodeProxy {
    running: Running,
    inpod: InpodServer,
}

async fn node_proxy(node: &Node, url: &ControllerEndpoint, token: &str) -> NodeProxy {
    let source = Source::Controller(Subscription {
        endpoint: url.clone(),
        node: node.name.clone(),
        token_file: Some(token_file(token, node.dir.path())),
    });
    let admin: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let running = mesh_proxy::start(Options { source, admin, access_log: true }).await.expect("proxy");
    let mesh = MeshTraffic::new(
        running.store.clone(),
        running.proxy.clone(),
        identities(url, token, node.dir.path()),
        "cluster.local".into(),
        true,
    );
    let metrics = mesh.clone();
    running.more_metrics.register(Arc::new(move || metrics.render_metrics()));
    let config = InpodConfig { socket: node.socket(), drain_deadline: Duration::ZERO, ..Default::default() };
    let inpod = InpodServer::start(config, Arc::new(mesh)).await.expect("in-pod server");
    NodeProxy { running, inpod }
}

async fn get_metrics(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(admin).expect("admin");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        conn.read_to_string(&mut out).expect("read");
        out
    })
    .await
    .expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_pods_on_two_nodes_talk_only_over_mutual_tls() {
    if !netns_available(&["tcpdump"]) {
        return;
    }
    let (a, b) = (node("node-a", "10.201.1.0/24"), node("node-b", "10.201.2.0/24"));
    let (link_a, _) = link(&a, "10.201.1.0/24", &b, "10.201.2.0/24");
    let (url, publisher, _bundle) = controller().await;
    let proxy_a = node_proxy(&a, &url, "token-a").await;
    let proxy_b = node_proxy(&b, &url, "token-b").await;

    let frontend = a.add_pod("shop", "frontend", meshed("frontend"));
    let v1 = b.add_pod("shop", "checkout-v1", meshed("checkout"));
    let v2 = b.add_pod("shop", "checkout-v2", meshed("checkout"));
    let legacy = b.add_pod("legacy", "legacy", unmeshed());
    let yaml = testbed::shop::manifests(&frontend, &v1, &v2, &legacy);
    let loaded = mesh_controller::manifests::load_str(&yaml, Path::new("e2e.yaml")).expect("manifests");
    let resolved = mesh_controller::resolve::resolve(&loaded.store, &Default::default());
    assert_eq!(resolved.config.workloads.len(), 4, "{:?}", resolved.config.workloads.keys());
    assert_eq!(resolved.config.routes.len(), 1, "the GAMMA route is accepted: {yaml}");
    let version = publisher.publish(resolved.config);
    for proxy in [&proxy_a, &proxy_b] {
        let store = proxy.running.store.clone();
        eventually("both proxies have the config", || store.load().version >= version).await;
    }
    let _apps = [
        testbed::http::HttpEcho::start(&v1.path(), 8080, "v1"),
        testbed::http::HttpEcho::start(&v2.path(), 8080, "v2"),
        testbed::http::HttpEcho::start(&legacy.path(), 8080, "legacy"),
    ];
    let vip = SocketAddr::new(testbed::shop::CHECKOUT_VIP.parse().expect("vip"), 80);

    let pcap = a.dir.path().join("link.pcap");
    let capture = testbed::capture::Capture::start(&a.netns, &link_a, pcap.clone());

    // L7 through the ClusterIP: the GAMMA route splits requests, not connections.
    let frontend_ns = frontend.path();
    let served = blocking(move || {
        testbed::http::served_by(&frontend_ns, vip, 200, "x-canary: weft-canary-meshed-5f3a9c\r\n")
    })
    .await
    .expect("200 requests on one connection through the ClusterIP");
    let to_v2 = served.iter().filter(|s| s.as_str() == "v2").count();
    let to_v1 = served.iter().filter(|s| s.as_str() == "v1").count();
    assert_eq!(to_v1 + to_v2, 200, "{served:?}");
    // 90/10 of 200: 20 expected, 4.2 standard deviations; 5..=45 fails once in thousands.
    assert!((5..=45).contains(&to_v2), "v2 got {to_v2} of 200");
    let frontend_ns = frontend.path();
    let pinned = blocking(move || testbed::http::served_by(&frontend_ns, vip, 20, "x-version: v2\r\n"))
        .await
        .expect("header-matched requests");
    assert!(pinned.iter().all(|s| s == "v2"), "x-version: v2 always reaches v2: {pinned:?}");

    // L4 to a meshed pod's own address: tunnelled too.
    let (frontend_ns, pod_addr) = (frontend.path(), v1.addr(8080));
    let answer = blocking(move || testbed::http::get_once(&frontend_ns, pod_addr, MESHED_CANARY))
        .await
        .expect("the meshed call to the pod's own address succeeds");
    assert!(answer.contains(MESHED_CANARY) && answer.contains("x-served-by: v1"), "{answer}");
    assert_eq!(
        testbed::http::peer_of(&answer),
        Some(frontend.ip),
        "through HBONE the server app sees the client pod's address: {answer}"
    );

    // Meshed → unmeshed is plaintext, and the capture sees it.
    let (frontend_ns, legacy_addr) = (frontend.path(), legacy.addr(8080));
    let answer = blocking(move || testbed::http::get_once(&frontend_ns, legacy_addr, PLAINTEXT_CANARY))
        .await
        .expect("meshed → unmeshed is plaintext and works");
    assert!(answer.contains(PLAINTEXT_CANARY), "{answer}");

    let captured = capture.finish();
    assert!(
        testbed::capture::contains(&captured, PLAINTEXT_CANARY),
        "the capture sees plaintext when there is some"
    );
    assert!(
        !testbed::capture::contains(&captured, MESHED_CANARY),
        "meshed traffic crossed the link in the clear"
    );
    for pod in [&v1, &v2] {
        let hbone = testbed::capture::count_packets(&pcap, &format!("tcp port 15008 and host {}", pod.ip));
        assert!(hbone > 0, "meshed traffic to {} went over HBONE (:15008)", pod.ip);
        let direct = testbed::capture::count_packets(&pcap, &format!("tcp port 8080 and host {}", pod.ip));
        assert_eq!(direct, 0, "nothing went to {}:8080 directly", pod.ip);
    }

    // Unmeshed → meshed (plaintext inbound, :15006): the app sees the unmeshed pod's address.
    let (legacy_ns, pod_addr) = (legacy.path(), v1.addr(8080));
    let answer = blocking(move || testbed::http::get_once(&legacy_ns, pod_addr, PLAINTEXT_CANARY))
        .await
        .expect("unmeshed → meshed works");
    assert!(answer.contains("x-served-by: v1"), "{answer}");
    assert_eq!(
        testbed::http::peer_of(&answer),
        Some(legacy.ip),
        "the app sees the unmeshed caller: {answer}"
    );
    let inpod_b = proxy_b.inpod.metrics();
    assert!(inpod_b.source_kept.load(Ordering::Relaxed) >= 2, "kept-source deliveries counted");
    assert_eq!(inpod_b.source_fallbacks.load(Ordering::Relaxed), 0, "no delivery fell back");

    // The destination proxy knows who called.
    let metrics = get_metrics(proxy_b.running.admin).await;
    let streams =
        metric(&metrics, &format!("weft_hbone_inbound_streams_total{{source_identity=\"{FRONTEND}\"}}"));
    assert!(streams >= 3.0, "streams from {FRONTEND}: {metrics}");
    // And the source proxy counted the routed requests.
    let metrics_a = get_metrics(proxy_a.running.admin).await;
    assert!(metrics_a.contains("HTTPRoute/shop/checkout-canary"), "{metrics_a}");

    // A certificate the mesh's CA did not sign gets no tunnel.
    let real =
        identities(&url, "token-a", a.dir.path()).certificate(&id(FRONTEND)).await.expect("certificate");
    let forged = forged_like(&real);
    let from_node_a: mesh_proxy::hbone::Connector = {
        let netns = a.netns.path();
        Arc::new(move |addr| {
            let netns = netns.clone();
            Box::pin(async move {
                let stream = blocking(move || in_netns(&netns, move || TcpStream::connect(addr))).await?;
                stream.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(stream)
            })
        })
    };
    let key = PoolKey {
        source: "forger".into(),
        source_identity: id(FRONTEND),
        destination: v1.addr(15008),
        destination_identity: id(CHECKOUT),
    };
    let refused = HboneClient::default().open(&key, &forged, &from_node_a, v1.addr(8080)).await;
    assert!(refused.is_err(), "a forged certificate got a tunnel");
    let mut failures = 0.0;
    for _ in 0..100 {
        failures = metric(&get_metrics(proxy_b.running.admin).await, "weft_hbone_handshake_failures_total");
        if failures > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures, 1.0, "the destination proxy counted the refused handshake");

    // The frontend pod is deleted (CNI DEL): node A's proxy has no other pod of that identity,
    // so it stops renewing its certificate (the expiry series goes with it).
    let expiry = format!("weft_workload_cert_expiry_seconds{{identity=\"{FRONTEND}\"}}");
    assert!(get_metrics(proxy_a.running.admin).await.contains(&expiry), "frontend had a certificate");
    let route = mesh_init::nft::return_route_in(&frontend.path()).expect("list the return route");
    assert!(
        route.contains("fwmark 0x5747 lookup 22343") && route.contains("local default dev lo"),
        "{route}"
    );
    assert!(frontend.del(), "DEL");
    let route = mesh_init::nft::return_route_in(&frontend.path()).expect("list the return route");
    assert!(route.trim().is_empty(), "DEL removes the return route: {route}");
    assert!(!mesh_init::table_exists_in(&frontend.path()).expect("list rules"), "DEL removes the rules");
    let mut forgotten = false;
    for _ in 0..100 {
        if !get_metrics(proxy_a.running.admin).await.contains(&expiry) {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(forgotten, "the deleted pod's certificate is still kept");
}

/// Runs blocking work (sockets in other netns) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// The value of one sample line of Prometheus text; 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The same identity and trust bundle as `real`, but a self-signed certificate from another
/// trust domain and a key of its own.
fn forged_like(real: &WorkloadCert) -> WorkloadCert {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("spiffe://evil.example/ns/shop/sa/frontend").expect("uri"),
    )];
    let cert = params.self_signed(&key).expect("self-signed");
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &rustls::crypto::ring::default_provider(),
    )
    .expect("certified key");
    WorkloadCert {
        identity: real.identity.clone(),
        certified: Arc::new(certified),
        roots: real.roots.clone(),
        not_before: real.not_before,
        not_after: real.not_after,
    }
}
