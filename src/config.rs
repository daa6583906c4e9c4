//! Configuration: raw settings from defaults, a TOML file, `.env` and the
//! environment, validated once into a typed [`Config`].
//!
//! Layering (later wins): built-in defaults < TOML file (`--config` or
//! `WECHAT_API_CONFIG`) < `.env` in the working directory < process environment.
//! The TOML file uses the variable names in lower case (`wecom_corp_id = "…"`).
//!
//! Owns: every variable name of the contract, their `WEWORK_*` aliases, and the
//! wording of every configuration error. Deliberately not here: reading
//! certificate files (see `tls`) and anything at run time: nothing reads the
//! environment after [`load`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::crypto::{AesKey, KeyError};

/// Every variable of the contract (SPEC §2). Anything else in the environment is ignored.
pub const VARIABLES: &[&str] = &[
    "WECOM_CORP_ID",
    "WECOM_AGENT_ID",
    "WECOM_SECRET",
    "WECOM_TOKEN",
    "WECOM_ENCODING_AES_KEY",
    "WECOM_KF_SECRET",
    "WECOM_KF_TOKEN",
    "WECOM_KF_ENCODING_AES_KEY",
    "WECOM_API_BASE_URL",
    "HTTPS_PORT",
    "HTTP_PORT",
    "BIND_ADDRESS",
    "TLS_CERT_PATH",
    "TLS_KEY_PATH",
    "TLS_ENABLED",
    "UPLOAD_DIR",
    "DATA_DIR",
    "ADMIN_TOKEN",
    "FORWARD_URL",
    "FORWARD_SECRET",
    "ALERT_EMAIL_ENABLED",
    "SMTP_SERVER",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASS",
    "SMTP_TLS",
    "ALERT_EMAIL_FROM",
    "ALERT_EMAIL_TO",
    "WELCOME_TEXT",
    "KF_REPLAY_HISTORY",
    "HEARTBEAT_URL",
    "SUPERVISOR_INTERVAL_SECS",
    "ALERT_GROUP_WAIT_SECS",
    "ALERT_REPEAT_HOURS",
    "RETENTION_SECS",
    "LOG_FORMAT",
];

/// Names older deployments used, and the variable each now means.
pub const ALIASES: &[(&str, &str)] = &[
    ("WEWORK_CORP_ID", "WECOM_CORP_ID"),
    ("WEWORK_AGENT_ID", "WECOM_AGENT_ID"),
    ("WEWORK_SECRET", "WECOM_SECRET"),
    ("WEWORK_TOKEN", "WECOM_TOKEN"),
    ("WEWORK_AES_KEY", "WECOM_ENCODING_AES_KEY"),
];

/// The shortest `RETENTION_SECS`: it is also the dedup window.
pub const MIN_RETENTION_SECS: u64 = 60;

/// Names the environment variable that points at the TOML file.
pub const CONFIG_FILE_VARIABLE: &str = "WECHAT_API_CONFIG";

const DEFAULTS: &[(&str, &str)] = &[
    ("WECOM_API_BASE_URL", "https://qyapi.weixin.qq.com"),
    ("HTTPS_PORT", "8092"),
    ("BIND_ADDRESS", "0.0.0.0"),
    ("TLS_CERT_PATH", "certs/server.crt"),
    ("TLS_KEY_PATH", "certs/server.key"),
    ("TLS_ENABLED", "true"),
    ("UPLOAD_DIR", "/app/wwwroot/uploadall"),
    ("DATA_DIR", "/app/data"),
    ("ALERT_EMAIL_ENABLED", "false"),
    ("SMTP_PORT", "25"),
    ("KF_REPLAY_HISTORY", "false"),
    ("SUPERVISOR_INTERVAL_SECS", "30"),
    ("ALERT_GROUP_WAIT_SECS", "30"),
    ("ALERT_REPEAT_HOURS", "4"),
    ("RETENTION_SECS", "604800"),
    ("LOG_FORMAT", "text"),
];

/// A secret value. It has no `Display`; `Debug` shows a short prefix and the length.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// At most a 3-character prefix and the length: enough to tell two secrets apart.
    pub fn redacted(&self) -> String {
        let prefix: String = self.0.chars().take(3.min(self.0.chars().count() / 4)).collect();
        format!("{prefix}… ({} chars)", self.0.chars().count())
    }

    /// Constant-time comparison, for bearer tokens and the like.
    pub fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

