//! weft-proxy: the per-node data plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesh_api::identity::SpiffeId;
use mesh_proxy::config::connection::ControllerEndpoint;
use mesh_proxy::config::controller::Subscription;
use mesh_proxy::identity::{CaSettings, IdentityManager};
use mesh_proxy::inpod::{InpodConfig, InpodServer, Passthrough, PodTraffic};
use mesh_proxy::mesh::MeshTraffic;
use mesh_proxy::{Options, Source};

#[derive(Parser)]
#[command(name = "weft-proxy", version, about = "Weft's per-node data plane")]
struct Args {
    /// Serve a folder of Gateway API manifests (standalone gateway), re-read when it changes.
    #[arg(long, conflicts_with_all = ["config", "controller"])]
    manifests: Option<PathBuf>,
    /// Serve a JSON config file (mesh_api::model::Config).
    #[arg(long, conflicts_with = "controller")]
    config: Option<PathBuf>,
    /// Follow weft-controller's config stream, e.g. https://127.0.0.1:15010 (TLS, verified
    /// with --controller-ca-bundle for the URL's host).
    #[arg(long, requires = "node")]
    controller: Option<String>,
    /// The CA certificates (PEM) the controller's serving certificate must chain to: the
    /// ConfigMap weft-ca-root in a cluster, the CA folder's ca.crt standalone. Re-read at each
    /// connection.
    #[arg(long, env = "WEFT_CONTROLLER_CA_BUNDLE", value_name = "FILE")]
    controller_ca_bundle: Option<PathBuf>,
    /// The token the proxy presents on the config stream; defaults to --ca-token-file.
    #[arg(long, env = "WEFT_CONTROLLER_TOKEN_FILE", value_name = "FILE")]
    controller_token_file: Option<PathBuf>,
    /// INSECURE, local tests only: reach an http:// controller (and CA) without TLS.
    #[arg(long)]
    controller_insecure_plaintext: bool,
    /// The node this proxy serves (with --controller).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Admin server: /ready, /metrics, /config_dump.
    #[arg(long, default_value = "127.0.0.1:15021")]
    admin: SocketAddr,
    /// Log one line per request (target weft::access).
    #[arg(long)]
    access_log: bool,
    /// Serve meshed pods handed over by weft-cni (in-pod interception).
    #[arg(long, env = "WEFT_INPOD")]
    inpod: bool,
    /// The unix socket weft-cni hands pods over on (with --inpod).
    #[arg(long, env = "WEFT_INPOD_SOCKET", default_value = mesh_api::inpod::DEFAULT_SOCKET)]
    inpod_socket: PathBuf,
    /// The proxy's token for the controller's certificate authority (a projected
    /// ServiceAccount token in a cluster, a static node token standalone). With --inpod, it
    /// turns on the mesh: mTLS (HBONE) between meshed pods with their own certificates.
    #[arg(long, env = "WEFT_CA_TOKEN_FILE", requires = "inpod")]
    ca_token_file: Option<PathBuf>,
    /// The certificate authority's address; defaults to --controller.
    #[arg(long, env = "WEFT_CA_ADDRESS")]
    ca_address: Option<String>,
    /// The proxy's own SPIFFE ID (its ServiceAccount's, e.g.
    /// spiffe://cluster.local/ns/weft-system/sa/weft-node), which the CA signs for the proxy
    /// itself. With the mesh on, Gateway routes then reach meshed pods over HBONE presenting
    /// it; without it they reach them in plaintext.
    #[arg(long, env = "WEFT_GATEWAY_IDENTITY", requires = "ca_token_file")]
    gateway_identity: Option<String>,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// On shutdown, how long the hand-over to a new proxy (an upgrade) and then the open
    /// connections of meshed pods and Gateway listeners may take, in all (seconds).
    #[arg(long, default_value_t = mesh_proxy::inpod::DEFAULT_DRAIN_DEADLINE.as_secs())]
    drain_seconds: u64,
    /// Threads that move traffic. 1 runs everything on one thread (tokio's current-thread
    /// runtime); more is a work-stealing pool of that many. Default: see [`default_workers`].
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

/// glibc's malloc serves blocks of 128 KiB and more with mmap at first, then raises that
/// threshold to the largest block freed and returns the free top of a heap to the kernel once it
/// passes twice that. A bulk tunnel allocates and frees blocks of 256 KiB all the time (an HTTP/2
/// DATA frame of [`mesh_proxy::hbone::MAX_FRAME_SIZE`], the TLS and copy buffers around it), so
/// the heap top kept being handed back and faulted in again, zeroed page by page: a profile of a
/// tunnel at full speed spent ~15 % of the proxy's CPU in page faults, gone with these settings.
/// Blocks under 1 MiB come from the heap, and up to 4 MiB of free heap top is kept per arena:
/// a few frames' worth, not enough to matter for memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const MMAP_THRESHOLD: i32 = 1024 * 1024;
    const TRIM_THRESHOLD: i32 = 4 * 1024 * 1024;
    // SAFETY: mallopt only sets allocator parameters; it returns 0 when a value is refused, and
    // the defaults then stay, which is still correct.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// One worker per CPU, tokio's default. Measured on the 2-core bench machine (2026-11-24, load
/// average 7-12 from other builds, so within noise only): a current-thread runtime
/// (`WEFT_WORKER_THREADS=1`) cost about the same CPU per request at 1k req/s as two workers
/// (L4 0.115 against 0.133 cores per 1k req/s per proxy, L7 0.155 against 0.152). A profile
/// shows why: ~70 % of the proxy's CPU is the kernel's (TCP send paths that run the receiver's
/// softirq, and waking from `epoll_wait`, which every request needs once per direction whatever
/// the runtime), futex wake-ups between workers ~3 %. Under contention a single thread also got
/// a smaller share of the CPU than two, and tunnels were slower with it. So the shape stays, and
/// the knob is there to measure it on a quiet machine or pin a proxy to one thread.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads exist, so every arena they make uses the same settings.
    tune_malloc();
    let args = Args::parse();
    let workers = args.worker_threads.unwrap_or_else(default_workers);
    runtime(workers)?.block_on(run(args, workers))
}

