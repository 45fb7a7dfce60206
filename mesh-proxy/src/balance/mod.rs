//! Endpoint choice: power of two choices over a peak-EWMA of latency, with outlier ejection.
//!
//! Two endpoints are drawn at random and the one with the lower cost wins; the cost is the
//! endpoint's [`ewma::PeakEwma`] latency estimate times its requests in flight plus one (what
//! linkerd2-proxy does), so a slow endpoint and a busy one are both avoided. Endpoints that keep
//! refusing connections are left out for a while ([`outlier`]), but never all of a backend's.
//!
//! The state of an endpoint outlives config snapshots (it lives in a [`Registry`] keyed by
//! address), so a config swap mid-traffic does not make a busy, slow or dead endpoint look fresh.
//!
//! An endpoint's state is made the first time the balancer considers it, not when its set is
//! built: a node proxy holds every Service of the cluster (100k endpoints and more), and most
//! of them never get a request from this node. A set is the backend it was built from (shared
//! with the config, not copied) plus, per ready endpoint, its index there and an empty slot for
//! its state: ~20 bytes an endpoint instead of ~180 with a state made for each up front.

pub mod ewma;
pub mod outlier;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mesh_api::model::{self, AppProtocol};
use rand::Rng;

use ewma::PeakEwma;
use outlier::{Outlier, Verdict};

/// The registry is swept of dead entries no sooner than at this size: below it a sweep costs
/// more than the entries it would free.
const MIN_SWEEP: usize = 1024;

/// Endpoint state shared by every snapshot that names the same endpoint address. A handle:
/// clones share one registry (each endpoint set keeps one, to make states as it needs them).
#[derive(Clone, Default)]
pub struct Registry {
    states: Arc<Mutex<States>>,
}

#[derive(Default)]
struct States {
    by_addr: HashMap<SocketAddr, Weak<EndpointState>>,
    /// The size at which the next sweep happens.
    sweep_at: usize,
}

impl Registry {
    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let Ok(mut states) = self.states.lock() else {
            return Arc::new(EndpointState::new(Instant::now()));
        };
        if let Some(existing) = states.by_addr.get(&addr).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(EndpointState::new(Instant::now()));
        states.by_addr.insert(addr, Arc::downgrade(&fresh));
        // Forget endpoints no snapshot refers to any more, so churn does not grow the map; only
        // once it has doubled since the last sweep, so a config of n new endpoints costs O(n)
        // sweeping in all (a sweep per insert made 100k endpoints take minutes).
        if states.by_addr.len() >= states.sweep_at {
            states.by_addr.retain(|_, s| s.strong_count() > 0);
            states.sweep_at = (states.by_addr.len() * 2).max(MIN_SWEEP);
        }
        fresh
    }

    /// The state of `addr` if some set has made it and it is still alive; makes none.
    fn existing(&self, addr: SocketAddr) -> Option<Arc<EndpointState>> {
        self.states.lock().ok()?.by_addr.get(&addr).and_then(Weak::upgrade)
    }

    /// Endpoints remembered, live or not yet swept (tests).
    pub fn remembered(&self) -> usize {
        self.states.lock().map_or(0, |s| s.by_addr.len())
    }

    /// The ready endpoints of a backend, as one balancer. An endpoint that already has a state
    /// (an earlier snapshot's set considered it) takes it over now, while that set may still
    /// hold it; the others get theirs when first considered.
    pub fn endpoints(&self, backend: &Arc<model::Backend>) -> EndpointSet {
        let ready: Option<Box<[u32]>> = match backend.endpoints.iter().all(|e| e.ready) {
            true => None,
            // u32: a Service port with more than 4 billion endpoints is not a thing; one that
            // claims so is cut there rather than wrapped.
            false => Some(
                (0..backend.endpoints.len().min(u32::MAX as usize))
                    .filter(|&i| backend.endpoints[i].ready)
                    .map(|i| i as u32)
                    .collect(),
            ),
        };
        let len = ready.as_ref().map_or(backend.endpoints.len(), |r| r.len());
        let set = EndpointSet {
            app_protocol: backend.app_protocol,
            backend: Arc::clone(backend),
            ready,
            states: (0..len).map(|_| OnceLock::new()).collect(),
            registry: self.clone(),
        };
        if let Ok(known) = self.states.lock()
            && !known.by_addr.is_empty()
        {
            for (n, slot) in set.states.iter().enumerate() {
                if let Some(state) = known.by_addr.get(&set.addr(n)).and_then(Weak::upgrade) {
                    let _ = slot.set(state);
                }
            }
        }
        set
    }
}

