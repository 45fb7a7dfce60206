//! Counters the admin server renders as Prometheus text.
//!
//! Written by hand rather than with a metrics crate: a handful of families, and the request path
//! only touches atomics plus one short mutex for the labelled request counter, whose labels are
//! shared strings of the config (no allocation per request).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds: sub-millisecond for loopback, up to the
/// tens of seconds a slow backend with a long timeout can take.
const LATENCY_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// Labels of `weft_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub code: u16,
}

/// Why a request never got a response from a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamFailure {
    Connect,
    Reset,
    Timeout,
}

impl UpstreamFailure {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Timeout => "timeout",
        }
    }
}

/// What became of one RequestMirror copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MirrorOutcome {
    /// The mirror backend answered (its answer dropped).
    Sent,
    /// The mirror backend failed or timed out.
    Failed,
    /// The request body was over the mirror cap: no copy was sent.
    BodyTooLarge,
    /// Too many mirror copies were already in flight.
    Overloaded,
    /// The mirror backend is invalid or has no ready endpoint.
    NoBackend,
    /// The main request's body never finished (client gone, error): an incomplete copy is not sent.
    Aborted,
}

impl MirrorOutcome {
    fn as_str(self) -> &'static str {
        match self {
            MirrorOutcome::Sent => "sent",
            MirrorOutcome::Failed => "failed",
            MirrorOutcome::BodyTooLarge => "body_too_large",
            MirrorOutcome::Overloaded => "overloaded",
            MirrorOutcome::NoBackend => "no_backend",
            MirrorOutcome::Aborted => "aborted",
        }
    }
}

/// What became of a connection on a TCP or TLS-passthrough listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum L4Outcome {
    /// Connected to a backend and spliced.
    Forwarded,
    /// No route for it (a TLS server name no TLSRoute serves).
    NoRoute,
    /// Not a TLS ClientHello on a passthrough listener.
    InvalidHello,
    /// The route's backend is invalid or has no ready endpoint.
    NoBackend,
    /// The chosen endpoint refused the connection or did not answer in time.
    ConnectFailed,
}

impl L4Outcome {
    fn as_str(self) -> &'static str {
        match self {
            L4Outcome::Forwarded => "forwarded",
            L4Outcome::NoRoute => "no_route",
            L4Outcome::InvalidHello => "invalid_hello",
            L4Outcome::NoBackend => "no_backend",
            L4Outcome::ConnectFailed => "connect_failed",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestLabels, u64>>,
    /// Requests per latency bucket, each counted in the first bucket that holds it only (one
    /// atomic add per request); [`Metrics::render`] sums them into Prometheus' cumulative `le`
    /// buckets.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    upstream_failures: Mutex<BTreeMap<UpstreamFailure, u64>>,
    mirrors: Mutex<BTreeMap<MirrorOutcome, u64>>,
    /// By listener, backend and outcome.
    l4_connections: Mutex<BTreeMap<(String, String, L4Outcome), u64>>,
    pub config_version: AtomicU64,
    pub config_nacks: AtomicU64,
    pub config_errors: AtomicU64,
    pub active_connections: AtomicI64,
    pub refused_requests: AtomicU64,
    /// Endpoints left out of balancing after repeated connect failures.
    pub endpoint_ejections: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, labels: RequestLabels, elapsed: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry(labels).or_default() += 1;
        }
        let seconds = elapsed.as_secs_f64();
        // Slower than the last bound: counted in `+Inf` only (the count).
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn record_upstream_failure(&self, failure: UpstreamFailure) {
        if let Ok(mut failures) = self.upstream_failures.lock() {
            *failures.entry(failure).or_default() += 1;
        }
    }

    pub fn upstream_failures(&self, failure: UpstreamFailure) -> u64 {
        self.upstream_failures.lock().map(|f| f.get(&failure).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn record_mirror(&self, outcome: MirrorOutcome) {
        if let Ok(mut mirrors) = self.mirrors.lock() {
            *mirrors.entry(outcome).or_default() += 1;
        }
    }

    pub fn mirrors(&self, outcome: MirrorOutcome) -> u64 {
        self.mirrors.lock().map(|m| m.get(&outcome).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn record_l4(&self, listener: &str, backend: &str, outcome: L4Outcome) {
        if let Ok(mut connections) = self.l4_connections.lock() {
            *connections.entry((listener.to_string(), backend.to_string(), outcome)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP weft_requests_total HTTP requests answered, by listener, route, backend and status code.\n");
        out.push_str("# TYPE weft_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for (l, n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "weft_requests_total{{listener=\"{}\",route=\"{}\",backend=\"{}\",code=\"{}\"}} {n}",
                    escape(&l.listener),
                    escape(&l.route),
                    escape(&l.backend),
                    l.code
                );
            }
        }
        out.push_str(
            "# HELP weft_request_duration_seconds Time from request received to response headers sent.\n",
        );
        out.push_str("# TYPE weft_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "weft_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "weft_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "weft_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "weft_request_duration_seconds_count {count}");

        out.push_str("# HELP weft_upstream_failures_total Requests that got no response from a backend.\n");
        out.push_str("# TYPE weft_upstream_failures_total counter\n");
        if let Ok(failures) = self.upstream_failures.lock() {
            for (kind, n) in failures.iter() {
                let _ = writeln!(out, "weft_upstream_failures_total{{kind=\"{}\"}} {n}", kind.as_str());
            }
        }
        out.push_str("# HELP weft_mirror_requests_total RequestMirror copies, by what became of them.\n");
        out.push_str("# TYPE weft_mirror_requests_total counter\n");
        if let Ok(mirrors) = self.mirrors.lock() {
            for (outcome, n) in mirrors.iter() {
                let _ = writeln!(out, "weft_mirror_requests_total{{outcome=\"{}\"}} {n}", outcome.as_str());
            }
        }
        out.push_str("# HELP weft_l4_connections_total Connections on TCP and TLS-passthrough listeners, by listener, backend and outcome.\n");
        out.push_str("# TYPE weft_l4_connections_total counter\n");
        if let Ok(connections) = self.l4_connections.lock() {
            for ((listener, backend, outcome), n) in connections.iter() {
                let _ = writeln!(
                    out,
                    "weft_l4_connections_total{{listener=\"{}\",backend=\"{}\",outcome=\"{}\"}} {n}",
                    escape(listener),
                    escape(backend),
                    outcome.as_str()
                );
            }
        }
        let gauges: [(&str, &str, &str, i128); 6] = [
            (
                "weft_config_version",
                "gauge",
                "Version of the config being served (0: none yet).",
                self.config_version.load(Ordering::Relaxed).into(),
            ),
            (
                "weft_config_nacks_total",
                "counter",
                "Config updates refused; the last good config was kept.",
                self.config_nacks.load(Ordering::Relaxed).into(),
            ),
            (
                "weft_config_errors_total",
                "counter",
                "Config sources (files, folders) that failed to load; the last good config was kept.",
                self.config_errors.load(Ordering::Relaxed).into(),
            ),
            (
                "weft_active_connections",
                "gauge",
                "Client connections open on the listeners.",
                self.active_connections.load(Ordering::Relaxed).into(),
            ),
            (
                "weft_endpoint_ejections_total",
                "counter",
                "Endpoints ejected from balancing after consecutive connect failures.",
                self.endpoint_ejections.load(Ordering::Relaxed).into(),
            ),
            (
                "weft_refused_requests_total",
                "counter",
                "Requests refused before routing (ambiguous framing).",
                self.refused_requests.load(Ordering::Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// Label values are user-controlled names; Prometheus needs `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
