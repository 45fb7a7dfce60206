//! Outlier ejection on connect failures: an endpoint that refused [`CONSECUTIVE_FAILURES`]
//! connections in a row is left out of the balancer for a while, and for twice as long each time
//! it is ejected again, up to [`MAX_EJECTION`]. Any answer resets its record. An endpoint back
//! from an ejection is on probation: its first connect failure ejects it again at once, so a
//! dead endpoint costs one failed request per ejection period, not five.
//!
//! Only connect failures count: they say the endpoint is gone or not listening, which no retry
//! on it will fix. Slow or failing answers are the latency estimate's business.
//!
//! The balancer never ejects every endpoint of a backend ([`super::EndpointSet`] checks): with
//! all of them failing, spreading traffic over all beats sending none.

use std::time::{Duration, Instant};

/// Connect failures in a row that eject an endpoint. Envoy's default for its consecutive-error
/// detectors: one refused connection is often a pod restarting its listener, five in a row is a
/// dead endpoint.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// First ejection. Short: kube's endpoints usually catch up with a dead pod within seconds, and a
/// wrongly ejected endpoint should not sit idle long.
pub const BASE_EJECTION: Duration = Duration::from_secs(5);
/// Longest ejection, reached after a few ejections in a row (5, 10, 20, 40, 60 s): an endpoint
/// that keeps failing is still probed once a minute.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
pub struct Outlier {
    failures: u32,
    /// Ejections since the last success, for the backoff.
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// What a connect failure did to the endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Kept,
    /// Ejected until this instant.
    Ejected(Instant),
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// The endpoint answered: its record is clean again.
    pub fn success(&mut self) {
        self.failures = 0;
        self.ejections = 0;
        self.ejected_until = None;
    }

    /// The endpoint refused a connection. `may_eject` is false when ejecting it would leave its
    /// backend with no endpoint at all.
    pub fn connect_failed(&mut self, now: Instant, may_eject: bool) -> Verdict {
        self.failures = self.failures.saturating_add(1);
        if self.failures < CONSECUTIVE_FAILURES || !may_eject || self.is_ejected(now) {
            return Verdict::Kept;
        }
        let backoff = BASE_EJECTION.saturating_mul(1u32 << self.ejections.min(16)).min(MAX_EJECTION);
        let until = now + backoff;
        self.ejections = self.ejections.saturating_add(1);
        // Probation: one more failure after the ejection is enough for the next one.
        self.failures = CONSECUTIVE_FAILURES - 1;
        self.ejected_until = Some(until);
        Verdict::Ejected(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let now = Instant::now();
        let mut o = Outlier::default();
        for _ in 1..CONSECUTIVE_FAILURES {
            assert_eq!(o.connect_failed(now, true), Verdict::Kept);
        }
        o.success();
        for _ in 1..CONSECUTIVE_FAILURES {
            assert_eq!(o.connect_failed(now, true), Verdict::Kept, "a success restarted the count");
        }
        assert_eq!(o.connect_failed(now, true), Verdict::Ejected(now + BASE_EJECTION));
        assert!(o.is_ejected(now));
        assert!(o.is_ejected(now + BASE_EJECTION - Duration::from_millis(1)));
        assert!(!o.is_ejected(now + BASE_EJECTION));
    }

    #[test]
    fn the_backoff_doubles_up_to_the_cap_and_a_success_resets_it() {
        let mut now = Instant::now();
        let mut o = Outlier::default();
        let mut lengths = Vec::new();
        for round in 0..6 {
            // Five failures the first time; on probation afterwards, one is enough.
            let tries = if round == 0 { CONSECUTIVE_FAILURES } else { 1 };
            let verdict = (0..tries).map(|_| o.connect_failed(now, true)).last();
            let Some(Verdict::Ejected(until)) = verdict else { panic!("ejected in round {round}") };
            lengths.push((until - now).as_secs());
            now = until;
        }
        assert_eq!(lengths, [5, 10, 20, 40, 60, 60]);
        o.success();
        assert!(!o.is_ejected(now));
        let verdict = (0..CONSECUTIVE_FAILURES).map(|_| o.connect_failed(now, true)).last();
        assert_eq!(verdict, Some(Verdict::Ejected(now + BASE_EJECTION)));
    }

    #[test]
    fn the_last_endpoint_is_never_ejected() {
        let now = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..CONSECUTIVE_FAILURES * 3 {
            assert_eq!(o.connect_failed(now, false), Verdict::Kept);
        }
        assert!(!o.is_ejected(now));
        // Once another endpoint is back, the count already gathered ejects it at once.
        assert!(matches!(o.connect_failed(now, true), Verdict::Ejected(_)));
    }
}
