//! Validation: merged [`Settings`] into a typed [`Config`], one readable line per
//! problem, every problem reported at once.
//!
//! Owns: the wording of every value error ("HTTPS_PORT must be a port number…").
//! Also the listener's part on its own (`ListenConfig::from_settings`, so
//! `healthcheck` can validate only that; the type lives in `listen.rs`).
//! Deliberately not here: reading the layers (`layering.rs`), and anything that
//! touches the disk or the network (certificates are loaded by `tls`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::channels::{ChannelSpec, Channels, Credentials};
use super::layering::Settings;
use super::listen::ListenConfig;
use super::secret::{CorpId, Secret, Token};
use super::variables::{self as var, Var};
use super::{
    AlertEmail, CallbackKeys, Config, ConfigErrors, Database, Forward, Handoff, KfSettings, Limits, LogFormat, Logging,
    Monitoring, Retention, Smtp, SmtpTls, StoreSettings, SupervisorTiming, Surface, WeComApi,
    MAX_CONNECTIONS_PER_ADDRESS, MIN_LEASE_SECS, MIN_MEDIA_RETENTION_SECS, MIN_RETENTION_SECS, MIN_TOKEN_CHARS,
};
use crate::channels::ChannelName;
use crate::crypto::{AesKey, KeyError};
use crate::networks::Networks;

/// Collects one message per problem while building the typed config.
pub(super) struct Validator<'a> {
    pub(super) settings: &'a Settings,
    pub(super) errors: Vec<String>,
    /// The variables read and found unset, so that even a value missing without
    /// a line of its own (a bug) ends in a line naming variables.
    unset: Vec<Var>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(settings: &'a Settings) -> Self {
        Self { settings, errors: Vec::new(), unset: Vec::new() }
    }

    /// The value of `var` (its default when unset or empty), remembering an unset one.
    fn value(&mut self, var: Var) -> Option<&'a str> {
        let value = self.settings.get(var);
        if value.is_none() && !self.unset.contains(&var) {
            self.unset.push(var);
        }
        value
    }

    pub(super) fn fail(&mut self, var: Var, message: impl std::fmt::Display) {
        self.errors.push(format!("{var} {message}"));
    }

    /// A value whose surrounding white space would silently break signatures.
    pub(super) fn trimmed(&mut self, var: Var) -> Option<String> {
        let value = self.value(var)?;
        if value.trim() != value {
            self.fail(var, "has leading or trailing white space (a copy-paste slip?)");
            return None;
        }
        Some(value.to_owned())
    }

    fn required(&mut self, var: Var) -> Option<String> {
        if self.value(var).is_none() {
            self.fail(var, "is required but not set");
            return None;
        }
        self.trimmed(var)
    }

    fn secret(&mut self, var: Var) -> Option<Secret> {
        self.trimmed(var).map(Secret::new)
    }

    pub(super) fn parse<T: std::str::FromStr>(&mut self, var: Var, what: &str) -> Option<T> {
        let value = self.value(var)?.trim().to_owned();
        match value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.fail(var, format!("must be {what}, got {}", var.shown(&value)));
                None
            }
        }
    }

    pub(super) fn flag(&mut self, var: Var) -> bool {
        match self.settings.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.fail(var, format!("must be true or false, got {}", var.shown(&v)));
                false
            }
        }
    }

    fn url(&mut self, var: Var) -> Option<String> {
        let value = self.trimmed(var)?;
        match reqwest::Url::parse(&value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(value.trim_end_matches('/').to_owned())
            }
            _ => {
                self.fail(var, "must be an http:// or https:// URL");
                None
            }
        }
    }

    fn token(&mut self, var: Var) -> Option<Token> {
        let value = self.required(var)?;
        Token::parse(&value).map_err(|e| self.fail(var, e)).ok()
    }

    fn aes_key(&mut self, var: Var) -> Option<AesKey> {
        let value = self.required(var)?;
        AesKey::parse(&value)
            .map_err(|e: KeyError| self.fail(var, format!("{e} (copy it again from the callback settings)")))
            .ok()
    }

    /// The kf channel's keys: each falls back to the app's when not set.
    fn kf_keys(&mut self, app: Option<&CallbackKeys>) -> Option<CallbackKeys> {
        let token = match self.settings.get(var::WECOM_KF_TOKEN) {
            Some(_) => self.token(var::WECOM_KF_TOKEN),
            None => app.map(|a| a.token.clone()),
        };
        let aes_key = match self.settings.get(var::WECOM_KF_ENCODING_AES_KEY) {
            Some(_) => self.aes_key(var::WECOM_KF_ENCODING_AES_KEY),
            None => app.map(|a| a.aes_key.clone()),
        };
        Some(CallbackKeys { token: token?, aes_key: aes_key? })
    }

    /// The errors so far, or `Ok` with what was built when there are none.
    pub(super) fn finish<T>(self, built: Option<T>) -> Result<T, ConfigErrors> {
        match built {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ if !self.errors.is_empty() => Err(ConfigErrors(self.errors)),
            // Every missing value has a line of its own (a test sets each variable
            // empty and wrong): this is a bug, but still names what was unset.
            _ => {
                let unset: Vec<&str> = self.unset.iter().map(|var| var.name).collect();
                Err(ConfigErrors(vec![format!(
                    "configuration is incomplete: a value is missing without its own message (please report it); \
                     unset: {}",
                    if unset.is_empty() { "none".to_owned() } else { unset.join(", ") }
                )]))
            }
        }
    }
}

