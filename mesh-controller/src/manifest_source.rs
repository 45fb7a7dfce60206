//! Standalone mode's source: the manifest folder, followed file by file.
//!
//! Each file is read again only when its size, modification time or inode changed, and only
//! its objects are fed to the store; the incremental [`Resolver`] (the one the cluster mode
//! uses) then recomputes what depends on them and the publisher sends proxies only the
//! resources that changed. So an edit costs the size of the edited file, not of the folder.
//!
//! A file that fails to parse is reported and its last good objects stay in place (the other
//! files' edits still apply); removing a file removes its objects. When several files define
//! the same object, the last in path order wins, as when the folder is read whole.
//!
//! Changes are noticed through inotify (the `notify` crate) within milliseconds; a poll that
//! only stats the files stays as a fallback for filesystems without inotify (NFS, some FUSE
//! and container mounts) and for events a full inotify queue dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_api::model::{ObjectKey, RouteKey};

use crate::config_server::Publisher;
use crate::manifests::{self, ManifestError};
use crate::resolve::Settings;
use crate::resolve::incremental::Resolver;
use crate::status::{GatewayStatus, Statuses};
use crate::store::{Kind, Object, Store};

/// How often the folder is stat-ed when nothing was heard from inotify: the fallback for
/// filesystems without it. A stat per file is cheap, and nothing is read unless a file changed.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// After an inotify event, further events within this window are taken as the same edit: an
/// editor's write-then-rename, or a `cp` in several writes, is read once.
const SETTLE: Duration = Duration::from_millis(5);

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

/// What tells one version of a file from the next without reading it. The inode catches a
/// replacement by rename that keeps size and (coarse) modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp { len: meta.len(), modified: meta.modified().ok(), inode })
    }
}

type ObjectId = (Kind, ObjectKey);

/// One manifest file as last read.
struct FileState {
    stamp: Stamp,
    /// The objects it defined when it last parsed (they stay in place while it does not).
    objects: Vec<ObjectId>,
}

/// What one pass over the folder did.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files read again (changed or new) and files gone.
    pub read: usize,
    pub removed: usize,
    /// Files that did not parse (their last good objects were kept).
    pub errors: Vec<ManifestError>,
    /// The version current after the pass.
    pub version: u64,
}

pub struct ManifestSource {
    dir: PathBuf,
    publisher: Publisher,
    store: Store,
    resolver: Resolver,
    files: BTreeMap<PathBuf, FileState>,
    /// The files that define each object; the last in path order is the one in the store.
    definers: HashMap<ObjectId, BTreeSet<PathBuf>>,
    /// The Gateway statuses last logged (few: compared whole when recomputed).
    last_gateways: BTreeMap<ObjectKey, GatewayStatus>,
}

impl ManifestSource {
    pub fn new(dir: PathBuf, settings: Settings, publisher: Publisher) -> Self {
        ManifestSource {
            dir,
            publisher,
            store: Store::default(),
            resolver: Resolver::new(settings),
            files: BTreeMap::new(),
            definers: HashMap::new(),
            last_gateways: BTreeMap::new(),
        }
    }

    /// Reads what changed since the last call, resolves and publishes it. Files that parse are
    /// applied even when others do not; the first error is returned then (the others are
    /// logged), and the broken files' last good objects stay.
    pub fn reload(&mut self) -> Result<u64, ManifestError> {
        let mut scan = self.scan();
        for extra in scan.errors.iter().skip(1) {
            tracing::error!(error = %extra, "manifest file not applied; its last good objects stay in place");
        }
        match scan.errors.drain(..).next() {
            Some(first) => Err(first),
            None => Ok(scan.version),
        }
    }

