//! gRPC for the benches, the way ghz measures it: a tonic echo server ([`GrpcEcho`]) and a
//! load generator built on tonic's client ([`load`]) that makes unary calls over N HTTP/2
//! connections with many calls in flight on each.
//!
//! At a fixed rate the generator is open loop, like [`crate::load::constant_rate`]: calls are
//! due on a fixed schedule whatever the answers do, each latency is measured from when its call
//! was *due* (not from when it could be sent), so a stall shows up in the tail instead of being
//! hidden by a client that waited (coordinated omission). Without a rate it is closed loop
//! (ghz's default): `concurrency` callers, each sending its next call when the last one
//! answers, for the most calls a second the path can take.
//!
//! No `.proto`: one hand-written prost message and tonic's generic client and server, as in
//! mesh-proxy's gRPC tests. The method is `/bench.Echo/Say`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::load::Latencies;

/// The one method the echo serves and the generator calls.
pub const METHOD: &str = "/bench.Echo/Say";

/// The message both ways: the request's text, answered as `<server name>: <text>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// How often, and with what status, an echo fails on purpose (a flaky backend).
#[derive(Clone, Copy, Debug)]
pub struct Failing {
    /// Every `every`-th call (the 1st, the `every+1`-th, …) fails.
    pub every: u64,
    pub code: Code,
}

#[derive(Clone)]
struct Say {
    name: &'static str,
    failing: Option<Failing>,
    calls: Arc<AtomicU64>,
    /// The next call waits this long (µs) before answering: a stall, once.
    stall_next: Arc<AtomicU64>,
}

impl tonic::server::UnaryService<Msg> for Say {
    type Response = Msg;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Msg>, Status>> + Send>>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let (name, failing) = (self.name, self.failing);
        let stall = self.stall_next.swap(0, Ordering::Relaxed);
        Box::pin(async move {
            if stall > 0 {
                tokio::time::sleep(Duration::from_micros(stall)).await;
            }
            if let Some(f) = failing.filter(|f| f.every > 0 && call.is_multiple_of(f.every)) {
                return Err(Status::new(f.code, "failing on purpose"));
            }
            Ok(Response::new(Msg { text: format!("{name}: {}", request.into_inner().text) }))
        })
    }
}

/// A gRPC echo over h2c (prior knowledge, as a Kubernetes backend with appProtocol
/// `kubernetes.io/h2c` is spoken to), on a thread and a single-threaded tokio runtime of its
/// own, so it never shares a scheduler with the load generator. Stops on drop.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    calls: Arc<AtomicU64>,
    stall_next: Arc<AtomicU64>,
}

