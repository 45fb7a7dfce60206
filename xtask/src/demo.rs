//! `cargo xtask demo`, part 1: weft-proxy as a standalone gateway on loopback, in front of two
//! versions of an app, checked against what the manifests in `examples/demo/` say. Part 2, the
//! mesh, is [`crate::demo_mesh`].
//!
//! 1. builds `weft-proxy` (debug profile: it shares the machine and the target dir with the
//!    edit-compile loop, and a demo measures behaviour, not speed);
//! 2. starts app v1 and v2 in this process on free loopback ports;
//! 3. copies `examples/demo/` to a temporary folder with those ports filled in;
//! 4. runs `weft-proxy --manifests <folder>` and waits for `/ready`;
//! 5. sends traffic and compares what it sees with the config; exits non-zero on a mismatch.
//!
//! Every process it starts is killed when it returns, whatever happens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Ports written in `examples/demo/`, replaced by free ones in the copy the proxy reads.
const MANIFEST_GATEWAY_PORT: &str = "18080";
const MANIFEST_V1_PORT: &str = "18081";
const MANIFEST_V2_PORT: &str = "18082";
/// The route's hostname in `examples/demo/route.yaml`.
const HOST: &str = "app.demo.local";
/// Weight of v1 in the split rule of `examples/demo/route.yaml`.
const CONFIGURED_V1_PERCENT: f64 = 90.0;
/// Requests for the split: with p = 0.9 the standard deviation of the measured share is
/// 1.5 points, so ±5 points is beyond 3σ (a false failure about once in 1,000 runs).
const SPLIT_REQUESTS: usize = 400;
const SPLIT_TOLERANCE_PERCENT: f64 = 5.0;
const CANARY_REQUESTS: usize = 20;
/// How long the proxy may take to build, start and load the manifests.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run() -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(demo())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

async fn demo() -> anyhow::Result<bool> {
    let root = workspace_root();
    println!("==> building weft-proxy, weft-controller, weft-cni (debug profile)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = tokio::process::Command::new(&cargo)
        .args(["build", "--quiet", "-p", "mesh-proxy", "-p", "mesh-controller", "-p", "cni-plugin", "--bins"])
        .current_dir(&root)
        .status()
        .await
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join("weft-proxy");

    let v1 = start_app("v1").await?;
    let v2 = start_app("v2").await?;
    let gateway_port = free_port()?;
    let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let workdir = tempfile::tempdir()?;
    let manifests = workdir.path().join("manifests");
    write_manifests(&root.join("examples/demo"), &manifests, gateway_port, v1.port(), v2.port())?;
    println!("==> apps: v1 on {v1}, v2 on {v2}; gateway on 127.0.0.1:{gateway_port}; admin on {admin}");

    let log_path = workdir.path().join("weft-proxy.log");
    let log = std::fs::File::create(&log_path)?;
    let mut proxy = tokio::process::Command::new(&binary)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--admin")
        .arg(admin.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // The guard of last resort: an early return or a panic still stops the proxy.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    println!(
        "==> started {} --manifests {} (pid {})",
        binary.display(),
        manifests.display(),
        proxy.id().unwrap_or(0)
    );

    let outcome = exercise(gateway_port, admin).await;
    let _ = proxy.start_kill();
    let _ = proxy.wait().await;
    let ingress = match outcome {
        Ok(passed) => {
            if !passed {
                print_log(&log_path);
            }
            passed
        }
        Err(error) => {
            print_log(&log_path);
            return Err(error);
        }
    };
    println!("\n==> part 2: the mesh (two nodes, mTLS between them, a GAMMA canary)");
    let mesh = tokio::task::spawn_blocking(move || crate::demo_mesh::run(&target)).await??;
    println!("\n{}", if ingress && mesh { "demo passed" } else { "demo FAILED" });
    Ok(ingress && mesh)
}

fn print_log(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        let lines: Vec<&str> = text.lines().collect();
        println!("--- last lines of the proxy's log ---");
        for line in &lines[lines.len().saturating_sub(30)..] {
            println!("{line}");
        }
    }
}

