//! Network namespaces the caller creates (never the host's), and code run inside them.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test or run on this machine uses right now.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{tag}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command and insists it succeeds.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A named network namespace with loopback up, deleted on drop (also when a test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(&format!("weft-{tag}-"));
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <this> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command that will run inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `f` on a thread inside `netns`: sockets it creates stay in that namespace.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Whether this machine can run the netns tiers: root, the CNI plugins, nft and `tools`.
/// `Err` says what is missing.
pub fn available(tools: &[&str]) -> Result<(), String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()))
    };
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new(crate::cni::CNI_BIN).join("bridge").exists() {
        return Err(format!(
            "{}/bridge is missing (apt-get install containernetworking-plugins)",
            crate::cni::CNI_BIN
        ));
    }
    if !on_path("nft") {
        return Err("nft is missing (apt-get install nftables)".into());
    }
    match tools.iter().find(|tool| !on_path(tool)) {
        Some(tool) => Err(format!("{tool} is missing")),
        None => Ok(()),
    }
}
