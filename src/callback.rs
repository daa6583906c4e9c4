//! The callback pipeline without HTTP: find the channel, verify, decrypt, check
//! the receive id, parse.
//!
//! Owns: the order of those steps, the routing of a callback to its channel
//! (SPEC §12: on a channel's own path that channel and no other; on the shared
//! paths the `app`/`kf` channels whose Token signs it and whose corp id is the
//! decrypted receive id, then the kind and `AgentID`), and the classification of
//! every way they can fail ([`CallbackError`], [`Outcome`]). Deliberately not
//! here: HTTP status codes and body reading (`routes::callback`), journaling and
//! handling (later stages).

use std::sync::Arc;

use serde::Deserialize;

use crate::channels::ChannelKind;
use crate::config::{ChannelSpec, Channels, Config};
use crate::crypto::{self, DecryptError, Plaintext};
use crate::messages::{dedup_key, AppEvent, AppMessage, CallbackEnvelope, Identity, ParseError};
use crate::store::journal::{EntryKind, NewEntry};
use crate::streams::StreamOpen;
use crate::wecom::aibot::{self, AibotError, AibotMessage};

/// How a callback ended, as counted in `wechat_api_callbacks_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Ok,
    Duplicate,
    MissingParameter,
    BadSignature,
    BadEnvelope,
    BadCiphertext,
    WrongReceiveId,
    BadMessage,
    TooLarge,
    /// The body did not arrive before the body deadline (answered 408).
    BodyTimeout,
    /// The client went away before the whole body had arrived.
    IncompleteBody,
    /// `timestamp` is not a decimal number.
    BadTimestamp,
    /// Signed by WeCom, but older than `CALLBACK_MAX_AGE_SECS` or too far ahead: a replay.
    StaleTimestamp,
    /// On a shared path, several channels verify and decrypt it alike (SPEC §12).
    AmbiguousChannel,
    /// `/api/v1/wecom/callback/<name>` with no channel of that name (404).
    UnknownChannel,
    /// An AI bot callback for another `aibotid` than the channel's (SPEC §13).
    WrongBot,
    Internal,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 17] = [
        Outcome::Ok,
        Outcome::Duplicate,
        Outcome::MissingParameter,
        Outcome::BadSignature,
        Outcome::BadEnvelope,
        Outcome::BadCiphertext,
        Outcome::WrongReceiveId,
        Outcome::BadMessage,
        Outcome::TooLarge,
        Outcome::BodyTimeout,
        Outcome::IncompleteBody,
        Outcome::BadTimestamp,
        Outcome::StaleTimestamp,
        Outcome::AmbiguousChannel,
        Outcome::UnknownChannel,
        Outcome::WrongBot,
        Outcome::Internal,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::MissingParameter => "missing_parameter",
            Outcome::BadSignature => "bad_signature",
            Outcome::BadEnvelope => "bad_envelope",
            Outcome::BadCiphertext => "bad_ciphertext",
            Outcome::WrongReceiveId => "wrong_receive_id",
            Outcome::BadMessage => "bad_message",
            Outcome::TooLarge => "too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::IncompleteBody => "incomplete_body",
            Outcome::BadTimestamp => "bad_timestamp",
            Outcome::StaleTimestamp => "stale_timestamp",
            Outcome::AmbiguousChannel => "ambiguous_channel",
            Outcome::UnknownChannel => "unknown_channel",
            Outcome::WrongBot => "wrong_aibotid",
            Outcome::Internal => "internal_error",
        }
    }
}

