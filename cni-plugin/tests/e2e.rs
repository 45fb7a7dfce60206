//! weft-cni end to end, as a container runtime drives it: the Debian `loopback`, `bridge` and
//! `host-local` plugins and the built `weft-cni` binary, invoked with CNI_COMMAND / CNI_NETNS /
//! CNI_ARGS and the conflist-derived config on stdin, on network namespaces these tests create
//! (one "node" netns holding the bridge, one netns per "pod"), with the proxy's in-pod server
//! running in this process.
//!
//! Needs root, `nft` and /usr/lib/cni/bridge; skipped with a printed reason otherwise, unless
//! `WEFT_REQUIRE_NETNS=1` (CI and `cargo xtask e2e`), which turns a skip into a failure.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_proxy::inpod::{InpodConfig, InpodServer, Passthrough, PodTraffic};
use serde_json::{Value, json};

mod support;

use support::{Installer, PodServer, Recorder, WAIT, WEFT_CNI, eventually, in_netns, round_trip, unmeshed};
use testbed::cni::{Node, Pod, PodSpec};
use testbed::netns::{Netns, unique};

/// Connects from inside `netns` to `addr`, sends `ping`, returns the answer.
fn ping(netns: &Path, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.write_all(b"ping\n")?;
        let mut out = String::new();
        conn.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// A node of this file's tests: one pod subnet, pods in namespace `e2e`.
fn new_node() -> Node {
    support::node("node", "10.77.0.0/24")
}

/// A host's CNI bin and conf dirs (in a temp dir) whose primary network is `conflist`.
struct HostCni {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    conf: std::path::PathBuf,
    primary: std::path::PathBuf,
}

fn host_cni(conflist: &Value) -> HostCni {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&conf).expect("conf dir");
    let primary = conf.join("10-bridge.conflist");
    std::fs::write(&primary, conflist.to_string()).expect("write conflist");
    HostCni { dir, bin, conf, primary }
}

/// The proxy's in-pod server for `node`, in this process, with `traffic` behind it.
async fn start_proxy(node: &Node, traffic: Arc<dyn PodTraffic>) -> InpodServer {
    let config = InpodConfig { socket: node.socket(), drain_deadline: Duration::ZERO, ..Default::default() };
    InpodServer::start(config, traffic).await.expect("start in-pod server")
}

fn has_rules(pod: &Pod<'_>) -> bool {
    mesh_init::table_exists_in(&pod.path()).expect("list rules")
}

/// The pod's return route for kept source addresses (rules and routes as `ip` lists them).
fn return_route(pod: &Pod<'_>) -> String {
    mesh_init::nft::return_route_in(&pod.path()).expect("list the return route").trim().to_string()
}

fn state_file(pod: &Pod<'_>) -> PathBuf {
    pod.node.state_dir().join(format!("{}.json", pod.spec.uid))
}

