//! The checks of SPEC §6 and §15, each a function from what it looks at to a
//! [`CheckResult`] whose output says what is wrong and what to do. The §15
//! checks (`outbox:backlog`, `forward:delivery`, `store:free`) decide in pure
//! functions with the time passed in ([`backlog_check`], [`forward_check`],
//! [`store_free_check`]); their clock is [`CheckClock`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alerts::Alerter;
use crate::channels::ChannelName;
use crate::egress::{Egress, Seen};
use crate::health::{CheckName, CheckResult, Status};
use crate::media::{Floor, FreeSpace};
use crate::store::outbox::Owed;
use crate::store::Store;
use crate::telemetry::{Metrics, FORWARD_FAILING_SECONDS, OUTBOX_BACKLOG_ACTIONS, OUTBOX_BACKLOG_AGE_SECONDS};
use crate::tls::CertificateStore;
use crate::wecom::{TokenSource, WeCom};

const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// `outbox:backlog` warns past this age of the oldest owed action (SPEC §15)…
pub(crate) const BACKLOG_WARN_SECS: i64 = 60;
/// … and fails past this one.
pub(crate) const BACKLOG_FAIL_SECS: i64 = 600;
/// `forward:delivery` fails once `FORWARD_URL` has failed this long without a success.
pub(crate) const FORWARD_FAIL_SECS: i64 = 300;

/// The clock of the checks that measure how long something has lasted: Unix
/// seconds now. Tests of the real service move it forward instead of waiting
/// ten minutes (`Application::check_clock`, `testing` only); nothing
/// else ever does.
#[derive(Debug, Default)]
pub struct CheckClock {
    ahead: AtomicI64,
}

impl CheckClock {
    pub(crate) fn now(&self) -> i64 {
        crate::store::now().saturating_add(self.ahead.load(Ordering::Relaxed))
    }

    /// Moves the checks' clock `secs` ahead of the real one.
    #[cfg(any(test, feature = "testing"))]
    pub fn advance(&self, secs: i64) {
        self.ahead.fetch_add(secs, Ordering::Relaxed);
    }
}

/// Whether `FORWARD_URL` delivers: the executor tells each attempt's outcome;
/// `forward:delivery` reads since when it has failed without a success between.
#[derive(Debug, Default)]
pub(crate) struct ForwardDelivery {
    /// Since when (Unix seconds) every attempt failed, and the last reason.
    failing: Mutex<Option<(i64, String)>>,
}