/// Why a callback was refused. The messages are safe to send back and to log.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("missing query parameter `{0}`")]
    MissingParameter(&'static str),
    #[error("malformed query string")]
    MalformedQuery,
    #[error("msg_signature does not match the Token of any channel here (WECOM_TOKEN, WECOM_KF_TOKEN, channels.<name>.token: check the Token in the callback settings)")]
    BadSignature,
    #[error("{0}")]
    BadEnvelope(ParseError),
    #[error("cannot decrypt: {0}")]
    BadCiphertext(DecryptError),
    #[error("receive id does not match WECOM_CORP_ID or the channel's corp_id, or is not empty on an AI bot's path (a callback for another corp?)")]
    WrongReceiveId,
    #[error("{0}")]
    BadMessage(ParseError),
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("timestamp must be a decimal number of seconds")]
    BadTimestamp,
    #[error("timestamp is {0}: outside the replay window (CALLBACK_MAX_AGE_SECS); a replayed callback?")]
    StaleTimestamp(Skew),
    #[error("several channels verify and decrypt this callback alike; give each its own URL: {}", .0.join(", "))]
    AmbiguousChannel(Vec<String>),
    /// An AI bot's body is not `{"encrypt": …}`.
    #[error("{0}")]
    AibotEnvelope(AibotError),
    /// An AI bot's decrypted message is not one (not an object, no msgid).
    #[error("{0}")]
    AibotMessage(AibotError),
    #[error("aibotid {0:?} is not this channel's bot (AIBOT_ID or channels.<name>.bot_id)")]
    WrongBot(String),
}

/// How far a callback's timestamp is from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// This many seconds old.
    Old(u64),
    /// This many seconds ahead.
    Ahead(u64),
}

impl std::fmt::Display for Skew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Old(secs) => write!(f, "{secs} s old"),
            Self::Ahead(secs) => write!(f, "{secs} s in the future"),
        }
    }
}

/// How far ahead of our clock a timestamp may be (clocks drift).
const MAX_AHEAD_SECS: u64 = 600;

impl CallbackError {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            CallbackError::MissingParameter(_) | CallbackError::MalformedQuery => Outcome::MissingParameter,
            CallbackError::BadSignature => Outcome::BadSignature,
            CallbackError::BadEnvelope(_) => Outcome::BadEnvelope,
            CallbackError::BadCiphertext(_) => Outcome::BadCiphertext,
            CallbackError::WrongReceiveId => Outcome::WrongReceiveId,
            CallbackError::BadMessage(_) => Outcome::BadMessage,
            CallbackError::TooLarge { .. } => Outcome::TooLarge,
            CallbackError::BadTimestamp => Outcome::BadTimestamp,
            CallbackError::StaleTimestamp(_) => Outcome::StaleTimestamp,
            CallbackError::AmbiguousChannel(_) => Outcome::AmbiguousChannel,
            CallbackError::AibotEnvelope(_) => Outcome::BadEnvelope,
            CallbackError::AibotMessage(_) => Outcome::BadMessage,
            CallbackError::WrongBot(_) => Outcome::WrongBot,
        }
    }
}

/// The query string of a callback request.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    pub msg_signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
}

impl CallbackQuery {
    /// Parses a raw query string.
    pub fn parse(query: &str) -> Result<Self, CallbackError> {
        serde_urlencoded::from_str(query).map_err(|_| CallbackError::MalformedQuery)
    }

    fn require<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, CallbackError> {
        value.as_deref().filter(|v| !v.is_empty()).ok_or(CallbackError::MissingParameter(name))
    }

    /// The signed parameters are all there: checked before the body is read, so
    /// a request without them is a client error, not a bad body.
    fn require_signed(&self) -> Result<(), CallbackError> {
        for (value, name) in
            [(&self.msg_signature, "msg_signature"), (&self.timestamp, "timestamp"), (&self.nonce, "nonce")]
        {
            Self::require(value, name)?;
        }
        Ok(())
    }

    /// `echostr` as base64. A `+` that reached us unescaped was decoded to a space
    /// by form-decoding; base64 has no spaces, so turn them back (a classic cause
    /// of "回调地址请求不通过" behind hand-written proxies and curl tests).
    fn echostr(&self) -> Result<String, CallbackError> {
        Self::require(&self.echostr, "echostr").map(|e| e.replace(' ', "+"))
    }
}

/// `timestamp` as WeCom sends it: decimal seconds, nothing else.
fn parse_timestamp(timestamp: &str) -> Result<i64, CallbackError> {
    if timestamp.len() > 18 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CallbackError::BadTimestamp);
    }
    timestamp.parse().map_err(|_| CallbackError::BadTimestamp)
}

