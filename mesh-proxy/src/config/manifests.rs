//! `--manifests DIR`: the controller's resolver run in-process on a folder of YAML, re-run
//! whenever the folder changes. A folder that does not load keeps the last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

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
        let stamp = fingerprint(&dir);
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

/// Path, size and modification time of every file below `dir`: any edit, addition or removal
/// changes it.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: a symlink loop must not spin forever.
    const MAX_ENTRIES: usize = 100_000;
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            if out.len() >= MAX_ENTRIES {
                return out;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}
