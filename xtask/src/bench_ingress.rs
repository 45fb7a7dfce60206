//! `cargo xtask bench ingress`: weft-proxy as an ingress against nginx and HAProxy, and against
//! no proxy at all, in the same run on loopback.
//!
//! One backend for every path: a second nginx, `return 200 "ok\n"` (a fixed, fast, well-known
//! server in a process of its own, so it never shares the load generator's threads and every
//! configuration pays for it alike). In front of it, each configured for the same one route
//! (any host, `/` prefix, one backend, keep-alive to the backend): weft-proxy (release build,
//! `--manifests` with a Gateway + HTTPRoute), nginx (`proxy_pass` to an upstream with
//! `keepalive`) and HAProxy (one frontend, one backend). All get one core and one worker:
//! with two cores or more, the proxies are pinned to core 1 and everything else (this process,
//! which is the open-loop load generator, wrk, h2load and the backend) to core 0.
//!
//! Measured, the paths interleaved in each repeat so machine noise hits all alike:
//! - latency at fixed rates (open loop, [`testbed::load::constant_rate`]), p50 and p99, and
//!   the proxy's CPU and peak RSS during each run;
//! - max requests/s with `wrk -t1 -c32 -d5s` (HTTP/1.1 keep-alive), its latency percentiles,
//!   and the proxy's CPU from /proc during each run, hence requests per CPU-second (per proxy
//!   core);
//! - h2 (h2c, prior knowledge) max requests/s with h2load through each proxy;
//! - the proxy's RSS idle and its peak under load;
//! - gRPC (unary calls over h2c) with [`testbed::grpc`], a ghz-like generator on tonic's
//!   client: latency at [`GRPC_RATE`] calls/s open loop, and max calls/s closed loop, against
//!   a tonic echo backend in this process (its own thread and runtime, on core 0 with the other
//!   load tools). weft-proxy serves a GRPCRoute on a second Gateway listener, nginx
//!   `grpc_pass`es over keep-alive h2 connections, HAProxy speaks h2 on both sides.
//!
//! Results: `bench/results/ingress.{json,md}` (the `resources` table and the latency plot are
//! made from the JSON by `bench report`). Every process started here is killed on return,
//! whatever happens ([`Proc`]'s drop).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::grpc::{self, GrpcEcho};
use testbed::load::constant_rate;

use crate::bench::Plan;
use crate::measure::{
    CpuTimes, IdleSettings, Proc, RssSampler, RunInfo, as_f64, cpu_seconds, cpu_times, first_load,
    free_ports, is_root, median, number_after, on_path, spawn, spread, status_field, uptime, verdict,
    version, which,
};

/// The open-loop rates and the keep-alive connections each is spread over (a pool of clients,
/// as in `bench mesh`). One connection has one request in flight, so at 10k req/s 16
/// connections would each need an answer every 1.6 ms: more connections keep the generator
/// from becoming the bottleneck there.
const RATES: [(u32, u32); 3] = [(1000, 16), (5000, 16), (10_000, 64)];

/// The gRPC open-loop rate, and the shape of every gRPC run: HTTP/2 connections and calls in
/// flight at most (open loop) or callers (closed loop, max calls/s).
const GRPC_RATE: u32 = 1000;
const GRPC_CONNECTIONS: usize = 4;
const GRPC_OPEN_CONCURRENCY: usize = 256;
const GRPC_MAX_CONCURRENCY: usize = 64;

fn grpc_load(addr: SocketAddr, rate: Option<u32>, duration: Duration) -> grpc::Load {
    grpc::Load {
        addr,
        rate,
        duration,
        connections: GRPC_CONNECTIONS,
        concurrency: if rate.is_some() { GRPC_OPEN_CONCURRENCY } else { GRPC_MAX_CONCURRENCY },
        authority: "echo".into(),
    }
}

/// `wrk` for HTTP/1.1 max req/s, one run of `plan`'s length.
fn wrk_args(plan: Plan) -> Vec<String> {
    let seconds = format!("-d{}s", plan.run().as_secs());
    ["-t1", "-c32", seconds.as_str(), "--latency"].map(String::from).to_vec()
}

/// `h2load` for h2c max req/s, one run of `plan`'s length.
fn h2load_args(plan: Plan) -> Vec<String> {
    let seconds = plan.run().as_secs().to_string();
    ["-t1", "-c32", "-m10", "-D", seconds.as_str()].map(String::from).to_vec()
}

/// How long a server may take to answer its first request after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PATH: &str = "/bench";

/// Where a command runs: pinned to a core with `taskset -c`, or not at all when the machine
/// has fewer than two cores.
#[derive(Clone, Copy)]
struct Pinning {
    enabled: bool,
}

impl Pinning {
    const PROXY_CORE: &'static str = "1";
    const LOAD_CORE: &'static str = "0";

    fn command(self, core: &str, program: &Path) -> Command {
        if self.enabled {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

/// Gives this process every core back when dropped: `bench all` runs other scenarios after
/// this one, and what they start inherits the affinity.
struct Unpin {
    cores: usize,
}

impl Drop for Unpin {
    fn drop(&mut self) {
        let all = format!("0-{}", self.cores.saturating_sub(1));
        let pid = std::process::id().to_string();
        let _ = Command::new("taskset").args(["-a", "-p", "-c", &all, &pid]).stdout(Stdio::null()).status();
    }
}

/// One way to reach the backend: directly or through one proxy.
struct Setup {
    name: &'static str,
    http1: SocketAddr,
    /// An h2c (prior knowledge) listener, where the path has one.
    h2: Option<SocketAddr>,
    /// Where gRPC calls go (h2c): the echo itself, or the proxy's listener in front of it;
    /// none for the floor (HTTP/1.1 only).
    grpc: Option<SocketAddr>,
    /// The proxy's process (none for direct).
    proxy: Option<u32>,
    /// A reference path, not a peer: the cheapest user-space relay ([`FLOOR`]).
    floor: bool,
}

/// The floor path: HAProxy in `mode tcp`, a byte relay that parses no HTTP. What it adds to
/// direct is what any user-space proxy on this machine pays at least (two more socket hops,
/// the wake-ups of a process on another core), whatever its code does.
const FLOOR: &str = "floor: haproxy mode tcp";

#[derive(Default)]
struct Latency {
    p50: Vec<u64>,
    p99: Vec<u64>,
    errors: usize,
    cpu: Vec<f64>,
    /// The proxy's peak VmRSS in each run (kB).
    peak_rss_kb: Vec<u64>,
}

#[derive(Default)]
struct Throughput {
    rps: Vec<f64>,
    /// Requests per CPU-second of the proxy, one a run.
    per_core: Vec<f64>,
    cpu: Vec<f64>,
    errors: u64,
    peak_rss_kb: u64,
    /// wrk's latency percentiles (closed loop, µs), one a run; none from h2load.
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// The proxy's CPU µs per request in its own code (user) and in the kernel on its behalf
    /// (system), one a run.
    user_us_per_request: Vec<f64>,
    system_us_per_request: Vec<f64>,
}

/// The gRPC runs of one path: open loop at [`GRPC_RATE`], and closed-loop max.
#[derive(Default)]
struct Grpc {
    latency: Latency,
    /// Failed calls at the fixed rate, by gRPC status.
    by_status: std::collections::BTreeMap<String, usize>,
    max: Throughput,
    max_by_status: std::collections::BTreeMap<String, usize>,
}

struct PathResults {
    latency: Vec<Latency>,
    http1: Throughput,
    h2: Throughput,
    grpc: Grpc,
    idle_rss_kb: u64,
    threads: u64,
}

/// One `GET /bench` on a fresh connection: the status code, and whether the answer had a
/// Content-Length (the open-loop generator reads bodies by it).
fn probe(addr: SocketAddr) -> std::io::Result<(u16, bool)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET {PATH} HTTP/1.1\r\nhost: checkout\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.contains("\r\ncontent-length:")))
}

