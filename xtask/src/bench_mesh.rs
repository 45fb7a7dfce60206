//! `cargo xtask bench mesh`: what the mesh costs, measured against no mesh in the same run.
//!
//! The demo's two-node lab with release builds: an unmeshed client calling an unmeshed server
//! on the other node (direct, the baseline), and the meshed frontend calling a meshed server
//! through an HBONE tunnel (L4, by pod address) and through its Service's GAMMA route (L7).
//! Each point is run the plan's number of times, the configurations interleaved so machine
//! noise hits all alike; medians and spread go to `bench/results/mtls.{json,md}`. Tunnel
//! throughput is `bench tcp`'s, in the same lab ([`with_shop`]).

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::cni::{Pod, meshed, unmeshed};
use testbed::http::HttpEcho;
use testbed::load::constant_rate;
use testbed::shop;

use crate::bench::{Binaries, Plan};
use crate::demo_mesh::Lab;
use crate::measure::{RunInfo, as_f64, cpu_seconds, median, spread, uptime, verdict};

const RATE: u32 = 1000;
/// 16 connections at 1k rps: 62.5 requests a second each, as a pool of keep-alive clients.
const CONNECTIONS: u32 = 16;
/// Issue 9's targets for the mesh hop.
const ADDED_P99_TARGET_US: f64 = 200.0;
const CPU_PER_1K_TARGET: f64 = 0.05;

/// The demo lab with the shop published: meshed `frontend` and unmeshed `client` on node A;
/// meshed `v1` (and `v2`) and unmeshed `legacy` on node B, each serving HTTP on :8080.
pub struct Shop<'a> {
    pub lab: &'a Lab,
    pub frontend: Pod<'a>,
    pub client: Pod<'a>,
    pub v1: Pod<'a>,
    pub legacy: Pod<'a>,
}