/// The listener's part, validated on its own too (`healthcheck`).
impl ListenConfig {
    /// The listener settings alone, every problem reported.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Self, ConfigErrors> {
        let mut v = Validator::new(settings);
        let listen = Self::validate(&mut v);
        v.finish(listen)
    }

    /// The listener part of a validation that may cover more.
    pub(super) fn validate(v: &mut Validator<'_>) -> Option<Self> {
        let bind_address = v.parse::<IpAddr>(var::BIND_ADDRESS, "an IP address such as 0.0.0.0 or ::");
        let https_port = v.parse::<u16>(var::HTTPS_PORT, "a port number 0-65535");
        let http_port = v.parse::<u16>(var::HTTP_PORT, "a port number 0-65535");
        let tls_enabled = v.settings.get(var::TLS_ENABLED).is_none() || v.flag(var::TLS_ENABLED);
        let cert_path = v.trimmed(var::TLS_CERT_PATH).map(PathBuf::from);
        let key_path = v.trimmed(var::TLS_KEY_PATH).map(PathBuf::from);
        if https_port.is_some() && https_port == http_port && https_port != Some(0) {
            v.fail(var::HTTP_PORT, format!("must differ from {}", var::HTTPS_PORT));
        }
        Some(Self {
            bind_address: bind_address?,
            https_port: https_port?,
            http_port,
            tls_enabled,
            cert_path: cert_path?,
            key_path: key_path?,
        })
    }
}

