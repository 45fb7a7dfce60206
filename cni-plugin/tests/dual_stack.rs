//! In-pod interception on IPv6 and dual-stack pods, on real network namespaces and the real
//! nftables rules.
//!
//! - The node proxy's per-pod listeners, opened in the pod's netns as the proxy opens them, take
//!   both families; the original destination comes back right for each (`SO_ORIGINAL_DST`,
//!   `IP6T_SO_ORIGINAL_DST`); the proxy's own marked IPv6 connections pass the rules.
//! - A pod whose netns has IPv6 disabled is adopted all the same and works on IPv4.
//! - Deliveries to the app keep the client's address on both families (IP_TRANSPARENT and the
//!   pod's return route), a closed port refuses them at once, a real client that picks the
//!   port of a live delivery is not mistaken for it, and without the route the proxy delivers
//!   from the pod's own address and counts it.
//! - End to end on two dual-stack nodes (bridge + host-local with an IPv4 and a ULA IPv6 range,
//!   chained with weft-cni): a meshed client calls a meshed server on its IPv6 address across
//!   the inter-node link only inside HBONE (a capture proves it), the destination proxy sees
//!   the client's SPIFFE identity, the server app sees the client pod's IPv6 (and IPv4)
//!   address, IPv6 to an unmeshed pod goes in plaintext, and IPv4 works beside it.
//!
//! Here rather than in mesh-proxy because it needs the rules (mesh-init), the CNI chain and
//! the testbed together. Needs root, nft, tcpdump and the CNI plugins; skipped otherwise unless
//! WEFT_REQUIRE_NETNS=1.

mod support;

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_api::inpod::PodInfo;
use mesh_proxy::config::connection::ControllerEndpoint;
use mesh_proxy::config::controller::Subscription;
use mesh_proxy::identity::{CaSettings, IdentityManager};
use mesh_proxy::inpod::metrics::InpodMetrics;
use mesh_proxy::inpod::netns::PodNetns;
use mesh_proxy::inpod::pod::AdoptedPod;
use mesh_proxy::inpod::{InpodConfig, InpodServer, PodContext, PodTraffic, Ports};
use mesh_proxy::{Options, Running, Source};
use support::*;
use testbed::cni::link_v6;
use testbed::netns::{Netns, run, unique};
use tokio::io::AsyncWriteExt as _;

/// Answers every intercepted connection with one line naming the listener that took it and
/// the original destination the proxy read for it, then closes.
struct Report;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn say(mut conn: tokio::net::TcpStream, line: String) {
    let _ = conn.write_all(line.as_bytes()).await;
    let _ = conn.shutdown().await;
}

impl PodTraffic for Report {
    fn outbound(&self, _: Arc<PodContext>, conn: tokio::net::TcpStream, dst: SocketAddr) -> Task {
        Box::pin(say(conn, format!("outbound {dst}")))
    }
    fn inbound_plaintext(&self, _: Arc<PodContext>, conn: tokio::net::TcpStream, dst: SocketAddr) -> Task {
        Box::pin(say(conn, format!("inbound {dst}")))
    }
    fn inbound_hbone(&self, _: Arc<PodContext>, conn: tokio::net::TcpStream) -> Task {
        Box::pin(say(conn, "hbone".into()))
    }
}