/// Starts the lab on `binaries`, publishes the shop, runs `body`; everything is torn down on
/// return.
pub fn with_shop<T>(
    binaries: &Binaries,
    body: impl FnOnce(&Shop<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lab = Lab::start(binaries.dir(), "")?;
    let (a, b) = (&lab.a, &lab.b);
    let frontend = a.add_pod("shop", "frontend", meshed("frontend"));
    let client = a.add_pod("plain", "client", unmeshed());
    let v1 = b.add_pod("shop", "checkout-v1", meshed("checkout"));
    let v2 = b.add_pod("shop", "checkout-v2", meshed("checkout"));
    let legacy = b.add_pod("legacy", "legacy", unmeshed());
    lab.publish(&shop::manifests(&frontend, &v1, &v2, &legacy), "checkout-canary")?;
    let _apps = [
        HttpEcho::start(&v1.path(), 8080, "v1"),
        HttpEcho::start(&v2.path(), 8080, "v2"),
        HttpEcho::start(&legacy.path(), 8080, "legacy"),
    ];
    let shop = Shop { lab: &lab, frontend, client, v1, legacy };
    let outcome = body(&shop);
    if outcome.is_err() {
        lab.print_logs();
    }
    outcome
}

struct Point {
    name: &'static str,
    p50: Vec<u64>,
    p99: Vec<u64>,
    errors: usize,
    /// CPU share of both node proxies together during the runs (1.0 = one core busy).
    proxy_cpu: Vec<f64>,
}

pub fn run(binaries: &Binaries, plan: Plan) -> anyhow::Result<()> {
    if let Err(reason) = testbed::netns::available(&[]) {
        bail!("the mesh bench needs {reason}");
    }
    let load_before = uptime();
    let points = with_shop(binaries, |shop| measure(shop, plan))?;
    write_results(&points, plan, &load_before, &uptime())
}

fn measure(shop: &Shop<'_>, plan: Plan) -> anyhow::Result<Vec<Point>> {
    let vip = SocketAddr::new(shop::CHECKOUT_VIP.parse()?, 80);
    let scenarios = [
        ("direct (no mesh)", shop.client.path(), shop.legacy.addr(8080)),
        ("mesh L4: HBONE by pod address", shop.frontend.path(), shop.v1.addr(8080)),
        ("mesh L7: GAMMA route + HBONE", shop.frontend.path(), vip),
    ];
    let mut points: Vec<Point> = scenarios
        .iter()
        .map(|(name, _, _)| Point { name, p50: vec![], p99: vec![], errors: 0, proxy_cpu: vec![] })
        .collect();
    let pids = shop.lab.proxy_pids();
    let (repeats, run_for) = (plan.repeats(), plan.run());
    println!(
        "==> latency at {RATE} rps, {CONNECTIONS} keep-alive connections, {run_for:?} a run, {repeats} runs each, interleaved"
    );
    for repeat in 0..repeats {
        for (point, (_, netns, addr)) in points.iter_mut().zip(&scenarios) {
            let before: Vec<f64> = pids.iter().map(|pid| cpu_seconds(*pid)).collect();
            let run = constant_rate(netns, *addr, RATE, run_for, CONNECTIONS).with_context(|| point.name)?;
            let cpu: f64 = pids.iter().zip(&before).map(|(pid, b)| cpu_seconds(*pid) - b).sum();
            point.proxy_cpu.push(cpu / run.elapsed.as_secs_f64());
            point.p50.push(run.percentile(50.0));
            point.p99.push(run.percentile(99.0));
            point.errors += run.errors;
            println!(
                "  run {} {:<32} p50 {:>6} µs  p99 {:>6} µs  errors {}",
                repeat + 1,
                point.name,
                run.percentile(50.0),
                run.percentile(99.0),
                run.errors
            );
        }
    }
    Ok(points)
}

fn write_results(points: &[Point], plan: Plan, load_before: &str, load_after: &str) -> anyhow::Result<()> {
    let RunInfo { date, commit, machine } = RunInfo::now();
    let (repeats, run_seconds) = (plan.repeats(), plan.run().as_secs());
    let base_p50 = median(&as_f64(&points[0].p50));
    let base_p99 = median(&as_f64(&points[0].p99));
    let mut md = format!("# Mesh hop: latency\n\n{}", plan.banner());
    writeln!(
        md,
        "`cargo xtask bench mesh` on {machine}, {date}, commit {commit}; {}.\n\
         Load average before: `{load_before}`; after: `{load_after}`.\n\n\
         Two netns nodes joined by veth; the client on node A, the server on node B; weft-proxy on both nodes\n\
         (the load generator, both proxies and the servers share the machine's cores).\n\n\
         Latency at {RATE} requests/s (open loop, measured from each request's due time), HTTP/1.1 over\n\
         {CONNECTIONS} keep-alive connections, {repeats} interleaved runs of {run_seconds} s; median of the runs, [min–max].\n\n\
         | path | p50 µs | p99 µs | added p50 | added p99 | errors | both proxies' CPU (cores) |\n\
         | --- | --- | --- | --- | --- | --- | --- |",
        crate::bench::binaries_note()
    )?;
    let mut json_points = Vec::new();
    let mut verdicts = Vec::new();
    for point in points {
        let (p50, p99) = (median(&as_f64(&point.p50)), median(&as_f64(&point.p99)));
        let cpu = median(&point.proxy_cpu);
        writeln!(
            md,
            "| {} | {} | {} | {:+.0} | {:+.0} | {} | {} |",
            point.name,
            spread(&as_f64(&point.p50), 0),
            spread(&as_f64(&point.p99), 0),
            p50 - base_p50,
            p99 - base_p99,
            point.errors,
            spread(&point.proxy_cpu, 3)
        )?;
        if point.name != points[0].name {
            let added = p99 - base_p99;
            // Two proxies carry each request (one per node): the target is per proxy.
            let per_proxy_per_1k = cpu / 2.0 / (f64::from(RATE) / 1000.0);
            verdicts.push(format!(
                "- {}: added p99 {added:+.0} µs (target ≤ {ADDED_P99_TARGET_US:.0}) — {}; CPU {per_proxy_per_1k:.3} cores per 1k req/s per proxy (target ≤ {CPU_PER_1K_TARGET}) — {}.",
                point.name,
                verdict(added <= ADDED_P99_TARGET_US),
                verdict(per_proxy_per_1k <= CPU_PER_1K_TARGET)
            ));
        }
        json_points.push(json!({
            "path": point.name, "p50_us": point.p50, "p99_us": point.p99, "errors": point.errors,
            "proxy_cpu_cores": point.proxy_cpu,
        }));
    }
    writeln!(md, "\n## Targets (issue 9)\n\n{}\n", verdicts.join("\n"))?;
    writeln!(
        md,
        "Tunnel throughput (iperf3, 1 and 8 connections): `cargo xtask bench tcp`, [tcp.md](tcp.md).\n\n\
         Rerun: `cargo xtask bench mesh [--quick]` (root; apt-get install -y iperf3 nftables containernetworking-plugins)."
    )?;
    let report = json!({
        "command": "cargo xtask bench mesh", "date": date, "commit": commit, "machine": machine,
        "quick": plan.quick, "load_before": load_before, "load_after": load_after,
        "rate_rps": RATE, "connections": CONNECTIONS, "run_seconds": run_seconds, "repeats": repeats,
        "latency": json_points,
    });
    plan.save("mtls", &md, &report)
}
