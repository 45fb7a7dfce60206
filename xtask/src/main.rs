//! Developer commands: `cargo xtask demo`, `cargo xtask cluster up|down|status|env`,
//! `cargo xtask conformance`.

mod bench_ingress;
mod bench_mesh;
mod cluster;
mod demo;
mod demo_mesh;
mod e2e;
mod measure;

use std::process::ExitCode;

/// Builds the release binaries, then runs the mesh bench on them.
fn bench_mesh_run() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("==> building release weft-proxy, weft-controller, weft-cni");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "mesh-proxy",
            "-p",
            "mesh-controller",
            "-p",
            "cni-plugin",
            "--bins",
        ])
        .current_dir(&root)
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --release failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    bench_mesh::run(&target)
}

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
        Some("bench") if args.get(1).map(String::as_str) == Some("mesh") => match bench_mesh_run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench mesh: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") if args.get(1).map(String::as_str) == Some("ingress") => {
            match bench_ingress::build_and_run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("bench ingress: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
                "usage: cargo xtask demo | e2e | bench mesh|ingress | cluster up|down|status|env [--node] | conformance"
            );
            eprintln!(
                "  conformance   the Gateway API conformance suite against Weft in the node cluster (root; see tests/conformance)"
            );
            eprintln!(
                "  e2e    the interception tests in network namespaces (root), required rather than skipped"
            );
            eprintln!(
                "  demo   ingress (weft-proxy on examples/demo) and the mesh (two netns nodes, mTLS, a GAMMA canary)"
            );
            eprintln!(
                "  bench mesh   the mesh hop (latency at 1k rps, CPU, tunnel throughput) vs no mesh, root"
            );
            eprintln!(
                "  bench ingress   weft-proxy vs nginx vs HAProxy vs direct on loopback (latency, req/s per core, RSS), root"
            );
            eprintln!(
                "  cluster   the Kubernetes test cluster of tests/cluster (control plane; --node for the node tier)"
            );
            ExitCode::from(2)
        }
    }
}
