//! The rules in a real network namespace: they load, applying twice leaves one rule set (and
//! one return route per family), and removing them restores the namespace exactly. Needs root and `nft`; skipped with a printed
//! reason otherwise, unless `WEFT_REQUIRE_NETNS=1` (CI), which turns a skip into a failure.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use mesh_init::annotations::parse_list;
use mesh_init::nft::{list_ruleset_in, return_route_in, table_exists_in};
use mesh_init::{Exclusions, Settings};
use serde_json::Value;

fn netns_available() -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if !mesh_init::nft::nft_binary().exists() {
        Some("nft is not installed")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var_os("WEFT_REQUIRE_NETNS").is_some_and(|v| v == "1") => {
            panic!("WEFT_REQUIRE_NETNS=1 but {reason}")
        }
        Some(reason) => {
            eprintln!("skipped: {reason} (set WEFT_REQUIRE_NETNS=1 to make this a failure)");
            false
        }
    }
}

/// A named network namespace, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("weft-init-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let status = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip");
        assert!(status.success(), "ip netns add {name}");
        // As in every pod (the runtime's loopback plugin): the IPv6 return route needs ::1.
        let status =
            Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().expect("run ip");
        assert!(status.success(), "lo up in {name}");
        Netns { name }
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn settings() -> Settings {
    Settings {
        exclusions: Exclusions {
            inbound_ports: parse_list("in", "8080,9000-9100", "").expect("ports"),
            outbound_ports: parse_list("out", "5432", "").expect("ports"),
            outbound_cidrs: parse_list("cidrs", "10.96.0.0/12,fd00::/8", "").expect("cidrs"),
        },
        probe_sources: vec!["10.244.0.1".parse().expect("ip")],
        ..Settings::default()
    }
}

fn weft_rules(ruleset: &Value) -> Vec<Value> {
    ruleset["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter(|item| item.get("rule").is_some_and(|r| r["table"] == "weft"))
        .cloned()
        .collect()
}

#[test]
fn apply_is_idempotent_and_remove_restores_the_netns() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("idem");
    // Something another agent owns, which the rules must leave alone.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "nft",
            "add table ip other; add chain ip other c { type filter hook input priority 0; }",
        ])
        .status()
        .expect("nft");
    assert!(status.success());
    let before = list_ruleset_in(&ns.path()).expect("list");
    assert!(!table_exists_in(&ns.path()).expect("list"));

    let no_route = return_route_in(&ns.path()).expect("list routes");
    assert_eq!(no_route.trim(), "", "a fresh netns has no return route");
    let applied = mesh_init::apply_in(&ns.path(), &settings()).expect("apply");
    applied.return_route.expect("the return route is installed");
    let once = list_ruleset_in(&ns.path()).expect("list");
    assert!(table_exists_in(&ns.path()).expect("list"));
    let rules = weft_rules(&once);
    // notrack_prerouting, notrack_output: the kept-source mark;
    // output: mark, lo, non-tcp, not an opening SYN, ports, v4 cidrs, v6 cidrs, redirect;
    // prerouting: lo, non-tcp, not an opening SYN, own ports, excluded ports, probe sources,
    // redirect.
    assert_eq!(rules.len(), 17, "{rules:#?}");
    let route = return_route_in(&ns.path()).expect("list routes");
    assert_eq!(route.matches("fwmark 0x5747 lookup 22343").count(), 2, "one rule per family: {route}");
    assert_eq!(route.matches("local default dev lo").count(), 2, "one route per family: {route}");
    for sysctl in ["net.ipv4.tcp_fwmark_accept", "net.ipv4.fwmark_reflect", "net.ipv6.fwmark_reflect"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-n", sysctl])
            .output()
            .expect("sysctl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{sysctl}");
    }
    let text = once.to_string();
    for needle in [r#""redirect":{"port":15001}"#, r#""redirect":{"port":15006}"#, "22342", "10.244.0.1"] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }

    let applied = mesh_init::apply_in(&ns.path(), &settings()).expect("apply again");
    applied.return_route.expect("the return route is installed again");
    let twice = list_ruleset_in(&ns.path()).expect("list");
    assert_eq!(once, twice, "applying twice must leave one rule set");
    assert_eq!(return_route_in(&ns.path()).expect("list routes"), route, "and one return route");

    mesh_init::remove_in(&ns.path()).expect("remove");
    assert_eq!(list_ruleset_in(&ns.path()).expect("list"), before, "removal must restore the netns");
    assert_eq!(return_route_in(&ns.path()).expect("list routes"), no_route, "removal takes the route out");
    mesh_init::remove_in(&ns.path()).expect("removing again is not an error");
}

#[test]
fn weft_init_binary_applies_and_removes_in_the_current_netns() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new("bin");
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_weft-init")])
            .args(args)
            .output()
            .expect("run weft-init")
    };
    let out = run(&["--exclude-outbound-ports", "5432,http"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("weft.dev/exclude-outbound-ports") && stderr.contains("http"), "{stderr}");
    assert!(!table_exists_in(&ns.path()).expect("list"), "a refused annotation installs nothing");

    let out = run(&["--exclude-outbound-ports", "5432", "--probe-source", "10.0.0.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "no warning: {}", String::from_utf8_lossy(&out.stderr));
    assert!(table_exists_in(&ns.path()).expect("list"));
    assert!(return_route_in(&ns.path()).expect("routes").contains("lookup 22343"));
    let out = run(&["--remove"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!table_exists_in(&ns.path()).expect("list"));
    assert_eq!(return_route_in(&ns.path()).expect("routes").trim(), "");
}

/// As in the enrolment agent's container (runc's `readonlyPaths`): `/proc/sys` is a read-only
/// bind mount. With CAP_SYS_ADMIN the sysctls of the return route are still set, in the pod's
/// netns, and the route is installed.
#[test]
fn the_return_route_is_installed_from_behind_a_read_only_proc_sys() {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};

    if !netns_available() {
        return;
    }
    let host_sysctl =
        || std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").expect("host sysctl");
    let host_before = host_sysctl();
    let ns = Netns::new("ro");
    let path = ns.path();
    // A thread of its own with a private mount namespace: the rest of the test process keeps
    // its writable /proc/sys. Threads it starts (apply_in's) inherit its namespaces.
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("make mounts private");
        mount(Some("/proc/sys"), "/proc/sys", None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .expect("bind /proc/sys");
        let read_only = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(None::<&str>, "/proc/sys", None::<&str>, read_only, None::<&str>).expect("remount read-only");
        let refused = std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "0").expect_err("read-only");
        assert_eq!(refused.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
        let applied = mesh_init::apply_in(&path, &settings()).expect("apply");
        applied.return_route.expect("the return route is installed");
    })
    .join()
    .expect("the read-only thread");

    for sysctl in ["net.ipv4.tcp_fwmark_accept", "net.ipv4.fwmark_reflect", "net.ipv6.fwmark_reflect"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-n", sysctl])
            .output()
            .expect("sysctl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{sysctl} in the pod");
    }
    let route = return_route_in(&ns.path()).expect("list routes");
    assert_eq!(route.matches("fwmark 0x5747 lookup 22343").count(), 2, "one rule per family: {route}");
    assert_eq!(host_sysctl(), host_before, "the pod's value was set, not the test process's");
}