/// Connects from inside `netns` to `addr` and reads everything the other side says.
fn ask(netns: PathBuf, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(&netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut out = String::new();
        conn.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Runs blocking work (sockets in other netns) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// A pod netns and a peer netns joined by a veth pair: the pod is 10.203.0.2 and, when `v6`,
/// fd00:203::2 (the peer .1 / ::1). Without `v6` the pod's netns has IPv6 disabled before
/// its interface exists. The weft rules are applied in the pod's netns.
fn pod_and_peer(v6: bool) -> (Netns, Netns) {
    let (pod, peer) = (Netns::new("ds-pod"), Netns::new("ds-peer"));
    if !v6 {
        for key in ["all", "default", "lo"] {
            let setting = format!("net.ipv6.conf.{key}.disable_ipv6=1");
            run("ip", &["netns", "exec", &pod.name, "sysctl", "-q", "-w", &setting]);
        }
    }
    let (vp, vq) = (unique("vp"), unique("vq"));
    run(
        "ip",
        &["link", "add", &vp, "netns", &pod.name, "type", "veth", "peer", "name", &vq, "netns", &peer.name],
    );
    for (ns, iface, v4, v6addr) in
        [(&pod, &vp, "10.203.0.2/24", "fd00:203::2/64"), (&peer, &vq, "10.203.0.1/24", "fd00:203::1/64")]
    {
        ns.ip(&["addr", "add", v4, "dev", iface]);
        if v6 {
            ns.ip(&["addr", "add", v6addr, "dev", iface, "nodad"]);
        }
        ns.ip(&["link", "set", iface, "up"]);
    }
    let applied =
        mesh_init::nft::apply_in(&pod.path(), &mesh_init::Settings::default()).expect("rules in the pod");
    applied.return_route.expect("the return route in the pod");
    (pod, peer)
}

/// Adopts the pod's netns (addresses 10.203.0.2 and fd00:203::2) as the in-pod server does,
/// with [`Report`] as the mesh and `metrics` as its counters.
async fn adopt_counted(pod: &Netns, metrics: Arc<InpodMetrics>) -> AdoptedPod {
    let fd = OwnedFd::from(std::fs::File::open(pod.path()).expect("open netns"));
    let handle = tokio::runtime::Handle::current();
    let info = PodInfo {
        uid: unique("uid"),
        namespace: "ns".into(),
        name: "pod".into(),
        ips: vec![ip("10.203.0.2"), ip("fd00:203::2")],
        ..Default::default()
    };
    blocking(move || {
        let netns = PodNetns::new(fd)?;
        AdoptedPod::adopt(
            info,
            netns,
            Ports::default(),
            mesh_api::PROXY_FWMARK,
            Arc::new(Report),
            metrics,
            &handle,
        )
    })
    .await
    .expect("adopt the pod")
}

async fn adopt(pod: &Netns) -> AdoptedPod {
    adopt_counted(pod, Arc::default()).await
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip address")
}

/// Asks the [`testbed::http::HttpEcho`] at the other end of `conn` whom it sees calling.
async fn peer_seen(mut conn: tokio::net::TcpStream) -> Option<IpAddr> {
    use tokio::io::AsyncReadExt as _;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut answer)).await.ok()?.ok()?;
    testbed::http::peer_of(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_keep_the_client_address_on_both_families_and_fall_back_without_the_route() {
    if !netns_available(&[]) {
        return;
    }
    let (pod, peer) = pod_and_peer(true);
    let metrics = Arc::new(InpodMetrics::default());
    let adopted = adopt_counted(&pod, metrics.clone()).await;
    let _app = testbed::http::HttpEcho::start_dual_stack(&pod.path(), 8080, "app");
    let pod_ctx = adopted.context.clone();
    let counted = |m: &InpodMetrics| {
        (m.source_kept.load(Ordering::Relaxed), m.source_fallbacks.load(Ordering::Relaxed))
    };

    // Clients on other nodes (addresses the pod has no route to but its default) and on the
    // pod's own link: the app sees each of them, on both families.
    for (client, target) in [
        ("203.0.113.7", "10.203.0.2:8080"),
        ("10.203.0.1", "10.203.0.2:8080"),
        ("2001:db8::7", "[fd00:203::2]:8080"),
        ("fd00:203::1", "[fd00:203::2]:8080"),
    ] {
        let conn = pod_ctx.deliver(Some(ip(client)), sa(target)).await.expect("delivered");
        assert_eq!(peer_seen(conn).await, Some(ip(client)), "{client} → {target}");
    }
    assert_eq!(counted(&metrics), (4, 0));
    // A client address the delivery cannot take (the pod's own, or none) is not kept.
    let conn = pod_ctx.deliver(Some(ip("10.203.0.2")), sa("10.203.0.2:8080")).await.expect("delivered");
    assert_eq!(peer_seen(conn).await, Some(ip("10.203.0.2")));
    assert_eq!(counted(&metrics), (4, 0));

    // A closed port refuses at once: the kernel's reset carries the mark back to the proxy
    // (fwmark_reflect) instead of leaving on eth0.
    for (client, target) in [("203.0.113.7", "10.203.0.2:8081"), ("2001:db8::7", "[fd00:203::2]:8081")] {
        let started = std::time::Instant::now();
        let refused = pod_ctx.deliver(Some(ip(client)), sa(target)).await.map(drop);
        assert_eq!(refused.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionRefused), "{target}");
        assert!(started.elapsed() < Duration::from_secs(1), "{target} refused in {:?}", started.elapsed());
    }

    // The peer's real connection from the very port a live delivery from its address uses
    // is still taken by the proxy's inbound listener: deliveries are untracked, so conntrack
    // does not take one for the other.
    let live = pod_ctx.deliver(Some(ip("10.203.0.1")), sa("10.203.0.2:8080")).await.expect("delivered");
    let port = live.local_addr().expect("local address").port();
    let got = blocking({
        let path = peer.path();
        move || {
            in_netns(&path, move || {
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.bind(&sa(&format!("10.203.0.1:{port}")).into())?;
                socket.connect_timeout(&sa("10.203.0.2:8080").into(), WAIT)?;
                let mut conn: TcpStream = socket.into();
                conn.set_read_timeout(Some(WAIT))?;
                let mut out = String::new();
                conn.read_to_string(&mut out)?;
                Ok(out)
            })
        }
    })
    .await
    .expect("the peer's connection from a delivery's port");
    assert_eq!(got, "inbound 10.203.0.2:8080");
    drop(live);

    // Without the return route (a pod meshed by an older weft-cni): delivered from the pod's
    // own address, counted.
    mesh_init::nft::in_netns(&pod.path(), || {
        mesh_init::route::remove(mesh_api::TRANSPARENT_FWMARK);
        Ok(())
    })
    .expect("remove the return route");
    let before = counted(&metrics);
    for (client, target, own) in [
        ("203.0.113.7", "10.203.0.2:8080", "10.203.0.2"),
        ("2001:db8::7", "[fd00:203::2]:8080", "fd00:203::2"),
    ] {
        let conn = pod_ctx.deliver(Some(ip(client)), sa(target)).await.expect("delivered");
        assert_eq!(peer_seen(conn).await, Some(ip(own)), "{client} → {target} without the route");
    }
    assert_eq!(counted(&metrics), (before.0, before.1 + 2));
    assert!(metrics.render(1).contains("weft_inpod_source_address_fallbacks_total 2"));
    adopted.drain(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_listeners_take_both_families_with_their_original_destinations() {
    if !netns_available(&[]) {
        return;
    }
    let (pod, peer) = pod_and_peer(true);
    let adopted = adopt(&pod).await;
    let cases = [
        // The pod's outbound, redirected in its output hook to 127.0.0.1 / ::1 :15001.
        (&pod, "[fd00:203::1]:9000", "outbound [fd00:203::1]:9000"),
        (&pod, "10.203.0.1:9000", "outbound 10.203.0.1:9000"),
        // Inbound plaintext, redirected in prerouting to :15006.
        (&peer, "[fd00:203::2]:8080", "inbound [fd00:203::2]:8080"),
        (&peer, "10.203.0.2:8080", "inbound 10.203.0.2:8080"),
        // HBONE, not redirected: straight to :15008 on either family.
        (&peer, "[fd00:203::2]:15008", "hbone"),
        (&peer, "10.203.0.2:15008", "hbone"),
    ];
    for (from, to, want) in cases {
        let got = blocking({
            let path = from.path();
            move || ask(path, sa(to))
        })
        .await
        .unwrap_or_else(|e| panic!("{to} from {}: {e}", from.name));
        assert_eq!(got, want, "{to} from {}", from.name);
    }

    // The proxy's own IPv6 connection from inside the pod (marked) passes the rules: it reaches
    // the peer from the pod's address instead of coming back to :15001.
    let listener = in_netns(&peer.path(), || TcpListener::bind("[fd00:203::1]:7000")).expect("peer listener");
    let conn = adopted.context.sockets.connect(sa("[fd00:203::1]:7000")).await.expect("proxy connects out");
    let (_accepted, from) = blocking(move || listener.accept()).await.expect("the peer accepts");
    assert_eq!(from.ip(), "fd00:203::2".parse::<IpAddr>().expect("ip"));
    drop(conn);
    adopted.drain(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_ipv6_disabled_is_served_on_ipv4() {
    if !netns_available(&[]) {
        return;
    }
    let (pod, peer) = pod_and_peer(false);
    let v6 = pod.command("sysctl").args(["-n", "net.ipv6.conf.all.disable_ipv6"]).output().expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&v6.stdout).trim(), "1", "IPv6 is off in the pod");
    let adopted = adopt(&pod).await;
    for (from, to, want) in [
        (&pod, "10.203.0.1:9000", "outbound 10.203.0.1:9000"),
        (&peer, "10.203.0.2:8080", "inbound 10.203.0.2:8080"),
        (&peer, "10.203.0.2:15008", "hbone"),
    ] {
        let got = blocking({
            let path = from.path();
            move || ask(path, sa(to))
        })
        .await
        .unwrap_or_else(|e| panic!("{to} from {}: {e}", from.name));
        assert_eq!(got, want, "{to} from {}", from.name);
    }
    adopted.drain(Duration::ZERO).await;
}

// ---- end to end on two dual-stack nodes ----

const MESHED_CANARY: &str = "weft-canary-meshed-v6-2c71e0";
const PLAINTEXT_CANARY: &str = "weft-canary-plaintext-v6-9b44d3";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

struct NodeProxy {
    running: Running,
    _inpod: InpodServer,
}

/// A node proxy as weft-proxy runs it: config from the controller, the mesh on its pods.
async fn node_proxy(node: &Node, url: &ControllerEndpoint, token: &str) -> NodeProxy {
    let token_file = node.dir.path().join(format!("{token}.token"));
    std::fs::write(&token_file, token).expect("token file");
    let source = Source::Controller(Subscription {
        endpoint: url.clone(),
        node: node.name.clone(),
        token_file: Some(token_file.clone()),
    });
    let running = mesh_proxy::start(Options { source, admin: sa("127.0.0.1:0"), access_log: true })
        .await
        .expect("proxy");
    let identities = IdentityManager::new(CaSettings { endpoint: url.clone(), token_file, ttl: None })
        .expect("identity manager");
    let mesh = mesh_proxy::mesh::MeshTraffic::new(
        running.store.clone(),
        running.proxy.clone(),
        identities,
        "cluster.local".into(),
        true,
    );
    let metrics = mesh.clone();
    running.more_metrics.register(Arc::new(move || metrics.render_metrics()));
    let config = InpodConfig { socket: node.socket(), drain_deadline: Duration::ZERO, ..Default::default() };
    let inpod = InpodServer::start(config, Arc::new(mesh)).await.expect("in-pod server");
    NodeProxy { running, _inpod: inpod }
}

async fn get_metrics(admin: SocketAddr) -> String {
    blocking(move || {
        let mut conn = TcpStream::connect(admin)?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")?;
        let mut out = String::new();
        conn.read_to_string(&mut out)?;
        Ok(out)
    })
    .await
    .expect("metrics")
}

/// The value of one sample line of Prometheus text; 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The dual-stack ClusterIPs of Service `shop/server`.
const SERVER_VIP: &str = "10.96.4.10";
const SERVER_VIP6: &str = "fd00:96::10";

/// The cluster as the controller reads it: namespace `shop` meshed (pods `client` on node-a,
/// `server` on node-b), namespace `legacy` not (pod `legacy` on node-b), each pod with both
/// of its addresses in `status.podIPs`, as a dual-stack kubelet reports them; Service
/// `shop/server` (port 80 → 8080) with a ClusterIP of each family and an EndpointSlice of each
/// family, as Kubernetes makes them for `ipFamilyPolicy: RequireDualStack`.
fn manifests(pods: &[(&str, &str, &str, &str, IpAddr, IpAddr)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/mesh: enabled}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---\n",
    );
    for (ns, name, node, sa, v4, v6) in pods {
        yaml += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: app, image: app}}]}}\n\
             status: {{phase: Running, podIP: \"{v4}\", podIPs: [{{ip: \"{v4}\"}}, {{ip: \"{v6}\"}}], \
             conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
        );
    }
    let (_, _, _, _, v4, v6) = pods.iter().find(|p| p.1 == "server").expect("server pod");
    yaml += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: shop}}\n\
         spec: {{clusterIP: \"{SERVER_VIP}\", clusterIPs: [\"{SERVER_VIP}\", \"{SERVER_VIP6}\"], \
         ipFamilies: [IPv4, IPv6], ipFamilyPolicy: RequireDualStack, \
         ports: [{{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}]}}\n---\n"
    );
    for (family, ip) in [("IPv4", v4), ("IPv6", v6)] {
        yaml += &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: server-{family}, namespace: shop, labels: {{kubernetes.io/service-name: server}}}}\n\
             addressType: {family}\nports: [{{name: tcp, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node-b, \
             targetRef: {{kind: Pod, name: server, namespace: shop}}}}]\n---\n"
        );
    }
    yaml
}