impl Config {
    /// Validates merged settings into a typed config, reporting every problem.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Self, ConfigErrors> {
        let mut v = Validator::new(settings);
        let channels = channels(&mut v);
        let api_base_url = v.url(var::WECOM_API_BASE_URL);
        let listen = ListenConfig::validate(&mut v);
        let connections_per_address = v.parse::<u32>(var::CONNECTIONS_PER_ADDRESS, "a whole number of connections");
        if connections_per_address == Some(0) {
            v.fail(var::CONNECTIONS_PER_ADDRESS, format!("must be 1 to {MAX_CONNECTIONS_PER_ADDRESS}"));
        }
        let upload_dir = v.trimmed(var::UPLOAD_DIR).map(PathBuf::from);
        let data_dir = v.trimmed(var::DATA_DIR).map(PathBuf::from);
        // A short ADMIN_TOKEN is a warning (`Config::warnings`): SPEC sets no minimum.
        let admin_token = v.secret(var::ADMIN_TOKEN);
        let forward = v.url(var::FORWARD_URL).map(|url| Forward { url, secret: None });
        let forward_secret = v.secret(var::FORWARD_SECRET);
        let forward = forward.map(|f| Forward { secret: forward_secret, ..f });
        let alert_email = alert_email(&mut v);
        let welcome_text = settings.get(var::WELCOME_TEXT).map(str::to_owned);
        let kf_replay_history = v.flag(var::KF_REPLAY_HISTORY);
        let heartbeat_url = v.url(var::HEARTBEAT_URL);
        let supervisor_interval = v.parse::<u64>(var::SUPERVISOR_INTERVAL_SECS, "a whole number of seconds");
        if supervisor_interval == Some(0) {
            v.fail(var::SUPERVISOR_INTERVAL_SECS, "must be at least 1");
        }
        let alert_group_wait = v.parse::<u64>(var::ALERT_GROUP_WAIT_SECS, "a whole number of seconds");
        let alert_repeat = v.parse::<u64>(var::ALERT_REPEAT_HOURS, "a whole number of hours (0 = off)");
        let retention = v.parse::<u64>(var::RETENTION_SECS, "a whole number of seconds");
        if retention.is_some_and(|secs| secs < MIN_RETENTION_SECS) {
            // Shorter would forget dedup keys while WeCom may still retry.
            v.fail(
                var::RETENTION_SECS,
                format!("must be at least {MIN_RETENTION_SECS} (WeCom retries within a minute)"),
            );
        }
        let log_format = match settings.get(var::LOG_FORMAT).map(str::trim) {
            Some("json") => Some(LogFormat::Json),
            Some("text") | None => Some(LogFormat::Text),
            Some(other) => {
                v.fail(var::LOG_FORMAT, format!("must be text or json, got {}", var::LOG_FORMAT.shown(other)));
                None
            }
        };
        let log_filter = settings.get(var::RUST_LOG).map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned);
        if let Some(Err(error)) = log_filter.as_deref().map(|f| tracing_subscriber::EnvFilter::builder().parse(f)) {
            v.fail(var::RUST_LOG, format!("must be a log filter such as debug or info,wechat_api=trace: {error}"));
        }
        let database = v.secret(var::DATABASE_URL).and_then(|url| {
            crate::store::check_database_url(url.expose())
                .map_err(|reason| v.fail(var::DATABASE_URL, format!("{reason} (postgres://user:password@host:port/dbname?sslmode=disable|prefer|require|verify-full)")))
                .ok()
                .map(|()| url)
        });
        let pool_size = v.parse::<usize>(var::DATABASE_POOL_SIZE, "a whole number of connections");
        if pool_size == Some(0) {
            v.fail(var::DATABASE_POOL_SIZE, "must be at least 1");
        }
        let replica =
            settings.get(var::REPLICA_ID).map(str::trim).map(str::to_owned).unwrap_or_else(crate::config::host_name);
        if let Some(problem) = settings.get(var::REPLICA_ID).and_then(|id| replica_id_problem(id.trim())) {
            v.fail(var::REPLICA_ID, problem);
        }
        let lease = v.parse::<u64>(var::LEASE_SECS, "a whole number of seconds");
        if lease.is_some_and(|secs| secs < MIN_LEASE_SECS) {
            v.fail(
                var::LEASE_SECS,
                format!("must be at least {MIN_LEASE_SECS} (an action may take 30 s; its lease must outlast it)"),
            );
        }
        // A window under 10 minutes is allowed, with a warning (`Config::warnings`).
        let callback_max_age = v.parse::<u64>(var::CALLBACK_MAX_AGE_SECS, "a whole number of seconds (0 = no window)");
        let send_token = v.secret(var::SEND_TOKEN);
        if let Some(token) = &send_token {
            if token.expose().chars().count() < MIN_TOKEN_CHARS {
                v.fail(
                    var::SEND_TOKEN,
                    format!("must be at least {MIN_TOKEN_CHARS} characters (try `wechat-api keygen`)"),
                );
            } else if admin_token.as_ref().is_some_and(|admin| admin.expose() == token.expose()) {
                v.fail(
                    var::SEND_TOKEN,
                    format!("must differ from {}: a bot must not reach the admin endpoints", var::ADMIN_TOKEN),
                );
            }
        }
        let handoff = handoff(&mut v);
        let media_retention = v.parse::<u64>(var::MEDIA_RETENTION_SECS, "a whole number of seconds (0 = forever)");
        if media_retention.is_some_and(|secs| secs != 0 && secs < MIN_MEDIA_RETENTION_SECS) {
            v.fail(
                var::MEDIA_RETENTION_SECS,
                format!("must be 0 (keep forever) or at least {MIN_MEDIA_RETENTION_SECS}"),
            );
        }
        let media_min_free_percent = v.parse::<u8>(var::MEDIA_MIN_FREE_PERCENT, "a whole percentage, 0 to 100");
        if media_min_free_percent.is_some_and(|p| p > 100) {
            v.fail(var::MEDIA_MIN_FREE_PERCENT, "must be a whole percentage, 0 to 100 (0 = no floor)");
        }
        let send_queue_max = v.parse::<u32>(var::SEND_QUEUE_MAX, "a whole number of sends, 1 to 1000000");
        if send_queue_max == Some(0) {
            v.fail(var::SEND_QUEUE_MAX, "must be at least 1 (0 would refuse every send)");
        }
        let data_min_free_percent = v.parse::<u8>(var::DATA_MIN_FREE_PERCENT, "a whole percentage, 0 to 100");
        if data_min_free_percent.is_some_and(|p| p > 100) {
            v.fail(var::DATA_MIN_FREE_PERCENT, "must be a whole percentage, 0 to 100 (0 = no floor)");
        }
        let surface = surface(&mut v);
        let egress_check = v.parse::<u64>(var::EGRESS_CHECK_SECS, "a whole number of seconds");
        if egress_check.is_some_and(|secs| secs < MIN_EGRESS_CHECK_SECS) {
            v.fail(
                var::EGRESS_CHECK_SECS,
                format!("must be at least {MIN_EGRESS_CHECK_SECS} (one probe per channel per period)"),
            );
        }
        let proxy = v
            .trimmed(var::WECOM_PROXY_URL)
            .and_then(|url| super::ProxyUrl::parse(&url).map_err(|reason| v.fail(var::WECOM_PROXY_URL, reason)).ok());
        let aibot = aibot_settings(&mut v);
        upper_bounds(&mut v);
        let built = (|| {
            Some(Config {
                channels: channels?,
                wecom: WeComApi { base_url: api_base_url?, proxy, egress_check: Duration::from_secs(egress_check?) },
                listen: listen?,
                limits: Limits { connections_per_address: connections_per_address?, send_queue_max: send_queue_max? },
                upload_dir: upload_dir?,
                store: StoreSettings {
                    data_dir: data_dir?,
                    database: match database {
                        Some(url) => Some(Database { url, pool_size: pool_size? }),
                        None => None,
                    },
                },
                admin_token,
                forward,
                kf: KfSettings { welcome_text, replay_history: kf_replay_history, handoff: handoff? },
                monitoring: Monitoring {
                    timing: SupervisorTiming {
                        interval: Duration::from_secs(supervisor_interval?.max(1)),
                        group_wait: Duration::from_secs(alert_group_wait?),
                        repeat: alert_repeat.filter(|h| *h > 0).map(|h| Duration::from_secs(h.saturating_mul(3600))),
                    },
                    alert_email,
                    heartbeat_url,
                },
                retention: Retention {
                    records: Duration::from_secs(retention?),
                    media: Some(media_retention?).filter(|secs| *secs > 0).map(Duration::from_secs),
                    media_min_free_percent: media_min_free_percent?,
                    data_min_free_percent: data_min_free_percent?,
                },
                // Never longer than the dedup window: an older replay would be handled again.
                callback_max_age: Some(callback_max_age?)
                    .filter(|secs| *secs > 0)
                    .map(|secs| Duration::from_secs(secs.min(retention.unwrap_or(secs)))),
                logging: Logging { format: log_format?, filter: log_filter },
                replica,
                lease: Duration::from_secs(lease?),
                send_token,
                surface: surface?,
                aibot: aibot?,
            })
        })();
        v.finish(built)
    }
}

