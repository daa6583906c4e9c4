//! The alert state machine of one check, with hysteresis: ok → pending → firing
//! after [`FIRE_AFTER`] failures in a row; firing → ok after [`RESOLVE_AFTER`]
//! passes in a row. A blip that recovers while pending sends nothing.
//!
//! Pure: time comes in as an argument; persistence is the caller's.

use std::time::Duration;

use crate::health::Status;

pub(crate) const FIRE_AFTER: u32 = 3;
pub(crate) const RESOLVE_AFTER: u32 = 2;

/// Where a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertState {
    Ok,
    Pending { failures: u32 },
    Firing { since: i64, last_notified_at: i64, passes: u32 },
}

/// Something on-call should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Firing,
    Reminder,
    Resolved,
}

impl AlertState {
    /// Feeds one observation; returns the transition it causes, if any.
    /// Only `fail` counts as a failure: `warn` is shown, not paged.
    pub(crate) fn observe(&mut self, status: Status, now: i64, repeat: Option<Duration>) -> Option<Transition> {
        let failing = status == Status::Fail;
        match (*self, failing) {
            (AlertState::Ok, false) => None,
            (AlertState::Ok, true) => {
                *self = AlertState::Pending { failures: 1 };
                self.fire_if_due(now)
            }
            (AlertState::Pending { failures }, true) => {
                *self = AlertState::Pending { failures: failures + 1 };
                self.fire_if_due(now)
            }
            (AlertState::Pending { .. }, false) => {
                *self = AlertState::Ok;
                None
            }
            (AlertState::Firing { since, last_notified_at, .. }, true) => {
                let due = repeat.is_some_and(|r| now - last_notified_at >= r.as_secs() as i64);
                let last_notified_at = if due { now } else { last_notified_at };
                *self = AlertState::Firing { since, last_notified_at, passes: 0 };
                due.then_some(Transition::Reminder)
            }
            (AlertState::Firing { since, last_notified_at, passes }, false) => {
                if passes + 1 >= RESOLVE_AFTER {
                    *self = AlertState::Ok;
                    Some(Transition::Resolved)
                } else {
                    *self = AlertState::Firing { since, last_notified_at, passes: passes + 1 };
                    None
                }
            }
        }
    }

    fn fire_if_due(&mut self, now: i64) -> Option<Transition> {
        match *self {
            AlertState::Pending { failures } if failures >= FIRE_AFTER => {
                *self = AlertState::Firing { since: now, last_notified_at: now, passes: 0 };
                Some(Transition::Firing)
            }
            _ => None,
        }
    }
}

/// The certificate's alert steps: days left at which on-call hears once each.
pub(crate) const CERTIFICATE_STEPS: [i64; 5] = [30, 14, 7, 3, 1];

/// The step `days_left` has reached, if any (the smallest step ≥ days left).
pub(crate) fn certificate_step(days_left: i64) -> Option<i64> {
    CERTIFICATE_STEPS.iter().copied().filter(|step| days_left <= *step).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    fn run(observations: &[Status], repeat: Option<Duration>) -> Vec<Option<Transition>> {
        let mut state = AlertState::Ok;
        observations.iter().enumerate().map(|(i, s)| state.observe(*s, i as i64 * 60, repeat)).collect()
    }

    #[test]
    fn fires_after_three_failures_and_resolves_after_two_passes() {
        let t = run(&[Fail, Fail, Fail, Fail, Pass, Pass, Pass], None);
        assert_eq!(t, vec![None, None, Some(Transition::Firing), None, None, Some(Transition::Resolved), None]);
    }

    #[test]
    fn a_blip_while_pending_sends_nothing() {
        assert!(run(&[Fail, Fail, Pass, Fail, Fail, Pass, Warn], None).iter().all(Option::is_none));
    }

    #[test]
    fn a_single_pass_while_firing_does_not_resolve() {
        let t = run(&[Fail, Fail, Fail, Pass, Fail, Pass, Pass], None);
        assert_eq!(t.iter().flatten().copied().collect::<Vec<_>>(), vec![Transition::Firing, Transition::Resolved]);
    }

    #[test]
    fn reminds_on_the_repeat_period() {
        let t = run(&[Fail; 8], Some(Duration::from_secs(120)));
        assert_eq!(
            t,
            vec![
                None,
                None,
                Some(Transition::Firing),
                None,
                Some(Transition::Reminder),
                None,
                Some(Transition::Reminder),
                None
            ]
        );
    }

    #[test]
    fn certificate_steps() {
        assert_eq!(certificate_step(45), None);
        assert_eq!(certificate_step(30), Some(30));
        assert_eq!(certificate_step(20), Some(30));
        assert_eq!(certificate_step(13), Some(14));
        assert_eq!(certificate_step(2), Some(3));
        assert_eq!(certificate_step(0), Some(1));
        assert_eq!(certificate_step(-5), Some(1));
    }
}