/// A callback Token: 1 to 32 ASCII letters or digits, as the WeCom console allows.
#[derive(Clone, Debug)]
pub struct Token(Secret);

impl Token {
    pub fn parse(value: &str) -> Result<Self, String> {
        let len = value.chars().count();
        if !(1..=32).contains(&len) {
            return Err(format!("must be 1 to 32 letters or digits, got {len} characters"));
        }
        if let Some(i) = value.chars().position(|c| !c.is_ascii_alphanumeric()) {
            return Err(format!("must be letters or digits only; character {} is not", i + 1));
        }
        Ok(Self(Secret::new(value)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

/// The corp id (`ww…`): also the receive id every decrypted callback must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpId(String);

impl CorpId {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(
                "must be the corp id from 我的企业 → 企业信息 (letters and digits, usually starting with ww)".into()
            );
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Token and EncodingAESKey of one callback channel.
#[derive(Clone, Debug)]
pub struct CallbackKeys {
    pub token: Token,
    pub aes_key: AesKey,
}

/// Where and how the service listens.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub bind_address: IpAddr,
    pub https_port: u16,
    pub http_port: Option<u16>,
    pub tls_enabled: bool,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// How to talk to the SMTP relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS when the server offers it (the default).
    Opportunistic,
    StartTls,
    /// Implicit TLS, usually port 465.
    Tls,
    None,
}

/// Alert email settings; present only when `ALERT_EMAIL_ENABLED=true`.
#[derive(Clone, Debug)]
pub struct AlertEmail {
    pub smtp_server: String,
    pub smtp_port: u16,
    pub smtp_user: Option<String>,
    pub smtp_pass: Option<Secret>,
    pub smtp_tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
}

/// The downstream webhook every normalized message is posted to.
#[derive(Clone, Debug)]
pub struct Forward {
    pub url: String,
    pub secret: Option<Secret>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration. Built only by [`load`] / [`Config::from_settings`].
#[derive(Clone, Debug)]
pub struct Config {
    pub corp_id: CorpId,
    pub agent_id: Option<i64>,
    pub secret: Option<Secret>,
    pub app_keys: CallbackKeys,
    pub kf_secret: Option<Secret>,
    pub kf_keys: CallbackKeys,
    pub api_base_url: String,
    pub listen: ListenConfig,
    pub upload_dir: PathBuf,
    pub data_dir: PathBuf,
    pub admin_token: Option<Secret>,
    pub forward: Option<Forward>,
    pub alert_email: Option<AlertEmail>,
    pub welcome_text: Option<String>,
    pub kf_replay_history: bool,
    pub heartbeat_url: Option<String>,
    pub supervisor_interval: Duration,
    pub alert_group_wait: Duration,
    /// `None` when reminders are off (`ALERT_REPEAT_HOURS=0`).
    pub alert_repeat: Option<Duration>,
    /// How long handled journal entries (and so their dedup keys) and finished
    /// outbox actions are kept (`RETENTION_SECS`).
    pub retention: Duration,
    pub log_format: LogFormat,
}

impl Config {
    /// `WECOM_SECRET == WECOM_KF_SECRET`: fine for a self-built app authorised for
    /// kf since 2023-12, a known cause of 95018 otherwise.
    pub fn secrets_identical(&self) -> bool {
        match (&self.secret, &self.kf_secret) {
            (Some(app), Some(kf)) => app.matches(kf.expose()),
            _ => false,
        }
    }
}

/// Where the raw settings come from. Tests build this directly; `main` uses
/// [`Sources::from_process`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub dotenv: Option<PathBuf>,
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The process environment, `.env` in the working directory if present, and the
    /// TOML file named by `--config` or `WECHAT_API_CONFIG`. The only place that
    /// reads the environment.
    pub fn from_process(config_flag: Option<PathBuf>) -> Self {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect();
        let file = config_flag.or_else(|| env.get(CONFIG_FILE_VARIABLE).filter(|p| !p.is_empty()).map(PathBuf::from));
        let dotenv = Path::new(".env").is_file().then(|| PathBuf::from(".env"));
        Self { file, dotenv, env }
    }
}

/// Configuration that cannot be used, one readable line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Merged raw settings: variable name → value, defaults applied, aliases resolved.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: HashMap<&'static str, String>,
    /// Non-fatal findings to log at start-up (aliases, identical secrets, …).
    pub warnings: Vec<String>,
}

impl Settings {
    /// The value of `name`, treating an empty string as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Sets `name` (one of [`VARIABLES`]); for tests and demo mode.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        if let Some(known) = VARIABLES.iter().find(|v| **v == name) {
            self.values.insert(known, value.into());
        }
    }

    /// The layered settings from `sources`, without validating their values.
    pub fn read(sources: &Sources) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut builder = config::Config::builder();
        for (name, value) in DEFAULTS {
            builder = builder
                .set_default(name.to_ascii_lowercase(), *value)
                .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        }
        if let Some(path) = &sources.file {
            match read_toml(path) {
                Ok(text) => builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml)),
                Err(problems) => errors.extend(problems),
            }
        }
        if let Some(path) = &sources.dotenv {
            match read_dotenv(path) {
                Ok(map) => builder = builder.add_source(config::Environment::default().source(Some(map))),
                Err(problem) => errors.push(problem),
            }
        }
        builder = builder.add_source(config::Environment::default().source(Some(known_variables(&sources.env))));
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let merged = builder
            .build()
            .and_then(|c| c.try_deserialize::<HashMap<String, config::Value>>())
            .map_err(|e| ConfigErrors(vec![format!("configuration could not be merged: {e}")]))?;
        let mut settings = Settings::default();
        for name in VARIABLES.iter().copied() {
            if let Some(value) = merged.get(&name.to_ascii_lowercase()) {
                match value.clone().into_string() {
                    Ok(text) => {
                        settings.values.insert(name, text);
                    }
                    Err(_) => errors.push(format!("{name} must be a single value, not a table or list")),
                }
            }
        }
        settings.resolve_aliases(&merged, &mut errors);
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn resolve_aliases(&mut self, merged: &HashMap<String, config::Value>, errors: &mut Vec<String>) {
        for (old, new) in ALIASES {
            let Some(old_value) = merged.get(&old.to_ascii_lowercase()).and_then(|v| v.clone().into_string().ok())
            else {
                continue;
            };
            if old_value.is_empty() {
                continue;
            }
            match self.get(new) {
                None => {
                    self.warnings.push(format!("{old} is deprecated: rename it to {new} (its value is used for now)"));
                    self.values.insert(new, old_value);
                }
                Some(current) if current == old_value => {
                    self.warnings.push(format!("{old} is deprecated and duplicates {new}: remove it"));
                }
                Some(_) => errors.push(format!("{old} and {new} are both set and differ: keep only {new}")),
            }
        }
    }
}