impl ForwardDelivery {
    /// A POST was taken (2xx): the failing streak, if any, is over.
    pub(crate) fn delivered(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A POST failed at `at` for `reason`; a streak keeps its start.
    pub(crate) fn failed(&self, at: i64, reason: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing.as_ref().map_or(at, |(since, _)| *since);
        *failing = Some((since, reason.to_owned()));
    }

    fn failing(&self) -> Option<(i64, String)> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the checks of SPEC §15 look at besides the rest.
pub(crate) struct Pressure {
    pub clock: Arc<CheckClock>,
    /// Present when `FORWARD_URL` is set.
    pub forward: Option<Arc<ForwardDelivery>>,
    /// `DATA_MIN_FREE_PERCENT` of `DATA_DIR`; `None` on PostgreSQL (no local volume).
    pub data_floor: Option<(Floor, PathBuf)>,
}

/// A channel whose egress IP is checked: its name and corp id (the probe's `corpid`).
pub(crate) type ProbedChannel = (ChannelName, String);

/// Everything the checks look at.
pub(crate) struct Checks {
    pub upload_dir: PathBuf,
    pub certificates: Option<Arc<CertificateStore>>,
    pub store: Store,
    pub wecom: Arc<WeCom>,
    pub metrics: Arc<Metrics>,
    pub alerter: Alerter,
    pub secrets_identical: bool,
    /// Token invalidations seen at the previous run, per channel.
    invalidations: Mutex<HashMap<String, u64>>,
    pressure: Pressure,
    /// The egress IP of each channel, SPEC §14.
    egress: Option<(Arc<Egress>, Vec<ProbedChannel>)>,
    /// The AI bot channels, each checked as `aibot:<name>`.
    aibots: Vec<ChannelName>,
    /// The long connections of the AI bots served that way.
    links: Arc<super::links::Links>,
}

impl Checks {
    pub(crate) fn new(
        upload_dir: PathBuf,
        certificates: Option<Arc<CertificateStore>>,
        store: Store,
        wecom: Arc<WeCom>,
        metrics: Arc<Metrics>,
        alerter: Alerter,
        secrets_identical: bool,
    ) -> Self {
        // The served certificate's expiry is known now: published before the
        // first scrape, not only after the first round of checks.
        if let Some(certificates) = &certificates {
            metrics
                .gauge(crate::telemetry::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &[])
                .set(certificates.not_after() as f64);
        }
        Self {
            upload_dir,
            certificates,
            store,
            wecom,
            metrics,
            alerter,
            secrets_identical,
            invalidations: Mutex::new(HashMap::new()),
            pressure: Pressure { clock: Arc::default(), forward: None, data_floor: None },
            egress: None,
            aibots: Vec::new(),
            links: Arc::default(),
        }
    }

    /// The same checks with `aibot:<name>` for each AI bot channel of `names`.
    pub(crate) fn with_aibots(self, names: Vec<ChannelName>, links: Arc<super::links::Links>) -> Self {
        Self { aibots: names, links, ..self }
    }

    /// The same checks with those of SPEC §15; their gauges exist from the first scrape.
    pub(crate) fn with_pressure(self, pressure: Pressure) -> Self {
        for family in [OUTBOX_BACKLOG_ACTIONS, OUTBOX_BACKLOG_AGE_SECONDS, FORWARD_FAILING_SECONDS] {
            self.metrics.declare(family, &[]);
        }
        Self { pressure, ..self }
    }

    /// The same checks with `egress:<name>` for each of `channels` (name, corp id).
    pub(crate) fn with_egress(self, egress: Arc<Egress>, channels: Vec<ProbedChannel>) -> Self {
        Self { egress: Some((egress, channels)), ..self }
    }

    /// `egress:<name>` of every channel, after a probe where one is due (no
    /// answer named the IP for `EGRESS_CHECK_SECS`); keeps the IPs in the store.
    async fn egress(&self, results: &mut Vec<(CheckName, CheckResult)>) {
        let Some((egress, channels)) = &self.egress else { return };
        let now = self.pressure.clock.now();
        for (channel, corp_id) in channels {
            if egress.take_probe(channel, now) {
                // The answer reaches `egress` through the channel's client.
                match tokio::time::timeout(CHECK_TIMEOUT, self.wecom.probe_egress(channel, corp_id)).await {
                    Ok(Ok(ip)) => tracing::debug!(channel = channel.as_str(), "egress probe: WeCom sees {ip}"),
                    Ok(Err(error)) => tracing::warn!(channel = channel.as_str(), "egress probe: {error}"),
                    Err(_) => tracing::warn!(channel = channel.as_str(), "egress probe: no answer within 10s"),
                }
            }
            results.push((CheckName::Egress(channel.to_string()), egress_check(&egress.seen(channel))));
        }
        if let Err(error) = egress.keep().await {
            tracing::warn!("cannot keep the egress IPs: {error}");
        }
    }

    /// Runs every check once, each under a timeout.
    pub(crate) async fn run_all(&self) -> Vec<(CheckName, CheckResult)> {
        let timed = |name: CheckName, result: Result<CheckResult, tokio::time::error::Elapsed>| {
            result.unwrap_or_else(|_| {
                CheckResult::new(Status::Fail)
                    .output(format!("{name} did not finish within {}s", CHECK_TIMEOUT.as_secs()))
            })
        };
        let mut results = Vec::new();
        let dir = self.upload_dir.clone();
        let writable =
            tokio::time::timeout(CHECK_TIMEOUT, tokio::task::spawn_blocking(move || uploads_writable(&dir))).await;
        let writable = writable.map(|r| r.unwrap_or_else(panicked));
        results.push((CheckName::UploadsWritable, timed(CheckName::UploadsWritable, writable)));
        let dir = self.upload_dir.clone();
        let free = tokio::time::timeout(CHECK_TIMEOUT, tokio::task::spawn_blocking(move || uploads_free(&dir))).await;
        results.push((CheckName::UploadsFree, timed(CheckName::UploadsFree, free.map(|r| r.unwrap_or_else(panicked)))));
        for (channel, source) in self.wecom.channel_tokens() {
            let name = CheckName::Token(channel.as_str().to_owned());
            let result = tokio::time::timeout(CHECK_TIMEOUT, self.token(channel, source)).await;
            results.push((name.clone(), timed(name, result)));
        }
        results.push((CheckName::CallbackLatency, self.callback_latency()));
        if let Some(certificates) = &self.certificates {
            results.push((CheckName::TlsCertificate, self.certificate(certificates)));
        }
        let store = tokio::time::timeout(CHECK_TIMEOUT, self.store.probe_write()).await;
        let store = match store {
            Ok(Ok(())) => CheckResult::new(Status::Pass),
            Ok(Err(error)) => CheckResult::new(Status::Fail)
                .output(format!("{error}: check DATA_DIR's free space and that uid 1001 owns it")),
            Err(_) => CheckResult::new(Status::Fail).output("the store did not answer within 10s"),
        };
        results.push((CheckName::StoreWritable, store));
        if let Some((floor, dir)) = self.pressure.data_floor.clone() {
            let free = tokio::time::timeout(
                CHECK_TIMEOUT,
                tokio::task::spawn_blocking(move || store_free_check(crate::media::free_space(&dir), floor)),
            )
            .await;
            results.push((CheckName::StoreFree, timed(CheckName::StoreFree, free.map(|r| r.unwrap_or_else(panicked)))));
        }
        results.push((CheckName::OutboxBacklog, self.backlog().await));
        if let Some(forward) = &self.pressure.forward {
            let failing = forward.failing();
            let now = self.pressure.clock.now();
            let secs = failing.as_ref().map_or(0, |(since, _)| (now - since).max(0));
            self.metrics.gauge(FORWARD_FAILING_SECONDS, &[]).set(secs as f64);
            let failing = failing.as_ref().map(|(since, reason)| (*since, reason.as_str()));
            results.push((CheckName::ForwardDelivery, forward_check(failing, now)));
        }
        for bot in &self.aibots {
            let since = self.pressure.clock.now() - AIBOT_WINDOW_SECS;
            let result = match tokio::time::timeout(CHECK_TIMEOUT, self.store.aibot_incidents(bot.clone(), since)).await
            {
                Ok(Ok((late, lost))) => aibot_check(late, lost),
                Ok(Err(error)) => CheckResult::new(Status::Warn).output(format!("cannot read the streams: {error}")),
                Err(_) => CheckResult::new(Status::Warn).output("the streams could not be read within 10s"),
            };
            let result = match self.links.taken_at(bot) {
                Some(at) => taken_check(at),
                None => result,
            };
            results.push((CheckName::Aibot(bot.to_string()), result));
        }
        results.push((CheckName::ConfigSecrets, secrets_check(self.secrets_identical)));
        results.push((CheckName::AlertsEmail, self.email()));
        self.egress(&mut results).await;
        results
    }

    /// `outbox:backlog`, and its gauges.
    async fn backlog(&self) -> CheckResult {
        match tokio::time::timeout(CHECK_TIMEOUT, self.store.outbox_owed()).await {
            Ok(Ok(owed)) => {
                let now = self.pressure.clock.now();
                let age = owed.oldest_since.map_or(0, |since| (now - since).max(0));
                self.metrics.gauge(OUTBOX_BACKLOG_ACTIONS, &[]).set(owed.actions as f64);
                self.metrics.gauge(OUTBOX_BACKLOG_AGE_SECONDS, &[]).set(age as f64);
                backlog_check(owed, now)
            }
            // The store's trouble is store:writable's finding; this one cannot tell.
            Ok(Err(error)) => CheckResult::new(Status::Warn).output(format!("cannot read the outbox: {error}")),
            Err(_) => CheckResult::new(Status::Warn).output("the outbox could not be read within 10s"),
        }
    }

    /// `token:<channel>`: a token can be had with the channel's Secret (this also
    /// refreshes it ahead of expiry). Channels sharing a corp id and Secret share
    /// the cache, so they pass or fail together, each under its own name.
    async fn token(&self, channel: &ChannelName, source: &TokenSource) -> CheckResult {
        match source.token().await {
            Ok(_) => {
                let status = source.status();
                let expires_in = status.expires_at.map(|at| at - crate::store::now());
                let previous = self
                    .invalidations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(channel.as_str().to_owned(), status.invalidations)
                    .unwrap_or(status.invalidations);
                let result = if status.invalidations > previous {
                    CheckResult::new(Status::Warn).output(format!(
                        "WeCom refused {} token(s) since the last check (42001/40001): refreshed, but watch for a changed Secret",
                        status.invalidations - previous
                    ))
                } else {
                    CheckResult::new(Status::Pass)
                };
                match expires_in {
                    Some(seconds) => result.observed(seconds, "s"),
                    None => result,
                }
            }
            Err(error) => {
                let hint = error.api().and_then(|e| e.hint()).map(|h| format!(" — fix: {h}")).unwrap_or_default();
                let mut output = error.to_string();
                if !output.contains(&hint) {
                    output.push_str(&hint);
                }
                CheckResult::new(Status::Fail).output(output)
            }
        }
    }

    fn callback_latency(&self) -> CheckResult {
        match self.metrics.callback_p95() {
            None => CheckResult::new(Status::Pass).output("no callbacks in the last 5 minutes"),
            Some((p95, samples)) => {
                let ms = p95.as_millis() as u64;
                let status = match ms {
                    ms if ms > 4000 => Status::Fail,
                    ms if ms > 1000 => Status::Warn,
                    _ => Status::Pass,
                };
                let result = CheckResult::new(status).observed(ms, "ms");
                match status {
                    Status::Pass => result.output(format!("p95 ≤ {ms} ms over {samples} callbacks")),
                    _ => result.output(format!(
                        "p95 ≤ {ms} ms over {samples} callbacks: WeCom retries answers slower than 5 s; check the disk (DATA_DIR) and the CPU"
                    )),
                }
            }
        }
    }

    /// `tls:certificate`: re-reads the files (hot reload) and reports days left.
    fn certificate(&self, certificates: &CertificateStore) -> CheckResult {
        let reloaded = certificates.reload();
        let not_after = certificates.not_after();
        self.metrics.gauge(crate::telemetry::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &[]).set(not_after as f64);
        let check = certificate_check(not_after);
        match reloaded {
            Ok(_) => check,
            Err(error) => {
                let status = check.status.max(Status::Warn);
                CheckResult { status, ..check }
                    .output(format!("{error}; still serving the previous certificate until the files are fixed"))
            }
        }
    }

    fn email(&self) -> CheckResult {
        let status = self.alerter.status();
        if !status.enabled {
            return CheckResult::new(Status::Pass).output("email alerts are off (ALERT_EMAIL_ENABLED=false)");
        }
        match status.last_error {
            None => CheckResult::new(Status::Pass).observed(status.sent, "sent"),
            Some(error) => CheckResult::new(Status::Warn).observed(status.failures, "failures").output(format!(
                "the last alert email failed ({error}); {} queued, retrying: check SMTP_SERVER, SMTP_PORT, SMTP_TLS and the credentials",
                status.queued
            )),
        }
    }
}

fn panicked(_: tokio::task::JoinError) -> CheckResult {
    CheckResult::new(Status::Fail).output("the check itself failed (panicked)")
}

fn owner_and_mode(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) => format!("owner {}:{} mode {:o}", meta.uid(), meta.gid(), meta.mode() & 0o7777),
        Err(e) => format!("cannot stat it: {e}"),
    }
}

