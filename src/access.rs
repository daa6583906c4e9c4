//! Who may use a bearer-protected endpoint: reading the presented bearer and
//! throttling the client addresses that keep presenting wrong ones (SPEC §3).
//!
//! Pure decisions: no actix, no clock, no I/O. The caller passes the client
//! address and the current [`Instant`] in, and turns the answer into HTTP. The
//! comparison itself is [`crate::config::Secret::matches`], which does not reveal
//! the token's length; it is deliberately not here, so this module never holds a
//! secret.
//!
//! The throttle counts wrong bearers per client address, never across addresses:
//! one address's failures never throttle another's right bearer. It only decides
//! how a *wrong* bearer is answered; the caller still compares every presented
//! bearer and serves a right one.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The token of an `Authorization` header value of the form `Bearer <token>`
/// (the scheme in any case); `None` for any other scheme or a missing token.
pub(crate) fn presented_bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// How many wrong bearers one address may send within a window before it is throttled.
pub(crate) const WRONG_BEARERS_ALLOWED: usize = 10;
/// The window the wrong bearers are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses tracked at once: a stranger rotating source addresses
/// must not grow the table without bound.
pub(crate) const TRACKED_ADDRESSES: usize = 4096;

/// How to answer a wrong bearer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 401: a plain refusal.
    Refuse,
    /// 429: this address sent too many wrong bearers; a wrong bearer sent after
    /// `retry_after` is answered [`Verdict::Refuse`] again.
    Throttle { retry_after: Duration },
}

/// A [`Verdict`], and whether to log it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WrongBearer {
    pub verdict: Verdict,
    /// `Some(n)`: log now, covering `n` wrong bearers from this address since the
    /// last log line. `None`: stay quiet, this address was logged within a window.
    pub report: Option<u32>,
}

/// One address's recent wrong bearers.
#[derive(Debug)]
struct Failures {
    /// The times of the last [`WRONG_BEARERS_ALLOWED`] wrong bearers, oldest first.
    recent: VecDeque<Instant>,
    /// When this address last sent a missing or wrong bearer.
    last_seen: Instant,
    /// When this address was last logged, and how many refusals since.
    reported_at: Option<Instant>,
    unreported: u32,
}

impl Failures {
    /// Counts one refusal for the log; `Some(n)` when a line is due.
    fn report(&mut self, now: Instant) -> Option<u32> {
        self.last_seen = now;
        self.unreported = self.unreported.saturating_add(1);
        let due = self.reported_at.is_none_or(|at| now.saturating_duration_since(at) >= WINDOW);
        due.then(|| {
            self.reported_at = Some(now);
            std::mem::take(&mut self.unreported)
        })
    }
}

/// Wrong bearers per client address within the last [`WINDOW`], for at most
/// [`TRACKED_ADDRESSES`] addresses (the ones quiet the longest are forgotten first).
#[derive(Debug)]
pub(crate) struct Throttle {
    by_client: HashMap<IpAddr, Failures>,
    capacity: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::with_capacity(TRACKED_ADDRESSES)
    }
}

impl Throttle {
    /// A throttle tracking at most `capacity` addresses (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self { by_client: HashMap::new(), capacity: capacity.max(1) }
    }

    #[cfg(test)]
    /// How many addresses are tracked now.
    pub(crate) fn tracked(&self) -> usize {
        self.by_client.len()
    }

    /// Records a wrong bearer from `client` at `now` and says how to answer it:
    /// from the 11th within [`WINDOW`], [`Verdict::Throttle`].
    pub(crate) fn wrong_bearer(&mut self, client: IpAddr, now: Instant) -> WrongBearer {
        let failures = self.entry(client, now);
        while failures.recent.front().is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW) {
            failures.recent.pop_front();
        }
        // Decided before this one is recorded: it is throttled when the window
        // already holds the allowed number.
        let verdict = match failures.recent.front() {
            Some(&oldest) if failures.recent.len() >= WRONG_BEARERS_ALLOWED => {
                Verdict::Throttle { retry_after: (oldest + WINDOW).saturating_duration_since(now) }
            }
            _ => Verdict::Refuse,
        };
        if failures.recent.len() >= WRONG_BEARERS_ALLOWED {
            failures.recent.pop_front();
        }
        failures.recent.push_back(now);
        WrongBearer { verdict, report: failures.report(now) }
    }

    /// Records a request from `client` that presented no bearer at all. It is not
    /// a guess, so it is never throttled; it only shares the log's pace: `Some(n)`
    /// when a line is due, covering `n` refusals of this address.
    pub(crate) fn missing_bearer(&mut self, client: IpAddr, now: Instant) -> Option<u32> {
        self.entry(client, now).report(now)
    }

    fn entry(&mut self, client: IpAddr, now: Instant) -> &mut Failures {
        let client = bucket(client);
        if !self.by_client.contains_key(&client) {
            self.make_room(now);
        }
        self.by_client.entry(client).or_insert_with(|| Failures {
            recent: VecDeque::with_capacity(WRONG_BEARERS_ALLOWED),
            last_seen: now,
            reported_at: None,
            unreported: 0,
        })
    }

    /// Frees a slot for a new address: forgets the addresses quiet for a whole
    /// window, and if there are none, the one quiet the longest.
    fn make_room(&mut self, now: Instant) {
        if self.by_client.len() < self.capacity {
            return;
        }
        self.by_client.retain(|_, f| now.saturating_duration_since(f.last_seen) < WINDOW);
        if self.by_client.len() < self.capacity {
            return;
        }
        let quietest = self.by_client.iter().min_by_key(|(_, f)| f.last_seen).map(|(client, _)| *client);
        if let Some(client) = quietest {
            self.by_client.remove(&client);
        }
    }
}

