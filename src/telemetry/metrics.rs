//! Metrics: every metric family (name, type, unit, labels and help text, in the
//! one [`FAMILIES`] table), `wechat_api_build_info`, the recorder, the callback
//! latency window, and the Prometheus rendering. Each [`Metrics`] has its own
//! recorder instead of a global one, so several applications in one test process
//! do not count into each other, and the hot path increments pre-registered
//! handles ([`CounterTable`]) without a lookup in the recorder's map.
//!
//! Deliberately not here: what the labels' values are and mean. Their owners name
//! them (`callback::Outcome::as_str`, a channel's name, `connections::Refusal`)
//! and pass strings; this module imports nothing of the domain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use std::sync::OnceLock;

/// The content type Prometheus expects from a text exposition.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric family holds, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// Only ever goes up; the name ends in `_total`.
    Counter,
    /// A value that goes up and down, set from a reading.
    Gauge,
    /// Samples counted into fixed buckets (upper bounds, in the family's unit).
    Histogram { buckets: &'static [f64] },
}

impl Kind {
    /// The word on the family's `# TYPE` line.
    #[cfg(test)]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram { .. } => "histogram",
        }
    }
}

/// One metric family: everything `/metrics` says about it besides its samples.
///
/// The constants below are the only place a metric name is written; callers pass
/// them to [`Metrics::counter`] or [`Metrics::gauge`], so a misspelt name does not
/// compile and every family has its `# HELP` and `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Family {
    /// The full name, `wechat_api_…`; a counter's ends in `_total`.
    pub name: &'static str,
    pub kind: Kind,
    /// The base unit, also the name's suffix (`_seconds`); `None` for counts and states.
    pub unit: Option<Unit>,
    /// The label names every series of the family carries, in this order.
    pub labels: &'static [&'static str],
    /// The `# HELP` text: one sentence for the person reading a dashboard.
    pub help: &'static str,
}

/// `wechat_api_build_info{version,backend,replica}`, always 1.
pub(crate) const BUILD_INFO: Family = Family {
    name: "wechat_api_build_info",
    kind: Kind::Gauge,
    unit: None,
    labels: &["version", "backend", "replica"],
    help: "Always 1; the labels say which build runs, on which store backend (sqlite or postgres), as which replica.",
};

/// `wechat_api_callbacks_total{channel,outcome}`.
pub(crate) const CALLBACKS_TOTAL: Family = Family {
    name: "wechat_api_callbacks_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "outcome"],
    help: "Callback requests by channel (its name: app, kf, those of the config file, unknown) and outcome (ok, duplicate, or why it was refused).",
};

/// `wechat_api_callback_duration_seconds`, a histogram.
pub(crate) const CALLBACK_DURATION_SECONDS: Family = Family {
    name: "wechat_api_callback_duration_seconds",
    kind: Kind::Histogram { buckets: CALLBACK_BUCKETS },
    unit: Some(Unit::Seconds),
    labels: &[],
    help: "Time the appliance spends on an authenticated callback, from its complete body to the answer (refusals are counted in wechat_api_callbacks_total, not timed).",
};

/// `wechat_api_wecom_api_requests_total{channel,api,errcode}`.
pub(crate) const WECOM_API_REQUESTS_TOTAL: Family = Family {
    name: "wechat_api_wecom_api_requests_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "api", "errcode"],
    help: "Calls to the WeCom API by channel (whose Secret; gettoken: the first channel with that Secret), endpoint and errcode (0 success; transport or decode when there was none).",
};

/// `wechat_api_access_token_expires_in_seconds{channel,app}`.
pub(crate) const ACCESS_TOKEN_EXPIRES_IN_SECONDS: Family = Family {
    name: "wechat_api_access_token_expires_in_seconds",
    kind: Kind::Gauge,
    unit: Some(Unit::Seconds),
    labels: &["channel", "app"],
    help: "Seconds the channel's cached access token had left when last refreshed or loaded; app: the channel whose Secret it is (channels sharing a corp id and Secret share one token).",
};