/// `uploads:writable`: a probe file can be created and removed.
pub(crate) fn uploads_writable(dir: &Path) -> CheckResult {
    let uid = rustix::process::getuid().as_raw();
    let fix =
        format!("the service runs as uid {uid}: on the host, chown -R 1001:1001 the directory mounted at UPLOAD_DIR");
    if let Err(e) = std::fs::create_dir_all(dir) {
        return CheckResult::new(Status::Fail)
            .output(format!("cannot create UPLOAD_DIR {}: {e}; {fix}", dir.display()));
    }
    let probe = dir.join(format!(".wechat-api-probe-{}", std::process::id()));
    let written = std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe));
    let owner = owner_and_mode(dir);
    match written {
        Ok(()) => {
            CheckResult::new(Status::Pass).observed(true, "writable").output(format!("{} ({owner})", dir.display()))
        }
        Err(e) => CheckResult::new(Status::Fail)
            .observed(false, "writable")
            .output(format!("cannot write UPLOAD_DIR {}: {e} ({owner}); {fix}", dir.display())),
    }
}

/// `uploads:free`: free space, warn under 10 %, fail under 2 %.
pub(crate) fn uploads_free(dir: &Path) -> CheckResult {
    // A missing directory is `uploads:writable`'s finding; measure the volume it
    // would be created on (the nearest existing ancestor).
    match crate::media::free_space(dir) {
        Ok(Some(free)) => {
            let status = match free.percent {
                p if p < 2.0 => Status::Fail,
                p if p < 10.0 => Status::Warn,
                _ => Status::Pass,
            };
            let result = CheckResult::new(status).observed(free.percent, "%");
            let text = format!("{} free ({} MiB)", dir.display(), free.bytes / (1024 * 1024));
            match status {
                Status::Pass => result.output(text),
                _ => result.output(format!("{text}: free space on the upload volume or move UPLOAD_DIR")),
            }
        }
        Ok(None) => CheckResult::new(Status::Warn).output("the file system reports no size"),
        Err(e) => CheckResult::new(Status::Fail)
            .output(format!("cannot read free space of UPLOAD_DIR {}: {e}", dir.display())),
    }
}