    /// One pass: stats every file, reads the changed ones, removes the objects of the files
    /// gone, and publishes what that changed (nothing when nothing did).
    pub fn scan(&mut self) -> Scan {
        let started = std::time::Instant::now();
        let mut scan = Scan { version: self.publisher.version(), ..Scan::default() };
        let paths = match manifests::manifest_files(&self.dir) {
            Ok(paths) => paths,
            Err(error) => {
                // The folder itself cannot be listed (gone, or no permission for a moment):
                // keep everything rather than take every object away.
                scan.errors.push(error);
                return scan;
            }
        };
        let present: BTreeMap<PathBuf, Stamp> =
            paths.into_iter().filter_map(|path| Stamp::of(&path).map(|stamp| (path, stamp))).collect();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains_key(*p)).cloned().collect();
        let changed: Vec<(PathBuf, Stamp)> = present
            .into_iter()
            .filter(|(path, stamp)| self.files.get(path).map(|f| f.stamp) != Some(*stamp))
            .collect();
        if gone.is_empty() && changed.is_empty() && self.publisher.version() != 0 {
            return scan;
        }
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                for id in &state.objects {
                    self.undefine(&path, id);
                }
            }
            scan.removed += 1;
        }
        let mut skipped = 0;
        for (path, stamp) in changed {
            scan.read += 1;
            match manifests::load_file(&path) {
                Ok(parsed) => {
                    skipped += parsed.skipped_kinds.len();
                    self.define_file(path, stamp, parsed.objects);
                }
                Err(error) => {
                    // Not read again until it changes; its last good objects stay.
                    self.files
                        .entry(path)
                        .or_insert_with(|| FileState { stamp, objects: Vec::new() })
                        .stamp = stamp;
                    scan.errors.push(error);
                }
            }
        }
        let changes = self.store.take_changes();
        let store = &self.store;
        let resolver = &mut self.resolver;
        scan.version = self.publisher.update(|config| resolver.resolve_into(store, &changes, config));
        // Only the statuses the resolve touched: comparing all 10k routes' after each edit cost
        // more than the edit.
        let (routes, gateways) = self.resolver.take_status_changes();
        log_status_changes(self.resolver.statuses(), &routes, gateways, &mut self.last_gateways);
        tracing::info!(
            version = scan.version,
            read = scan.read,
            removed = scan.removed,
            failed = scan.errors.len(),
            changed_objects = changes.objects.len(),
            skipped,
            objects = self.store.object_count(),
            elapsed = ?started.elapsed(),
            "manifests applied"
        );
        scan
    }

    /// Makes `objects` what `path` defines, in the store where `path` is their last definer.
    fn define_file(&mut self, path: PathBuf, stamp: Stamp, objects: Vec<Object>) {
        // A later document of the same object wins within a file, as in a store.
        let mut by_id: BTreeMap<ObjectId, Object> = BTreeMap::new();
        for object in objects {
            by_id.insert((object.kind(), object.key()), object);
        }
        let old = self.files.remove(&path).map(|f| f.objects).unwrap_or_default();
        for id in old.iter().filter(|id| !by_id.contains_key(*id)) {
            self.undefine(&path, id);
        }
        let ids: Vec<ObjectId> = by_id.keys().cloned().collect();
        for (id, object) in by_id {
            let definers = self.definers.entry(id).or_default();
            definers.insert(path.clone());
            // An object unchanged by the edit of its file (999 of a file's 1000 Services)
            // is not inserted again: nothing downstream recomputes it.
            if definers.last() == Some(&path) && !self.store.holds(&object) {
                self.store.insert(object);
            }
        }
        self.files.insert(path, FileState { stamp, objects: ids });
    }

    /// `path` no longer defines `id`: remove it, or hand it to the next file defining it.
    fn undefine(&mut self, path: &Path, id: &ObjectId) {
        let Some(definers) = self.definers.get_mut(id) else { return };
        let was_current = definers.last().map(PathBuf::as_path) == Some(path);
        definers.remove(path);
        let next = definers.last().cloned();
        match next {
            None => {
                self.definers.remove(id);
                self.store.remove(id.0, &id.1);
            }
            Some(next) if was_current => {
                // Rare (the same object in two files): read the other file's definition.
                let object = manifests::load_file(&next)
                    .ok()
                    .and_then(|f| f.objects.into_iter().rev().find(|o| o.kind() == id.0 && o.key() == id.1));
                match object {
                    Some(object) => self.store.insert(object),
                    None => {
                        tracing::warn!(file = %next.display(), object = %id.1, "the other file defining this object cannot be read now; the removed definition stays until it can")
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// Applies the folder's changes as they happen, forever.
    pub async fn watch(mut self) {
        let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = watch_folder(&self.dir, tx);
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = events.recv(), if watcher.is_some() => {
                    tokio::time::sleep(SETTLE).await;
                    while events.try_recv().is_ok() {}
                }
            }
            let scan = self.scan();
            for error in &scan.errors {
                tracing::error!(%error, "manifest file not applied; its last good objects stay in place");
            }
        }
    }
}

/// An inotify watch on `dir` (recursive) that signals `tx` on any change; `None` (polling
/// only) when the filesystem or the inotify limits do not allow one.
fn watch_folder(dir: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, Watcher as _};
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Opening or reading a file (the controller's own reads among them) changes nothing.
            Ok(e) => match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // A dropped event (queue overflow): look at the folder to be sure.
            Err(_) => true,
        };
        if relevant {
            // Full: a scan is already due, which will see this change too.
            let _ = tx.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, interval = ?POLL_INTERVAL, "cannot watch the manifest folder with inotify; polling it instead");
            None
        }
    }
}

/// In standalone mode there is no object to write status to: the log says what changed
/// (`routes`: the routes whose status changed; `gateways`: whether Gateway statuses were
/// recomputed, compared with `last_gateways`).
fn log_status_changes(
    statuses: &Statuses,
    routes: &BTreeSet<RouteKey>,
    gateways: bool,
    last_gateways: &mut BTreeMap<ObjectKey, GatewayStatus>,
) {
    for (key, status) in routes.iter().filter_map(|key| Some((key, statuses.routes.get(key)?))) {
        for parent in &status.parents {
            for c in parent.conditions.iter().filter(|c| c.status == "False" || c.type_ == "PartiallyInvalid")
            {
                tracing::warn!(route = %key, parent = %parent.parent_ref.name, condition = %c.type_, reason = %c.reason, message = %c.message, "route status");
            }
        }
    }
    if !gateways {
        return;
    }
    for (key, status) in &statuses.gateways {
        if last_gateways.get(key) == Some(status) {
            continue;
        }
        for c in status.conditions.iter().filter(|c| c.status == "False") {
            tracing::warn!(gateway = %key, condition = %c.type_, reason = %c.reason, message = %c.message, "gateway status");
        }
    }
    *last_gateways = statuses.gateways.clone();
}
