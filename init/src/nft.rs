//! Running a rules transaction with `nft -j -f -`, in the current network namespace or in
//! another one.
//!
//! `nft` is the reference implementation of the nftables netlink protocol and reads the JSON
//! schema directly; driving it (as the `nftables` crate also does) keeps every rule in the one
//! format `nft -j list ruleset` prints back, which is what the tests compare against.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

use crate::route::{self, RouteError};
use crate::rules::{self, Settings};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {nft}: {source}")]
    Spawn { nft: String, source: std::io::Error },
    #[error("nft refused the rules ({status}): {stderr}")]
    Refused { status: std::process::ExitStatus, stderr: String },
    #[error("cannot open network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Setns { path: String, source: nix::Error },
    #[error("nft printed something that is not JSON: {0}")]
    Output(serde_json::Error),
    #[error("the thread running nft in {0} panicked")]
    Thread(String),
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// What [`apply`] set up beyond the nftables rules: the return route of kept source addresses
/// ([`crate::route`]), or why not. A pod without it is meshed all the same (the proxy then
/// delivers inbound connections from the pod's own address), so this is for the caller to log,
/// not a failure.
#[derive(Debug)]
#[must_use = "a missing return route should be logged"]
pub struct Applied {
    pub return_route: Result<(), RouteError>,
}

/// Where `nft` is: `$WEFT_NFT`, else the usual sbin paths (a CNI plugin runs with whatever
/// PATH the runtime gives it, often without sbin), else `nft` on PATH.
pub fn nft_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_NFT") {
        return path.into();
    }
    for candidate in ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nft".into()
}

/// Runs `nft -j -f -` (or `nft -j <args>` when `transaction` is `None`) in the current netns.
fn run(args: &[&str], transaction: Option<&Value>) -> Result<Vec<u8>, NftError> {
    let nft = nft_binary();
    let spawn_err = |source| NftError::Spawn { nft: nft.display().to_string(), source };
    let mut child = Command::new(&nft)
        .arg("-j")
        .args(args)
        .stdin(if transaction.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(tx), Some(mut stdin)) = (transaction, child.stdin.take()) {
        stdin.write_all(tx.to_string().as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns` (a path such
/// as `/var/run/netns/x` or `/proc/<pid>/ns/net`). setns changes only the calling thread, and
/// that thread ends with `f`, so no other thread of this process ever changes namespace.
pub fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NftError> + Send,
) -> Result<T, NftError> {
    let path = netns.display().to_string();
    let file = std::fs::File::open(netns).map_err(|source| NftError::Netns { path: path.clone(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NftError::Setns { path: path.clone(), source })?;
                f()
            })
            .join()
            .map_err(|_| NftError::Thread(path.clone()))?
    })
}

/// Installs (or replaces) the rules in the current network namespace, then the return route
/// of kept source addresses (the rules first: they make the proxy's kept-source deliveries
/// untracked, which the route assumes).
pub fn apply(settings: &Settings) -> Result<Applied, NftError> {
    run(&["-f", "-"], Some(&settings.ruleset()))?;
    Ok(Applied { return_route: route::install(settings.transparent_mark) })
}

/// Removes the return route, then the rules, from the current network namespace; nothing to
/// remove is not an error. The route goes first: from then on the proxy sees it missing and
/// delivers from the pod's own address.
pub fn remove() -> Result<(), NftError> {
    route::remove(mesh_api::TRANSPARENT_FWMARK);
    run(&["-f", "-"], Some(&rules::removal())).map(drop)
}

pub fn apply_in(netns: &Path, settings: &Settings) -> Result<Applied, NftError> {
    in_netns(netns, || apply(settings))
}

pub fn remove_in(netns: &Path) -> Result<(), NftError> {
    in_netns(netns, remove)
}

/// `nft -j list ruleset` of the current netns, without the `metainfo` header (which names the
/// nft version) and without handles (which count every change ever made), so two listings
/// compare equal exactly when the rules are the same.
pub fn list_ruleset() -> Result<Value, NftError> {
    let out = run(&["list", "ruleset"], None)?;
    let mut value: Value = serde_json::from_slice(&out).map_err(NftError::Output)?;
    if let Some(items) = value.get_mut("nftables").and_then(Value::as_array_mut) {
        items.retain(|item| item.get("metainfo").is_none());
        for item in items.iter_mut() {
            if let Some(object) =
                item.as_object_mut().and_then(|o| o.values_mut().next()).and_then(Value::as_object_mut)
            {
                object.remove("handle");
            }
        }
    }
    Ok(value)
}

pub fn list_ruleset_in(netns: &Path) -> Result<Value, NftError> {
    in_netns(netns, list_ruleset)
}

/// The return route in the netns at `netns`, as `ip` lists it ([`route::listing`]): empty
/// when there is none.
pub fn return_route_in(netns: &Path) -> Result<String, NftError> {
    in_netns(netns, || Ok(route::listing(mesh_api::TRANSPARENT_FWMARK)?))
}

/// Whether table `inet weft` exists in the netns at `netns`.
pub fn table_exists_in(netns: &Path) -> Result<bool, NftError> {
    let ruleset = list_ruleset_in(netns)?;
    Ok(ruleset.get("nftables").and_then(Value::as_array).is_some_and(|items| {
        items
            .iter()
            .any(|item| item.get("table").is_some_and(|t| t["family"] == "inet" && t["name"] == rules::TABLE))
    }))
}
