//! Exponential back-off: the one formula every retry loop uses (the outbox, the
//! kf syncer, the mailer, WeCom's "system busy").
//!
//! Deliberately not here: sleeping or scheduling. Callers get a delay and decide
//! whether to sleep it or store it as a due time, so the formula stays pure.

use std::time::Duration;

/// Delays that double from `first` up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    /// The delay after `failures` failures in a row (0 or 1 → `first`): `first`,
    /// 2 × `first`, 4 × `first` …, never more than `cap`.
    pub(crate) fn delay(self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_never_overflow() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(600));
        let secs: Vec<u64> = (0..6).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 1, 2, 4, 8, 16]);
        assert_eq!(backoff.delay(11), Duration::from_secs(600));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(600));
    }
}
