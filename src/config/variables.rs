//! THE table of configuration variables (SPEC §2): name, `WEWORK_*` alias,
//! built-in default, whether the value is a secret, and what it means.
//!
//! Everything else reads this table: layering (which environment entries and TOML
//! keys are ours, the defaults, alias resolution), validation (each variable is a
//! typed [`Var`] handle, so a misspelt name does not compile), redaction of secret
//! values in messages and `Debug` output, and the tests that list secret variables.
//!
//! Adding a variable is one line in the `variables!` table below, then its validation in
//! `validation.rs`. Deliberately not here: what a value must look like (that is
//! `validation.rs`) and how the layers merge (`layering.rs`).

/// One variable of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var {
    /// The environment variable, e.g. `HTTPS_PORT`; the TOML key is it in lower case.
    pub name: &'static str,
    /// The name older deployments used (`WEWORK_*`), accepted with a warning.
    pub alias: Option<&'static str>,
    /// The built-in default, lowest layer of all.
    pub default: Option<&'static str>,
    /// Whether the value is a secret: never shown in logs, errors or `Debug`.
    pub secret: bool,
    /// What the variable means, in one line.
    pub meaning: &'static str,
}

impl Var {
    /// The TOML key and the key inside the `config` crate: the name in lower case.
    pub(crate) fn key(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    /// `value` as an error message may show it: quoted, or redacted for a secret.
    pub(crate) fn shown(&self, value: &str) -> String {
        if self.secret {
            crate::config::Secret::new(value).redacted()
        } else {
            format!("{value:?}")
        }
    }

    /// Whether `value`, as a layer gives it, sets the variable. An empty value is
    /// the same as no value (a lower layer's, else the default), except for the
    /// variables of [`EMPTY_IS_A_VALUE`].
    pub(crate) fn is_set_by(&self, value: &str) -> bool {
        !value.is_empty() || EMPTY_IS_A_VALUE.contains(self)
    }

    /// The variable called `name`, or whose alias is `name`.
    pub fn named(name: &str) -> Option<Var> {
        VARIABLES.iter().copied().find(|v| v.name == name || v.alias == Some(name))
    }
}

impl std::fmt::Display for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Readable columns for the table below.
const SECRET: bool = true;
const PUBLIC: bool = false;

/// Declares one `pub const NAME: Var` per row and [`VARIABLES`], the whole table.
macro_rules! variables {
    ($( $name:ident, $alias:expr, $default:expr, $secret:expr, $meaning:literal; )*) => {
        $(
            #[doc = $meaning]
            pub(crate) const $name: Var = Var {
                name: stringify!($name),
                alias: $alias,
                default: $default,
                secret: $secret,
                meaning: $meaning,
            };
        )*

        /// Every variable of the contract, in the order of SPEC §2. Anything else in
        /// the environment is ignored.
        pub const VARIABLES: &[Var] = &[$($name),*];
    };
}

#[rustfmt::skip]
variables! {
//  name                       alias                      default                                secret  meaning
    WECOM_CORP_ID,             Some("WEWORK_CORP_ID"),    None,                                  PUBLIC, "corp id; also the receive id checked after decryption (required)";
    WECOM_AGENT_ID,            Some("WEWORK_AGENT_ID"),   None,                                  PUBLIC, "self-built app agent id";
    WECOM_SECRET,              Some("WEWORK_SECRET"),     None,                                  SECRET, "self-built app Secret";
    WECOM_TOKEN,               Some("WEWORK_TOKEN"),      None,                                  SECRET, "callback Token (required)";
    WECOM_ENCODING_AES_KEY,    Some("WEWORK_AES_KEY"),    None,                                  SECRET, "callback EncodingAESKey, 43 characters (required)";
    WECOM_KF_SECRET,           None,                      None,                                  SECRET, "Secret of the WeChat Customer Service app";
    WECOM_KF_TOKEN,            None,                      None,                                  SECRET, "kf callback Token when it differs from the app's";
    WECOM_KF_ENCODING_AES_KEY, None,                      None,                                  SECRET, "kf callback EncodingAESKey when it differs from the app's";
    WECOM_API_BASE_URL,        None,                      Some("https://qyapi.weixin.qq.com"),   PUBLIC, "WeCom API base";
    HTTPS_PORT,                None,                      Some("8092"),                          PUBLIC, "TLS listener port";
    HTTP_PORT,                 None,                      None,                                  PUBLIC, "optional plain-HTTP listener port (behind a reverse proxy)";
    BIND_ADDRESS,              None,                      Some("0.0.0.0"),                       PUBLIC, "listen address";
    TLS_CERT_PATH,             None,                      Some("certs/server.crt"),              PUBLIC, "PEM certificate chain";
    TLS_KEY_PATH,              None,                      Some("certs/server.key"),              PUBLIC, "PEM private key (PKCS#8, RSA or EC)";
    TLS_ENABLED,               None,                      Some("true"),                          PUBLIC, "false serves plain HTTP in HTTPS_PORT's place";
    UPLOAD_DIR,                None,                      Some("/app/wwwroot/uploadall"),        PUBLIC, "media and generated files";
    DATA_DIR,                  None,                      Some("/app/data"),                     PUBLIC, "embedded store (SQLite)";
    ADMIN_TOKEN,               None,                      None,                                  SECRET, "bearer token for /api/* admin endpoints; unset = disabled";
    FORWARD_URL,               None,                      None,                                  PUBLIC, "downstream webhook for every normalized message";
    FORWARD_SECRET,            None,                      None,                                  SECRET, "HMAC key of the downstream webhook's X-Signature";
    ALERT_EMAIL_ENABLED,       None,                      Some("false"),                         PUBLIC, "send alert emails";
    SMTP_SERVER,               None,                      None,                                  PUBLIC, "SMTP relay host";
    SMTP_PORT,                 None,                      Some("25"),                            PUBLIC, "SMTP relay port";
    SMTP_USER,                 None,                      None,                                  PUBLIC, "SMTP login";
    SMTP_PASS,                 None,                      None,                                  SECRET, "SMTP password or auth code";
    SMTP_TLS,                  None,                      None,                                  PUBLIC, "starttls, tls (implicit) or none; default: starttls if offered";
    ALERT_EMAIL_FROM,          None,                      None,                                  PUBLIC, "alert sender; default SMTP_USER";
    ALERT_EMAIL_TO,            None,                      None,                                  PUBLIC, "comma-separated alert recipients";
    WELCOME_TEXT,              None,                      None,                                  PUBLIC, "kf welcome message on enter_session";
    KF_REPLAY_HISTORY,         None,                      Some("false"),                         PUBLIC, "answer kf messages older than the first start";
    HEARTBEAT_URL,             None,                      None,                                  PUBLIC, "pinged every minute (dead-man's switch)";
    SUPERVISOR_INTERVAL_SECS,  None,                      Some("30"),                            PUBLIC, "period of the checks";
    ALERT_GROUP_WAIT_SECS,     None,                      Some("30"),                            PUBLIC, "how long transitions are gathered into one email";
    ALERT_REPEAT_HOURS,        None,                      Some("4"),                             PUBLIC, "reminder period for a firing check, 0 = off";
    RETENTION_SECS,            None,                      Some("604800"),                        PUBLIC, "how long handled messages and dedup keys are kept";
    CALLBACK_MAX_AGE_SECS,     None,                      Some("86400"),                         PUBLIC, "callbacks whose timestamp is older than this (at most RETENTION_SECS) or over 10 minutes ahead are refused; 0 = no window";
    LOG_FORMAT,                None,                      Some("text"),                          PUBLIC, "text or json";
    RUST_LOG,                  None,                      None,                                  PUBLIC, "log filter (e.g. debug, or info,wechat_api::dispatch=trace): raises wechat-api's own lines; other crates stay at info at most; default info";
    DATABASE_URL,              None,                      None,                                  SECRET, "postgres://user:password@host:port/dbname?sslmode=…: the store is PostgreSQL (replicas) instead of SQLite in DATA_DIR";
    DATABASE_POOL_SIZE,        None,                      Some("8"),                             PUBLIC, "PostgreSQL connections per replica";
    REPLICA_ID,                None,                      None,                                  PUBLIC, "this replica's name in logs, health, the status page, emails and metrics; default the host name";
    LEASE_SECS,                None,                      Some("60"),                            PUBLIC, "how long a claim holds before another replica may take it over (at least 35)";
    SEND_TOKEN,                None,                      None,                                  SECRET, "bearer token of the send API (POST/GET /api/v1/messages), at least 16 characters, not ADMIN_TOKEN; unset = off";
    HANDOFF_KEYWORDS,          None,                      Some("转人工,人工客服"),               PUBLIC, "comma-separated kf customer texts that ask for a human";
    HANDOFF_TEXT,              None,                      Some("正在为您转接人工客服，请稍候。"), PUBLIC, "sent to the customer just before a handover";
    HANDOFF_SERVICER,          None,                      None,                                  PUBLIC, "servicer userid a handover goes to (state 3); unset = the queue (state 2)";
    MEDIA_RETENTION_SECS,      None,                      Some("2592000"),                       PUBLIC, "how long downloaded media are kept in UPLOAD_DIR (30 days), 0 = forever";
    MEDIA_MIN_FREE_PERCENT,    None,                      Some("5"),                             PUBLIC, "free space (per cent) UPLOAD_DIR's volume keeps: below it media are not downloaded, 0 = no floor";
    // The public surface (SPEC §11).
    TRUSTED_NETWORKS,          None,                      Some("127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"), PUBLIC, "comma-separated CIDRs whose requests may read the status page, the detailed health and the metrics";
    TRUSTED_PROXIES,           None,                      None,                                  PUBLIC, "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed; unset = never";
    // Limits under pressure (SPEC §15).
    SEND_QUEUE_MAX,            None,                      Some("1000"),                          PUBLIC, "sends queued and not yet finished, per channel: the send API answers 429 with Retry-After beyond it";
    DATA_MIN_FREE_PERCENT,     None,                      Some("5"),                             PUBLIC, "free space (per cent) DATA_DIR's volume keeps for callbacks: below it the send API answers 503; 0 = no floor; not used with DATABASE_URL";
    CONNECTIONS_PER_ADDRESS,   None,                      Some("256"),                           PUBLIC, "open connections (TLS handshakes included) one client address may hold; beyond it a new connection is closed at once; TRUSTED_PROXIES and TRUSTED_NETWORKS are exempt";
    // The egress IP WeCom sees (SPEC §14).
    EGRESS_CHECK_SECS,         None,                      Some("900"),                           PUBLIC, "when no WeCom answer has named a channel's egress IP for this long (from start-up), one probe asks (gettoken without a Secret); at least 10";
    WECOM_PROXY_URL,           None,                      None,                                  SECRET, "HTTP(S) or SOCKS5 proxy for every WeCom API call (not FORWARD_URL), http://user:pass@host:port; unset = direct (HTTP_PROXY/HTTPS_PROXY are ignored)";
    // The AI bot (SPEC §13): the built-in channel `aibot`.
    AIBOT_TOKEN,               None,                      None,                                  SECRET, "the AI bot's callback Token (API mode, URL callbacks): channel aibot";
    AIBOT_ENCODING_AES_KEY,    None,                      None,                                  SECRET, "the AI bot's callback EncodingAESKey, 43 characters";
    AIBOT_ID,                  None,                      None,                                  PUBLIC, "the bot id (aibotid): callbacks for another aibotid are refused (400)";
    AIBOT_SECRET,              None,                      None,                                  SECRET, "the long-connection Secret (with AIBOT_ID: the long connection instead of callbacks)";
    AIBOT_WS_URL,              None,                      Some("wss://openws.work.weixin.qq.com"), PUBLIC, "the long-connection endpoint";
    AIBOT_WELCOME_TEXT,        None,                      None,                                  PUBLIC, "answer to enter_chat";
    AIBOT_STREAM_DEADLINE_SECS, None,                     Some("330"),                           PUBLIC, "when an unfinished stream is closed, after the user's message; 5 to 350";
    AIBOT_LATE_TEXT,           None,                      Some("（回答较长，完成后将另行发送）"), PUBLIC, "appended to a stream closed at the deadline";
}

/// The variables whose empty value is a value of its own rather than "unset":
/// an empty `TRUSTED_NETWORKS` trusts no network (SECURITY.md), while unset trusts
/// the private ranges. Every other empty value means unset (`.env.example`).
pub(crate) const EMPTY_IS_A_VALUE: &[Var] = &[TRUSTED_NETWORKS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique_and_upper_case() {
        let mut seen = std::collections::HashSet::new();
        for name in VARIABLES.iter().flat_map(|v| std::iter::once(v.name).chain(v.alias)) {
            assert!(seen.insert(name), "{name} twice");
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'), "{name}");
        }
    }

    #[test]
    fn aliases_resolve_to_their_variable_and_secrets_are_redacted() {
        assert_eq!(Var::named("WEWORK_AES_KEY"), Some(WECOM_ENCODING_AES_KEY));
        assert_eq!(Var::named("HTTPS_PORT"), Some(HTTPS_PORT));
        assert_eq!(Var::named("PATH"), None);
        assert_eq!(HTTPS_PORT.shown("x1"), "\"x1\"");
        assert_eq!(WECOM_SECRET.shown("abcdefghijklmnop"), "abc… (16 chars)");
    }
}