impl GrpcEcho {
    /// Serves on `addr` (port 0: any free port; the bound address is [`addr`](Self::addr))
    /// inside `netns` (`None`: this process's own namespace).
    pub fn start(
        netns: Option<&Path>,
        addr: SocketAddr,
        name: &'static str,
        failing: Option<Failing>,
    ) -> std::io::Result<GrpcEcho> {
        let file = netns.map(std::fs::File::open).transpose()?;
        let calls = Arc::new(AtomicU64::new(0));
        let stall_next = Arc::new(AtomicU64::new(0));
        let say = Say { name, failing, calls: calls.clone(), stall_next: stall_next.clone() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        std::thread::Builder::new().name(format!("grpc-echo-{name}")).spawn(move || {
            let bound = (|| {
                enter(file.as_ref())?;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
                Ok((runtime, listener))
            })();
            let (runtime, listener) = match bound {
                Ok(ok) => ok,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(listener.local_addr());
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = accept_loop(listener, say) => {}
                }
            });
        })?;
        let addr = ready_rx.recv().map_err(|_| std::io::Error::other("echo thread died"))??;
        Ok(GrpcEcho { addr, stop: Some(stop), calls, stall_next })
    }

    /// The next call to arrive waits `stall` before it is answered (a GC pause, a slow disk).
    pub fn stall_next(&self, stall: Duration) {
        self.stall_next.store(stall.as_micros() as u64, Ordering::Relaxed);
    }

    /// Calls answered (or failed on purpose) so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, say: Say) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let say = say.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let say = say.clone();
                async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                    let response = if req.uri().path() == METHOD {
                        grpc.unary(say, req).await
                    } else {
                        Status::unimplemented("no such method").into_http()
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Moves the calling thread into the network namespace `file` is open on (none: stays).
fn enter(file: Option<&std::fs::File>) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    let Some(file) = file else { return Ok(()) };
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Load {
    /// Where the calls go (an echo, or a proxy in front of one).
    pub addr: SocketAddr,
    /// Calls a second, open loop; `None`: closed loop, as many as the path takes.
    pub rate: Option<u32>,
    pub duration: Duration,
    /// HTTP/2 connections (one tonic `Channel` each); calls go round-robin over them.
    pub connections: usize,
    /// At most this many calls in flight at once (ghz's `-c`). Open loop: a due call waits for
    /// a free slot, and that wait counts in its latency. Closed loop: the number of callers.
    pub concurrency: usize,
    /// The HTTP/2 `:authority` of the calls (a Gateway route matches on it).
    pub authority: String,
}

impl Load {
    /// Open loop at `rate` calls a second to `addr`; 4 connections, up to 256 in flight.
    pub fn at_rate(addr: SocketAddr, rate: u32, duration: Duration) -> Load {
        Load { addr, rate: Some(rate), duration, connections: 4, concurrency: 256, authority: "echo".into() }
    }

    /// Closed loop: 4 connections, 64 callers, for the most calls a second.
    pub fn max(addr: SocketAddr, duration: Duration) -> Load {
        Load { rate: None, concurrency: 64, ..Load::at_rate(addr, 0, duration) }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Latencies of the calls that succeeded (µs, sorted; open loop: from each call's due
    /// time), calls that failed in `errors`, and the run's wall time.
    pub latencies: Latencies,
    /// Failed calls by gRPC status code (`Unavailable`, `DeadlineExceeded`, …); a transport
    /// failure is the status tonic gives it.
    pub by_status: BTreeMap<String, usize>,
    /// Calls made (succeeded + failed).
    pub calls: usize,
}

impl Outcome {
    pub fn percentile(&self, p: f64) -> u64 {
        self.latencies.percentile(p)
    }

    pub fn errors(&self) -> usize {
        self.latencies.errors
    }

    /// Calls completed (succeeded or failed) a second.
    pub fn rps(&self) -> f64 {
        self.calls as f64 / self.latencies.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A call that has not answered in this long has failed (`DeadlineExceeded`).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tally {
    micros: Vec<u64>,
    by_status: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, result: Result<(), Code>, micros: u64) {
        match result {
            Ok(()) => self.micros.push(micros),
            Err(code) => *self.by_status.entry(format!("{code:?}")).or_default() += 1,
        }
    }
}

/// Runs `load` from inside `netns` (`None`: this process's own namespace): its connections
/// are opened there. Fails if a connection cannot be made; failed calls are counted, not
/// returned.
pub fn load(netns: Option<&Path>, load: &Load) -> std::io::Result<Outcome> {
    if load.connections == 0 || load.concurrency == 0 || load.rate == Some(0) {
        return Err(std::io::Error::other("connections, concurrency and rate must be > 0"));
    }
    let file = netns.map(std::fs::File::open).transpose()?;
    let load = load.clone();
    let place = netns.map_or_else(|| "this namespace".to_string(), |n| n.display().to_string());
    std::thread::Builder::new()
        .name("grpc-load".into())
        .spawn(move || {
            // The runtime's worker is spawned by this thread after setns, so it is in the
            // namespace too: every socket the client opens is.
            enter(file.as_ref())?;
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let channels = runtime.block_on(connect(&load)).map_err(|e| {
                std::io::Error::other(format!("gRPC connect to {} from {place}: {e}", load.addr))
            })?;
            Ok(match load.rate {
                Some(rate) => open_loop(&runtime, &load, rate, channels),
                None => runtime.block_on(closed_loop(&load, channels)),
            })
        })?
        .join()
        .map_err(|_| std::io::Error::other("gRPC load thread panicked"))?
}

async fn connect(load: &Load) -> Result<Vec<Channel>, String> {
    let origin: http::Uri = format!("http://{}", load.authority)
        .parse()
        .map_err(|e| format!("authority {:?}: {e}", load.authority))?;
    let endpoint = Endpoint::from_shared(format!("http://{}", load.addr))
        .map_err(|e| e.to_string())?
        .origin(origin)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut channels = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        // `connect` (not `connect_lazy`): one HTTP/2 connection per Channel, made now, so the
        // handshakes are not in the first calls' latencies.
        channels
            .push(endpoint.connect().await.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?);
    }
    Ok(channels)
}

/// One unary call; its outcome as a status code.
async fn call(channel: Channel) -> Result<(), Code> {
    let mut client = tonic::client::Grpc::new(channel);
    let request = Request::new(Msg { text: "ping".into() });
    let path = PathAndQuery::from_static(METHOD);
    let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
        client.ready().await.map_err(|_| Code::Unavailable)?;
        client.unary(request, path, ProstCodec::<Msg, Msg>::default()).await.map_err(|s| s.code())
    })
    .await;
    match outcome {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(code)) => Err(code),
        Err(_) => Err(Code::DeadlineExceeded),
    }
}