fn meshed(annotations: Value) -> Value {
    testbed::cni::meshed_with("default", annotations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_pod_traffic_goes_through_the_proxy_exclusions_bypass_unmeshed_untouched_del_cleans() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let recorder = Arc::new(Recorder::default());
    let proxy = start_proxy(&node, recorder.clone()).await;

    let client = node
        .try_add_pod("e2e", "a", meshed(json!({"weft.dev/exclude-outbound-ports": "9090"})))
        .expect("meshed ADD");
    let server = node.try_add_pod("e2e", "b", unmeshed()).expect("unmeshed ADD");
    assert!(has_rules(&client) && state_file(&client).exists());
    assert!(!has_rules(&server), "an unmeshed pod's netns is untouched");
    assert!(!state_file(&server).exists());
    assert_eq!(proxy.pods(), vec![client.spec.uid.clone()]);

    // Outbound: lands on the proxy's 15001 with the original destination, then passes through
    // from inside the pod (the server sees the pod's own address).
    let _echo = PodServer::first_line_from_peer(&server.path(), 8080);
    let _echo_excluded = PodServer::first_line_from_peer(&server.path(), 9090);
    let answer = tokio::task::spawn_blocking({
        let (path, addr) = (client.path(), server.addr(8080));
        move || ping(&path, addr)
    })
    .await
    .expect("join")
    .expect("meshed → unmeshed connection");
    assert_eq!(answer, format!("ping from {}", client.ip));
    assert_eq!(recorder.seen(), vec![(client.spec.uid.clone(), "outbound", server.addr(8080))]);

    // An excluded port bypasses the proxy.
    let answer = tokio::task::spawn_blocking({
        let (path, addr) = (client.path(), server.addr(9090));
        move || ping(&path, addr)
    })
    .await
    .expect("join")
    .expect("excluded port");
    assert_eq!(answer, format!("ping from {}", client.ip));
    assert_eq!(recorder.seen().len(), 1, "port 9090 is excluded: {:?}", recorder.seen());

    // Inbound plaintext: lands on 15006 with the pod's address as original destination, and is
    // delivered from the client's address (the app sees who called).
    let _echo_in = PodServer::first_line_from_peer(&client.path(), 8081);
    let answer = tokio::task::spawn_blocking({
        let (path, addr) = (server.path(), client.addr(8081));
        move || ping(&path, addr)
    })
    .await
    .expect("join")
    .expect("unmeshed → meshed connection");
    assert_eq!(answer, format!("ping from {}", server.ip), "the app sees its caller's address");
    assert_eq!(recorder.seen()[1], (client.spec.uid.clone(), "inbound", client.addr(8081)));
    assert_eq!(proxy.metrics().source_kept.load(Ordering::Relaxed), 1);
    assert_eq!(proxy.metrics().source_fallbacks.load(Ordering::Relaxed), 0);

    // Kubelet probes come from the node's address (the bridge gateway) and skip the proxy.
    let answer = tokio::task::spawn_blocking({
        let (path, addr) = (node.netns.path(), client.addr(8081));
        move || ping(&path, addr)
    })
    .await
    .expect("join")
    .expect("node → meshed pod (probe)");
    assert!(answer.starts_with("ping from 10.77.0.1"), "the app sees the node itself: {answer}");
    assert_eq!(recorder.seen().len(), 2, "a probe does not go through the proxy: {:?}", recorder.seen());

    // CHECK agrees.
    let conf = node.plugin_conf(1, Some(&client.result), &client.spec.weft);
    assert!(node.invoke("weft-cni", "CHECK", &client.spec, "eth0", &conf).0);

    // DEL: proxy told, rules and return route gone, record gone; a second DEL still succeeds.
    assert!(!return_route(&client).is_empty(), "ADD installed the return route");
    assert!(client.del(), "DEL");
    assert!(!has_rules(&client));
    assert_eq!(return_route(&client), "", "DEL removes the return route");
    assert!(!state_file(&client).exists());
    eventually("the proxy to release the pod", || proxy.pods().is_empty()).await;
    assert!(client.del(), "DEL is idempotent");
    assert!(!node.invoke("weft-cni", "CHECK", &client.spec, "eth0", &conf).0, "CHECK after DEL fails");
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_fails_closed_when_the_proxy_is_down() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let started = Instant::now();
    let error = match node.try_add_pod("e2e", "down", meshed(json!({}))) {
        Err(error) => error,
        Ok(_) => panic!("ADD succeeded with no proxy"),
    };
    assert!(started.elapsed() < WAIT);
    assert_eq!(error["cniVersion"], "1.0.0");
    assert_eq!(error["code"], 11, "{error}");
    assert!(error["msg"].as_str().is_some_and(|m| m.contains("node proxy")), "{error}");
    assert!(error["details"].as_str().is_some_and(|m| m.contains("not listening")), "{error}");
    assert!(std::fs::read_dir(node.state_dir()).map(|d| d.count()).unwrap_or(0) == 0, "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_restart_readopts_pods_and_connections_flow_within_a_second() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let cni = tempfile::tempdir().expect("tempdir");
    let (bin, conf) = (cni.path().join("bin"), cni.path().join("net.d"));
    std::fs::create_dir_all(&conf).expect("conf dir");
    let proxy = start_proxy(&node, Arc::new(Passthrough)).await;
    let _installer = Installer::start(&node, &bin, &conf, &[]);

    let client = node.try_add_pod("e2e", "ra", meshed(json!({}))).expect("meshed ADD");
    let server = node.try_add_pod("e2e", "rb", unmeshed()).expect("unmeshed ADD");
    let _echo = PodServer::first_line_from_peer(&server.path(), 8080);
    let connect = || {
        let (path, addr) = (client.path(), server.addr(8080));
        tokio::task::spawn_blocking(move || ping(&path, addr))
    };
    connect().await.expect("join").expect("before the restart");

    proxy.shutdown(Duration::ZERO).await;
    assert!(
        connect().await.expect("join").is_err(),
        "with the proxy gone the pod's TCP goes nowhere (fail closed)"
    );

    let proxy = start_proxy(&node, Arc::new(Passthrough)).await;
    let restarted = Instant::now();
    loop {
        if connect().await.expect("join").is_ok() {
            break;
        }
        assert!(restarted.elapsed() < WAIT, "connections never flowed again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = restarted.elapsed();
    eprintln!("re-adopted and flowing {took:?} after the proxy restarted");
    assert!(took < Duration::from_secs(1), "re-adoption took {took:?}");
    assert_eq!(proxy.pods(), vec![client.spec.uid.clone()]);
    assert!(proxy.render_metrics().contains("weft_inpod_pods_adopted_total 1"));
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installer_chains_itself_restores_the_chain_after_a_rewrite_and_removes_itself() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let original =
        json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "portmap"}]});
    let HostCni { dir: _cni, bin, conf, primary } = host_cni(&original);
    std::fs::write(conf.join("99-other.conflist"), original.to_string()).expect("write other");
    let chain = || -> Vec<String> {
        std::fs::read(&primary)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v["plugins"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|p| p["type"].as_str().map(String::from)).collect())
            })
            .unwrap_or_default()
    };
    let mut installer = Installer::start(&node, &bin, &conf, &[]);
    eventually("the installer to chain itself", || chain() == ["bridge", "portmap", "weft-cni"]).await;
    assert!(bin.join("weft-cni").exists(), "binary installed");

    // Another agent rewrites the primary config, dropping us.
    for _ in 0..3 {
        std::fs::write(&primary, original.to_string()).expect("rewrite");
        eventually("the chain to be restored", || chain() == ["bridge", "portmap", "weft-cni"]).await;
    }
    let other: Value =
        serde_json::from_slice(&std::fs::read(conf.join("99-other.conflist")).expect("read")).expect("json");
    assert_eq!(other, original, "only the primary config is touched");

    assert!(installer.stop(), "installer exits cleanly on SIGTERM");
    assert_eq!(chain(), ["bridge", "portmap"]);
    assert!(!bin.join("weft-cni").exists(), "binary removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_drops_pods_the_plugin_no_longer_records() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let cni = tempfile::tempdir().expect("tempdir");
    let (bin, conf) = (cni.path().join("bin"), cni.path().join("net.d"));
    std::fs::create_dir_all(&conf).expect("conf dir");
    let proxy = start_proxy(&node, Arc::new(Passthrough)).await;
    let kept = node.try_add_pod("e2e", "sa", meshed(json!({}))).expect("ADD");
    let lost = node.try_add_pod("e2e", "sb", meshed(json!({}))).expect("ADD");
    let mut want = vec![kept.spec.uid.clone(), lost.spec.uid.clone()];
    want.sort();
    assert_eq!(proxy.pods(), want);
    // The DEL of `lost` never reached the proxy; only the plugin's record went away.
    std::fs::remove_file(state_file(&lost)).expect("remove record");
    let _installer = Installer::start(&node, &bin, &conf, &[]);
    eventually("the snapshot to drop the unrecorded pod", || proxy.pods() == vec![kept.spec.uid.clone()])
        .await;
    proxy.shutdown(Duration::ZERO).await;
}

