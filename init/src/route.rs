//! The return path of kept source addresses, in the pod's network namespace.
//!
//! The proxy delivers an inbound connection to the app *from the client's address* (an
//! `IP_TRANSPARENT` socket bound to it, inside the pod's netns, mark
//! [`mesh_api::TRANSPARENT_FWMARK`]), so the app sees who called, as it would without the mesh.
//! The app's replies go to that client address, which the pod's main table sends out of eth0,
//! to the real client, who knows nothing of the connection. Three settings bring them back to
//! the proxy's socket instead:
//!
//! - `net.ipv4.tcp_fwmark_accept = 1` (both families): the app's socket of such a connection
//!   takes the mark of the connection's SYN, so every packet the app sends on it is marked;
//! - `net.ipv4.fwmark_reflect` and `net.ipv6.fwmark_reflect = 1`: what the kernel answers by
//!   itself (the reset from a port nobody listens on) carries the mark of what it answers, so a
//!   delivery to a closed port is refused at once instead of waiting for a SYN-ACK that left
//!   on eth0;
//! - a policy rule `fwmark 0x5747 lookup 22343` (priority 22343: after `local`, before `main`)
//!   and in table 22343 the route `local default dev lo`: marked packets are delivered locally,
//!   where the proxy's socket bound to the client's address takes them.
//!
//! ztunnel's in-pod mode needs the same return path (istio-cni: `ip rule add fwmark 0x111/0xfff
//! pref 32764 lookup 100`, `local 0.0.0.0/0 dev lo table 100`, and a connmark restored on the
//! app's replies).
//! Weft marks the app's *socket* instead of the connection, so the deliveries need no conntrack
//! entry at all, which keeps them apart from real connections with the same addresses
//! ([`crate::rules`]).
//!
//! The IPv6 route carries `src ::1`: an unbound socket with the mark then gets a loopback source
//! from it, which is how the proxy checks, before each kept-source delivery, that the route is
//! there (an IPv4 `local` route already gives the destination itself as source). Without the
//! route the proxy delivers from the pod's own address, as before.
//!
//! Installed with iproute2's `ip`, as the rules are with `nft`; IPv6 only where the netns has
//! it. Removing takes out the rule and the table's route; the sysctls stay, since without the
//! rule they change nothing (only kept-source deliveries carry the mark).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The routing table of the return route ("WG", beside the proxy's mark "WF").
pub const TABLE: u32 = 0x5747;
/// The policy rule's priority: after the `local` table's rule (0), before `main` (32766).
pub const PRIORITY: u32 = 0x5747;
/// At most this many duplicates of the rule are removed (a re-apply removes the one it added
/// before; more would be somebody adding it by hand).
const MAX_DUPLICATES: usize = 16;

const TCP_FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";
const IPV6_DISABLED: &str = "/proc/sys/net/ipv6/conf/lo/disable_ipv6";

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot run {ip}: {source}")]
    Spawn { ip: String, source: std::io::Error },
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Refused { args: String, status: std::process::ExitStatus, stderr: String },
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
}

/// One address family's part of the route.
struct Family {
    flag: &'static str,
    name: &'static str,
    everything: &'static str,
    /// The route's source: see the module docs.
    src: Option<&'static str>,
    reflect: &'static str,
}

static FAMILIES: [Family; 2] = [
    Family {
        flag: "-4",
        name: "IPv4",
        everything: "0.0.0.0/0",
        src: None,
        reflect: "/proc/sys/net/ipv4/fwmark_reflect",
    },
    Family {
        flag: "-6",
        name: "IPv6",
        everything: "::/0",
        src: Some("::1"),
        reflect: "/proc/sys/net/ipv6/fwmark_reflect",
    },
];

/// Where `ip` is: `$WEFT_IP`, else the usual sbin paths (a CNI plugin runs with whatever PATH
/// the runtime gives it, often without sbin), else `ip` on PATH.
pub fn ip_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_IP") {
        return path.into();
    }
    for candidate in ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "ip".into()
}

