//! The egress IP WeCom sees (SPEC §14). Self-built apps may call WeCom only from
//! their trusted IPs (企业可信IP), and WeCom offers no API to read that list; but
//! every error answer names the caller (`…, from ip: A.B.C.D, more info at …`).
//! [`Egress`] keeps that fact per channel: the last IP named, when it was first
//! and last seen, whether it changed (mailed at once, with the console path),
//! and whether WeCom refuses it (60020: the outbox parks the channel).
//!
//! Owns: what a WeCom answer tells about the egress IP ([`Seen::observe`], pure,
//! time passed in), what the check `egress:<name>` reads (its verdict is
//! `health::checks::egress_check`), when to probe
//! ([`probe_due`]: `gettoken` without a Secret, which WeCom refuses naming the IP,
//! only when no answer named it for `EGRESS_CHECK_SECS`), the metrics
//! `wechat_api_egress_ip_info` and `wechat_api_egress_ip_changes_total`, the
//! change email, and keeping the IPs in the store.
//!
//! Deliberately not here: parsing WeCom's answers (`wecom/` tells each answer's
//! errcode and IP through its client's tap), making the probe call (`wecom`),
//! running it (the supervisor's round, `health::checks`), and parking the outbox
//! (`dispatch::parking`, which asks [`Egress::refused`]).
//!
//! What each replica knows is its own: the IP its calls leave by, and whether
//! WeCom refuses them. The store keeps the last IP per channel, so a change
//! across a restart (a new VM with the same data) is seen too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::alerts::{Alerter, Mail};
use crate::channels::ChannelName;
use crate::store::egress::EgressRecord;
use crate::store::{Store, StoreError};
use crate::telemetry::{Metrics, EGRESS_IP_CHANGES_TOTAL, EGRESS_IP_INFO};

/// Where an operator adds an IP to an app's trusted list.
pub(crate) const CONSOLE_PATH: &str = "应用管理 → the app → 企业可信IP";

/// One WeCom answer on a channel, as far as its egress IP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    /// A business API (not `gettoken`, which WeCom answers whatever the IP).
    pub business: bool,
    pub errcode: i64,
    /// The IP the answer named (`from ip: …`), if any.
    pub ip: Option<IpAddr>,
}

impl Answer {
    /// 60020: the calling IP is not among the app's trusted IPs.
    const NOT_TRUSTED: i64 = 60020;
}

/// What one replica knows of one channel's egress IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The last IP WeCom named.
    pub ip: Option<IpAddr>,
    /// Unix seconds: when `ip` was first named, and last.
    pub first_seen: i64,
    pub last_seen: i64,
    /// The IP before a change, until a business call from the new one succeeded.
    pub changed_from: Option<(IpAddr, i64)>,
    /// Since when WeCom answers 60020 (the IP is `ip`), until it answers otherwise.
    pub refused_since: Option<i64>,
    /// Unix seconds (the checks' clock) of the last probe.
    pub last_probe: Option<i64>,
    /// Changed since it was last kept in the store.
    dirty: bool,
}

/// A change of a known IP, to be mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub from: IpAddr,
    pub to: IpAddr,
    /// Since when `from` had been seen.
    pub from_since: i64,
}

impl Seen {
    /// What `answer` at `now` tells; a change of a known IP when it is one.
    pub(crate) fn observe(&mut self, answer: Answer, now: i64) -> Option<Change> {
        let mut change = None;
        if let Some(ip) = answer.ip {
            match self.ip {
                Some(known) if known == ip => {}
                Some(known) => {
                    change = Some(Change { from: known, to: ip, from_since: self.first_seen });
                    // A flip back to the IP before is no news for the warn: it is the old one.
                    self.changed_from = match self.changed_from {
                        Some((before, _)) if before == ip => None,
                        _ => Some((known, now)),
                    };
                    self.first_seen = now;
                    self.refused_since = None;
                }
                None => self.first_seen = now,
            }
            self.ip = Some(ip);
            // The store needs last_seen only roughly: kept when it moved a minute.
            if change.is_some() || self.last_seen + 60 <= now || self.first_seen == now {
                self.dirty = true;
            }
            self.last_seen = now;
        }
        if answer.errcode == Answer::NOT_TRUSTED {
            self.refused_since.get_or_insert(now);
        } else if answer.business {
            // Any other answer of a business API passed the trusted-IP check.
            self.refused_since = None;
            if answer.errcode == 0 {
                self.changed_from = None;
            }
        }
        change
    }
}

