//! The callback pipeline's counts: `wechat_api_callbacks_total` by channel and
//! [`Outcome`], the handling time of authenticated callbacks, and the accepted /
//! refused totals of the status page. Here, beside the domain, because the labels
//! are the domain's: telemetry keeps the family, the recorder and the latency
//! window, and knows no `Channel` or `Outcome`.
//!
//! An inherent `impl Metrics` so the route keeps calling
//! `state.metrics.record_callback(…)`; the hot path finds its channel's rows in
//! a [`CounterTable`] registered once (one hash lookup of the name, no
//! allocation, nothing registered).
//!
//! Deliberately not here: deciding the outcome (`callback`, `routes::callback`).

use std::time::Duration;

use crate::callback::Outcome;
use crate::channels::ChannelName;
use crate::telemetry::{CounterTable, Metrics, CALLBACKS_TOTAL};

/// The `channel` label of a callback refused before its channel was known.
const UNKNOWN_CHANNEL: &str = "unknown";

impl Metrics {
    /// Makes every (channel, outcome) series of `channels` (every configured
    /// channel: SPEC §11, §12) and of `unknown` exist at zero: called when the
    /// application is built, so they are in the first scrape.
    pub(crate) fn declare_callbacks<'a>(&self, channels: impl IntoIterator<Item = &'a ChannelName>) {
        let names: Vec<&str> = channels.into_iter().map(ChannelName::as_str).collect();
        self.callbacks(|metrics| register(metrics, &names));
    }

    /// Counts a callback; `elapsed` is the appliance's own work on an
    /// authenticated one (from its complete body to the answer), `None` for
    /// refusals, which are counted but never timed.
    pub(crate) fn record_callback(&self, channel: Option<&ChannelName>, outcome: Outcome, elapsed: Option<Duration>) {
        let table = self.callback_table();
        match index(table, channel, outcome) {
            Some(row) => table.increment(row),
            None => {
                let name = channel.map_or(UNKNOWN_CHANNEL, ChannelName::as_str);
                let labels = [("channel", name.to_owned()), ("outcome", outcome.as_str().to_owned())];
                self.counter(CALLBACKS_TOTAL, &labels).increment(1);
            }
        }
        if let Some(elapsed) = elapsed {
            self.time_callback(elapsed);
        }
        self.count_callback(matches!(outcome, Outcome::Ok | Outcome::Duplicate));
    }

    /// The table, with `unknown`'s rows only if no channel was declared (a
    /// channel's series are then registered at its first callback).
    fn callback_table(&self) -> &CounterTable {
        self.callbacks(|metrics| register(metrics, &[]))
    }
}

/// The table of `unknown` then `channels`, a group of rows each (its name the
/// group's key) with every outcome in `Outcome::ALL` order.
fn register(metrics: &Metrics, channels: &[&str]) -> CounterTable {
    let names = || std::iter::once(UNKNOWN_CHANNEL).chain(channels.iter().copied());
    let rows = names().flat_map(|channel| {
        Outcome::ALL
            .iter()
            .map(move |outcome| vec![("channel", channel.to_owned()), ("outcome", outcome.as_str().to_owned())])
    });
    let groups = names().enumerate().map(|(group, name)| (name.to_owned(), group * Outcome::ALL.len()));
    metrics.table(CALLBACKS_TOTAL, rows).grouped(groups)
}

/// The row of (channel, outcome) in `table`; `None` for a channel that was not
/// declared.
fn index(table: &CounterTable, channel: Option<&ChannelName>, outcome: Outcome) -> Option<usize> {
    let group = table.group(channel.map_or(UNKNOWN_CHANNEL, ChannelName::as_str))?;
    let column = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
    Some(group + column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::BuildInfo;

    fn metrics() -> Metrics {
        Metrics::new(&BuildInfo { version: "1".into(), backend: "sqlite", replica: "r".into() })
    }

    #[test]
    fn callbacks_are_counted_by_channel_and_outcome_and_unknown_channels_apart() {
        let metrics = metrics();
        metrics.declare_callbacks(&[ChannelName::app(), ChannelName::kf()]);
        assert!(metrics.render().contains("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"} 0"));
        metrics.record_callback(Some(&ChannelName::kf()), Outcome::Ok, Some(Duration::from_millis(2)));
        let hr = ChannelName::parse("hr").expect("a channel name");
        metrics.record_callback(Some(&hr), Outcome::Duplicate, None);
        metrics.record_callback(None, Outcome::BadSignature, None);
        let text = metrics.render();
        assert!(text.contains("wechat_api_callbacks_total{channel=\"kf\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callbacks_total{channel=\"unknown\",outcome=\"bad_signature\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callback_duration_seconds_count 1"), "{text}");
        assert!(text.contains("wechat_api_callbacks_total{channel=\"hr\",outcome=\"duplicate\"} 1"), "{text}");
        assert_eq!(metrics.callback_totals(), (2, 1));
    }

    #[test]
    fn every_outcome_is_a_distinct_label() {
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        assert!(labels.contains("body_timeout") && labels.contains("incomplete_body"));
    }
}
