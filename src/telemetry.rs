//! Logs and metrics, set up in one place.
//!
//! Owns: the tracing subscriber, every metric name and its help text, and the
//! Prometheus rendering. Each [`Metrics`] has its own recorder instead of a global
//! one, so several applications in one test process do not count into each other,
//! and the hot path increments pre-registered handles without a map lookup.
//!
//! Deliberately not here: deciding *what* happened (callers pass an [`Outcome`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::callback::{Channel, Outcome};
use crate::config::LogFormat;

/// The content type Prometheus expects from a text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Keeps the log writer alive; dropping it flushes what is queued.
#[must_use = "logs are lost unless the guard lives until exit"]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Lines queued for the log thread before a request thread waits for it.
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Starts logging to stdout. Safe to call more than once (later calls are ignored).
///
/// Lines go through a queue to a log thread that writes whatever has queued up in
/// one `write`: one line per callback must not cost one system call per callback.
/// The queue is not lossy: when full, the request thread waits rather than drop a line.
pub fn init_tracing(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::new("info,actix_server=warn,rustls=warn,h2=warn,hyper=warn");
    // Colour only for a person at a terminal; Docker logs and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("wechat-api-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard { _worker: installed.is_ok().then_some(guard) }
}

const CALLBACKS_TOTAL: &str = "wechat_api_callbacks_total";
const CALLBACK_DURATION: &str = "wechat_api_callback_duration_seconds";
const BUILD_INFO: &str = "wechat_api_build_info";

/// Upper bounds of the callback latency histogram: fine below 10 ms, where a
/// healthy callback lives, and up to WeCom's 5 s retry limit.
const CALLBACK_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Upper bounds (ms) of the latency window's buckets; the last bucket is open.
const WINDOW_BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 4000, 8000];
/// Minutes the window covers.
const WINDOW_MINUTES: u64 = 5;

/// Callback latencies of the last few minutes, for `callback:latency`: one slot per
/// minute, a fixed histogram per slot, one atomic add per callback.
#[derive(Debug, Default)]
pub struct LatencyWindow {
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
    pub fn record(&self, elapsed: Duration, minute: u64) {
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
    pub fn p95(&self, minute: u64) -> Option<(Duration, u64)> {
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

/// The application's metrics: the recorder, its renderer, and hot-path handles.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Indexed by [`Self::callback_index`]: (app | kf | unknown) × every outcome.
    callbacks: Vec<Counter>,
    callback_duration: Histogram,
    latency: LatencyWindow,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CALLBACK_DURATION.into()), CALLBACK_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            // The bucket list is a non-empty constant, the only way this can fail.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        recorder.describe_counter(
            KeyName::from_const_str(CALLBACKS_TOTAL),
            Some(Unit::Count),
            SharedString::const_str("Callback requests by channel (app, kf, unknown) and outcome."),
        );
        recorder.describe_histogram(
            KeyName::from_const_str(CALLBACK_DURATION),
            Some(Unit::Seconds),
            SharedString::const_str("Time from request to answer for callback requests."),
        );
        recorder.describe_gauge(
            KeyName::from_const_str(BUILD_INFO),
            None,
            SharedString::const_str("Always 1; the labels carry the build's version."),
        );
        recorder
            .register_gauge(&Key::from_parts(BUILD_INFO, vec![Label::new("version", version.to_owned())]), &METADATA)
            .set(1.0);
        let channels = Channel::ALL.iter().map(|c| c.as_str()).chain(["unknown"]);
        let callbacks = channels
            .flat_map(|channel| Outcome::ALL.iter().map(move |outcome| (channel, outcome.as_str())))
            .map(|(channel, outcome)| {
                let labels = vec![Label::new("channel", channel), Label::new("outcome", outcome)];
                recorder.register_counter(&Key::from_parts(CALLBACKS_TOTAL, labels), &METADATA)
            })
            .collect();
        let callback_duration = recorder.register_histogram(&Key::from_name(CALLBACK_DURATION), &METADATA);
        Self {
            recorder,
            handle,
            callbacks,
            callback_duration,
            latency: LatencyWindow::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn callback_index(channel: Option<Channel>, outcome: Outcome) -> usize {
        let row = channel.map_or(Channel::ALL.len(), |c| c as usize);
        let column = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        row * Outcome::ALL.len() + column
    }

    /// Counts one callback and records how long it took.
    pub fn record_callback(&self, channel: Option<Channel>, outcome: Outcome, elapsed: Duration) {
        if let Some(counter) = self.callbacks.get(Self::callback_index(channel, outcome)) {
            counter.increment(1);
        }
        self.callback_duration.record(elapsed.as_secs_f64());
        self.latency.record(elapsed, current_minute());
        let total = if matches!(outcome, Outcome::Ok | Outcome::Duplicate) { &self.accepted } else { &self.refused };
        total.fetch_add(1, Ordering::Relaxed);
    }

    /// p95 of callback handling over the last minutes, and the sample count.
    pub fn callback_p95(&self) -> Option<(Duration, u64)> {
        self.latency.p95(current_minute())
    }

    /// Callbacks accepted (answered 2xx) and refused since start.
    pub fn callback_totals(&self) -> (u64, u64) {
        (self.accepted.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }

    /// A counter with labels, registered on first use; for metrics off the hot path.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        let labels = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>();
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A gauge with labels, registered on first use.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        let labels = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>();
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Folds recorded histogram samples into their buckets; call periodically so
    /// samples do not pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_build_info_counters_and_a_real_histogram() {
        let metrics = Metrics::new("1.2.3");
        metrics.record_callback(Some(Channel::Kf), Outcome::Ok, Duration::from_millis(2));
        metrics.record_callback(None, Outcome::BadSignature, Duration::from_micros(300));
        let text = metrics.render();
        assert!(text.contains("wechat_api_build_info{version=\"1.2.3\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callbacks_total{channel=\"kf\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callbacks_total{channel=\"unknown\",outcome=\"bad_signature\"} 1"), "{text}");
        assert!(text.contains("wechat_api_callback_duration_seconds_bucket{le=\"0.0025\"} 2"), "{text}");
        assert!(text.contains("wechat_api_callback_duration_seconds_count 2"), "{text}");
        assert!(text.contains("# TYPE wechat_api_callback_duration_seconds histogram"), "{text}");
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
        let a = Metrics::new("x");
        let b = Metrics::new("x");
        a.record_callback(Some(Channel::App), Outcome::Ok, Duration::ZERO);
        assert!(b.render().contains("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"} 0"));
    }
}
