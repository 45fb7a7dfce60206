//! `cargo xtask bench mesh`: what the mesh costs, measured against no mesh in the same run.
//!
//! The demo's two-node lab with release builds: an unmeshed client calling an unmeshed server
//! on the other node (direct, the baseline), and the meshed frontend calling a meshed server
//! through an HBONE tunnel (L4, by pod address) and through its Service's GAMMA route (L7).
//! Measured, every configuration interleaved in each repeat so machine noise hits all alike:
//!
//! - HTTP/1.1 latency, open loop ([`testbed::load::constant_rate`]), at each of [`RATES`]
//!   (the plot `mesh.png` draws p50 and p99 against load), with both node proxies' CPU;
//! - gRPC latency at [`GRPC_RATE`] calls/s, open loop ([`testbed::grpc`], tonic's client over
//!   HTTP/2 connections): direct to the legacy pod's echo, by pod address over HBONE, and
//!   through Service `checkout-grpc`'s GAMMA GRPCRoute + HBONE ([`shop::grpc_manifests`]).
//!
//! Medians and spread go to `bench/results/mtls.{json,md}`. Tunnel throughput is `bench tcp`'s,
//! in the same lab ([`with_shop`]).
//!
//! ## ztunnel, the L4 peer (`ZTUNNEL_BIN`)
//!
//! Where `ZTUNNEL_BIN` names a ztunnel binary (Istio's ambient node proxy, built by hand from
//! its public source; never committed), the bench adds it as the L4 peer of "mesh L4: HBONE by
//! pod address": two more unmeshed pods, `zt/zclient` on node A and `zt/zserver` on node B,
//! each with a ztunnel of its own in *dedicated* mode (`PROXY_MODE=dedicated`: the
//! single-tenant mode that serves the network namespace it runs in, so no istio-cni and no
//! ZDS/inpod socket protocol are needed), and the same HTTP and gRPC load from zclient to
//! zserver's pod address. What ztunnel needs and how the lab gives it:
//!
//! - **No istiod.** `XDS_ADDRESS=""` turns the xDS client off and `LOCAL_XDS_PATH` reads the
//!   workloads from a file ([`ztunnel_config`]: both pods, `protocol: HBONE`, their nodes and
//!   service accounts; no policies, so all is allowed).
//! - **No CA.** `FAKE_CA=true` signs workload certificates with the test root compiled into
//!   ztunnel, so the two instances trust each other (mTLS with SPIFFE identities, as with
//!   istiod's CA). It exists only in builds with the `testing` feature.
//! - **Redirection** in each pod: what istio-cni installs, as nftables rules
//!   ([`ZTUNNEL_NFT`]): outbound TCP to :15001, inbound TCP to :15006 except HBONE on :15008,
//!   ztunnel's own sockets (`PACKET_MARK=1337`) and loopback let through.
//! - `ENABLE_ORIG_SRC=false`: the server-side ztunnel connects to the app from the pod's own
//!   address instead of spoofing the client's (that needs policy routing the bench does not
//!   set up); the app sees the pod address, which is how the bench checks the tunnel was used.
//!
//! Build (about 20 minutes on 2 cores; `protoc` needed; the optional `boring-rustls-provider`
//! git dependency may be dropped from its Cargo.toml where github is out of reach, as it only
//! serves `tls-boring`):
//!
//! ```sh
//! git clone https://github.com/istio/ztunnel && cd ztunnel
//! cargo build --release --no-default-features --features tls-ring,testing
//! # its .cargo/config.toml puts the target dir at out/rust
//! ZTUNNEL_BIN=$PWD/out/rust/release/ztunnel cargo xtask bench mesh
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::cni::{Pod, meshed, unmeshed};
use testbed::grpc::{self, GrpcEcho};
use testbed::http::HttpEcho;
use testbed::load::constant_rate;
use testbed::shop;

use crate::bench::{Binaries, Plan};
use crate::demo_mesh::Lab;
use crate::measure::{
    CpuTimes, IdleSettings, Proc, RunInfo, as_f64, cpu_times, median, spawn, spread, uptime, verdict,
};

/// The HTTP/1.1 load points, requests/s. 1k is the point the targets and the resources table
/// read.
const RATES: [u32; 4] = [500, 1000, 2000, 4000];
const TARGET_RATE: u32 = 1000;
/// A pool of keep-alive clients: 16 connections up to 2k rps (125 requests a second each),
/// more above, so one connection's request in flight does not cap the rate.
fn connections(rate: u32) -> u32 {
    (rate / 125).max(16)
}
/// The gRPC point: unary calls over HTTP/2 connections, many in flight on each.
const GRPC_RATE: u32 = 1000;
const GRPC_CONNECTIONS: usize = 4;
const GRPC_IN_FLIGHT: usize = 256;
/// Issue 9's targets for the mesh hop.
const ADDED_P99_TARGET_US: f64 = 200.0;
const CPU_PER_1K_TARGET: f64 = 0.05;

/// What the report says when `ZTUNNEL_BIN` is not set.
pub(crate) const ZTUNNEL_NOT_RUN: &str = "ztunnel (the L4 peer issue 9 names) was not run: set `ZTUNNEL_BIN` to a ztunnel \
built with `cargo build --release --no-default-features --features tls-ring,testing` from \
github.com/istio/ztunnel to add it (dedicated mode, local config, fake CA; see `xtask/src/bench_mesh.rs`).";

