//! The configured channels (SPEC §12): each one's credentials ([`ChannelSpec`]),
//! the registry of all of them ([`Channels`], looked up by name in O(1)), and the
//! validation of the `[channels.<name>]` tables of the TOML file, one line per
//! problem naming `channels.<name>.<key>`.
//!
//! The built-in channels `app` and `kf` are made from the variables in
//! `validation.rs`; this file adds the ones from the file. Reading a
//! `secret_file` is the one disk access of validation: a channel whose Secret
//! cannot be read is a configuration error (exit 64), not a failure at the
//! first send. Deliberately not here: routing callbacks to channels
//! (`callback`), tokens (`wecom`), and what a channel name may look like
//! (`crate::channels`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::secret::{CorpId, Secret, Token};
use super::{CallbackKeys, Forward};
use crate::channels::{ChannelKind, ChannelName};
use crate::crypto::AesKey;

/// The shared path every channel has its own child of.
pub(crate) const CALLBACK_PATH: &str = "/api/v1/wecom/callback";

/// What a channel calls WeCom's APIs with, by kind.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A self-built app: its agent id (replies, shared-path routing) and Secret.
    App {
        /// The AgentId (`WECOM_AGENT_ID`, `agent_id`).
        agent_id: Option<i64>,
        /// The app's Secret; `None`: the channel receives but cannot call APIs.
        secret: Option<Secret>,
    },
    /// WeChat Customer Service: the Secret that may call kf APIs.
    Kf {
        /// `None` only for the built-in `kf` without `WECOM_KF_SECRET`: it then
        /// uses `WECOM_SECRET`, as it always has.
        secret: Option<Secret>,
    },
    /// An AI bot (SPEC §13): no API Secret. In callback mode its answers go
    /// back in the callbacks' answers and through `response_url`; with
    /// `bot_secret` it is served over the long connection instead.
    Aibot {
        /// `AIBOT_ID` / `bot_id`: callbacks for another `aibotid` are refused;
        /// the long connection subscribes with it.
        bot_id: Option<String>,
        /// `AIBOT_SECRET` / `bot_secret(_file)`: the long connection's Secret.
        bot_secret: Option<Secret>,
    },
}

/// One configured channel.
#[derive(Clone, Debug)]
pub struct ChannelSpec {
    /// Its name: path, dedup-key prefix, labels.
    pub name: ChannelName,
    /// The corp it belongs to: also the receive id of its callbacks.
    pub corp_id: CorpId,
    /// Its callback Token and EncodingAESKey.
    pub keys: CallbackKeys,
    /// Its API credentials; they also say its kind.
    pub credentials: Credentials,
    /// Its own forward target; `None`: `FORWARD_URL`.
    pub forward: Option<Forward>,
    /// Its own welcome text (kf); `None`: `WELCOME_TEXT`.
    pub welcome_text: Option<String>,
    /// Its own WeCom proxy (`proxy_url`, SPEC §14); `None`: `WECOM_PROXY_URL`.
    pub proxy: Option<super::ProxyUrl>,
    /// Made from the variables (`app`, `kf`) rather than a `[channels.*]` table.
    pub builtin: bool,
}

impl ChannelSpec {
    /// The channel's kind.
    pub fn kind(&self) -> ChannelKind {
        match self.credentials {
            Credentials::App { .. } => ChannelKind::App,
            Credentials::Kf { .. } => ChannelKind::Kf,
            Credentials::Aibot { .. } => ChannelKind::Aibot,
        }
    }

    /// The bot id of an AI bot channel, when configured.
    pub fn bot_id(&self) -> Option<&str> {
        match &self.credentials {
            Credentials::Aibot { bot_id, .. } => bot_id.as_deref(),
            Credentials::App { .. } | Credentials::Kf { .. } => None,
        }
    }

    /// The bot id and long-connection Secret of an AI bot served over the
    /// long connection (SPEC §13); `None`: callbacks.
    pub fn long_connection(&self) -> Option<(&str, &Secret)> {
        match &self.credentials {
            Credentials::Aibot { bot_id: Some(bot_id), bot_secret: Some(secret) } => Some((bot_id, secret)),
            _ => None,
        }
    }

    /// The channel's own Secret, if it has one.
    pub fn secret(&self) -> Option<&Secret> {
        match &self.credentials {
            Credentials::App { secret, .. } | Credentials::Kf { secret } => secret.as_ref(),
            Credentials::Aibot { .. } => None,
        }
    }

