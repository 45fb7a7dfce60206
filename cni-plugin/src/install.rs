//! `weft-cni install`: the node agent the DaemonSet runs.
//!
//! 1. Copies this binary into the host's CNI bin dir (atomically: temp file, then rename, so
//!    the runtime never executes half a binary).
//! 2. Appends `{"type": "weft-cni", …}` to the plugin chain of the primary network config: the
//!    lexically first `*.conflist` / `*.conf` in the conf dir, which is the one the runtime
//!    uses. A `.conf` (one plugin, no chain) is converted to a `.conflist`.
//! 3. Watches the conf dir and puts the entry back whenever another agent (the primary CNI's
//!    own DaemonSet, typically) rewrites the file.
//! 4. Repair: keeps a connection to the proxy's in-pod socket; on every (re)connect it re-hands
//!    every pod in the state dir, then says SnapshotSent, so a restarted proxy re-adopts the
//!    pods without touching them. A new proxy that starts while the old one still runs (an
//!    upgrade: see mesh-proxy's `inpod::handover`) binds a fresh socket at the same path; the
//!    loop notices that the path names another socket than the one it is connected to and
//!    hands the new proxy every pod the same way.
//! 5. With `--node-name`, enrols this node's pods that were already running when their namespace
//!    was labelled, and un-enrols them when it no longer is ([`crate::agent`]).
//! 6. On SIGTERM/SIGINT (or `weft-cni uninstall`), removes the entry and the binary — unless a
//!    newer installer has started meanwhile. During an upgrade the old and the new DaemonSet
//!    pod overlap, each with an installer: the newest one to start writes its token to
//!    `<state dir>/.installer` and from then on alone manages the chain (two watchers would
//!    rewrite the file after each other forever); the old one, on SIGTERM, leaves the config
//!    and binary to it. If the owner stops and removes the token while an older installer
//!    still runs, that one takes over again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use mesh_api::inpod::Request;
use serde_json::{Map, Value, json};

use crate::handoff::Connection;
use crate::state;

pub const PLUGIN_TYPE: &str = "weft-cni";
/// How often the repair loop retries a proxy that is not there. A restarted proxy is serving
/// pods again at most this long after its socket appears, well inside the 1 s the mesh promises
/// for re-adoption, while an absent proxy costs one failed connect() per period.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// How soon pods the proxy refused are offered to it again.
const RETRY_REFUSED: Duration = Duration::from_secs(1);
/// How long to wait for each of the proxy's replies during a snapshot; as for ADD.
const REPLY_TIMEOUT: Duration = crate::netconf::DEFAULT_ACK_TIMEOUT;
/// Safety net besides file notifications: re-check the conf dir this often anyway (a watch can
/// miss events, e.g. when the dir itself is replaced).
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Events arrive in bursts (write, then rename); settle this long before reading the dir.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub proxy_socket: PathBuf,
    pub state_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    /// The binary to install (this one, normally).
    pub binary: PathBuf,
    /// Enrol pods already running when their namespace joins the mesh ([`crate::agent`]).
    pub enrol: Option<EnrolOptions>,
}

/// The enrolment agent's settings.
#[derive(Clone, Debug)]
pub struct EnrolOptions {
    /// This node's name: only its pods are watched.
    pub node_name: String,
    /// A kubeconfig for the agent's own API access (where it is inside the installer's
    /// container); `None`: in-cluster config or the usual defaults.
    pub kubeconfig: Option<PathBuf>,
    pub finder: crate::netns_finder::NetnsFinder,
}

impl InstallOptions {
    fn entry(&self) -> Value {
        let mut entry = json!({
            "type": PLUGIN_TYPE,
            "proxySocket": self.proxy_socket,
            "stateDir": self.state_dir,
        });
        if let Some(kubeconfig) = &self.kubeconfig {
            entry["kubeconfig"] = json!(kubeconfig);
        }
        entry
    }
}

