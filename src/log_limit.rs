//! Rate-limited log lines for what strangers can cause at will (refused
//! callbacks) and for failures that repeat with every request or retry (a
//! database outage, a failing `FORWARD_URL`): the first lines of each reason in
//! a minute are written, the rest are counted and reported with the next line
//! written, so a flood cannot fill the disk or push the log cap past what an
//! operator needs. The metrics keep the exact counts. [`LogLimiter`] is pure
//! (time passed in); [`SharedLogLimiter`] is it behind a lock on the real clock,
//! one per component that logs such lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per reason per window.
const LINES_PER_WINDOW: u64 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Whether to write a line now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it, saying how many lines of this reason were suppressed before it.
    Write { suppressed: u64 },
    /// Count it only.
    Suppress,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    written: u64,
    suppressed: u64,
}

/// Per-reason windows. Reasons are a fixed set of names (outcomes, action kinds),
/// never text from outside, so the map stays small.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    windows: HashMap<String, Window>,
}

impl LogLimiter {
    pub(crate) fn admit(&mut self, reason: &str, now: Instant) -> Admit {
        if !self.windows.contains_key(reason) {
            self.windows.insert(reason.to_owned(), Window::default());
        }
        let Some(window) = self.windows.get_mut(reason) else { return Admit::Write { suppressed: 0 } };
        if window.started.is_none_or(|started| now.duration_since(started) >= WINDOW) {
            window.started = Some(now);
            window.written = 0;
        }
        if window.written < LINES_PER_WINDOW {
            window.written += 1;
            Admit::Write { suppressed: std::mem::take(&mut window.suppressed) }
        } else {
            window.suppressed += 1;
            Admit::Suppress
        }
    }
}

/// A [`LogLimiter`] shared by a component's tasks, on the real clock.
#[derive(Debug, Default)]
pub(crate) struct SharedLogLimiter(Mutex<LogLimiter>);

impl SharedLogLimiter {
    /// `Some` when a line of `reason` may be written now, carrying what to append
    /// to it; `None` when it is only counted.
    pub(crate) fn admit(&self, reason: &str) -> Option<Suppressed> {
        let admitted = match self.0.lock() {
            Ok(mut limiter) => limiter.admit(reason, Instant::now()),
            // A panic elsewhere while holding it: log rather than lose the line.
            Err(_) => Admit::Write { suppressed: 0 },
        };
        match admitted {
            Admit::Write { suppressed } => Some(Suppressed(suppressed)),
            Admit::Suppress => None,
        }
    }
}

/// How many lines of a reason were not written since the last one; shown as a
/// suffix of the next line (nothing when none were).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suppressed(pub(crate) u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more like this in the last minute, not logged)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_minute_per_reason_then_a_count_with_the_next_line() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.admit("bad_signature", start), Admit::Write { suppressed: 0 });
        }
        for _ in 0..5_000 {
            assert_eq!(limiter.admit("bad_signature", start + Duration::from_secs(1)), Admit::Suppress);
        }
        assert_eq!(limiter.admit("too_large", start), Admit::Write { suppressed: 0 }, "reasons apart");
        assert_eq!(limiter.admit("bad_signature", start + WINDOW), Admit::Write { suppressed: 5_000 });
        assert_eq!(limiter.admit("bad_signature", start + WINDOW), Admit::Write { suppressed: 0 });
    }

    #[test]
    fn a_shared_limiter_writes_ten_lines_and_names_the_rest_in_the_next() {
        let shared = SharedLogLimiter::default();
        let written = (0..100).filter_map(|_| shared.admit("journal")).collect::<Vec<_>>();
        assert_eq!(written, vec![Suppressed(0); 10]);
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(90).to_string(), " (90 more like this in the last minute, not logged)");
    }
}
