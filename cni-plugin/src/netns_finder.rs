//! Finding the network namespace of a pod that is already running, from outside it: what the
//! node agent needs to enrol a pod whose CNI ADD happened before its namespace joined the mesh
//! (the runtime gave that ADD the netns path, and nobody recorded it).
//!
//! Two ways, in order (istio-cni's `podNetnsProcFinder` does the first):
//!
//! 1. **By the pod's UID in `/proc/<pid>/cgroup`.** Every container of a pod, the sandbox's
//!    pause process included, runs in a cgroup whose path names the pod's UID:
//!    `…/kubepods/besteffort/pod<uid>/<container>` with the cgroupfs driver,
//!    `…/kubepods-besteffort-pod<uid_with_underscores>.slice/…` with the systemd driver. Any
//!    such process's `/proc/<pid>/ns/net` is the pod's netns. Reading `cgroup` is allowed to
//!    everyone; opening another user's `ns/net` needs `CAP_SYS_PTRACE`.
//! 2. **By the pod's IP.** Every distinct netns among the runtime's pinned netns files
//!    (`/var/run/netns/*`, where containerd and CRI-O bind-mount them) and `/proc/*/ns/net` is
//!    entered on a short-lived thread and its addresses read; the one holding one of the pod's
//!    IPs is the pod's. This needs no cgroup layout, at the cost of one `setns` per netns.
//!
//! Never returned: the netns of `<proc>/1` (the host's, when `<proc>` is the host's procfs) and
//! this thread's own (the agent runs in the host network): a process of a hostNetwork pod
//! carries the pod's UID too, and its netns must never get a pod's rules.
//!
//! The path returned is the pinned file when one names the same netns (it stays valid as long
//! as the pod does), else `/proc/<pid>/ns/net` (valid while that process lives).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A network namespace's identity: (device, inode) of its nsfs file.
pub type NetnsId = (u64, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundNetns {
    /// A path that opens the netns (pinned file, or `/proc/<pid>/ns/net`).
    pub path: PathBuf,
    pub id: NetnsId,
    /// How it was found: `"cgroup"` or `"address"`.
    pub by: &'static str,
}

#[derive(Clone, Debug)]
pub struct NetnsFinder {
    /// The host's procfs: `/proc` when the agent shares the host's PID namespace, else where
    /// the host's `/proc` is mounted (`/host/proc` in the chart).
    pub proc_dir: PathBuf,
    /// Directories of pinned netns files (the runtime's `/var/run/netns`).
    pub pinned_dirs: Vec<PathBuf>,
}

impl Default for NetnsFinder {
    fn default() -> Self {
        NetnsFinder { proc_dir: "/proc".into(), pinned_dirs: vec!["/var/run/netns".into()] }
    }
}

fn id_of(path: &Path) -> io::Result<NetnsId> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether a `/proc/<pid>/cgroup` text names pod `uid` (either driver's spelling).
pub fn cgroup_names_pod(cgroup: &str, uid: &str) -> bool {
    if uid.len() < 8 {
        // A UID this short would match by accident; real ones are 36 characters.
        return false;
    }
    let underscored = uid.replace('-', "_");
    cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        path.split('/').any(|part| {
            let part = part.strip_suffix(".slice").unwrap_or(part);
            part.ends_with(&format!("pod{uid}")) || part.ends_with(&format!("pod{underscored}"))
        })
    })
}

impl NetnsFinder {
    /// Netns that are never a pod's: the host's and the agent's own.
    fn excluded(&self) -> HashSet<NetnsId> {
        let mut excluded = HashSet::new();
        for path in [self.proc_dir.join("1/ns/net"), PathBuf::from("/proc/thread-self/ns/net")] {
            if let Ok(id) = id_of(&path) {
                excluded.insert(id);
            }
        }
        excluded
    }

    fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids: Vec<u32> = std::fs::read_dir(&self.proc_dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// The pinned files, by netns.
    fn pinned(&self) -> BTreeMap<NetnsId, PathBuf> {
        let mut pinned = BTreeMap::new();
        for dir in &self.pinned_dirs {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                // A file in the dir that is not (or no longer) a mounted netns has the dir's
                // filesystem's identity, which no process's netns has: harmless.
                if let Ok(id) = id_of(&path) {
                    pinned.entry(id).or_insert(path);
                }
            }
        }
        pinned
    }

