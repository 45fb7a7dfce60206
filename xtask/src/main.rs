//! Developer commands: `cargo xtask demo`, `cargo xtask cluster up|down|status|env`.

mod cluster;
mod demo;
mod demo_mesh;
mod e2e;

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
        Some("e2e") => match e2e::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("e2e: {error:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo xtask demo | e2e | cluster up|down|status|env [--node]");
            eprintln!(
                "  e2e    the interception tests in network namespaces (root), required rather than skipped"
            );
            eprintln!(
                "  demo   ingress (weft-proxy on examples/demo) and the mesh (two netns nodes, mTLS, a GAMMA canary)"
            );
            eprintln!(
                "  cluster   the Kubernetes test cluster of tests/cluster (control plane; --node for the node tier)"
            );
            ExitCode::from(2)
        }
    }
}