/// `wechat_api_access_token_refreshes_total{channel,app,outcome}`.
pub(crate) const ACCESS_TOKEN_REFRESHES_TOTAL: Family = Family {
    name: "wechat_api_access_token_refreshes_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "app", "outcome"],
    help: "Refreshes of the channel's access token from WeCom by outcome; app: the channel whose Secret it is (a shared token's refresh counts for each channel sharing it).",
};

/// `wechat_api_check_status{check}`.
pub(crate) const CHECK_STATUS: Family = Family {
    name: "wechat_api_check_status",
    kind: Kind::Gauge,
    unit: None,
    labels: &["check"],
    help: "The last result of each self-check: 0 pass, 1 warn, 2 fail.",
};

/// `wechat_api_tls_certificate_expiry_timestamp_seconds`.
pub(crate) const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: Family = Family {
    name: "wechat_api_tls_certificate_expiry_timestamp_seconds",
    kind: Kind::Gauge,
    unit: Some(Unit::Seconds),
    labels: &[],
    help: "When the served TLS certificate expires, in seconds since the Unix epoch.",
};

/// `wechat_api_alerts_total{outcome}`.
pub(crate) const ALERTS_TOTAL: Family = Family {
    name: "wechat_api_alerts_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["outcome"],
    help: "Alert emails by outcome (sent, failed, dropped when the queue was full, disabled when email is off).",
};

/// `wechat_api_kf_messages_total{channel,msgtype}`.
pub(crate) const KF_MESSAGES_TOTAL: Family = Family {
    name: "wechat_api_kf_messages_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "msgtype"],
    help: "Customer-service messages handled from the journal, by kf channel and WeCom msgtype.",
};

/// `wechat_api_messages_sent_total{channel,outcome}`.
pub(crate) const MESSAGES_SENT_TOTAL: Family = Family {
    name: "wechat_api_messages_sent_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "outcome"],
    help: "Texts sent to users (help, welcome, replies, the send API), by channel and outcome: sent, failed (WeCom refused it or reported msg_send_fail), refused (a kf rule stopped it before any call).",
};

/// `wechat_api_aibot_streams_total{channel,outcome}` (SPEC §13).
pub(crate) const AIBOT_STREAMS_TOTAL: Family = Family {
    name: "wechat_api_aibot_streams_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "outcome"],
    help: "AI bot answers by how their stream ended: finished (a refresh showed the finished answer), late (closed unfinished at AIBOT_STREAM_DEADLINE_SECS), expired (the answer could not be delivered any more).",
};

/// `wechat_api_aibot_refreshes_total{channel}` (SPEC §13).
pub(crate) const AIBOT_REFRESHES_TOTAL: Family = Family {
    name: "wechat_api_aibot_refreshes_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel"],
    help: "AI bot stream refresh callbacks answered from the store, by channel.",
};

/// `wechat_api_aibot_feedback_total{channel,type}` (SPEC §13).
pub(crate) const AIBOT_FEEDBACK_TOTAL: Family = Family {
    name: "wechat_api_aibot_feedback_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "type"],
    help: "AI bot feedback events by the user's verdict: accurate, inaccurate, cancelled, other.",
};

/// `wechat_api_aibot_connected{channel}` (SPEC §13).
pub(crate) const AIBOT_CONNECTED: Family = Family {
    name: "wechat_api_aibot_connected",
    kind: Kind::Gauge,
    unit: None,
    labels: &["channel"],
    help: "Whether the AI bot's long connection is up (1) or not (0); 0 for a bot served by callbacks.",
};

/// `wechat_api_outbox_actions_total{channel,kind,outcome}`.
pub(crate) const OUTBOX_ACTIONS_TOTAL: Family = Family {
    name: "wechat_api_outbox_actions_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "kind", "outcome"],
    help: "Outbox action attempts by channel, kind (forward, download_media, app_text, kf_text, kf_welcome, kf_handover) and outcome (ok, retry, failed, paced).",
};