    /// The netns of pod `uid` (addresses `ips`), or `None` when no process and no pinned netns
    /// belongs to it. Blocking: reads procfs and enters namespaces.
    pub fn find(&self, uid: &str, ips: &[IpAddr]) -> io::Result<Option<FoundNetns>> {
        let excluded = self.excluded();
        let pinned = self.pinned();
        let stable = |id: NetnsId, fallback: PathBuf| pinned.get(&id).cloned().unwrap_or(fallback);
        let pids = self.pids()?;
        // 1. By cgroup.
        for &pid in &pids {
            let dir = self.proc_dir.join(pid.to_string());
            let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else { continue };
            if !cgroup_names_pod(&cgroup, uid) {
                continue;
            }
            let ns = dir.join("ns/net");
            match id_of(&ns) {
                Ok(id) if excluded.contains(&id) => {
                    // A hostNetwork pod, or the process is just being set up: not a pod netns.
                    continue;
                }
                Ok(id) => return Ok(Some(FoundNetns { path: stable(id, ns), id, by: "cgroup" })),
                Err(error) => {
                    tracing::debug!(pid, %error, "process of the pod, but its netns cannot be read");
                }
            }
        }
        // Loopback and unspecified addresses are in every netns: they identify nothing.
        let ips: Vec<IpAddr> =
            ips.iter().copied().filter(|ip| !ip.is_loopback() && !ip.is_unspecified()).collect();
        if ips.is_empty() {
            return Ok(None);
        }
        // 2. By address: each netns once, pinned files first.
        let mut candidates: BTreeMap<NetnsId, PathBuf> = pinned.clone();
        for &pid in &pids {
            let ns = self.proc_dir.join(pid.to_string()).join("ns/net");
            if let Ok(id) = id_of(&ns) {
                candidates.entry(id).or_insert(ns);
            }
        }
        for (id, path) in candidates {
            if excluded.contains(&id) {
                continue;
            }
            match addresses_in(&path) {
                Ok(addresses) if addresses.iter().any(|a| ips.contains(a)) => {
                    return Ok(Some(FoundNetns { path, id, by: "address" }));
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(netns = %path.display(), %error, "netns not inspected"),
            }
        }
        Ok(None)
    }
}

/// Runs `f` on a fresh thread inside the netns at `netns`; the thread ends with `f`, so no
/// other thread of the process changes namespace.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = std::fs::File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// The interface addresses of the netns at `netns`.
pub fn addresses_in(netns: &Path) -> io::Result<Vec<IpAddr>> {
    in_netns(netns, || {
        let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        Ok(addrs
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect())
    })
}

/// The next hops of the default routes of the netns at `netns`: the node's address as the pod
/// sees it, where kubelet probes come from (what ADD reads from the primary plugin's gateways).
pub fn default_gateways_in(netns: &Path) -> io::Result<Vec<IpAddr>> {
    in_netns(netns, || {
        // thread-self: /proc/self/net shows the netns of the process's main thread.
        let v4 = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
        let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
        Ok(parse_default_gateways(&v4, &v6))
    })
}

/// Parses `/proc/net/route` (hex, little-endian IPv4) and `/proc/net/ipv6_route`.
pub fn parse_default_gateways(route: &str, ipv6_route: &str) -> Vec<IpAddr> {
    let mut gateways = Vec::new();
    for line in route.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(gateway), Some(mask)) = (fields.get(1), fields.get(2), fields.get(7)) else {
            continue;
        };
        if *dest != "00000000" || *mask != "00000000" {
            continue;
        }
        if let Ok(raw) = u32::from_str_radix(gateway, 16)
            && raw != 0
        {
            gateways.push(IpAddr::V4(std::net::Ipv4Addr::from(raw.to_le_bytes())));
        }
    }
    for line in ipv6_route.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(plen), Some(next_hop)) = (fields.first(), fields.get(1), fields.get(4)) else {
            continue;
        };
        if dest.chars().any(|c| c != '0') || *plen != "00" {
            continue;
        }
        if let Ok(raw) = u128::from_str_radix(next_hop, 16)
            && raw != 0
        {
            gateways.push(IpAddr::V6(std::net::Ipv6Addr::from(raw)));
        }
    }
    gateways.sort();
    gateways.dedup();
    gateways
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2f4e-8a3b-4c5d-9e0f-1a2b3c4d5e6f";

    #[test]
    fn cgroup_paths_of_both_drivers_name_the_pod() {
        let cgroupfs = "12:pids:/kubepods/besteffort/pod6f1c2f4e-8a3b-4c5d-9e0f-1a2b3c4d5e6f/abc\n0::/\n";
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c2f4e_8a3b_4c5d_9e0f_1a2b3c4d5e6f.slice/cri-containerd-abc.scope\n";
        assert!(cgroup_names_pod(cgroupfs, UID));
        assert!(cgroup_names_pod(systemd, UID));
        assert!(!cgroup_names_pod("0::/user.slice/session-1.scope\n", UID));
        // Another pod whose UID merely contains ours as a suffix is still told apart by "pod".
        assert!(!cgroup_names_pod("0::/kubepods/pod0000/x\n", "0000"), "too short to trust");
        assert!(!cgroup_names_pod(&cgroupfs.replace("6f1c", "7f1c"), UID));
    }

    #[test]
    fn default_gateways_from_proc_net() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            parse_default_gateways(route, v6),
            vec!["10.77.0.1".parse::<IpAddr>().expect("ip"), "fe80::1".parse().expect("ip")]
        );
        assert!(parse_default_gateways("header\n", "").is_empty());
    }
}
