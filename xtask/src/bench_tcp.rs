//! `cargo xtask bench tcp`: TCP throughput through the HBONE tunnel against the bare veth, in
//! the mesh lab of `bench mesh` ([`with_shop`]).
//!
//! iperf3 with one connection and with eight (`-P 8`): from the unmeshed client (node A) to
//! the unmeshed `legacy` pod (node B), straight over the nodes' veth (direct), and from the
//! meshed frontend to the meshed checkout-v1, which the node proxies carry in mTLS HBONE
//! (tunnel). With `ZTUNNEL_BIN` set, ztunnel's tunnel too, between two more unmeshed pods, one
//! on each node (the L4 peer of `bench mesh`, set up the same way). And the floors of `bench
//! mesh` ([`Relays`]): two HAProxy byte relays where the node proxies sit, plain TCP or TLS 1.3
//! between them, which show how much of direct any pair of user-space relays keeps on this
//! machine. All configurations are interleaved in every repeat; the tunnelling proxies' CPU is
//! read from /proc during each run.
//! Results: `bench/results/tcp.{json,md}`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::netns::Netns;

use crate::bench::{Binaries, Plan};
use crate::bench_mesh::{
    FLOOR_PLAIN, FLOOR_TLS, Relays, Shop, ZTUNNEL_NOT_RUN, Ztunnel, with_shop, ztunnel_description,
};
use crate::measure::{Proc, RunInfo, cpu_seconds, median, spawn, spread, uptime, verdict};

const IPERF_PORT: u16 = 5201;
const STREAMS: [u32; 2] = [1, 8];
/// Issue 5's target: the tunnel keeps at least this share of the direct throughput.
const TUNNEL_SHARE_TARGET: f64 = 0.8;
const DIRECT: &str = "direct veth";
const WEFT: &str = "HBONE tunnel";
const ZTUNNEL: &str = "ztunnel HBONE tunnel (L4 peer)";

struct Point {
    path: &'static str,
    streams: u32,
    gbps: Vec<f64>,
    /// Both tunnelling proxies' CPU during the run (cores).
    proxy_cpu: Vec<f64>,
}

struct Measured {
    points: Vec<Point>,
    /// Which ztunnel ran, when one did.
    ztunnel: Option<String>,
}

/// One iperf3 run of `seconds` from `netns` to `server` over `streams` connections: the
/// receiver's bits/s.
pub fn iperf(netns: &Netns, server: SocketAddr, streams: u32, seconds: u64) -> anyhow::Result<f64> {
    let out = netns
        .command("iperf3")
        .args(["-c", &server.ip().to_string(), "-p", &server.port().to_string()])
        .args(["-P", &streams.to_string(), "-t", &seconds.to_string(), "-J"])
        .stderr(Stdio::null())
        .output()
        .context("iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no throughput: {}", report["error"]))
}

pub fn run(binaries: &Binaries, plan: Plan) -> anyhow::Result<()> {
    if let Err(reason) = testbed::netns::available(&["iperf3"]) {
        bail!("the tcp bench needs {reason}");
    }
    let load_before = uptime();
    let measured = with_shop(binaries, |shop| measure(shop, plan))?;
    write_results(&measured, plan, &load_before, &uptime())
}

