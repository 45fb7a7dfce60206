//! The mesh half of `cargo xtask demo`: two "nodes" (network namespaces joined by a veth
//! pair), each running a real `weft-proxy` process; `weft-controller --manifests` in node A
//! serving config and certificates to both; pods attached by the real CNI chain (bridge,
//! host-local, weft-cni). Then a meshed frontend calls Service `checkout`, whose GAMMA route
//! splits 90/10 between two versions on node B, while tcpdump watches the link between nodes.
//!
//! Needs root (network namespaces, nftables); without it this half says so and is skipped.
//! Everything it creates (namespaces, processes, files) is removed when it returns.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use testbed::capture::{self, Capture};
use testbed::cni::{Node, link, meshed, unmeshed};
use testbed::http::{HttpEcho, get_once, served_by};
use testbed::netns::{Netns, in_netns};
use testbed::shop;

const SPLIT_REQUESTS: usize = 400;
/// ±5 points around 90/10 at 400 requests is beyond 3σ (σ = 1.5 points).
const SPLIT_TOLERANCE_PERCENT: f64 = 5.0;
const CONTROLLER: &str = "10.98.0.1:15010";
const ADMIN: &str = "127.0.0.1:15021";
const STARTUP: Duration = Duration::from_secs(30);
const MESHED_CANARY: &str = "x-canary: meshed-4c1d\r\n";
const PLAINTEXT_CANARY: &str = "plaintext-9e2b";

