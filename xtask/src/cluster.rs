//! `cargo xtask cluster up|down|status|env`: the Kubernetes test cluster from
//! `tests/cluster/`. The scripts hold the logic; this only finds them and passes the words on.
//!
//! `up` brings the control-plane tier up with the Gateway API CRDs (etcd, kube-apiserver,
//! controller-manager, scheduler on loopback); `up --node` brings up the node tier instead
//! (containerd, kubelet, kube-proxy, CoreDNS in a network namespace; needs root).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster")
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let node = args.iter().any(|a| a == "--node");
    let verb = args.iter().find(|a| !a.starts_with("--")).map(String::as_str);
    let (script, script_args): (&str, Vec<&str>) = match (verb, node) {
        (Some("up"), false) => ("control-plane.sh", vec!["up", "--crds"]),
        (Some(v @ ("down" | "status" | "env")), false) => ("control-plane.sh", vec![v]),
        (Some(v @ ("up" | "down" | "status" | "env")), true) => ("node.sh", vec![v]),
        _ => bail!("usage: cargo xtask cluster up|down|status|env [--node]"),
    };
    if verb == Some("up") {
        // Builds the upstream binaries the first time (about 17 minutes on 2 cores), then
        // reuses them from ${WEFT_CACHE:-~/.cache/weft}/upstream.
        // The node tier also needs kubelet, kube-proxy and CoreDNS.
        let tools: &[&str] = if node { &["all"] } else { &[] };
        let status = Command::new(scripts().join("build-upstream.sh"))
            .args(tools)
            .status()
            .context("cannot run tests/cluster/build-upstream.sh")?;
        if !status.success() {
            bail!("building the upstream binaries failed ({status})");
        }
    }
    let status = Command::new(scripts().join(script))
        .args(&script_args)
        .status()
        .with_context(|| format!("cannot run tests/cluster/{script}"))?;
    if !status.success() {
        bail!("tests/cluster/{script} {} failed ({status})", script_args.join(" "));
    }
    Ok(())
}

/// `cargo xtask conformance [run.sh flags]`: the Gateway API conformance suite against Weft
/// installed with its chart into the node tier (`tests/conformance/run.sh` holds the steps).
pub fn conformance(args: &[String]) -> anyhow::Result<()> {
    let script = scripts().join("../conformance/run.sh");
    let status = Command::new(&script)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("the conformance run failed ({status}); the summary above lists the failed tests");
    }
    Ok(())
}