fn known_variables(env: &HashMap<String, String>) -> HashMap<String, String> {
    env.iter()
        .filter(|(k, _)| VARIABLES.contains(&k.as_str()) || ALIASES.iter().any(|(old, _)| old == k))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Reads the TOML file, reporting syntax errors by line (never quoting it: a
/// secret may stand on that line) and unknown keys by name.
fn read_toml(path: &Path) -> Result<String, Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("config file {shown}: cannot read it: {e}")])?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(1);
        vec![format!("config file {shown}: not valid TOML at line {line}: {}", e.message())]
    })?;
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| {
            let upper = k.to_ascii_uppercase();
            !(VARIABLES.contains(&upper.as_str()) || ALIASES.iter().any(|(old, _)| *old == upper))
        })
        .map(|k| format!("config file {shown}: unknown setting `{k}` (settings are the variable names in lower case)"))
        .collect();
    if unknown.is_empty() {
        Ok(text)
    } else {
        Err(unknown)
    }
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, String> {
    let iter = dotenvy::from_path_iter(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let mut map = HashMap::new();
    for (index, item) in iter.enumerate() {
        // dotenvy's parse errors quote the line, which may hold a secret.
        let (key, value) = item.map_err(|_| format!("{}: entry {} cannot be parsed", path.display(), index + 1))?;
        map.insert(key, value);
    }
    Ok(known_variables(&map))
}

/// Reads and validates the configuration.
pub fn load(sources: &Sources) -> Result<(Config, Vec<String>), ConfigErrors> {
    let settings = Settings::read(sources)?;
    let warnings = settings.warnings.clone();
    let config = Config::from_settings(&settings)?;
    let mut warnings = warnings;
    warnings.extend(config.warnings());
    Ok((config, warnings))
}

/// Collects one message per problem while building the typed config.
struct Validator<'a> {
    settings: &'a Settings,
    errors: Vec<String>,
}