fn endpoint_addr(endpoint: &model::Endpoint) -> SocketAddr {
    SocketAddr::new(endpoint.address, endpoint.port)
}

struct EndpointState {
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

struct Health {
    latency: PeakEwma,
    outlier: Outlier,
}

impl EndpointState {
    fn new(now: Instant) -> Self {
        EndpointState {
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health { latency: PeakEwma::new(now), outlier: Outlier::default() }),
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.health.lock().is_ok_and(|h| h.outlier.is_ejected(now))
    }

    /// Latency estimate × (requests in flight + 1).
    fn cost(&self, now: Instant) -> f64 {
        let estimate = self.health.lock().map_or(0.0, |h| h.latency.estimate_at(now));
        // The +1 makes an idle endpoint's cost its latency rather than 0, so idle endpoints are
        // still told apart by speed.
        estimate * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState").field("in_flight", &self.in_flight.load(Ordering::Relaxed)).finish()
    }
}

pub struct EndpointSet {
    pub app_protocol: AppProtocol,
    /// The config's backend, shared: the addresses are read from it, not copied.
    backend: Arc<model::Backend>,
    /// The ready endpoints, as indices into `backend.endpoints`; `None` when all of them are
    /// (the usual case: then there is nothing to keep).
    ready: Option<Box<[u32]>>,
    /// Each ready endpoint's state, in the order of the ready endpoints, made when first
    /// considered.
    states: Box<[OnceLock<Arc<EndpointState>>]>,
    registry: Registry,
}

impl std::fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSet")
            .field("backend", &self.backend.key)
            .field("ready", &self.states.len())
            .finish_non_exhaustive()
    }
}