    /// The AgentId of an app channel.
    pub fn agent_id(&self) -> Option<i64> {
        match self.credentials {
            Credentials::App { agent_id, .. } => agent_id,
            Credentials::Kf { .. } | Credentials::Aibot { .. } => None,
        }
    }

    /// Its own callback path, `/api/v1/wecom/callback/<name>`.
    pub fn path(&self) -> String {
        format!("{CALLBACK_PATH}/{}", self.name)
    }
}

/// Every configured channel, in configuration order (built-ins first), each
/// found by name with one hash lookup. Plain data: no thread or task per channel.
#[derive(Clone, Debug, Default)]
pub struct Channels {
    all: Vec<Arc<ChannelSpec>>,
    index: HashMap<ChannelName, usize>,
}

impl Channels {
    /// The registry of `specs`, whose names are distinct (validation saw to it).
    pub(crate) fn new(specs: Vec<ChannelSpec>) -> Self {
        let all: Vec<Arc<ChannelSpec>> = specs.into_iter().map(Arc::new).collect();
        let index = all.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Self { all, index }
    }

    /// The channel called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ChannelSpec>> {
        self.index.get(name).map(|&i| &self.all[i])
    }

    /// Every channel, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ChannelSpec>> {
        self.all.iter()
    }

    /// How many channels there are.
    #[cfg(any(test, feature = "testing"))]
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether there is none.
    #[cfg(any(test, feature = "testing"))]
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The built-in app channel (`WECOM_*`), when the variables define it.
    pub fn builtin_app(&self) -> Option<&Arc<ChannelSpec>> {
        self.get(ChannelName::APP).filter(|c| c.builtin)
    }

    /// The Secret `channel` calls WeCom's API with: its own, or for the built-in
    /// kf without `WECOM_KF_SECRET`, the app's (as always). `None`: the channel
    /// calls no API (it only receives callbacks, or it is an AI bot).
    pub fn api_secret<'a>(&'a self, channel: &'a ChannelSpec) -> Option<&'a Secret> {
        let borrows_the_apps = channel.builtin && channel.kind() == ChannelKind::Kf;
        channel.secret().or_else(|| self.builtin_app().filter(|_| borrows_the_apps)?.secret())
    }

    /// The built-in AI bot channel (`AIBOT_*`), when the variables define it.
    #[cfg(any(test, feature = "testing"))]
    pub fn builtin_aibot(&self) -> Option<&Arc<ChannelSpec>> {
        self.get(ChannelName::AIBOT).filter(|c| c.builtin)
    }

    /// The built-in kf channel (`WECOM_KF_*`), when the variables define it.
    pub fn builtin_kf(&self) -> Option<&Arc<ChannelSpec>> {
        self.get(ChannelName::KF).filter(|c| c.builtin)
    }
}

/// The keys a `[channels.<name>]` table may have, and for which kinds.
const KEYS: &[(&str, &[ChannelKind])] = &[
    ("kind", &ChannelKind::ALL),
    ("corp_id", &[ChannelKind::App, ChannelKind::Kf]),
    ("agent_id", &[ChannelKind::App]),
    ("secret", &[ChannelKind::App, ChannelKind::Kf]),
    ("secret_file", &[ChannelKind::App, ChannelKind::Kf]),
    ("token", &ChannelKind::ALL),
    ("encoding_aes_key", &ChannelKind::ALL),
    ("forward_url", &ChannelKind::ALL),
    ("forward_secret", &ChannelKind::ALL),
    ("welcome_text", &[ChannelKind::Kf, ChannelKind::Aibot]),
    ("proxy_url", &ChannelKind::ALL),
    ("bot_id", &[ChannelKind::Aibot]),
    ("bot_secret", &[ChannelKind::Aibot]),
    ("bot_secret_file", &[ChannelKind::Aibot]),
];

/// The channels of the file's `[channels.*]` tables (`tables`: name → table, as
/// read), none of them named like one of `taken` (the built-ins). Problems go
/// to `errors`, one line each.
pub(super) fn from_tables(
    tables: &[(String, toml::Value)],
    taken: &[&str],
    errors: &mut Vec<String>,
) -> Vec<ChannelSpec> {
    let mut specs = Vec::new();
    for (name, value) in tables {
        let Ok(channel) = ChannelName::parse(name) else {
            errors.push(format!("channels.{name} {}", ChannelName::parse(name).err().unwrap_or_default()));
            continue;
        };
        if taken.contains(&name.as_str()) {
            errors.push(format!(
                "channels.{name} is used twice: `{name}` is the built-in channel the WECOM_* variables define"
            ));
            continue;
        }
        let Some(table) = value.as_table() else {
            errors.push(format!("channels.{name} must be a table ([channels.{name}])"));
            continue;
        };
        let mut reader = TableReader { name: &channel, table, errors };
        if let Some(spec) = reader.spec() {
            specs.push(spec);
        }
    }
    specs
}