/// The redirection istio-cni would install in a pod for ztunnel, as nftables rules.
const ZTUNNEL_NFT: &str = "table ip ztunnel {
  chain output {
    type nat hook output priority -100; policy accept;
    oifname \"lo\" accept
    meta mark & 0xfff == 0x539 accept
    ip protocol tcp redirect to :15001
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    tcp dport 15008 accept
    meta mark & 0xfff == 0x539 accept
    ip protocol tcp redirect to :15006
  }
}
";

/// ztunnel's local config (what istiod would send over xDS): the two pods as HBONE workloads.
fn ztunnel_config(client: &Pod<'_>, server: &Pod<'_>) -> String {
    let workload = |name: &str, pod: &Pod<'_>| {
        format!(
            "- uid: cluster1//v1/Pod/zt/{name}\n  name: {name}\n  namespace: zt\n  serviceAccount: {name}\n\
             \x20 workloadIps: [\"{}\"]\n  protocol: HBONE\n  node: {}\n  network: \"\"\n  services: {{}}\n",
            pod.ip, pod.node.name
        )
    };
    format!("workloads:\n{}{}", workload("zclient", client), workload("zserver", server))
}

/// Which ztunnel ran, for the reports: its path and the first line of `ztunnel version` (its
/// build info: crypto provider, profile).
pub(crate) fn ztunnel_description(bin: &std::ffi::OsStr) -> String {
    let version = std::process::Command::new(bin)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    format!("{} ({version})", PathBuf::from(bin).display())
}