/// `ip <args>` in the current netns; its stdout.
fn ip(args: &[&str]) -> Result<String, RouteError> {
    let binary = ip_binary();
    let out = Command::new(&binary)
        .args(args)
        .output()
        .map_err(|source| RouteError::Spawn { ip: binary.display().to_string(), source })?;
    if !out.status.success() {
        return Err(RouteError::Refused {
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(path: &str, value: &str) -> Result<(), RouteError> {
    Ok(crate::sysctl::set(path, value)?)
}

/// Whether the current netns has IPv6 (on loopback, where the route goes).
fn has_ipv6() -> bool {
    std::fs::read_to_string(IPV6_DISABLED).is_ok_and(|v| v.trim() == "0")
}

fn families() -> impl Iterator<Item = &'static Family> {
    let v6 = has_ipv6();
    FAMILIES.iter().filter(move |f| f.flag == "-4" || v6)
}

fn rule_args<'a>(family: &'a Family, verb: &'a str, mark: &'a str, table: &'a str) -> [&'a str; 7] {
    [family.flag, "rule", verb, "fwmark", mark, "lookup", table]
}

/// Removes the family's rules with the mark (a re-apply's previous one, since `ip rule add`
/// refuses an exact duplicate).
fn delete_rules(family: &Family, mark: &str, table: &str) {
    for _ in 0..MAX_DUPLICATES {
        if ip(&rule_args(family, "del", mark, table)).is_err() {
            break;
        }
    }
}

fn install_family(family: &Family, mark: &str, table: &str, priority: &str) -> Result<(), RouteError> {
    sysctl(family.reflect, "1")?;
    let mut route =
        vec![family.flag, "route", "replace", "local", family.everything, "dev", "lo", "table", table];
    if let Some(src) = family.src {
        route.extend(["src", src]);
    }
    ip(&route)?;
    delete_rules(family, mark, table);
    let mut rule = rule_args(family, "add", mark, table).to_vec();
    rule.extend(["pref", priority]);
    ip(&rule).map(drop)
}

/// Installs (or re-installs) the return route in the current netns. The sysctls come first and
/// a route only after them: a route without them would make the proxy keep addresses whose
/// replies still leave on eth0 (the proxy's check sees the route, not the sysctls), so where
/// they cannot be set (a read-only `/proc/sys` that cannot be remounted, as in an unprivileged
/// container: [`crate::sysctl`]) nothing is
/// installed. Each family is done independently: an error in one (IPv6 on a netns whose
/// loopback is down, say) leaves the other in place, and the proxy keeps source addresses in
/// the families that have the route. The error names the family.
pub fn install(mark: u32) -> Result<(), RouteError> {
    let (mark, table, priority) = (format!("{mark:#x}"), TABLE.to_string(), PRIORITY.to_string());
    sysctl(TCP_FWMARK_ACCEPT, "1")?;
    let mut first_error = None;
    for family in families() {
        if let Err(error) = install_family(family, &mark, &table, &priority) {
            let error = match error {
                RouteError::Refused { args, status, stderr } => {
                    RouteError::Refused { args, status, stderr: format!("{}: {stderr}", family.name) }
                }
                other => other,
            };
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Removes the return route from the current netns: the rule, then the table's route. Best
/// effort and idempotent: nothing to remove (or no `ip`, so nothing was installed) is fine.
pub fn remove(mark: u32) {
    let (mark, table) = (format!("{mark:#x}"), TABLE.to_string());
    for family in families() {
        delete_rules(family, &mark, &table);
        // An empty table is "nothing to flush", an error to `ip`: nothing to do either way.
        let _ = ip(&[family.flag, "route", "flush", "table", &table]);
    }
}

/// The return route as `ip` lists it in the current netns, per family: the rules with the mark,
/// then the table's routes. Empty when none is installed.
pub fn listing(mark: u32) -> Result<String, RouteError> {
    let (mark, table) = (format!("{mark:#x}"), TABLE.to_string());
    let mut out = String::new();
    for family in families() {
        out.push_str(&ip(&[family.flag, "rule", "show", "fwmark", &mark])?);
        // A table that does not exist is an error to `ip`: it has no routes.
        out.push_str(&ip(&[family.flag, "route", "show", "table", &table]).unwrap_or_default());
    }
    Ok(out)
}