/// The key an address is counted under: an IPv4 address as itself (also when it
/// arrives IPv4-mapped), an IPv6 address by its /64, since one host usually holds
/// a whole /64 and could otherwise rotate through it.
fn bucket(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn verdicts(throttle: &mut Throttle, client: IpAddr, at: Instant, n: usize) -> Vec<Verdict> {
        (0..n).map(|_| throttle.wrong_bearer(client, at).verdict).collect()
    }

    #[test]
    fn the_bearer_is_read_from_a_bearer_authorization_in_any_case() {
        assert_eq!(presented_bearer("Bearer abc"), Some("abc"));
        assert_eq!(presented_bearer("bearer abc "), Some("abc"));
        assert_eq!(presented_bearer("BEARER  abc"), Some("abc"));
        assert_eq!(presented_bearer("Bearer "), Some(""));
        assert_eq!(presented_bearer("Basic YWJjOmRlZg=="), None);
        assert_eq!(presented_bearer("Bearer"), None);
        assert_eq!(presented_bearer("Bearerabc"), None);
        assert_eq!(presented_bearer(""), None);
    }

    #[test]
    fn the_eleventh_wrong_bearer_within_a_minute_is_throttled_until_the_first_leaves_the_window() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        for i in 0..10 {
            let at = start + Duration::from_secs(i);
            assert_eq!(throttle.wrong_bearer(A, at).verdict, Verdict::Refuse, "wrong bearer {}", i + 1);
        }
        let eleventh = throttle.wrong_bearer(A, start + Duration::from_secs(30)).verdict;
        assert_eq!(eleventh, Verdict::Throttle { retry_after: Duration::from_secs(30) });
        // The 11th was recorded too: the window now holds seconds 1..=9 and 30.
        let at_60 = throttle.wrong_bearer(A, start + Duration::from_secs(60)).verdict;
        assert_eq!(at_60, Verdict::Throttle { retry_after: Duration::from_secs(1) });
    }

    #[test]
    fn a_guesser_who_waits_retry_after_is_refused_not_throttled() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        verdicts(&mut throttle, A, start, 10);
        let Verdict::Throttle { retry_after } = throttle.wrong_bearer(A, start).verdict else {
            panic!("the 11th wrong bearer is throttled");
        };
        assert_eq!(retry_after, WINDOW);
        assert_eq!(throttle.wrong_bearer(A, start + retry_after).verdict, Verdict::Refuse);
    }

    #[test]
    fn wrong_bearers_spread_over_more_than_a_minute_are_never_throttled() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        for i in 0..100 {
            let at = start + Duration::from_secs(7 * i);
            assert_eq!(throttle.wrong_bearer(A, at).verdict, Verdict::Refuse);
        }
    }

    #[test]
    fn one_address_failures_do_not_throttle_another() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        verdicts(&mut throttle, A, start, 50);
        assert_eq!(throttle.wrong_bearer(B, start).verdict, Verdict::Refuse);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64_and_a_mapped_ipv4_as_itself() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        for i in 0..10u16 {
            throttle.wrong_bearer(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i)), start);
        }
        let other_host_same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        assert!(matches!(throttle.wrong_bearer(other_host_same_64, start).verdict, Verdict::Throttle { .. }));
        let other_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(throttle.wrong_bearer(other_64, start).verdict, Verdict::Refuse);

        verdicts(&mut throttle, A, start, 10);
        let IpAddr::V4(a) = A else { unreachable!("A is IPv4") };
        assert!(matches!(
            throttle.wrong_bearer(IpAddr::V6(a.to_ipv6_mapped()), start).verdict,
            Verdict::Throttle { .. }
        ));
    }

    #[test]
    fn the_table_never_tracks_more_than_its_capacity_and_forgets_the_quietest_first() {
        let start = Instant::now();
        let mut throttle = Throttle::with_capacity(4);
        verdicts(&mut throttle, A, start, 10);
        for i in 0..1000u32 {
            let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            throttle.wrong_bearer(client, start + Duration::from_millis(u64::from(i) + 1));
            assert!(throttle.tracked() <= 4, "tracked {} after {} addresses", throttle.tracked(), i + 1);
        }
        // A, quiet the longest, was forgotten: its next wrong bearer starts afresh.
        assert_eq!(throttle.wrong_bearer(A, start + Duration::from_secs(2)).verdict, Verdict::Refuse);
    }

    #[test]
    fn the_default_table_is_capped_at_tracked_addresses() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        for i in 0..(TRACKED_ADDRESSES as u32 + 500) {
            throttle.wrong_bearer(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), start);
        }
        assert_eq!(throttle.tracked(), TRACKED_ADDRESSES);
    }

    #[test]
    fn a_busy_address_is_logged_once_per_window_with_the_count_since_the_last_line() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        let reports: Vec<Option<u32>> =
            (0..5).map(|i| throttle.wrong_bearer(A, start + Duration::from_secs(i)).report).collect();
        assert_eq!(reports, [Some(1), None, None, None, None]);
        assert_eq!(throttle.wrong_bearer(A, start + WINDOW).report, Some(5));
        assert_eq!(throttle.wrong_bearer(B, start).report, Some(1), "each address is logged on its own");
    }

    #[test]
    fn missing_bearers_share_the_log_pace_but_are_never_counted_as_guesses() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        assert_eq!(throttle.missing_bearer(A, start), Some(1));
        for _ in 0..50 {
            assert_eq!(throttle.missing_bearer(A, start), None);
        }
        let first_guess = throttle.wrong_bearer(A, start);
        assert_eq!(first_guess, WrongBearer { verdict: Verdict::Refuse, report: None });
        assert_eq!(throttle.missing_bearer(A, start + WINDOW), Some(52));
    }
}
