//! Configuration: raw settings from defaults, a TOML file, `.env` and the
//! environment, validated once into a typed [`Config`].
//!
//! One room per job:
//! - [`variables`]: THE table of variables (name, alias, default, secret, meaning);
//!   every other part reads it.
//! - [`secret`]: [`Secret`], [`Token`], [`CorpId`], fresh Tokens and keys.
//! - [`layering`]: [`Sources`] and [`Settings`]: defaults < TOML < `.env` < environment.
//! - [`listen`]: [`ListenConfig`], validated on its own too, and its local URL.
//! - `validation`: [`Config::from_settings`], one line per problem.
//! - [`channels`]: [`Channels`], every channel's credentials, and the
//!   `[channels.<name>]` tables of the TOML file (SPEC §12).
//!
//! This file owns the typed [`Config`] and [`load`]. Deliberately not here:
//! reading certificate files (see `tls`) and anything at run time: nothing reads
//! the environment after [`load`].

pub(crate) mod channels;
pub(crate) mod layering;
pub(crate) mod listen;
pub(crate) mod proxy;
pub(crate) mod secret;
mod validation;
pub(crate) mod variables;

use std::path::PathBuf;
use std::time::Duration;

use crate::crypto::AesKey;
use crate::networks::Networks;

pub(crate) use channels::{ChannelSpec, Channels, CALLBACK_PATH};
pub(crate) use layering::{Settings, Sources};
pub(crate) use listen::{is_loopback, ListenConfig};
pub(crate) use proxy::ProxyUrl;
pub(crate) use secret::{generate_encoding_aes_key, Secret, Token};
pub(crate) use variables::Var;

/// The shortest `RETENTION_SECS`: it is also the dedup window.
pub(crate) const MIN_RETENTION_SECS: u64 = 60;

/// The shortest bearer token worth having: `SEND_TOKEN` must be this long (SPEC
/// §10), a shorter `ADMIN_TOKEN` is a warning (SPEC §2 sets it no minimum).
/// Counted in characters, not bytes.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;

/// A replay window under this starts with a warning: WeCom retries late, and clocks drift.
const SHORT_CALLBACK_MAX_AGE: Duration = Duration::from_secs(600);

/// The most `CONNECTIONS_PER_ADDRESS` may be: idle connections cost ~20 KiB
/// each, so one address may then hold some 200 MiB; more is a setting that
/// caps nothing (a load balancer belongs in `TRUSTED_PROXIES` instead).
pub(crate) const MAX_CONNECTIONS_PER_ADDRESS: u32 = 10_000;

/// Configuration that cannot be used, one readable line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// The Token and EncodingAESKey of one callback channel.
#[derive(Clone, Debug)]
pub struct CallbackKeys {
    /// The callback Token: signatures.
    pub token: Token,
    /// The EncodingAESKey: encryption.
    pub aes_key: AesKey,
}

/// How to talk to the SMTP relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS when the server offers it (the default).
    Opportunistic,
    /// STARTTLS, required.
    StartTls,
    /// Implicit TLS, usually port 465.
    Tls,
    /// Plain SMTP: only on a trusted network.
    None,
}

/// The SMTP relay alert email goes through.
#[derive(Clone, Debug)]
pub struct Smtp {
    /// `SMTP_SERVER`.
    pub server: String,
    /// `SMTP_PORT`.
    pub port: u16,
    /// `SMTP_USER`.
    pub user: Option<String>,
    /// `SMTP_PASS`.
    pub pass: Option<Secret>,
    /// `SMTP_TLS`.
    pub tls: SmtpTls,
}

/// Alert email settings; present only when `ALERT_EMAIL_ENABLED=true`.
#[derive(Clone, Debug)]
pub struct AlertEmail {
    /// The relay the mail goes through.
    pub smtp: Smtp,
    /// `ALERT_EMAIL_FROM`, else `SMTP_USER`.
    pub from: String,
    /// `ALERT_EMAIL_TO`, split at commas.
    pub to: Vec<String>,
}

/// The downstream webhook every normalized message is posted to.
#[derive(Clone, Debug)]
pub struct Forward {
    /// `FORWARD_URL`.
    pub url: String,
    /// `FORWARD_SECRET`, the HMAC key of `X-Signature`.
    pub secret: Option<Secret>,
}