/// `wechat_api_store_pruned_total{table}`.
pub(crate) const STORE_PRUNED_TOTAL: Family = Family {
    name: "wechat_api_store_pruned_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["table"],
    help: "Rows deleted by retention, by table (journal, outbox).",
};

/// `wechat_api_media_pruned_total{kind}`.
pub(crate) const MEDIA_PRUNED_TOTAL: Family = Family {
    name: "wechat_api_media_pruned_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["kind"],
    help: "Downloaded media removed by MEDIA_RETENTION_SECS: files, and the empty day directories they left.",
};

/// `wechat_api_store_commits_total`.
pub(crate) const STORE_COMMITS_TOTAL: Family = Family {
    name: "wechat_api_store_commits_total",
    kind: Kind::Counter,
    unit: None,
    labels: &[],
    help: "Transactions the store committed; several writes share one under load.",
};

/// `wechat_api_store_operations_total`.
pub(crate) const STORE_OPERATIONS_TOTAL: Family = Family {
    name: "wechat_api_store_operations_total",
    kind: Kind::Counter,
    unit: None,
    labels: &[],
    help: "Write operations the store committed.",
};

/// `wechat_api_store_synced_commits_total`.
pub(crate) const STORE_SYNCED_COMMITS_TOTAL: Family = Family {
    name: "wechat_api_store_synced_commits_total",
    kind: Kind::Counter,
    unit: None,
    labels: &[],
    help: "Store commits made durable with an fsync before they returned (strict writes).",
};

/// `wechat_api_send_api_refused_total{channel,reason}`.
pub(crate) const SEND_API_REFUSED_TOTAL: Family = Family {
    name: "wechat_api_send_api_refused_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel", "reason"],
    help: "Send API requests refused by a limit of SPEC 15, by the request's channel and reason: queue_full (429, SEND_QUEUE_MAX), disk_low (503, DATA_MIN_FREE_PERCENT).",
};

/// `wechat_api_outbox_backlog_actions`.
pub(crate) const OUTBOX_BACKLOG_ACTIONS: Family = Family {
    name: "wechat_api_outbox_backlog_actions",
    kind: Kind::Gauge,
    unit: None,
    labels: &[],
    help:
        "Outbox actions still owed (waiting, paced under WeCom's limits, or retried after errors), at the last check.",
};

/// `wechat_api_outbox_backlog_age_seconds`.
pub(crate) const OUTBOX_BACKLOG_AGE_SECONDS: Family = Family {
    name: "wechat_api_outbox_backlog_age_seconds",
    kind: Kind::Gauge,
    unit: Some(Unit::Seconds),
    labels: &[],
    help: "Age of the oldest outbox action still owed at the last check, 0 when none (outbox:backlog warns past 60, fails past 600).",
};

/// `wechat_api_forward_failing_seconds`.
pub(crate) const FORWARD_FAILING_SECONDS: Family = Family {
    name: "wechat_api_forward_failing_seconds",
    kind: Kind::Gauge,
    unit: Some(Unit::Seconds),
    labels: &[],
    help: "How long every POST to FORWARD_URL has failed, at the last check; 0 while it delivers (forward:delivery fails past 300).",
};

/// `wechat_api_connections_refused_total{reason}`.
pub(crate) const CONNECTIONS_REFUSED_TOTAL: Family = Family {
    name: "wechat_api_connections_refused_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["reason"],
    help: "Connections closed before any HTTP, by reason: per_address (CONNECTIONS_PER_ADDRESS reached), silent (nothing sent within 2 s), handshake_timeout (TLS unfinished after 5 s).",
};

/// `wechat_api_store_stage_seconds{stage}`, a histogram.
pub(crate) const STORE_STAGE_SECONDS: Family = Family {
    name: "wechat_api_store_stage_seconds",
    kind: Kind::Histogram { buckets: STAGE_BUCKETS },
    unit: Some(Unit::Seconds),
    labels: &["stage"],
    help: "Where the store's time goes on the durable path: queue (an operation waiting for its writer), execute (a group's statements), commit (its log write and fsync, and on SQLite the WAL checkpoint when a commit crosses its threshold).",
};

