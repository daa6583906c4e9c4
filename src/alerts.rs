//! Alert email through lettre: nothing else formats envelopes or sends mail.
//!
//! Mail goes through a bounded queue to one mailer task, which sends with a
//! timeout and retries a failed send with back-off until it goes through: a
//! failing SMTP server never blocks or crashes the service, and an alert raised
//! during an outage arrives once the server is back. Failures are counted in
//! `wechat_api_alerts_total{outcome}` and shown by the `alerts:email` check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{AlertEmail, Smtp, SmtpTls};
use crate::telemetry::Metrics;

const QUEUE: usize = 64;
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Between attempts at one mail: 1, 2, 4 … 60 s.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
const RECENT: usize = 20;
use crate::telemetry::ALERTS_TOTAL;

/// The values of `wechat_api_alerts_total`'s `outcome` label, counted from zero on start.
const OUTCOMES: [&str; 4] = ["sent", "failed", "dropped", "disabled"];

/// One email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mail {
    pub subject: String,
    pub body: String,
}

/// What the status page shows of a recent alert.
#[derive(Debug, Clone)]
pub(crate) struct RecentAlert {
    pub at: String,
    pub subject: String,
    pub outcome: &'static str,
}

/// The mailer's health, for the `alerts:email` check.
#[derive(Debug, Clone, Default)]
pub(crate) struct MailStatus {
    pub enabled: bool,
    pub sent: u64,
    pub failures: u64,
    /// The error of the last attempt when it failed; cleared by a success.
    pub last_error: Option<String>,
    pub queued: usize,
}

/// Why email cannot be set up; names the variable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AlertSetupError {
    #[error("{variable} {value:?} is not an email address: {reason}")]
    Address { variable: &'static str, value: String, reason: String },
    #[error("SMTP_SERVER: {0}")]
    Transport(String),
}

/// Hands mail to the mailer task and remembers what happened to recent alerts.
#[derive(Debug, Clone)]
pub(crate) struct Alerter {
    queue: Option<mpsc::Sender<Mail>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<MailStatus>,
    recent: Mutex<VecDeque<RecentAlert>>,
    /// When the last test mail was queued (`POST /api/alerts/test`).
    last_test: Mutex<Option<Instant>>,
}

/// At most one test mail per this period: the admin endpoint must not become a
/// way to flood the recipients (or the relay's quota).
pub(crate) const TEST_MAIL_PERIOD: Duration = Duration::from_secs(60);

/// Whether a test mail may go at `now` after one at `last`; else how long to wait.
fn test_mail_allowed(last: Option<Instant>, now: Instant) -> Result<(), Duration> {
    match last.map(|last| now.saturating_duration_since(last)) {
        Some(since) if since < TEST_MAIL_PERIOD => Err(TEST_MAIL_PERIOD - since),
        _ => Ok(()),
    }
}

impl Shared {
    fn remember(&self, subject: &str, outcome: &'static str) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(RecentAlert { at: crate::clock::now_rfc3339(), subject: subject.to_owned(), outcome });
    }