/// The built-in channels `app` and `kf` from the `WECOM_*` variables, then the
/// file's `[channels.<name>]` tables. The built-ins' variables are required
/// only when the file defines no channel; once one of them is set, all are.
fn channels(v: &mut Validator<'_>) -> Option<Channels> {
    let builtin_vars = [var::WECOM_CORP_ID, var::WECOM_TOKEN, var::WECOM_ENCODING_AES_KEY];
    let mut specs = Vec::new();
    let mut complete = true;
    let aibot = builtin_aibot(v, &mut complete);
    let builtin = (v.settings.channel_tables.is_empty() && aibot.is_none())
        || builtin_vars.iter().any(|var| v.settings.get(*var).is_some());
    if builtin {
        let corp_id = v
            .required(var::WECOM_CORP_ID)
            .and_then(|id| CorpId::parse(&id).map_err(|e| v.fail(var::WECOM_CORP_ID, e)).ok());
        let agent_id = v.parse::<i64>(var::WECOM_AGENT_ID, "a number (the AgentId of the app)");
        let secret = v.secret(var::WECOM_SECRET);
        let app_token = v.token(var::WECOM_TOKEN);
        let app_aes_key = v.aes_key(var::WECOM_ENCODING_AES_KEY);
        let app_keys = app_token.zip(app_aes_key).map(|(token, aes_key)| CallbackKeys { token, aes_key });
        let kf_secret = v.secret(var::WECOM_KF_SECRET);
        let kf_keys = v.kf_keys(app_keys.as_ref());
        match (corp_id, app_keys, kf_keys) {
            (Some(corp_id), Some(app_keys), Some(kf_keys)) => {
                let builtin = |name, keys, credentials| ChannelSpec {
                    name,
                    corp_id: corp_id.clone(),
                    keys,
                    credentials,
                    forward: None,
                    welcome_text: None,
                    proxy: None,
                    builtin: true,
                };
                specs.push(builtin(ChannelName::app(), app_keys, Credentials::App { agent_id, secret }));
                specs.push(builtin(ChannelName::kf(), kf_keys, Credentials::Kf { secret: kf_secret }));
            }
            _ => complete = false,
        }
    }
    let mut taken: Vec<&str> = if builtin { vec![ChannelName::APP, ChannelName::KF] } else { Vec::new() };
    if let Some(aibot) = aibot {
        taken.push(ChannelName::AIBOT);
        specs.push(aibot);
    }
    let taken = taken.as_slice();
    let before = v.errors.len();
    specs.extend(super::channels::from_tables(&v.settings.channel_tables, taken, &mut v.errors));
    (complete && v.errors.len() == before).then(|| Channels::new(specs))
}