/// Reads one `[channels.<name>]` table, reporting each problem once.
struct TableReader<'a> {
    name: &'a ChannelName,
    table: &'a toml::Table,
    errors: &'a mut Vec<String>,
}

impl TableReader<'_> {
    fn fail(&mut self, key: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("channels.{}.{key} {message}", self.name));
    }

    /// A string value; `None` when absent (or not a string, reported).
    fn string(&mut self, key: &str) -> Option<String> {
        match self.table.get(key)? {
            toml::Value::String(text) if text.is_empty() => None,
            toml::Value::String(text) => Some(text.clone()),
            _ => {
                self.fail(key, "must be a string in quotes");
                None
            }
        }
    }

    fn required(&mut self, key: &str) -> Option<String> {
        let value = self.string(key);
        if value.is_none() && !self.table.contains_key(key) {
            self.fail(key, "is required but not set");
        }
        value
    }

    /// A value whose surrounding white space would silently break signatures.
    fn trimmed(&mut self, value: Option<String>, key: &str) -> Option<String> {
        let value = value?;
        if value.trim() != value {
            self.fail(key, "has leading or trailing white space (a copy-paste slip?)");
            return None;
        }
        Some(value)
    }

    fn spec(&mut self) -> Option<ChannelSpec> {
        let kind_word = self.required("kind")?;
        let Some(kind) = ChannelKind::parse(&kind_word) else {
            self.fail("kind", format!("must be app, kf or aibot, got {kind_word:?}"));
            return None;
        };
        let unknown: Vec<String> = self
            .table
            .keys()
            .filter(|key| !KEYS.iter().any(|(known, kinds)| known == key && kinds.contains(&kind)))
            .cloned()
            .collect();
        for key in unknown {
            match KEYS.iter().find(|(known, _)| *known == key) {
                Some(_) => self.fail(&key, format!("is not a setting of {} channels", kind.as_str())),
                None => self.fail(&key, "is not a channel setting (see SPEC §12 for the keys)"),
            }
        }
        let proxy = self.string("proxy_url");
        let proxy = self
            .trimmed(proxy, "proxy_url")
            .and_then(|url| super::ProxyUrl::parse(&url).map_err(|reason| self.fail("proxy_url", reason)).ok());
        let corp_id = match kind {
            // An enterprise's own bot: its callbacks carry an empty receive id.
            ChannelKind::Aibot => Some(CorpId::none()),
            ChannelKind::App | ChannelKind::Kf => {
                self.required("corp_id").and_then(|id| CorpId::parse(&id).map_err(|e| self.fail("corp_id", e)).ok())
            }
        };
        // A bot on the long connection needs no callback keys: without them it
        // gets random ones nobody knows, so its callback path verifies nothing.
        let long_connection = kind == ChannelKind::Aibot
            && ["bot_secret", "bot_secret_file"].iter().any(|key| self.table.contains_key(*key))
            && !["token", "encoding_aes_key"].iter().any(|key| self.table.contains_key(*key));
        let (token, aes_key) = if long_connection {
            (Some(Token::generate()), AesKey::parse(super::secret::generate_encoding_aes_key().expose()).ok())
        } else {
            let token = self.required("token");
            let token =
                self.trimmed(token, "token").and_then(|t| Token::parse(&t).map_err(|e| self.fail("token", e)).ok());
            let key = self.required("encoding_aes_key");
            let aes_key = self.trimmed(key, "encoding_aes_key").and_then(|k| {
                AesKey::parse(&k)
                    .map_err(|e| {
                        self.fail("encoding_aes_key", format!("{e} (copy it again from the callback settings)"))
                    })
                    .ok()
            });
            (token, aes_key)
        };
        let secret = match kind {
            ChannelKind::Aibot => Some(None),
            ChannelKind::App | ChannelKind::Kf => self.secret("secret", "secret_file"),
        };
        let forward_url = self.string("forward_url");
        let forward_url = self.trimmed(forward_url, "forward_url").and_then(|url| match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
                Some(url.trim_end_matches('/').to_owned())
            }
            _ => {
                self.fail("forward_url", "must be an http:// or https:// URL");
                None
            }
        });
        let forward_secret = self.string("forward_secret");
        let forward_secret = self.trimmed(forward_secret, "forward_secret").map(Secret::new);
        if forward_secret.is_some() && forward_url.is_none() && !self.table.contains_key("forward_url") {
            self.fail("forward_secret", "needs forward_url in the same table (FORWARD_SECRET goes with FORWARD_URL)");
        }
        let welcome_text = self.string("welcome_text");
        let credentials = match kind {
            ChannelKind::App => {
                let agent_id = self.agent_id();
                Credentials::App { agent_id: Some(agent_id?), secret: secret? }
            }
            ChannelKind::Kf => {
                let Some(secret) = secret? else {
                    self.fail("secret", "is required (or secret_file): a kf channel pulls its messages with it");
                    return None;
                };
                Credentials::Kf { secret: Some(secret) }
            }
            ChannelKind::Aibot => {
                let bot_secret = self.secret("bot_secret", "bot_secret_file")?;
                let bot_id = self.string("bot_id");
                let bot_id = self.trimmed(bot_id, "bot_id");
                if bot_secret.is_some() && bot_id.is_none() && !self.table.contains_key("bot_id") {
                    self.fail("bot_id", "is required with bot_secret: the long connection subscribes with both");
                }
                Credentials::Aibot { bot_id, bot_secret }
            }
        };
        Some(ChannelSpec {
            name: self.name.clone(),
            corp_id: corp_id?,
            keys: CallbackKeys { token: token?, aes_key: aes_key? },
            credentials,
            forward: forward_url.map(|url| Forward { url, secret: forward_secret }),
            welcome_text,
            proxy,
            builtin: false,
        })
    }

    /// `agent_id`: required for an app channel, an integer (or a string of digits).
    fn agent_id(&mut self) -> Option<i64> {
        let parsed = match self.table.get("agent_id") {
            None => {
                self.fail("agent_id", "is required but not set (the AgentId of the app)");
                return None;
            }
            Some(toml::Value::Integer(id)) => Some(*id),
            Some(toml::Value::String(text)) => text.trim().parse().ok(),
            Some(_) => None,
        };
        match parsed {
            Some(id) if (1..=i64::from(i32::MAX)).contains(&id) => Some(id),
            _ => {
                self.fail("agent_id", "must be the AgentId of the app, a positive number");
                None
            }
        }
    }

    /// `secret` or `secret_file` (never both): `Some(None)` when neither is set,
    /// `None` after a problem.
    /// A Secret given inline (`inline_key`) or in a file (`file_key`), never both.
    fn secret(&mut self, inline_key: &str, file_key: &str) -> Option<Option<Secret>> {
        let inline = self.string(inline_key);
        let file = self.string(file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.fail(file_key, format!("and {inline_key} are both set: keep one"));
                None
            }
            (Some(value), None) => self.trimmed(Some(value), inline_key).map(|s| Some(Secret::new(s))),
            (None, Some(path)) => match read_secret_file(Path::new(&path)) {
                Ok(value) if value.is_empty() => {
                    self.fail(file_key, format!("{path} is empty"));
                    None
                }
                Ok(value) => self.trimmed(Some(value), file_key).map(|s| Some(Secret::new(s))),
                Err(error) => {
                    self.fail(file_key, format!("cannot be read: {path}: {error}"));
                    None
                }
            },
            (None, None) => Some(None),
        }
    }
}

