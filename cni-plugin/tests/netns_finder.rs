//! The node agent's netns finder against real processes in network namespaces this test
//! creates: by the pod UID in a process's cgroup (as kubelet names pod cgroups), by the pod's
//! address, never the host's netns.
//!
//! Needs root, nft and the CNI plugins like the other netns tiers (and a writable cgroup
//! hierarchy); skipped otherwise unless WEFT_REQUIRE_NETNS=1.

mod support;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use cni_plugin::netns_finder::{NetnsFinder, NetnsId};
use support::PodProcess;
use testbed::netns::Netns;

fn id_of(path: &Path) -> NetnsId {
    let meta = std::fs::metadata(path).expect("stat netns");
    (meta.dev(), meta.ino())
}

fn finder(pinned: bool) -> NetnsFinder {
    NetnsFinder {
        proc_dir: "/proc".into(),
        pinned_dirs: if pinned { vec!["/var/run/netns".into()] } else { Vec::new() },
    }
}

fn fake_uid() -> String {
    let n = testbed::netns::unique("");
    // UID-shaped and unique to this run.
    format!("5eed{:0>4}-0000-4000-8000-{:0>12}", std::process::id() % 10_000, n.replace('x', ""))
}

#[test]
fn finds_a_pods_netns_by_the_uid_in_its_processes_cgroup() {
    if !support::netns_available(&[]) {
        return;
    }
    let netns = Netns::new("fnd");
    let uid = fake_uid();
    let pause = PodProcess::spawn(Some(&netns.name), Some(&uid));
    let want = id_of(&netns.path());

    let found = finder(false).find(&uid, &[]).expect("scan").expect("found by cgroup");
    assert_eq!(found.by, "cgroup");
    assert_eq!(found.id, want, "the sleep's netns, by inode");
    assert_eq!(found.path, PathBuf::from(format!("/proc/{}/ns/net", pause.pid())));

    // With the runtime's pinned files in view, the stable path is returned for the same netns.
    let found = finder(true).find(&uid, &[]).expect("scan").expect("found");
    assert_eq!((found.id, found.path), (want, netns.path()));

    // The systemd driver's spelling (underscores) is recognised by the parser (unit tests);
    // another pod's UID matches nothing.
    assert_eq!(finder(false).find(&fake_uid(), &[]).expect("scan"), None);
}

#[test]
fn finds_by_address_when_no_cgroup_names_the_pod() {
    if !support::netns_available(&[]) {
        return;
    }
    let netns = Netns::new("fna");
    let ip: IpAddr = "10.219.9.7".parse().expect("ip");
    netns.ip(&["addr", "add", "10.219.9.7/32", "dev", "lo"]);
    let _pause = PodProcess::spawn(Some(&netns.name), None);
    let want = id_of(&netns.path());

    let found = finder(false).find(&fake_uid(), &[ip]).expect("scan").expect("found by address");
    assert_eq!((found.by, found.id), ("address", want));
    // A pinned netns is found by address even without any process in it.
    drop(_pause);
    let found = finder(true).find(&fake_uid(), &[ip]).expect("scan").expect("found pinned");
    assert_eq!((found.id, found.path), (want, netns.path()));
    assert_eq!(finder(true).find(&fake_uid(), &["10.219.9.8".parse().expect("ip")]).expect("scan"), None);
}

#[test]
fn a_host_network_pods_processes_never_yield_the_hosts_netns() {
    if !support::netns_available(&[]) {
        return;
    }
    let uid = fake_uid();
    let _host_pod = PodProcess::spawn(None, Some(&uid));
    // Its address is the host's: not found by address either.
    let host_ips =
        cni_plugin::netns_finder::addresses_in(Path::new("/proc/self/ns/net")).expect("host addresses");
    let mut ips: Vec<IpAddr> = host_ips.into_iter().filter(|ip| !ip.is_loopback()).collect();
    ips.push("127.0.0.1".parse().expect("ip"));
    assert_eq!(finder(true).find(&uid, &ips).expect("scan"), None, "searched for {ips:?}");
}
