//! The controller's modes, wired from the library's parts.

use std::path::Path;

use anyhow::Context;

use crate::manifests;
use crate::resolve::{self, Resolution, Settings};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// `--manifests DIR --once`: statuses to stdout as YAML, a summary to stderr.
pub fn once(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(dir)?;
    let resolution = resolve::resolve(&loaded.store, settings);
    let yaml = resolution.statuses.to_yaml().context("cannot print statuses")?;
    print!("{yaml}");
    eprintln!("{}", summary(&resolution, loaded.files, loaded.objects, &loaded.skipped_kinds));
    Ok(())
}

/// One paragraph saying what a resolve produced.
pub fn summary(r: &Resolution, files: usize, objects: usize, skipped: &[String]) -> String {
    let c = &r.config;
    let mut out = format!(
        "read {objects} objects from {files} files; resolved {} listeners, {} routes, {} services, {} backends \
         ({} endpoints), {} workloads, {} certificates",
        c.listeners.len(),
        c.routes.len(),
        c.services.len(),
        c.backends.len(),
        c.backends.values().map(|b| b.endpoints.len()).sum::<usize>(),
        c.workloads.len(),
        c.certificates.len(),
    );
    if !skipped.is_empty() {
        out.push_str(&format!("; skipped {} objects of kinds Weft does not read ({})", skipped.len(), skipped.join(", ")));
    }
    out
}

pub fn serve_manifests(
    _dir: std::path::PathBuf,
    _settings: Settings,
    _addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    anyhow::bail!("serving the config stream is not wired yet")
}