async fn get(from: &Path, to: SocketAddr, canary: &'static str) -> String {
    let from = from.to_path_buf();
    blocking(move || testbed::http::get_once(&from, to, canary))
        .await
        .unwrap_or_else(|e| panic!("GET {to}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_pods_talk_over_ipv6_inside_hbone_and_ipv4_still_works() {
    if !netns_available(&["tcpdump"]) {
        return;
    }
    let weft_cni = Path::new(WEFT_CNI);
    let a = Node::dual_stack("node-a", "10.204.1.0/24", "fd00:204:1::/64", weft_cni);
    let b = Node::dual_stack("node-b", "10.204.2.0/24", "fd00:204:2::/64", weft_cni);
    let ifaces = link(&a, "10.204.1.0/24", &b, "10.204.2.0/24");
    link_v6(&a, "fd00:204:1::/64", &b, "fd00:204:2::/64", &ifaces);
    let (url, publisher, _bundle) = controller().await;
    let proxy_a = node_proxy(&a, &url, "token-a").await;
    let proxy_b = node_proxy(&b, &url, "token-b").await;

    let client = a.add_pod("shop", "client", meshed("client"));
    let server = b.add_pod("shop", "server", meshed("server"));
    let legacy = b.add_pod("legacy", "legacy", unmeshed());
    let v6 = |pod: &testbed::cni::Pod<'_>| {
        pod.ip6().unwrap_or_else(|| panic!("{} has no IPv6: {}", pod.spec.name, pod.result))
    };
    let (server6, legacy6) = (v6(&server), v6(&legacy));
    let yaml = manifests(&[
        ("shop", "client", "node-a", "client", client.ip, v6(&client)),
        ("shop", "server", "node-b", "server", server.ip, server6),
        ("legacy", "legacy", "node-b", "default", legacy.ip, legacy6),
    ]);
    let loaded =
        mesh_controller::manifests::load_str(&yaml, Path::new("dual-stack.yaml")).expect("manifests");
    let resolved = mesh_controller::resolve::resolve(&loaded.store, &Default::default());
    let server_workload =
        resolved.config.workloads.values().find(|w| w.key.name == "server").expect("server");
    assert!(
        server_workload.ips.contains(&server6),
        "the controller reads status.podIPs: {server_workload:?}"
    );
    let version = publisher.publish(resolved.config);
    for proxy in [&proxy_a, &proxy_b] {
        let store = proxy.running.store.clone();
        eventually("both proxies have the config", || store.load().version >= version).await;
    }
    let _apps = [
        testbed::http::HttpEcho::start_dual_stack(&server.path(), 8080, "server"),
        testbed::http::HttpEcho::start_dual_stack(&legacy.path(), 8080, "legacy"),
    ];

    let pcap = a.dir.path().join("link.pcap");
    let capture = testbed::capture::Capture::start(&a.netns, &ifaces.0, pcap.clone());

    // Meshed → meshed on IPv6: tunnelled, from the client pod's own certificate; the server app
    // sees the client pod's IPv6 address.
    let client6 = v6(&client);
    let answer = get(&client.path(), SocketAddr::new(server6, 8080), MESHED_CANARY).await;
    assert!(answer.contains(MESHED_CANARY) && answer.contains("x-served-by: server"), "{answer}");
    assert_eq!(testbed::http::peer_of(&answer), Some(client6), "{answer}");
    // The same on IPv4, beside it.
    let answer = get(&client.path(), server.addr(8080), MESHED_CANARY).await;
    assert!(answer.contains(MESHED_CANARY) && answer.contains("x-served-by: server"), "{answer}");
    assert_eq!(testbed::http::peer_of(&answer), Some(client.ip), "{answer}");
    // Through the Service's IPv6 ClusterIP: an endpoint picked, tunnelled likewise.
    let answer = get(&client.path(), sa(&format!("[{SERVER_VIP6}]:80")), MESHED_CANARY).await;
    assert!(answer.contains(MESHED_CANARY) && answer.contains("x-served-by: server"), "{answer}");
    assert_eq!(testbed::http::peer_of(&answer), Some(client6), "{answer}");
    // Unmeshed → meshed on IPv6 (plaintext inbound): the app sees the unmeshed pod.
    let answer = get(&legacy.path(), SocketAddr::new(server6, 8080), PLAINTEXT_CANARY).await;
    assert_eq!(testbed::http::peer_of(&answer), Some(legacy6), "{answer}");
    // Meshed → unmeshed on IPv6: plaintext, and it works.
    let answer = get(&client.path(), SocketAddr::new(legacy6, 8080), PLAINTEXT_CANARY).await;
    assert!(answer.contains(PLAINTEXT_CANARY) && answer.contains("x-served-by: legacy"), "{answer}");

    let captured = capture.finish();
    assert!(
        testbed::capture::contains(&captured, PLAINTEXT_CANARY),
        "the capture sees plaintext when there is some"
    );
    assert!(
        !testbed::capture::contains(&captured, MESHED_CANARY),
        "meshed traffic crossed the link in the clear"
    );
    for ip in [server6, server.ip] {
        let hbone = testbed::capture::count_packets(&pcap, &format!("tcp port 15008 and host {ip}"));
        assert!(hbone > 0, "meshed traffic to {ip} went over HBONE (:15008)");
        let direct = testbed::capture::count_packets(&pcap, &format!("tcp port 8080 and host {ip}"));
        assert_eq!(direct, 0, "nothing went to {ip}:8080 directly");
    }
    let plain = testbed::capture::count_packets(&pcap, &format!("ip6 and tcp port 8080 and host {legacy6}"));
    assert!(plain > 0, "the unmeshed call went over IPv6 in plaintext");

    // The destination proxy knows who called, on both families.
    let metrics = get_metrics(proxy_b.running.admin).await;
    let streams =
        metric(&metrics, &format!("weft_hbone_inbound_streams_total{{source_identity=\"{CLIENT}\"}}"));
    assert!(streams >= 3.0, "streams from {CLIENT}: {metrics}");
    drop(proxy_a);
}
