//! The unix socket weft-cni talks to: receives pods (with their netns fds), adopts and drops
//! them, and answers every request with an Ack or an Error. Nothing a client sends can stop
//! the server: a malformed message gets an error reply and the connection stays usable.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_api::inpod::{PodInfo, Reply, Request};
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, listen, socket};
use tokio::io::unix::AsyncFd;
use tokio::task::{JoinHandle, JoinSet};

use super::metrics::InpodMetrics;
use super::netns::PodNetns;
use super::pod::{AdoptedPod, Ports};
use super::traffic::PodTraffic;

/// How long a pod's open connections may run on after it is deleted or the proxy stops.
/// Kubernetes' default termination grace period is 30 s; finishing a little before it lets the
/// proxy exit cleanly rather than be killed.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(25);
/// Pending client connections on the socket: one per concurrent CNI call, and kubelet runs
/// few at once per node.
const SOCKET_BACKLOG: i32 = 64;

#[derive(Clone, Debug)]
pub struct InpodConfig {
    pub socket: PathBuf,
    pub ports: Ports,
    pub mark: u32,
    pub drain_deadline: Duration,
}

impl Default for InpodConfig {
    fn default() -> Self {
        InpodConfig {
            socket: mesh_api::inpod::DEFAULT_SOCKET.into(),
            ports: Ports::default(),
            mark: mesh_api::PROXY_FWMARK,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
        }
    }
}

struct Entry {
    pod: AdoptedPod,
    /// When it was adopted, on the [`State::clock`] scale.
    adopted_at: u64,
}

pub(super) struct State {
    config: InpodConfig,
    traffic: Arc<dyn PodTraffic>,
    pub(super) metrics: Arc<InpodMetrics>,
    pods: Mutex<HashMap<String, Entry>>,
    /// Orders adoptions and client connections, so a snapshot only drops pods adopted before
    /// its connection began (never one a concurrent CNI ADD just handed over).
    clock: AtomicU64,
}

