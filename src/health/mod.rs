//! The health model: named checks with a status, in the shape of the IETF
//! api-health-check draft (`application/health+json`).
//!
//! Owns: [`Status`], [`CheckResult`], the checks themselves ([`checks`], also used
//! by start-up and `diagnose`), the board that holds the latest result of each
//! check, the rule that the worst check decides the overall status, and
//! [`Liveness`]. Deliberately not here: scheduling checks (the supervisor runs
//! them on its period) and HTTP (`routes::health`). Reading the board makes no
//! outbound call.

pub(crate) mod checks;
pub(crate) mod links;

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Instant;

use serde::Serialize;

/// A check's verdict. Ordered: the worst wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    /// The value of `wechat_api_check_status`: 0 pass, 1 warn, 2 fail.
    pub(crate) fn as_number(self) -> u8 {
        self as u8
    }
}

/// One observation of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CheckResult {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub time: String,
}

impl CheckResult {
    pub(crate) fn new(status: Status) -> Self {
        Self { status, observed_value: None, observed_unit: None, output: None, time: crate::clock::now_rfc3339() }
    }

    pub(crate) fn observed(mut self, value: impl Into<serde_json::Value>, unit: &str) -> Self {
        self.observed_value = Some(value.into());
        self.observed_unit = Some(unit.to_owned());
        self
    }

    pub(crate) fn output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }
}

/// The name of a check (SPEC §6, §15), `component:measure`: what the health
/// report, `wechat_api_check_status`, the alert state and the emails call it.
/// Written once here; everything else holds the enum or the string it gives.
/// A check of one token source (today `app`, `kf`; a channel's name once
/// channels are named) carries that name: `token:<name>`, `config:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum CheckName {
    UploadsWritable,
    UploadsFree,
    /// `token:<name>`: the access token of one Secret.
    Token(String),
    CallbackLatency,
    TlsCertificate,
    StoreWritable,
    StoreFree,
    OutboxBacklog,
    ForwardDelivery,
    ConfigSecrets,
    /// `config:<name>`: the configuration of one channel.
    Config(String),
    AlertsEmail,
    /// `egress:<name>`: the IP WeCom sees one channel's calls come from (SPEC §14).
    Egress(String),
    /// `aibot:<name>`: one AI bot's answers (SPEC §13).
    Aibot(String),
}

impl CheckName {
    /// The name as written: `uploads:writable`, `token:app`.
    pub(crate) fn as_string(&self) -> String {
        let fixed = match self {
            Self::Token(name) => return format!("token:{name}"),
            Self::Config(name) => return format!("config:{name}"),
            Self::Egress(name) => return format!("egress:{name}"),
            Self::Aibot(name) => return format!("aibot:{name}"),
            Self::UploadsWritable => "uploads:writable",
            Self::UploadsFree => "uploads:free",
            Self::CallbackLatency => "callback:latency",
            Self::TlsCertificate => "tls:certificate",
            Self::StoreWritable => "store:writable",
            Self::StoreFree => "store:free",
            Self::OutboxBacklog => "outbox:backlog",
            Self::ForwardDelivery => "forward:delivery",
            Self::ConfigSecrets => "config:secrets",
            Self::AlertsEmail => "alerts:email",
        };
        fixed.to_owned()
    }

    /// Every check whose name carries no source.
    const FIXED: [CheckName; 10] = [
        CheckName::UploadsWritable,
        CheckName::UploadsFree,
        CheckName::CallbackLatency,
        CheckName::TlsCertificate,
        CheckName::StoreWritable,
        CheckName::StoreFree,
        CheckName::OutboxBacklog,
        CheckName::ForwardDelivery,
        CheckName::ConfigSecrets,
        CheckName::AlertsEmail,
    ];