/// A verified, decrypted and parsed callback POST.
#[derive(Debug, Clone)]
pub struct OpenedCallback {
    /// The channel it belongs to.
    pub channel: Arc<ChannelSpec>,
    /// The decrypted XML exactly as WeCom sent it.
    pub xml: String,
    pub message: AppMessage,
}

impl OpenedCallback {
    /// The identity that makes a retried delivery a duplicate: the MsgId of a
    /// message, or a hash of the whole decrypted plaintext of an event (two
    /// distinct events in the same second differ somewhere in their XML),
    /// prefixed by the channel's name.
    pub(crate) fn dedup_key(&self) -> String {
        let identity = match &self.message.msg_id {
            Some(msg_id) => Identity::MsgId(msg_id),
            None => Identity::Event(self.xml.as_bytes()),
        };
        dedup_key(&self.channel.name, identity)
    }
}

/// A verified and decrypted AI bot callback (SPEC §13).
#[derive(Debug, Clone)]
pub struct OpenedAibot {
    pub channel: Arc<ChannelSpec>,
    /// The decrypted JSON exactly as WeCom sent it.
    pub json: String,
    pub message: AibotMessage,
}

impl OpenedAibot {
    /// The dedup key of its `msgid` on its channel.
    pub(crate) fn dedup_key(&self) -> String {
        dedup_key(&self.channel.name, Identity::MsgId(&self.message.msgid))
    }

    /// The stream this message opens, if it opens one: its id is derived from
    /// the channel and `msgid`, so a retry on any replica names the same stream.
    /// `response_url`: the callback's (the long connection has none).
    pub(crate) fn stream_open(&self, response_url: Option<String>, now: i64) -> Option<StreamOpen> {
        let name = &self.channel.name;
        self.message.opens_stream().then(|| StreamOpen {
            stream_id: crate::streams::stream_id(name, &self.message.msgid),
            record_id: self.dedup_key(),
            channel: name.clone(),
            userid: self.message.userid.clone().unwrap_or_default(),
            chatid: self.message.chatid.clone(),
            response_url,
            created_at: now,
            req_id: None,
        })
    }

    /// Its journal entry: the JSON as received, under its dedup key.
    pub(crate) fn journal_entry(&self) -> NewEntry {
        NewEntry {
            dedup_key: self.dedup_key(),
            channel: self.channel.name.clone(),
            kind: EntryKind::Aibot,
            sender: self.message.userid.clone(),
            payload: self.json.clone(),
            parsed: None,
        }
    }
}

/// Everything needed to open callbacks: every channel's keys and corp id.
#[derive(Debug, Clone)]
pub struct CallbackCredentials {
    channels: Channels,
    /// The `app` and `kf` channels, which the shared paths serve.
    shared: Vec<Arc<ChannelSpec>>,
    /// `CALLBACK_MAX_AGE_SECS`; `None`: any age.
    max_age: Option<u64>,
}

/// A channel whose Token signed a callback and whose key opened it for its corp.
type Opened = (Arc<ChannelSpec>, Plaintext);

impl CallbackCredentials {
    pub fn from_config(config: &Config) -> Self {
        let channels = config.channels.clone();
        let shared =
            channels.iter().filter(|c| matches!(c.kind(), ChannelKind::App | ChannelKind::Kf)).cloned().collect();
        Self { channels, shared, max_age: config.callback_max_age.map(|age| age.as_secs()) }
    }

    /// Every channel.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The channel called `name` (its own path), with one hash lookup.
    pub fn channel(&self, name: &str) -> Option<&Arc<ChannelSpec>> {
        self.channels.get(name)
    }

    /// The replay window: a signed timestamp more than `max_age` old, or more
    /// than ten minutes ahead of `now`, is a replay (or a clock far off).
    fn check_age(&self, timestamp: i64, now: i64) -> Result<(), CallbackError> {
        let Some(max_age) = self.max_age else { return Ok(()) };
        let skew =
            if now >= timestamp { Skew::Old(now.abs_diff(timestamp)) } else { Skew::Ahead(now.abs_diff(timestamp)) };
        match skew {
            Skew::Old(secs) if secs > max_age => Err(CallbackError::StaleTimestamp(skew)),
            Skew::Ahead(secs) if secs > MAX_AHEAD_SECS => Err(CallbackError::StaleTimestamp(skew)),
            _ => Ok(()),
        }
    }

