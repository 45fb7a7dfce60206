//! The interception rules of a meshed pod, as a pure function of [`Settings`], and the two
//! operations on a network namespace: [`apply`] and [`remove`].
//!
//! - [`annotations`]: the pod annotations that exclude ports and CIDRs, parsed with errors that
//!   name the annotation and the offending entry.
//! - [`rules`]: settings → an nftables JSON transaction (what `nft -j -f -` reads).
//! - [`nft`]: running that transaction in the current or in a given network namespace.
//! - [`route`]: the policy route (and sysctls) that bring the app's replies back to the proxy
//!   when the proxy delivers from the client's address; installed and removed with the rules.
//! - [`sysctl`]: a network sysctl of the current netns, also from a container whose `/proc/sys`
//!   is read-only (the enrolment agent's).
//!
//! Everything lives in one table, `inet weft`, so the rules never touch a table that
//! iptables-legacy, iptables-nft or kube-proxy own, and removing that table leaves the network
//! namespace exactly as it was (the route's two sysctls aside, see [`route`]).

pub mod annotations;
pub mod nft;
pub mod route;
pub mod rules;
pub mod sysctl;

pub use annotations::{AnnotationError, Cidr, Exclusions, PortRange};
pub use nft::{Applied, NftError, apply, apply_in, remove, remove_in, table_exists_in};
pub use rules::{Settings, TABLE};