/// `outbox:backlog` (SPEC §15): the age of the oldest action still owed —
/// waiting, paced under WeCom's limits, or retried after errors — warns past
/// [`BACKLOG_WARN_SECS`] and fails past [`BACKLOG_FAIL_SECS`].
pub(crate) fn backlog_check(owed: Owed, now: i64) -> CheckResult {
    let age = owed.oldest_since.map_or(0, |since| (now - since).max(0));
    let status = match age {
        a if a > BACKLOG_FAIL_SECS => Status::Fail,
        a if a > BACKLOG_WARN_SECS => Status::Warn,
        _ => Status::Pass,
    };
    let result = CheckResult::new(status).observed(age, "s");
    let text = match owed.actions {
        0 => "nothing owed".to_owned(),
        n => format!("{n} action(s) owed, the oldest for {age} s"),
    };
    match status {
        Status::Pass => result.output(text),
        _ => result.output(format!(
            "{text}: WeCom or FORWARD_URL is failing or slow (see token:* and forward:delivery, \
             wechat_api_outbox_actions_total), or a flood of sends is paced at 30 a minute per member"
        )),
    }
}

/// How far back `aibot:<name>` looks: the last hour.
const AIBOT_WINDOW_SECS: i64 = 3_600;

/// `aibot:<name>` (SPEC §13), over the streams of the last hour: fails when an
/// answer was lost (`late`: closed at the deadline; `lost`: could not be
/// delivered any more), warns when one went late.
pub(crate) fn aibot_check(late: i64, lost: i64) -> CheckResult {
    let result = CheckResult::new(match (late, lost) {
        (_, lost) if lost > 0 => Status::Fail,
        (late, _) if late > 0 => Status::Warn,
        _ => Status::Pass,
    });
    match (late, lost) {
        (_, lost) if lost > 0 => result.observed(lost, "answers").output(format!(
            "{lost} answer(s) lost in the last hour (response_url expired, used or refused; see GET /api/v1/messages/stream_<id>)"
        )),
        (late, _) if late > 0 => result.observed(late, "streams").output(format!(
            "{late} stream(s) closed at AIBOT_STREAM_DEADLINE_SECS in the last hour: the bot answers slowly; the rest went through response_url"
        )),
        _ => result.observed(0, "streams").output("no stream late or lost in the last hour"),
    }
}

