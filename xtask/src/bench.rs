//! `cargo xtask bench <scenario> [--quick]`: the one entry point of the benches.
//!
//! Scenarios: `ingress` (weft-proxy vs nginx vs HAProxy vs direct on loopback, HTTP/1.1, h2c and
//! gRPC; also writes the `resources` table, which is derived from the same run), `mesh` (the
//! mesh hop in two netns nodes, HTTP/1.1 at several loads and gRPC), `tcp` (iperf3 through the HBONE tunnel vs the bare veth), `control` (config
//! propagation and memory at 1k/10k Services), `resources` (= `ingress`), `all` (each of them
//! once, then `report`), and `report` (the plots and the README's Performance section from
//! `bench/results`, nothing rerun).
//!
//! `--quick` (or `WEFT_BENCH_QUICK=1`): one repeat of 2 s runs, to check that a scenario works
//! in a minute; its results go to `bench/results/quick/`, labelled as such, and never into the
//! README. Full runs: at least 5 interleaved repeats, median and [min–max].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::measure::workspace_root;
use crate::{bench_control, bench_ingress, bench_mesh, bench_report, bench_tcp};

/// How much of each scenario to run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub quick: bool,
}

impl Plan {
    /// Repeats of every measured point (interleaved across configurations).
    pub fn repeats(self) -> usize {
        if self.quick { 1 } else { 5 }
    }

    /// How long one load run lasts.
    pub fn run(self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 5 })
    }

    /// Where results are written: quick runs never overwrite full ones.
    pub fn results_dir(self) -> PathBuf {
        let results = workspace_root().join("bench/results");
        if self.quick { results.join("quick") } else { results }
    }

    /// Writes a scenario's `<name>.md` and `<name>.json` into [`results_dir`](Self::results_dir),
    /// and prints the Markdown.
    pub fn save(self, name: &str, md: &str, report: &serde_json::Value) -> anyhow::Result<()> {
        let results = self.results_dir();
        std::fs::create_dir_all(&results)?;
        std::fs::write(results.join(format!("{name}.md")), md)?;
        std::fs::write(results.join(format!("{name}.json")), serde_json::to_string_pretty(report)?)?;
        println!("\n{md}");
        Ok(())
    }

    /// A line for the top of a Markdown report: empty for a full run.
    pub fn banner(self) -> &'static str {
        if self.quick {
            "> **Quick run** (`--quick`: one repeat, 2 s runs): a check that the scenario works, not a\n\
             > result. Its numbers have no spread and often come from a loaded machine; the full run\n\
             > (`cargo xtask bench <scenario>`) writes `bench/results/`.\n\n"
        } else {
            ""
        }
    }
}

/// The release binaries under test.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `WEFT_BENCH_BIN_DIR` (binaries built elsewhere: nothing is built), else a release build
    /// of weft-proxy, weft-controller and weft-cni in the target dir.
    pub fn get() -> anyhow::Result<Binaries> {
        if let Some(dir) = std::env::var_os("WEFT_BENCH_BIN_DIR") {
            println!("==> binaries from WEFT_BENCH_BIN_DIR={}, not built", Path::new(&dir).display());
            return Ok(Binaries { dir: dir.into() });
        }
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        println!("==> building release weft-proxy, weft-controller, weft-cni");
        let status = Command::new(cargo)
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
            ])
            .arg("--bins")
            .current_dir(&root)
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo build --release failed");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        Ok(Binaries { dir: target.join("release") })
    }

    /// One of the binaries; `WEFT_PROXY_BIN` overrides weft-proxy alone.
    pub fn path(&self, name: &str) -> PathBuf {
        match std::env::var_os("WEFT_PROXY_BIN") {
            Some(proxy) if name == "weft-proxy" => proxy.into(),
            _ => self.dir.join(name),
        }
    }

    /// The folder holding them (the mesh lab takes a folder).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What the reports say of the binaries measured.
pub fn binaries_note() -> String {
    match std::env::var_os("WEFT_BENCH_BIN_DIR") {
        Some(dir) => format!("binaries from `{}` (WEFT_BENCH_BIN_DIR)", Path::new(&dir).display()),
        None => "release builds".into(),
    }
}

pub const USAGE: &str = "bench ingress|mesh|tcp|control|resources|all|report [--quick]";

/// `args`: what follows `bench`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("WEFT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = Plan { quick };
    let scenarios: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let [scenario] = scenarios.as_slice() else {
        bail!("usage: cargo xtask {USAGE}");
    };
    match *scenario {
        "report" => bench_report::run(plan),
        "all" => all(plan),
        "ingress" | "resources" | "mesh" | "tcp" | "control" => {
            let binaries = Binaries::get()?;
            one(scenario, &binaries, plan)?;
            bench_report::run(plan)
        }
        other => bail!("unknown scenario {other:?}; usage: cargo xtask {USAGE}"),
    }
}

fn one(scenario: &str, binaries: &Binaries, plan: Plan) -> anyhow::Result<()> {
    match scenario {
        // resources is a table of the ingress run (idle RSS, RSS and CPU at 1k rps of each
        // proxy): running it alone would repeat the same run.
        "ingress" | "resources" => bench_ingress::run(&binaries.path("weft-proxy"), plan),
        "mesh" => bench_mesh::run(binaries, plan),
        "tcp" => bench_tcp::run(binaries, plan),
        "control" => bench_control::run(binaries, plan),
        other => bail!("unknown scenario {other:?}"),
    }
}

/// Every scenario once (a failed one does not stop the others), then the report.
fn all(plan: Plan) -> anyhow::Result<()> {
    let started = Instant::now();
    let binaries = Binaries::get()?;
    let mut outcomes = Vec::new();
    for scenario in ["ingress", "mesh", "tcp", "control"] {
        println!("\n==> bench {scenario}{}", if plan.quick { " (quick)" } else { "" });
        let began = Instant::now();
        let outcome = one(scenario, &binaries, plan);
        if let Err(error) = &outcome {
            eprintln!("bench {scenario} failed: {error:#}");
        }
        outcomes.push((scenario, outcome.is_ok(), began.elapsed()));
    }
    bench_report::run(plan)?;
    println!("\n==> bench all: {:.0} s in all", started.elapsed().as_secs_f64());
    for (scenario, ok, took) in &outcomes {
        println!("  {scenario:<8} {} in {:.0} s", if *ok { "ok" } else { "FAILED" }, took.as_secs_f64());
    }
    let failed: Vec<&str> = outcomes.iter().filter(|(_, ok, _)| !ok).map(|(s, _, _)| *s).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}
