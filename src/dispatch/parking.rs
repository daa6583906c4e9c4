//! Parking a channel's outbox while WeCom refuses its egress IP (60020, SPEC
//! §14): every call would fail the same way until someone adds the IP to the
//! app's trusted IPs, so instead of each action retrying on its own back-off (a
//! retry storm), one action is tried every [`RETRY_EVERY_SECS`] and no other
//! action of that channel calls WeCom meanwhile; when the trial gets through,
//! the put-off actions go at once. Other channels are not touched.
//!
//! Owns: the decision, pure with time passed in (the checks' clock, Unix
//! seconds) — [`Parking::admit`] says go, try, or wait; [`Parking::tried`] what
//! a trial's outcome means; [`Parking::due_trials`] and [`Parking::lift`] which
//! put-off actions to release. Memory: the ids of a parked channel's put-off
//! actions (bounded by [`MAX_REMEMBERED`]).
//!
//! Deliberately not here: whether WeCom refuses a channel (`egress::Egress`
//! learns it from every answer), putting actions off and releasing them (the
//! outbox and the store), and other replicas: each parks for itself, so N
//! replicas try up to N actions a minute.

use std::collections::HashMap;

use crate::channels::ChannelName;

/// A parked channel tries one action this often.
pub(crate) const RETRY_EVERY_SECS: i64 = 60;

/// Put-off action ids remembered per channel; beyond them actions come back by
/// their own due time.
const MAX_REMEMBERED: usize = 100_000;

/// What an action of a channel may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The channel is not parked.
    Go,
    /// The one trial of a parked channel: call WeCom, then [`Parking::tried`].
    Trial,
    /// Parked: put it off for this many seconds (it is released earlier when
    /// the channel resumes).
    Wait(i64),
}

#[derive(Debug, Default)]
struct Park {
    /// When the next trial may start.
    next_try: i64,
    /// A trial is under way.
    trying: bool,
    /// A put-off action was released for the next trial and not claimed yet.
    trial_released: bool,
    /// The actions put off, released together when the channel resumes.
    put_off: Vec<i64>,
}

/// The parked channels of this replica's outbox.
#[derive(Debug, Default)]
pub(crate) struct Parking {
    parked: HashMap<ChannelName, Park>,
}

impl Parking {
    /// Whether action `id` of `channel` may call WeCom at `now`; `refused`: WeCom's
    /// last answer on the channel was 60020.
    pub(crate) fn admit(&mut self, channel: &ChannelName, refused: bool, id: i64, now: i64) -> Decision {
        if !refused {
            return Decision::Go;
        }
        let park = self
            .parked
            .entry(channel.clone())
            .or_insert_with(|| Park { next_try: now + RETRY_EVERY_SECS, ..Park::default() });
        if !park.trying && now >= park.next_try {
            park.trying = true;
            park.trial_released = false;
            park.next_try = now + RETRY_EVERY_SECS;
            park.put_off.retain(|other| *other != id);
            return Decision::Trial;
        }
        if !park.put_off.contains(&id) && park.put_off.len() < MAX_REMEMBERED {
            park.put_off.push(id);
        }
        Decision::Wait((park.next_try - now).max(1))
    }

    /// A trial of `channel` ended at `now`, WeCom still refusing it or not: the
    /// next trial a period later, or the park lifted and its put-off actions to
    /// release.
    pub(crate) fn tried(&mut self, channel: &ChannelName, refused: bool, now: i64) -> Vec<i64> {
        if refused {
            if let Some(park) = self.parked.get_mut(channel) {
                park.trying = false;
                park.next_try = now + RETRY_EVERY_SECS;
            }
            return Vec::new();
        }
        self.parked.remove(channel).map(|park| park.put_off).unwrap_or_default()
    }

    /// The parks of channels WeCom no longer refuses (another call got
    /// through), lifted: their put-off actions, to release.
    pub(crate) fn lift(&mut self, refused: impl Fn(&ChannelName) -> bool) -> Vec<i64> {
        let lifted: Vec<ChannelName> =
            self.parked.iter().filter(|(c, park)| !park.trying && !refused(c)).map(|(c, _)| c.clone()).collect();
        lifted.iter().filter_map(|c| self.parked.remove(c)).flat_map(|park| park.put_off).collect()
    }

    /// For each park whose next trial is due at `now`, one put-off action to
    /// release for it.
    pub(crate) fn due_trials(&mut self, now: i64) -> Vec<i64> {
        self.parked
            .values_mut()
            .filter(|park| !park.trying && !park.trial_released && now >= park.next_try)
            .filter_map(|park| {
                let first = park.put_off.first().copied()?;
                park.trial_released = true;
                Some(first)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr() -> ChannelName {
        ChannelName::parse("hr").expect("name")
    }

    #[test]
    fn a_refused_channel_tries_one_action_a_minute_and_holds_the_rest() {
        let mut parking = Parking::default();
        assert_eq!(parking.admit(&hr(), true, 1, 1_000), Decision::Wait(60), "parked at the first 60020");
        assert_eq!(parking.admit(&hr(), true, 2, 1_001), Decision::Wait(59));
        assert_eq!(parking.due_trials(1_059), Vec::<i64>::new());
        assert_eq!(parking.due_trials(1_060), vec![1], "one put-off action is released for the trial");
        assert_eq!(parking.due_trials(1_061), Vec::<i64>::new(), "once");
        assert_eq!(parking.admit(&hr(), true, 1, 1_061), Decision::Trial);
        assert_eq!(parking.admit(&hr(), true, 2, 1_061), Decision::Wait(60), "nothing else meanwhile");
        assert_eq!(parking.tried(&hr(), true, 1_062), Vec::<i64>::new());
        assert_eq!(parking.admit(&hr(), true, 1, 1_063), Decision::Wait(59));
        // Over ten minutes at most ten trials, whatever is queued.
        let mut trials = 0;
        for now in 1_063..1_663 {
            for id in 1..=50 {
                if parking.admit(&hr(), true, id, now) == Decision::Trial {
                    trials += 1;
                    parking.tried(&hr(), true, now);
                }
            }
        }
        assert_eq!(trials, 10);
    }

    #[test]
    fn a_trial_that_gets_through_releases_everything_and_other_channels_never_wait() {
        let mut parking = Parking::default();
        assert_eq!(parking.admit(&ChannelName::app(), false, 9, 0), Decision::Go);
        parking.admit(&hr(), true, 1, 0);
        parking.admit(&hr(), true, 2, 0);
        parking.admit(&hr(), true, 3, 0);
        assert_eq!(parking.admit(&ChannelName::app(), false, 9, 0), Decision::Go);
        assert_eq!(parking.admit(&hr(), true, 2, 60), Decision::Trial);
        assert_eq!(parking.tried(&hr(), false, 61), vec![1, 3]);
        assert_eq!(parking.admit(&hr(), false, 1, 61), Decision::Go);
    }

    #[test]
    fn a_park_is_lifted_when_another_call_got_through() {
        let mut parking = Parking::default();
        parking.admit(&hr(), true, 1, 0);
        assert_eq!(parking.lift(|_| true), Vec::<i64>::new());
        assert_eq!(parking.lift(|_| false), vec![1]);
        assert!(parking.parked.is_empty());
    }
}
