//! The contract between weft-controller and weft-proxy.
//!
//! - [`model`]: the resolved configuration as plain Rust types.
//! - [`proto`]: the gRPC stream that carries it (generated from `proto/weft/mesh/v1`).
//! - [`identity`]: workload identities (SPIFFE IDs) as certificates carry them.
//! - [`delta`]: full state and deltas of that model, as the stream sends them.
//! - [`precedence`]: the order in which route matches are tried, shared by the controller
//!   (which validates and reports) and the proxy (which matches).

pub mod delta;
pub mod identity;
pub mod inpod;
pub mod model;
pub mod precedence;

/// Generated from `proto/weft/mesh/v1/` (`config.proto`: the config stream; `certificates.proto`:
/// workload certificates).
pub mod proto {
    #![allow(clippy::all, rust_2018_idioms)]
    tonic::include_proto!("weft.mesh.v1");
}

/// The largest config-stream message either side sends or takes. A proxy that subscribes with
/// `chunked_full_state` gets a large full state in parts of about
/// [`delta::FULL_STATE_PART_BYTES`]; the limit stays high for the one-message full state of
/// an older peer (at 10k Services with 100k endpoints that is about 19 MB, measured by
/// `cargo xtask bench control`, far past tonic's 4 MB default).
pub const MAX_CONFIG_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The message of the `Unauthenticated` status with which the controller ends a config stream
/// whose token expired or whose session reached its maximum age. It is not a refusal: the proxy
/// reconnects at once, with the token it holds now, and keeps serving its config meanwhile.
pub const STREAM_REAUTHENTICATE: &str =
    "reauthenticate: this config stream's token or session age ran out; reconnect with the current token";

/// The GatewayClass `controllerName` Weft answers to.
pub const CONTROLLER_NAME: &str = "weft.dev/gateway-controller";
/// Namespace label that enrols a namespace's pods in the mesh (value `enabled`); on a pod,
/// value `disabled` opts that pod out.
pub const MESH_LABEL: &str = "weft.dev/mesh";
/// Mark carried by the proxy's own sockets so interception rules let them pass ("WF").
pub const PROXY_FWMARK: u32 = 0x5746;
/// Mark of the proxy's connections that deliver to a pod *from the client's address*
/// (IP_TRANSPARENT), and of the pod's side of them: a pod's policy route sends packets with
/// this mark to loopback, so the pod's replies to a client address that is not its own come
/// back to the proxy instead of leaving on eth0 (`mesh_init::route`).
pub const TRANSPARENT_FWMARK: u32 = 0x5747;