/// `LOG_FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration. Built only by [`load`] / [`Config::from_settings`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Every channel: the built-in `app` (`WECOM_*`) and `kf` (`WECOM_KF_*`, its
    /// Token and key falling back to the app's) when the variables define them,
    /// then the `[channels.<name>]` tables of the TOML file.
    pub channels: Channels,
    /// `WECOM_API_BASE_URL`, `WECOM_PROXY_URL` and `EGRESS_CHECK_SECS`.
    pub wecom: WeComApi,
    /// Where and how the service listens.
    pub listen: ListenConfig,
    /// `CONNECTIONS_PER_ADDRESS` and `SEND_QUEUE_MAX`.
    pub limits: Limits,
    /// `UPLOAD_DIR`.
    pub upload_dir: PathBuf,
    /// `DATA_DIR`, `DATABASE_URL` and `DATABASE_POOL_SIZE`.
    pub store: StoreSettings,
    /// `ADMIN_TOKEN`; `None` disables the admin endpoints.
    pub admin_token: Option<Secret>,
    /// `FORWARD_URL` and `FORWARD_SECRET`.
    pub forward: Option<Forward>,
    /// `WELCOME_TEXT`, `KF_REPLAY_HISTORY` and the handover (`HANDOFF_*`).
    pub kf: KfSettings,
    /// The supervisor's timing, alert email and `HEARTBEAT_URL` (SPEC §6).
    pub monitoring: Monitoring,
    /// `RETENTION_SECS`, `MEDIA_RETENTION_SECS`, `MEDIA_MIN_FREE_PERCENT` and
    /// `DATA_MIN_FREE_PERCENT`.
    pub retention: Retention,
    /// `CALLBACK_MAX_AGE_SECS`; `None` (`0`): timestamps are not checked for age.
    pub callback_max_age: Option<Duration>,
    /// `LOG_FORMAT` and `RUST_LOG`.
    pub logging: Logging,
    /// `REPLICA_ID`, else the host name.
    pub replica: String,
    /// `LEASE_SECS`.
    pub lease: Duration,
    /// `SEND_TOKEN`; `None` turns the send API off.
    pub send_token: Option<Secret>,
    /// `TRUSTED_NETWORKS` and `TRUSTED_PROXIES`: who sees more than WeCom needs.
    pub(crate) surface: Surface,
    /// `AIBOT_STREAM_DEADLINE_SECS` and `AIBOT_LATE_TEXT` (SPEC §13).
    pub aibot: AibotSettings,
}

impl Config {
    /// The proxy `channel`'s WeCom calls go through: its own `proxy_url`, else
    /// `WECOM_PROXY_URL`.
    pub(crate) fn proxy_for<'a>(&'a self, channel: &'a ChannelSpec) -> Option<&'a ProxyUrl> {
        channel.proxy.as_ref().or(self.wecom.proxy.as_ref())
    }
}

/// How the appliance calls WeCom's API.
#[derive(Clone, Debug)]
pub struct WeComApi {
    /// `WECOM_API_BASE_URL`, without a trailing slash.
    pub base_url: String,
    /// `WECOM_PROXY_URL`: the proxy of every WeCom API call (a channel's
    /// `proxy_url` overrides it); `None`: direct, whatever the environment says.
    pub proxy: Option<ProxyUrl>,
    /// `EGRESS_CHECK_SECS` (SPEC §14): a channel's egress IP is asked for after this
    /// long without a WeCom answer naming it; at least 10 s.
    pub egress_check: Duration,
}

/// Where the state lives.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `DATA_DIR`: SQLite's directory (and volume).
    pub data_dir: PathBuf,
    /// `DATABASE_URL` and `DATABASE_POOL_SIZE`; `None`: SQLite in `data_dir`.
    pub database: Option<Database>,
}

/// How the kf channels answer customers (SPEC §10).
#[derive(Clone, Debug, Default)]
pub struct KfSettings {
    /// `WELCOME_TEXT`: sent on `enter_session` (a channel's own `welcome_text` overrides it).
    pub welcome_text: Option<String>,
    /// `KF_REPLAY_HISTORY`: answer messages older than the first start.
    pub replay_history: bool,
    /// `HANDOFF_KEYWORDS`, `HANDOFF_TEXT`, `HANDOFF_SERVICER`.
    pub handoff: Handoff,
}

/// How much one client address and one channel may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `CONNECTIONS_PER_ADDRESS`, 1..=[`MAX_CONNECTIONS_PER_ADDRESS`].
    pub connections_per_address: u32,
    /// `SEND_QUEUE_MAX`: sends queued and not yet finished per channel, at least 1.
    pub send_queue_max: u32,
}

/// Self-monitoring (SPEC §6): how the supervisor runs, whom it mails, and the
/// outside monitor it pings.
#[derive(Clone, Debug)]
pub struct Monitoring {
    /// `SUPERVISOR_INTERVAL_SECS`, `ALERT_GROUP_WAIT_SECS` and `ALERT_REPEAT_HOURS`.
    pub timing: SupervisorTiming,
    /// Present only when `ALERT_EMAIL_ENABLED`.
    pub alert_email: Option<AlertEmail>,
    /// `HEARTBEAT_URL`: fetched every minute (a dead-man's switch).
    pub heartbeat_url: Option<String>,
}