/// An endpoint chosen for one request; it counts as in flight until dropped. Tell the balancer
/// how it went with [`EndpointSet::answered`] or [`EndpointSet::connect_failed`].
#[derive(Debug)]
pub struct InFlight {
    pub addr: SocketAddr,
    state: Arc<EndpointState>,
    /// `None` when its set had nothing to rank it against (one endpoint): then the clock is not
    /// read for it at all.
    started: Option<Instant>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointSet {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Ready endpoints in the set.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// The address of the `n`th ready endpoint.
    fn addr(&self, n: usize) -> SocketAddr {
        let i = self.ready.as_ref().map_or(n, |ready| ready[n] as usize);
        endpoint_addr(&self.backend.endpoints[i])
    }

    /// The state of the `n`th ready endpoint, from the registry the first time (the one an
    /// earlier set made, if it is still alive).
    fn state(&self, n: usize) -> &Arc<EndpointState> {
        self.states[n].get_or_init(|| self.registry.state(self.addr(n)))
    }

    /// Whether the `n`th ready endpoint is in (not ejected) at `now`. Makes no state: one never
    /// considered is in, unless another set has ejected it meanwhile (then the registry knows).
    fn is_in(&self, n: usize, now: Instant) -> bool {
        match self.states[n].get() {
            Some(state) => !state.is_ejected(now),
            None => self.registry.existing(self.addr(n)).is_none_or(|state| !state.is_ejected(now)),
        }
    }

    /// The ready endpoints (by position) that are not ejected at `now`.
    fn live(&self, now: Instant) -> Vec<usize> {
        (0..self.states.len()).filter(|&n| self.is_in(n, now)).collect()
    }

    /// Picks an endpoint, or `None` when the backend has no ready endpoint.
    pub fn pick(&self) -> Option<InFlight> {
        // One endpoint is chosen whatever its latency, so its requests skip the two clock
        // reads that time them (~1 % of the proxy's samples on an HTTP/1.1 load); a set that
        // shares the endpoint's state and has others to rank it against times its own.
        if self.states.len() == 1 {
            return Some(self.start(0, None));
        }
        self.pick_at(Instant::now(), &mut rand::rng())
    }

    fn pick_at(&self, now: Instant, rng: &mut impl Rng) -> Option<InFlight> {
        let n = self.states.len();
        let chosen = match n {
            0 => return None,
            1 => 0,
            _ => {
                let (a, b) = two_distinct(rng, n);
                match (self.state(a).is_ejected(now), self.state(b).is_ejected(now)) {
                    (false, false) => self.cheaper(a, b, now),
                    // The uncommon case: draw again among the endpoints still in, or among all
                    // of them when every one is out.
                    _ => {
                        let live = self.live(now);
                        let pool: Vec<usize> = if live.is_empty() { (0..n).collect() } else { live };
                        match pool.len() {
                            1 => pool[0],
                            m => {
                                let (a, b) = two_distinct(rng, m);
                                self.cheaper(pool[a], pool[b], now)
                            }
                        }
                    }
                }
            }
        };
        Some(self.start(chosen, Some(now)))
    }

    /// A request on the `n`th ready endpoint, counted in flight (and timed from `started`).
    fn start(&self, n: usize, started: Option<Instant>) -> InFlight {
        let state = self.state(n);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { addr: self.addr(n), state: state.clone(), started }
    }

    fn cheaper(&self, a: usize, b: usize, now: Instant) -> usize {
        if self.state(b).cost(now) < self.state(a).cost(now) { b } else { a }
    }

    /// The position of the ready endpoint at `addr`.
    fn position(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.states.len()).find(|&n| self.addr(n) == addr)
    }

    /// The ready endpoint at `addr`, chosen for a request whatever its cost (a persistent
    /// session), unless it is ejected.
    pub fn pick_addr(&self, addr: SocketAddr) -> Option<InFlight> {
        let now = Instant::now();
        let n = self.position(addr)?;
        (!self.state(n).is_ejected(now)).then(|| self.start(n, Some(now)))
    }

    /// Whether `addr` is one of these endpoints.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.position(addr).is_some()
    }

    /// The endpoint answered (response headers, whatever their status): its latency feeds the
    /// estimate and its connect-failure record is cleared.
    pub fn answered(&self, endpoint: &InFlight) {
        if endpoint.started.is_some() {
            self.answered_at(endpoint, Instant::now());
        } else if let Ok(mut health) = endpoint.state.health.lock() {
            health.outlier.success();
        }
    }

    fn answered_at(&self, endpoint: &InFlight, now: Instant) {
        if let Ok(mut health) = endpoint.state.health.lock() {
            if let Some(started) = endpoint.started {
                health.latency.observe(now.saturating_duration_since(started), now);
            }
            health.outlier.success();
        }
    }

    /// The request failed after connecting (reset, timeout): the time it took still says how
    /// the endpoint is doing.
    pub fn failed(&self, endpoint: &InFlight) {
        let Some(started) = endpoint.started else { return };
        let now = Instant::now();
        if let Ok(mut health) = endpoint.state.health.lock() {
            health.latency.observe(now.saturating_duration_since(started), now);
        }
    }

    /// The endpoint refused the connection. Returns how long it is ejected for, when this
    /// failure ejected it.
    pub fn connect_failed(&self, endpoint: &InFlight) -> Option<Duration> {
        self.connect_failed_at(endpoint, Instant::now())
    }

    fn connect_failed_at(&self, endpoint: &InFlight, now: Instant) -> Option<Duration> {
        // Another endpoint must stay in for this one to go out. By address: the registry keeps
        // one live state per address, so that is the same test as comparing states, and it
        // makes no state for each endpoint of a big backend (most were never used).
        let others_in = (0..self.states.len()).any(|n| self.addr(n) != endpoint.addr && self.is_in(n, now));
        let mut health = endpoint.state.health.lock().ok()?;
        match health.outlier.connect_failed(now, others_in) {
            Verdict::Kept => None,
            Verdict::Ejected(until) => Some(until - now),
        }
    }
}

