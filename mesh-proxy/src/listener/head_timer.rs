//! The timer hyper's HTTP/1 server times request heads with ([`super::HEADER_READ_TIMEOUT`]),
//! one per client connection.
//!
//! hyper makes a new sleep for every request head it waits for and drops it once the head is
//! in. With hyper-util's tokio timer that is a boxed `tokio::time::Sleep` put into tokio's timer
//! wheel and taken out again, per request: a keep-alive connection pays for a timer it almost
//! never needs. A connection waits for one head at a time and each deadline is later than the
//! one before, so a connection needs one tokio sleep only, allowed to lag: a head's sleep is its
//! deadline; the connection's tokio sleep, still armed at an earlier head's deadline, wakes the
//! connection then and is moved on to the deadline of the head waited for now. The wheel is
//! touched about once per timeout instead of twice per request, and every head still times out
//! at its own deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A connection's tokio sleep, made when it first waits for a head.
type Alarm = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// Give each connection its own ([`crate::listener::for_connection`]): the sleeps it makes share
/// the connection's alarm.
#[derive(Clone, Default)]
pub struct HeadTimer {
    alarm: Alarm,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep { deadline: deadline.into(), alarm: self.alarm.clone() })
    }

    /// tokio's clock (the one its sleeps keep, paused in tests).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One head's deadline on its connection's alarm.
struct HeadSleep {
    deadline: tokio::time::Instant,
    alarm: Alarm,
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // A poisoned lock is a panic in another poll of this connection's sleeps: time it out.
        let Ok(mut alarm) = self.alarm.lock() else { return Poll::Ready(()) };
        let alarm = alarm.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Only an alarm armed later than this deadline (not made by hyper, whose deadlines only
        // move later) would wake too late: it is brought forward.
        if alarm.deadline() > deadline {
            alarm.as_mut().reset(deadline);
        }
        loop {
            if alarm.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if alarm.deadline() >= deadline {
                return Poll::Ready(());
            }
            // An earlier head's deadline went by: on to this one's.
            alarm.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_head_times_out_at_its_own_deadline_not_at_an_earlier_heads() {
        let timer = HeadTimer::default();
        let mut first = timer.sleep_until(timer.now() + TIMEOUT);
        assert!(futures::poll!(&mut first).is_pending());
        // The first head comes in after 4 s; the second is waited for from then.
        tokio::time::advance(Duration::from_secs(4)).await;
        drop(first);
        let waiting = tokio::time::Instant::now();
        timer.sleep_until(timer.now() + TIMEOUT).await;
        // The alarm went off at 10 s, for the first head; the second had until 14 s.
        assert_eq!(waiting.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_waited_for_long_after_the_last_one_gets_the_whole_timeout() {
        let timer = HeadTimer::default();
        let mut first = timer.sleep_until(timer.now() + TIMEOUT);
        assert!(futures::poll!(&mut first).is_pending());
        drop(first);
        // An idle stretch past the first deadline (nothing waited then).
        tokio::time::advance(Duration::from_secs(25)).await;
        let mut second = timer.sleep_until(timer.now() + TIMEOUT);
        assert!(futures::poll!(&mut second).is_pending(), "the stale alarm does not end it");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(futures::poll!(&mut second).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(futures::poll!(&mut second).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_brings_the_alarm_forward() {
        let timer = HeadTimer::default();
        let mut late = timer.sleep_until(timer.now() + TIMEOUT * 3);
        assert!(futures::poll!(&mut late).is_pending());
        drop(late);
        let waiting = tokio::time::Instant::now();
        timer.sleep(TIMEOUT).await;
        assert_eq!(waiting.elapsed(), TIMEOUT);
    }
}
