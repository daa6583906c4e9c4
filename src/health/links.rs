//! What this replica knows of each AI bot's long connection (SPEC §13):
//! subscribed or not, and whether another client took it (`disconnected_event`),
//! written by the connection's worker (`aibot_ws`) and read by the check
//! `aibot:<name>`. Kept here, beside the checks, so that the checks need not
//! import the worker.
//!
//! Deliberately not here: the connection itself and the metric (`aibot_ws`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use crate::channels::ChannelName;

/// Every long-connection bot's [`Link`], by channel name.
#[derive(Debug, Default)]
pub(crate) struct Links {
    by_channel: HashMap<ChannelName, Arc<Link>>,
}

/// One bot's connection, as this replica sees it.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// Subscribed right now (on this replica).
    connected: AtomicBool,
    /// When `disconnected_event` took the connection away (unix seconds), 0 = not taken.
    taken_at: AtomicI64,
}

impl Links {
    /// A link for each channel of `names`.
    pub(crate) fn new(names: impl IntoIterator<Item = ChannelName>) -> Self {
        Self { by_channel: names.into_iter().map(|name| (name, Arc::default())).collect() }
    }

    /// When the connection of `channel` was taken by another client and not yet won back.
    pub(crate) fn taken_at(&self, channel: &ChannelName) -> Option<i64> {
        let at = self.by_channel.get(channel)?.taken_at.load(Ordering::Relaxed);
        (at > 0).then_some(at)
    }

    /// The link of `channel` (a detached one for a channel not listed).
    pub(crate) fn link(&self, channel: &ChannelName) -> Arc<Link> {
        self.by_channel.get(channel).cloned().unwrap_or_default()
    }
}

impl Link {
    /// Subscribed: connected, and no longer taken away.
    pub(crate) fn subscribed(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.taken_at.store(0, Ordering::Relaxed);
    }

    /// The connection ended.
    pub(crate) fn lost(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    /// Another client took the connection at `at` (unix seconds).
    pub(crate) fn taken(&self, at: i64) {
        self.connected.store(false, Ordering::Relaxed);
        self.taken_at.store(at.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_connection_is_reported_until_won_back() {
        let name = |text: &str| ChannelName::parse(text).expect("a name");
        let (bot, other) = (name("bot"), name("other"));
        let links = Links::new([bot.clone()]);
        assert_eq!(links.taken_at(&bot), None);
        links.link(&bot).taken(42);
        assert_eq!(links.taken_at(&bot), Some(42));
        assert_eq!(links.taken_at(&other), None);
        links.link(&bot).subscribed();
        assert_eq!(links.taken_at(&bot), None);
    }
}
