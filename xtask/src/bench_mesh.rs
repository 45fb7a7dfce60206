//! `cargo xtask bench mesh`: what the mesh costs, measured against no mesh in the same run.
//!
//! The demo's two-node lab with release builds: an unmeshed client calling an unmeshed server
//! on the other node (direct, the baseline), and the meshed frontend calling a meshed server
//! through an HBONE tunnel (L4, by pod address) and through its Service's GAMMA route (L7).
//! Each point is run `REPEATS` times, the configurations interleaved so machine noise hits
//! all alike; medians and spread go to `bench/results/mtls.{json,md}`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::cni::{meshed, unmeshed};
use testbed::http::HttpEcho;
use testbed::load::constant_rate;
use testbed::shop;

use crate::demo_mesh::Lab;
use crate::measure::{as_f64, cpu_seconds, machine, median};

const REPEATS: usize = 5;
const RATE: u32 = 1000;
const RUN: Duration = Duration::from_secs(5);
/// 16 connections at 1k rps: 62.5 requests a second each, as a pool of keep-alive clients.
const CONNECTIONS: u32 = 16;
const THROUGHPUT_SECONDS: &str = "5";

struct Point {
    name: &'static str,
    p50: Vec<u64>,
    p99: Vec<u64>,
    errors: usize,
    /// CPU share of each node proxy during the runs (1.0 = one core busy).
    proxy_cpu: Vec<f64>,
}

fn iperf(netns: &testbed::netns::Netns, server: SocketAddr) -> anyhow::Result<f64> {
    let out = netns
        .command("iperf3")
        .args([
            "-c",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
            "-t",
            THROUGHPUT_SECONDS,
            "-J",
        ])
        .stderr(Stdio::null())
        .output()
        .context("iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 gave no throughput")
}

pub fn run(target: &Path) -> anyhow::Result<()> {
    if let Err(reason) = testbed::netns::available(&["iperf3"]) {
        bail!("the mesh bench needs {reason}");
    }
    let lab = Lab::start(target, "release")?;
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
    let mut iperf_servers: Vec<std::process::Child> = [&v1, &legacy]
        .iter()
        .map(|pod| pod.spec.netns.command("iperf3").args(["-s", "-p", "5201"]).stdout(Stdio::null()).spawn())
        .collect::<Result<_, _>>()
        .context("iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));

    let vip = SocketAddr::new(shop::CHECKOUT_VIP.parse()?, 80);
    let scenarios = [
        ("direct (no mesh)", client.path(), legacy.addr(8080)),
        ("mesh L4: HBONE by pod address", frontend.path(), v1.addr(8080)),
        ("mesh L7: GAMMA route + HBONE", frontend.path(), vip),
    ];
    let mut points: Vec<Point> = scenarios
        .iter()
        .map(|(name, _, _)| Point { name, p50: vec![], p99: vec![], errors: 0, proxy_cpu: vec![] })
        .collect();
    let pids = lab.proxy_pids();
    println!(
        "==> latency at {RATE} rps, {CONNECTIONS} keep-alive connections, {RUN:?} a run, {REPEATS} runs each, interleaved"
    );
    for repeat in 0..REPEATS {
        for (point, (_, netns, addr)) in points.iter_mut().zip(&scenarios) {
            let before: Vec<f64> = pids.iter().map(|pid| cpu_seconds(*pid)).collect();
            let run = constant_rate(netns, *addr, RATE, RUN, CONNECTIONS).with_context(|| point.name)?;
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
    println!(
        "==> single-connection TCP throughput (iperf3, {THROUGHPUT_SECONDS} s), direct vs through the tunnel"
    );
    let (mut direct, mut tunnel) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.push(iperf(&client.spec.netns, legacy.addr(5201))?);
        tunnel.push(iperf(&frontend.spec.netns, v1.addr(5201))?);
    }
    for server in &mut iperf_servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let (direct_gbps, tunnel_gbps) = (median(&direct) / 1e9, median(&tunnel) / 1e9);
    println!("  direct {direct_gbps:.2} Gbit/s, tunnel {tunnel_gbps:.2} Gbit/s");

    write_results(&points, direct_gbps, tunnel_gbps)?;
    Ok(())
}

fn write_results(points: &[Point], direct_gbps: f64, tunnel_gbps: f64) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let commit = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(root).output()?;
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    let base_p50 = median(&as_f64(&points[0].p50));
    let base_p99 = median(&as_f64(&points[0].p99));
    let mut md = format!(
        "# Mesh hop: latency and throughput\n\n`cargo xtask bench mesh` on {}, {date}, commit {commit}; release builds.\n\
         Two netns nodes joined by veth; the client on node A, the server on node B; weft-proxy on both nodes\n\
         (the load generator, both proxies and the servers share the machine's cores).\n\n\
         Latency at {RATE} requests/s (open loop, measured from each request's due time), HTTP/1.1 over\n\
         {CONNECTIONS} keep-alive connections, {REPEATS} interleaved runs of {} s; median of the runs, [min–max].\n\n\
         | path | p50 µs | p99 µs | added p50 | added p99 | errors | proxies' CPU (cores) |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        machine(std::thread::available_parallelism().map_or(0, |n| n.get())),
        RUN.as_secs()
    );
    let mut json_points = Vec::new();
    for point in points {
        let (p50, p99) = (median(&as_f64(&point.p50)), median(&as_f64(&point.p99)));
        let spread =
            |v: &[u64]| format!("[{}–{}]", v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
        md.push_str(&format!(
            "| {} | {p50:.0} {} | {p99:.0} {} | {:+.0} | {:+.0} | {} | {:.3} |\n",
            point.name,
            spread(&point.p50),
            spread(&point.p99),
            p50 - base_p50,
            p99 - base_p99,
            point.errors,
            median(&point.proxy_cpu)
        ));
        json_points.push(json!({
            "path": point.name, "p50_us": point.p50, "p99_us": point.p99, "errors": point.errors,
            "proxy_cpu_cores": point.proxy_cpu,
        }));
    }
    md.push_str(&format!(
        "\nSingle-connection TCP throughput (iperf3, {THROUGHPUT_SECONDS} s, median of 3): direct {direct_gbps:.2} Gbit/s, \
         through the HBONE tunnel {tunnel_gbps:.2} Gbit/s ({:.0} % of direct).\n\n\
         Targets (issue 5): added p99 ≤ 200 µs at 1k rps; tunnel ≥ 80 % of direct.\n",
        100.0 * tunnel_gbps / direct_gbps.max(f64::MIN_POSITIVE)
    ));
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("mtls.md"), &md)?;
    let report = json!({
        "command": "cargo xtask bench mesh", "date": date, "commit": commit, "machine": machine(std::thread::available_parallelism().map_or(0, |n| n.get())),
        "rate_rps": RATE, "connections": CONNECTIONS, "run_seconds": RUN.as_secs(), "repeats": REPEATS,
        "latency": json_points, "throughput_gbps": {"direct": direct_gbps, "tunnel": tunnel_gbps},
    });
    std::fs::write(results.join("mtls.json"), serde_json::to_string_pretty(&report)?)?;
    println!("\n{md}");
    Ok(())
}
