//! The plugin's record of live meshed pods: one JSON file per pod, written after the proxy
//! confirmed it and removed on DEL. The installer's repair loop re-hands every recorded pod
//! to a restarted proxy.

use std::io;
use std::path::{Path, PathBuf};

use mesh_api::inpod::PodInfo;
use serde::{Deserialize, Serialize};

pub const DEFAULT_DIR: &str = "/var/run/weft/pods";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pod: PodInfo,
    pub container_id: String,
    pub netns: PathBuf,
}

/// File names are the pod key; a key is a UID or container ID, but it comes from the runtime,
/// so anything that could leave the directory is refused.
fn file(dir: &Path, key: &str) -> io::Result<PathBuf> {
    if key.is_empty() || key.contains('/') || key.starts_with('.') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unusable pod key {key:?}")));
    }
    Ok(dir.join(format!("{key}.json")))
}

/// Writes atomically (temp file + rename) so a reader never sees half a record.
pub fn save(dir: &Path, record: &PodRecord) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = file(dir, &record.pod.uid)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

pub fn load(dir: &Path, key: &str) -> io::Result<Option<PodRecord>> {
    match std::fs::read(file(dir, key)?) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn remove(dir: &Path, key: &str) -> io::Result<()> {
    match std::fs::remove_file(file(dir, key)?) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every readable record; unreadable files are skipped with a log line (one bad file must not
/// stop the repair of every other pod).
pub fn list(dir: &Path) -> io::Result<Vec<PodRecord>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(io::Error::other)
            .and_then(|b| serde_json::from_slice(&b).map_err(io::Error::other))
        {
            Ok(record) => records.push(record),
            Err(error) => tracing::warn!(path = %path.display(), %error, "unreadable pod record skipped"),
        }
    }
    records.sort_by(|a: &PodRecord, b| a.pod.uid.cmp(&b.pod.uid));
    Ok(records)
}

/// The record of the sandbox `container_id`, for a DEL without a pod UID.
pub fn find_by_container(dir: &Path, container_id: &str) -> io::Result<Option<PodRecord>> {
    Ok(list(dir)?.into_iter().find(|r| r.container_id == container_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = PodRecord {
            pod: PodInfo { uid: "u1".into(), namespace: "ns".into(), name: "p".into(), ..Default::default() },
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
        };
        save(dir.path(), &record).expect("save");
        std::fs::write(dir.path().join("junk.json"), "{").expect("junk");
        assert_eq!(load(dir.path(), "u1").expect("load"), Some(record.clone()));
        assert_eq!(list(dir.path()).expect("list"), vec![record.clone()]);
        assert_eq!(find_by_container(dir.path(), "c1").expect("find"), Some(record));
        remove(dir.path(), "u1").expect("remove");
        remove(dir.path(), "u1").expect("removing twice is fine");
        assert!(load(dir.path(), "../etc/passwd").is_err());
    }
}