/// `aibot:<name>` while another client holds the bot's long connection
/// (`disconnected_event` at `at`): fails until this appliance subscribes again.
pub(crate) fn taken_check(at: i64) -> CheckResult {
    CheckResult::new(Status::Fail).output(format!(
        "another client subscribed with this bot's Secret and took the long connection (disconnected_event at unix {at}): find the other program using AIBOT_SECRET; subscribing again 60 s after the kick"
    ))
}

/// `forward:delivery` (SPEC §15): `failing` is since when every POST to
/// `FORWARD_URL` failed, and the last reason; fails past [`FORWARD_FAIL_SECS`],
/// warns before, passes once a POST succeeds.
pub(crate) fn forward_check(failing: Option<(i64, &str)>, now: i64) -> CheckResult {
    let Some((since, reason)) = failing else {
        return CheckResult::new(Status::Pass).observed(0, "s");
    };
    let secs = (now - since).max(0);
    let status = if secs > FORWARD_FAIL_SECS { Status::Fail } else { Status::Warn };
    CheckResult::new(status).observed(secs, "s").output(format!(
        "FORWARD_URL has failed for {secs} s ({reason}): records wait in the outbox and are retried; \
         check the receiver"
    ))
}

/// `store:free` (SQLite's `DATA_DIR` only): fails below `DATA_MIN_FREE_PERCENT`
/// (the send API answers 503 then), warns below twice that.
pub(crate) fn store_free_check(free: std::io::Result<Option<FreeSpace>>, floor: Floor) -> CheckResult {
    match free {
        Ok(Some(free)) => {
            let status = match floor.refuses(free) {
                Some(_) => Status::Fail,
                None if free.percent < 2.0 * f64::from(floor.percent) => Status::Warn,
                None => Status::Pass,
            };
            let result = CheckResult::new(status).observed(free.percent, "%");
            match (status, floor.refuses(free)) {
                (Status::Pass, _) => result.output(format!("{:.1} % free ({} MiB)", free.percent, free.bytes >> 20)),
                (_, Some(reason)) => result.output(format!(
                    "{reason}: the send API answers 503 and callbacks keep the rest; free space on DATA_DIR's volume"
                )),
                (_, None) => result.output(format!(
                    "{:.1} % free, near DATA_MIN_FREE_PERCENT ({} %): free space on DATA_DIR's volume",
                    free.percent, floor.percent
                )),
            }
        }
        Ok(None) => CheckResult::new(Status::Warn).output("the file system reports no size"),
        Err(e) => CheckResult::new(Status::Fail).output(format!("cannot read free space of DATA_DIR: {e}")),
    }
}