    /// Every channel of `candidates` whose Token signs `encrypted` and whose key
    /// decrypts it to its own corp id, after checking the signed timestamp
    /// against `now` (Unix seconds). Channels sharing a Token verify once, and
    /// channels sharing a key decrypt once (the built-in kf shares the app's).
    fn open_ciphertext<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a Arc<ChannelSpec>>,
        query: &CallbackQuery,
        encrypted: &str,
        now: i64,
    ) -> Result<Vec<Opened>, CallbackError> {
        let signature = CallbackQuery::require(&query.msg_signature, "msg_signature")?;
        let timestamp = CallbackQuery::require(&query.timestamp, "timestamp")?;
        let nonce = CallbackQuery::require(&query.nonce, "nonce")?;
        let seconds = parse_timestamp(timestamp)?;
        let mut first_error = None;
        let mut age_checked = false;
        let mut verified: Vec<(&str, bool)> = Vec::new();
        let mut decrypted: Vec<(&crypto::AesKey, Result<Plaintext, DecryptError>)> = Vec::new();
        let mut opened = Vec::new();
        for channel in candidates {
            let token = channel.keys.token.expose();
            let signs = match verified.iter().find(|(t, _)| *t == token) {
                Some((_, signs)) => *signs,
                // A signature that one Token made, another makes only by a SHA-1
                // collision: once one signed, the rest are not hashed.
                None if verified.iter().any(|(_, signs)| *signs) => false,
                None => {
                    let signs = crypto::sign(token, timestamp, nonce, encrypted).matches(signature);
                    verified.push((token, signs));
                    signs
                }
            };
            if !signs {
                continue;
            }
            // Only a signed timestamp says anything: a stranger's is a bad signature.
            if !age_checked {
                self.check_age(seconds, now)?;
                age_checked = true;
            }
            let key = &channel.keys.aes_key;
            let plain = match decrypted.iter().find(|(k, _)| *k == key) {
                Some((_, plain)) => plain.clone(),
                None => {
                    let plain = crypto::decrypt(key, encrypted);
                    decrypted.push((key, plain.clone()));
                    plain
                }
            };
            match plain {
                Ok(plain) if plain.receive_id() == channel.corp_id.as_str() => {
                    opened.push((Arc::clone(channel), plain))
                }
                Ok(_) => first_error = first_error.or(Some(CallbackError::WrongReceiveId)),
                Err(e) => first_error = first_error.or(Some(CallbackError::BadCiphertext(e))),
            }
        }
        if opened.is_empty() {
            return Err(first_error.unwrap_or(CallbackError::BadSignature));
        }
        Ok(opened)
    }

    /// URL verification (`GET`) on a shared path: the channel and the decrypted
    /// `echostr` to answer with. The echo carries no `AgentID`, so channels that
    /// open it alike are not ambiguous here: any of them answers the same text.
    pub fn verify_url(&self, query: &CallbackQuery, now: i64) -> Result<(Arc<ChannelSpec>, String), CallbackError> {
        let echostr = query.echostr()?;
        let mut opened = self.open_ciphertext(&self.shared, query, &echostr, now)?;
        let (channel, plain) = opened.swap_remove(0);
        Ok((channel, plain.into_message()))
    }

    /// URL verification (`GET`) on `channel`'s own path.
    pub fn verify_url_on(
        &self,
        channel: &Arc<ChannelSpec>,
        query: &CallbackQuery,
        now: i64,
    ) -> Result<String, CallbackError> {
        self.open_on_own_path(channel, query, &query.echostr()?, now)
    }

    /// `encrypted` opened by `channel` alone, on its own path: the message.
    fn open_on_own_path(
        &self,
        channel: &Arc<ChannelSpec>,
        query: &CallbackQuery,
        encrypted: &str,
        now: i64,
    ) -> Result<String, CallbackError> {
        let mut opened = self.open_ciphertext([channel], query, encrypted, now)?;
        Ok(opened.swap_remove(0).1.into_message())
    }

    /// The envelope of a callback `POST`, parameters checked first.
    fn envelope(query: &CallbackQuery, body: &[u8]) -> Result<CallbackEnvelope, CallbackError> {
        query.require_signed()?;
        CallbackEnvelope::parse_bytes(body).map_err(CallbackError::BadEnvelope)
    }

    /// A callback `POST` received on a shared path at `now` (Unix seconds):
    /// verify, check the timestamp, decrypt, check the receive id, parse, and
    /// choose the channel among those that opened it ([`choose`]).
    pub fn open(&self, query: &CallbackQuery, body: &[u8], now: i64) -> Result<OpenedCallback, CallbackError> {
        let envelope = Self::envelope(query, body)?;
        let opened = self.open_ciphertext(&self.shared, query, &envelope.encrypt, now)?;
        // Channels that opened it share its key, so the plaintext is the same.
        let xml = opened[0].1.clone().into_message();
        let message = AppMessage::parse(&xml).map_err(CallbackError::BadMessage)?;
        let channels: Vec<Arc<ChannelSpec>> = opened.into_iter().map(|(channel, _)| channel).collect();
        let channel = choose(&channels, &self.shared, &message)?;
        Ok(OpenedCallback { channel, xml, message })
    }

    /// A callback `POST` on `channel`'s own path: that channel, no other tried.
    pub fn open_on(
        &self,
        channel: &Arc<ChannelSpec>,
        query: &CallbackQuery,
        body: &[u8],
        now: i64,
    ) -> Result<OpenedCallback, CallbackError> {
        let envelope = Self::envelope(query, body)?;
        let xml = self.open_on_own_path(channel, query, &envelope.encrypt, now)?;
        let message = AppMessage::parse(&xml).map_err(CallbackError::BadMessage)?;
        Ok(OpenedCallback { channel: Arc::clone(channel), xml, message })
    }
}

