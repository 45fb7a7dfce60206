//! The per-node data plane.
