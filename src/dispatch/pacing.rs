//! Pacing of WeCom sends under WeCom's own frequency limits (SPEC §15): an app
//! `message/send` reaches one member at most 30 times a minute and 1,000 times
//! an hour (WeCom silently drops the rest), and this replica sends at most
//! [`GLOBAL`] texts (app and kf) in all, so a flood never turns into the burst
//! that spends the corp's API quota (45009 for everyone, replies included).
//!
//! Owns: the decision, pure with time passed in — [`Pacer::admit`] says "go"
//! (and counts the call) or how long to wait. A sliding log per member and one
//! for the replica: exact, never one call over a limit. Memory is bounded by the
//! global pace: only admitted calls are logged, at most 1,000 a minute, each
//! kept for the longest span (an hour): ≤ 61,000 instants (~1 MB), and members
//! whose log is empty are forgotten.
//!
//! Deliberately not here: what an over-limit action does (the outbox reschedules
//! it, see `Outbox::attempt`), and other replicas: each replica paces its own
//! calls, so N replicas may reach one member up to N times the limit (SECURITY.md).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most `limit` calls within any `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub limit: usize,
    pub span: Duration,
}

/// WeCom's limits for app `message/send` to one member: 30 a minute, 1,000 an hour.
pub(crate) const PER_MEMBER: [Rule; 2] =
    [Rule { limit: 30, span: Duration::from_secs(60) }, Rule { limit: 1_000, span: Duration::from_secs(3_600) }];

/// This replica's own pace for every text it sends (app and kf): 20 a second,
/// 1,000 a minute — a tenth of WeCom's per-corp limit for one API (10,000 a
/// minute), which leaves room for other replicas and the corp's other tools.
pub(crate) const GLOBAL: [Rule; 2] =
    [Rule { limit: 20, span: Duration::from_secs(1) }, Rule { limit: 1_000, span: Duration::from_secs(60) }];

/// How often idle members are swept out of the map.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The sliding windows of one replica.
#[derive(Debug)]
pub(crate) struct Pacer {
    member_rules: &'static [Rule],
    global_rules: &'static [Rule],
    members: HashMap<String, VecDeque<Instant>>,
    global: VecDeque<Instant>,
    last_sweep: Option<Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new(&PER_MEMBER, &GLOBAL)
    }
}

/// Whether `at` has left a window of `span` ending at `now`.
fn expired(at: Instant, span: Duration, now: Instant) -> bool {
    now.saturating_duration_since(at) >= span
}

/// How long until one more call fits every rule, given `log` (oldest first);
/// `None`: it fits now.
fn wait(log: &VecDeque<Instant>, rules: &[Rule], now: Instant) -> Option<Duration> {
    rules
        .iter()
        .filter_map(|rule| {
            let first_inside = log.partition_point(|at| expired(*at, rule.span, now));
            let inside = log.len() - first_inside;
            // The call that must leave the window before one more fits.
            (inside >= rule.limit).then(|| {
                let leaving = log[first_inside + inside - rule.limit];
                (leaving + rule.span).saturating_duration_since(now)
            })
        })
        .max()
}

/// Drops what no rule looks at any more: instants past the longest span, and
/// beyond the largest limit.
fn trim(log: &mut VecDeque<Instant>, rules: &[Rule], now: Instant) {
    let span = rules.iter().map(|r| r.span).max().unwrap_or_default();
    let keep = rules.iter().map(|r| r.limit).max().unwrap_or_default();
    while log.front().is_some_and(|at| expired(*at, span, now)) || log.len() > keep {
        log.pop_front();
    }
}

impl Pacer {
    pub(crate) fn new(member_rules: &'static [Rule], global_rules: &'static [Rule]) -> Self {
        Self { member_rules, global_rules, members: HashMap::new(), global: VecDeque::new(), last_sweep: None }
    }

    /// A call to `members` (none for a kf text, which the kf rules govern) at
    /// `now`: `Ok` and counted when every window has room, else how long until
    /// they all do (nothing counted). At least a millisecond when not `Ok`.
    pub(crate) fn admit(&mut self, members: &[&str], now: Instant) -> Result<(), Duration> {
        self.sweep(now);
        let mut longest = wait(&self.global, self.global_rules, now);
        for member in members {
            if let Some(log) = self.members.get(*member) {
                longest = longest.max(wait(log, self.member_rules, now));
            }
        }
        if let Some(longest) = longest {
            return Err(longest.max(Duration::from_millis(1)));
        }
        self.global.push_back(now);
        trim(&mut self.global, self.global_rules, now);
        for member in members {
            let log = self.members.entry((*member).to_owned()).or_default();
            log.push_back(now);
            trim(log, self.member_rules, now);
        }
        Ok(())
    }