/// Draining is for the proxy's own shutdown (rolling update): the pods' rules stay, the
/// listeners close at once, open connections get until the deadline. (On a pod's DEL, removing
/// its NAT table makes the kernel flush the NAT'd conntrack entries of that netns, so the pod's
/// connections end with it, as they would anyway when its netns goes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_shutdown_stops_accepting_and_drains_open_connections_until_the_deadline() {
    if !support::netns_available(&[]) {
        return;
    }
    const DEADLINE: Duration = Duration::from_millis(700);
    let node = new_node();
    let proxy = start_proxy(&node, Arc::new(Passthrough)).await;
    let client = node.try_add_pod("e2e", "da", meshed(json!({}))).expect("ADD");
    let server = node.try_add_pod("e2e", "db", unmeshed()).expect("ADD");
    let _echo = PodServer::line_echo(&server.path(), 7070);
    let addr = server.addr(7070);
    let mut conn =
        in_netns(&client.path(), move || TcpStream::connect_timeout(&addr, WAIT)).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    assert_eq!(round_trip(&mut conn, "one").expect("before shutdown"), "one");

    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown(DEADLINE));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (path, new_addr) = (client.path(), server.addr(7070));
    let refused = tokio::task::spawn_blocking(move || {
        in_netns(&path, move || TcpStream::connect_timeout(&new_addr, WAIT))
    })
    .await
    .expect("join");
    assert!(refused.is_err(), "a draining proxy accepts no new connection");
    let (answer, conn) =
        tokio::task::spawn_blocking(move || (round_trip(&mut conn, "two"), conn)).await.expect("join");
    assert_eq!(answer.expect("open connections go on while draining"), "two");
    assert!(started.elapsed() < DEADLINE);
    shutdown.await.expect("shutdown");
    assert!(started.elapsed() >= DEADLINE, "shutdown waited for the open connection");
    let mut conn = conn;
    let cut = tokio::task::spawn_blocking(move || round_trip(&mut conn, "three")).await.expect("join");
    assert!(cut.is_err(), "after the drain deadline the connection is closed: {cut:?}");
}