impl Validator<'_> {
    fn fail(&mut self, name: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("{name} {message}"));
    }

    /// A value whose surrounding white space would silently break signatures.
    fn trimmed(&mut self, name: &str) -> Option<String> {
        let value = self.settings.get(name)?;
        if value.trim() != value {
            self.fail(name, "has leading or trailing white space (a copy-paste slip?)");
            return None;
        }
        Some(value.to_owned())
    }

    fn required(&mut self, name: &str) -> Option<String> {
        if self.settings.get(name).is_none() {
            self.fail(name, "is required but not set");
            return None;
        }
        self.trimmed(name)
    }

    fn secret(&mut self, name: &str) -> Option<Secret> {
        self.trimmed(name).map(Secret::new)
    }

    fn parse<T: std::str::FromStr>(&mut self, name: &str, what: &str) -> Option<T> {
        let value = self.settings.get(name)?.trim().to_owned();
        match value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.fail(name, format!("must be {what}, got {value:?}"));
                None
            }
        }
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.settings.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.fail(name, format!("must be true or false, got {v:?}"));
                false
            }
        }
    }

    fn url(&mut self, name: &str) -> Option<String> {
        let value = self.trimmed(name)?;
        match reqwest::Url::parse(&value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(value.trim_end_matches('/').to_owned())
            }
            _ => {
                self.fail(name, "must be an http:// or https:// URL");
                None
            }
        }
    }

    fn token(&mut self, name: &str) -> Option<Token> {
        let value = self.required(name)?;
        Token::parse(&value).map_err(|e| self.fail(name, e)).ok()
    }

    fn aes_key(&mut self, name: &str) -> Option<AesKey> {
        let value = self.required(name)?;
        AesKey::parse(&value)
            .map_err(|e: KeyError| self.fail(name, format!("{e} (copy it again from the callback settings)")))
            .ok()
    }

    /// The kf channel's keys: each falls back to the app's when not set.
    fn kf_keys(&mut self, app: Option<&CallbackKeys>) -> Option<CallbackKeys> {
        let token = match self.settings.get("WECOM_KF_TOKEN") {
            Some(_) => self.token("WECOM_KF_TOKEN"),
            None => app.map(|a| a.token.clone()),
        };
        let aes_key = match self.settings.get("WECOM_KF_ENCODING_AES_KEY") {
            Some(_) => self.aes_key("WECOM_KF_ENCODING_AES_KEY"),
            None => app.map(|a| a.aes_key.clone()),
        };
        Some(CallbackKeys { token: token?, aes_key: aes_key? })
    }
}