/// The built-in AI bot channel `aibot` (SPEC §13) from `AIBOT_TOKEN` and
/// `AIBOT_ENCODING_AES_KEY` (both or neither), or from `AIBOT_ID` and
/// `AIBOT_SECRET`: the long connection, which needs no callback keys.
fn builtin_aibot(v: &mut Validator<'_>, complete: &mut bool) -> Option<ChannelSpec> {
    if let Some(secret) = v.trimmed(var::AIBOT_SECRET).filter(|s| !s.is_empty()) {
        let Some(bot_id) = v.trimmed(var::AIBOT_ID).filter(|id| !id.is_empty()) else {
            v.fail(var::AIBOT_ID, "is required with AIBOT_SECRET: the long connection subscribes with both");
            *complete = false;
            return None;
        };
        let keys = match (v.settings.get(var::AIBOT_TOKEN), v.settings.get(var::AIBOT_ENCODING_AES_KEY)) {
            (None, None) => Some(CallbackKeys {
                token: Token::generate(),
                aes_key: AesKey::parse(crate::config::generate_encoding_aes_key().expose()).ok()?,
            }),
            _ => v
                .token(var::AIBOT_TOKEN)
                .zip(v.aes_key(var::AIBOT_ENCODING_AES_KEY))
                .map(|(token, aes_key)| CallbackKeys { token, aes_key }),
        };
        let Some(keys) = keys else {
            *complete = false;
            return None;
        };
        return Some(ChannelSpec {
            name: ChannelName::aibot(),
            corp_id: CorpId::none(),
            keys,
            credentials: Credentials::Aibot { bot_id: Some(bot_id), bot_secret: Some(Secret::new(secret)) },
            forward: None,
            welcome_text: v.settings.get(var::AIBOT_WELCOME_TEXT).map(str::to_owned),
            builtin: true,
            proxy: None,
        });
    }
    let set = [var::AIBOT_TOKEN, var::AIBOT_ENCODING_AES_KEY].iter().any(|var| v.settings.get(*var).is_some());
    if !set {
        for var in [var::AIBOT_ID, var::AIBOT_WELCOME_TEXT] {
            if v.settings.get(var).is_some() {
                v.fail(var, "needs AIBOT_TOKEN and AIBOT_ENCODING_AES_KEY (the bot's callback settings)");
            }
        }
        return None;
    }
    let token = v.token(var::AIBOT_TOKEN);
    let aes_key = v.aes_key(var::AIBOT_ENCODING_AES_KEY);
    let bot_id = v.trimmed(var::AIBOT_ID).filter(|id| !id.is_empty());
    let Some((token, aes_key)) = token.zip(aes_key) else {
        *complete = false;
        return None;
    };
    Some(ChannelSpec {
        name: ChannelName::aibot(),
        corp_id: CorpId::none(),
        keys: CallbackKeys { token, aes_key },
        credentials: Credentials::Aibot { bot_id, bot_secret: None },
        forward: None,
        welcome_text: v.settings.get(var::AIBOT_WELCOME_TEXT).map(str::to_owned),
        builtin: true,
        proxy: None,
    })
}