/// `egress:<name>`: `fail` while WeCom refuses the IP (60020), `warn` from a
/// change until a call from the new IP succeeded, else `pass`; the IP is the
/// observed value.
pub(crate) fn egress_check(seen: &Seen) -> CheckResult {
    let Some(ip) = seen.ip else {
        return CheckResult::new(Status::Pass)
            .output("no WeCom answer has named the egress IP yet (asked after EGRESS_CHECK_SECS)");
    };
    let since = crate::clock::rfc3339;
    if let Some(at) = seen.refused_since {
        return CheckResult::new(Status::Fail).observed(ip.to_string(), "ip").output(format!(
            "WeCom refuses calls from {ip} (60020) since {}: add {ip} to the app's trusted IPs ({}); \
             the channel's outbox is parked and tries one action a minute",
            since(at),
            crate::egress::CONSOLE_PATH
        ));
    }
    if let Some((before, at)) = seen.changed_from {
        return CheckResult::new(Status::Warn).observed(ip.to_string(), "ip").output(format!(
            "the egress IP changed from {before} to {ip} at {}: make sure {ip} is among the app's trusted IPs \
             ({}); warn until a call from it succeeds",
            since(at),
            crate::egress::CONSOLE_PATH
        ));
    }
    CheckResult::new(Status::Pass).observed(ip.to_string(), "ip").output(format!(
        "WeCom sees {ip} (since {}, last named {})",
        since(seen.first_seen),
        since(seen.last_seen)
    ))
}