impl Config {
    /// Validates merged settings into a typed config, reporting every problem.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigErrors> {
        let mut v = Validator { settings, errors: Vec::new() };
        let corp_id =
            v.required("WECOM_CORP_ID").and_then(|id| CorpId::parse(&id).map_err(|e| v.fail("WECOM_CORP_ID", e)).ok());
        let agent_id = v.parse::<i64>("WECOM_AGENT_ID", "a number (the AgentId of the app)");
        let secret = v.secret("WECOM_SECRET");
        let app_token = v.token("WECOM_TOKEN");
        let app_aes_key = v.aes_key("WECOM_ENCODING_AES_KEY");
        let app_keys = app_token.zip(app_aes_key).map(|(token, aes_key)| CallbackKeys { token, aes_key });
        let kf_secret = v.secret("WECOM_KF_SECRET");
        let kf_keys = v.kf_keys(app_keys.as_ref());
        let api_base_url = v.url("WECOM_API_BASE_URL");
        let listen = Self::listen(&mut v);
        let upload_dir = v.trimmed("UPLOAD_DIR").map(PathBuf::from);
        let data_dir = v.trimmed("DATA_DIR").map(PathBuf::from);
        let admin_token = v.secret("ADMIN_TOKEN");
        if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            v.fail("ADMIN_TOKEN", "must be at least 16 characters (try `wechat-api keygen`)");
        }
        let forward = v.url("FORWARD_URL").map(|url| Forward { url, secret: None });
        let forward_secret = v.secret("FORWARD_SECRET");
        let forward = forward.map(|f| Forward { secret: forward_secret, ..f });
        let alert_email = Self::alert_email(&mut v);
        let welcome_text = settings.get("WELCOME_TEXT").map(str::to_owned);
        let kf_replay_history = v.flag("KF_REPLAY_HISTORY");
        let heartbeat_url = v.url("HEARTBEAT_URL");
        let supervisor_interval = v.parse::<u64>("SUPERVISOR_INTERVAL_SECS", "a whole number of seconds");
        if supervisor_interval == Some(0) {
            v.fail("SUPERVISOR_INTERVAL_SECS", "must be at least 1");
        }
        let alert_group_wait = v.parse::<u64>("ALERT_GROUP_WAIT_SECS", "a whole number of seconds");
        let alert_repeat = v.parse::<u64>("ALERT_REPEAT_HOURS", "a whole number of hours (0 = off)");
        let retention = v.parse::<u64>("RETENTION_SECS", "a whole number of seconds");
        if retention.is_some_and(|secs| secs < MIN_RETENTION_SECS) {
            // Shorter would forget dedup keys while WeCom may still retry.
            v.fail("RETENTION_SECS", format!("must be at least {MIN_RETENTION_SECS} (WeCom retries within a minute)"));
        }
        let log_format = match settings.get("LOG_FORMAT").map(str::trim) {
            Some("json") => Some(LogFormat::Json),
            Some("text") | None => Some(LogFormat::Text),
            Some(other) => {
                v.fail("LOG_FORMAT", format!("must be text or json, got {other:?}"));
                None
            }
        };
        let errors = std::mem::take(&mut v.errors);
        let built = (|| {
            Some(Config {
                corp_id: corp_id?,
                agent_id,
                secret,
                app_keys: app_keys?,
                kf_secret,
                kf_keys: kf_keys?,
                api_base_url: api_base_url?,
                listen: listen?,
                upload_dir: upload_dir?,
                data_dir: data_dir?,
                admin_token,
                forward,
                alert_email,
                welcome_text,
                kf_replay_history,
                heartbeat_url,
                supervisor_interval: Duration::from_secs(supervisor_interval?.max(1)),
                alert_group_wait: Duration::from_secs(alert_group_wait?),
                alert_repeat: alert_repeat.filter(|h| *h > 0).map(|h| Duration::from_secs(h.saturating_mul(3600))),
                retention: Duration::from_secs(retention?),
                log_format: log_format?,
            })
        })();
        match built {
            Some(config) if errors.is_empty() => Ok(config),
            _ if !errors.is_empty() => Err(ConfigErrors(errors)),
            _ => Err(ConfigErrors(vec!["configuration is incomplete".into()])),
        }
    }

    fn listen(v: &mut Validator<'_>) -> Option<ListenConfig> {
        let bind_address = v.parse::<IpAddr>("BIND_ADDRESS", "an IP address such as 0.0.0.0 or ::");
        let https_port = v.parse::<u16>("HTTPS_PORT", "a port number 0-65535");
        let http_port = v.parse::<u16>("HTTP_PORT", "a port number 0-65535");
        let tls_enabled = v.settings.get("TLS_ENABLED").is_none() || v.flag("TLS_ENABLED");
        let cert_path = v.trimmed("TLS_CERT_PATH").map(PathBuf::from);
        let key_path = v.trimmed("TLS_KEY_PATH").map(PathBuf::from);
        if https_port.is_some() && https_port == http_port && https_port != Some(0) {
            v.fail("HTTP_PORT", "must differ from HTTPS_PORT");
        }
        Some(ListenConfig {
            bind_address: bind_address?,
            https_port: https_port?,
            http_port,
            tls_enabled,
            cert_path: cert_path?,
            key_path: key_path?,
        })
    }

    fn alert_email(v: &mut Validator<'_>) -> Option<AlertEmail> {
        let enabled = v.flag("ALERT_EMAIL_ENABLED");
        let smtp_port = v.parse::<u16>("SMTP_PORT", "a port number");
        let smtp_tls = match v.settings.get("SMTP_TLS").map(|t| t.trim().to_ascii_lowercase()) {
            None => SmtpTls::Opportunistic,
            Some(t) if t == "starttls" => SmtpTls::StartTls,
            Some(t) if t == "tls" => SmtpTls::Tls,
            Some(t) if t == "none" => SmtpTls::None,
            Some(t) => {
                v.fail("SMTP_TLS", format!("must be starttls, tls or none, got {t:?}"));
                SmtpTls::Opportunistic
            }
        };
        if !enabled {
            return None;
        }
        let smtp_server = v.required("SMTP_SERVER");
        let smtp_user = v.trimmed("SMTP_USER");
        let smtp_pass = v.secret("SMTP_PASS");
        let from = v.trimmed("ALERT_EMAIL_FROM").or_else(|| smtp_user.clone());
        if from.is_none() {
            v.fail("ALERT_EMAIL_FROM", "is required when SMTP_USER is not set");
        }
        let to: Vec<String> = v
            .required("ALERT_EMAIL_TO")
            .map(|list| list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        for address in to.iter().chain(from.iter()) {
            if !address.contains('@') {
                let name = if Some(address) == from.as_ref() { "ALERT_EMAIL_FROM" } else { "ALERT_EMAIL_TO" };
                v.fail(name, format!("{address:?} is not an email address"));
            }
        }
        Some(AlertEmail {
            smtp_server: smtp_server?,
            smtp_port: smtp_port?,
            smtp_user,
            smtp_pass,
            smtp_tls,
            from: from?,
            to,
        })
    }

    /// Findings worth a warning at start-up, in `diagnose` and in `/api/health`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.secrets_identical() {
            warnings.push(
                "WECOM_SECRET and WECOM_KF_SECRET are identical: fine for a self-built app authorised for 微信客服, \
                 otherwise kf sends fail with 95018 (run `wechat-api diagnose`)"
                    .to_owned(),
            );
        }
        if self.kf_secret.is_none() && self.secret.is_some() {
            warnings.push(
                "WECOM_KF_SECRET is not set: kf APIs use WECOM_SECRET (95018 on kf sends means it may not)".to_owned(),
            );
        }
        if !self.listen.tls_enabled {
            warnings.push(
                "TLS_ENABLED=false: serving plain HTTP on HTTPS_PORT (only behind a TLS-terminating proxy)".to_owned(),
            );
        }
        warnings
    }
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
        assert_eq!(config.data_dir, PathBuf::from("/app/data"));
        assert_eq!(config.api_base_url, "https://qyapi.weixin.qq.com");
        assert_eq!(config.supervisor_interval, Duration::from_secs(30));
        assert_eq!(config.alert_repeat, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(config.retention, Duration::from_secs(7 * 24 * 3600));
        assert!(config.alert_email.is_none());
        assert_eq!(config.kf_keys.token.expose(), "QDG6eK", "kf falls back to the app Token");
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
        assert_eq!(load(&env(&pairs)).expect("valid").0.retention, Duration::from_secs(3600));
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
        assert_eq!(config.secret.expect("set").expose(), "00123");
    }

    #[test]
    fn wework_aliases_work_with_a_warning_naming_the_new_variable() {
        let (config, warnings) = load(&env(&[
            ("WEWORK_CORP_ID", "ww1436e0e65a779aee"),
            ("WEWORK_TOKEN", "QDG6eK"),
            ("WEWORK_AES_KEY", KEY),
        ]))
        .expect("valid");
        assert_eq!(config.corp_id.as_str(), "ww1436e0e65a779aee");
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
        assert_eq!(config.corp_id.as_str(), "wwfile");
        assert_eq!(config.listen.https_port, 9443, "a TOML integer is read as a port");
        assert_eq!(config.app_keys.token.expose(), "dotenvtoken");
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
        let email = config.alert_email.expect("enabled");
        assert_eq!(email.to, vec!["a@example.com", "b@example.com"]);
        assert_eq!(email.from, "ops@example.com");
        assert_eq!(email.smtp_tls, SmtpTls::Tls);
    }

    #[test]
    fn redaction_shows_little() {
        let s = Secret::new("abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(s.redacted(), "abc… (36 chars)");
        assert_eq!(format!("{s:?}"), "Secret(abc… (36 chars))");
        assert_eq!(Secret::new("short").redacted(), "s… (5 chars)");
        assert!(s.matches("abcdefghijklmnopqrstuvwxyz0123456789"));
        assert!(!s.matches("abc"));
    }
}