/// A steady stream of new connections, each a [`ping`] from a pod to an echo server, until
/// stopped: how many were answered and how many failed (refused, reset, timed out).
struct Stream {
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Stream {
    fn start(routes: Vec<(PathBuf, SocketAddr)>, every: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            let (mut answered, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                for (netns, addr) in &routes {
                    match ping(netns, *addr) {
                        Ok(answer) if answer.starts_with("ping from ") => answered += 1,
                        Ok(answer) => failed.push(format!("{addr}: answered {answer:?}")),
                        Err(error) => failed.push(format!("{addr}: {error}")),
                    }
                }
                std::thread::sleep(every);
            }
            (answered, failed)
        });
        Stream { stop, worker }
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("stream thread")
    }
}

/// An upgrade as the DaemonSet does it (maxSurge 1): proxy B and its installer start while
/// proxy A and its installer still run; B binds the in-pod socket path and the running
/// installer hands it every pod; A, told to stop, keeps serving until B listens in the pod,
/// then closes and drains; the old installer, stopped, leaves weft-cni installed for the new
/// one. Meanwhile a meshed pod makes (and takes) new connections without pause: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_overlaps_old_and_new_proxy_and_loses_no_connection() {
    if !support::netns_available(&[]) {
        return;
    }
    let node = new_node();
    let HostCni { dir: _cni, bin, conf, primary } =
        host_cni(&json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]}));
    let chained = || {
        std::fs::read_to_string(&primary).is_ok_and(|c| c.contains("weft-cni"))
            && bin.join("weft-cni").exists()
    };

    let seen_by_a = Arc::new(Recorder::default());
    let proxy_a = start_proxy(&node, seen_by_a.clone()).await;
    let mut installer_a = Installer::start(&node, &bin, &conf, &[]);
    eventually("the first installer to chain itself", chained).await;
    let client = node.try_add_pod("e2e", "ua", meshed(json!({}))).expect("meshed ADD");
    let server = node.try_add_pod("e2e", "ub", unmeshed()).expect("unmeshed ADD");
    let migrate = |pod: &Pod<'_>| {
        in_netns(&pod.path(), || std::fs::read_to_string(cni_plugin::plugin::TCP_MIGRATE_REQ))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(migrate(&client), "1", "ADD lets a closing proxy listener's queue move to the new one");
    assert_eq!(migrate(&server), "0", "an unmeshed pod's netns is untouched");
    let _echo_out = PodServer::first_line_from_peer(&server.path(), 8080);
    let _echo_in = PodServer::first_line_from_peer(&client.path(), 8081);
    // Outbound from the meshed pod (its 15001) and inbound to it (its 15006).
    let routes = vec![(client.path(), server.addr(8080)), (server.path(), client.addr(8081))];
    let stream = Stream::start(routes, Duration::from_millis(1));
    eventually("A to serve the stream", || seen_by_a.seen().len() >= 20).await;

    // The new DaemonSet pod starts (its proxy, then its installer) and the old pod is told to
    // stop at once, before the new proxy has any pod: A must serve on until B has taken over.
    let seen_by_b = Arc::new(Recorder::default());
    let proxy_b = start_proxy(&node, seen_by_b.clone()).await;
    assert!(proxy_a.superseded(), "A sees that a new proxy has started");
    assert!(proxy_b.pods().is_empty());
    let stopped = Instant::now();
    let shutdown_a = tokio::spawn(proxy_a.shutdown(Duration::from_secs(5)));
    let installer_b = Installer::start(&node, &bin, &conf, &[]);
    eventually("B to adopt the pod", || proxy_b.pods() == vec![client.spec.uid.clone()]).await;
    eventually("B to serve the pod", || !seen_by_b.seen().is_empty()).await;
    assert!(installer_a.stop(), "old installer exits cleanly");
    assert!(chained(), "the old installer leaves weft-cni to the new one");
    shutdown_a.await.expect("A's shutdown");
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(2), "A let go as soon as B listened, took {took:?}");
    let served_by_a = seen_by_a.seen().len();
    let served_by_b = seen_by_b.seen().len();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (answered, failed) = tokio::task::spawn_blocking(move || stream.stop()).await.expect("join");
    eprintln!("{answered} connections answered, {} failed; A served {served_by_a}", failed.len());
    assert!(failed.is_empty(), "connections failed during the upgrade: {failed:?}");
    assert!(answered >= 100, "only {answered} connections: the test proves nothing");
    assert_eq!(seen_by_a.seen().len(), served_by_a, "A serves nothing once stopped");
    assert!(seen_by_b.seen().len() > served_by_b + 10, "B serves the pod after A is gone");
    assert!(node.socket().exists(), "A left B's socket in place");

    // B alone from here: a pod added now is B's, and it stays installed after A's installer.
    let later = node.try_add_pod("e2e", "uc", meshed(json!({}))).expect("meshed ADD after the upgrade");
    let mut want = vec![client.spec.uid.clone(), later.spec.uid.clone()];
    want.sort();
    assert_eq!(proxy_b.pods(), want);
    drop(installer_b);
    proxy_b.shutdown(Duration::ZERO).await;
}

