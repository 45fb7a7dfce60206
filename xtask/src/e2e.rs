//! `cargo xtask e2e`: the interception tests that need network namespaces (root, `nft`, the
//! Debian CNI plugins), required rather than skipped: the nftables rules in a real netns
//! (`init/tests/netns.rs`) and weft-cni chained with the real bridge/host-local/loopback plugins
//! (`cni-plugin/tests/e2e.rs`), and the enrolment agent's netns finder against real processes
//! (`cni-plugin/tests/netns_finder.rs`). Extra words are passed to the test binaries (a filter, or
//! `--nocapture`).

use std::process::Command;

use anyhow::{Context, bail};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    for (package, test) in [("mesh-init", "netns"), ("cni-plugin", "e2e"), ("cni-plugin", "netns_finder")] {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "-p", package, "--test", test, "--"])
            .args(args)
            .env("WEFT_REQUIRE_NETNS", "1")
            .status()
            .context("cannot run cargo test")?;
        if !status.success() {
            bail!("{package} --test {test} failed ({status})");
        }
    }
    Ok(())
}
