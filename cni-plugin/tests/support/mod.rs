//! The testbed (network namespaces as nodes and pods, the real CNI chain) with this package's
//! `weft-cni`, and the rule for when these tiers may be skipped.
// Each test file is its own crate and uses a part of this module: the rest is not dead.
#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mesh_proxy::inpod::{Passthrough, PodContext, PodTraffic};
use tokio::net::TcpStream as TokioStream;

pub use testbed::WAIT;
pub use testbed::cni::{Node, link, meshed, unmeshed};
pub use testbed::netns::in_netns;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

/// A node whose pods are chained through this build's weft-cni.
pub fn node(name: &str, subnet: &str) -> Node {
    Node::new(name, subnet, Path::new(WEFT_CNI))
}

/// Skips (with the reason printed) when root, the CNI plugins, nft or `tools` are missing,
/// unless `WEFT_REQUIRE_NETNS=1` (CI, `cargo xtask e2e`) makes that a failure.
pub fn netns_available(tools: &[&str]) -> bool {
    match testbed::netns::available(tools) {
        Ok(()) => true,
        Err(reason) if std::env::var_os("WEFT_REQUIRE_NETNS").is_some_and(|v| v == "1") => {
            panic!("WEFT_REQUIRE_NETNS=1 but {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason} (set WEFT_REQUIRE_NETNS=1 to make this a failure)");
            false
        }
    }
}

/// Polls `f` until it is true, or panics after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A process standing for a pod's sandbox (its pause container): `sleep` inside the pod's
/// netns and, when the machine has a writable cgroup hierarchy, in a cgroup whose path names
/// the pod's UID the way kubelet's cgroupfs driver does (`…/kubepods/besteffort/pod<uid>`).
/// Killed (and the cgroup removed) on drop.
pub struct PodProcess {
    pub child: std::process::Child,
    pub cgroup: Option<std::path::PathBuf>,
}

/// cgroup2 (the unified hierarchy, or its hybrid mount) or the v1 `pids` hierarchy.
fn cgroup_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/pids"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|root| root.join("cgroup.procs").exists())
}

impl PodProcess {
    /// `netns`: the name of a netns under /var/run/netns (`None`: this process's netns, as for
    /// a hostNetwork pod). `uid`: put it in the pod's cgroup (`None`: leave it in ours).
    pub fn spawn(netns: Option<&str>, uid: Option<&str>) -> PodProcess {
        let mut command = match netns {
            Some(netns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", netns, "sleep", "600"]);
                c
            }
            None => {
                let mut c = std::process::Command::new("sleep");
                c.arg("600");
                c
            }
        };
        let child = command.spawn().expect("spawn sleep");
        let cgroup = uid.map(|uid| {
            let root = cgroup_root().expect("a writable cgroup hierarchy");
            let dir = root
                .join(testbed::netns::unique("weft-test-"))
                .join("kubepods/besteffort")
                .join(format!("pod{uid}"));
            std::fs::create_dir_all(&dir).expect("create the pod's cgroup");
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move into the cgroup");
            dir
        });
        // `ip netns exec` execs sleep in place: same pid, once it has entered the netns.
        if let Some(netns) = netns {
            let want = std::fs::metadata(format!("/var/run/netns/{netns}")).map(|m| {
                use std::os::unix::fs::MetadataExt as _;
                m.ino()
            });
            let start = Instant::now();
            loop {
                let now = std::fs::metadata(format!("/proc/{}/ns/net", child.id())).map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    m.ino()
                });
                if now.is_ok() && now.ok() == want.as_ref().ok().copied() {
                    break;
                }
                assert!(start.elapsed() < WAIT, "sleep never entered {netns}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        PodProcess { child, cgroup }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.cgroup {
            // pod<uid>, besteffort, kubepods, weft-test-…: innermost first.
            let mut dir = Some(dir.as_path());
            for _ in 0..4 {
                let Some(d) = dir else { break };
                let _ = std::fs::remove_dir(d);
                dir = d.parent();
            }
        }
    }
}

/// The test API server's kubeconfig (tests/cluster/control-plane.sh), or `None` with the reason
/// printed when there is none, unless `WEFT_REQUIRE_APISERVER` makes that a failure.
pub fn kubeconfig() -> Option<std::path::PathBuf> {
    match std::env::var_os("WEFT_TEST_KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(path) => Some(path.into()),
        None => {
            assert!(
                std::env::var("WEFT_REQUIRE_APISERVER").is_err(),
                "WEFT_REQUIRE_APISERVER is set but WEFT_TEST_KUBECONFIG is not"
            );
            eprintln!("skipped: set WEFT_TEST_KUBECONFIG (tests/cluster/control-plane.sh up)");
            None
        }
    }
}

