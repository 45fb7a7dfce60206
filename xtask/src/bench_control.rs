//! `cargo xtask bench control`: how fast a change reaches every proxy, and what config costs in
//! memory, with weft-controller in standalone mode (`--manifests`) and three weft-proxy
//! processes subscribed as three nodes, all on loopback (no root needed).
//!
//! For each scale (1k and 10k Services, each with an EndpointSlice and a GAMMA HTTPRoute,
//! 100k endpoints in all; and 1k Services with 10k endpoints) a fresh stack starts on generated manifests: the controller (its own
//! CA, TLS on the config stream, a token per node, as in the demo) and the proxies. Measured:
//! - initial sync: proxies started → every proxy has ACKed the first version;
//! - propagation, repeated: one route's file rewritten (by rename, as an editor or a ConfigMap
//!   mount does) → the controller publishes a new version → every proxy has ACKed it. Both
//!   instants come from the controller's `/metrics`, polled every 2 ms:
//!   `weft_controller_config_version` and `weft_controller_proxy_acked_version{node=...}`
//!   (the controller records an ACK when it arrives on the stream);
//! - VmRSS (and VmHWM, the peak) of the controller and of each proxy, idle (a stack on an
//!   empty folder) and after the initial sync at each scale; hence proxy memory per 1k
//!   endpoints.
//!
//! Results: `bench/results/control.{json,md}`. Every process is killed on return.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::bench::{Binaries, Plan};
use crate::measure::{
    Proc, RunInfo, free_port, http_get, median, percentile, spawn, status_field, uptime, verdict,
};

const PROXIES: usize = 3;
/// (Services, endpoints in all): issue 9's two scales, after a smaller one whose full state
/// (about 1 MB) fits any gRPC message limit, so propagation is measured even where the big
/// ones cannot sync.
const SCALES: [(usize, usize); 3] = [(1_000, 10_000), (1_000, 100_000), (10_000, 100_000)];
const NAMESPACES: usize = 10;
/// How long a stack may take to start and sync (10k Services are megabytes of YAML).
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the controller's /metrics is read while a change travels (a fresh connection
/// each time, so not faster), and while a stack starts.
const POLL: Duration = Duration::from_millis(2);
const SLOW_POLL: Duration = Duration::from_millis(50);
/// Issue 9's targets.
const PROPAGATION_P99_TARGET_MS: f64 = 100.0;
const IDLE_RSS_TARGET_MB: f64 = 20.0;
const LOADED_RSS_TARGET_MB: f64 = 80.0;
/// Proxy log lines that mean a sync will never complete: stop waiting at once.
const FATAL: [&str; 2] = ["length too large", "message too large"];

/// The generated manifests of one scale: `bulk-*.yaml` hold every object but the route that
/// changes, which has `changing.yaml` to itself.
fn write_manifests(dir: &Path, services: usize, endpoints: usize) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut namespaces = String::new();
    for n in 0..NAMESPACES {
        writeln!(namespaces, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: team-{n}}}\n---")?;
    }
    std::fs::write(dir.join("namespaces.yaml"), namespaces)?;
    let per_service = endpoints / services.max(1);
    let mut bytes = 0;
    for (file, chunk) in (0..services).collect::<Vec<_>>().chunks(1000).enumerate() {
        let mut yaml = String::with_capacity(chunk.len() * (per_service * 80 + 1200));
        for &i in chunk {
            let (ns, name) = (format!("team-{}", i % NAMESPACES), format!("svc-{i}"));
            writeln!(
                yaml,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:",
                i / 250,
                i % 250
            )?;
            for e in 0..per_service {
                let n = i * per_service + e;
                writeln!(
                    yaml,
                    "  - {{addresses: [10.{}.{}.{}], conditions: {{ready: true}}, nodeName: node-{}}}",
                    1 + n / 65536,
                    (n / 256) % 256,
                    n % 256,
                    n % PROXIES
                )?;
            }
            yaml.push_str("---\n");
            if i > 0 {
                yaml.push_str(&route(i, "/api"));
            }
        }
        bytes += yaml.len() as u64;
        std::fs::write(dir.join(format!("bulk-{file:03}.yaml")), yaml)?;
    }
    if services > 0 {
        std::fs::write(dir.join("changing.yaml"), route(0, "/api"))?;
    }
    Ok(bytes)
}