/// Two different indices below `n` (at least 2), uniformly.
fn two_distinct(rng: &mut impl Rng, n: usize) -> (usize, usize) {
    let a = rng.random_range(0..n);
    (a, (a + rng.random_range(1..n)) % n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::model::{BackendKey, Endpoint as ModelEndpoint, ObjectKey};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    fn backend(ports: &[(u16, bool)]) -> Arc<model::Backend> {
        Arc::new(model::Backend {
            key: BackendKey { service: ObjectKey::new("ns", "svc"), port: 80 },
            app_protocol: AppProtocol::Http1,
            endpoints: ports
                .iter()
                .map(|&(port, ready)| ModelEndpoint {
                    address: "127.0.0.1".parse().expect("ip"),
                    port,
                    ready,
                    workload: None,
                    node: None,
                })
                .collect(),
        })
    }

    fn ready(ports: &[u16]) -> Arc<model::Backend> {
        backend(&ports.iter().map(|&p| (p, true)).collect::<Vec<_>>())
    }

    /// A request on the endpoint with `port`, started at `now`, as if the balancer had chosen it.
    fn on(set: &EndpointSet, port: u16, now: Instant) -> InFlight {
        let n = (0..set.len()).find(|&n| set.addr(n).port() == port).expect("endpoint");
        set.start(n, Some(now))
    }

    #[test]
    fn churned_endpoints_are_forgotten_and_big_backends_build_in_linear_time() {
        let registry = Registry::default();
        // 20 configs in a row, each with 2000 endpoints none of the earlier ones had.
        for round in 0..20u16 {
            let ports: Vec<u16> = (0..2000).map(|i| round * 2000 + i + 1).collect();
            let set = registry.endpoints(&ready(&ports));
            assert_eq!(set.len(), 2000);
            // Each one considered, so each has a state in the registry.
            for n in 0..set.len() {
                set.state(n);
            }
            drop(set);
            assert!(registry.remembered() <= 3 * 2000, "round {round}: {}", registry.remembered());
        }
        // Live endpoints keep their state across snapshots.
        let first = registry.endpoints(&ready(&[7]));
        first.state(0);
        let again = registry.endpoints(&ready(&[7]));
        assert!(Arc::ptr_eq(first.state(0), again.state(0)));
    }

    #[test]
    fn never_picks_an_unready_endpoint() {
        let registry = Registry::default();
        let set = registry.endpoints(&backend(&[(1, false), (2, true), (3, false)]));
        for _ in 0..50 {
            assert_eq!(set.pick().expect("one ready").addr.port(), 2);
        }
        assert!(registry.endpoints(&backend(&[(1, false)])).pick().is_none());
    }

    #[test]
    fn the_only_endpoint_is_not_timed_and_a_shared_estimate_is_left_to_sets_that_rank() {
        let registry = Registry::default();
        let alone = registry.endpoints(&ready(&[1]));
        let ranked = registry.endpoints(&ready(&[1, 2]));
        let only = alone.pick().expect("ready");
        assert!(only.started.is_none());
        alone.answered(&only);
        alone.failed(&only);
        drop(only);
        // The state the two sets share still holds the default estimate.
        let estimate = ranked.state(0).health.lock().expect("lock").latency.estimate_ns();
        assert_eq!(estimate, ewma::DEFAULT_RTT.as_nanos() as f64);
        assert!(ranked.pick().expect("ready").started.is_some());
    }

    #[test]
    fn prefers_the_less_loaded_of_two_equally_fast() {
        let registry = Registry::default();
        let set = registry.endpoints(&ready(&[1, 2]));
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        // With two endpoints both are always the candidates: picks alternate as loads cross.
        let held: Vec<_> = (0..6).filter_map(|_| set.pick_at(now, &mut rng)).collect();
        let on_1 = held.iter().filter(|p| p.addr.port() == 1).count();
        assert_eq!(on_1, 3, "{held:?}");
    }

    #[test]
    fn prefers_the_faster_of_two_until_it_is_busier_by_their_latency_ratio() {
        let registry = Registry::default();
        let set = registry.endpoints(&ready(&[1, 2]));
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        // Endpoint 1 answers in 10 ms, endpoint 2 in 100 ms (a peak, taken at once).
        for (port, rtt) in [(1, 10 * MS), (2, 100 * MS)] {
            set.answered_at(&on(&set, port, t0), t0 + rtt);
        }
        // The first sample blends with the 30 ms default (tower and linkerd start the same way),
        // so endpoint 1 costs ~30 ms × (in flight + 1) against endpoint 2's 100 ms × 1.
        let now = t0 + 100 * MS;
        let held: Vec<_> = (0..3).filter_map(|_| set.pick_at(now, &mut rng)).collect();
        assert!(held.iter().all(|p| p.addr.port() == 1), "{held:?}");
        let fourth = set.pick_at(now, &mut rng).expect("ready");
        assert_eq!(fourth.addr.port(), 2, "30 ms × 4 in flight costs more than 100 ms × 1");
    }

    #[test]
    fn a_slow_endpoint_is_tried_again_once_its_peak_has_decayed() {
        let registry = Registry::default();
        let set = registry.endpoints(&ready(&[1, 2]));
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        set.answered_at(&on(&set, 2, t0), t0 + Duration::from_secs(2));
        set.answered_at(&on(&set, 1, t0), t0 + 10 * MS);
        let soon = t0 + Duration::from_secs(2);
        assert_eq!(set.pick_at(soon, &mut rng).map(|e| e.addr.port()), Some(1));
        // Reading decays both estimates alike; a new sample on the fast one re-anchors it, and
        // the slow one's old peak fades below it with time.
        let later = soon + ewma::DECAY * 6;
        let e = set.pick_at(later, &mut rng).expect("ready");
        set.answered_at(&e, later + 10 * MS);
        drop(e);
        let picks: Vec<u16> =
            (0..4).map(|_| set.pick_at(later + 10 * MS, &mut rng).expect("ready").addr.port()).collect();
        assert!(picks.contains(&2), "the slow endpoint gets traffic back: {picks:?}");
    }

    #[test]
    fn connect_failures_eject_an_endpoint_but_never_the_last() {
        let registry = Registry::default();
        let set = registry.endpoints(&ready(&[1, 2, 3]));
        let mut rng = StdRng::seed_from_u64(11);
        let now = Instant::now();
        let fail = |port: u16, _: &mut StdRng| set.connect_failed_at(&on(&set, port, now), now);
        for _ in 1..outlier::CONSECUTIVE_FAILURES {
            assert_eq!(fail(1, &mut rng), None);
        }
        assert_eq!(fail(1, &mut rng), Some(outlier::BASE_EJECTION));
        for _ in 0..100 {
            assert_ne!(set.pick_at(now, &mut rng).expect("ready").addr.port(), 1);
        }
        for _ in 1..outlier::CONSECUTIVE_FAILURES {
            assert_eq!(fail(2, &mut rng), None);
        }
        assert_eq!(fail(2, &mut rng), Some(outlier::BASE_EJECTION));
        for _ in 0..100 {
            let e = set.pick_at(now, &mut rng).expect("ready");
            assert_eq!(e.addr.port(), 3);
            // Endpoint 3 is the last one in: its failures never eject it.
            assert_eq!(set.connect_failed_at(&e, now), None);
        }
        // Once the ejection is over, endpoint 1 is picked again.
        let after = now + outlier::BASE_EJECTION;
        let ports: Vec<u16> =
            (0..100).map(|_| set.pick_at(after, &mut rng).expect("ready").addr.port()).collect();
        assert!(ports.contains(&1), "{ports:?}");
        // On probation: its first failure ejects it again, for twice as long.
        assert_eq!(set.connect_failed_at(&on(&set, 1, after), after), Some(outlier::BASE_EJECTION * 2));
    }

    #[test]
    fn with_every_endpoint_ejected_all_are_used() {
        let registry = Registry::default();
        let set = registry.endpoints(&ready(&[1, 2]));
        let now = Instant::now();
        // Eject both directly: a config change can bring back endpoints ejected in another set.
        for n in 0..set.len() {
            let mut health = set.state(n).health.lock().expect("lock");
            for _ in 0..outlier::CONSECUTIVE_FAILURES {
                health.outlier.connect_failed(now, true);
            }
            assert!(health.outlier.is_ejected(now));
        }
        let mut rng = StdRng::seed_from_u64(5);
        // Held, so the in-flight counts spread them.
        let held: Vec<InFlight> = (0..10).map(|_| set.pick_at(now, &mut rng).expect("still picks")).collect();
        let ports: Vec<u16> = held.iter().map(|e| e.addr.port()).collect();
        assert!(ports.contains(&1) && ports.contains(&2), "{ports:?}");
    }

    #[test]
    fn state_survives_a_new_snapshot() {
        let registry = Registry::default();
        let first = registry.endpoints(&ready(&[7]));
        let _busy = first.pick().expect("ready");
        let second = registry.endpoints(&ready(&[7]));
        assert_eq!(second.state(0).in_flight.load(Ordering::Relaxed), 1);
        // The old set gone, the new one still has it: its requests still count.
        drop(first);
        let _also = second.pick().expect("ready");
        assert_eq!(second.state(0).in_flight.load(Ordering::Relaxed), 2);
    }

    /// A node proxy holds every endpoint of the cluster and sends to few: building a set makes
    /// no per-endpoint state, and picking makes states only for the endpoints considered.
    #[test]
    fn states_are_made_only_for_endpoints_considered() {
        let registry = Registry::default();
        let ports: Vec<u16> = (1..=5000).collect();
        let set = registry.endpoints(&ready(&ports));
        assert_eq!((set.len(), registry.remembered()), (5000, 0));
        let mut rng = StdRng::seed_from_u64(9);
        let now = Instant::now();
        let picked = set.pick_at(now, &mut rng).expect("ready");
        assert!(set.contains(picked.addr));
        // Two candidates were drawn: two states, whichever won.
        assert_eq!(registry.remembered(), 2);
        // Another snapshot of the same backend shares the state of the endpoint in use.
        let next = registry.endpoints(&ready(&ports));
        let n = (0..next.len()).find(|&n| next.addr(n) == picked.addr).expect("same endpoint");
        assert_eq!(next.states[n].get().map(|s| s.in_flight.load(Ordering::Relaxed)), Some(1));
        assert_eq!(registry.remembered(), 2);

        // Ejecting one takes no state for the others either, and it is then passed over.
        drop(picked);
        // Built now, before the failures: it learns of them only through the registry.
        let other = registry.endpoints(&ready(&ports));
        let failing = next.pick_at(now, &mut rng).expect("ready");
        let mut ejected = None;
        for _ in 0..outlier::CONSECUTIVE_FAILURES {
            ejected = next.connect_failed_at(&failing, now);
        }
        assert_eq!(ejected, Some(outlier::BASE_EJECTION));
        assert!(registry.remembered() <= 4, "{}", registry.remembered());
        for _ in 0..200 {
            assert_ne!(next.pick_at(now, &mut rng).expect("ready").addr, failing.addr);
        }
        // Another set still knows it is out.
        let n = (0..other.len()).find(|&n| other.addr(n) == failing.addr).expect("same endpoint");
        assert!(!other.is_in(n, now));
    }
}