/// The supervisor's rhythm: how often it checks, and when it mails.
#[derive(Clone, Copy, Debug)]
pub struct SupervisorTiming {
    /// `SUPERVISOR_INTERVAL_SECS`: between two rounds of checks.
    pub interval: Duration,
    /// `ALERT_GROUP_WAIT_SECS`: transitions this close together go out as one email.
    pub group_wait: Duration,
    /// `ALERT_REPEAT_HOURS`: between reminders of a firing check; `None` when
    /// reminders are off (`0`).
    pub repeat: Option<Duration>,
}

/// What the appliance keeps, for how long, and the free space it leaves on
/// each volume.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// `RETENTION_SECS`: how long handled journal entries (and so their dedup
    /// keys) and finished outbox actions are kept.
    pub records: Duration,
    /// `MEDIA_RETENTION_SECS`: how long downloaded media are kept; `None`: forever (`0`).
    pub media: Option<Duration>,
    /// `MEDIA_MIN_FREE_PERCENT`, 0..=100: no download below it; 0 = no floor.
    pub media_min_free_percent: u8,
    /// `DATA_MIN_FREE_PERCENT`, 0..=100: no send queued below it; 0 = no floor.
    /// Only SQLite has a `DATA_DIR` volume.
    pub data_min_free_percent: u8,
}

/// `LOG_FORMAT` and `RUST_LOG`.
#[derive(Clone, Debug)]
pub struct Logging {
    /// `LOG_FORMAT`.
    pub format: LogFormat,
    /// `RUST_LOG`, a valid `tracing` filter; `None`: the built-in default.
    pub filter: Option<String>,
}

/// How every AI bot's streams end (SPEC §13).
#[derive(Debug, Clone)]
pub struct AibotSettings {
    /// `AIBOT_STREAM_DEADLINE_SECS`: an unfinished stream is closed this long after the user's message.
    pub deadline: Duration,
    /// `AIBOT_LATE_TEXT`: appended to a stream closed at the deadline.
    pub late_text: String,
    /// `AIBOT_WS_URL`: the long connection's endpoint (`wss://`, or `ws://` in tests).
    pub ws_url: String,
    /// The long connection's periods: SPEC's values; only tests shorten them.
    pub ws: WsTiming,
}

impl Default for AibotSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(330),
            late_text: "（回答较长，完成后将另行发送）".to_owned(),
            ws_url: "wss://openws.work.weixin.qq.com".to_owned(),
            ws: WsTiming::default(),
        }
    }
}

/// The long connection's periods (SPEC §13). Not variables: SPEC fixes them;
/// tests shorten them on the `Config` they build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsTiming {
    /// Between pings (30 s); two unanswered ones mean the connection is dead.
    pub ping: Duration,
    /// The first reconnect delay (1 s), doubling with jitter up to `backoff_cap`.
    pub backoff_first: Duration,
    /// The longest reconnect delay (60 s).
    pub backoff_cap: Duration,
    /// After `disconnected_event`: no subscribe for this long (60 s).
    pub kicked_wait: Duration,
    /// How long to wait for the subscribe's answer (10 s).
    pub answer_timeout: Duration,
}