/// Service `i`'s GAMMA producer route (parentRef: its own Service), matching `prefix`.
fn route(i: usize, prefix: &str) -> String {
    let (ns, name) = (format!("team-{}", i % NAMESPACES), format!("svc-{i}"));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"2026-01-01T00:00:00Z\"}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {name}, port: 80}}]\n\
         \x20 rules:\n  - matches: [{{path: {{type: PathPrefix, value: \"{prefix}\"}}}}, {{headers: [{{name: x-canary, value: \"1\"}}]}}]\n\
         \x20   backendRefs: [{{name: {name}, port: 80}}]\n---\n"
    )
}

/// What the controller's /metrics says: the published version, each node's ACKed version,
/// and NACKs in all.
struct Metrics {
    version: u64,
    acked: Vec<u64>,
    nacks: u64,
}

fn metrics(admin: SocketAddr) -> Option<Metrics> {
    let text = http_get(admin, "/metrics").ok()?;
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.trim().parse::<u64>().ok());
    let mut out = Metrics { version: 0, acked: vec![0; PROXIES], nacks: 0 };
    for line in text.lines() {
        if line.starts_with("weft_controller_config_version ") {
            out.version = value(line)?;
        } else if let Some(rest) = line.strip_prefix("weft_controller_proxy_acked_version{node=\"node-") {
            let node: usize = rest.split('"').next()?.parse().ok()?;
            if let Some(slot) = out.acked.get_mut(node) {
                *slot = value(line)?;
            }
        } else if line.starts_with("weft_controller_proxy_nacks_total") {
            out.nacks += value(line)?;
        }
    }
    Some(out)
}

/// The controller and the proxies of one measurement, killed on drop.
struct Stack {
    controller: Proc,
    proxies: Vec<Proc>,
    admin: SocketAddr,
    /// Controller start → its first published version.
    ready_ms: f64,
    /// Proxies started → every proxy ACKed the published version.
    sync_ms: f64,
}

