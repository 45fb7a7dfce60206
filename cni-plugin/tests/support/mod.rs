//! The testbed (network namespaces as nodes and pods, the real CNI chain) with this package's
//! `weft-cni`, and the rule for when these tiers may be skipped.
// Each test file is its own crate and uses a part of this module: the rest is not dead.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::{Duration, Instant};

pub use testbed::WAIT;
pub use testbed::cni::{Node, link, meshed, unmeshed};
pub use testbed::netns::in_netns;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

/// A node whose pods are chained through this build's weft-cni.
pub fn node(name: &str, subnet: &str) -> Node {
    Node::new(name, subnet, Path::new(WEFT_CNI))
}

/// Skips (with the reason printed) when root, the CNI plugins, nft or `tools` are missing,
/// unless `WEFT_REQUIRE_NETNS=1` (CI, `cargo xtask e2e`) makes that a failure.
pub fn netns_available(tools: &[&str]) -> bool {
    match testbed::netns::available(tools) {
        Ok(()) => true,
        Err(reason) if std::env::var_os("WEFT_REQUIRE_NETNS").is_some_and(|v| v == "1") => {
            panic!("WEFT_REQUIRE_NETNS=1 but {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason} (set WEFT_REQUIRE_NETNS=1 to make this a failure)");
            false
        }
    }
}

/// Polls `f` until it is true, or panics after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