async fn run(args: Args, workers: usize) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: `kubectl logs` would show the escape codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    tracing::info!(workers, "runtime started");
    let ca_address = args.ca_address.clone().or_else(|| args.controller.clone());
    let endpoint = |url: &str| {
        ControllerEndpoint::new(url, args.controller_ca_bundle.clone(), args.controller_insecure_plaintext)
    };
    let source = match (args.manifests, args.config, args.controller.clone(), args.node) {
        (Some(dir), _, _, _) => Source::Manifests(dir),
        (_, Some(file), _, _) => Source::File(file),
        (_, _, Some(url), Some(node)) => {
            let token_file = args.controller_token_file.clone().or_else(|| args.ca_token_file.clone());
            if token_file.is_none() {
                tracing::warn!(
                    "no --controller-token-file or --ca-token-file: only an insecure controller serves a proxy without a token"
                );
            }
            Source::Controller(Subscription { endpoint: endpoint(&url)?, node, token_file })
        }
        _ => anyhow::bail!("one of --manifests, --config or --controller (with --node) is required"),
    };
    let running =
        mesh_proxy::start(Options { source, admin: args.admin, access_log: args.access_log }).await?;
    let inpod = match args.inpod {
        true => {
            let traffic: Arc<dyn PodTraffic> = match args.ca_token_file {
                Some(token_file) => {
                    let url = ca_address.context("--ca-token-file needs --ca-address or --controller")?;
                    let identities = IdentityManager::new(CaSettings {
                        endpoint: endpoint(&url)?,
                        token_file,
                        ttl: None,
                    })?;
                    let mesh = MeshTraffic::new(
                        running.store.clone(),
                        running.proxy.clone(),
                        identities,
                        args.trust_domain,
                        args.access_log,
                    );
                    let metrics = mesh.clone();
                    running.more_metrics.register(Arc::new(move || metrics.render_metrics()));
                    tracing::info!("mesh on: meshed pods talk over HBONE with their own certificates");
                    match args.gateway_identity.as_deref().map(str::parse::<SpiffeId>) {
                        Some(Ok(identity)) => {
                            mesh.serve_gateways_as(identity);
                        }
                        Some(Err(error)) => anyhow::bail!("--gateway-identity: {error}"),
                        None => tracing::info!(
                            "no --gateway-identity: Gateway routes reach meshed pods in plaintext"
                        ),
                    }
                    Arc::new(mesh)
                }
                None => {
                    tracing::info!(
                        "no --ca-token-file: meshed pods' traffic is intercepted and passed through unchanged"
                    );
                    Arc::new(Passthrough)
                }
            };
            let config = InpodConfig { socket: args.inpod_socket, ..InpodConfig::default() };
            let server = InpodServer::start(config, traffic).await?;
            running.more_metrics.register(Arc::new(server.metrics_source()));
            Some(server)
        }
        false => None,
    };
    let mut running = running;
    shutdown_signal().await;
    // One deadline for everything: handing the pods and the Gateway listeners over to a new
    // proxy, if one has started (an upgrade), then draining open connections.
    let drain = Duration::from_secs(args.drain_seconds);
    let until = std::time::Instant::now() + drain;
    let handover = inpod.as_ref().is_some_and(InpodServer::superseded);
    tracing::info!(handover, ?drain, "shutting down");
    let pods = async {
        if let Some(inpod) = inpod {
            inpod.shutdown(drain).await;
        }
    };
    tokio::join!(pods, running.shutdown(until, handover));
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
