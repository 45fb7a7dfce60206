//! `--config FILE`: one JSON `mesh_api::model::Config`, read once at start.

use std::path::Path;

use anyhow::Context as _;
use mesh_api::model::Config;

pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a valid config", path.display()))
}