/// Tries `attempt` every 200 ms for up to 30 s until a request crossed `what`: `Err(why)` is
/// not yet (tried again), `Ok(Err(error))` a failure that waiting will not mend. Fails at once
/// when one of `procs` exited, and at the deadline with the last answer and their logs.
fn wait_through(
    procs: &[Proc],
    what: &str,
    mut attempt: impl FnMut() -> Result<anyhow::Result<()>, String>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match attempt() {
            Ok(done) => return done,
            Err(why) => last = why,
        }
        for proc in procs {
            if std::fs::metadata(format!("/proc/{}", proc.pid())).is_err() {
                bail!("{} exited:\n{}", proc.name, proc.log_tail());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: Vec<String> = procs.iter().map(|p| format!("{}:\n{}", p.name, p.log_tail())).collect();
    bail!("no request crossed {what} in 30 s ({last})\n{}", logs.join("\n"))
}

/// The ztunnel peer: its two pods, their apps and a ztunnel in each.
/// Fields drop in order: the ztunnels and apps stop before their pods are deleted.
pub(crate) struct Ztunnel<'a> {
    /// Both ztunnels (client's, server's).
    procs: Vec<Proc>,
    _apps: (HttpEcho, GrpcEcho),
    pub(crate) client: Pod<'a>,
    pub(crate) server: Pod<'a>,
    _dir: tempfile::TempDir,
}

impl<'a> Ztunnel<'a> {
    pub(crate) fn start(lab: &'a Lab, bin: &std::path::Path) -> anyhow::Result<Ztunnel<'a>> {
        let client = lab.a.add_pod("zt", "zclient", unmeshed());
        let server = lab.b.add_pod("zt", "zserver", unmeshed());
        let any = SocketAddr::from(([0, 0, 0, 0], shop::GRPC_PORT));
        let apps = (
            HttpEcho::start(&server.path(), 8080, "zserver"),
            GrpcEcho::start(Some(&server.path()), any, "zserver", None)?,
        );
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("ztunnel.yaml");
        std::fs::write(&config, ztunnel_config(&client, &server))?;
        std::fs::write(dir.path().join("redirect.nft"), ZTUNNEL_NFT)?;
        let mut procs = Vec::new();
        for (pod, name, log) in
            [(&client, "zclient", "ztunnel-zclient"), (&server, "zserver", "ztunnel-zserver")]
        {
            let status =
                pod.spec.netns.command("nft").arg("-f").arg(dir.path().join("redirect.nft")).status()?;
            if !status.success() {
                bail!("nft -f redirect.nft in {name} failed");
            }
            let mut command = pod.spec.netns.command(bin);
            command
                .env("FAKE_CA", "true")
                .env("XDS_ADDRESS", "")
                .env("CA_ADDRESS", "")
                .env("LOCAL_XDS_PATH", &config)
                .env("PROXY_MODE", "dedicated")
                .env("PROXY_WORKLOAD_INFO", format!("zt/{name}/{name}"))
                .env("PACKET_MARK", "1337")
                .env("ENABLE_ORIG_SRC", "false")
                .env("RUST_LOG", "warn");
            procs.push(spawn(log, command, dir.path())?);
        }
        let z = Ztunnel { client, server, procs, _apps: apps, _dir: dir };
        z.wait_ready()?;
        Ok(z)
    }

    /// Until a request from zclient reaches zserver's app through both ztunnels: the app sees
    /// the call come from its own pod's address (the server-side ztunnel), not zclient's; and
    /// the server-side ztunnel counts it as an mTLS (HBONE) connection, not a plaintext one
    /// its :15006 would also have taken.
    fn wait_ready(&self) -> anyhow::Result<()> {
        wait_through(&self.procs, "the ztunnels", || {
            let answer = testbed::http::get_once(&self.client.path(), self.server.addr(8080), "ztunnel")
                .map_err(|error| error.to_string())?;
            let peer = testbed::http::peer_of(&answer);
            if peer != Some(self.server.ip) {
                return Err(format!("answered, peer {peer:?}"));
            }
            let metrics = self.server_metrics();
            let mtls = metrics.lines().any(|l| {
                l.starts_with("istio_tcp_connections_opened_total")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            });
            if !mtls {
                // Not a transient state: the calls went around the tunnel.
                return Ok(Err(anyhow::anyhow!(
                    "zserver's ztunnel counted no mTLS connection: the calls did not cross HBONE\n{}",
                    metrics.lines().filter(|l| l.starts_with("istio_tcp")).collect::<Vec<_>>().join("\n")
                )));
            }
            println!(
                "==> ztunnel ready: zclient → zserver crosses both ztunnels, counted as mTLS by zserver's"
            );
            Ok(Ok(()))
        })
    }

    /// The server-side ztunnel's Prometheus metrics (its stats port, :15020, in zserver).
    fn server_metrics(&self) -> String {
        testbed::netns::in_netns(&self.server.path(), || {
            use std::io::{Read as _, Write as _};
            let Ok(mut conn) = std::net::TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], 15020)),
                Duration::from_secs(1),
            ) else {
                return String::new();
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: stats\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = conn.read_to_string(&mut out);
            out
        })
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// The floors: plain user-space TCP relays where the node proxies sit, a reference for what
/// any user-space mesh hop costs on this machine. The unmeshed client dials relay A (in node
/// A's netns, on node A's address on the pod network: explicit, no redirection), which relays
/// to relay B (node B's netns, over the link between the nodes), which relays to the unmeshed
/// legacy pod. Both relays are HAProxy in `mode tcp`, one thread each; between them plain TCP
/// ([`FLOOR_PLAIN`]) or TLS 1.3 with both peers verified ([`FLOOR_TLS`]). Each app port of the
/// server gets its own pair of relay ports, so one lab can relay HTTP and iperf3 side by side.
pub struct Relays {
    /// Relay A, relay B.
    procs: Vec<Proc>,
    /// Where the client dials relay A, by the server's app port.
    entries: Vec<(u16, SocketAddr)>,
    /// Node B's address on its pod network: where relay B's connections to the pod come from.
    node_b: std::net::IpAddr,
    /// Each relay's configuration file name and text (the temp dir written `$DIR`), for the
    /// report.
    configs: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

pub const FLOOR_PLAIN: &str = "floor: 2 HAProxy mode tcp relays";
pub const FLOOR_TLS: &str = "floor: 2 HAProxy mode tcp relays, TLS 1.3 between";
/// The first port relays A and B listen on, plain floor then TLS floor; the i-th app port is
/// relayed on `first + 2 i` (relay A) and `first + 2 i + 1` (relay B), so up to five app ports
/// fit before the TLS floor's range (the node proxies use 15008, 15010, 15014 and 15021).
const RELAY_FIRST_PORTS: [u16; 2] = [15110, 15120];
/// The app port of the mesh lab's HTTP echo: the one the floors' readiness check goes through.
const HTTP_APP_PORT: u16 = 8080;

/// The gateway (the node's own address on its pod network) of a pod, from its CNI result.
fn gateway_of(pod: &Pod<'_>) -> anyhow::Result<std::net::IpAddr> {
    pod.result["ips"][0]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .with_context(|| format!("no gateway in {}'s CNI result: {}", pod.spec.name, pod.result))
}

/// A relay's HAProxy configuration: for each `(bind, server)`, listen on `bind` (with
/// `bind_tls` after it, if any) and relay to `server` (with `server_tls` after it, if any).
fn relay_conf(role: &str, pairs: &[(String, String)], bind_tls: &str, server_tls: &str) -> String {
    let mut conf = format!(
        "# The mesh floor, {role}: a pure L4 byte relay (mode tcp), one thread.\n\
         global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
    );
    for (i, (bind, server)) in pairs.iter().enumerate() {
        conf += &format!(
            "\nfrontend relay{i}\n  bind {bind}{bind_tls}\n  default_backend next{i}\n\n\
             backend next{i}\n  server next {server}{server_tls}\n"
        );
    }
    conf
}

/// A test CA and two ECDSA P-256 certificates signed by it (relay B's as a server, relay A's
/// as a client), each written with its key as HAProxy wants them, in `dir`: ca.crt,
/// relay-a.pem, relay-b.pem.
fn floor_certificates(dir: &std::path::Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(dir).output().context("openssl")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=weft-bench-floor-ca", "-days", "2"]);
    openssl(&ca)?;
    for (name, usage) in [("relay-b", "serverAuth"), ("relay-a", "clientAuth")] {
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        let mut request = vec!["req"];
        request.extend(ec);
        request.extend(["-keyout", &key, "-out", &csr, "-subj"]);
        let subject = format!("/CN={name}");
        request.push(&subject);
        openssl(&request)?;
        let extensions = format!("{name}.ext");
        std::fs::write(
            dir.join(&extensions),
            format!("subjectAltName=DNS:{name}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &extensions,
        ])?;
        let pem = std::fs::read_to_string(dir.join(&crt))? + &std::fs::read_to_string(dir.join(&key))?;
        std::fs::write(dir.join(format!("{name}.pem")), pem)?;
    }
    Ok(())
}

impl Relays {
    /// Relay A in node A, relay B in node B, to `server`'s HTTP app on :8080 and to each of
    /// `more_ports`; TLS 1.3 between them when `tls` (each verifies the other's certificate
    /// against the test CA, and relay A checks relay B's name).
    pub fn start(shop: &Shop<'_>, server: &Pod<'_>, tls: bool, more_ports: &[u16]) -> anyhow::Result<Relays> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let (bind_b, server_a) = if tls {
            floor_certificates(dir.path())?;
            (
                format!(" ssl crt {d}/relay-b.pem ca-file {d}/ca.crt verify required ssl-min-ver TLSv1.3"),
                format!(
                    " ssl crt {d}/relay-a.pem ca-file {d}/ca.crt verify required verifyhost relay-b sni str(relay-b) ssl-min-ver TLSv1.3"
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let node_a = gateway_of(&shop.client)?;
        let first = RELAY_FIRST_PORTS[usize::from(tls)];
        let app_ports: Vec<u16> = std::iter::once(HTTP_APP_PORT).chain(more_ports.iter().copied()).collect();
        let (mut pairs_a, mut pairs_b, mut entries) = (vec![], vec![], vec![]);
        for (i, app_port) in (0u16..).zip(&app_ports) {
            let (port_a, port_b) = (first + 2 * i, first + 2 * i + 1);
            // Node B's end of the link between the nodes (testbed::cni::link).
            let link_b = SocketAddr::from(([10, 98, 0, 2], port_b));
            let entry = SocketAddr::new(node_a, port_a);
            pairs_a.push((entry.to_string(), link_b.to_string()));
            pairs_b.push((format!("0.0.0.0:{port_b}"), server.addr(*app_port).to_string()));
            entries.push((*app_port, entry));
        }
        let configs = [
            ("relay-a", &shop.lab.a.netns, relay_conf("relay A (node A)", &pairs_a, "", &server_a)),
            ("relay-b", &shop.lab.b.netns, relay_conf("relay B (node B)", &pairs_b, &bind_b, "")),
        ];
        let haproxy = crate::measure::which("haproxy")?;
        let mut procs = Vec::new();
        let mut texts = Vec::new();
        for (name, netns, config) in configs {
            let file = dir.path().join(format!("{name}.cfg"));
            std::fs::write(&file, &config)?;
            let floor = if tls { "TLS floor" } else { "plain floor" };
            texts.push((format!("{floor}, $DIR/{name}.cfg"), config.replace(&d, "$DIR")));
            let mut command = netns.command(&haproxy);
            command.arg("-db").arg("-f").arg(&file);
            procs.push(spawn(
                if name == "relay-a" { "haproxy relay A" } else { "haproxy relay B" },
                command,
                dir.path(),
            )?);
        }
        let relays = Relays { procs, entries, node_b: gateway_of(server)?, configs: texts, _dir: dir };
        relays.wait_ready(shop, if tls { FLOOR_TLS } else { FLOOR_PLAIN })?;
        Ok(relays)
    }

    /// Until a request from the client reaches the server's app through both relays: the app
    /// sees it come from node B (relay B), not from the client.
    fn wait_ready(&self, shop: &Shop<'_>, name: &str) -> anyhow::Result<()> {
        let entry = self.entry(HTTP_APP_PORT)?;
        wait_through(&self.procs, name, || {
            let answer = testbed::http::get_once(&shop.client.path(), entry, "floor")
                .map_err(|error| error.to_string())?;
            let peer = testbed::http::peer_of(&answer);
            if peer != Some(self.node_b) {
                return Err(format!("answered, peer {peer:?}"));
            }
            println!("==> {name} ready: client → {entry} → relay B → legacy");
            Ok(Ok(()))
        })
    }

    /// Where the client dials to reach the server's `app_port` through both relays.
    pub fn entry(&self, app_port: u16) -> anyhow::Result<SocketAddr> {
        self.entries
            .iter()
            .find(|(port, _)| *port == app_port)
            .map(|(_, entry)| *entry)
            .with_context(|| format!("the floor relays do not relay port {app_port}"))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// The demo lab with the shop published: meshed `frontend` and unmeshed `client` on node A;
/// meshed `v1` (and `v2`) and unmeshed `legacy` on node B, each serving HTTP on :8080 and gRPC
/// ([`GrpcEcho`]) on [`shop::GRPC_PORT`].
pub struct Shop<'a> {
    pub lab: &'a Lab,
    pub frontend: Pod<'a>,
    pub client: Pod<'a>,
    pub v1: Pod<'a>,
    pub legacy: Pod<'a>,
}

/// Starts the lab on `binaries`, publishes the shop, runs `body`; everything is torn down on
/// return.
pub fn with_shop<T>(
    binaries: &Binaries,
    body: impl FnOnce(&Shop<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lab = Lab::start(binaries.dir(), "")?;
    let (a, b) = (&lab.a, &lab.b);
    let frontend = a.add_pod("shop", "frontend", meshed("frontend"));
    let client = a.add_pod("plain", "client", unmeshed());
    let v1 = b.add_pod("shop", "checkout-v1", meshed("checkout"));
    let v2 = b.add_pod("shop", "checkout-v2", meshed("checkout"));
    let legacy = b.add_pod("legacy", "legacy", unmeshed());
    let yaml = shop::manifests(&frontend, &v1, &v2, &legacy) + "---\n" + &shop::grpc_manifests(&v1, &v2);
    lab.publish(&yaml, "checkout-grpc")?;
    let _apps = [
        HttpEcho::start(&v1.path(), 8080, "v1"),
        HttpEcho::start(&v2.path(), 8080, "v2"),
        HttpEcho::start(&legacy.path(), 8080, "legacy"),
    ];
    let any = SocketAddr::from(([0, 0, 0, 0], shop::GRPC_PORT));
    let _grpc = [
        GrpcEcho::start(Some(&v1.path()), any, "v1", None)?,
        GrpcEcho::start(Some(&v2.path()), any, "v2", None)?,
        GrpcEcho::start(Some(&legacy.path()), any, "legacy", None)?,
    ];
    let shop = Shop { lab: &lab, frontend, client, v1, legacy };
    let outcome = body(&shop);
    if outcome.is_err() {
        lab.print_logs();
    }
    outcome
}

/// One path at one load: the runs' percentiles and both node proxies' CPU.
#[derive(Default)]
struct Point {
    p50: Vec<u64>,
    p99: Vec<u64>,
    errors: usize,
    /// Failed gRPC calls by status.
    by_status: BTreeMap<String, usize>,
    /// CPU share of both node proxies together during the runs (1.0 = one core busy).
    proxy_cpu: Vec<f64>,
    /// CPU µs per completed request *per proxy* (both proxies' time ÷ 2), in the proxy's own
    /// code (user) and in the kernel on its behalf (system), one a run.
    user_us_per_request: Vec<f64>,
    system_us_per_request: Vec<f64>,
}

impl Point {
    /// Records a run's proxy CPU: `cpu` used by `proxies` processes over `elapsed`, for
    /// `completed` requests.
    fn record_cpu(&mut self, cpu: CpuTimes, elapsed: Duration, completed: usize, proxies: usize) {
        self.proxy_cpu.push(cpu.total() / elapsed.as_secs_f64().max(f64::MIN_POSITIVE));
        let per_request = |seconds: f64| seconds * 1e6 / completed.max(1) as f64 / proxies.max(1) as f64;
        self.user_us_per_request.push(per_request(cpu.user));
        self.system_us_per_request.push(per_request(cpu.system));
    }
}

struct Series {
    name: &'static str,
    /// One point per rate of [`RATES`] (HTTP), or one at [`GRPC_RATE`] (gRPC).
    points: Vec<Point>,
}

struct Results {
    http: Vec<Series>,
    grpc: Vec<Series>,
    /// The ztunnel binary measured, if any.
    ztunnel: Option<String>,
    /// The floors' relay configurations (file name, text).
    floor_configs: Vec<(String, String)>,
}

const ZTUNNEL_HTTP: &str = "ztunnel L4: HBONE by pod address";
const ZTUNNEL_GRPC: &str = "gRPC ztunnel L4: HBONE by pod address";

pub fn run(binaries: &Binaries, plan: Plan) -> anyhow::Result<()> {
    if let Err(reason) = testbed::netns::available(&[]) {
        bail!("the mesh bench needs {reason}");
    }
    let load_before = uptime();
    let results = with_shop(binaries, |shop| measure(shop, plan))?;
    write_results(&results, plan, &load_before, &uptime())
}

fn measure(shop: &Shop<'_>, plan: Plan) -> anyhow::Result<Results> {
    let vip = SocketAddr::new(shop::CHECKOUT_VIP.parse()?, 80);
    let grpc_vip = SocketAddr::new(shop::CHECKOUT_GRPC_VIP.parse()?, shop::GRPC_PORT);
    // Each path: its name, the client's netns, the address called, the proxies whose CPU it costs.
    let weft = shop.lab.proxy_pids();
    let mut http: Vec<(&'static str, PathBuf, SocketAddr, Vec<u32>)> = vec![
        ("direct (no mesh)", shop.client.path(), shop.legacy.addr(8080), weft.clone()),
        ("mesh L4: HBONE by pod address", shop.frontend.path(), shop.v1.addr(8080), weft.clone()),
        ("mesh L7: GAMMA route + HBONE", shop.frontend.path(), vip, weft.clone()),
    ];
    let mut grpc_paths: Vec<(&'static str, PathBuf, SocketAddr, Vec<u32>)> = vec![
        ("gRPC direct (no mesh)", shop.client.path(), shop.legacy.addr(shop::GRPC_PORT), weft.clone()),
        (
            "gRPC mesh L4: HBONE by pod address",
            shop.frontend.path(),
            shop.v1.addr(shop::GRPC_PORT),
            weft.clone(),
        ),
        ("gRPC mesh L7: GAMMA GRPCRoute + HBONE", shop.frontend.path(), grpc_vip, weft.clone()),
    ];
    let ztunnel = match std::env::var_os("ZTUNNEL_BIN") {
        Some(bin) => {
            println!(
                "==> ztunnel from ZTUNNEL_BIN={}: dedicated mode in zt/zclient and zt/zserver",
                PathBuf::from(&bin).display()
            );
            Some(Ztunnel::start(shop.lab, std::path::Path::new(&bin)).context("ztunnel (ZTUNNEL_BIN)")?)
        }
        None => None,
    };
    if let Some(z) = &ztunnel {
        http.push((ZTUNNEL_HTTP, z.client.path(), z.server.addr(8080), z.pids()));
        grpc_paths.push((ZTUNNEL_GRPC, z.client.path(), z.server.addr(shop::GRPC_PORT), z.pids()));
    }
    // The floors (HTTP only): last in each repeat, interleaved with the mesh paths.
    let floors = [
        Relays::start(shop, &shop.legacy, false, &[]).context(FLOOR_PLAIN)?,
        Relays::start(shop, &shop.legacy, true, &[]).context(FLOOR_TLS)?,
    ];
    for (name, relays) in [FLOOR_PLAIN, FLOOR_TLS].into_iter().zip(&floors) {
        http.push((name, shop.client.path(), relays.entry(HTTP_APP_PORT)?, relays.pids()));
    }
    let new = |paths: &[(&'static str, PathBuf, SocketAddr, Vec<u32>)], n: usize| -> Vec<Series> {
        paths
            .iter()
            .map(|(name, ..)| Series { name, points: (0..n).map(|_| Point::default()).collect() })
            .collect()
    };
    let mut results = Results {
        floor_configs: floors.iter().flat_map(|f| f.configs.clone()).collect(),
        http: new(&http, RATES.len()),
        grpc: new(&grpc_paths, 1),
        ztunnel: ztunnel
            .as_ref()
            .map(|_| ztunnel_description(&std::env::var_os("ZTUNNEL_BIN").unwrap_or_default())),
    };
    // The CPU time `pids` used together while `f` ran.
    let cpu_during = |pids: &[u32], f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<CpuTimes> {
        let before: Vec<CpuTimes> = pids.iter().map(|pid| cpu_times(*pid)).collect();
        f()?;
        Ok(pids.iter().zip(&before).fold(CpuTimes::default(), |sum, (pid, b)| sum + (cpu_times(*pid) - *b)))
    };
    let (repeats, run_for) = (plan.repeats(), plan.run());
    // Warm-up, not recorded: the first calls of a path open its HBONE connections and fetch
    // certificates (a 100 ms p99 on whichever point came first).
    let warm_up = Duration::from_millis(500);
    for (name, netns, addr, _) in &http {
        constant_rate(netns, *addr, 200, warm_up, 16).with_context(|| format!("warm-up of {name}"))?;
    }
    for (name, netns, addr, _) in &grpc_paths {
        grpc::load(Some(netns), &grpc::Load::at_rate(*addr, 200, warm_up))
            .with_context(|| format!("warm-up of {name}"))?;
    }
    println!(
        "==> HTTP/1.1 latency at {RATES:?} rps (keep-alive connections: {:?}), gRPC at {GRPC_RATE} calls/s \
         ({GRPC_CONNECTIONS} HTTP/2 connections), {run_for:?} a run, {repeats} runs each, interleaved",
        RATES.map(connections)
    );
    for repeat in 0..repeats {
        for (r, rate) in RATES.iter().enumerate() {
            for (path, (_, netns, addr, pids)) in results.http.iter_mut().zip(&http) {
                let mut run = None;
                let cpu = cpu_during(pids, &mut || {
                    let out = constant_rate(netns, *addr, *rate, run_for, connections(*rate))
                        .with_context(|| format!("{} at {rate} rps", path.name))?;
                    run = Some(out);
                    Ok(())
                })?;
                let Some(run) = run else { bail!("no run") };
                let point = &mut path.points[r];
                point.record_cpu(cpu, run.elapsed, run.micros.len(), pids.len());
                point.p50.push(run.percentile(50.0));
                point.p99.push(run.percentile(99.0));
                point.errors += run.errors;
                println!(
                    "  run {} {rate:>5} rps {:<38} p50 {:>6} µs  p99 {:>6} µs  errors {}",
                    repeat + 1,
                    path.name,
                    run.percentile(50.0),
                    run.percentile(99.0),
                    run.errors
                );
            }
        }
        for (path, (_, netns, addr, pids)) in results.grpc.iter_mut().zip(&grpc_paths) {
            let load = grpc::Load {
                connections: GRPC_CONNECTIONS,
                concurrency: GRPC_IN_FLIGHT,
                ..grpc::Load::at_rate(*addr, GRPC_RATE, run_for)
            };
            let mut run = None;
            let cpu = cpu_during(pids, &mut || {
                let out = grpc::load(Some(netns), &load).with_context(|| path.name)?;
                run = Some(out);
                Ok(())
            })?;
            let Some(run) = run else { bail!("no run") };
            let point = &mut path.points[0];
            point.record_cpu(cpu, run.latencies.elapsed, run.latencies.micros.len(), pids.len());
            point.p50.push(run.percentile(50.0));
            point.p99.push(run.percentile(99.0));
            point.errors += run.errors();
            for (status, n) in &run.by_status {
                *point.by_status.entry(status.clone()).or_default() += n;
            }
            println!(
                "  run {} {GRPC_RATE:>5} /s  {:<38} p50 {:>6} µs  p99 {:>6} µs  errors {} {:?}",
                repeat + 1,
                path.name,
                run.percentile(50.0),
                run.percentile(99.0),
                run.errors(),
                run.by_status
            );
        }
    }
    routed_by_grpc_route(shop)?;
    Ok(results)
}

/// The L7 gRPC path must really be routed call by call by the GRPCRoute (not spliced at L4
/// because the proxy did not see gRPC): node A's proxy counts requests by route.
fn routed_by_grpc_route(shop: &Shop<'_>) -> anyhow::Result<()> {
    let metrics = crate::demo_mesh::admin_get(&shop.lab.a.netns, "/metrics");
    let routed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_requests_total") && l.contains("checkout-grpc"))
        .collect();
    if routed.is_empty() {
        bail!(
            "node A's proxy counted no request on route checkout-grpc: the gRPC L7 point was not routed by its GRPCRoute\n\
             its weft_requests_total:\n{}",
            metrics.lines().filter(|l| l.starts_with("weft_requests_total")).collect::<Vec<_>>().join("\n")
        );
    }
    println!("==> gRPC L7 calls routed by the GRPCRoute (node A): {}", routed.join("; "));
    Ok(())
}

fn write_results(results: &Results, plan: Plan, load_before: &str, load_after: &str) -> anyhow::Result<()> {
    let RunInfo { date, commit, machine } = RunInfo::now();
    let (repeats, run_seconds) = (plan.repeats(), plan.run().as_secs());
    let at = RATES.iter().position(|r| *r == TARGET_RATE).unwrap_or(0);
    let mut md = format!("# Mesh hop: latency\n\n{}", plan.banner());
    let idle = IdleSettings::read();
    writeln!(
        md,
        "`cargo xtask bench mesh` on {machine}, {date}, commit {commit}; {}.\n\
         Load average before: `{load_before}`; after: `{load_after}`.\n\n\
         Two netns nodes joined by veth; the client on node A, the server on node B; weft-proxy on both nodes\n\
         (the load generator, both proxies and the servers share the machine's cores).\n\n{}\n\
         ## HTTP/1.1 at {TARGET_RATE} requests/s\n\n\
         Open loop (measured from each request's due time), {} keep-alive connections, {repeats} interleaved\n\
         runs of {run_seconds} s; median of the runs, [min–max]. CPU µs per request per proxy: both proxies'\n\
         user time (their own code) and system time (the kernel on their behalf: sockets, TCP, veth,\n\
         wake-ups) ÷ completed requests ÷ 2; the target of ≤ {CPU_PER_1K_TARGET} cores per 1k req/s per proxy is\n\
         ≤ {:.0} µs per request per proxy, user + kernel.\n\n\
         | path | p50 µs | p99 µs | added p50 | added p99 | errors | both proxies' CPU (cores) | CPU µs/request/proxy, user | CPU µs/request/proxy, kernel | kernel share |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        crate::bench::binaries_note(),
        idle.paragraph(
            "The `floor` rows (two HAProxy relays in `mode tcp` where the node proxies sit, plain TCP or\n\
             TLS 1.3 between them; below) measure"
        ),
        connections(TARGET_RATE),
        CPU_PER_1K_TARGET * 1000.0
    )?;
    let mut verdicts = Vec::new();
    // The same measures for the peer (ztunnel) and the floors, without verdicts.
    let mut references = Vec::new();
    let mut table = |paths: &[Series], r: usize, rate: u32, md: &mut String| -> anyhow::Result<()> {
        let base = &paths[0].points[r];
        let (base_p50, base_p99) = (median(&as_f64(&base.p50)), median(&as_f64(&base.p99)));
        for (i, path) in paths.iter().enumerate() {
            let point = &path.points[r];
            let (p50, p99) = (median(&as_f64(&point.p50)), median(&as_f64(&point.p99)));
            let errors = if point.by_status.is_empty() {
                point.errors.to_string()
            } else {
                format!("{} {:?}", point.errors, point.by_status)
            };
            let (user, system) = (median(&point.user_us_per_request), median(&point.system_us_per_request));
            writeln!(
                md,
                "| {} | {} | {} | {:+.0} | {:+.0} | {errors} | {} | {} | {} | {:.0} % |",
                path.name,
                spread(&as_f64(&point.p50), 0),
                spread(&as_f64(&point.p99), 0),
                p50 - base_p50,
                p99 - base_p99,
                spread(&point.proxy_cpu, 3),
                spread(&point.user_us_per_request, 1),
                spread(&point.system_us_per_request, 1),
                100.0 * system / (user + system).max(f64::MIN_POSITIVE)
            )?;
            // The targets are Weft's: a peer's row has none.
            if i > 0
                && rate == TARGET_RATE
                && !path.name.contains("ztunnel")
                && !path.name.starts_with("floor")
            {
                let added = p99 - base_p99;
                // Two proxies carry each request (one per node): the target is per proxy.
                let per_proxy_per_1k = median(&point.proxy_cpu) / 2.0 / (f64::from(rate) / 1000.0);
                verdicts.push(format!(
                    "- {}: added p99 {added:+.0} µs (target ≤ {ADDED_P99_TARGET_US:.0}) — {}; CPU {per_proxy_per_1k:.3} cores per 1k req/s per proxy (target ≤ {CPU_PER_1K_TARGET}) — {}.",
                    path.name,
                    verdict(added <= ADDED_P99_TARGET_US),
                    verdict(per_proxy_per_1k <= CPU_PER_1K_TARGET)
                ));
            } else if i > 0 && rate == TARGET_RATE {
                let per_process_per_1k = median(&point.proxy_cpu) / 2.0 / (f64::from(rate) / 1000.0);
                let each = if path.name.starts_with("floor") { "relay" } else { "proxy" };
                references.push(format!(
                    "- {}: added p50 {:+.0} µs, added p99 {:+.0} µs; CPU {per_process_per_1k:.3} cores per 1k req/s per {each} \
                     ({user:.1} µs user + {system:.1} µs kernel per request per {each}).",
                    path.name,
                    p50 - base_p50,
                    p99 - base_p99,
                ));
            }
        }
        Ok(())
    };
    table(&results.http, at, TARGET_RATE, &mut md)?;
    if results.http.iter().any(|p| p.name.starts_with("floor")) {
        writeln!(
            md,
            "\nThe `floor` rows are references, not peers: two HAProxy processes in `mode tcp` (one thread\n\
             each, no HTTP parsing, no redirection) where the node proxies sit: the unmeshed client dials\n\
             relay A on node A's pod-network address, relay A relays over the link to relay B on node B,\n\
             relay B to the legacy pod; between the relays plain TCP, or TLS 1.3 with both peers'\n\
             certificates verified against a test CA (ECDSA P-256, made with openssl for the run). Their\n\
             CPU columns are both relays' (the weft-proxies are idle then). What they add to direct is\n\
             what any user-space mesh hop pays on this machine (four more socket hops, two processes woken\n\
             per request); a mesh path's cost above the matching floor is what its own work costs."
        )?;
    }
    writeln!(
        md,
        "\n## gRPC at {GRPC_RATE} calls/s\n\n\
         Unary calls (`{}`, tonic's client, [`testbed::grpc`]) to a tonic echo: open loop (from each\n\
         call's due time), {GRPC_CONNECTIONS} HTTP/2 connections, at most {GRPC_IN_FLIGHT} calls in flight. Direct: the unmeshed\n\
         client to the legacy pod; L4: the frontend to checkout-v1 by pod address, over HBONE; L7: the\n\
         frontend to Service `checkout-grpc` (appProtocol `kubernetes.io/h2c`), whose GAMMA GRPCRoute\n\
         routes each call to one of the checkout pods, over HBONE. Errors by gRPC status. CPU µs per call\n\
         per proxy, split as above.\n\n\
         | path | p50 µs | p99 µs | added p50 | added p99 | errors | both proxies' CPU (cores) | CPU µs/request/proxy, user | CPU µs/request/proxy, kernel | kernel share |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        grpc::METHOD
    )?;
    table(&results.grpc, 0, GRPC_RATE, &mut md)?;
    writeln!(
        md,
        "\n## HTTP/1.1 latency vs load\n\nThe same paths at {RATES:?} requests/s (plotted in `mesh.png`); median p50 / p99, µs.\n\n\
         | path | {} |\n| --- |{}",
        RATES.map(|r| format!("{r} req/s")).join(" | "),
        " --- |".repeat(RATES.len())
    )?;
    for path in &results.http {
        let cells: Vec<String> = path
            .points
            .iter()
            .map(|p| {
                let errors = if p.errors > 0 { format!(" ({} errors)", p.errors) } else { String::new() };
                format!("{:.0} / {:.0}{errors}", median(&as_f64(&p.p50)), median(&as_f64(&p.p99)))
            })
            .collect();
        writeln!(md, "| {} | {} |", path.name, cells.join(" | "))?;
    }
    writeln!(md, "\n## Targets (issue 9)\n\n{}\n", verdicts.join("\n"))?;
    if !references.is_empty() {
        writeln!(
            md,
            "## Peer and floors at {TARGET_RATE} req/s (no targets: the same measures, to compare)\n\n{}\n",
            references.join("\n")
        )?;
    }
    let ztunnel_note = match &results.ztunnel {
        Some(bin) => format!(
            "ztunnel rows: `{bin}` (ZTUNNEL_BIN) in dedicated mode, one in each of two more unmeshed pods\n\
             (zt/zclient on node A, zt/zserver on node B), local config and fake CA, nftables redirection as\n\
             istio-cni's; their CPU column is both ztunnels' (the weft-proxies are idle then)."
        ),
        None => ZTUNNEL_NOT_RUN.to_string(),
    };
    writeln!(
        md,
        "{ztunnel_note}\n\n\
         Tunnel throughput (iperf3, 1 and 8 connections): `cargo xtask bench tcp`, [tcp.md](tcp.md).\n\n\
         Rerun: `cargo xtask bench mesh [--quick]` (root; apt-get install -y iperf3 nftables containernetworking-plugins haproxy)."
    )?;
    if !results.floor_configs.is_empty() {
        writeln!(
            md,
            "\n## Floor relays' configurations (generated)\n\n\
             `haproxy -db -f $DIR/<relay>.cfg` (each floor its own `$DIR`), relay A in node A's netns, relay B in\n\
             node B's; the TLS floor's certificates: `openssl req -x509 -newkey ec` (P-256) for the CA, one\n\
             certificate each for relay-b (serverAuth, DNS:relay-b) and relay-a (clientAuth), each `.pem` its\n\
             certificate and key.\n"
        )?;
        for (name, text) in &results.floor_configs {
            writeln!(md, "`{name}`:\n\n```\n{text}```\n")?;
        }
    }
    let point_json = |path: &Series, rate: u32, point: &Point| {
        json!({
            "path": path.name, "rate_rps": rate, "p50_us": point.p50, "p99_us": point.p99,
            "errors": point.errors, "errors_by_status": point.by_status, "proxy_cpu_cores": point.proxy_cpu,
            "proxy_cpu_user_us_per_request_per_proxy": point.user_us_per_request,
            "proxy_cpu_system_us_per_request_per_proxy": point.system_us_per_request,
        })
    };
    // `latency`: the HTTP paths at the target rate (what the resources table and the README
    // read); `load_points`: every rate; `grpc`: the gRPC paths.
    let latency: Vec<_> = results.http.iter().map(|p| point_json(p, TARGET_RATE, &p.points[at])).collect();
    let load_points: Vec<_> = results
        .http
        .iter()
        .flat_map(|p| RATES.iter().zip(&p.points).map(move |(rate, point)| point_json(p, *rate, point)))
        .collect();
    let grpc_points: Vec<_> = results.grpc.iter().map(|p| point_json(p, GRPC_RATE, &p.points[0])).collect();
    let report = json!({
        "command": "cargo xtask bench mesh", "date": date, "commit": commit, "machine": machine,
        "quick": plan.quick, "load_before": load_before, "load_after": load_after,
        "rate_rps": TARGET_RATE, "connections": connections(TARGET_RATE), "rates_rps": RATES,
        "run_seconds": run_seconds, "repeats": repeats,
        "latency": latency, "load_points": load_points,
        "grpc": grpc_points, "grpc_connections": GRPC_CONNECTIONS, "grpc_in_flight_max": GRPC_IN_FLIGHT,
        "ztunnel": ztunnel_note, "idle_settings": idle.line(), "cpu_accounting": idle.accounting,
    });
    plan.save("mtls", &md, &report)
}