    /// The check a written name names (a stored alert state's key), if any.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        if let Some(fixed) = Self::FIXED.into_iter().find(|c| c.as_string() == name) {
            return Some(fixed);
        }
        match name.split_once(':') {
            Some(("token", rest)) if !rest.is_empty() => Some(Self::Token(rest.to_owned())),
            Some(("config", rest)) if !rest.is_empty() => Some(Self::Config(rest.to_owned())),
            Some(("egress", rest)) if !rest.is_empty() => Some(Self::Egress(rest.to_owned())),
            Some(("aibot", rest)) if !rest.is_empty() => Some(Self::Aibot(rest.to_owned())),
            _ => None,
        }
    }

    /// Whether every replica sees it alike (the access tokens, the
    /// configuration, WeCom refusing a channel's IP): its transitions are paged
    /// once for the cluster.
    pub(crate) fn is_cluster_wide(&self) -> bool {
        // An AI bot's streams are rows every replica reads alike.
        matches!(self, Self::Token(_) | Self::Config(_) | Self::ConfigSecrets | Self::Egress(_) | Self::Aibot(_))
    }
}

impl std::fmt::Display for CheckName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl From<CheckName> for String {
    fn from(name: CheckName) -> Self {
        name.as_string()
    }
}

/// The body of `GET /api/health`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthReport {
    pub status: Status,
    pub version: String,
    /// Which replica this report describes (SPEC §9).
    pub replica: String,
    #[serde(rename = "serviceId")]
    pub service_id: &'static str,
    pub checks: BTreeMap<String, Vec<CheckResult>>,
}

/// The latest result of every check, shared by the checks and the readers.
#[derive(Debug)]
pub(crate) struct HealthBoard {
    started: Instant,
    /// The replica the board describes (`REPLICA_ID`).
    replica: String,
    /// The latest result of each check, and since when it has had that status.
    checks: RwLock<BTreeMap<String, (CheckResult, String)>>,
}

impl HealthBoard {
    /// An empty board for `replica`.
    pub(crate) fn new(replica: impl Into<String>) -> Self {
        Self { started: Instant::now(), replica: replica.into(), checks: RwLock::new(BTreeMap::new()) }
    }

    /// The replica the board describes.
    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    /// Records the latest result of `name` (`component:measure`).
    pub(crate) fn set(&self, name: impl Into<String>, result: CheckResult) {
        // A poisoned lock only means a writer panicked mid-insert; the map is still usable.
        let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
        let name = name.into();
        let since = match checks.get(&name) {
            Some((previous, since)) if previous.status == result.status => since.clone(),
            _ => result.time.clone(),
        };
        checks.insert(name, (result, since));
    }