/// `AIBOT_STREAM_DEADLINE_SECS` (5 to 350: WeCom stops asking 360 s after the
/// user's message) and `AIBOT_LATE_TEXT`.
fn aibot_settings(v: &mut Validator<'_>) -> Option<crate::config::AibotSettings> {
    let deadline = v.parse::<u64>(var::AIBOT_STREAM_DEADLINE_SECS, "a whole number of seconds, 5 to 350");
    if deadline.is_some_and(|secs| !(5..=350).contains(&secs)) {
        v.fail(
            var::AIBOT_STREAM_DEADLINE_SECS,
            "must be 5 to 350 seconds (WeCom stops asking for the stream 6 minutes after the user's message)",
        );
        return None;
    }
    let late_text = v.settings.get(var::AIBOT_LATE_TEXT).unwrap_or_default().to_owned();
    let ws_url = v.trimmed(var::AIBOT_WS_URL).unwrap_or_default();
    let parsed = reqwest::Url::parse(&ws_url).ok();
    if !parsed.is_some_and(|url| matches!(url.scheme(), "ws" | "wss") && url.host().is_some()) {
        v.fail(var::AIBOT_WS_URL, "must be a wss:// (or ws://) URL, e.g. wss://openws.work.weixin.qq.com");
        return None;
    }
    Some(crate::config::AibotSettings {
        deadline: Duration::from_secs(deadline?),
        late_text,
        ws_url,
        ws: crate::config::WsTiming::default(),
    })
}

/// Ten years, the longest duration any variable takes: beyond it a value is a
/// slip, and `Instant` and `Duration` arithmetic on it could overflow.
const TEN_YEARS_SECS: u64 = 10 * 365 * 86_400;

