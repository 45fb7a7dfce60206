//! The testbed (network namespaces as nodes and pods, the real CNI chain) with this package's
//! `weft-cni`, and the rule for when these tiers may be skipped.
// Each test file is its own crate and uses a part of this module: the rest is not dead.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::{Duration, Instant};

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
