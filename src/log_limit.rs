//! Rate-limited log lines for what strangers can cause at will (refused
//! callbacks): the first lines of each reason in a minute are written, the rest
//! are counted and reported with the next line written, so a flood cannot fill
//! the disk or push the log cap past what an operator needs. The metrics keep
//! the exact counts. Pure: time is passed in.

use std::collections::HashMap;
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

/// Per-reason windows. Reasons are a fixed set of names, so the map stays small.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    windows: HashMap<&'static str, Window>,
}

impl LogLimiter {
    pub(crate) fn admit(&mut self, reason: &'static str, now: Instant) -> Admit {
        let window = self.windows.entry(reason).or_default();
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
}
