//! Developer commands: `cargo xtask demo`, `cargo xtask cluster up|down|status|env`,
//! `cargo xtask conformance`, `cargo xtask bench <scenario>`.

mod bench;
mod bench_control;
mod bench_ingress;
mod bench_mesh;
mod bench_report;
mod bench_tcp;
mod cluster;
mod demo;
mod demo_mesh;
mod e2e;
mod measure;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => match demo::run() {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("demo failed: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some("cluster") => match cluster::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cluster: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some("conformance") => match cluster::conformance(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("conformance: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some("e2e") => match e2e::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("e2e: {error:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask demo | e2e | {} | cluster up|down|status|env [--node] | conformance",
                bench::USAGE
            );
            for line in [
                "  conformance   the Gateway API conformance suite against Weft in the node cluster (root; see tests/conformance)",
                "  e2e    the interception tests in network namespaces (root), required rather than skipped",
                "  demo   ingress (weft-proxy on examples/demo) and the mesh (two netns nodes, mTLS, a GAMMA canary)",
                "  bench ingress    weft-proxy vs nginx vs HAProxy vs direct on loopback: latency at 1k/5k/10k rps,",
                "                   max req/s (wrk, h2load), CPU and RSS; also writes the resources table (root)",
                "  bench resources  = bench ingress (its idle RSS, RSS and CPU per 1k rps come from that run)",
                "  bench mesh       the mesh hop in two netns nodes: direct vs HBONE L4 vs GAMMA L7 at 1k rps (root)",
                "  bench tcp        iperf3, 1 and 8 connections, through the HBONE tunnel vs the bare veth (root)",
                "  bench control    weft-controller + 3 weft-proxy: file change to every ACK at 1k/10k Services, RSS",
                "  bench all        all of the above (~20 min), then bench report",
                "  bench report     plots and the README's Performance section from bench/results, nothing rerun",
                "  bench ... --quick  (or WEFT_BENCH_QUICK=1) one repeat of 2 s runs, into bench/results/quick/",
                "  cluster   the Kubernetes test cluster of tests/cluster (control plane; --node for the node tier)",
            ] {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}
