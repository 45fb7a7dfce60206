//! Standalone mode's source: the manifest folder, re-read whenever a file in it changes. A
//! folder that fails to parse is reported and the last good config stays published.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config_server::Publisher;
use crate::manifests::{self, ManifestError};
use crate::resolve::{self, Settings};
use crate::status::Statuses;

/// How often the folder is checked. Polling survives editors that replace files by rename and
/// folders on filesystems without inotify; a folder of manifests is cheap to stat.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What identifies one state of the folder: every file's path, size and modification time.
/// Any edit, addition or removal changes it.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The fingerprint of everything below `dir`.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    // Bounded: a symlink loop must not spin forever.
    const MAX_ENTRIES: usize = 100_000;
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
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

pub struct ManifestSource {
    dir: PathBuf,
    settings: Settings,
    publisher: Publisher,
    last_statuses: Statuses,
}

impl ManifestSource {
    pub fn new(dir: PathBuf, settings: Settings, publisher: Publisher) -> Self {
        ManifestSource { dir, settings, publisher, last_statuses: Statuses::default() }
    }

    /// Reads, resolves and publishes once. On error nothing is published.
    pub fn reload(&mut self) -> Result<u64, ManifestError> {
        let loaded = manifests::load_dir(&self.dir)?;
        let resolution = resolve::resolve(&loaded.store, &self.settings);
        if resolution.statuses != self.last_statuses {
            log_status_changes(&self.last_statuses, &resolution.statuses);
            self.last_statuses = resolution.statuses;
        }
        let version = self.publisher.publish(resolution.config);
        tracing::info!(version, objects = loaded.objects, files = loaded.files, "manifests resolved");
        Ok(version)
    }

    /// Re-reads the folder whenever it changes, forever.
    pub async fn watch(mut self) {
        let mut seen = fingerprint(&self.dir);
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        loop {
            ticker.tick().await;
            let now = fingerprint(&self.dir);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = self.reload() {
                tracing::error!(error = %e, "manifests not applied; the last good config stays in place");
            }
        }
    }
}

/// In standalone mode there is no object to write status to: the log says what changed.
fn log_status_changes(old: &Statuses, new: &Statuses) {
    for (key, status) in &new.routes {
        if old.routes.get(key) == Some(status) {
            continue;
        }
        for parent in &status.parents {
            for c in parent.conditions.iter().filter(|c| c.status == "False" || c.type_ == "PartiallyInvalid")
            {
                tracing::warn!(route = %key, parent = %parent.parent_ref.name, condition = %c.type_, reason = %c.reason, message = %c.message, "route status");
            }
        }
    }
    for (key, status) in &new.gateways {
        if old.gateways.get(key) == Some(status) {
            continue;
        }
        for c in status.conditions.iter().filter(|c| c.status == "False") {
            tracing::warn!(gateway = %key, condition = %c.type_, reason = %c.reason, message = %c.message, "gateway status");
        }
    }
}
