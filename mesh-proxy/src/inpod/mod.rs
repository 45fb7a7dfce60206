//! In-pod interception: the node proxy serving meshed pods from inside their own network
//! namespaces (the model of Istio ztunnel's `inpod`).
//!
//! weft-cni hands the proxy each meshed pod's netns over a unix socket ([`server`], protocol in
//! `mesh_api::inpod`). For each pod the proxy opens, on a thread that has entered the pod's
//! netns, the listeners the pod's nftables rules redirect to ([`pod`]):
//!
//! | port | bound | takes |
//! | --- | --- | --- |
//! | 15001 | 127.0.0.1, ::1 | the pod's outbound TCP (`redirect` in the output hook) |
//! | 15006 | 0.0.0.0, :: | inbound plaintext TCP (`redirect` in prerouting) |
//! | 15008 | 0.0.0.0, :: | HBONE from other proxies (not redirected) |
//!
//! Each port has an IPv4 and an IPv6-only listener: dual-stack and IPv6 pods are served like
//! IPv4 ones, and a netns without IPv6 gets the IPv4 listeners only ([`pod`]).
//!
//! `redirect` keeps the client's source address and records the original destination in
//! conntrack, where `SO_ORIGINAL_DST` (IPv6: `IP6T_SO_ORIGINAL_DST`) reads it; so no `IP_TRANSPARENT` or policy routing is
//! needed. Accepted connections go to a [`PodTraffic`]; the proxy's own connections are made
//! from inside the pod's netns by its [`PodSocketFactory`], with mark 0x5746 so the rules let
//! them pass. [`Passthrough`] is the default: deliver unchanged.
//!
//! Upgrades overlap the old and the new proxy without refusing a connection: [`handover`].

pub mod handover;
pub mod metrics;
pub mod netns;
pub mod pod;
pub mod server;
pub mod socket;
pub mod traffic;
mod wire;

#[cfg(test)]
mod tests;

pub use pod::{Ports, original_dst};
pub use server::{DEFAULT_DRAIN_DEADLINE, InpodConfig, InpodServer};
pub use socket::PodSocketFactory;
pub use traffic::{Passthrough, PodContext, PodTraffic};