/// The largest value of each whole-number variable (SPEC §15), and why. Ports
/// and percentages are bounded by their types and ranges where they are parsed.
const UPPER_BOUNDS: &[(Var, u64, &str)] = &[
    (var::WECOM_AGENT_ID, i32::MAX as u64, "(an AgentId is a 32-bit number)"),
    (var::SUPERVISOR_INTERVAL_SECS, 3_600, "(an hour: liveness waits three periods)"),
    (var::ALERT_GROUP_WAIT_SECS, 3_600, "(an hour: alerts must not wait longer)"),
    (var::ALERT_REPEAT_HOURS, 8_760, "(a year)"),
    (var::RETENTION_SECS, TEN_YEARS_SECS, "(10 years)"),
    (var::CALLBACK_MAX_AGE_SECS, TEN_YEARS_SECS, "(10 years)"),
    (var::DATABASE_POOL_SIZE, 1_000, "(connections per replica)"),
    (var::LEASE_SECS, 86_400, "(a day: a dead replica's claims wait this long)"),
    (var::MEDIA_RETENTION_SECS, TEN_YEARS_SECS, "(10 years)"),
    (var::SEND_QUEUE_MAX, 1_000_000, "(sends queued per channel)"),
    (var::AIBOT_STREAM_DEADLINE_SECS, 350, "(WeCom stops asking for a stream 6 minutes after the message)"),
    (var::CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS_PER_ADDRESS as u64, "(connections one address may hold)"),
    (var::EGRESS_CHECK_SECS, 86_400, "(a day)"),
];

/// One line per variable of [`UPPER_BOUNDS`] set beyond its bound. A value that
/// is no whole number at all is reported where it is parsed, not here.
fn upper_bounds(v: &mut Validator<'_>) {
    for &(var, max, why) in UPPER_BOUNDS {
        // One line per problem: a value already refused where it was parsed is not repeated.
        let named = format!("{var} ");
        if v.errors.iter().any(|line| line.starts_with(&named)) {
            continue;
        }
        let Some(value) = v.settings.get(var).map(str::trim) else { continue };
        if value.parse::<u64>().is_ok_and(|n| n > max) {
            let shown = var.shown(value);
            v.fail(var, format!("must be at most {max} {why}, got {shown}"));
        }
    }
}

/// The longest `REPLICA_ID`: it names the replica in every log line, metric,
/// health report and alert email.
const MAX_REPLICA_ID_CHARS: usize = 64;

/// What is wrong with `id` as a `REPLICA_ID`, if anything: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ -` (a host name fits).
fn replica_id_problem(id: &str) -> Option<String> {
    const RULE: &str = "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'";
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_REPLICA_ID_CHARS {
        return Some(format!("{RULE}, got {chars} characters"));
    }
    let (at, bad) =
        id.chars().enumerate().find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))?;
    Some(format!("{RULE}, got {} at character {}", bad.escape_default(), at + 1))
}

/// The shortest `EGRESS_CHECK_SECS` (SPEC §14).
const MIN_EGRESS_CHECK_SECS: u64 = 10;