/// Sorted-sample percentile.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let us = |d: Duration| (d.as_secs_f64() * 1e6 * 10.0).round() / 10.0;
    json!({"n": samples.len(), "p50_us": us(percentile(&samples, 0.5)), "p90_us": us(percentile(&samples, 0.9)),
           "p99_us": us(percentile(&samples, 0.99))})
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        total += (get(11) + get(12)) / ticks;
    }
    Duration::from_secs_f64(total)
}

/// Runs the weft-cni binary directly (as the runtime does) and times it.
fn time_weft_add(pod: &PodSpec, conf: &Value) -> (bool, Duration) {
    let started = Instant::now();
    let mut child = Command::new(WEFT_CNI)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", pod.netns.path())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}", pod.namespace, pod.name, pod.uid),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("weft-cni");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let ok = child.wait_with_output().is_ok_and(|o| o.status.success());
    (ok, started.elapsed())
}

/// The interception bench: CNI ADD time (meshed, unmeshed) and the latency and proxy CPU a
/// meshed → unmeshed plaintext request pays over the same request without interception.
/// `cargo test --release -p cni-plugin --test e2e -- --ignored bench --nocapture`; writes
/// bench/results/interception.json.
#[test]
#[ignore = "a benchmark: run explicitly (see bench/results/interception.md)"]
fn bench_interception() {
    if !support::netns_available(&[]) {
        return;
    }
    const ADDS: usize = 50;
    const CONNECTIONS: usize = 2000;
    const REQUESTS: usize = 20000;
    let node = new_node();
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-bench-prx")
        .enable_all()
        .build()
        .expect("proxy runtime");
    let proxy = proxy_rt.block_on(async {
        let config =
            InpodConfig { socket: node.socket(), drain_deadline: Duration::ZERO, ..Default::default() };
        InpodServer::start(config, Arc::new(Passthrough)).await.expect("proxy")
    });

    // CNI ADD of weft-cni alone (the primary plugin's time is not ours), fresh netns each time.
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.77.0.250/24", "gateway": "10.77.0.1"}]});
    let add = |weft: Value| -> Vec<Duration> {
        (0..ADDS)
            .map(|i| {
                let spec = PodSpec {
                    netns: Netns::new("bench"),
                    namespace: "bench".into(),
                    name: format!("p{i}"),
                    uid: unique("uid-bench-"),
                    container_id: unique("ctr"),
                    weft: weft.clone(),
                };
                let conf = node.plugin_conf(1, Some(&prev), &weft);
                let (ok, took) = time_weft_add(&spec, &conf);
                assert!(ok, "ADD");
                let del = node.invoke("weft-cni", "DEL", &spec, "eth0", &conf);
                assert!(del.0, "DEL");
                took
            })
            .collect()
    };
    let add_unmeshed = summary(add(unmeshed()));
    let add_meshed = summary(add(meshed(json!({}))));

    // Latency: a meshed and an unmeshed client, the same unmeshed server.
    let meshed_client = node.try_add_pod("e2e", "bm", meshed(json!({}))).expect("ADD");
    let plain_client = node.try_add_pod("e2e", "bp", unmeshed()).expect("ADD");
    let server = node.try_add_pod("e2e", "bs", unmeshed()).expect("ADD");
    let _echo = PodServer::line_echo(&server.path(), 7070);
    let addr = server.addr(7070);
    let run = |client: &Pod<'_>| -> (Value, Value, Duration) {
        let cpu = threads_cpu("weft-bench-prx");
        let (per_conn, per_req) = in_netns(&client.path(), move || {
            let mut per_conn = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                let started = Instant::now();
                let mut conn = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
                let _ = conn.set_nodelay(true);
                conn.set_read_timeout(Some(WAIT)).expect("timeout");
                round_trip(&mut conn, "ping").expect("request");
                per_conn.push(started.elapsed());
            }
            let mut conn = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
            let _ = conn.set_nodelay(true);
            conn.set_read_timeout(Some(WAIT)).expect("timeout");
            let per_req: Vec<Duration> = (0..REQUESTS)
                .map(|_| {
                    let started = Instant::now();
                    round_trip(&mut conn, "ping").expect("request");
                    started.elapsed()
                })
                .collect();
            (per_conn, per_req)
        });
        (summary(per_conn), summary(per_req), threads_cpu("weft-bench-prx").saturating_sub(cpu))
    };
    // One unmeasured pass each first: the first pass of a run pays for cold caches and lazily
    // created state (ARP entries, conntrack tables, allocator pools) that the second does not.
    let _ = (run(&plain_client), run(&meshed_client));
    let (plain_conn, plain_req, plain_cpu) = run(&plain_client);
    let (meshed_conn, meshed_req, meshed_cpu) = run(&meshed_client);
    let cpu_us_per =
        |cpu: Duration| (cpu.as_secs_f64() * 1e6 / (CONNECTIONS + REQUESTS) as f64 * 100.0).round() / 100.0;
    let result = json!({
        "cni_add_weft_only": {"unmeshed": add_unmeshed, "meshed": add_meshed},
        "new_connection_plus_one_request": {"direct": plain_conn, "intercepted": meshed_conn},
        "request_on_open_connection": {"direct": plain_req, "intercepted": meshed_req},
        "proxy_cpu": {
            "direct_s": plain_cpu.as_secs_f64(),
            "intercepted_s": meshed_cpu.as_secs_f64(),
            "intercepted_us_per_exchange": cpu_us_per(meshed_cpu),
            "exchanges": CONNECTIONS + REQUESTS,
        },
        "config": {"adds": ADDS, "connections": CONNECTIONS, "requests": REQUESTS,
                   "profile": if cfg!(debug_assertions) { "debug" } else { "release" }},
    });
    let text = serde_json::to_string_pretty(&result).expect("json");
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/interception.json");
    std::fs::write(&out, text + "\n").expect("write results");
    drop((meshed_client, plain_client, server));
    proxy_rt.block_on(proxy.shutdown(Duration::ZERO));
}
