//! weft-cni: a CNI 1.0 chained plugin that meshes pods, and the node agent that installs it.
//!
//! - [`netconf`]: what the runtime gives us (environment, network config with `prevResult`)
//!   and the CNI error format.
//! - [`meshed`]: whether a pod is in the mesh, from the API server (namespace label, pod
//!   opt-out, annotations) or, standalone, from `runtimeConfig`.
//! - [`handoff`]: the client side of the proxy's in-pod socket (`mesh_api::inpod`).
//! - [`state`]: the plugin's record of live meshed pods (`/var/run/weft/pods/<uid>.json`).
//! - [`plugin`]: ADD, DEL, CHECK, VERSION.
//! - [`install`]: `weft-cni install`: copy the binary, keep it in the primary conflist's
//!   chain, and re-hand live pods to the proxy whenever it (re)starts.
//! - [`agent`]: the installer's enrolment of pods already running when their namespace joins
//!   the mesh (and un-enrolment when it leaves), found by [`netns_finder`].

pub mod agent;
pub mod handoff;
pub mod install;
pub mod meshed;
pub mod netconf;
pub mod netns_finder;
pub mod plugin;
pub mod state;