/// `wechat_api_egress_ip_info{channel,ip}`: 1 for the IP WeCom last named.
pub(crate) const EGRESS_IP_INFO: Family = Family {
    name: "wechat_api_egress_ip_info",
    kind: Kind::Gauge,
    unit: None,
    labels: &["channel", "ip"],
    help: "Always 1: the egress IP WeCom last named (from ip: …) for each channel; the series of an earlier IP goes when it changes. It must be among the app's trusted IPs (企业可信IP).",
};

/// `wechat_api_egress_ip_changes_total{channel}`.
pub(crate) const EGRESS_IP_CHANGES_TOTAL: Family = Family {
    name: "wechat_api_egress_ip_changes_total",
    kind: Kind::Counter,
    unit: None,
    labels: &["channel"],
    help: "Changes of a channel's known egress IP seen by this replica (each is mailed at once: the new IP must be added to the app's trusted IPs).",
};

/// Every family the service exports: [`Metrics::new`] describes each of them.
pub(crate) const FAMILIES: [Family; 29] = [
    BUILD_INFO,
    CALLBACKS_TOTAL,
    CALLBACK_DURATION_SECONDS,
    WECOM_API_REQUESTS_TOTAL,
    ACCESS_TOKEN_EXPIRES_IN_SECONDS,
    ACCESS_TOKEN_REFRESHES_TOTAL,
    CHECK_STATUS,
    TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
    ALERTS_TOTAL,
    KF_MESSAGES_TOTAL,
    MESSAGES_SENT_TOTAL,
    AIBOT_STREAMS_TOTAL,
    AIBOT_REFRESHES_TOTAL,
    AIBOT_FEEDBACK_TOTAL,
    AIBOT_CONNECTED,
    OUTBOX_ACTIONS_TOTAL,
    STORE_PRUNED_TOTAL,
    MEDIA_PRUNED_TOTAL,
    STORE_COMMITS_TOTAL,
    STORE_OPERATIONS_TOTAL,
    STORE_SYNCED_COMMITS_TOTAL,
    SEND_API_REFUSED_TOTAL,
    OUTBOX_BACKLOG_ACTIONS,
    OUTBOX_BACKLOG_AGE_SECONDS,
    FORWARD_FAILING_SECONDS,
    CONNECTIONS_REFUSED_TOTAL,
    STORE_STAGE_SECONDS,
    EGRESS_IP_INFO,
    EGRESS_IP_CHANGES_TOTAL,
];

