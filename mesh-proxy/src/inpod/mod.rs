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
//! *Taking* connections needs no `IP_TRANSPARENT` and no policy routing: `redirect` keeps the
//! client's source address and records the original destination in conntrack, where
//! `SO_ORIGINAL_DST` (IPv6: `IP6T_SO_ORIGINAL_DST`) reads it. Accepted connections go to a
//! [`PodTraffic`]; the proxy's own connections are made from inside the pod's netns by its
//! [`PodSocketFactory`], with mark 0x5746 so the rules let them pass. [`Passthrough`] is the
//! default: deliver unchanged.
//!
//! *Delivering* an inbound connection to the app is where `IP_TRANSPARENT` comes in, as in
//! ztunnel: the proxy's socket in the pod is bound to the client's address, so the app sees its
//! real caller rather than its own address ([`PodContext::deliver`]):
//!
//! | connection | taken on | reaches its destination from |
//! | --- | --- | --- |
//! | the pod's outbound | 15001 | the pod's own address (it is the pod's connection) |
//! | inbound plaintext | 15006 | the client's address |
//! | HBONE | 15008 | the source pod's address (the HBONE connection's peer: its proxy dials from inside the source pod) |
//!
//! Those kept-source deliveries carry mark 0x5747 instead, which the pod's return route (weft-cni
//! installs it with the rules, `mesh_init::route`) uses to bring the app's replies back to the
//! proxy; the rules leave them untracked. The route is checked before each one; without it, or
//! without `CAP_NET_ADMIN`, the delivery comes from the pod's own address (one warning per pod,
//! `weft_inpod_source_address_fallbacks_total`).
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