fn wait_ready(addr: SocketAddr, proc: Option<&Proc>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match probe(addr) {
            Ok((200, true)) => return Ok(()),
            Ok((code, length)) => last = format!("status {code}, content-length {length}"),
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = proc.map(|p| format!("\n{} log:\n{}", p.name, p.log_tail())).unwrap_or_default();
    bail!("{addr} did not answer GET {PATH} with 200 and a Content-Length in {READY_TIMEOUT:?} ({last}){log}")
}

struct Ports {
    backend: u16,
    weft: u16,
    weft_admin: u16,
    nginx: u16,
    nginx_h2: u16,
    haproxy: u16,
    haproxy_h2: u16,
    /// The tonic echo, and each proxy's gRPC listener in front of it.
    grpc_backend: u16,
    weft_grpc: u16,
    nginx_grpc: u16,
    haproxy_grpc: u16,
    /// The floor's relay (HAProxy, mode tcp).
    haproxy_tcp: u16,
}

fn backend_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "# The backend of every path: a fixed 200, one process.\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/backend.pid;\nerror_log {d}/backend.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  default_type text/plain;\n\
         \x20 server {{\n    listen 127.0.0.1:{port} reuseport;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

fn nginx_conf(dir: &Path, ports: &Ports) -> String {
    let d = dir.display();
    let (port, h2, backend) = (ports.nginx, ports.nginx_h2, ports.backend);
    let (grpc, grpc_backend) = (ports.nginx_grpc, ports.grpc_backend);
    format!(
        "# nginx as the ingress: one worker, every request to one upstream over keep-alive connections.\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
         \x20 upstream backend {{\n    server 127.0.0.1:{backend};\n    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{h2} http2;\n\
         \x20   location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n\
         \x20 # gRPC: h2c in, grpc_pass over keep-alive h2 connections to the tonic echo.\n\
         \x20 upstream echo {{\n    server 127.0.0.1:{grpc_backend};\n    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n\
         \x20 server {{\n    listen 127.0.0.1:{grpc} http2;\n    http2_max_requests 1000000;\n\
         \x20   location / {{\n      grpc_pass grpc://echo;\n    }}\n  }}\n}}\n"
    )
}

fn haproxy_conf(ports: &Ports) -> String {
    let (port, h2, backend) = (ports.haproxy, ports.haproxy_h2, ports.backend);
    let (grpc, grpc_backend) = (ports.haproxy_grpc, ports.grpc_backend);
    format!(
        "# HAProxy as the ingress: one thread, one frontend (HTTP/1.1 and h2c), one backend;\n\
         # and for gRPC one frontend and one backend speaking h2 (cleartext) on both sides.\n\
         global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend ingress\n  bind 127.0.0.1:{port}\n  bind 127.0.0.1:{h2} proto h2\n  default_backend app\n\n\
         backend app\n  server app 127.0.0.1:{backend}\n\n\
         frontend grpc\n  bind 127.0.0.1:{grpc} proto h2\n  default_backend echo\n\n\
         backend echo\n  server echo 127.0.0.1:{grpc_backend} proto h2\n"
    )
}

fn haproxy_tcp_conf(ports: &Ports) -> String {
    let (port, backend) = (ports.haproxy_tcp, ports.backend);
    format!(
        "# The floor, not a peer: HAProxy as a pure L4 byte relay (mode tcp: no HTTP parsing), one\n\
         # thread, each client connection relayed on a connection of its own to the same backend.\n\
         global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend relay\n  bind 127.0.0.1:{port}\n  default_backend app\n\n\
         backend app\n  server app 127.0.0.1:{backend}\n"
    )
}

fn weft_manifests(ports: &Ports) -> String {
    let (port, backend) = (ports.weft, ports.backend);
    let (grpc, grpc_backend) = (ports.weft_grpc, ports.grpc_backend);
    format!(
        "# weft-proxy as the ingress: a Gateway with one HTTP listener (h2c prior knowledge is\n\
         # served on the same port) and one HTTPRoute, any host, to one Service on the backend.\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: weft\n\
         spec:\n  controllerName: weft.dev/gateway-controller\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: bench\n  namespace: bench\n\
         spec:\n  gatewayClassName: weft\n  addresses:\n    - type: IPAddress\n      value: 127.0.0.1\n\
         \x20 listeners:\n    - name: http\n      protocol: HTTP\n      port: {port}\n    - name: grpc\n      protocol: HTTP\n      port: {grpc}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: app\n  namespace: bench\n\
         spec:\n  parentRefs:\n    - name: bench\n      sectionName: http\n  rules:\n\
         \x20   - matches:\n        - path: {{type: PathPrefix, value: /}}\n      backendRefs:\n        - {{name: app, port: 80}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: app\n  namespace: bench\n\
         spec:\n  ports:\n    - name: http\n      port: 80\n      targetPort: {backend}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-local\n  namespace: bench\n\
         \x20 labels:\n    kubernetes.io/service-name: app\naddressType: IPv4\n\
         ports:\n  - name: http\n    port: {backend}\n    protocol: TCP\n\
         endpoints:\n  - addresses: [127.0.0.1]\n    conditions:\n      ready: true\n---\n\
         # gRPC: a GRPCRoute on the second listener to the tonic echo, whose Service port says h2c.\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: echo\n  namespace: bench\n\
         spec:\n  parentRefs:\n    - name: bench\n      sectionName: grpc\n  rules:\n\
         \x20   - backendRefs:\n        - {{name: echo, port: 9090}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: bench\n\
         spec:\n  ports:\n    - name: grpc\n      port: 9090\n      targetPort: {grpc_backend}\n      appProtocol: kubernetes.io/h2c\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-local\n  namespace: bench\n\
         \x20 labels:\n    kubernetes.io/service-name: echo\naddressType: IPv4\n\
         ports:\n  - name: grpc\n    port: {grpc_backend}\n    protocol: TCP\n\
         endpoints:\n  - addresses: [127.0.0.1]\n    conditions:\n      ready: true\n"
    )
}

/// One max-throughput run of `program` (wrk or h2load) through `path`: requests/s, requests,
/// failed requests, the proxy's CPU share and its peak RSS.
struct MaxRun {
    rps: f64,
    requests: f64,
    errors: u64,
    /// The proxy's CPU time during the run.
    cpu: CpuTimes,
    wall: f64,
    peak_rss_kb: u64,
    /// wrk's p50 and p99 (µs), when the program is wrk.
    latency: Option<(f64, f64)>,
}

fn max_run(pinning: Pinning, program: &str, args: &[String], proxy: Option<u32>) -> anyhow::Result<MaxRun> {
    let mut command = pinning.command(Pinning::LOAD_CORE, Path::new(program));
    command.args(args);
    let sampler = RssSampler::start(proxy);
    let before = proxy.map_or_else(CpuTimes::default, cpu_times);
    let started = Instant::now();
    let out = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {program}"))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = proxy.map_or_else(CpuTimes::default, |pid| cpu_times(pid) - before);
    let peak_rss_kb = sampler.finish();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("{program} {} failed: {}\n{text}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    let parsed = if program == "wrk" {
        let socket = text.split("Socket errors:").nth(1).unwrap_or("");
        let socket_errors: f64 =
            ["connect ", "read ", "write ", "timeout "].iter().filter_map(|m| number_after(socket, m)).sum();
        let non_2xx = number_after(&text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
        let requests =
            text.split(" requests in").next().and_then(|t| t.split_whitespace().last()?.parse().ok());
        (number_after(&text, "Requests/sec:"), requests, (socket_errors + non_2xx) as u64)
    } else {
        // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
        // status codes: N 2xx, N 3xx, N 4xx, N 5xx
        let failed: f64 = ["succeeded, ", "failed, ", "errored, ", "2xx, ", "3xx, ", "4xx, "]
            .iter()
            .filter_map(|m| number_after(&text, m))
            .sum();
        (h2_rps(&text), number_after(&text, "done, "), failed as u64)
    };
    let (Some(rps), Some(requests), errors) = parsed else {
        bail!("cannot read {program}'s output:\n{text}");
    };
    let latency = wrk_percentile(&text, "50%").zip(wrk_percentile(&text, "99%"));
    Ok(MaxRun { rps, requests, errors, cpu, wall, peak_rss_kb, latency })
}

/// A line of wrk's `Latency Distribution` (`     99%    1.23ms`) in µs.
fn wrk_percentile(text: &str, percent: &str) -> Option<f64> {
    let distribution = text.split("Latency Distribution").nth(1)?;
    let line = distribution.lines().find(|l| l.trim_start().starts_with(percent))?;
    let value = line.split_whitespace().nth(1)?;
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = value.strip_suffix('m') {
        (v, 60e6)
    } else {
        (value.strip_suffix('s')?, 1e6)
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// `finished in 5.00s, 51234.40 req/s, 1.23MB/s` → 51234.40.
fn h2_rps(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("finished in"))?;
    line.split(", ").find(|part| part.ends_with("req/s"))?.trim_end_matches(" req/s").parse().ok()
}

/// The ingress bench on the weft-proxy binary `weft`.
pub fn run(weft: &Path, plan: Plan) -> anyhow::Result<()> {
    if !is_root() {
        // The open-loop generator enters a network namespace (here: this process's own).
        bail!("the ingress bench needs root (its load generator calls setns on /proc/self/ns/net)");
    }
    let missing: Vec<&str> =
        ["nginx", "haproxy", "wrk", "h2load", "taskset"].into_iter().filter(|tool| !on_path(tool)).collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: apt-get install -y nginx-light haproxy wrk nghttp2-client util-linux gnuplot-nox",
            missing.join(", ")
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = Pinning { enabled: cores >= 2 };
    let _unpin = Unpin { cores };
    if pinning.enabled {
        // This process (the open-loop generator) and whatever it starts unpinned: core 0.
        let pid = std::process::id().to_string();
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", Pinning::LOAD_CORE, &pid])
            .stdout(Stdio::null())
            .status()
            .context("taskset")?;
        if !status.success() {
            bail!("taskset -a -p -c {} {pid} failed", Pinning::LOAD_CORE);
        }
    }
    let load_before = uptime();
    println!("==> load before the run: {load_before}");

    let dir = tempfile::tempdir()?;
    let dir_path = dir.path();
    // All picked at once, so no two are the same port.
    let [
        backend_port,
        weft_port,
        weft_admin_port,
        nginx_port,
        nginx_h2_port,
        haproxy_port,
        haproxy_h2_port,
        grpc_backend_port,
        weft_grpc_port,
        nginx_grpc_port,
        haproxy_grpc_port,
        haproxy_tcp_port,
    ] = free_ports()?;
    let ports = Ports {
        backend: backend_port,
        weft: weft_port,
        weft_admin: weft_admin_port,
        nginx: nginx_port,
        nginx_h2: nginx_h2_port,
        haproxy: haproxy_port,
        haproxy_h2: haproxy_h2_port,
        grpc_backend: grpc_backend_port,
        weft_grpc: weft_grpc_port,
        nginx_grpc: nginx_grpc_port,
        haproxy_grpc: haproxy_grpc_port,
        haproxy_tcp: haproxy_tcp_port,
    };
    // The gRPC backend: a tonic echo on its own thread and runtime in this process (so on
    // core 0, with the load tools and the HTTP backend).
    let echo = GrpcEcho::start(None, SocketAddr::from(([127, 0, 0, 1], ports.grpc_backend)), "echo", None)
        .context("the gRPC echo")?;
    let configs = [
        ("backend.conf", backend_conf(dir_path, ports.backend)),
        ("nginx.conf", nginx_conf(dir_path, &ports)),
        ("haproxy.cfg", haproxy_conf(&ports)),
        ("haproxy-tcp.cfg", haproxy_tcp_conf(&ports)),
        ("manifests/bench.yaml", weft_manifests(&ports)),
    ];
    std::fs::create_dir_all(dir_path.join("manifests"))?;
    for (name, text) in &configs {
        std::fs::write(dir_path.join(name), text)?;
    }
    let nginx = which("nginx")?;
    let mut commands: Vec<String> = Vec::new();
    let pin = |core: &str| if pinning.enabled { format!("taskset -c {core} ") } else { String::new() };

    let mut backend_cmd = pinning.command(Pinning::LOAD_CORE, &nginx);
    backend_cmd
        .arg("-e")
        .arg(dir_path.join("backend.error.log"))
        .arg("-c")
        .arg(dir_path.join("backend.conf"));
    commands.push(format!("{}nginx -e $DIR/backend.error.log -c $DIR/backend.conf", pin(Pinning::LOAD_CORE)));
    let backend = spawn("backend", backend_cmd, dir_path)?;

    let mut weft_cmd = pinning.command(Pinning::PROXY_CORE, weft);
    weft_cmd
        .arg("--manifests")
        .arg(dir_path.join("manifests"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", ports.weft_admin))
        .env("RUST_LOG", "warn");
    commands.push(format!(
        "RUST_LOG=warn {}target/release/weft-proxy --manifests $DIR/manifests --admin 127.0.0.1:{}",
        pin(Pinning::PROXY_CORE),
        ports.weft_admin
    ));
    let weft_proc = spawn("weft-proxy", weft_cmd, dir_path)?;

    let mut nginx_cmd = pinning.command(Pinning::PROXY_CORE, &nginx);
    nginx_cmd.arg("-e").arg(dir_path.join("nginx.error.log")).arg("-c").arg(dir_path.join("nginx.conf"));
    commands.push(format!("{}nginx -e $DIR/nginx.error.log -c $DIR/nginx.conf", pin(Pinning::PROXY_CORE)));
    let nginx_proc = spawn("nginx", nginx_cmd, dir_path)?;

    let mut haproxy_cmd = pinning.command(Pinning::PROXY_CORE, &which("haproxy")?);
    haproxy_cmd.arg("-db").arg("-f").arg(dir_path.join("haproxy.cfg"));
    commands.push(format!("{}haproxy -db -f $DIR/haproxy.cfg", pin(Pinning::PROXY_CORE)));
    let haproxy_proc = spawn("haproxy", haproxy_cmd, dir_path)?;

    let mut floor_cmd = pinning.command(Pinning::PROXY_CORE, &which("haproxy")?);
    floor_cmd.arg("-db").arg("-f").arg(dir_path.join("haproxy-tcp.cfg"));
    commands.push(format!("{}haproxy -db -f $DIR/haproxy-tcp.cfg", pin(Pinning::PROXY_CORE)));
    let floor_proc = spawn("haproxy-tcp", floor_cmd, dir_path)?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let paths = [
        Setup {
            name: "direct",
            http1: local(ports.backend),
            h2: None,
            grpc: Some(echo.addr),
            proxy: None,
            floor: false,
        },
        Setup {
            name: "weft-proxy",
            http1: local(ports.weft),
            h2: Some(local(ports.weft)),
            grpc: Some(local(ports.weft_grpc)),
            proxy: Some(weft_proc.pid()),
            floor: false,
        },
        Setup {
            name: "nginx",
            http1: local(ports.nginx),
            h2: Some(local(ports.nginx_h2)),
            grpc: Some(local(ports.nginx_grpc)),
            proxy: Some(nginx_proc.pid()),
            floor: false,
        },
        Setup {
            name: "haproxy",
            http1: local(ports.haproxy),
            h2: Some(local(ports.haproxy_h2)),
            grpc: Some(local(ports.haproxy_grpc)),
            proxy: Some(haproxy_proc.pid()),
            floor: false,
        },
        // Last, so each repeat runs direct, weft-proxy, nginx, HAProxy, then the floor.
        Setup {
            name: FLOOR,
            http1: local(ports.haproxy_tcp),
            h2: None,
            grpc: None,
            proxy: Some(floor_proc.pid()),
            floor: true,
        },
    ];
    let procs = [&backend, &weft_proc, &nginx_proc, &haproxy_proc, &floor_proc];
    for (path, proc) in paths.iter().zip(procs) {
        wait_ready(path.http1, Some(proc))?;
        wait_grpc_ready(path, Some(proc))?;
    }
    println!(
        "==> backend (nginx) on {}, weft-proxy on {}, nginx on {} (h2c {}), haproxy on {} (h2c {}), floor (haproxy mode tcp) on {}; pinned: {}",
        ports.backend,
        ports.weft,
        ports.nginx,
        ports.nginx_h2,
        ports.haproxy,
        ports.haproxy_h2,
        ports.haproxy_tcp,
        if pinning.enabled {
            "proxies on core 1, load generators and backend on core 0"
        } else {
            "no (one core)"
        }
    );
    let mut results: Vec<PathResults> = paths
        .iter()
        .map(|path| PathResults {
            latency: RATES.iter().map(|_| Latency::default()).collect(),
            http1: Throughput::default(),
            h2: Throughput::default(),
            grpc: Grpc::default(),
            idle_rss_kb: path.proxy.map_or(0, |pid| status_field(pid, "VmRSS")),
            threads: path.proxy.map_or(0, |pid| status_field(pid, "Threads")),
        })
        .collect();

    // Warm-up, not recorded: every path carries a second of full load once.
    for path in &paths {
        let url = format!("http://{}{PATH}", path.http1);
        let args: Vec<String> = ["-t1", "-c32", "-d1s", &url].iter().map(|s| s.to_string()).collect();
        max_run(pinning, "wrk", &args, path.proxy).with_context(|| format!("warm-up of {}", path.name))?;
        if let Some(grpc) = path.grpc {
            grpc::load(None, &grpc_load(grpc, None, Duration::from_secs(1)))
                .with_context(|| format!("gRPC warm-up of {}", path.name))?;
        }
    }

    let self_netns = Path::new("/proc/self/ns/net");
    let (repeats, run_for) = (plan.repeats(), plan.run());
    println!(
        "==> latency at {RATES:?} (rps, connections) open loop, {run_for:?} a run, {repeats} runs, interleaved"
    );
    for repeat in 0..repeats {
        for (r, (rate, connections)) in RATES.iter().enumerate() {
            for (path, result) in paths.iter().zip(&mut results) {
                let sampler = RssSampler::start(path.proxy);
                let before = path.proxy.map_or(0.0, cpu_seconds);
                let run = constant_rate(self_netns, path.http1, *rate, run_for, *connections)
                    .with_context(|| format!("{} at {rate} rps", path.name))?;
                let cpu = path.proxy.map_or(0.0, |pid| cpu_seconds(pid) - before);
                let point = &mut result.latency[r];
                point.peak_rss_kb.push(sampler.finish());
                point.p50.push(run.percentile(50.0));
                point.p99.push(run.percentile(99.0));
                point.errors += run.errors;
                point.cpu.push(cpu / run.elapsed.as_secs_f64());
                println!(
                    "  run {} {rate:>5} rps {:<10} p50 {:>6} µs  p99 {:>6} µs  errors {}  proxy CPU {:.3}",
                    repeat + 1,
                    path.name,
                    run.percentile(50.0),
                    run.percentile(99.0),
                    run.errors,
                    cpu / run.elapsed.as_secs_f64()
                );
            }
        }
        for (path, result) in paths.iter().zip(&mut results) {
            grpc_point(path, &mut result.grpc, Some(GRPC_RATE), run_for, repeat)?;
        }
    }

    for (program, args, port) in [("wrk", wrk_args(plan), "$PORT"), ("h2load", h2load_args(plan), "$H2PORT")]
    {
        println!("==> max requests/s: {program} {}, {repeats} runs, interleaved", args.join(" "));
        commands.push(format!(
            "{}{program} {} http://127.0.0.1:{port}{PATH}",
            pin(Pinning::LOAD_CORE),
            args.join(" ")
        ));
        for repeat in 0..repeats {
            for (path, result) in paths.iter().zip(&mut results) {
                let (target, into) = if program == "wrk" {
                    (Some(path.http1), &mut result.http1)
                } else {
                    (path.h2, &mut result.h2)
                };
                let Some(target) = target else { continue };
                let mut args = args.clone();
                args.push(format!("http://{target}{PATH}"));
                let run = max_run(pinning, program, &args, path.proxy)
                    .with_context(|| format!("{program} {}", path.name))?;
                record(into, &run, path.proxy.is_some());
                println!(
                    "  run {} {:<10} {:>9.0} req/s  proxy CPU {:.3}  errors {}",
                    repeat + 1,
                    path.name,
                    run.rps,
                    run.cpu.total() / run.wall,
                    run.errors
                );
            }
        }
    }
    println!(
        "==> gRPC max calls/s: closed loop, {GRPC_CONNECTIONS} connections, {GRPC_MAX_CONCURRENCY} callers, {repeats} runs, interleaved"
    );
    for repeat in 0..repeats {
        for (path, result) in paths.iter().zip(&mut results) {
            grpc_point(path, &mut result.grpc, None, run_for, repeat)?;
        }
    }
    let load_after = uptime();
    println!("==> load after the run: {load_after}");
    // Still alive at the end? A proxy that died mid-run would have made errors, but say so.
    for proc in procs {
        if std::fs::metadata(format!("/proc/{}", proc.pid())).is_err() {
            bail!("{} exited during the run:\n{}", proc.name, proc.log_tail());
        }
    }
    let report = Report {
        paths: &paths,
        results: &results,
        commands: &commands,
        configs: &configs,
        cores,
        pinning,
        plan,
        dir: dir_path.display().to_string(),
    };
    report.write(&load_before, &load_after)?;
    drop((backend, weft_proc, nginx_proc, haproxy_proc, floor_proc, echo));
    Ok(())
}

/// Waits until a unary call through `path` succeeds.
fn wait_grpc_ready(path: &Setup, proc: Option<&Proc>) -> anyhow::Result<()> {
    let Some(addr) = path.grpc else { return Ok(()) };
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match grpc::load(
            None,
            &grpc::Load { connections: 1, ..grpc_load(addr, Some(10), Duration::from_millis(100)) },
        ) {
            Ok(out) if out.errors() == 0 => return Ok(()),
            Ok(out) => last = format!("failed calls: {:?}", out.by_status),
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = proc.map(|p| format!("\n{} log:\n{}", p.name, p.log_tail())).unwrap_or_default();
    bail!("{} did not answer gRPC {} on {} in {READY_TIMEOUT:?} ({last}){log}", path.name, grpc::METHOD, addr)
}

/// One gRPC run through `path` (none for a path without gRPC): open loop at `rate`, or
/// closed-loop max without one.
fn grpc_point(
    path: &Setup,
    into: &mut Grpc,
    rate: Option<u32>,
    run_for: Duration,
    repeat: usize,
) -> anyhow::Result<()> {
    let Some(addr) = path.grpc else { return Ok(()) };
    let sampler = RssSampler::start(path.proxy);
    let before = path.proxy.map_or_else(CpuTimes::default, cpu_times);
    let run = grpc::load(None, &grpc_load(addr, rate, run_for))
        .with_context(|| format!("gRPC {} at {rate:?} calls/s", path.name))?;
    let cpu = path.proxy.map_or_else(CpuTimes::default, |pid| cpu_times(pid) - before);
    let cpu_seconds = cpu.total();
    let wall = run.latencies.elapsed.as_secs_f64();
    let peak_rss_kb = sampler.finish();
    let (p50, p99) = (run.percentile(50.0), run.percentile(99.0));
    let statuses = if run.by_status.is_empty() { String::new() } else { format!(" {:?}", run.by_status) };
    println!(
        "  run {} gRPC {:>9} {:<10} p50 {p50:>6} µs  p99 {p99:>6} µs  {:>8.0} calls/s  errors {}{statuses}  proxy CPU {:.3}",
        repeat + 1,
        rate.map_or("max".to_string(), |r| format!("{r}/s")),
        path.name,
        run.rps(),
        run.errors(),
        cpu_seconds / wall
    );
    let merge = |into: &mut std::collections::BTreeMap<String, usize>| {
        for (status, n) in &run.by_status {
            *into.entry(status.clone()).or_default() += n;
        }
    };
    if rate.is_some() {
        let point = &mut into.latency;
        point.p50.push(p50);
        point.p99.push(p99);
        point.errors += run.errors();
        point.cpu.push(cpu_seconds / wall);
        point.peak_rss_kb.push(peak_rss_kb);
        merge(&mut into.by_status);
    } else {
        let max = MaxRun {
            rps: run.rps(),
            requests: run.calls as f64,
            errors: run.errors() as u64,
            cpu,
            wall,
            peak_rss_kb,
            latency: Some((p50 as f64, p99 as f64)),
        };
        record(&mut into.max, &max, path.proxy.is_some());
        merge(&mut into.max_by_status);
    }
    Ok(())
}

fn record(into: &mut Throughput, run: &MaxRun, has_proxy: bool) {
    into.rps.push(run.rps);
    into.errors += run.errors;
    into.peak_rss_kb = into.peak_rss_kb.max(run.peak_rss_kb);
    if let Some((p50, p99)) = run.latency {
        into.p50_us.push(p50);
        into.p99_us.push(p99);
    }
    if has_proxy {
        into.cpu.push(run.cpu.total() / run.wall);
        into.per_core.push(run.requests / run.cpu.total().max(f64::MIN_POSITIVE));
        let per_request = |seconds: f64| seconds * 1e6 / run.requests.max(1.0);
        into.user_us_per_request.push(per_request(run.cpu.user));
        into.system_us_per_request.push(per_request(run.cpu.system));
    }
}

struct Report<'a> {
    paths: &'a [Setup],
    results: &'a [PathResults],
    commands: &'a [String],
    configs: &'a [(&'static str, String)],
    cores: usize,
    pinning: Pinning,
    plan: Plan,
    /// The temporary folder, written `$DIR` in the report.
    dir: String,
}

impl Report<'_> {
    /// The gRPC section: latency at the fixed rate and max calls/s, each path.
    fn grpc_tables(&self, md: &mut String) -> anyhow::Result<()> {
        let (repeats, run_seconds) = (self.plan.repeats(), self.plan.run().as_secs());
        let direct = &self.results[0].grpc;
        let (b50, b99) = (median(&as_f64(&direct.latency.p50)), median(&as_f64(&direct.latency.p99)));
        writeln!(
            md,
            "\n## gRPC (unary, h2c): latency at {GRPC_RATE} calls/s and max calls/s\n\n\
             `testbed::grpc` (a ghz-like generator on tonic's client) calling `{}` on a tonic echo (in this\n\
             process, its own thread and runtime). weft-proxy: a GRPCRoute on a second Gateway listener, to a\n\
             Service port with appProtocol `kubernetes.io/h2c`; nginx: `grpc_pass` to an upstream with\n\
             `keepalive`; HAProxy: `proto h2` on both sides. Fixed rate: open loop (each latency from the\n\
             call's due time), {GRPC_CONNECTIONS} HTTP/2 connections, at most {GRPC_OPEN_CONCURRENCY} calls in flight. Max: closed\n\
             loop, {GRPC_MAX_CONCURRENCY} callers over {GRPC_CONNECTIONS} connections (its p50/p99 from each call's send time). {run_seconds} s a run,\n\
             {repeats} runs of each path interleaved; median [min–max]. Errors: failed calls by gRPC status.\n\n\
             | path | p50 µs | p99 µs | added p50 | added p99 | errors | proxy CPU (cores) | max calls/s | max p50 / p99 µs | calls/s per proxy core | errors at max |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            grpc::METHOD
        )?;
        let statuses = |errors: usize, by: &std::collections::BTreeMap<String, usize>| {
            if by.is_empty() {
                errors.to_string()
            } else {
                let each: Vec<String> = by.iter().map(|(s, n)| format!("{s} {n}")).collect();
                format!("{errors} ({})", each.join(", "))
            }
        };
        for (path, result) in self.paths.iter().zip(self.results).filter(|(p, _)| p.grpc.is_some()) {
            let g = &result.grpc;
            let (p50, p99) = (median(&as_f64(&g.latency.p50)), median(&as_f64(&g.latency.p99)));
            let proxied = path.proxy.is_some();
            let dash = || "—".to_string();
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {} | {} |",
                path.name,
                spread(&as_f64(&g.latency.p50), 0),
                spread(&as_f64(&g.latency.p99), 0),
                if proxied { format!("{:+.0}", p50 - b50) } else { dash() },
                if proxied { format!("{:+.0}", p99 - b99) } else { dash() },
                statuses(g.latency.errors, &g.by_status),
                if proxied { format!("{:.3}", median(&g.latency.cpu)) } else { dash() },
                spread(&g.max.rps, 0),
                median(&g.max.p50_us),
                median(&g.max.p99_us),
                if proxied { spread(&g.max.per_core, 0) } else { dash() },
                statuses(g.max.errors as usize, &g.max_by_status),
            )?;
        }
        let saturated = self
            .paths
            .iter()
            .zip(self.results)
            .filter(|(p, _)| p.proxy.is_some() && p.grpc.is_some())
            .all(|(_, r)| median(&r.grpc.max.cpu) >= 0.9);
        if !saturated {
            writeln!(
                md,
                "\nAt gRPC max, a proxy using less than one core was held back by core 0, where the generator and\n\
                 the echo share one process (tonic on both sides): max calls/s then compares paths under the same\n\
                 client, and calls/s per proxy core (calls per CPU-second the proxy used) is the efficiency figure."
            )?;
        }
        Ok(())
    }

    fn write(&self, load_before: &str, load_after: &str) -> anyhow::Result<()> {
        let RunInfo { date, commit, machine } = RunInfo::now();
        let (repeats, run_seconds) = (self.plan.repeats(), self.plan.run().as_secs());
        let versions = [
            version("nginx", "-v"),
            version("haproxy", "-v"),
            version("wrk", "-v"),
            version("h2load", "--version"),
        ];
        let busy = first_load(load_before).max(first_load(load_after)) >= 1.0;
        let mut md = String::new();
        writeln!(md, "# Ingress: weft-proxy vs nginx vs HAProxy, same route, same run\n")?;
        md.push_str(self.plan.banner());
        writeln!(
            md,
            "`cargo xtask bench ingress` on {machine}, {date}, commit {commit} (plus the working tree's\n\
             uncommitted changes, if any); weft-proxy: {}. Peers: {}.\n",
            crate::bench::binaries_note(),
            versions.join("; ")
        )?;
        writeln!(md, "Load average before the run: `{load_before}`; after: `{load_after}`.")?;
        if busy {
            writeln!(
                md,
                "**The machine was busy** (other engineers compiling on its {} cores): that noise hits all paths\n\
                 alike, as they are interleaved in every repeat, but it widens the spreads and lowers the\n\
                 absolute numbers; compare paths within this run, not with other machines.",
                self.cores
            )?;
        }
        writeln!(
            md,
            "\nEverything on 127.0.0.1. The backend of every path is one nginx process answering\n\
             `return 200 \"ok\\n\"` (fixed, fast, in a process of its own). Each proxy has one worker\n\
             (weft-proxy: tokio sizes its workers to the one core it may run on; nginx: one process,\n\
             `master_process off`; HAProxy: `nbthread 1`), keeps connections to the backend alive, and\n\
             logs no requests. {}\n",
            if self.pinning.enabled {
                "Pinning (`taskset`): the proxies on core 1; the load generators (this process's\n\
                 open-loop generator, wrk, h2load) and the backend on core 0. So the proxy has a core\n\
                 to itself, and the client + backend share the other: at max load the direct path is\n\
                 limited by that shared core, not by a proxy."
            } else {
                "One core: nothing pinned."
            }
        )?;

        let idle = IdleSettings::read();
        md.push_str(&idle.paragraph(&format!(
            "The `{FLOOR}` row (HAProxy relaying bytes, no HTTP parsing, on the\n\
             proxies' core; below) measures"
        )));
        md.push('\n');
        let direct = &self.results[0];
        writeln!(
            md,
            "## Latency at fixed rates\n\nOpen loop (each latency from the request's due time, so stalls are not hidden),\n\
             HTTP/1.1 over keep-alive connections (16, 64 at 10k req/s), {run_seconds} s a run, {repeats} runs of each path\n\
             interleaved; median of the runs [min–max], µs. Added = path − direct (medians).\n\n\
             | path | rate (req/s) | p50 µs | p99 µs | added p50 | added p99 | errors | proxy CPU (cores) |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        for (r, (rate, _)) in RATES.iter().enumerate() {
            let base = &direct.latency[r];
            let (b50, b99) = (median(&as_f64(&base.p50)), median(&as_f64(&base.p99)));
            for (path, result) in self.paths.iter().zip(self.results) {
                let point = &result.latency[r];
                let (p50, p99) = (median(&as_f64(&point.p50)), median(&as_f64(&point.p99)));
                let added = |v: f64, b: f64| {
                    if path.proxy.is_some() { format!("{:+.0}", v - b) } else { "—".into() }
                };
                let cpu =
                    if path.proxy.is_some() { format!("{:.3}", median(&point.cpu)) } else { "—".into() };
                writeln!(
                    md,
                    "| {} | {rate} | {} | {} | {} | {} | {} | {cpu} |",
                    path.name,
                    spread(&as_f64(&point.p50), 0),
                    spread(&as_f64(&point.p99), 0),
                    added(p50, b50),
                    added(p99, b99),
                    point.errors
                )?;
            }
        }
        writeln!(
            md,
            "\n`{FLOOR}` is a reference path, not a peer: HAProxy in `mode tcp` relays the bytes of each\n\
             client connection to the backend without parsing HTTP (one thread, the same core, backend and\n\
             keep-alive client connections as the proxies). Its added latency is what the cheapest\n\
             user-space relay pays on this machine (two more socket hops, and waking a process on another\n\
             core); a proxy's added latency above the floor's is what its HTTP work costs, and no proxy can\n\
             go below the floor here. It runs last in each repeat, interleaved with the others."
        )?;
        for (title, pick, command) in [
            ("HTTP/1.1 keep-alive", 0, format!("wrk {}", wrk_args(self.plan).join(" "))),
            ("h2c (prior knowledge)", 1, format!("h2load {}", h2load_args(self.plan).join(" "))),
        ] {
            writeln!(
                md,
                "\n## Max requests/s, {title}: `{command}`\n\n{repeats} runs of each path interleaved; median [min–max]. Per proxy core =\n\
                 requests completed ÷ the proxy's CPU-seconds (user + system, /proc/<pid>/stat) in the run.\n\
                 CPU µs per request, split: the proxy's user time (its own code) and system time (the kernel\n\
                 on its behalf: socket calls, TCP, wake-ups) ÷ requests; the kernel share is system ÷ (user + system).\n\n\
                 | path | req/s | proxy CPU (cores) | req/s per proxy core | errors | CPU µs/request, user | CPU µs/request, kernel | kernel share |\n\
                 | --- | --- | --- | --- | --- | --- | --- | --- |"
            )?;
            for (path, result) in self.paths.iter().zip(self.results) {
                let t = if pick == 0 { &result.http1 } else { &result.h2 };
                if t.rps.is_empty() {
                    continue;
                }
                let (cpu, per_core, user, system, kernel_share) = if path.proxy.is_some() {
                    let (user, system) = (median(&t.user_us_per_request), median(&t.system_us_per_request));
                    (
                        spread(&t.cpu, 3),
                        spread(&t.per_core, 0),
                        spread(&t.user_us_per_request, 1),
                        spread(&t.system_us_per_request, 1),
                        format!("{:.0} %", 100.0 * system / (user + system).max(f64::MIN_POSITIVE)),
                    )
                } else {
                    let dash = || "—".to_string();
                    (dash(), dash(), dash(), dash(), dash())
                };
                writeln!(
                    md,
                    "| {} | {} | {cpu} | {per_core} | {} | {user} | {system} | {kernel_share} |",
                    path.name,
                    spread(&t.rps, 0),
                    t.errors
                )?;
            }
        }
        let saturated = self
            .paths
            .iter()
            .zip(self.results)
            .filter(|(p, _)| p.proxy.is_some())
            .all(|(_, r)| median(&r.http1.cpu) >= 0.9);
        if !saturated {
            writeln!(
                md,
                "\nA proxy using less than one core at \"max\" was held back by something else: core 0 (wrk or\n\
                 h2load, plus the backend) or, on a busy machine, other processes sharing the proxy's own core.\n\
                 The req/s column then compares paths under the same limits; req/s per proxy core (requests per\n\
                 CPU-second the proxy actually used) is the efficiency figure."
            )?;
        }
        self.grpc_tables(&mut md)?;
        writeln!(
            md,
            "\nh2 direct to the backend is not measured (the backend is an HTTP/1.1 server); every proxy\n\
             speaks HTTP/1.1 to it.\n\n\
             ## Memory\n\nVmRSS from /proc/<pid>/status: idle after start (one probe request), and the peak sampled\n\
             every 100 ms during the wrk and h2load runs.\n\n\
             | proxy | threads | RSS idle (MB) | peak RSS, HTTP/1.1 load (MB) | peak RSS, h2 load (MB) |\n| --- | --- | --- | --- | --- |"
        )?;
        let mb = |kb: u64| kb as f64 / 1024.0;
        for (path, result) in
            self.paths.iter().zip(self.results).filter(|(p, _)| p.proxy.is_some() && !p.floor)
        {
            writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} |",
                path.name,
                result.threads,
                mb(result.idle_rss_kb),
                mb(result.http1.peak_rss_kb),
                mb(result.h2.peak_rss_kb)
            )?;
        }

        // Targets (issue 9), computed from the medians above.
        let by_name = |name: &str| self.paths.iter().position(|p| p.name == name).map(|i| &self.results[i]);
        let (Some(weft), Some(nginx), Some(haproxy)) =
            (by_name("weft-proxy"), by_name("nginx"), by_name("haproxy"))
        else {
            bail!("a path is missing from the results");
        };
        let ratio = median(&weft.http1.per_core) / median(&haproxy.http1.per_core).max(f64::MIN_POSITIVE);
        writeln!(
            md,
            "\n## Targets (issue 9)\n\n\
             - weft-proxy ≥ 1.2× HAProxy's HTTP/1.1 requests/s per core: weft-proxy {:.0}, HAProxy {:.0}, ratio {ratio:.2} — {}.",
            median(&weft.http1.per_core),
            median(&haproxy.http1.per_core),
            verdict(ratio >= 1.2)
        )?;
        for (r, (rate, _)) in RATES.iter().enumerate() {
            let p99 = |res: &PathResults| {
                median(&as_f64(&res.latency[r].p99)) - median(&as_f64(&direct.latency[r].p99))
            };
            let (w, n, h) = (p99(weft), p99(nginx), p99(haproxy));
            writeln!(
                md,
                "- added p99 at {rate} req/s lower than nginx's and HAProxy's: weft-proxy {w:+.0} µs, nginx {n:+.0} µs, HAProxy {h:+.0} µs — {}.",
                verdict(w < n && w < h)
            )?;
        }
        let grpc_p99 = |res: &PathResults| {
            median(&as_f64(&res.grpc.latency.p99)) - median(&as_f64(&direct.grpc.latency.p99))
        };
        let (w, n, h) = (grpc_p99(weft), grpc_p99(nginx), grpc_p99(haproxy));
        writeln!(
            md,
            "- gRPC: added p99 at {GRPC_RATE} calls/s lower than nginx's and HAProxy's: weft-proxy {w:+.0} µs, nginx {n:+.0} µs, HAProxy {h:+.0} µs — {}.",
            verdict(w < n && w < h)
        )?;
        let saturated_at: Vec<String> = RATES
            .iter()
            .enumerate()
            .filter(|(r, _)| self.results.iter().any(|res| res.latency[*r].errors > 0))
            .map(|(_, (rate, _))| rate.to_string())
            .collect();
        if !saturated_at.is_empty() {
            writeln!(
                md,
                "\nErrors at {} req/s: a path could not keep up with the offered load (the open loop counts\n\
                 every request it could not complete), so its percentiles there measure queueing.",
                saturated_at.join(", ")
            )?;
        }
        writeln!(
            md,
            "\n## How to rerun\n\n```sh\napt-get install -y nginx-light haproxy wrk nghttp2-client gnuplot-nox   # the peers, the load tools, the plot\n\
             cargo xtask bench ingress   # root: its open-loop generator calls setns (on its own netns)\n\
             cargo xtask bench ingress --quick   # one 2 s repeat, into bench/results/quick/\n\
             WEFT_PROXY_BIN=/path/to/weft-proxy cargo xtask bench ingress   # bench that release binary, no build\n```\n\n\
             What it runs (`$DIR` a temporary folder holding the configurations below, ports picked free):\n\n```sh"
        )?;
        for command in self.commands {
            writeln!(md, "{command}")?;
        }
        writeln!(
            md,
            "# latency: testbed::load::constant_rate (in this process, on core {}), GET {PATH}, at {RATES:?} (rps, connections)\n\
             # gRPC: testbed::grpc::load (in this process, on core {0}), unary {} to a testbed::grpc::GrpcEcho on :$GRPC_BACKEND,\n\
             #   {GRPC_RATE} calls/s open loop ({GRPC_CONNECTIONS} connections, ≤ {GRPC_OPEN_CONCURRENCY} in flight), max: closed loop ({GRPC_CONNECTIONS} connections, {GRPC_MAX_CONCURRENCY} callers)\n```",
            Pinning::LOAD_CORE,
            grpc::METHOD
        )?;
        writeln!(md, "\n## Configurations (generated)\n")?;
        for (name, text) in self.configs {
            writeln!(md, "`{name}`:\n\n```\n{}```\n", text.replace(&self.dir, "$DIR"))?;
        }

        let json_paths: Vec<serde_json::Value> = self
            .paths
            .iter()
            .zip(self.results)
            .map(|(path, result)| {
                let latency: Vec<serde_json::Value> = RATES
                    .iter()
                    .zip(&result.latency)
                    .map(|((rate, connections), l)| {
                        json!({"rate_rps": rate, "connections": connections, "p50_us": l.p50, "p99_us": l.p99,
                               "errors": l.errors, "proxy_cpu_cores": l.cpu, "peak_rss_kb": l.peak_rss_kb})
                    })
                    .collect();
                let throughput = |t: &Throughput| {
                    json!({"rps": t.rps, "proxy_cpu_cores": t.cpu, "requests_per_proxy_core_second": t.per_core,
                           "errors": t.errors, "peak_rss_kb": t.peak_rss_kb, "p50_us": t.p50_us, "p99_us": t.p99_us,
                           "proxy_cpu_user_us_per_request": t.user_us_per_request,
                           "proxy_cpu_system_us_per_request": t.system_us_per_request})
                };
                let g = &result.grpc;
                let grpc = json!({
                    "rate_rps": GRPC_RATE, "connections": GRPC_CONNECTIONS, "in_flight_max": GRPC_OPEN_CONCURRENCY,
                    "p50_us": g.latency.p50, "p99_us": g.latency.p99, "errors": g.latency.errors,
                    "errors_by_status": g.by_status, "proxy_cpu_cores": g.latency.cpu, "peak_rss_kb": g.latency.peak_rss_kb,
                    "max": throughput(&g.max), "max_callers": GRPC_MAX_CONCURRENCY, "max_errors_by_status": g.max_by_status,
                });
                json!({
                    "path": path.name, "latency": latency, "http1_max": throughput(&result.http1),
                    "h2_max": throughput(&result.h2),
                    "grpc": if path.grpc.is_some() { grpc } else { serde_json::Value::Null },
                    "idle_rss_kb": result.idle_rss_kb, "threads": result.threads, "floor": path.floor,
                })
            })
            .collect();
        let report = json!({
            "command": "cargo xtask bench ingress", "date": date, "commit": commit, "machine": machine,
            "versions": versions, "load_before": load_before, "load_after": load_after,
            "pinned": self.pinning.enabled, "quick": self.plan.quick, "repeats": repeats, "run_seconds": run_seconds,
            "wrk_args": wrk_args(self.plan), "h2load_args": h2load_args(self.plan),
            "paths": json_paths, "weft_over_haproxy_per_core": ratio,
            "idle_settings": idle.line(), "cpu_accounting": idle.accounting,
        });
        self.plan.save("ingress", &md, &report)
    }
}