/// Calls leave on a schedule kept by a plain thread (`thread::sleep` is precise to tens of
/// µs, tokio's timer only to 1 ms, which would be added to every latency); the runtime makes
/// them. A call over the concurrency cap waits for a slot, from its due time.
fn open_loop(runtime: &tokio::runtime::Runtime, load: &Load, rate: u32, channels: Vec<Channel>) -> Outcome {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (load.duration.as_secs_f64() * f64::from(rate)) as usize;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(load.concurrency));
    let mut calls = Vec::with_capacity(total);
    let start = Instant::now() + Duration::from_millis(20);
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (channel, tally, slots) = (channels[k % channels.len()].clone(), tally.clone(), slots.clone());
        calls.push(runtime.spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => call(channel).await,
                Err(_) => Err(Code::Cancelled),
            };
            let micros = due.elapsed().as_micros() as u64;
            if let Ok(mut tally) = tally.lock() {
                tally.record(result, micros);
            }
        }));
    }
    runtime.block_on(async {
        for call in calls {
            let _ = call.await;
        }
    });
    let elapsed = start.elapsed();
    finish(&tally, total, elapsed)
}

async fn closed_loop(load: &Load, channels: Vec<Channel>) -> Outcome {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let made = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + load.duration;
    let callers: Vec<_> = (0..load.concurrency)
        .map(|i| {
            let (channel, tally, made) = (channels[i % channels.len()].clone(), tally.clone(), made.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let sent = Instant::now();
                    let result = call(channel.clone()).await;
                    made.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut tally) = tally.lock() {
                        tally.record(result, sent.elapsed().as_micros() as u64);
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        let _ = caller.await;
    }
    let elapsed = start.elapsed();
    finish(&tally, made.load(Ordering::Relaxed) as usize, elapsed)
}

fn finish(tally: &Mutex<Tally>, calls: usize, elapsed: Duration) -> Outcome {
    let Tally { mut micros, by_status } = match tally.lock() {
        Ok(mut tally) => std::mem::take(&mut *tally),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    micros.sort_unstable();
    let errors = by_status.values().sum();
    Outcome { latencies: Latencies { micros, errors, elapsed }, by_status, calls }
}