/// `config:secrets`: identical app and kf Secrets are a warning.
pub(crate) fn secrets_check(identical: bool) -> CheckResult {
    if identical {
        CheckResult::new(Status::Warn).output(
            "WECOM_SECRET and WECOM_KF_SECRET are identical: fine for a self-built app authorised for 微信客服, \
             otherwise kf sends fail with 95018 (GET /api/test-wecom-connection tells which)",
        )
    } else {
        CheckResult::new(Status::Pass)
    }
}

/// `config:<name>` of a channel from the config file (SPEC §12): what it is, and
/// a warning when an app channel has no Secret (it receives and forwards, but
/// cannot reply or download media). Set once: the configuration does not change.
pub(crate) fn channel_config_check(channel: &crate::config::ChannelSpec) -> CheckResult {
    let what =
        format!("{} channel of corp {} at {}", channel.kind().as_str(), channel.corp_id.as_str(), channel.path());
    match channel.secret() {
        Some(_) => CheckResult::new(Status::Pass).output(what),
        None => CheckResult::new(Status::Warn).output(format!(
            "{what}: no Secret (channels.{}.secret or secret_file), so no replies and no media downloads",
            channel.name
        )),
    }
}

/// `tls:certificate` from the days left: warn under 14, fail under 3 or expired.
pub(crate) fn certificate_check(not_after: i64) -> CheckResult {
    let now = crate::store::now();
    let days_left = (not_after - now).div_euclid(86_400);
    let status = match days_left {
        d if d < 3 => Status::Fail,
        d if d < 14 => Status::Warn,
        _ => Status::Pass,
    };
    let result = CheckResult::new(status).observed(days_left, "d");
    match status {
        Status::Pass => result,
        _ if not_after <= now => {
            result.output("the certificate has expired: replace the files at TLS_CERT_PATH / TLS_KEY_PATH")
        }
        _ => result.output(format!(
            "the certificate expires in {days_left} days: renew it and replace the files (picked up without a restart)"
        )),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_ai_bot_warns_on_a_late_stream_and_fails_on_a_lost_answer() {
        assert_eq!(aibot_check(0, 0).status, Status::Pass);
        assert_eq!(aibot_check(2, 0).status, Status::Warn);
        assert_eq!(aibot_check(2, 1).status, Status::Fail);
        assert_eq!(CheckName::parse("aibot:bot2"), Some(CheckName::Aibot("bot2".into())));
        assert!(CheckName::Aibot("bot2".into()).is_cluster_wide());
    }

    use super::*;

    #[test]
    fn a_path_blocked_by_a_file_is_not_writable_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(uploads_writable(dir.path()).status, Status::Pass);
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "x").expect("write");
        let result = uploads_writable(&blocked.join("uploads"));
        assert_eq!(result.status, Status::Fail);
        assert!(result.output.as_deref().expect("output").contains("chown -R 1001:1001"));
    }

    #[test]
    fn free_space_is_a_percentage() {
        let dir = tempfile::tempdir().expect("dir");
        let result = uploads_free(dir.path());
        assert_eq!(result.observed_unit.as_deref(), Some("%"));
    }

    #[test]
    fn the_backlog_warns_past_a_minute_and_fails_past_ten() {
        let at = |since: Option<i64>| {
            backlog_check(Owed { actions: i64::from(since.is_some()), oldest_since: since }, 1_000)
        };
        assert_eq!(at(None).status, Status::Pass);
        assert_eq!(at(Some(1_000 - 60)).status, Status::Pass);
        assert_eq!(at(Some(1_000 - 61)).status, Status::Warn);
        assert_eq!(at(Some(1_000 - 600)).status, Status::Warn);
        let failing = at(Some(1_000 - 601));
        assert_eq!((failing.status, failing.observed_value), (Status::Fail, Some(601.into())));
        assert!(failing.output.expect("output").contains("1 action(s) owed, the oldest for 601 s"));
        // A clock behind the store's (another replica queued it) is no negative age.
        assert_eq!(at(Some(1_005)).observed_value, Some(0.into()));
    }

    #[test]
    fn forward_delivery_fails_after_five_minutes_of_failures_and_passes_on_a_success() {
        assert_eq!(forward_check(None, 1_000).status, Status::Pass);
        assert_eq!(forward_check(Some((1_000, "HTTP 500")), 1_000).status, Status::Warn);
        assert_eq!(forward_check(Some((700, "HTTP 500")), 1_000).status, Status::Warn);
        let failing = forward_check(Some((699, "HTTP 500")), 1_000);
        assert_eq!(failing.status, Status::Fail);
        assert!(failing.output.expect("output").contains("failed for 301 s (HTTP 500)"));
        let delivery = ForwardDelivery::default();
        delivery.failed(10, "HTTP 500");
        delivery.failed(20, "timed out");
        assert_eq!(delivery.failing(), Some((10, "timed out".to_owned())), "a streak keeps its start");
        delivery.delivered();
        assert_eq!(delivery.failing(), None);
    }

    #[test]
    fn the_store_volume_fails_below_its_floor_and_warns_near_it() {
        let free = |percent: f64| Ok(Some(FreeSpace { percent, bytes: 1 << 30 }));
        let fail = store_free_check(free(4.9), Floor::data(5));
        assert_eq!(fail.status, Status::Fail);
        assert!(fail.output.expect("output").contains("DATA_MIN_FREE_PERCENT is 5 %"));
        assert_eq!(store_free_check(free(9.9), Floor::data(5)).status, Status::Warn);
        assert_eq!(store_free_check(free(10.0), Floor::data(5)).status, Status::Pass);
        assert_eq!(store_free_check(free(0.5), Floor::data(0)).status, Status::Pass, "0 = no floor");
    }

    #[test]
    fn the_egress_check_fails_with_the_ip_to_add_and_warns_after_a_change() {
        use crate::egress::Answer;
        let ip = |text: &str| Some(text.parse().expect("ip"));
        let mut seen = Seen::default();
        assert_eq!(egress_check(&seen).status, Status::Pass);
        seen.observe(Answer { business: false, errcode: 41004, ip: ip("203.0.113.7") }, 100);
        let check = egress_check(&seen);
        assert_eq!((check.status, check.observed_value), (Status::Pass, Some("203.0.113.7".into())));
        seen.observe(Answer { business: true, errcode: 60020, ip: ip("203.0.113.7") }, 110);
        let output = egress_check(&seen).output.unwrap_or_default();
        assert_eq!(egress_check(&seen).status, Status::Fail);
        assert!(output.contains("add 203.0.113.7") && output.contains("企业可信IP"), "{output}");
        seen.observe(Answer { business: true, errcode: 40014, ip: ip("198.51.100.9") }, 120);
        let check = egress_check(&seen);
        assert_eq!(check.status, Status::Warn);
        assert!(check.output.unwrap_or_default().contains("from 203.0.113.7 to 198.51.100.9"));
    }

    #[test]
    fn certificate_thresholds() {
        let now = crate::store::now();
        assert_eq!(certificate_check(now + 40 * 86_400).status, Status::Pass);
        assert_eq!(certificate_check(now + 10 * 86_400).status, Status::Warn);
        assert_eq!(certificate_check(now + 2 * 86_400 - 10).status, Status::Fail);
        assert!(certificate_check(now - 10).output.expect("output").contains("expired"));
    }
}