fn measure(shop: &Shop<'_>, plan: Plan) -> anyhow::Result<Measured> {
    let logs = shop.lab.work.path();
    let ztunnel_bin = std::env::var_os("ZTUNNEL_BIN");
    let ztunnel = match &ztunnel_bin {
        Some(bin) => {
            Some(Ztunnel::start(shop.lab, std::path::Path::new(bin)).context("ztunnel (ZTUNNEL_BIN)")?)
        }
        None => None,
    };
    let mut servers = vec![("iperf3 (v1)", &shop.v1), ("iperf3 (legacy)", &shop.legacy)];
    if let Some(z) = &ztunnel {
        servers.push(("iperf3 (zserver)", &z.server));
    }
    let _servers: Vec<Proc> = servers
        .into_iter()
        .map(|(name, pod)| {
            let mut command = pod.spec.netns.command("iperf3");
            command.args(["-s", "-p", &IPERF_PORT.to_string()]);
            spawn(name, command, logs)
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Each path: the client's netns, the server, the proxies whose CPU it costs.
    let weft = shop.lab.proxy_pids();
    let mut paths = vec![
        (DIRECT, &shop.client.spec.netns, shop.legacy.addr(IPERF_PORT), weft.clone()),
        (WEFT, &shop.frontend.spec.netns, shop.v1.addr(IPERF_PORT), weft),
    ];
    if let Some(z) = &ztunnel {
        paths.push((ZTUNNEL, &z.client.spec.netns, z.server.addr(IPERF_PORT), z.pids()));
    }
    // The floors relay from the unmeshed client to legacy's iperf3, last in each repeat.
    let floors = [
        Relays::start(shop, &shop.legacy, false, &[IPERF_PORT]).context(FLOOR_PLAIN)?,
        Relays::start(shop, &shop.legacy, true, &[IPERF_PORT]).context(FLOOR_TLS)?,
    ];
    for (name, relays) in [FLOOR_PLAIN, FLOOR_TLS].into_iter().zip(&floors) {
        paths.push((name, &shop.client.spec.netns, relays.entry(IPERF_PORT)?, relays.pids()));
    }
    let mut points = Vec::new();
    for streams in STREAMS {
        for (path, ..) in &paths {
            points.push(Point { path, streams, gbps: vec![], proxy_cpu: vec![] });
        }
    }
    let seconds = plan.run().as_secs();
    println!(
        "==> TCP throughput (iperf3, {seconds} s, 1 and 8 connections), {} runs, interleaved",
        plan.repeats()
    );
    for repeat in 0..plan.repeats() {
        for point in &mut points {
            let Some((_, netns, server, pids)) = paths.iter().find(|(name, ..)| *name == point.path) else {
                continue;
            };
            let before: Vec<f64> = pids.iter().map(|pid| cpu_seconds(*pid)).collect();
            let started = std::time::Instant::now();
            let bits = iperf(netns, *server, point.streams, seconds)
                .with_context(|| format!("{} -P {}", point.path, point.streams))?;
            let cpu: f64 = pids.iter().zip(&before).map(|(pid, b)| cpu_seconds(*pid) - b).sum();
            point.gbps.push(bits / 1e9);
            point.proxy_cpu.push(cpu / started.elapsed().as_secs_f64());
            println!(
                "  run {} {:<30} -P {}  {:>6.2} Gbit/s  proxies' CPU {:.2}",
                repeat + 1,
                point.path,
                point.streams,
                bits / 1e9,
                cpu / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(Measured { points, ztunnel: ztunnel_bin.map(|bin| ztunnel_description(&bin)) })
}

fn write_results(measured: &Measured, plan: Plan, load_before: &str, load_after: &str) -> anyhow::Result<()> {
    let points = &measured.points;
    let RunInfo { date, commit, machine } = RunInfo::now();
    let (repeats, seconds) = (plan.repeats(), plan.run().as_secs());
    let mut md = format!("# TCP throughput: HBONE tunnel vs direct veth\n\n{}", plan.banner());
    writeln!(
        md,
        "`cargo xtask bench tcp` on {machine}, {date}, commit {commit}; {}.\n\
         Load average before: `{load_before}`; after: `{load_after}`.\n\n\
         Two netns nodes joined by veth (the mesh lab of `bench mesh`). Direct: an unmeshed pod on node A to an\n\
         unmeshed pod on node B. Tunnel: a meshed pod on node A to a meshed pod on node B, carried by both\n\
         node proxies in mTLS HBONE (HTTP/2 CONNECT over TLS 1.3). `iperf3 -c <pod> -P <connections> -t {seconds}`,\n\
         {repeats} runs of each configuration interleaved; receiver's throughput, median [min–max]. Everything\n\
         (iperf3 client and server, both proxies) shares the machine's cores.\n\n\
         The `floor` rows are references, not peers: the unmeshed client to the legacy pod's iperf3 through two\n\
         HAProxy processes in `mode tcp` (one thread each, HAProxy's default buffers, no splicing) where the\n\
         node proxies sit, plain TCP or TLS 1.3 (both peers verified) between them: the relays of `bench mesh`,\n\
         whose configurations [mtls.md](mtls.md) gives. Their CPU column is both relays'. Every byte of a\n\
         relayed path crosses three TCP connections instead of one, on the same two cores as the iperf3 ends,\n\
         so the share of direct a floor keeps is what any pair of user-space relays keeps on this machine.\n\n{}\
         | path | connections | Gbit/s | both proxies' CPU (cores) | share of direct |\n| --- | --- | --- | --- | --- |",
        crate::bench::binaries_note(),
        match &measured.ztunnel {
            Some(ztunnel) => format!(
                "ztunnel rows: {ztunnel} (ZTUNNEL_BIN) in dedicated mode in two more unmeshed pods (zt/zclient on\n\
                 node A, zt/zserver on node B), set up as in `bench mesh`; its CPU column is both ztunnels'.\n\n"
            ),
            None => format!("{ZTUNNEL_NOT_RUN}\n\n"),
        }
    )?;
    let direct = |streams: u32| {
        points.iter().find(|p| p.streams == streams && p.path == DIRECT).map_or(0.0, |p| median(&p.gbps))
    };
    let mut verdicts = Vec::new();
    for point in points {
        let share = median(&point.gbps) / direct(point.streams).max(f64::MIN_POSITIVE);
        let cpu = if point.path == DIRECT { "—".to_string() } else { spread(&point.proxy_cpu, 2) };
        writeln!(
            md,
            "| {} | {} | {} | {cpu} | {:.0} % |",
            point.path,
            point.streams,
            spread(&point.gbps, 2),
            100.0 * share
        )?;
        if point.path == ZTUNNEL || point.path == FLOOR_PLAIN || point.path == FLOOR_TLS {
            // The peer's and the floors' shares, beside Weft's verdict: the target is Weft's.
            verdicts.push(format!(
                "- {} connection(s), for comparison: {} carries {:.0} % of direct.",
                point.streams,
                if point.path == ZTUNNEL { "ztunnel's tunnel" } else { point.path },
                100.0 * share
            ));
        } else if point.path == WEFT {
            verdicts.push(format!(
                "- {} connection(s): the tunnel carries {:.0} % of direct (target ≥ {:.0} %) — {}.",
                point.streams,
                100.0 * share,
                100.0 * TUNNEL_SHARE_TARGET,
                verdict(share >= TUNNEL_SHARE_TARGET)
            ));
        }
    }
    writeln!(md, "\n## Targets (issue 5)\n\n{}\n", verdicts.join("\n"))?;
    writeln!(
        md,
        "Rerun: `cargo xtask bench tcp [--quick]` (root; apt-get install -y iperf3 nftables containernetworking-plugins haproxy)."
    )?;
    let json_points: Vec<serde_json::Value> = points
        .iter()
        .map(|p| json!({"path": p.path, "connections": p.streams, "gbps": p.gbps, "proxy_cpu_cores": p.proxy_cpu}))
        .collect();
    let report = json!({
        "command": "cargo xtask bench tcp", "date": date, "commit": commit, "machine": machine,
        "quick": plan.quick, "load_before": load_before, "load_after": load_after,
        "run_seconds": seconds, "repeats": repeats, "points": json_points,
        "ztunnel": measured.ztunnel.as_deref().unwrap_or("ztunnel: not run"),
    });
    plan.save("tcp", &md, &report)
}