impl Default for WsTiming {
    fn default() -> Self {
        Self {
            ping: Duration::from_secs(30),
            backoff_first: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            kicked_wait: Duration::from_secs(60),
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Handing a kf conversation to a human (SPEC §10).
#[derive(Clone, Debug, Default)]
pub struct Handoff {
    /// Customer texts (trimmed) that ask for a human.
    pub keywords: Vec<String>,
    /// Sent to the customer just before the handover.
    pub text: String,
    /// The servicer to hand over to (state 3); `None`: the queue (state 2).
    pub servicer: Option<String>,
}

/// Who may see more of port 8092 than WeCom needs (SPEC §11).
#[derive(Clone, Debug, Default)]
pub(crate) struct Surface {
    /// `TRUSTED_NETWORKS`: clients that may read the status page, the full
    /// health report and the metrics without a bearer.
    pub trusted_networks: Networks,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed; empty = none.
    pub trusted_proxies: Networks,
}

/// The PostgreSQL store of replicas (SPEC §9).
#[derive(Clone, Debug)]
pub struct Database {
    /// The URL, password included: a secret.
    pub url: Secret,
    /// Connections per replica.
    pub pool_size: usize,
}

impl Database {
    /// The URL as logs may show it: `postgres://user:***@host:port/dbname`.
    pub(crate) fn shown(&self) -> String {
        match url::Url::parse(self.url.expose()) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.set_query(None);
                url.to_string()
            }
            Err(_) => "(unparsable)".to_owned(),
        }
    }
}

/// This machine's name (the default `REPLICA_ID`), or `unknown` when it has none.
pub(crate) fn host_name() -> String {
    let uname = rustix::system::uname();
    match uname.nodename().to_str() {
        Ok(name) if !name.is_empty() => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// The shortest `MEDIA_RETENTION_SECS` other than 0: the forward receiver must
/// have time to fetch a file before it goes.
pub(crate) const MIN_MEDIA_RETENTION_SECS: u64 = 3600;

/// The shortest `LEASE_SECS`: an action may take 30 s, and its lease must outlast it.
pub(crate) const MIN_LEASE_SECS: u64 = 35;

impl Config {
    /// `WECOM_SECRET == WECOM_KF_SECRET`: fine for a self-built app authorised for
    /// kf since 2023-12, a known cause of 95018 otherwise.
    pub(crate) fn secrets_identical(&self) -> bool {
        let secret = |channel: Option<&std::sync::Arc<ChannelSpec>>| channel.and_then(|c| c.secret().cloned());
        match (secret(self.channels.builtin_app()), secret(self.channels.builtin_kf())) {
            (Some(app), Some(kf)) => app.matches(kf.expose()),
            _ => false,
        }
    }

    /// Findings worth a warning at start-up, in `diagnose` and in `/api/health`.
    pub(crate) fn warnings(&self) -> Vec<String> {
        use variables::{ADMIN_TOKEN, CALLBACK_MAX_AGE_SECS, HTTPS_PORT, TLS_ENABLED, WECOM_KF_SECRET, WECOM_SECRET};
        let mut warnings = Vec::new();
        if self.admin_token.as_ref().is_some_and(|token| token.expose().chars().count() < MIN_TOKEN_CHARS) {
            // An old .env keeps working; the length is not shown (the bearer check hides it too).
            warnings.push(format!(
                "{ADMIN_TOKEN} is shorter than {MIN_TOKEN_CHARS} characters: short and guessable, and it opens the \
                 admin endpoints (`wechat-api keygen` prints a long random one)"
            ));
        }
        if self.callback_max_age.is_some_and(|age| age < SHORT_CALLBACK_MAX_AGE) {
            // WeCom retries for a while, and clocks drift: a short window can refuse WeCom itself.
            warnings.push(format!(
                "{CALLBACK_MAX_AGE_SECS} is under {} s: a callback WeCom retries late, or a clock a few minutes off, \
                 is refused as stale (403 stale_timestamp)",
                SHORT_CALLBACK_MAX_AGE.as_secs()
            ));
        }
        if self.secrets_identical() {
            warnings.push(format!(
                "{WECOM_SECRET} and {WECOM_KF_SECRET} are identical: fine for a self-built app authorised for 微信客服, \
                 otherwise kf sends fail with 95018 (run `wechat-api diagnose`)"
            ));
        }
        let (app, kf) = (self.channels.builtin_app(), self.channels.builtin_kf());
        if kf.is_some_and(|kf| kf.secret().is_none()) && app.is_some_and(|app| app.secret().is_some()) {
            warnings.push(format!(
                "{WECOM_KF_SECRET} is not set: kf APIs use {WECOM_SECRET} (95018 on kf sends means it may not)"
            ));
        }
        if !self.listen.tls_enabled {
            warnings.push(format!(
                "{TLS_ENABLED}=false: serving plain HTTP on {HTTPS_PORT} (only behind a TLS-terminating proxy)"
            ));
        }
        warnings
    }
}

/// Reads and validates the configuration: the config and the warnings to log.
pub fn load(sources: &Sources) -> Result<(Config, Vec<String>), ConfigErrors> {
    validate(&Settings::read(sources)?)
}

/// Validates `settings` (read, then perhaps adjusted, as demo mode does): the
/// config and the warnings to log.
pub(crate) fn validate(settings: &Settings) -> Result<(Config, Vec<String>), ConfigErrors> {
    let config = Config::from_settings(settings)?;
    let mut warnings = settings.warnings.clone();
    warnings.extend(config.warnings());
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources { env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Sources::default() }
    }

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![("WECOM_CORP_ID", "ww1436e0e65a779aee"), ("WECOM_TOKEN", "QDG6eK"), ("WECOM_ENCODING_AES_KEY", KEY)]
    }

    fn errors_of(pairs: &[(&str, &str)]) -> Vec<String> {
        load(&env(pairs)).expect_err("invalid").0
    }

    #[test]
    fn minimal_configuration_gets_the_documented_defaults() {
        let (config, warnings) = load(&env(&minimal())).expect("valid");
        assert_eq!(config.listen.https_port, 8092);
        assert_eq!(config.listen.bind_address.to_string(), "0.0.0.0");
        assert!(config.listen.tls_enabled);
        assert_eq!(config.listen.cert_path, PathBuf::from("certs/server.crt"));
        assert_eq!(config.upload_dir, PathBuf::from("/app/wwwroot/uploadall"));
        assert_eq!(config.store.data_dir, PathBuf::from("/app/data"));
        assert_eq!(config.wecom.base_url, "https://qyapi.weixin.qq.com");
        assert_eq!(config.monitoring.timing.interval, Duration::from_secs(30));
        assert_eq!(config.monitoring.timing.repeat, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(config.retention.records, Duration::from_secs(7 * 24 * 3600));
        assert!(config.monitoring.alert_email.is_none());
        assert_eq!(
            config.channels.builtin_kf().expect("kf").keys.token.expose(),
            "QDG6eK",
            "kf falls back to the app Token"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn short_key_names_the_variable_and_the_length() {
        let mut pairs = minimal();
        pairs[2].1 = &KEY[..42];
        assert_eq!(
            errors_of(&pairs),
            vec!["WECOM_ENCODING_AES_KEY must be 43 characters of base64, got 42 (copy it again from the callback settings)"]
        );
    }

    #[test]
    fn every_problem_gets_its_own_line() {
        let errors = errors_of(&[("WECOM_TOKEN", "bad token!"), ("HTTPS_PORT", "99999"), ("TLS_ENABLED", "maybe")]);
        let joined = errors.join("\n");
        for needle in [
            "WECOM_CORP_ID is required",
            "WECOM_TOKEN must be letters or digits",
            "WECOM_ENCODING_AES_KEY is required",
            "HTTPS_PORT must be a port",
            "TLS_ENABLED must be true or false",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in {joined}");
        }
        assert!(errors.len() >= 5);
    }

    #[test]
    fn retention_shorter_than_the_retry_window_is_refused() {
        let mut pairs = minimal();
        pairs.push(("RETENTION_SECS", "30"));
        assert_eq!(errors_of(&pairs), vec!["RETENTION_SECS must be at least 60 (WeCom retries within a minute)"]);
        pairs.pop();
        pairs.push(("RETENTION_SECS", "3600"));
        assert_eq!(load(&env(&pairs)).expect("valid").0.retention.records, Duration::from_secs(3600));
    }

    #[test]
    fn replicas_need_a_postgres_url_a_long_enough_lease_and_get_a_name() {
        let (config, _) = load(&env(&minimal())).expect("valid");
        assert!(config.store.database.is_none(), "SQLite by default");
        assert_eq!(config.lease, Duration::from_secs(60));
        assert!(!config.replica.is_empty(), "the host name by default");

        for (url, reason) in [
            ("mysql://u:Pw9Secret@db/x", "scheme must be postgres:// or postgresql://"),
            ("postgres:///x", "no host"),
            ("postgres://u:Pw9Secret@db/x?sslmode=always", "sslmode"),
        ] {
            let mut pairs = minimal();
            pairs.push(("DATABASE_URL", url));
            let errors = errors_of(&pairs);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("DATABASE_URL ") && errors[0].contains(reason), "{errors:?}");
            assert!(!errors[0].contains("Pw9Secret"), "no password in {errors:?}");
        }

        let mut pairs = minimal();
        pairs.extend([
            ("DATABASE_URL", "postgresql://wechat:Pw9Secret@db.internal:5433/wechat?sslmode=require"),
            ("DATABASE_POOL_SIZE", "4"),
            ("REPLICA_ID", "wechat-api-2"),
            ("LEASE_SECS", "45"),
        ]);
        let (config, _) = load(&env(&pairs)).expect("valid");
        let database = config.store.database.expect("PostgreSQL");
        assert_eq!(database.pool_size, 4);
        assert_eq!(database.shown(), "postgresql://wechat:***@db.internal:5433/wechat");
        assert_eq!((config.replica.as_str(), config.lease), ("wechat-api-2", Duration::from_secs(45)));

        pairs.push(("LEASE_SECS", "30"));
        assert!(errors_of(&pairs)[0].starts_with("LEASE_SECS must be at least 35"));
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let secret = "0123456789abcdefS3CR3TS3CR3TS3CR3T";
        let errors = errors_of(&[
            ("WECOM_CORP_ID", "ww1"),
            ("WECOM_TOKEN", secret),
            ("WECOM_ENCODING_AES_KEY", secret),
            ("WECOM_SECRET", " lead"),
        ]);
        let joined = errors.join("\n");
        assert!(!joined.contains("S3CR3T"), "{joined}");
        assert!(joined.contains("WECOM_SECRET has leading or trailing white space"), "{joined}");
    }

    #[test]
    fn leading_zeros_of_a_secret_survive() {
        let mut pairs = minimal();
        pairs.push(("WECOM_SECRET", "00123"));
        let (config, _) = load(&env(&pairs)).expect("valid");
        assert_eq!(config.channels.builtin_app().and_then(|app| app.secret()).expect("set").expose(), "00123");
    }

    #[test]
    fn wework_aliases_work_with_a_warning_naming_the_new_variable() {
        let (config, warnings) = load(&env(&[
            ("WEWORK_CORP_ID", "ww1436e0e65a779aee"),
            ("WEWORK_TOKEN", "QDG6eK"),
            ("WEWORK_AES_KEY", KEY),
        ]))
        .expect("valid");
        assert_eq!(config.channels.builtin_app().expect("app").corp_id.as_str(), "ww1436e0e65a779aee");
        assert!(
            warnings.iter().any(|w| w.contains("WEWORK_AES_KEY is deprecated: rename it to WECOM_ENCODING_AES_KEY")),
            "{warnings:?}"
        );
    }

    #[test]
    fn conflicting_alias_is_an_error() {
        let mut pairs = minimal();
        pairs.push(("WEWORK_CORP_ID", "wwother"));
        assert!(errors_of(&pairs)[0].contains("WEWORK_CORP_ID and WECOM_CORP_ID are both set"));
    }

    #[test]
    fn an_empty_value_is_the_default_and_an_empty_required_one_is_named() {
        let mut pairs = minimal();
        let defaulted: Vec<&str> =
            variables::VARIABLES.iter().filter(|v| v.default.is_some()).map(|v| v.name).collect();
        pairs.extend(defaulted.iter().map(|name| (*name, "")));
        let (config, _) = load(&env(&pairs)).expect("every empty value is its default");
        assert_eq!(config.listen.https_port, 8092);
        assert_eq!(config.store.data_dir, PathBuf::from("/app/data"));
        assert_eq!(config.retention.records, Duration::from_secs(604_800));
        assert_eq!(config.kf.handoff.text, "正在为您转接人工客服，请稍候。");
        assert!(config.surface.trusted_networks.is_empty(), "empty TRUSTED_NETWORKS still trusts none");

        for required in ["WECOM_CORP_ID", "WECOM_TOKEN", "WECOM_ENCODING_AES_KEY"] {
            let mut pairs = minimal();
            pairs.push((required, ""));
            assert_eq!(errors_of(&pairs), [format!("{required} is required but not set")]);
        }
    }

    /// No value of any one variable, empty or wrong, ends in a line that names
    /// no variable (it used to be a bare "configuration is incomplete").
    #[test]
    fn every_problem_of_any_variable_is_a_line_naming_a_variable() {
        for var in variables::VARIABLES {
            for value in ["", " ", "x", "-1", "0", "99999999999999999999", "a,b"] {
                let mut pairs: Vec<(&str, &str)> =
                    minimal().into_iter().filter(|(name, _)| *name != var.name).collect();
                pairs.push((var.name, value));
                let Err(errors) = load(&env(&pairs)) else { continue };
                for line in &errors.0 {
                    let first = line.split_whitespace().next().unwrap_or_default();
                    assert!(
                        variables::Var::named(first).is_some(),
                        "{}={value:?}: {line:?} names no variable first",
                        var.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_short_admin_token_starts_with_a_warning_that_does_not_show_it() {
        let mut pairs = minimal();
        pairs.push(("ADMIN_TOKEN", "Qm7Zk2Wx9R"));
        let (config, warnings) = load(&env(&pairs)).expect("an old .env keeps working");
        assert!(config.admin_token.is_some());
        let short: Vec<&String> = warnings.iter().filter(|w| w.starts_with("ADMIN_TOKEN ")).collect();
        assert_eq!(short.len(), 1, "{warnings:?}");
        assert!(short[0].contains("short and guessable"), "{short:?}");
        assert!(!short[0].contains("Qm7") && !short[0].contains("10"), "neither the token nor its length: {short:?}");
        pairs.pop();
        pairs.push(("ADMIN_TOKEN", "密码密码密码密码密码密码密码密码"));
        let (_, warnings) = load(&env(&pairs)).expect("valid");
        assert!(warnings.is_empty(), "16 characters are enough, whatever their bytes: {warnings:?}");
    }

    #[test]
    fn a_short_replay_window_starts_with_a_warning() {
        let mut pairs = minimal();
        pairs.push(("CALLBACK_MAX_AGE_SECS", "60"));
        let (config, warnings) = load(&env(&pairs)).expect("a short window is allowed");
        assert_eq!(config.callback_max_age, Some(Duration::from_secs(60)));
        assert_eq!(warnings.iter().filter(|w| w.starts_with("CALLBACK_MAX_AGE_SECS ")).count(), 1, "{warnings:?}");
        for quiet in ["0", "600", "86400"] {
            pairs.pop();
            pairs.push(("CALLBACK_MAX_AGE_SECS", quiet));
            let (_, warnings) = load(&env(&pairs)).expect("valid");
            assert!(warnings.is_empty(), "{quiet}: {warnings:?}");
        }
    }

    #[test]
    fn a_send_token_of_eight_two_byte_characters_is_too_short() {
        let mut pairs = minimal();
        pairs.push(("SEND_TOKEN", "äöüßéèàç"));
        assert_eq!(errors_of(&pairs), ["SEND_TOKEN must be at least 16 characters (try `wechat-api keygen`)"]);
        pairs.pop();
        pairs.push(("SEND_TOKEN", "äöüßéèàçäöüßéèàç"));
        assert!(load(&env(&pairs)).is_ok(), "16 characters");
    }

    #[test]
    fn identical_secrets_warn_and_compare_equal() {
        let mut pairs = minimal();
        pairs.push(("WECOM_SECRET", "same-secret-value"));
        pairs.push(("WECOM_KF_SECRET", "same-secret-value"));
        let (config, warnings) = load(&env(&pairs)).expect("valid");
        assert!(config.secrets_identical());
        assert!(warnings.iter().any(|w| w.contains("95018")));
        assert!(!warnings.join(" ").contains("same-secret-value"));
    }

    #[test]
    fn layering_is_file_then_dotenv_then_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wechat-api.toml");
        std::fs::write(&file, format!("wecom_corp_id = \"wwfile\"\nwecom_token = \"filetoken\"\nwecom_encoding_aes_key = \"{KEY}\"\nhttps_port = 9443\nupload_dir = \"/file\"\n")).expect("write");
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, "WECOM_TOKEN=dotenvtoken\nUPLOAD_DIR=/dotenv\nPATH=/ignored\n").expect("write");
        let sources = Sources {
            file: Some(file),
            dotenv: Some(dotenv),
            env: [("UPLOAD_DIR".to_string(), "/env".to_string())].into(),
        };
        let (config, _) = load(&sources).expect("valid");
        assert_eq!(config.channels.builtin_app().expect("app").corp_id.as_str(), "wwfile");
        assert_eq!(config.listen.https_port, 9443, "a TOML integer is read as a port");
        assert_eq!(config.channels.builtin_app().expect("app").keys.token.expose(), "dotenvtoken");
        assert_eq!(config.upload_dir, PathBuf::from("/env"));
    }

    #[test]
    fn unknown_toml_key_and_bad_toml_are_reported_by_name_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "wecom_corp_idd = \"x\"\n").expect("write");
        let errors = load(&Sources { file: Some(file.clone()), ..Sources::default() }).expect_err("unknown").0;
        assert!(errors[0].contains("unknown setting `wecom_corp_idd`"), "{errors:?}");
        std::fs::write(&file, "wecom_token = \"s3cr3t\"\nwecom_secret = \"hidden\n").expect("write");
        let errors = load(&Sources { file: Some(file), ..Sources::default() }).expect_err("syntax").0;
        assert!(errors[0].contains("line 2"), "{errors:?}");
        assert!(!errors[0].contains("hidden"), "{errors:?}");
    }

    #[test]
    fn alert_email_requires_server_and_recipients_when_enabled() {
        let mut pairs = minimal();
        pairs.push(("ALERT_EMAIL_ENABLED", "true"));
        let errors = errors_of(&pairs).join("\n");
        assert!(errors.contains("SMTP_SERVER is required"), "{errors}");
        assert!(errors.contains("ALERT_EMAIL_TO is required"), "{errors}");
        pairs.extend([
            ("SMTP_SERVER", "smtp.example.com"),
            ("SMTP_USER", "ops@example.com"),
            ("ALERT_EMAIL_TO", "a@example.com, b@example.com"),
            ("SMTP_TLS", "tls"),
            ("SMTP_PORT", "465"),
        ]);
        let (config, _) = load(&env(&pairs)).expect("valid");
        let email = config.monitoring.alert_email.expect("enabled");
        assert_eq!(email.to, vec!["a@example.com", "b@example.com"]);
        assert_eq!(email.from, "ops@example.com");
        assert_eq!(email.smtp.tls, SmtpTls::Tls);
    }

    #[test]
    fn trusted_networks_default_to_private_ranges_and_proxies_to_none() {
        let (config, _) = load(&env(&minimal())).expect("valid");
        let trusted = &config.surface.trusted_networks;
        for inside in ["127.0.0.1", "::1", "10.1.2.3", "172.31.0.1", "192.168.9.9", "fd00::1"] {
            assert!(trusted.contains(inside.parse().expect("address")), "{inside}");
        }
        for outside in ["203.0.113.9", "172.32.0.1", "2001:db8::1"] {
            assert!(!trusted.contains(outside.parse().expect("address")), "{outside}");
        }
        assert!(config.surface.trusted_proxies.is_empty(), "X-Forwarded-For is never believed by default");

        let mut pairs = minimal();
        pairs.push(("TRUSTED_NETWORKS", ""));
        let (config, _) = load(&env(&pairs)).expect("valid");
        assert!(config.surface.trusted_networks.is_empty(), "set empty: no network is trusted");
    }

    #[test]
    fn a_bad_cidr_is_one_line_naming_the_variable_and_the_entry() {
        let mut pairs = minimal();
        pairs.push(("TRUSTED_NETWORKS", "10.0.0.0/8,10.0.0.0/40"));
        pairs.push(("TRUSTED_PROXIES", "proxy.internal"));
        let errors = errors_of(&pairs);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("TRUSTED_NETWORKS ") && errors[0].contains("10.0.0.0/40"), "{errors:?}");
        assert!(errors[1].starts_with("TRUSTED_PROXIES ") && errors[1].contains("proxy.internal"), "{errors:?}");
    }

    #[test]
    fn connections_per_address_defaults_to_256_and_is_bounded() {
        assert_eq!(load(&env(&minimal())).expect("valid").0.limits.connections_per_address, 256);
        for bad in ["0", "-1", "10001", "many", "18446744073709551615"] {
            let mut pairs = minimal();
            pairs.push(("CONNECTIONS_PER_ADDRESS", bad));
            let errors = errors_of(&pairs);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert!(errors[0].starts_with("CONNECTIONS_PER_ADDRESS must be"), "{bad}: {errors:?}");
        }
        let mut pairs = minimal();
        pairs.push(("CONNECTIONS_PER_ADDRESS", "20"));
        assert_eq!(load(&env(&pairs)).expect("valid").0.limits.connections_per_address, 20);
    }

    fn channel_file(dir: &std::path::Path, text: &str) -> Sources {
        let file = dir.join("channels.toml");
        std::fs::write(&file, text).expect("write");
        Sources { file: Some(file), ..Sources::default() }
    }

    fn hr_table(name: &str) -> String {
        format!("[channels.{name}]\nkind = \"app\"\ncorp_id = \"wwhr\"\nagent_id = 5\ntoken = \"hrToken\"\nencoding_aes_key = \"{KEY}\"\n")
    }

    #[test]
    fn an_old_env_defines_the_built_in_app_and_kf_channels() {
        let (config, _) = load(&env(&minimal())).expect("valid");
        let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "kf"]);
        let kf = config.channels.builtin_kf().expect("kf");
        assert_eq!((kf.kind(), kf.corp_id.as_str()), (crate::channels::ChannelKind::Kf, "ww1436e0e65a779aee"));
    }

    #[test]
    fn channels_from_the_file_need_no_wecom_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, _) = load(&channel_file(dir.path(), &hr_table("hr"))).expect("valid");
        let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hr"]);
        assert!(config.channels.builtin_app().is_none());
    }

    #[test]
    fn with_file_channels_one_wecom_variable_still_requires_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sources = channel_file(dir.path(), &hr_table("hr"));
        sources.env.insert("WECOM_CORP_ID".into(), "wwapp".into());
        let errors = load(&sources).expect_err("incomplete").0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("WECOM_TOKEN is required")
                && errors[1].starts_with("WECOM_ENCODING_AES_KEY is required")
        );
    }

    #[test]
    fn a_channel_defined_twice_in_the_file_is_one_line_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!("{}\n{}", hr_table("hr"), hr_table("hr"));
        let errors = load(&channel_file(dir.path(), &text)).expect_err("twice").0;
        assert_eq!(errors, vec!["channels.hr is used twice (lines 1 and 8): each channel needs its own name"]);
    }

    #[test]
    fn a_file_channel_named_like_a_built_in_is_used_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sources = channel_file(dir.path(), &hr_table("kf"));
        sources.env = env(&minimal()).env;
        let errors = load(&sources).expect_err("twice").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("channels.kf is used twice"), "{errors:?}");
    }
}
