//! Peak-EWMA latency: the load estimate of linkerd2-proxy and `tower::load::PeakEwma`.
//!
//! A sample above the estimate replaces it at once (the *peak*: an endpoint that just got slow is
//! avoided right away); a sample below it is blended in with a weight that grows with the time
//! since the last sample, so the estimate decays towards recent latency and a recovered endpoint
//! wins its traffic back gradually. Between samples the estimate read by the balancer decays
//! towards zero (as tower's does), so an endpoint avoided after a peak is tried again rather than
//! starved forever. The balancer's cost multiplies it by the requests in flight.
//!
//! Every function takes the time as an argument, so tests drive it with exact instants.

use std::time::{Duration, Instant};

/// Time constant of the decay: after `DECAY` without a new peak, an old peak has lost ~63% of
/// its excess over the recent samples. linkerd2-proxy's 10 s: long enough that one fast answer
/// does not erase a slow endpoint's record (no flapping between endpoints every few requests),
/// short enough that a recovered endpoint is back to its share within a minute.
pub const DECAY: Duration = Duration::from_secs(10);

/// The estimate of an endpoint nothing was measured on yet. 30 ms (linkerd2-proxy's default) is
/// slower than a healthy in-cluster answer, so a new endpoint is probed with a few requests
/// rather than flooded, and faster than a struggling one, so it is not starved either.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// Nanoseconds, as a float so blending does not round away small differences.
    estimate_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    pub fn new(now: Instant) -> Self {
        PeakEwma { estimate_ns: DEFAULT_RTT.as_nanos() as f64, updated: now }
    }

    /// Folds in one measured latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        self.estimate_ns = if rtt_ns > self.estimate_ns {
            rtt_ns
        } else {
            let w = self.weight(now);
            self.estimate_ns * w + rtt_ns * (1.0 - w)
        };
        self.updated = self.updated.max(now);
    }

    /// The estimate as of the last sample, in nanoseconds.
    pub fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }

    /// The estimate as the balancer sees it at `now`: decayed towards zero since the last sample.
    pub fn estimate_at(&self, now: Instant) -> f64 {
        self.estimate_ns * self.weight(now)
    }

    /// Weight of the old estimate: 1 for a sample at the same instant, towards 0 as time passes.
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_at_the_default() {
        let now = Instant::now();
        assert_eq!(PeakEwma::new(now).estimate_ns(), DEFAULT_RTT.as_nanos() as f64);
    }

    #[test]
    fn a_peak_is_taken_at_once() {
        let now = Instant::now();
        let mut e = PeakEwma::new(now);
        e.observe(500 * MS, now);
        assert_eq!(e.estimate_ns(), (500 * MS).as_nanos() as f64);
    }

    #[test]
    fn lower_samples_decay_the_estimate_with_time() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe(100 * MS, t0);
        // At the same instant a lower sample changes nothing: weight 1.
        e.observe(10 * MS, t0);
        assert_eq!(e.estimate_ns(), (100 * MS).as_nanos() as f64);
        // One time constant later the estimate keeps e^-1 of the old value.
        let t1 = t0 + DECAY;
        e.observe(10 * MS, t1);
        let expected = 100e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((e.estimate_ns() - expected).abs() < 1.0, "{} vs {expected}", e.estimate_ns());
        // Long after, it is the recent latency.
        for i in 1..=20 {
            e.observe(10 * MS, t1 + DECAY * i);
        }
        assert!((e.estimate_ns() - 10e6).abs() < 1e3, "{}", e.estimate_ns());
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero_when_read() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe(100 * MS, t0);
        assert_eq!(e.estimate_at(t0), 100e6);
        let read = e.estimate_at(t0 + DECAY);
        assert!((read - 100e6 * (-1f64).exp()).abs() < 1.0, "{read}");
        assert_eq!(e.estimate_ns(), 100e6, "reading does not change the estimate");
    }

    #[test]
    fn samples_out_of_order_never_move_time_back() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0 + DECAY);
        e.observe(1 * MS, t0);
        assert_eq!(e.estimate_ns(), DEFAULT_RTT.as_nanos() as f64, "an earlier instant weighs as now");
    }
}