    /// Every check with its latest result and since when it has had that status.
    pub(crate) fn entries(&self) -> Vec<(String, CheckResult, String)> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks.iter().map(|(name, (result, since))| (name.clone(), result.clone(), since.clone())).collect()
    }

    /// Seconds since the board was created, i.e. since start-up.
    pub(crate) fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The report: every check plus uptime; the worst status wins.
    pub(crate) fn report(&self, version: &str) -> HealthReport {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let status = checks.values().map(|(c, _)| c.status).max().unwrap_or(Status::Pass);
        let mut out: BTreeMap<String, Vec<CheckResult>> =
            checks.iter().map(|(name, (result, _))| (name.clone(), vec![result.clone()])).collect();
        out.insert("uptime".into(), vec![CheckResult::new(Status::Pass).observed(self.uptime_secs(), "s")]);
        HealthReport {
            status,
            version: version.to_owned(),
            replica: self.replica.clone(),
            service_id: "wechat-api",
            checks: out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_name_reads_back_as_itself() {
        let carrying = [CheckName::Token("app".into()), CheckName::Config("hr".into())];
        let names = CheckName::FIXED.into_iter().chain(carrying);
        for name in names {
            assert_eq!(CheckName::parse(&name.to_string()), Some(name.clone()), "{name}");
        }
        assert_eq!(CheckName::Token("kf".into()).to_string(), "token:kf");
        assert_eq!(CheckName::parse("token:"), None);
        assert_eq!(CheckName::parse("replica-1/uploads:writable"), None);
        assert!(CheckName::ConfigSecrets.is_cluster_wide() && CheckName::Token("app".into()).is_cluster_wide());
        assert!(!CheckName::UploadsWritable.is_cluster_wide());
    }

    #[test]
    fn the_worst_check_decides_and_the_shape_follows_the_draft() {
        let board = HealthBoard::new("test");
        assert_eq!(board.report("1").status, Status::Pass);
        board.set("config:secrets", CheckResult::new(Status::Warn).output("identical"));
        board.set("tls:certificate", CheckResult::new(Status::Pass).observed(40, "d"));
        let report = board.report("1.0.0");
        assert_eq!(report.status, Status::Warn);
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["status"], "warn");
        assert_eq!(json["checks"]["tls:certificate"][0]["observedValue"], 40);
        assert_eq!(json["checks"]["tls:certificate"][0]["observedUnit"], "d");
        assert_eq!(json["checks"]["config:secrets"][0]["output"], "identical");
        assert!(json["checks"]["uptime"][0]["time"].as_str().expect("time").ends_with('Z'));
        board.set("store:writable", CheckResult::new(Status::Fail));
        assert_eq!(board.report("1").status, Status::Fail);
        let mut first = CheckResult::new(Status::Fail);
        first.time = "t1".into();
        board.set("x", first);
        let mut again = CheckResult::new(Status::Fail);
        again.time = "t2".into();
        board.set("x", again);
        let since = |board: &HealthBoard| board.entries().into_iter().find(|(n, _, _)| n == "x").map(|(_, _, s)| s);
        assert_eq!(since(&board).as_deref(), Some("t1"), "same status: since stays");
        let mut fixed = CheckResult::new(Status::Pass);
        fixed.time = "t3".into();
        board.set("x", fixed);
        assert_eq!(since(&board).as_deref(), Some("t3"), "a new status starts a new since");
    }
}

/// What `/api/health/live` knows: the supervisor's heartbeat and the background
/// tasks a restart would revive.
#[derive(Debug)]
pub struct Liveness {
    last_beat: std::sync::atomic::AtomicI64,
    /// Silence longer than this means the supervisor is stuck.
    max_silence_secs: i64,
    tasks: std::sync::Mutex<Vec<(&'static str, tokio::task::AbortHandle)>>,
}

impl Liveness {
    pub(crate) fn new(max_silence_secs: i64) -> Self {
        Self {
            last_beat: std::sync::atomic::AtomicI64::new(crate::store::now()),
            max_silence_secs,
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The supervisor finished a run.
    pub(crate) fn beat(&self) {
        self.last_beat.store(crate::store::now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Watches a background task: its end (panic or abort) makes the service not live.
    pub(crate) fn watch(&self, name: &'static str, task: tokio::task::AbortHandle) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push((name, task));
    }

    /// Background tasks that have stopped.
    pub(crate) fn dead_tasks(&self) -> Vec<&'static str> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Fault injection for tests: stops the named background task.
    #[cfg(any(test, feature = "testing"))]
    pub fn inject_fault(&self, name: &str) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.iter().filter(|(n, _)| *n == name).inspect(|(_, t)| t.abort()).count() > 0
    }

    /// `Ok` when live; else why a restart would help.
    pub(crate) fn check(&self) -> Result<(), String> {
        let dead = self.dead_tasks();
        if !dead.is_empty() {
            return Err(format!("background task stopped: {}", dead.join(", ")));
        }
        let silence = crate::store::now() - self.last_beat.load(std::sync::atomic::Ordering::Relaxed);
        if silence > self.max_silence_secs {
            return Err(format!("the supervisor has not run for {silence}s"));
        }
        Ok(())
    }
}