impl Stack {
    fn start(binaries: &Binaries, work: &Path, manifests: &Path) -> anyhow::Result<Stack> {
        let ca = work.join("ca");
        let _ = std::fs::remove_dir_all(&ca);
        let tokens: String = (0..PROXIES).map(|n| format!("node-{n} token-of-node-{n}\n")).collect();
        std::fs::write(work.join("node-tokens"), tokens)?;
        let config = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = Command::new(binaries.path("weft-controller"));
        command
            .arg("--manifests")
            .arg(manifests)
            .arg("--ca-dir")
            .arg(&ca)
            .arg("--node-tokens")
            .arg(work.join("node-tokens"))
            .arg("--config-addr")
            .arg(config.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .env("RUST_LOG", "warn");
        let started = Instant::now();
        let controller = spawn("weft-controller", command, work)?;
        wait(&controller, &[], "the controller's first version", SYNC_TIMEOUT, SLOW_POLL, || {
            Ok(ca.join("ca.crt").exists() && metrics(admin).is_some_and(|m| m.version > 0))
        })?;
        let ready_ms = started.elapsed().as_secs_f64() * 1e3;
        let names = ["weft-proxy (node-0)", "weft-proxy (node-1)", "weft-proxy (node-2)"];
        let mut proxies = Vec::new();
        let started = Instant::now();
        for (n, name) in names.into_iter().enumerate().take(PROXIES) {
            let token = work.join(format!("node-{n}.token"));
            std::fs::write(&token, format!("token-of-node-{n}"))?;
            let mut command = Command::new(binaries.path("weft-proxy"));
            command
                .args(["--controller", &format!("https://{config}"), "--node", &format!("node-{n}")])
                .arg("--controller-ca-bundle")
                .arg(ca.join("ca.crt"))
                .arg("--controller-token-file")
                .arg(&token)
                .args(["--admin", &SocketAddr::from(([127, 0, 0, 1], free_port()?)).to_string()])
                .env("RUST_LOG", "warn");
            proxies.push(spawn(name, command, work)?);
        }
        let mut stack = Stack { controller, proxies, admin, ready_ms, sync_ms: 0.0 };
        stack.wait_acked(0, SYNC_TIMEOUT, SLOW_POLL, "every proxy's first ACK")?;
        stack.sync_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(stack)
    }

    /// Waits until every proxy has ACKed a version newer than `after` that is the published
    /// one; returns when the controller published it and when the last ACK came.
    fn wait_acked(
        &self,
        after: u64,
        timeout: Duration,
        poll: Duration,
        what: &str,
    ) -> anyhow::Result<(Instant, Instant, u64)> {
        let mut published: Option<(Instant, u64)> = None;
        let mut outcome = None;
        let nacks_before = metrics(self.admin).map_or(0, |m| m.nacks);
        wait(&self.controller, &self.proxies, what, timeout, poll, || {
            let Some(m) = metrics(self.admin) else { return Ok(false) };
            if m.nacks > nacks_before {
                bail!("a proxy refused (NACKed) version {}", m.version);
            }
            if m.version > after && published.is_none_or(|(_, v)| v != m.version) {
                published = Some((Instant::now(), m.version));
            }
            if let Some((at, version)) = published
                && m.acked.iter().all(|a| *a >= version)
            {
                outcome = Some((at, Instant::now(), version));
                return Ok(true);
            }
            Ok(false)
        })?;
        outcome.context("no outcome")
    }

    /// VmRSS and VmHWM (kB) of the controller, then of each proxy.
    fn memory(&self) -> (Vec<u64>, Vec<u64>) {
        let all: Vec<&Proc> = std::iter::once(&self.controller).chain(&self.proxies).collect();
        (
            all.iter().map(|p| status_field(p.pid(), "VmRSS")).collect(),
            all.iter().map(|p| status_field(p.pid(), "VmHWM")).collect(),
        )
    }
}

/// Polls `ready` every `poll` until it holds, `timeout` passes, a process exits or a proxy
/// logs a fatal error.
fn wait(
    controller: &Proc,
    proxies: &[Proc],
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut checked = Instant::now();
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        // Process liveness and logs every 200 ms, not every poll.
        if checked.elapsed() > Duration::from_millis(200) {
            checked = Instant::now();
            for proc in std::iter::once(controller).chain(proxies) {
                if std::fs::metadata(format!("/proc/{}", proc.pid())).is_err() {
                    bail!("{} exited while waiting for {what}:\n{}", proc.name, proc.log_tail());
                }
            }
            for proxy in proxies {
                let tail = proxy.log_tail();
                if let Some(line) = tail.lines().find(|l| FATAL.iter().any(|f| l.contains(f))) {
                    // The error itself, without the log line's timestamp and target.
                    let error = line.split("error=").nth(1).unwrap_or(line);
                    bail!("{} cannot take the config ({what}): {error}", proxy.name);
                }
            }
        }
        std::thread::sleep(poll);
    }
    bail!(
        "timed out after {timeout:?} waiting for {what}\ncontroller log:\n{}\n{} log:\n{}",
        controller.log_tail(),
        proxies.first().map_or("", |p| p.name),
        proxies.first().map(Proc::log_tail).unwrap_or_default()
    )
}

/// One scale's figures, or why it could not be measured.
struct Scale {
    services: usize,
    endpoints: usize,
    yaml_bytes: u64,
    outcome: Result<Measured, String>,
}