impl State {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves a consistent map (every change is one insert
        // or remove), so a poisoned lock is still usable.
        self.pods.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running in-pod server.
pub struct InpodServer {
    state: Arc<State>,
    accept: JoinHandle<()>,
    path: PathBuf,
    /// (device, inode) of the socket file this server bound at `path`: when `path` names
    /// another file, a successor proxy has started ([`super::handover`]).
    socket_file: Option<(u64, u64)>,
}

/// Creates the listening socket at `path`, replacing the one a previous proxy left there. That
/// proxy may still be running (an upgrade): it keeps its socket, now unnamed, and the
/// connections it accepted on it, while every new client reaches this one.
fn listen_at(path: &Path) -> io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Only root (the CNI plugin) may hand pods to the proxy.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listen(&fd, Backlog::new(SOCKET_BACKLOG)?)?;
    Ok(fd)
}

impl InpodServer {
    pub async fn start(config: InpodConfig, traffic: Arc<dyn PodTraffic>) -> io::Result<InpodServer> {
        let listener = super::wire::register(listen_at(&config.socket)?)?;
        let path = config.socket.clone();
        let socket_file = super::handover::file_id(&path)?;
        tracing::info!(socket = %path.display(), "in-pod server listening");
        let state = Arc::new(State {
            config,
            traffic,
            metrics: Arc::default(),
            pods: Mutex::default(),
            clock: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(InpodServer { state, accept, path, socket_file })
    }

    pub fn metrics(&self) -> &Arc<InpodMetrics> {
        &self.state.metrics
    }

    /// The Prometheus text of the in-pod counters.
    pub fn render_metrics(&self) -> String {
        self.state.metrics.render(self.state.pods().len())
    }

    /// [`render_metrics`](Self::render_metrics) as a function the admin server can keep.
    pub fn metrics_source(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.metrics.render(state.pods().len())
    }

    /// UIDs of the adopted pods, sorted.
    pub fn pods(&self) -> Vec<String> {
        let mut uids: Vec<String> = self.state.pods().keys().cloned().collect();
        uids.sort();
        uids
    }

    /// Whether another proxy has bound the in-pod socket path since this one did: it gets
    /// every new pod and, from weft-cni's repair loop, every live one.
    pub fn superseded(&self) -> bool {
        match super::handover::file_id(&self.path) {
            Ok(now) => now.is_some() && now != self.socket_file,
            Err(_) => false,
        }
    }

    /// Stops taking requests, closes every pod's listeners, and lets open connections finish
    /// for up to `deadline`. When a successor proxy has started ([`superseded`]), each pod's
    /// listeners stay open until the successor listens beside them (or the deadline), so the
    /// pods' new connections always find a proxy; the deadline covers both phases.
    ///
    /// [`superseded`]: Self::superseded
    pub async fn shutdown(self, deadline: Duration) {
        let until = Instant::now() + deadline;
        let handover = self.superseded();
        self.accept.abort();
        let entries: Vec<Entry> = self.state.pods().drain().map(|(_, entry)| entry).collect();
        if handover {
            tracing::info!(pods = entries.len(), "a new proxy has started: handing the pods over");
        }
        futures::future::join_all(entries.into_iter().map(|e| async move {
            if handover {
                let uid = e.pod.context.uid().to_string();
                if super::handover::wait_until_taken(&uid, until, || e.pod.taken_over()).await {
                    tracing::info!(pod = uid, "pod taken over by the new proxy");
                }
            }
            e.pod.drain(until.saturating_duration_since(Instant::now())).await
        }))
        .await;
        // The path is the successor's now; only a socket file of our own is ours to remove.
        if !handover && super::handover::file_id(&self.path).ok().flatten() == self.socket_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for InpodServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.pods().clear();
    }
}

async fn accept_loop(listener: AsyncFd<OwnedFd>, state: Arc<State>) {
    // Client connections live in this set, so aborting this task ends them too.
    let mut clients = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            guard = listener.readable() => match guard {
                Ok(mut guard) => match guard.try_io(|fd| accept4(fd.get_ref().as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)) {
                    Ok(result) => result,
                    Err(_would_block) => continue,
                },
                Err(error) => Err(error),
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => continue,
        };
        match accepted.and_then(|raw| {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            super::wire::register(fd)
        }) {
            Ok(conn) => {
                clients.spawn(serve_client(conn, state.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "in-pod socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection until it closes.
pub(super) async fn serve_client(conn: AsyncFd<OwnedFd>, state: Arc<State>) {
    let started = state.tick();
    // Pods named on this connection: what a snapshot keeps.
    let mut named: HashSet<String> = HashSet::new();
    loop {
        let packet = match super::wire::recv(&conn).await {
            Ok(Some(packet)) => packet,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "in-pod client connection failed");
                return;
            }
        };
        let reply = match handle(&state, packet, started, &mut named).await {
            Ok(()) => Reply::Ack,
            Err(message) => {
                tracing::warn!(%message, "in-pod request refused");
                Reply::Error { message }
            }
        };
        if let Err(error) = super::wire::send_packet(&conn, &reply.encode()).await {
            tracing::debug!(%error, "in-pod reply not sent");
            return;
        }
    }
}

async fn handle(
    state: &Arc<State>,
    packet: super::wire::Packet,
    started: u64,
    named: &mut HashSet<String>,
) -> Result<(), String> {
    let malformed = |message: String| {
        InpodMetrics::inc(&state.metrics.malformed_messages);
        message
    };
    if packet.truncated {
        return Err(malformed(format!(
            "message longer than {} bytes or with too many descriptors",
            mesh_api::inpod::MAX_MESSAGE
        )));
    }
    let request = Request::decode(&packet.bytes).map_err(|e| malformed(format!("malformed message: {e}")))?;
    let mut fds = packet.fds;
    match request {
        Request::AddPod { pod } => {
            if pod.uid.is_empty() {
                return Err(malformed("add_pod without a uid".into()));
            }
            if fds.len() != 1 {
                return Err(malformed(format!(
                    "add_pod must carry exactly one network namespace descriptor, got {}",
                    fds.len()
                )));
            }
            let fd = fds.remove(0);
            named.insert(pod.uid.clone());
            add_pod(state, pod, fd).await
        }
        Request::DelPod { uid } => {
            if !fds.is_empty() {
                return Err(malformed("del_pod carries no descriptor".into()));
            }
            named.remove(&uid);
            let entry = state.pods().remove(&uid);
            if let Some(entry) = entry {
                InpodMetrics::inc(&state.metrics.pods_removed);
                tracing::info!(pod = uid, "pod released");
                released(state, &entry);
                tokio::spawn(entry.pod.drain(state.config.drain_deadline));
            }
            // Releasing a pod we do not hold is not an error: DEL must be idempotent.
            Ok(())
        }
        Request::SnapshotSent => {
            if !fds.is_empty() {
                return Err(malformed("snapshot_sent carries no descriptor".into()));
            }
            let stale: Vec<Entry> = {
                let mut pods = state.pods();
                let uids: Vec<String> = pods
                    .iter()
                    .filter(|(uid, entry)| entry.adopted_at < started && !named.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                uids.iter().filter_map(|uid| pods.remove(uid)).collect()
            };
            for entry in stale {
                InpodMetrics::inc(&state.metrics.pods_removed);
                tracing::info!(pod = entry.pod.context.uid(), "pod not in the snapshot; released");
                released(state, &entry);
                tokio::spawn(entry.pod.drain(state.config.drain_deadline));
            }
            tracing::info!(pods = named.len(), "snapshot received");
            Ok(())
        }
    }
}

/// Tells the traffic handler that `entry`'s pod is gone (already out of the map).
fn released(state: &Arc<State>, entry: &Entry) {
    let remaining: Vec<PodInfo> = state.pods().values().map(|e| e.pod.context.info.clone()).collect();
    state.traffic.pod_removed(&entry.pod.context.info, &remaining);
}

async fn add_pod(state: &Arc<State>, info: PodInfo, fd: OwnedFd) -> Result<(), String> {
    let uid = info.uid.clone();
    let fail = |message: String| {
        InpodMetrics::inc(&state.metrics.adopt_failures);
        tracing::warn!(pod = uid, %message, "pod not adopted");
        message
    };
    let netns = PodNetns::new(fd).map_err(|e| fail(format!("not a usable network namespace: {e}")))?;
    let replaced = {
        let mut pods = state.pods();
        match pods.get(&info.uid) {
            // Sent again (a snapshot after the plugin reconnected): keep the listeners.
            Some(entry) if entry.pod.same_netns(netns.id()) => return Ok(()),
            // Same pod, new sandbox: the old namespace is gone or going.
            Some(_) => pods.remove(&info.uid),
            None => None,
        }
    };
    if let Some(old) = replaced {
        // The new listeners may need the ports the old ones hold only if it is the same netns,
        // which it is not; still, drain before opening so the pod has one set of listeners.
        tokio::spawn(old.pod.drain(Duration::ZERO));
    }
    let (config, traffic, metrics) = (state.config.clone(), state.traffic.clone(), state.metrics.clone());
    let runtime = tokio::runtime::Handle::current();
    let adopted = tokio::task::spawn_blocking(move || {
        AdoptedPod::adopt(info, netns, config.ports, config.mark, traffic, metrics, &runtime)
    })
    .await
    .map_err(|e| fail(format!("adoption task failed: {e}")))?
    .map_err(|e| fail(format!("cannot open the proxy's listeners in the pod: {e}")))?;
    let adopted_at = state.tick();
    tracing::info!(
        pod = uid,
        namespace = adopted.context.info.namespace,
        name = adopted.context.info.name,
        "pod adopted"
    );
    InpodMetrics::inc(&state.metrics.pods_adopted);
    if let Some(previous) = state.pods().insert(uid, Entry { pod: adopted, adopted_at }) {
        // Two concurrent adds of one pod: the later wins, the earlier drains.
        tokio::spawn(previous.pod.drain(Duration::ZERO));
    }
    Ok(())
}