/// Whether a channel's egress IP should be asked for at `now`: no answer named
/// it, and no probe asked, for `period` seconds, counted from `started_at` (no
/// probe right after start-up).
pub(crate) fn probe_due(seen: &Seen, started_at: i64, period: i64, now: i64) -> bool {
    let latest = [Some(started_at), (seen.last_seen > 0).then_some(seen.last_seen), seen.last_probe]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(started_at);
    now - latest >= period
}

/// The email of a change: both IPs and where to add the new one.
fn change_mail(channel: &ChannelName, change: Change, replica: &str) -> Mail {
    let Change { from, to, from_since } = change;
    Mail {
        subject: format!("[wechat-api EGRESS] {channel}: egress IP changed from {from} to {to} on {replica}"),
        body: format!(
            "WeCom now sees channel {channel} calling from {to}; before, it saw {from} (since {}).\n\n\
             Self-built apps accept API calls only from their trusted IPs: unless {to} is among them,\n\
             every send of this channel fails with 60020 until it is added.\n\n\
             Add {to} in the WeCom admin console: {CONSOLE_PATH}\n\
             (keep {from} there while some replica or route may still leave by it).\n\n\
             The check egress:{channel} is warn until a call from {to} succeeds, and fail while WeCom\n\
             answers 60020; while it does, the channel's outbox tries one action a minute and loses nothing.\n",
            crate::clock::rfc3339(from_since)
        ),
    }
}

/// Every channel's egress IP on this replica.
pub(crate) struct Egress {
    seen: Mutex<HashMap<ChannelName, Seen>>,
    metrics: Arc<Metrics>,
    store: Store,
    /// Set once the alerter exists (it is built with the workers).
    alerter: OnceLock<Alerter>,
    replica: String,
    /// Unix seconds: probes wait a period from here.
    started_at: i64,
    /// `EGRESS_CHECK_SECS`.
    period: i64,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Egress")
    }
}