    fn update(&self, change: impl FnOnce(&mut MailStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The task that talks to the SMTP server.
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    queue: mpsc::Receiver<Mail>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

fn mailbox(variable: &'static str, value: &str) -> Result<Mailbox, AlertSetupError> {
    value.parse().map_err(|e: lettre::address::AddressError| AlertSetupError::Address {
        variable,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

fn transport(smtp: &Smtp) -> Result<AsyncSmtpTransport<Tokio1Executor>, AlertSetupError> {
    let server = smtp.server.as_str();
    let parameters = || TlsParameters::new(server.to_owned()).map_err(|e| AlertSetupError::Transport(e.to_string()));
    let tls = match smtp.tls {
        SmtpTls::Tls => Tls::Wrapper(parameters()?),
        SmtpTls::StartTls => Tls::Required(parameters()?),
        SmtpTls::Opportunistic => Tls::Opportunistic(parameters()?),
        SmtpTls::None => Tls::None,
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
        .tls(tls)
        .port(smtp.port)
        .timeout(Some(SEND_TIMEOUT));
    let builder = match (&smtp.user, &smtp.pass) {
        (Some(user), Some(pass)) => builder.credentials(Credentials::new(user.clone(), pass.expose().to_owned())),
        _ => builder,
    };
    Ok(builder.build())
}

impl Alerter {
    /// An alerter; with email configured, also the mailer task to spawn.
    pub(crate) fn new(
        email: Option<&AlertEmail>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Option<Mailer>), AlertSetupError> {
        for outcome in OUTCOMES {
            metrics.declare(ALERTS_TOTAL, &[("outcome", outcome.to_owned())]);
        }
        let shared = Arc::new(Shared::default());
        let Some(email) = email else {
            return Ok((Self { queue: None, shared, metrics }, None));
        };
        let from = mailbox("ALERT_EMAIL_FROM", &email.from)?;
        let to = email.to.iter().map(|a| mailbox("ALERT_EMAIL_TO", a)).collect::<Result<Vec<_>, _>>()?;
        let (sender, queue) = mpsc::channel(QUEUE);
        shared.update(|s| s.enabled = true);
        let mailer = Mailer {
            transport: transport(&email.smtp)?,
            from,
            to,
            queue,
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&metrics),
        };
        Ok((Self { queue: Some(sender), shared, metrics }, Some(mailer)))
    }

    /// Queues `mail`; never waits. Without email configured it is only logged.
    pub(crate) fn send(&self, mail: Mail) {
        let count = |outcome: &str| self.metrics.counter(ALERTS_TOTAL, &[("outcome", outcome.to_owned())]).increment(1);
        let Some(queue) = &self.queue else {
            // Info, not warn: the supervisor has logged each transition at WARN
            // already, and a start announced to no one is no problem (issue 20).
            tracing::info!("alert not mailed (email is off: ALERT_EMAIL_ENABLED=false): {}", mail.subject);
            count("disabled");
            self.shared.remember(&mail.subject, "not sent: email is off");
            return;
        };
        let subject = mail.subject.clone();
        match queue.try_send(mail) {
            Ok(()) => self.shared.update(|s| s.queued += 1),
            Err(_) => {
                tracing::error!("alert dropped, the mail queue is full: {subject}");
                count("dropped");
                self.shared.remember(&subject, "dropped: queue full");
            }
        }
    }

    /// Queues a test mail unless one was queued within [`TEST_MAIL_PERIOD`] before
    /// `now`; else says how long until the next may go.
    pub(crate) fn send_test(&self, mail: Mail, now: Instant) -> Result<(), Duration> {
        {
            let mut last = self.shared.last_test.lock().unwrap_or_else(|e| e.into_inner());
            test_mail_allowed(*last, now)?;
            *last = Some(now);
        }
        self.send(mail);
        Ok(())
    }

    pub(crate) fn status(&self) -> MailStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last alerts, newest last.
    pub(crate) fn recent(&self) -> Vec<RecentAlert> {
        self.shared.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

impl Mailer {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let mail = tokio::select! {
                () = shutdown.cancelled() => return,
                mail = self.queue.recv() => match mail {
                    Some(mail) => mail,
                    None => return,
                },
            };
            let mut failures = 0;
            loop {
                match self.deliver(&mail).await {
                    Ok(()) => {
                        self.metrics.counter(ALERTS_TOTAL, &[("outcome", "sent".to_owned())]).increment(1);
                        self.shared.update(|s| {
                            s.sent += 1;
                            s.last_error = None;
                            s.queued = s.queued.saturating_sub(1);
                        });
                        self.shared.remember(&mail.subject, "sent");
                        tracing::info!("alert sent: {}", mail.subject);
                        break;
                    }
                    Err(error) => {
                        failures += 1;
                        let backoff = RETRY.delay(failures);
                        self.metrics.counter(ALERTS_TOTAL, &[("outcome", "failed".to_owned())]).increment(1);
                        self.shared.update(|s| {
                            s.failures += 1;
                            s.last_error = Some(error.clone());
                        });
                        tracing::warn!(
                            retry_in_secs = backoff.as_secs(),
                            "alert email not sent ({error}): {}",
                            mail.subject
                        );
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            }
        }
    }

    async fn deliver(&self, mail: &Mail) -> Result<(), String> {
        let mut builder =
            Message::builder().from(self.from.clone()).subject(&mail.subject).header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder.body(mail.body.clone()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer from the SMTP server within {}s", SEND_TIMEOUT.as_secs())),
        }
    }
}

/// Connects to the SMTP server and logs in, without sending: for `diagnose`.
pub(crate) async fn test_login(email: &AlertEmail) -> Result<(), String> {
    let transport = transport(&email.smtp).map_err(|e| e.to_string())?;
    match tokio::time::timeout(SEND_TIMEOUT, transport.test_connection()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("the server did not accept the connection".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", SEND_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_test_mail_a_minute_and_the_wait_is_what_remains() {
        let start = Instant::now();
        assert_eq!(test_mail_allowed(None, start), Ok(()));
        assert_eq!(test_mail_allowed(Some(start), start + Duration::from_secs(15)), Err(Duration::from_secs(45)));
        assert_eq!(test_mail_allowed(Some(start), start + TEST_MAIL_PERIOD), Ok(()));
    }
}