    /// Forgets members none of whose calls is inside a window any more.
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|at| !expired(at, SWEEP_EVERY, now)) {
            return;
        }
        self.last_sweep = Some(now);
        let rules = self.member_rules;
        self.members.retain(|_, log| {
            trim(log, rules, now);
            !log.is_empty()
        });
    }

    /// Instants held, members and the replica's together (the memory bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.global.len() + self.members.values().map(VecDeque::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    /// Generous global rules, so the tests of one member's window see only it.
    const WIDE: [Rule; 1] = [Rule { limit: 1_000_000, span: SECOND }];

    #[test]
    fn thirty_calls_a_minute_reach_one_member_and_the_31st_waits_for_the_first_to_leave_the_window() {
        let mut pacer = Pacer::new(&PER_MEMBER, &WIDE);
        let start = Instant::now();
        for i in 0..30 {
            assert_eq!(pacer.admit(&["zhangsan"], start + i * SECOND), Ok(()), "call {}", i + 1);
        }
        let at = start + 30 * SECOND;
        assert_eq!(pacer.admit(&["zhangsan"], at), Err(30 * SECOND), "the first call leaves at 60 s");
        assert_eq!(pacer.admit(&["zhangsan"], start + 59 * SECOND), Err(SECOND), "a refusal counts nothing");
        assert_eq!(pacer.admit(&["zhangsan"], start + 60 * SECOND), Ok(()));
        assert_eq!(pacer.admit(&["zhangsan"], start + 60 * SECOND), Err(SECOND), "the second call leaves at 61 s");
    }

    #[test]
    fn other_members_proceed_while_one_waits_and_a_call_to_several_counts_for_each() {
        let mut pacer = Pacer::new(&PER_MEMBER, &WIDE);
        let now = Instant::now();
        for _ in 0..30 {
            assert_eq!(pacer.admit(&["zhangsan"], now), Ok(()));
        }
        assert!(pacer.admit(&["zhangsan"], now).is_err());
        assert_eq!(pacer.admit(&["lisi"], now), Ok(()));
        assert!(pacer.admit(&["lisi", "zhangsan"], now).is_err(), "one full member holds the whole call");
        assert_eq!(pacer.admit(&["lisi", "wangwu"], now), Ok(()));
        assert_eq!(pacer.members["lisi"].len(), 2);
        assert_eq!(pacer.members["wangwu"].len(), 1);
    }

    #[test]
    fn a_thousand_an_hour_holds_even_at_a_pace_the_minute_allows() {
        let mut pacer = Pacer::new(&PER_MEMBER, &WIDE);
        let start = Instant::now();
        // 30 a minute for 34 minutes: the hour's limit comes first.
        let mut admitted = 0;
        let mut at = start;
        while admitted < 1_000 {
            assert_eq!(pacer.admit(&["zhangsan"], at), Ok(()), "call {}", admitted + 1);
            admitted += 1;
            at += 2 * SECOND;
        }
        let wait = pacer.admit(&["zhangsan"], at).expect_err("the 1,001st within the hour");
        assert_eq!(at + wait, start + Duration::from_secs(3_600), "until the first call is an hour old");
        assert_eq!(pacer.admit(&["zhangsan"], start + Duration::from_secs(3_600)), Ok(()));
    }

    #[test]
    fn the_replica_paces_every_text_and_a_burst_is_spread_over_seconds() {
        let mut pacer = Pacer::default();
        let now = Instant::now();
        let admitted = (0..2_512).filter(|i| pacer.admit(&[&format!("m{i}")], now).is_ok()).count();
        assert_eq!(admitted, 20, "20 a second, whatever the recipients");
        assert_eq!(pacer.admit(&[], now), Err(SECOND), "kf texts too");
        // Over a minute, at most 1,000.
        let mut sent = 20;
        for ms in (1..=120_000).step_by(10) {
            if pacer.admit(&[], now + Duration::from_millis(ms)).is_ok() {
                sent += 1;
            }
            if ms == 59_990 {
                assert_eq!(sent, 1_000, "the minute's limit");
            }
        }
    }

    #[test]
    fn memory_is_bounded_by_the_global_pace_and_idle_members_are_forgotten() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        let mut admitted = 0;
        for i in 0..20_000u32 {
            if pacer.admit(&[&format!("member-{i}")], start + Duration::from_millis(u64::from(i) * 10)).is_ok() {
                admitted += 1;
            }
        }
        // 200 s at 1,000 a minute: what the replica admitted is all it holds.
        assert!(admitted <= 4 * 1_000, "{admitted}");
        assert_eq!(pacer.members.len(), admitted, "one log per member called within the hour");
        assert!(pacer.held() <= 2 * admitted, "{} instants held", pacer.held());
        let later = start + Duration::from_secs(2 * 3_600);
        assert_eq!(pacer.admit(&["someone"], later), Ok(()));
        assert_eq!(pacer.members.len(), 1, "only the member of the last hour");
        assert_eq!(pacer.held(), 2);
    }
}