impl CallbackCredentials {
    /// An AI bot callback `POST` on `channel`'s own path: the JSON envelope,
    /// the signature, the timestamp, the cipher and an empty receive id, as for
    /// app callbacks; then the JSON, and the `aibotid` when the channel names its bot.
    pub fn open_aibot(
        &self,
        channel: &Arc<ChannelSpec>,
        query: &CallbackQuery,
        body: &[u8],
        now: i64,
    ) -> Result<OpenedAibot, CallbackError> {
        query.require_signed()?;
        let encrypted = aibot::envelope(body).map_err(CallbackError::AibotEnvelope)?;
        let json = self.open_on_own_path(channel, query, &encrypted, now)?;
        let message = AibotMessage::parse(&json).map_err(CallbackError::AibotMessage)?;
        if let (Some(expected), Some(got)) = (channel.bot_id(), message.aibotid.as_deref()) {
            if expected != got {
                return Err(CallbackError::WrongBot(crate::messages::clip(got, 64).into_owned()));
            }
        }
        Ok(OpenedAibot { channel: Arc::clone(channel), json, message })
    }
}

/// The channel of a callback on a shared path, among the `opened` channels
/// (Token and corp id match): a `kf_msg_or_event` notice belongs to a kf
/// channel, anything else to an app channel, and among app channels to the one
/// whose agent id is the message's `AgentID`. A kf notice signed only by an app
/// channel's Token goes to the one kf channel of that corp (the built-in `kf`
/// shares the app's URL and, by default, its Token). Still several: ambiguous,
/// with the per-channel paths to use instead.
pub(crate) fn choose(
    opened: &[Arc<ChannelSpec>],
    shared: &[Arc<ChannelSpec>],
    message: &AppMessage,
) -> Result<Arc<ChannelSpec>, CallbackError> {
    let kf_notice = matches!(message.event(), Some(AppEvent::KfMsgOrEvent { .. }));
    let wanted = if kf_notice { ChannelKind::Kf } else { ChannelKind::App };
    let mut of_kind: Vec<&Arc<ChannelSpec>> = opened.iter().filter(|c| c.kind() == wanted).collect();
    if of_kind.is_empty() && kf_notice {
        of_kind = shared
            .iter()
            .filter(|c| c.kind() == ChannelKind::Kf && opened.iter().any(|o| o.corp_id == c.corp_id))
            .collect();
    }
    if of_kind.is_empty() {
        of_kind = opened.iter().collect();
    }
    if of_kind.len() > 1 && !kf_notice {
        let by_agent: Vec<&Arc<ChannelSpec>> =
            of_kind.iter().copied().filter(|c| c.agent_id().is_some() && c.agent_id() == message.agent_id).collect();
        if !by_agent.is_empty() {
            of_kind = by_agent;
        }
    }
    match of_kind.as_slice() {
        [one] => Ok(Arc::clone(one)),
        several => Err(CallbackError::AmbiguousChannel(several.iter().map(|c| c.path()).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::ChannelName;
    use crate::config::channels::Credentials;
    use crate::config::{CallbackKeys, Token};

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn channel(name: &str, corp: &str, credentials: Credentials) -> Arc<ChannelSpec> {
        Arc::new(ChannelSpec {
            name: ChannelName::parse(name).expect("name"),
            corp_id: crate::config::secret::CorpId::parse(corp).expect("corp"),
            keys: CallbackKeys {
                token: Token::parse("T").expect("token"),
                aes_key: crypto::AesKey::parse(KEY).expect("key"),
            },
            credentials,
            forward: None,
            welcome_text: None,
            proxy: None,
            builtin: false,
        })
    }

    fn app(name: &str, agent: i64) -> Arc<ChannelSpec> {
        channel(name, "ww1", Credentials::App { agent_id: Some(agent), secret: None })
    }

    fn kf(name: &str, corp: &str) -> Arc<ChannelSpec> {
        channel(name, corp, Credentials::Kf { secret: None })
    }

    fn text(agent: i64) -> AppMessage {
        AppMessage::parse(&format!(
            "<xml><ToUserName>ww1</ToUserName><MsgType>text</MsgType><Content>x</Content><MsgId>1</MsgId><AgentID>{agent}</AgentID></xml>"
        ))
        .expect("parses")
    }

    fn notice() -> AppMessage {
        AppMessage::parse("<xml><ToUserName>ww1</ToUserName><MsgType>event</MsgType><Event>kf_msg_or_event</Event><OpenKfId>wk</OpenKfId></xml>")
            .expect("parses")
    }

    fn chosen(
        opened: &[Arc<ChannelSpec>],
        shared: &[Arc<ChannelSpec>],
        message: &AppMessage,
    ) -> Result<String, Vec<String>> {
        match choose(opened, shared, message) {
            Ok(channel) => Ok(channel.name.to_string()),
            Err(CallbackError::AmbiguousChannel(paths)) => Err(paths),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_kf_notice_goes_to_the_kf_channel_and_a_message_to_the_app_with_its_agent_id() {
        let (a1, a2, k) = (app("a1", 1), app("a2", 2), kf("k", "ww1"));
        let all = [a1.clone(), a2.clone(), k.clone()];
        assert_eq!(chosen(&all, &all, &notice()), Ok("k".into()));
        assert_eq!(chosen(&all, &all, &text(2)), Ok("a2".into()));
        assert_eq!(
            chosen(&all, &all, &text(3)),
            Err(vec!["/api/v1/wecom/callback/a1".into(), "/api/v1/wecom/callback/a2".into()])
        );
        assert_eq!(
            chosen(std::slice::from_ref(&a1), &all, &text(3)),
            Ok("a1".into()),
            "one app: its AgentID is not checked"
        );
    }

    #[test]
    fn a_kf_notice_signed_by_an_apps_token_goes_to_the_one_kf_channel_of_that_corp() {
        let (a1, k1, k2) = (app("a1", 1), kf("k1", "ww1"), kf("k2", "ww2"));
        let shared = [a1.clone(), k1, k2];
        assert_eq!(chosen(std::slice::from_ref(&a1), &shared, &notice()), Ok("k1".into()));
    }
}