/// `HANDOFF_KEYWORDS`, `HANDOFF_TEXT` and `HANDOFF_SERVICER`.
fn handoff(v: &mut Validator<'_>) -> Option<Handoff> {
    let keywords: Vec<String> = v
        .settings
        .get(var::HANDOFF_KEYWORDS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let text = v.settings.get(var::HANDOFF_TEXT).map(str::trim).unwrap_or_default().to_owned();
    if text.is_empty() {
        v.fail(var::HANDOFF_TEXT, "must not be empty: the customer is told before a human takes over");
        return None;
    }
    let servicer = v.settings.get(var::HANDOFF_SERVICER).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    Some(Handoff { keywords, text, servicer })
}

/// The alert email settings; `None` unless `ALERT_EMAIL_ENABLED`.
fn alert_email(v: &mut Validator<'_>) -> Option<AlertEmail> {
    let enabled = v.flag(var::ALERT_EMAIL_ENABLED);
    let smtp_port = v.parse::<u16>(var::SMTP_PORT, "a port number");
    let smtp_tls = match v.settings.get(var::SMTP_TLS).map(|t| t.trim().to_ascii_lowercase()) {
        None => SmtpTls::Opportunistic,
        Some(t) if t == "starttls" => SmtpTls::StartTls,
        Some(t) if t == "tls" => SmtpTls::Tls,
        Some(t) if t == "none" => SmtpTls::None,
        Some(t) => {
            v.fail(var::SMTP_TLS, format!("must be starttls, tls or none, got {}", var::SMTP_TLS.shown(&t)));
            SmtpTls::Opportunistic
        }
    };
    if !enabled {
        return None;
    }
    let smtp_server = v.required(var::SMTP_SERVER);
    let smtp_user = v.trimmed(var::SMTP_USER);
    let smtp_pass = v.secret(var::SMTP_PASS);
    let from = v.trimmed(var::ALERT_EMAIL_FROM).or_else(|| smtp_user.clone());
    if from.is_none() {
        v.fail(var::ALERT_EMAIL_FROM, format!("is required when {} is not set", var::SMTP_USER));
    }
    let to: Vec<String> = match v.required(var::ALERT_EMAIL_TO) {
        Some(list) => list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect(),
        // `required` has reported it.
        None => Vec::new(),
    };
    for address in to.iter().chain(from.iter()) {
        if !address.contains('@') {
            let var = if Some(address) == from.as_ref() { var::ALERT_EMAIL_FROM } else { var::ALERT_EMAIL_TO };
            v.fail(var, format!("{address:?} is not an email address"));
        }
    }
    let smtp = Smtp { server: smtp_server?, port: smtp_port?, user: smtp_user, pass: smtp_pass, tls: smtp_tls };
    Some(AlertEmail { smtp, from: from?, to })
}

/// `TRUSTED_NETWORKS` and `TRUSTED_PROXIES`: each a comma-separated list of
/// CIDRs; a bad entry is one line naming the variable and the entry.
fn surface(v: &mut Validator<'_>) -> Option<Surface> {
    let networks = |v: &mut Validator<'_>, var: Var| match v.settings.get(var) {
        None => Some(Networks::default()),
        Some(list) => {
            Networks::parse(list).map_err(|reason| v.fail(var, format!("must be comma-separated CIDRs: {reason}"))).ok()
        }
    };
    let trusted_networks = networks(v, var::TRUSTED_NETWORKS);
    let trusted_proxies = networks(v, var::TRUSTED_PROXIES);
    Some(Surface { trusted_networks: trusted_networks?, trusted_proxies: trusted_proxies? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::variables::VARIABLES;

    #[test]
    fn every_whole_number_variable_has_an_upper_bound() {
        // Bounded where they are parsed: ports by `u16`, the percentage by 0..=100.
        let bounded_by_type =
            [var::HTTPS_PORT, var::HTTP_PORT, var::SMTP_PORT, var::MEDIA_MIN_FREE_PERCENT, var::DATA_MIN_FREE_PERCENT];
        for variable in VARIABLES {
            let whole_number =
                variable.default.is_some_and(|d| d.parse::<u64>().is_ok()) || *variable == var::WECOM_AGENT_ID;
            if whole_number && !bounded_by_type.contains(variable) {
                assert!(UPPER_BOUNDS.iter().any(|(v, _, _)| v == variable), "{variable} has no upper bound");
            }
        }
        for (variable, max, _) in UPPER_BOUNDS {
            assert!(
                std::time::Instant::now()
                    .checked_add(std::time::Duration::from_secs(max.saturating_mul(3_600)))
                    .is_some(),
                "{variable}"
            );
        }
    }

    #[test]
    fn a_replica_id_is_a_short_name_of_a_safe_alphabet() {
        assert_eq!(replica_id_problem("replica-1.eu_west"), None);
        assert_eq!(replica_id_problem(&"r".repeat(64)), None);
        assert!(replica_id_problem(&"r".repeat(65)).expect("too long").ends_with("got 65 characters"));
        assert!(replica_id_problem("").expect("empty").ends_with("got 0 characters"));
        let newline = replica_id_problem("replica-1\nINFO forged").expect("a newline");
        assert!(newline.ends_with("got \\n at character 10"), "{newline}");
        assert!(replica_id_problem("副本").is_some());
    }
}