/// A client for the API server that kubeconfig names.
pub async fn client(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("readable kubeconfig");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

/// weft-controller's config stream and CA on loopback, over TLS (its trust bundle in the
/// returned folder); node tokens `token-a` and `token-b`.
pub async fn controller() -> (
    mesh_proxy::config::connection::ControllerEndpoint,
    mesh_controller::config_server::Publisher,
    tempfile::TempDir,
) {
    use mesh_controller::app::GrpcSecurity;
    use mesh_controller::ca::CertificateService;
    use mesh_controller::config_server::Publisher;
    use mesh_proxy::config::connection::ControllerEndpoint;

    let publisher = Publisher::new();
    let proxy = "spiffe://cluster.local/ns/weft-system/sa/weft-proxy".parse().expect("identity");
    let tokens = [("token-a", "node-a"), ("token-b", "node-b")];
    let service =
        CertificateService::ephemeral("cluster.local", &tokens, &proxy, publisher.clone()).expect("CA");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("controller-ca.crt");
    std::fs::write(&bundle, service.authority().roots_pem()).expect("bundle");
    let security = GrpcSecurity::tls(&service, vec!["127.0.0.1".into()]).expect("serving certificate");
    tokio::spawn(mesh_controller::app::serve(
        publisher.clone(),
        Some(service),
        listener,
        security,
        std::future::pending(),
    ));
    (ControllerEndpoint::new(&url, Some(bundle), false).expect("endpoint"), publisher, dir)
}

/// A TCP server in a pod's netns, each accepted connection handled on a thread of its own;
/// stopped on drop.
pub struct PodServer {
    stop: Arc<AtomicBool>,
}

impl PodServer {
    pub fn start(
        netns: &Path,
        port: u16,
        handle: impl Fn(TcpStream, SocketAddr) + Send + Clone + 'static,
    ) -> PodServer {
        let listener =
            in_netns(netns, move || TcpListener::bind(("0.0.0.0", port)).expect("bind a pod server"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(WAIT));
                        let handle = handle.clone();
                        std::thread::spawn(move || handle(conn, peer));
                    }
                    // At most 50 ms, so the stop flag is seen; a sleep instead would add its
                    // length to every connection's latency.
                    Err(_) => {
                        let mut fds =
                            [nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN)];
                        let _ = nix::poll::poll(&mut fds, 50u16);
                    }
                }
            }
        });
        PodServer { stop }
    }

    /// Answers each connection's first line with `<line> from <peer ip>`, then closes it.
    pub fn first_line_from_peer(netns: &Path, port: u16) -> PodServer {
        Self::start(netns, port, |mut conn, peer| {
            let mut buf = [0u8; 256];
            let n = conn.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            let _ = write!(conn, "{line} from {}", peer.ip());
        })
    }

    /// Echoes every line back, for as long as each connection lasts.
    pub fn line_echo(netns: &Path, port: u16) -> PodServer {
        Self::start(netns, port, |conn, _| {
            let mut reader = std::io::BufReader::new(&conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if (&conn).write_all(line.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
        })
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One line through an open connection and back.
pub fn round_trip(conn: &mut TcpStream, line: &str) -> std::io::Result<String> {
    conn.write_all(format!("{line}\n").as_bytes())?;
    let mut buf = vec![0u8; line.len() + 1];
    conn.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

/// A PodTraffic that records what it is given (pod UID, direction, original destination),
/// then passes it through.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<(String, &'static str, SocketAddr)>>,
}

impl Recorder {
    pub fn seen(&self) -> Vec<(String, &'static str, SocketAddr)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, pod: &PodContext, direction: &'static str, dst: SocketAddr) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((pod.uid().to_string(), direction, dst));
        }
    }
}

impl PodTraffic for Recorder {
    fn outbound(&self, pod: Arc<PodContext>, conn: TokioStream, dst: SocketAddr) -> BoxFuture<'static, ()> {
        self.record(&pod, "outbound", dst);
        Passthrough.outbound(pod, conn, dst)
    }
    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        conn: TokioStream,
        dst: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        self.record(&pod, "inbound", dst);
        Passthrough.inbound_plaintext(pod, conn, dst)
    }
    fn inbound_hbone(&self, pod: Arc<PodContext>, conn: TokioStream) -> BoxFuture<'static, ()> {
        Passthrough.inbound_hbone(pod, conn)
    }
}

/// `weft-cni install` (with `extra` arguments, e.g. the enrolment agent's) as a child process,
/// stopped with SIGTERM on drop.
pub struct Installer {
    child: Child,
}

impl Installer {
    pub fn start(node: &Node, bin: &Path, conf: &Path, extra: &[&OsStr]) -> Installer {
        std::fs::create_dir_all(conf).expect("conf dir");
        let child = Command::new(WEFT_CNI)
            .arg("install")
            .arg("--cni-bin-dir")
            .arg(bin)
            .arg("--cni-conf-dir")
            .arg(conf)
            .arg("--proxy-socket")
            .arg(node.socket())
            .arg("--state-dir")
            .arg(node.state_dir())
            .args(extra)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start installer");
        Installer { child }
    }

    /// SIGTERM, then waits (at most [`WAIT`], then kills): whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
