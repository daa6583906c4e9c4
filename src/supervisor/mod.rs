//! The supervisor: runs every check each `SUPERVISOR_INTERVAL_SECS`, publishes the
//! results (health board, `wechat_api_check_status`), feeds each check's alert
//! state machine, and mails on-call.
//!
//! Transitions that happen within `ALERT_GROUP_WAIT_SECS` of each other go out as
//! one email that also lists every check. Firing checks are kept in the store, so
//! a restart (or a crash loop) does not page again for the same firing check; a
//! restart itself is announced at most once an hour. The certificate alerts once
//! per step at 30, 14, 7, 3 and 1 days left.
//!
//! `run_once()` is what tests call; `run()` is the loop.

pub(crate) mod machine;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::alerts::{Alerter, Mail};
use crate::config::SupervisorTiming;
use crate::health::checks::Checks;
use crate::health::{CheckName, CheckResult, HealthBoard, Liveness, Status};
use crate::store::alerts::FiringRecord;
use crate::store::{now, Store};
use crate::telemetry::Metrics;
use machine::{AlertState, Transition};

/// A restart is announced at most this often.
const RESTART_NOTE_EVERY_SECS: i64 = 3600;

/// What an alert email says happened to a check (its subject's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertKind {
    Firing,
    Reminder,
    Resolved,
    /// The certificate reached a step (30, 14, 7, 3, 1 days left).
    Expiring,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "FIRING",
            Self::Reminder => "REMINDER",
            Self::Resolved => "RESOLVED",
            Self::Expiring => "EXPIRING",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition waiting to be mailed.
#[derive(Debug, Clone)]
struct Pending {
    check: String,
    kind: AlertKind,
    result: CheckResult,
    since: i64,
}

/// What the supervisor works with.
pub(crate) struct Parts {
    pub checks: Checks,
    /// Where results are published for `/api/health` and the status page.
    pub board: Arc<HealthBoard>,
    /// Beaten every round: a silent supervisor fails liveness.
    pub liveness: Arc<Liveness>,
    pub alerter: Alerter,
    /// Keeps firing checks across restarts.
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub timing: SupervisorTiming,
    /// This replica's name (`REPLICA_ID`): in emails, and the owner of its own checks.
    pub replica: String,
}

pub(crate) struct Supervisor {
    parts: Parts,
    host: String,
    states: BTreeMap<String, AlertState>,
    pending: Vec<Pending>,
    first_pending_at: Option<Instant>,
}

/// `wechat_api_check_status{check}` of one check result.
fn publish(metrics: &Metrics, check: String, status: Status) {
    metrics.gauge(crate::telemetry::CHECK_STATUS, &[("check", check)]).set(f64::from(status.as_number()));
}

impl Supervisor {
    pub(crate) fn new(parts: Parts) -> Self {
        // What start-up already put on the board (the certificate, the secrets)
        // is in `/metrics` from the first scrape; the rest after the first round.
        for (name, result, _) in parts.board.entries() {
            publish(&parts.metrics, name, result.status);
        }
        Self {
            host: parts.replica.clone(),
            parts,
            states: BTreeMap::new(),
            pending: Vec::new(),
            first_pending_at: None,
        }
    }

    /// Restores firing checks from the store and announces the (re)start.
    pub(crate) async fn restore(&mut self) {
        match self.parts.store.firing_checks().await {
            Ok(firing) => {
                for FiringRecord { check, since, last_notified_at } in firing {
                    // Other replicas' own checks are theirs to resume.
                    if let Some(check) = self.own_check(&check) {
                        self.states.insert(check, AlertState::Firing { since, last_notified_at, passes: 0 });
                    }
                }
            }
            Err(error) => tracing::error!("cannot read alert state: {error}"),
        }
        let last =
            self.parts.store.meta_value("last_restart_note").await.ok().flatten().and_then(|v| v.parse::<i64>().ok());
        if last.is_none_or(|at| now() - at >= RESTART_NOTE_EVERY_SECS) {
            let firing: Vec<&str> = self
                .states
                .iter()
                .filter(|(_, s)| matches!(s, AlertState::Firing { .. }))
                .map(|(c, _)| c.as_str())
                .collect();
            let firing = if firing.is_empty() { "none".to_owned() } else { firing.join(", ") };
            self.parts.alerter.send(Mail {
                subject: format!("[wechat-api STARTED] on {}", self.host),
                body: format!(
                    "wechat-api {} started on {}.\nChecks firing before the start: {firing}.\n\
                     (This note is sent at most once an hour.)\n",
                    crate::VERSION,
                    self.host
                ),
            });
            let _ = self.parts.store.set_meta_value("last_restart_note", now().to_string()).await;
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        self.restore().await;
        let mut tick = tokio::time::interval(self.parts.timing.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.run_once().await,
            }
        }
    }

