//! `--manifests DIR`: the controller's resolver run in-process on a folder of YAML, re-run
//! whenever the folder changes. A folder that does not load keeps the last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_api::model::Config;
use mesh_controller::manifests::{ManifestError, load_dir};
use mesh_controller::resolve::{Settings, resolve};

use super::ConfigStore;

/// How often the folder is checked: fast enough that an edit feels immediate, slow enough that
/// stat-ing a few files costs nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves the folder once.
pub fn load(dir: &Path) -> Result<Config, ManifestError> {
    let loaded = load_dir(dir)?;
    let resolution = resolve(&loaded.store, &Settings::default());
    Ok(resolution.config)
}

/// Loads the folder now, then again after every change, until the task is dropped.
pub async fn watch(dir: PathBuf, store: Arc<ConfigStore>) {
    let mut version = 0;
    let mut seen = None;
    let mut last_good: Option<Config> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        ticker.tick().await;
        let stamp = mesh_controller::manifest_source::fingerprint(&dir);
        if seen.as_ref() == Some(&stamp) {
            continue;
        }
        seen = Some(stamp);
        let scan = dir.clone();
        let result = match tokio::task::spawn_blocking(move || load(&scan)).await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "manifest loader failed");
                continue;
            }
        };
        match result {
            Ok(config) => {
                if last_good.as_ref() == Some(&config) {
                    continue;
                }
                version += 1;
                last_good = Some(config.clone());
                store.install(version, config);
            }
            Err(error) => {
                store.metrics().config_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "manifests not loaded; keeping the last good config");
            }
        }
    }
}