async fn exercise(gateway_port: u16, admin: SocketAddr) -> anyhow::Result<bool> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    wait_ready(&client, admin).await?;
    println!("==> proxy ready\n");
    let mut checks: Vec<(String, bool)> = Vec::new();

    // The 90/10 split.
    let (mut v1, mut v2, mut other) = (0usize, 0usize, 0usize);
    for _ in 0..SPLIT_REQUESTS {
        let reply = get(&client, gateway_port, "/", &[]).await?;
        match reply.version.as_deref() {
            Some("v1") => v1 += 1,
            Some("v2") => v2 += 1,
            _ => other += 1,
        }
    }
    let measured = 100.0 * v1 as f64 / SPLIT_REQUESTS as f64;
    println!("Weighted split, {SPLIT_REQUESTS} requests to http://{HOST}/");
    println!("  configured  v1 {CONFIGURED_V1_PERCENT:.0} %  v2 {:.0} %", 100.0 - CONFIGURED_V1_PERCENT);
    println!("  measured    v1 {measured:.1} % ({v1})  v2 {:.1} % ({v2})  other {other}", 100.0 - measured);
    let split_ok = other == 0 && (measured - CONFIGURED_V1_PERCENT).abs() <= SPLIT_TOLERANCE_PERCENT;
    checks.push((format!("split within ±{SPLIT_TOLERANCE_PERCENT} points of 90/10"), split_ok));

    // The header match.
    let mut canary_v2 = 0;
    let mut echoed = String::new();
    for _ in 0..CANARY_REQUESTS {
        let reply = get(&client, gateway_port, "/checkout", &[("x-canary", "1")]).await?;
        if reply.version.as_deref() == Some("v2") {
            canary_v2 += 1;
        }
        echoed = reply.body;
    }
    println!("\nHeader match, {CANARY_REQUESTS} requests with x-canary: 1");
    println!("  answered by v2: {canary_v2}/{CANARY_REQUESTS}");
    println!("  what v2 received:");
    for line in echoed.lines() {
        println!("    {line}");
    }
    checks.push(("x-canary: 1 always reaches v2".into(), canary_v2 == CANARY_REQUESTS));

    // The redirect.
    let reply = get(&client, gateway_port, "/old/page?lang=en", &[]).await?;
    let expected = format!("http://{HOST}:{gateway_port}/new/page?lang=en");
    println!("\nRedirect: GET /old/page?lang=en");
    println!(
        "  status {}  location {}",
        reply.status.as_u16(),
        reply.location.as_deref().unwrap_or("(none)")
    );
    checks.push((
        format!("301 to {expected}"),
        reply.status == StatusCode::MOVED_PERMANENTLY && reply.location.as_deref() == Some(expected.as_str()),
    ));

    // A host the route does not serve.
    let reply = get_host(&client, gateway_port, "elsewhere.example", "/").await?;
    println!("\nUnknown host elsewhere.example: status {}", reply.status.as_u16());
    checks.push(("an unknown host gets 404".into(), reply.status == StatusCode::NOT_FOUND));

    // What the proxy counted.
    let metrics = fetch(&client, &format!("http://{admin}/metrics")).await?.body;
    println!("\nAdmin /metrics (excerpt)");
    for line in metrics.lines().filter(|l| {
        l.starts_with("weft_requests_total")
            || l.starts_with("weft_config_version")
            || l.starts_with("weft_request_duration_seconds_count")
            || l.starts_with("weft_active_connections")
    }) {
        println!("  {line}");
    }

    println!("\nChecks");
    let mut passed = true;
    for (name, ok) in &checks {
        println!("  [{}] {name}", if *ok { " ok " } else { "FAIL" });
        passed &= ok;
    }
    println!("\n{}", if passed { "ingress: passed" } else { "ingress: FAILED" });
    Ok(passed)
}

struct Reply {
    status: StatusCode,
    version: Option<String>,
    location: Option<String>,
    body: String,
}

async fn wait_ready(client: &Client<HttpConnector, Empty<Bytes>>, admin: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if let Ok(reply) = fetch(client, &format!("http://{admin}/ready")).await
            && reply.status == StatusCode::OK
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the proxy was not ready within {READY_TIMEOUT:?}")
}

async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> anyhow::Result<Reply> {
    send(client, Request::get(url).body(Empty::new())?).await
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut req = Request::get(format!("http://127.0.0.1:{port}{path}")).header("host", HOST);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(client, req.body(Empty::new())?).await
}

async fn get_host(
    client: &Client<HttpConnector, Empty<Bytes>>,
    port: u16,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    let req =
        Request::get(format!("http://127.0.0.1:{port}{path}")).header("host", host).body(Empty::new())?;
    send(client, req).await
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> anyhow::Result<Reply> {
    let response =
        tokio::time::timeout(Duration::from_secs(5), client.request(req)).await.context("timed out")??;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (version, location) = (header("x-app-version"), header("location"));
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply { status, version, location, body: String::from_utf8_lossy(&body).into_owned() })
}

/// One version of the demo app: answers with its version, the path and headers it received.
async fn start_app(version: &'static str) -> anyhow::Result<SocketAddr> {
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(app_answer(version, &req))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn app_answer(version: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = format!("app {version}\npath: {}\n", req.uri());
    for (name, value) in req.headers() {
        body.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("<binary>")));
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) = version.parse() {
        response.headers_mut().insert("x-app-version", value);
    }
    response
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_manifests(from: &Path, to: &Path, gateway: u16, v1: u16, v2: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?
            .replace(MANIFEST_GATEWAY_PORT, &gateway.to_string())
            .replace(MANIFEST_V1_PORT, &v1.to_string())
            .replace(MANIFEST_V2_PORT, &v2.to_string());
        let name = path.file_name().context("file name")?;
        std::fs::write(to.join(name), text)?;
    }
    Ok(())
}