    /// One round: every check, the state machines, maybe an email, a heartbeat.
    pub(crate) async fn run_once(&mut self) {
        let results = self.parts.checks.run_all().await;
        let at = now();
        for (name, result) in &results {
            let name = &name.to_string();
            self.parts.board.set(name.clone(), result.clone());
            publish(&self.parts.metrics, name.clone(), result.status);
            let state = self.states.entry(name.clone()).or_insert(AlertState::Ok);
            let transition = state.observe(result.status, at, self.parts.timing.repeat);
            let since = match *state {
                AlertState::Firing { since, .. } => since,
                _ => at,
            };
            match (transition, *state) {
                (
                    Some(Transition::Firing | Transition::Reminder),
                    AlertState::Firing { since, last_notified_at, .. },
                ) => {
                    let record = FiringRecord { check: self.state_key(name), since, last_notified_at };
                    if let Err(error) = self.parts.store.set_firing(record).await {
                        tracing::error!("cannot keep alert state: {error}");
                    }
                }
                (Some(Transition::Resolved), _) => {
                    let _ = self.parts.store.clear_firing(self.state_key(name)).await;
                    // A state kept by a version before replicas, under the bare name.
                    let _ = self.parts.store.clear_firing(name.clone()).await;
                }
                _ => {}
            }
            if let Some(transition) = transition {
                let kind = match transition {
                    Transition::Firing => AlertKind::Firing,
                    Transition::Reminder => AlertKind::Reminder,
                    Transition::Resolved => AlertKind::Resolved,
                };
                tracing::warn!(check = name.as_str(), "{kind}: {}", result.output.as_deref().unwrap_or("-"));
                if self.pages_here(name, kind).await {
                    self.queue(Pending { check: name.clone(), kind, result: result.clone(), since });
                }
            }
        }
        self.certificate_step(&results).await;
        self.flush(&results);
        self.parts.liveness.beat();
    }

    /// The key of `check`'s alert state in the store, which replicas share: a
    /// cluster-wide check is one state; a replica's own check is that replica's.
    fn state_key(&self, check: &str) -> String {
        if cluster_wide(check) {
            check.to_owned()
        } else {
            format!("{}/{check}", self.host)
        }
    }

    /// The check a stored state key names, if it is this replica's to resume.
    fn own_check(&self, key: &str) -> Option<String> {
        match key.split_once('/') {
            Some((replica, check)) => (replica == self.host).then(|| check.to_owned()),
            None => Some(key.to_owned()),
        }
    }

    /// Whether this replica mails `check`'s `kind` transition: always for its own
    /// checks; for a cluster-wide one, only the first replica to see it (a lease
    /// named after the transition), so on-call gets one email, not one per replica.
    /// Without a store to coordinate through, each replica pages for itself.
    async fn pages_here(&self, check: &str, kind: AlertKind) -> bool {
        if !cluster_wide(check) {
            return true;
        }
        match self.parts.store.claim_lease(format!("page:{check}:{kind}")).await {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => {
                tracing::info!(check, "{kind} is paged by another replica");
                false
            }
        }
    }

    fn queue(&mut self, pending: Pending) {
        self.first_pending_at.get_or_insert_with(Instant::now);
        self.pending.push(pending);
    }