/// Upper bounds of the callback latency histogram: fine below 10 ms, where a
/// healthy callback lives, and up to WeCom's 5 s retry limit.
const CALLBACK_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Upper bounds of the store's stage histogram: 0.1 ms (a queue wait when the
/// writer is idle) to 1 s (a stalled disk).
const STAGE_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The labels of `wechat_api_build_info`: which build, on which store, as which replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The store backend: `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The replica's name (SPEC §9).
    pub replica: String,
}

impl BuildInfo {
    /// `version` on the embedded SQLite store, named after this host (the default
    /// `REPLICA_ID`): for tools that report without a running service (`diagnose`).
    pub fn sqlite(version: &str) -> Self {
        Self { version: version.to_owned(), backend: "sqlite", replica: crate::config::host_name() }
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Upper bounds (ms) of the latency window's buckets; the last bucket is open.
const WINDOW_BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 4000, 8000];
/// Minutes the window covers.
const WINDOW_MINUTES: u64 = 5;

/// Callback latencies of the last few minutes, for `callback:latency`: one slot per
/// minute, a fixed histogram per slot, one atomic add per callback.
#[derive(Debug, Default)]
pub(crate) struct LatencyWindow {
    slots: [WindowSlot; WINDOW_MINUTES as usize + 1],
}

#[derive(Debug, Default)]
struct WindowSlot {
    minute: AtomicU64,
    counts: [AtomicU64; WINDOW_BOUNDS_MS.len() + 1],
}

fn current_minute() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 60).unwrap_or(0)
}

impl LatencyWindow {
    pub(crate) fn record(&self, elapsed: Duration, minute: u64) {
        let slot = &self.slots[(minute % self.slots.len() as u64) as usize];
        let seen = slot.minute.load(Ordering::Relaxed);
        if seen != minute && slot.minute.compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // This slot last held a minute long gone: start it afresh.
            slot.counts.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        }
        let ms = elapsed.as_millis() as u64;
        let bucket = WINDOW_BOUNDS_MS.iter().position(|bound| ms < *bound).unwrap_or(WINDOW_BOUNDS_MS.len());
        slot.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The 95th percentile (as its bucket's upper bound) over the last
    /// [`WINDOW_MINUTES`] minutes, with the number of samples; `None` without any.
    pub(crate) fn p95(&self, minute: u64) -> Option<(Duration, u64)> {
        let mut totals = [0u64; WINDOW_BOUNDS_MS.len() + 1];
        for slot in &self.slots {
            let m = slot.minute.load(Ordering::Relaxed);
            if m + WINDOW_MINUTES > minute && m <= minute {
                for (total, count) in totals.iter_mut().zip(&slot.counts) {
                    *total += count.load(Ordering::Relaxed);
                }
            }
        }
        let samples: u64 = totals.iter().sum();
        if samples == 0 {
            return None;
        }
        let wanted = samples.saturating_mul(95).div_ceil(100);
        let mut seen = 0;
        let bucket = totals.iter().position(|count| {
            seen += count;
            seen >= wanted
        })?;
        let bound = WINDOW_BOUNDS_MS.get(bucket).copied().unwrap_or(2 * WINDOW_BOUNDS_MS[WINDOW_BOUNDS_MS.len() - 1]);
        Some((Duration::from_millis(bound), samples))
    }
}

/// The key of one series of `family`; the label names must be the family's.
fn key(family: &Family, labels: &[(&'static str, String)]) -> Key {
    debug_assert!(
        labels.iter().map(|(name, _)| *name).eq(family.labels.iter().copied()),
        "{} takes the labels {:?}",
        family.name,
        family.labels
    );
    let labels = labels.iter().map(|(name, value)| Label::new(*name, value.clone())).collect::<Vec<_>>();
    Key::from_parts(family.name, labels)
}

/// Counters of one family registered ahead, one per row of label values, found
/// by position on the hot path; the labels' owner numbers the rows, and may name
/// groups of them ([`CounterTable::grouped`]: the rows of one label value, found
/// with one hash lookup and no allocation).
#[derive(Debug)]
pub(crate) struct CounterTable {
    counters: Vec<Counter>,
    /// The first row of each group, by the group's key.
    groups: std::collections::HashMap<Box<str>, usize>,
}

impl CounterTable {
    /// Adds one to the counter of row `index` (nothing for a row that does not exist).
    pub(crate) fn increment(&self, index: usize) {
        if let Some(counter) = self.counters.get(index) {
            counter.increment(1);
        }
    }

    /// The table with `groups` named: each a key and its first row.
    pub(crate) fn grouped(mut self, groups: impl IntoIterator<Item = (String, usize)>) -> Self {
        self.groups.extend(groups.into_iter().map(|(key, row)| (key.into_boxed_str(), row)));
        self
    }

    /// The first row of the group named `key`.
    pub(crate) fn group(&self, key: &str) -> Option<usize> {
        self.groups.get(key).copied()
    }
}

/// The application's metrics: the recorder, its renderer, and hot-path handles.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `wechat_api_callbacks_total`'s series, registered by the callback
    /// pipeline, which names and numbers their labels (`callback_metrics.rs`).
    callbacks: OnceLock<CounterTable>,
    callback_duration: Histogram,
    latency: LatencyWindow,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Series taken out of the exposition (`name{labels}` as rendered): an info
    /// gauge whose value is no longer true (an egress IP that changed).
    retired: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A recorder that knows every family in [`FAMILIES`], with `build_info` set.
    pub fn new(build: &BuildInfo) -> Self {
        let builder = FAMILIES.iter().try_fold(PrometheusBuilder::new(), |builder, family| match family.kind {
            Kind::Histogram { buckets } => builder.set_buckets_for_metric(Matcher::Full(family.name.into()), buckets),
            Kind::Counter | Kind::Gauge => Ok(builder),
        });
        // The bucket lists are non-empty constants, the only way this can fail.
        let recorder =
            builder.map_or_else(|_| PrometheusBuilder::new().build_recorder(), PrometheusBuilder::build_recorder);
        let handle = recorder.handle();
        for family in FAMILIES {
            let (name, help) = (KeyName::from_const_str(family.name), SharedString::const_str(family.help));
            match family.kind {
                Kind::Counter => recorder.describe_counter(name, family.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, family.unit, help),
                Kind::Histogram { .. } => recorder.describe_histogram(name, family.unit, help),
            }
        }
        let build_labels = [
            ("version", build.version.clone()),
            ("backend", build.backend.to_owned()),
            ("replica", build.replica.clone()),
        ];
        recorder.register_gauge(&key(&BUILD_INFO, &build_labels), &METADATA).set(1.0);
        let callback_duration = recorder.register_histogram(&key(&CALLBACK_DURATION_SECONDS, &[]), &METADATA);
        Self {
            recorder,
            handle,
            callbacks: OnceLock::new(),
            callback_duration,
            latency: LatencyWindow::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retired: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The table of `wechat_api_callbacks_total`, registered by `register` the
    /// first time it is asked for.
    pub(crate) fn callbacks(&self, register: impl FnOnce(&Self) -> CounterTable) -> &CounterTable {
        self.callbacks.get_or_init(|| register(self))
    }

    /// Records the appliance's own work on an authenticated callback (from its
    /// complete body to the answer): the histogram and the latency window.
    pub(crate) fn time_callback(&self, elapsed: Duration) {
        self.callback_duration.record(elapsed.as_secs_f64());
        self.latency.record(elapsed, current_minute());
    }

    /// Counts a callback answered 2xx (`accepted`) or refused, for the status page.
    pub(crate) fn count_callback(&self, accepted: bool) {
        let total = if accepted { &self.accepted } else { &self.refused };
        total.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a counter of `family` for each row of label values (the family's
    /// label names, in order, with values), found later by the row's position.
    pub(crate) fn table(
        &self,
        family: Family,
        rows: impl IntoIterator<Item = Vec<(&'static str, String)>>,
    ) -> CounterTable {
        let counters = rows.into_iter().map(|labels| self.counter(family, &labels)).collect();
        CounterTable { counters, groups: std::collections::HashMap::new() }
    }

    /// p95 of callback handling over the last minutes, and the sample count.
    pub(crate) fn callback_p95(&self) -> Option<(Duration, u64)> {
        self.latency.p95(current_minute())
    }

    /// Callbacks accepted (answered 2xx) and refused since start.
    pub(crate) fn callback_totals(&self) -> (u64, u64) {
        (self.accepted.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }

    /// A series of the counter `family`, registered on first use; for metrics off
    /// the hot path. `labels` are the family's label names, in order, with values.
    pub(crate) fn counter(&self, family: Family, labels: &[(&'static str, String)]) -> Counter {
        debug_assert_eq!(family.kind, Kind::Counter, "{} is not a counter", family.name);
        self.recorder.register_counter(&key(&family, labels), &METADATA)
    }

    /// A series of the histogram `family`, registered on first use.
    pub(crate) fn histogram(&self, family: Family, labels: &[(&'static str, String)]) -> Histogram {
        debug_assert!(matches!(family.kind, Kind::Histogram { .. }), "{} is not a histogram", family.name);
        self.recorder.register_histogram(&key(&family, labels), &METADATA)
    }

    /// A series of the gauge `family`, registered on first use.
    pub(crate) fn gauge(&self, family: Family, labels: &[(&'static str, String)]) -> Gauge {
        debug_assert_eq!(family.kind, Kind::Gauge, "{} is not a gauge", family.name);
        self.recorder.register_gauge(&key(&family, labels), &METADATA)
    }

    /// Makes the series of `family` with `labels` exist at zero before its first
    /// event (Prometheus' own advice: a series that appears only with its first
    /// event breaks `rate()`, alerts and dashboards on a fresh start). Owners of
    /// a label's known values declare them when they are built.
    pub(crate) fn declare(&self, family: Family, labels: &[(&'static str, String)]) {
        match family.kind {
            Kind::Counter => drop(self.counter(family, labels)),
            Kind::Gauge => drop(self.gauge(family, labels)),
            Kind::Histogram { .. } => drop(self.recorder.register_histogram(&key(&family, labels), &METADATA)),
        }
    }

    /// Sets the info gauge `family` with `labels` to 1 and exports it; the
    /// series of `replaces` (the same family's earlier labels, if any) leaves the
    /// exposition: one series per owner, as an info metric must be.
    pub(crate) fn info(
        &self,
        family: Family,
        labels: &[(&'static str, String)],
        replaces: Option<&[(&'static str, String)]>,
    ) {
        let rendered = |labels: &[(&'static str, String)]| {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{}{{{}}} ", family.name, pairs.join(","))
        };
        let current = rendered(labels);
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|series| *series != current);
        if let Some(old) = replaces.map(rendered).filter(|old| *old != current) {
            self.gauge(family, replaces.unwrap_or_default()).set(0.0);
            if !retired.contains(&old) {
                retired.push(old);
            }
        }
        self.gauge(family, labels).set(1.0);
    }

    /// Folds recorded histogram samples into their buckets; call periodically so
    /// samples do not pile up between scrapes.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        self.handle.run_upkeep();
        let text = self.handle.render();
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if retired.is_empty() {
            return text;
        }
        let mut kept = String::with_capacity(text.len());
        for line in text.lines().filter(|line| !retired.iter().any(|series| line.starts_with(series.as_str()))) {
            kept.push_str(line);
            kept.push('\n');
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str) -> BuildInfo {
        BuildInfo { version: version.to_owned(), backend: "sqlite", replica: "replica-1".to_owned() }
    }

    #[test]
    fn renders_build_info_counters_and_a_real_histogram() {
        let metrics = Metrics::new(&build("1.2.3"));
        metrics.time_callback(Duration::from_millis(2));
        metrics.count_callback(true);
        metrics.count_callback(false);
        assert_eq!(metrics.callback_totals(), (1, 1));
        let text = metrics.render();
        assert!(
            text.contains("wechat_api_build_info{version=\"1.2.3\",backend=\"sqlite\",replica=\"replica-1\"} 1"),
            "{text}"
        );
        assert!(text.contains("wechat_api_callback_duration_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callback_duration_seconds_count 1"), "{text}");
        assert!(text.contains("# TYPE wechat_api_callback_duration_seconds histogram"), "{text}");
    }

    #[test]
    fn an_info_series_is_replaced_not_added_to() {
        let metrics = Metrics::new(&build("1"));
        let labels = |ip: &str| vec![("channel", "app".to_owned()), ("ip", ip.to_owned())];
        metrics.info(EGRESS_IP_INFO, &labels("203.0.113.7"), None);
        metrics.info(EGRESS_IP_INFO, &labels("198.51.100.9"), Some(&labels("203.0.113.7")));
        let text = metrics.render();
        assert!(text.contains("wechat_api_egress_ip_info{channel=\"app\",ip=\"198.51.100.9\"} 1"), "{text}");
        assert!(!text.contains("203.0.113.7"), "{text}");
        metrics.info(EGRESS_IP_INFO, &labels("203.0.113.7"), Some(&labels("198.51.100.9")));
        let text = metrics.render();
        assert!(text.contains("ip=\"203.0.113.7\"} 1") && !text.contains("198.51.100.9"), "{text}");
    }

    #[test]
    fn the_build_info_of_this_host_names_a_replica() {
        let info = BuildInfo::sqlite("1.2.3");
        assert_eq!((info.version.as_str(), info.backend), ("1.2.3", "sqlite"));
        assert!(!info.replica.is_empty());
    }

    #[test]
    fn every_family_has_help_and_type_once_it_has_a_series() {
        let metrics = Metrics::new(&build("1.2.3"));
        for family in FAMILIES {
            let labels: Vec<(&'static str, String)> =
                family.labels.iter().map(|name| (*name, "x".to_owned())).collect();
            match family.kind {
                Kind::Counter => metrics.counter(family, &labels).increment(1),
                Kind::Gauge => metrics.gauge(family, &labels).set(1.0),
                Kind::Histogram { .. } => {
                    metrics.recorder.register_histogram(&key(&family, &labels), &METADATA).record(0.1)
                }
            }
        }
        let text = metrics.render();
        for family in FAMILIES {
            let help = format!("# HELP {} {}\n", family.name, family.help);
            assert!(text.contains(&help), "no HELP for {}: {text}", family.name);
            let kind = format!("# TYPE {} {}\n", family.name, family.kind.as_str());
            assert!(text.contains(&kind), "no TYPE for {}: {text}", family.name);
        }
        let typed = text.lines().filter(|line| line.starts_with("# TYPE ")).count();
        assert_eq!(typed, FAMILIES.len(), "a family outside the table: {text}");
    }

    #[test]
    fn family_names_follow_the_prometheus_conventions() {
        let mut names = std::collections::HashSet::new();
        for family in FAMILIES {
            let name = family.name;
            assert!(names.insert(name), "{name} is listed twice");
            assert!(name.starts_with("wechat_api_"), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
            assert_eq!(family.kind == Kind::Counter, name.ends_with("_total"), "{name}: only counters end in _total");
            assert_eq!(family.unit == Some(Unit::Seconds), name.ends_with("_seconds"), "{name}: unit and suffix");
            assert!(!family.help.is_empty() && !family.help.contains('\n'), "{name}: one line of help");
        }
    }

    #[test]
    fn the_latency_window_reports_p95_over_recent_minutes_only() {
        let window = LatencyWindow::default();
        assert_eq!(window.p95(100), None);
        for _ in 0..94 {
            window.record(Duration::from_micros(500), 100);
        }
        for _ in 0..6 {
            window.record(Duration::from_millis(1500), 100);
        }
        assert_eq!(window.p95(100), Some((Duration::from_millis(2000), 100)));
        assert_eq!(window.p95(104).map(|(_, n)| n), Some(100), "still inside the window");
        assert_eq!(window.p95(105), None, "five minutes later it has aged out");
        window.record(Duration::from_millis(3), 106);
        assert_eq!(window.p95(106), Some((Duration::from_millis(5), 1)), "a reused slot starts afresh");
    }

    #[test]
    fn two_instances_do_not_share_counts() {
        let a = Metrics::new(&build("x"));
        let b = Metrics::new(&build("x"));
        let table = |m: &Metrics| m.table(CALLBACKS_TOTAL, [vec![("channel", "a".into()), ("outcome", "ok".into())]]);
        let (in_a, _in_b) = (table(&a), table(&b));
        in_a.increment(0);
        assert!(a.render().contains("wechat_api_callbacks_total{channel=\"a\",outcome=\"ok\"} 1"));
        assert!(b.render().contains("wechat_api_callbacks_total{channel=\"a\",outcome=\"ok\"} 0"));
    }
}