impl Egress {
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>, replica: String, period: std::time::Duration) -> Self {
        Self {
            seen: Mutex::default(),
            metrics,
            store,
            alerter: OnceLock::new(),
            replica,
            started_at: crate::store::now(),
            period: i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Where change emails go.
    pub(crate) fn mail_through(&self, alerter: Alerter) {
        let _ = self.alerter.set(alerter);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The IPs kept in the store for `channels` (a change after a restart is a
    /// change), exported from the first scrape; `channels` start at zero changes.
    pub(crate) async fn restore(&self, channels: &[ChannelName]) -> Result<(), StoreError> {
        for channel in channels {
            self.metrics.declare(EGRESS_IP_CHANGES_TOTAL, &[("channel", channel.to_string())]);
        }
        let records = self.store.egress_ips().await?;
        let mut seen = self.lock();
        for record in records {
            let (Some(channel), Ok(ip)) =
                (channels.iter().find(|c| **c == record.channel), record.ip.parse::<IpAddr>())
            else {
                continue;
            };
            self.metrics.info(EGRESS_IP_INFO, &info_labels(channel, ip), None);
            seen.insert(
                channel.clone(),
                Seen { ip: Some(ip), first_seen: record.first_seen, last_seen: record.last_seen, ..Seen::default() },
            );
        }
        Ok(())
    }

    /// What a WeCom answer on `channel` tells (the tap of its client).
    pub(crate) fn answered(&self, channel: &ChannelName, answer: Answer) {
        let now = crate::store::now();
        let (change, ip) = {
            let mut seen = self.lock();
            let entry = seen.entry(channel.clone()).or_default();
            let before = entry.ip;
            let change = entry.observe(answer, now);
            if before != entry.ip {
                if let Some(ip) = entry.ip {
                    let old = before.map(|old| info_labels(channel, old));
                    self.metrics.info(EGRESS_IP_INFO, &info_labels(channel, ip), old.as_deref());
                }
            }
            (change, entry.ip)
        };
        if let Some(change) = change {
            self.metrics.counter(EGRESS_IP_CHANGES_TOTAL, &[("channel", channel.to_string())]).increment(1);
            tracing::warn!(
                channel = channel.as_str(),
                "the egress IP WeCom sees changed from {} to {}: add it to the app's trusted IPs ({CONSOLE_PATH})",
                change.from,
                change.to
            );
            match self.alerter.get() {
                Some(alerter) => alerter.send(change_mail(channel, change, &self.replica)),
                None => tracing::warn!("egress IP change not mailed: the alerter is not running yet"),
            }
        }
        if answer.errcode == Answer::NOT_TRUSTED {
            let ip = ip.map_or_else(|| "this server's public IP".to_owned(), |ip| ip.to_string());
            tracing::debug!(channel = channel.as_str(), "60020: WeCom refuses {ip}");
        }
    }

    /// Whether WeCom's last answer on `channel` was 60020 (the IP is not trusted).
    pub(crate) fn refused(&self, channel: &ChannelName) -> bool {
        self.lock().get(channel).is_some_and(|seen| seen.refused_since.is_some())
    }

    /// What is known of `channel` now.
    pub(crate) fn seen(&self, channel: &ChannelName) -> Seen {
        self.lock().get(channel).cloned().unwrap_or_default()
    }

    /// Whether `channel`'s IP should be asked for at `now` (the checks' clock);
    /// when it should, the probe is counted as made.
    pub(crate) fn take_probe(&self, channel: &ChannelName, now: i64) -> bool {
        let mut seen = self.lock();
        let entry = seen.entry(channel.clone()).or_default();
        let due = probe_due(entry, self.started_at, self.period, now);
        if due {
            entry.last_probe = Some(now);
        }
        due
    }

    /// Keeps what changed in the store (the supervisor's round calls it).
    pub(crate) async fn keep(&self) -> Result<(), StoreError> {
        let dirty: Vec<EgressRecord> = {
            let mut seen = self.lock();
            seen.iter_mut()
                .filter(|(_, s)| s.dirty)
                .filter_map(|(channel, s)| {
                    s.dirty = false;
                    Some(EgressRecord {
                        channel: channel.clone(),
                        ip: s.ip?.to_string(),
                        first_seen: s.first_seen,
                        last_seen: s.last_seen,
                    })
                })
                .collect()
        };
        for record in dirty {
            let channel = record.channel.clone();
            if let Err(error) = self.store.set_egress_ip(record).await {
                // Kept next round.
                if let Some(seen) = self.lock().iter_mut().find(|(c, _)| **c == channel) {
                    seen.1.dirty = true;
                }
                return Err(error);
            }
        }
        Ok(())
    }
}

fn info_labels(channel: &ChannelName, ip: IpAddr) -> Vec<(&'static str, String)> {
    vec![("channel", channel.to_string()), ("ip", ip.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    fn answer(business: bool, errcode: i64, named: &str) -> Answer {
        Answer { business, errcode, ip: ip(named) }
    }

    #[test]
    fn the_first_ip_is_learned_quietly_and_a_change_is_news_until_a_call_from_the_new_one_succeeds() {
        let mut seen = Seen::default();
        assert_eq!(seen.observe(answer(false, 41004, "203.0.113.7"), 100), None);
        assert_eq!((seen.ip, seen.first_seen, seen.last_seen), (ip("203.0.113.7"), 100, 100));
        assert_eq!(seen.observe(answer(true, 40014, "203.0.113.7"), 150), None);
        assert_eq!((seen.first_seen, seen.last_seen), (100, 150));
        let change = seen.observe(answer(true, 40014, "198.51.100.9"), 200).expect("a change");
        assert_eq!(
            (change.from, change.to, change.from_since),
            (ip("203.0.113.7").expect("ip"), ip("198.51.100.9").expect("ip"), 100)
        );
        assert_eq!(seen.changed_from, Some(("203.0.113.7".parse().expect("ip"), 200)));
        assert_eq!(seen.observe(Answer { business: false, errcode: 0, ip: None }, 210), None);
        assert!(seen.changed_from.is_some(), "a gettoken proves nothing about the trusted IPs");
        seen.observe(Answer { business: true, errcode: 0, ip: None }, 220);
        assert_eq!(seen.changed_from, None);
    }

    #[test]
    fn a_60020_holds_until_a_business_api_answers_otherwise() {
        let mut seen = Seen::default();
        seen.observe(answer(true, 60020, "203.0.113.7"), 100);
        assert_eq!(seen.refused_since, Some(100));
        seen.observe(answer(false, 41004, "203.0.113.7"), 110);
        assert_eq!(seen.refused_since, Some(100), "a probe's answer does not lift it");
        seen.observe(Answer { business: true, errcode: 0, ip: None }, 120);
        assert_eq!(seen.refused_since, None);
    }

    #[test]
    fn a_probe_waits_a_period_from_start_and_from_every_answer_that_named_the_ip() {
        let mut seen = Seen::default();
        assert!(!probe_due(&seen, 1_000, 900, 1_899), "none before a period from start-up");
        assert!(probe_due(&seen, 1_000, 900, 1_900));
        seen.observe(answer(true, 40014, "203.0.113.7"), 1_500);
        assert!(!probe_due(&seen, 1_000, 900, 2_399), "answers keep naming it");
        assert!(probe_due(&seen, 1_000, 900, 2_400));
        seen.last_probe = Some(2_400);
        assert!(!probe_due(&seen, 1_000, 900, 3_299), "one probe per period");
    }
}