    /// The certificate alerts once per step (30, 14, 7, 3, 1 days left).
    async fn certificate_step(&mut self, results: &[(CheckName, CheckResult)]) {
        let Some((_, result)) = results.iter().find(|(name, _)| *name == CheckName::TlsCertificate) else {
            return;
        };
        let Some(days) = result.observed_value.as_ref().and_then(serde_json::Value::as_i64) else {
            return;
        };
        let notified =
            self.parts.store.meta_value("certificate_step").await.ok().flatten().and_then(|v| v.parse::<i64>().ok());
        match machine::certificate_step(days) {
            Some(step) if notified.is_none_or(|n| step < n) => {
                let _ = self.parts.store.set_meta_value("certificate_step", step.to_string()).await;
                self.queue(Pending {
                    check: CheckName::TlsCertificate.into(),
                    kind: AlertKind::Expiring,
                    result: result.clone(),
                    since: now(),
                });
            }
            // Renewed: the steps start over for the next certificate.
            None if notified.is_some() => {
                let _ = self.parts.store.set_meta_value("certificate_step", "999".into()).await;
            }
            _ => {}
        }
    }

    /// Sends what is pending once the group wait has passed.
    fn flush(&mut self, results: &[(CheckName, CheckResult)]) {
        let Some(first) = self.first_pending_at else {
            return;
        };
        if first.elapsed() < self.parts.timing.group_wait {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.first_pending_at = None;
        self.parts.alerter.send(compose(&pending, results, &self.host));
    }
}

/// Checks every replica sees alike (the access tokens, the configuration): their
/// transitions are paged once for the cluster.
fn cluster_wide(check: &str) -> bool {
    CheckName::parse(check).is_some_and(|name| name.is_cluster_wide())
}

/// One email for a group of transitions, listing every check.
fn compose(pending: &[Pending], results: &[(CheckName, CheckResult)], host: &str) -> Mail {
    let kinds: Vec<&str> = {
        let mut kinds: Vec<&str> = pending.iter().map(|p| p.kind.as_str()).collect();
        kinds.dedup();
        kinds
    };
    let checks: Vec<&str> = pending.iter().map(|p| p.check.as_str()).collect();
    let subject = match kinds.as_slice() {
        [kind] => format!("[wechat-api {kind}] {} on {host}", checks.join(", ")),
        _ => format!(
            "[wechat-api] {} on {host}",
            pending.iter().map(|p| format!("{} {}", p.kind, p.check)).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut body = format!("wechat-api {} on {host}\n\n", crate::VERSION);
    for p in pending {
        let since = crate::clock::rfc3339(p.since);
        let _ = writeln!(body, "{} {} (since {since})", p.kind, p.check);
        if let (Some(value), unit) = (&p.result.observed_value, p.result.observed_unit.as_deref().unwrap_or("")) {
            let _ = writeln!(body, "  observed: {value} {unit}");
        }
        if let Some(output) = &p.result.output {
            let _ = writeln!(body, "  {output}");
        }
        body.push('\n');
    }
    body.push_str("All checks:\n");
    for (name, result) in results {
        let status = match result.status {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(
            body,
            "  {status:<4}  {name}{}",
            result.output.as_deref().map(|o| format!(" — {o}")).unwrap_or_default()
        );
    }
    Mail { subject, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_email_names_the_checks_and_lists_every_check() {
        let failing = CheckResult::new(Status::Fail)
            .observed(false, "writable")
            .output("cannot write UPLOAD_DIR /u; chown -R 1001:1001");
        let pending = vec![Pending {
            check: "uploads:writable".into(),
            kind: AlertKind::Firing,
            result: failing.clone(),
            since: 0,
        }];
        let results =
            vec![(CheckName::UploadsWritable, failing), (CheckName::StoreWritable, CheckResult::new(Status::Pass))];
        let mail = compose(&pending, &results, "vm1");
        assert_eq!(mail.subject, "[wechat-api FIRING] uploads:writable on vm1");
        assert!(mail.body.contains("FIRING uploads:writable (since 1970-01-01T00:00:00Z)"), "{}", mail.body);
        assert!(mail.body.contains("chown -R 1001:1001"));
        assert!(mail.body.contains("pass  store:writable"));
        let mixed = vec![
            Pending { check: "a".into(), kind: AlertKind::Firing, result: CheckResult::new(Status::Fail), since: 0 },
            Pending { check: "b".into(), kind: AlertKind::Resolved, result: CheckResult::new(Status::Pass), since: 0 },
        ];
        assert_eq!(compose(&mixed, &[], "h").subject, "[wechat-api] FIRING a, RESOLVED b on h");
    }
}
