//! Exponential backoff with jitter, so a fleet does not reconnect in lockstep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays doubling from `initial` to `max`, each scattered by up to ±25%.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay to wait now; the following one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Cheap jitter from the clock's nanoseconds: unpredictability is not needed, spread is.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
        base.mul_f64(factor)
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before dialling again after a session ended. A session the controller
    /// registered proves the controller was up and accepting this agent, however short it
    /// was (a controller restart, a proxy dropping idle connections): the next dial starts
    /// from the initial delay. Only sessions that never registered (refused connection,
    /// unanswered registration) make the delay grow; the jitter spreads a fleet that lost
    /// its controller at once.
    pub fn after_session(&mut self, registered: bool) -> Duration {
        if registered {
            self.reset();
        }
        self.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([100u64, 200, 400, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base.mul_f64(0.75) && *d <= base.mul_f64(1.25),
                "{d:?} vs {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn short_registered_sessions_keep_the_delay_short() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..10 {
            assert!(b.after_session(true) <= Duration::from_millis(125));
        }
    }

    #[test]
    fn unregistered_sessions_grow_the_delay_until_one_registers() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let grown: Vec<Duration> = (0..6).map(|_| b.after_session(false)).collect();
        assert!(grown[5] >= Duration::from_millis(2400), "{grown:?}");
        assert!(b.after_session(true) <= Duration::from_millis(125));
        assert!(b.after_session(false) >= Duration::from_millis(150));
    }
}
