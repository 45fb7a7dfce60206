//! Network namespaces as nodes and pods, wired the way a container runtime wires them: the
//! Debian `loopback`, `bridge` and `host-local` CNI plugins chained with `weft-cni`, invoked
//! with CNI_COMMAND / CNI_NETNS / CNI_ARGS and the plugin's config on stdin. The ground the
//! e2e tests and `cargo xtask demo` stand on; everything it creates is removed on drop.
//!
//! - [`netns`]: namespaces and running code inside them.
//! - [`cni`]: nodes, pods, the plugin chain, links between nodes.
//! - [`capture`]: tcpdump on a link, and what crossed it.
//! - [`grpc`]: a tonic echo server and a ghz-like gRPC load generator (open or closed loop).
//! - [`http`]: a tiny HTTP server and client for inside pods.
//! - [`load`]: an open-loop (constant-rate) HTTP/1.1 load generator.
//! - [`shop`]: the meshed application the mesh test and the demo run.

pub mod capture;
pub mod cni;
pub mod grpc;
pub mod http;
pub mod load;
pub mod netns;
pub mod shop;

use std::time::Duration;

/// Every wait here is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);
