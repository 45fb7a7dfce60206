//! weft-controller: reads the Gateway API (from a cluster or a folder of manifests), resolves
//! it into the node proxies' config and every status, and serves the config stream.

pub mod admin;
pub mod app;
pub mod ca;
pub mod config_server;
pub mod gateway_services;
pub mod kube_source;
pub mod leader;
pub mod manifest_source;
pub mod manifests;
pub mod resolve;
pub mod status;
pub mod status_writer;
pub mod store;