/// The primary network config: lexically first `.conflist` or `.conf`, as runtimes pick it.
pub fn primary_config(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf"))
        .collect();
    candidates.sort();
    Ok(candidates.into_iter().next())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.weft-tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Makes sure the primary config chains `entry` last. Returns whether a file was written.
pub fn ensure_chained(conf_dir: &Path, entry: &Value) -> anyhow::Result<bool> {
    let Some(path) = primary_config(conf_dir)? else {
        // No primary CNI yet: nothing to chain onto; the watch brings us back when it appears.
        return Ok(false);
    };
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut conf: Map<String, Value> =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a JSON object", path.display()))?;
    let is_conf = path.extension().is_some_and(|e| e == "conf");
    if is_conf {
        // A single-plugin .conf becomes a conflist with that plugin first.
        let mut plugin = conf.clone();
        plugin.remove("cniVersion");
        plugin.remove("name");
        let mut list = Map::new();
        list.insert("cniVersion".into(), conf.get("cniVersion").cloned().unwrap_or(json!("1.0.0")));
        list.insert("name".into(), conf.get("name").cloned().unwrap_or(json!("k8s-pod-network")));
        list.insert("plugins".into(), json!([plugin]));
        conf = list;
    }
    let plugins = conf
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{} has no plugins list", path.display()))?;
    if !is_conf && plugins.last() == Some(entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(false);
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    let bytes = serde_json::to_vec_pretty(&conf)?;
    if is_conf {
        let target = path.with_extension("conflist");
        write_atomic(&target, &bytes)?;
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    } else {
        write_atomic(&path, &bytes)?;
    }
    tracing::info!(config = %path.display(), "weft-cni chained");
    Ok(true)
}

/// Removes our entry from every config in the dir.
pub fn unchain(conf_dir: &Path) -> anyhow::Result<()> {
    let Some(path) = primary_config(conf_dir)? else { return Ok(()) };
    let text = std::fs::read(&path)?;
    let Ok(mut conf) = serde_json::from_slice::<Map<String, Value>>(&text) else { return Ok(()) };
    if let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut)
        && plugins.iter().any(is_ours)
    {
        plugins.retain(|p| !is_ours(p));
        write_atomic(&path, &serde_json::to_vec_pretty(&conf)?)?;
        tracing::info!(config = %path.display(), "weft-cni removed from the chain");
    }
    Ok(())
}

pub fn copy_binary(options: &InstallOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.cni_bin_dir)?;
    let target = options.cni_bin_dir.join(PLUGIN_TYPE);
    let tmp = options.cni_bin_dir.join(format!(".{PLUGIN_TYPE}.weft-tmp"));
    std::fs::copy(&options.binary, &tmp)
        .with_context(|| format!("cannot copy {} to {}", options.binary.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

pub fn uninstall(options: &InstallOptions) -> anyhow::Result<()> {
    unchain(&options.cni_conf_dir)?;
    match std::fs::remove_file(options.cni_bin_dir.join(PLUGIN_TYPE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Which installer is in charge of the node's CNI config (module docs, 5).
#[derive(Clone, Debug)]
pub struct Ownership {
    path: PathBuf,
    token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Me,
    Another,
    Nobody,
}

impl Ownership {
    /// This process's claim, kept in `state_dir`.
    pub fn new(state_dir: &Path) -> Ownership {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ownership { path: state_dir.join(".installer"), token: format!("{}-{nanos}", std::process::id()) }
    }

    /// Takes charge (the newest installer always does).
    pub fn claim(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_atomic(&self.path, self.token.as_bytes())
    }

    pub fn owner(&self) -> Owner {
        match std::fs::read_to_string(&self.path) {
            Ok(token) if token == self.token => Owner::Me,
            Ok(_) => Owner::Another,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Owner::Nobody,
            // Unreadable: do not fight over it.
            Err(_) => Owner::Another,
        }
    }

    /// Gives up the charge, if it is still ours.
    pub fn release(&self) {
        if self.owner() == Owner::Me {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Keeps the conf dir chained until `stop`, while this installer is in charge.
fn watch_conf_dir(options: &InstallOptions, ownership: &Ownership, stop: &AtomicBool) -> anyhow::Result<()> {
    use notify::Watcher as _;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(&options.cni_conf_dir, notify::RecursiveMode::NonRecursive)?;
    let entry = options.entry();
    let mut last_check = std::time::Instant::now();
    let mut superseded = false;
    while !stop.load(Ordering::Relaxed) {
        // Short waits, to notice `stop` promptly.
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(_) => {
                std::thread::sleep(SETTLE);
                while rx.try_recv().is_ok() {}
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if last_check.elapsed() < RECHECK_INTERVAL => {
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        last_check = std::time::Instant::now();
        match ownership.owner() {
            Owner::Me => {}
            Owner::Another => {
                if !superseded {
                    tracing::info!("a newer weft-cni installer manages the CNI config now");
                    superseded = true;
                }
                continue;
            }
            Owner::Nobody => {
                // The newer installer stopped and uninstalled while this one runs on.
                tracing::info!("no other weft-cni installer in charge: installing again");
                if let Err(error) = ownership.claim().and_then(|()| copy_binary(options)) {
                    tracing::warn!(error = format!("{error:#}"), "cannot install weft-cni");
                    continue;
                }
            }
        }
        superseded = false;
        if let Err(error) = ensure_chained(&options.cni_conf_dir, &entry) {
            tracing::warn!(error = format!("{error:#}"), "cannot chain weft-cni");
        }
    }
    Ok(())
}

/// Sends every recorded pod, then SnapshotSent, on `conn`.
/// Returns how many pods the proxy took and how many it refused.
fn send_snapshot(conn: &Connection, state_dir: &Path) -> anyhow::Result<(usize, usize)> {
    let (mut sent, mut refused) = (0, 0);
    for record in state::list(state_dir)? {
        let netns = match std::fs::File::open(&record.netns) {
            Ok(netns) => netns,
            Err(error) => {
                // The pod is gone and its DEL never reached us: forget it.
                tracing::info!(pod = record.pod.uid, %error, "netns gone; record dropped");
                let _ = state::remove(state_dir, &record.pod.uid);
                continue;
            }
        };
        let uid = record.pod.uid.clone();
        match conn.request(&Request::AddPod { pod: record.pod }, Some(&netns.into()), REPLY_TIMEOUT) {
            Ok(()) => sent += 1,
            Err(crate::handoff::HandoffError::Refused(message)) => {
                tracing::warn!(pod = uid, %message, "proxy refused a recorded pod; will retry");
                refused += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
    conn.request(&Request::SnapshotSent, None, REPLY_TIMEOUT)?;
    Ok((sent, refused))
}

/// The repair loop: one long-lived connection to the proxy, re-established and re-snapshotted
/// whenever the proxy restarts.
pub fn repair_loop(socket: &Path, state_dir: &Path, stop: &AtomicBool) {
    let mut logged_down = false;
    while !stop.load(Ordering::Relaxed) {
        // Read before connecting: if a new proxy replaces the socket in between, the next
        // check sees a change and hands it the pods again (harmless), never the reverse.
        let connected_to = socket_file(socket);
        let conn = match Connection::connect(socket, REPLY_TIMEOUT) {
            Ok(conn) => conn,
            Err(error) => {
                if !logged_down {
                    tracing::info!(%error, "proxy not reachable; retrying");
                    logged_down = true;
                }
                std::thread::sleep(RECONNECT_INTERVAL);
                continue;
            }
        };
        logged_down = false;
        // Refused pods are offered again after a while: the proxy could not open its listeners
        // there, e.g. because an older proxy without SO_REUSEPORT still holds the ports (the
        // first upgrade to an overlapping version), which it gives up at its SIGTERM.
        let retry_at = match send_snapshot(&conn, state_dir) {
            Ok((pods, 0)) => {
                tracing::info!(pods, "snapshot sent to the proxy");
                None
            }
            Ok((pods, refused)) => {
                tracing::info!(
                    pods,
                    refused,
                    "snapshot sent to the proxy; offering the refused pods again soon"
                );
                Some(std::time::Instant::now() + RETRY_REFUSED)
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "snapshot failed; reconnecting");
                std::thread::sleep(RECONNECT_INTERVAL);
                continue;
            }
        };
        let (mut replaced, mut retry) = (false, false);
        conn.wait_closed(RECONNECT_INTERVAL, || {
            let now = socket_file(socket);
            replaced = now.is_some() && now != connected_to;
            retry = retry_at.is_some_and(|at| std::time::Instant::now() >= at);
            replaced || retry || stop.load(Ordering::Relaxed)
        });
        if replaced {
            tracing::info!("a new proxy listens on the in-pod socket: handing it every pod");
        } else if !retry {
            tracing::info!("proxy connection closed");
        }
    }
}

/// (device, inode) of the socket file at `path`: which proxy's socket it is.
fn socket_file(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Runs the agent until SIGTERM or SIGINT, then uninstalls.
pub async fn run(options: InstallOptions) -> anyhow::Result<()> {
    let ownership = Ownership::new(&options.state_dir);
    ownership.claim()?;
    copy_binary(&options)?;
    ensure_chained(&options.cni_conf_dir, &options.entry())?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (options, ownership, stop) = (options.clone(), ownership.clone(), stop.clone());
        std::thread::spawn(move || watch_conf_dir(&options, &ownership, &stop))
    };
    let repair = {
        let (options, stop) = (options.clone(), stop.clone());
        std::thread::spawn(move || repair_loop(&options.proxy_socket, &options.state_dir, &stop))
    };
    let enrol = match &options.enrol {
        Some(enrol) => {
            let client = crate::agent::client(enrol.kubeconfig.as_deref())
                .await
                .context("the enrolment agent has no usable kubeconfig")?;
            let agent = crate::agent::AgentOptions {
                node_name: enrol.node_name.clone(),
                proxy_socket: options.proxy_socket.clone(),
                state_dir: options.state_dir.clone(),
                finder: enrol.finder.clone(),
                reply_timeout: REPLY_TIMEOUT,
            };
            Some(tokio::spawn(crate::agent::run(client, agent)))
        }
        None => {
            tracing::info!(
                "no --node-name: pods running before their namespace joins the mesh are not enrolled"
            );
            None
        }
    };
    tracing::info!(bin = %options.cni_bin_dir.display(), conf = %options.cni_conf_dir.display(), "weft-cni installed");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(enrol) = enrol {
        enrol.abort();
    }
    let _ = tokio::task::spawn_blocking(move || {
        let watched = watcher.join();
        let _ = repair.join();
        watched
    })
    .await;
    if ownership.owner() != Owner::Me {
        tracing::info!("stopping: a newer weft-cni installer is in charge, leaving weft-cni installed");
        return Ok(());
    }
    tracing::info!("stopping: removing weft-cni");
    let result = uninstall(&options);
    ownership.release();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_once_converts_conf_and_unchains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = json!({"type": PLUGIN_TYPE, "stateDir": "/s"});
        std::fs::write(
            dir.path().join("20-other.conflist"),
            r#"{"cniVersion":"1.0.0","name":"z","plugins":[]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("10-bridge.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#,
        )
        .expect("write");
        assert!(ensure_chained(dir.path(), &entry).expect("chain"));
        assert!(!dir.path().join("10-bridge.conf").exists());
        let path = dir.path().join("10-bridge.conflist");
        let conf: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(conf["name"], "b");
        assert_eq!(conf["plugins"], json!([{"type": "bridge"}, entry]));
        assert!(!ensure_chained(dir.path(), &entry).expect("chain"), "already chained: no write");
        unchain(dir.path()).expect("unchain");
        let conf: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(conf["plugins"], json!([{"type": "bridge"}]));
        let other: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("20-other.conflist")).expect("read"))
                .expect("json");
        assert_eq!(other["plugins"], json!([]), "only the primary config is touched");
    }
}