struct Measured {
    ready_ms: f64,
    sync_ms: f64,
    /// Per change: file written → version published, → every proxy ACKed.
    to_publish_ms: Vec<f64>,
    to_acks_ms: Vec<f64>,
    rss_kb: Vec<u64>,
    hwm_kb: Vec<u64>,
}

fn measure_scale(
    binaries: &Binaries,
    work: &Path,
    manifests: &Path,
    changes: usize,
) -> anyhow::Result<Measured> {
    let stack = Stack::start(binaries, work, manifests)?;
    println!(
        "  controller ready in {:.0} ms; {PROXIES} proxies synced in {:.0} ms",
        stack.ready_ms, stack.sync_ms
    );
    // Let the allocators settle after the full-state burst before reading memory.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_kb, hwm_kb) = stack.memory();
    let (mut to_publish_ms, mut to_acks_ms) = (Vec::new(), Vec::new());
    for change in 0..changes {
        let before = metrics(stack.admin).map_or(0, |m| m.version);
        let staged = work.join("changing.yaml.new");
        std::fs::write(&staged, route(0, &format!("/api-{change:06}")))?;
        let written = Instant::now();
        std::fs::rename(&staged, manifests.join("changing.yaml"))?;
        let (published, acked, version) = stack.wait_acked(
            before,
            CHANGE_TIMEOUT,
            POLL,
            &format!("change {} to reach every proxy", change + 1),
        )?;
        let publish = published.duration_since(written).as_secs_f64() * 1e3;
        let total = acked.duration_since(written).as_secs_f64() * 1e3;
        println!(
            "  change {:>2}: version {version} published after {publish:.0} ms, every proxy ACKed after {total:.0} ms",
            change + 1
        );
        to_publish_ms.push(publish);
        to_acks_ms.push(total);
        // Off the controller's 250 ms folder poll's phase, so writes land anywhere in it.
        std::thread::sleep(Duration::from_millis(300 + 37 * (change as u64 % 7)));
    }
    Ok(Measured {
        ready_ms: stack.ready_ms,
        sync_ms: stack.sync_ms,
        to_publish_ms,
        to_acks_ms,
        rss_kb,
        hwm_kb,
    })
}