/// A Secret from a file, as Docker secrets are written: one trailing newline
/// (`\n` or `\r\n`) is not part of it.
fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn tables(text: &str) -> Vec<(String, toml::Value)> {
        let mut table: toml::Table = toml::from_str(text).expect("toml");
        match table.remove("channels") {
            Some(toml::Value::Table(channels)) => channels.into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn errors_of(text: &str) -> Vec<String> {
        let mut errors = Vec::new();
        from_tables(&tables(text), &["app", "kf"], &mut errors);
        errors
    }

    fn hr(extra: &str) -> String {
        format!(
            "[channels.hr]\nkind = \"app\"\ncorp_id = \"wwhr\"\nagent_id = 1000005\nsecret = \"hr-secret\"\ntoken = \"hrToken\"\nencoding_aes_key = \"{KEY}\"\n{extra}"
        )
    }

    #[test]
    fn an_app_table_becomes_a_channel_with_its_own_credentials() {
        let mut errors = Vec::new();
        let specs = from_tables(&tables(&hr("forward_url = \"https://bot.internal/hr/\"\n")), &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let hr = &specs[0];
        assert_eq!((hr.name.as_str(), hr.kind(), hr.corp_id.as_str()), ("hr", ChannelKind::App, "wwhr"));
        assert_eq!((hr.agent_id(), hr.secret().map(Secret::expose)), (Some(1_000_005), Some("hr-secret")));
        assert_eq!(hr.forward.as_ref().map(|f| f.url.as_str()), Some("https://bot.internal/hr"));
        assert_eq!(hr.path(), "/api/v1/wecom/callback/hr");
    }

    #[test]
    fn each_problem_is_one_line_naming_the_channel_and_the_key() {
        let cases: [(String, &str); 9] = [
            (hr("tokne = \"x\"\n"), "channels.hr.tokne is not a channel setting"),
            (hr("welcome_text = \"hi\"\n"), "channels.hr.welcome_text is not a setting of app channels"),
            (hr("").replace("token = \"hrToken\"\n", ""), "channels.hr.token is required"),
            (hr("").replace("agent_id = 1000005\n", ""), "channels.hr.agent_id is required"),
            (hr("").replace(KEY, &KEY[..42]), "channels.hr.encoding_aes_key must be 43 characters of base64, got 42"),
            (hr("secret_file = \"/x\"\n"), "channels.hr.secret_file and secret are both set"),
            (hr("").replace("[channels.hr]", "[channels.HR]"), "channels.HR is not a channel name"),
            (hr("").replace("\"app\"", "\"sms\""), "channels.hr.kind must be app, kf or aibot"),
            (hr("").replace("[channels.hr]", "[channels.app]"), "channels.app is used twice"),
        ];
        for (text, expected) in cases {
            let errors = errors_of(&text);
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert!(errors[0].starts_with(expected), "{errors:?} should start with {expected:?}");
        }
    }

    #[test]
    fn an_aibot_table_becomes_a_channel_with_an_empty_receive_id() {
        let text = format!("[channels.bot]\nkind = \"aibot\"\nbot_id = \"aib1\"\ntoken = \"T\"\nencoding_aes_key = \"{KEY}\"\nwelcome_text = \"hi\"\n");
        let mut errors = Vec::new();
        let specs = from_tables(&tables(&text), &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let bot = &specs[0];
        assert_eq!((bot.kind(), bot.corp_id.as_str(), bot.bot_id()), (ChannelKind::Aibot, "", Some("aib1")));
        assert!(bot.secret().is_none() && bot.agent_id().is_none());
        assert!(bot.long_connection().is_none());
        let errors = errors_of(&format!("{text}corp_id = \"ww1\"\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("channels.bot.corp_id is not a setting of aibot channels")));
    }

    #[test]
    fn an_aibot_table_with_a_bot_secret_is_served_over_the_long_connection_without_callback_keys() {
        let text = "[channels.ws]\nkind = \"aibot\"\nbot_id = \"aib1\"\nbot_secret = \"s3cret\"\n";
        let mut errors = Vec::new();
        let specs = from_tables(&tables(text), &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(specs[0].long_connection().map(|(id, secret)| (id, secret.expose())), Some(("aib1", "s3cret")));
        let errors = errors_of("[channels.ws]\nkind = \"aibot\"\nbot_secret = \"s3cret\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("channels.ws.bot_id is required with bot_secret"), "{errors:?}");
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_and_never_shows_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hr");
        std::fs::write(&file, "S3cr3tFromFile\n").expect("write");
        let text = hr("").replace("secret = \"hr-secret\"", &format!("secret_file = {:?}", file.display().to_string()));
        let mut errors = Vec::new();
        let specs = from_tables(&tables(&text), &[], &mut errors);
        assert_eq!(specs[0].secret().map(Secret::expose), Some("S3cr3tFromFile"));
        assert!(!format!("{specs:?}").contains("S3cr3t"));

        std::fs::write(&file, "S3cr3tFromFile\n\n").expect("write");
        let errors = errors_of(&text);
        assert!(errors[0].starts_with("channels.hr.secret_file has leading or trailing white space"), "{errors:?}");
        assert!(!errors[0].contains("S3cr3t"));

        let missing = text.replace(&file.display().to_string(), "/nonexistent/hr");
        let errors = errors_of(&missing);
        assert!(errors[0].starts_with("channels.hr.secret_file cannot be read: /nonexistent/hr"), "{errors:?}");
    }

    #[test]
    fn the_registry_finds_a_channel_by_name() {
        let mut errors = Vec::new();
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&hr("").replace("[channels.hr]", &format!("[channels.c{i}]")));
        }
        let channels = Channels::new(from_tables(&tables(&text), &[], &mut errors));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(channels.len(), 100);
        assert_eq!(channels.get("c42").map(|c| c.name.as_str()), Some("c42"));
        assert!(channels.get("c100").is_none() && channels.builtin_app().is_none());
    }
}