/// A child process killed on drop; its output goes to a log file printed on failure.
pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        mut command: std::process::Command,
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process { name, child, log })
    }

    fn print_log(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("--- last lines of {}'s log ---", self.name);
        for line in &lines[lines.len().saturating_sub(20)..] {
            println!("{line}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP GET on the node's loopback (its proxy's admin port), from inside the node.
pub fn admin_get(netns: &Netns, path: &'static str) -> String {
    in_netns(&netns.path(), move || {
        let Ok(mut conn) = TcpStream::connect_timeout(&ADMIN.parse().expect("addr"), Duration::from_secs(1))
        else {
            return String::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = conn.read_to_string(&mut out);
        out
    })
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > STARTUP {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Two nodes with a controller and a proxy each, as real processes built with `profile`.
pub struct Lab {
    pub a: Node,
    pub b: Node,
    /// node A's end of the link between the nodes.
    pub link_a: String,
    pub work: tempfile::TempDir,
    manifests: PathBuf,
    pub processes: Vec<Process>,
}

impl Lab {
    pub fn start(target: &Path, profile: &str) -> anyhow::Result<Lab> {
        let bin = |name: &str| target.join(profile).join(name);
        let work = tempfile::tempdir()?;
        let (a, b) = (
            Node::new("node-a", "10.201.1.0/24", &bin("weft-cni")),
            Node::new("node-b", "10.201.2.0/24", &bin("weft-cni")),
        );
        let (link_a, _) = link(&a, "10.201.1.0/24", &b, "10.201.2.0/24");
        let manifests = work.path().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("cluster.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )?;
        std::fs::write(work.path().join("node-tokens"), "node-a token-of-node-a\nnode-b token-of-node-b\n")?;
        let mut controller = a.netns.command(bin("weft-controller"));
        controller
            .arg("--manifests")
            .arg(&manifests)
            .arg("--ca-dir")
            .arg(work.path().join("ca"))
            .arg("--node-tokens")
            .arg(work.path().join("node-tokens"))
            .args(["--config-addr", CONTROLLER, "--admin-addr", "127.0.0.1:15014"]);
        let controller = Process::spawn("weft-controller", controller, work.path().join("controller.log"))?;
        let mut processes = vec![controller];
        for node in [&a, &b] {
            let token = work.path().join(format!("{}.token", node.name));
            std::fs::write(&token, format!("token-of-{}", node.name))?;
            let mut proxy = node.netns.command(bin("weft-proxy"));
            proxy
                // TLS to the controller (its certificate holds 10.98.0.1), verified with the
                // CA folder's ca.crt; the node token also authenticates the config stream.
                .args(["--controller", &format!("https://{CONTROLLER}"), "--node", &node.name, "--inpod"])
                .arg("--controller-ca-bundle")
                .arg(work.path().join("ca").join("ca.crt"))
                .arg("--inpod-socket")
                .arg(node.socket())
                .arg("--ca-token-file")
                .arg(&token)
                .args(["--admin", ADMIN]);
            let name = if node.name == "node-a" { "weft-proxy (node-a)" } else { "weft-proxy (node-b)" };
            processes.push(Process::spawn(name, proxy, work.path().join(format!("{}.log", node.name)))?);
        }
        let lab = Lab { a, b, link_a, work, manifests, processes };
        wait_for("the node proxies", || lab.a.socket().exists() && lab.b.socket().exists())?;
        Ok(lab)
    }

    /// Replaces the controller's manifests and waits until both proxies serve `marker`.
    pub fn publish(&self, yaml: &str, marker: &'static str) -> anyhow::Result<()> {
        std::fs::write(self.manifests.join("cluster.yaml"), yaml)?;
        for node in [&self.a, &self.b] {
            wait_for(&format!("{}'s proxy to get the config", node.name), || {
                admin_get(&node.netns, "/config_dump").contains(marker)
            })?;
        }
        Ok(())
    }

    pub fn print_logs(&self) {
        for process in &self.processes {
            process.print_log();
        }
    }

    /// The pids of the node proxies (A, B), for CPU accounting.
    pub fn proxy_pids(&self) -> Vec<u32> {
        self.processes.iter().filter(|p| p.name.starts_with("weft-proxy")).map(|p| p.child.id()).collect()
    }
}

/// Runs the mesh half; `Ok(false)` when a check failed.
pub fn run(target: &Path) -> anyhow::Result<bool> {
    if let Err(reason) = testbed::netns::available(&["tcpdump"]) {
        println!(
            "==> mesh: skipped ({reason}); run as root with nftables, tcpdump and containernetworking-plugins"
        );
        return Ok(true);
    }
    let lab = Lab::start(target, "debug")?;
    println!(
        "==> mesh: nodes {} and {} (netns), joined by a veth pair 10.98.0.1 ↔ 10.98.0.2",
        lab.a.netns.name, lab.b.netns.name
    );
    match exercise(&lab) {
        Ok(true) => Ok(true),
        other => {
            lab.print_logs();
            other
        }
    }
}

fn exercise(lab: &Lab) -> anyhow::Result<bool> {
    let (a, b, work) = (&lab.a, &lab.b, lab.work.path());
    println!("==> mesh: weft-controller (config + CA) and one weft-proxy per node are up");
    let frontend = a.add_pod("shop", "frontend", meshed("frontend"));
    let v1 = b.add_pod("shop", "checkout-v1", meshed("checkout"));
    let v2 = b.add_pod("shop", "checkout-v2", meshed("checkout"));
    let legacy = b.add_pod("legacy", "legacy", unmeshed());
    println!(
        "==> mesh: pods added through bridge + host-local + weft-cni: frontend {} on node-a; checkout-v1 {}, checkout-v2 {}, legacy {} (unmeshed) on node-b",
        frontend.ip, v1.ip, v2.ip, legacy.ip
    );
    lab.publish(&shop::manifests(&frontend, &v1, &v2, &legacy), "checkout-canary")?;
    println!("==> mesh: both proxies have the config (Services, workloads, HTTPRoute checkout-canary)\n");
    let _apps = [
        HttpEcho::start(&v1.path(), 8080, "v1"),
        HttpEcho::start(&v2.path(), 8080, "v2"),
        HttpEcho::start(&legacy.path(), 8080, "legacy"),
    ];
    let vip = SocketAddr::new(shop::CHECKOUT_VIP.parse()?, 80);
    let mut checks: Vec<(String, bool)> = Vec::new();

    let pcap = work.join("link.pcap");
    let capture = Capture::start(&a.netns, &lab.link_a, pcap.clone());
    let served =
        served_by(&frontend.path(), vip, SPLIT_REQUESTS, MESHED_CANARY).context("frontend → checkout")?;
    let to_v1 = served.iter().filter(|s| s.as_str() == "v1").count();
    let to_v2 = served.iter().filter(|s| s.as_str() == "v2").count();
    let v1_percent = 100.0 * to_v1 as f64 / SPLIT_REQUESTS as f64;
    println!(
        "frontend → checkout ({vip}), {SPLIT_REQUESTS} requests on one connection: v1 {to_v1} ({v1_percent:.1}%), v2 {to_v2}; route says {}/{}",
        shop::V1_PERCENT,
        100 - shop::V1_PERCENT
    );
    checks.push((
        format!("canary split within ±{SPLIT_TOLERANCE_PERCENT} points of the route's weights"),
        to_v1 + to_v2 == SPLIT_REQUESTS
            && (v1_percent - shop::V1_PERCENT as f64).abs() <= SPLIT_TOLERANCE_PERCENT,
    ));
    let pinned = served_by(&frontend.path(), vip, 20, "x-version: v2\r\n").context("header route")?;
    let pinned_v2 = pinned.iter().filter(|s| s.as_str() == "v2").count();
    println!("frontend → checkout with x-version: v2, 20 requests: {pinned_v2} to v2");
    checks.push(("x-version: v2 always reaches v2".into(), pinned_v2 == 20));
    let plain =
        get_once(&frontend.path(), legacy.addr(8080), PLAINTEXT_CANARY).context("frontend → legacy")?;
    checks.push(("meshed → unmeshed works, in plaintext".into(), plain.contains("x-served-by: legacy")));

    let captured = capture.finish();
    let tunnelled: usize = [&v1, &v2]
        .iter()
        .map(|pod| capture::count_packets(&pcap, &format!("tcp port 15008 and host {}", pod.ip)))
        .sum();
    let direct: usize = [&v1, &v2]
        .iter()
        .map(|pod| capture::count_packets(&pcap, &format!("tcp port 8080 and host {}", pod.ip)))
        .sum();
    let leaked = capture::contains(&captured, MESHED_CANARY.trim_end());
    let plaintext_seen = capture::contains(&captured, PLAINTEXT_CANARY);
    println!(
        "tcpdump on the node link: {tunnelled} packets of HBONE (mTLS, :15008) to checkout, {direct} to its app port; \
         the meshed requests' header in clear: {}; the unmeshed request in clear: {}",
        if leaked { "FOUND" } else { "nowhere" },
        if plaintext_seen { "yes (as it should)" } else { "no" }
    );
    checks.push((
        "meshed traffic crossed the link only inside mTLS".into(),
        tunnelled > 0 && direct == 0 && !leaked,
    ));
    checks.push(("the capture does see plaintext when there is some".into(), plaintext_seen));

    let metrics = admin_get(&b.netns, "/metrics");
    let identity_line = metrics
        .lines()
        .find(|l| l.starts_with("weft_hbone_inbound_streams_total") && l.contains(shop::FRONTEND_IDENTITY))
        .unwrap_or("(none)")
        .to_string();
    println!("node-b's proxy, streams by source identity: {identity_line}");
    checks
        .push(("the destination proxy knows the caller's SPIFFE identity".into(), identity_line != "(none)"));
    let certs: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_workload_cert_expiry_seconds{"))
        .map(str::to_string)
        .collect();
    println!("node-b's proxy holds certificates for: {}", certs.join("; "));

    println!();
    let mut passed = true;
    for (check, ok) in &checks {
        println!("  [{}] {check}", if *ok { "ok" } else { "FAILED" });
        passed &= ok;
    }
    Ok(passed)
}