pub fn run(binaries: &Binaries, plan: Plan) -> anyhow::Result<()> {
    let changes = if plan.quick { 3 } else { 20 };
    let load_before = uptime();
    let work = tempfile::tempdir()?;
    println!("==> idle: weft-controller on an empty folder, {PROXIES} weft-proxy subscribed");
    let idle_dir = work.path().join("idle");
    let idle_manifests = idle_dir.join("manifests");
    write_manifests(&idle_manifests, 0, 0)?;
    let idle = {
        let stack = Stack::start(binaries, &idle_dir, &idle_manifests)?;
        std::thread::sleep(Duration::from_secs(1));
        stack.memory()
    };
    println!("  RSS (kB): controller {}, proxies {:?}", idle.0[0], &idle.0[1..]);
    let mut scales = Vec::new();
    // `WEFT_BENCH_CONTROL_SERVICES=10000`: only the scales with that many Services (a quicker
    // loop while working on one of them; the results then hold only those).
    let only: Option<usize> =
        std::env::var("WEFT_BENCH_CONTROL_SERVICES").ok().and_then(|v| v.trim().parse().ok());
    for (services, endpoints) in SCALES.into_iter().filter(|(s, _)| only.is_none_or(|o| o == *s)) {
        println!("==> {services} Services with a route each, {endpoints} endpoints: {changes} changes");
        let dir = work.path().join(format!("scale-{services}"));
        let manifests = dir.join("manifests");
        let yaml_bytes = write_manifests(&manifests, services, endpoints)?;
        let outcome = measure_scale(binaries, &dir, &manifests, changes).map_err(|e| format!("{e:#}"));
        if let Err(error) = &outcome {
            eprintln!("  {services} Services: not measured: {error}");
        }
        scales.push(Scale { services, endpoints, yaml_bytes, outcome });
        // The scale's files are megabytes: gone before the next one.
        let _ = std::fs::remove_dir_all(&manifests);
    }
    write_results(&idle, &scales, plan, changes, &load_before, &uptime())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn write_results(
    idle: &(Vec<u64>, Vec<u64>),
    scales: &[Scale],
    plan: Plan,
    changes: usize,
    load_before: &str,
    load_after: &str,
) -> anyhow::Result<()> {
    let RunInfo { date, commit, machine } = RunInfo::now();
    let idle_proxy = median(&idle.0[1..].iter().map(|kb| mb(*kb)).collect::<Vec<_>>());
    let mut md = format!("# Control plane: config propagation and memory\n\n{}", plan.banner());
    writeln!(
        md,
        "`cargo xtask bench control` on {machine}, {date}, commit {commit}; {}.\n\
         Load average before: `{load_before}`; after: `{load_after}`.\n\n\
         weft-controller in standalone mode (`--manifests`: the folder followed with inotify, only a changed file read\n\
         again, its objects resolved incrementally; its CA, TLS config stream, a token per node) and {PROXIES} weft-proxy processes subscribed as\n\
         node-0..{}, all on loopback. Each scale: a fresh stack on generated manifests (Services in {NAMESPACES}\n\
         namespaces, each with one EndpointSlice and one GAMMA HTTPRoute). A change: one route's file rewritten\n\
         (a new path prefix), by rename. Times from the controller's `/metrics` polled every 2 ms: the new\n\
         `weft_controller_config_version`, then every `weft_controller_proxy_acked_version{{node=...}}` at it.\n\
         {changes} changes a scale; p99 of {changes} samples is their maximum or next to it.\n",
        crate::bench::binaries_note(),
        PROXIES - 1
    )?;
    writeln!(
        md,
        "## Propagation: file written → every proxy ACKed\n\n\
         | Services | endpoints | YAML | controller start → first version | proxies start → all synced | write → published p50 | write → all ACKed p50 | p99 | max | published → all ACKed p50 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    for scale in scales {
        let head =
            format!("| {} | {} | {:.1} MB", scale.services, scale.endpoints, scale.yaml_bytes as f64 / 1e6);
        match &scale.outcome {
            Ok(m) => {
                let acks_after_publish: Vec<f64> =
                    m.to_acks_ms.iter().zip(&m.to_publish_ms).map(|(a, p)| a - p).collect();
                writeln!(
                    md,
                    "{head} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} ms |",
                    m.ready_ms,
                    m.sync_ms,
                    median(&m.to_publish_ms),
                    median(&m.to_acks_ms),
                    percentile(&m.to_acks_ms, 99.0),
                    percentile(&m.to_acks_ms, 100.0),
                    median(&acks_after_publish)
                )?;
            }
            Err(error) => {
                let first = error.lines().next().unwrap_or("");
                writeln!(md, "{head} | not measured: {} | | | | | | |", first.replace('|', "/"))?;
            }
        }
    }
    writeln!(
        md,
        "\n## Memory (VmRSS, MB; peak VmHWM in brackets)\n\n\
         | state | controller | proxies (node-0, node-1, node-2) | proxy memory per 1k endpoints |\n| --- | --- | --- | --- |"
    )?;
    let row = |rss: &[u64], hwm: &[u64]| -> (String, String) {
        let proxies: Vec<String> =
            rss.iter().zip(hwm).skip(1).map(|(r, h)| format!("{:.1} [{:.1}]", mb(*r), mb(*h))).collect();
        (format!("{:.1} [{:.1}]", mb(rss[0]), mb(hwm[0])), proxies.join(", "))
    };
    let (controller, proxies) = row(&idle.0, &idle.1);
    writeln!(md, "| idle (no Services) | {controller} | {proxies} | — |")?;
    let mut verdicts = vec![format!(
        "- proxy RSS idle ≤ {IDLE_RSS_TARGET_MB:.0} MB: {idle_proxy:.1} MB — {}.",
        verdict(idle_proxy <= IDLE_RSS_TARGET_MB)
    )];
    let mut json_scales = Vec::new();
    for scale in scales {
        let Ok(m) = &scale.outcome else {
            writeln!(md, "| {} Services | not measured | | |", scale.services)?;
            json_scales.push(json!({"services": scale.services, "endpoints": scale.endpoints,
                "yaml_bytes": scale.yaml_bytes, "error": scale.outcome.as_ref().err()}));
            continue;
        };
        let proxy = median(&m.rss_kb[1..].iter().map(|kb| mb(*kb)).collect::<Vec<_>>());
        let per_1k = (proxy - idle_proxy) / (scale.endpoints as f64 / 1000.0);
        let (controller, proxies) = row(&m.rss_kb, &m.hwm_kb);
        writeln!(
            md,
            "| {} Services, {} endpoints | {controller} | {proxies} | {per_1k:.2} MB |",
            scale.services, scale.endpoints
        )?;
        json_scales.push(json!({
            "services": scale.services, "endpoints": scale.endpoints, "yaml_bytes": scale.yaml_bytes,
            "controller_ready_ms": m.ready_ms, "initial_sync_ms": m.sync_ms,
            "write_to_published_ms": m.to_publish_ms, "write_to_all_acked_ms": m.to_acks_ms,
            "rss_kb": m.rss_kb, "hwm_kb": m.hwm_kb, "proxy_mb_per_1k_endpoints": per_1k,
        }));
    }
    for scale in scales {
        match &scale.outcome {
            Ok(m) => {
                let p99 = percentile(&m.to_acks_ms, 99.0);
                let proxy = m.rss_kb[1..].iter().copied().max().map_or(0.0, mb);
                if scale.services >= 10_000 {
                    verdicts.push(format!(
                        "- propagation p99 ≤ {PROPAGATION_P99_TARGET_MS:.0} ms at {} routes: {p99:.0} ms — {}.",
                        scale.services,
                        verdict(p99 <= PROPAGATION_P99_TARGET_MS)
                    ));
                    verdicts.push(format!(
                        "- proxy RSS ≤ {LOADED_RSS_TARGET_MB:.0} MB at {} Services / {} endpoints: {proxy:.1} MB (largest of the {PROXIES}) — {}.",
                        scale.services,
                        scale.endpoints,
                        verdict(proxy <= LOADED_RSS_TARGET_MB)
                    ));
                }
            }
            Err(error) => verdicts.push(format!(
                "- {} Services: **not measured** — {}",
                scale.services,
                error.lines().next().unwrap_or("")
            )),
        }
    }
    writeln!(md, "\n## Targets (issue 9)\n\n{}\n", verdicts.join("\n"))?;
    writeln!(
        md,
        "The standalone controller reads only the changed file again and resolves it incrementally, as the\n\
         cluster mode's watchers do (see [controller.md](controller.md)): \"write → published\" holds the\n\
         inotify event, that file and the resolve; \"published → all ACKed\" is the config stream's and the\n\
         proxies' share (a delta applied in place, and only the GAMMA frontend tables it touches rebuilt).\n\
         A proxy takes the full state in parts of about 1 MiB, decoded as they arrive, so no message or\n\
         receive buffer of the whole state's size is held.\n\n\
         Rerun: `cargo xtask bench control [--quick]` (no root needed)."
    )?;
    for scale in scales {
        if let Err(error) = &scale.outcome {
            writeln!(md, "\n{} Services, the error in full:\n\n```\n{error}\n```", scale.services)?;
        }
    }
    let report = json!({
        "command": "cargo xtask bench control", "date": date, "commit": commit, "machine": machine,
        "quick": plan.quick, "load_before": load_before, "load_after": load_after, "proxies": PROXIES,
        "changes_per_scale": changes,
        "idle": {"rss_kb": idle.0, "hwm_kb": idle.1, "proxy_rss_mb_median": idle_proxy},
        "scales": json_scales,
    });
    plan.save("control", &md, &report)
}
