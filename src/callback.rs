//! The callback pipeline without HTTP: choose the channel by the Token whose
//! signature matches, decrypt, check the receive id, parse.
//!
//! Owns: the order of those steps and the classification of every way they can
//! fail ([`CallbackError`], [`Outcome`]). Deliberately not here: HTTP status codes
//! and body reading (`routes::callback`), journaling and handling (later stages).

use serde::Deserialize;

use crate::config::{CallbackKeys, Config, CorpId};
use crate::crypto::{self, DecryptError, Plaintext};
use crate::messages::{dedup_key, AppEvent, AppMessage, CallbackEnvelope, Identity, ParseError};

pub(crate) use crate::messages::Channel;

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
    Internal,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 14] = [
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
    #[error("msg_signature does not match WECOM_TOKEN or WECOM_KF_TOKEN (check the Token in the callback settings)")]
    BadSignature,
    #[error("{0}")]
    BadEnvelope(ParseError),
    #[error("cannot decrypt: {0}")]
    BadCiphertext(DecryptError),
    #[error("receive id does not match WECOM_CORP_ID (a callback for another corp?)")]
    WrongReceiveId,
    #[error("{0}")]
    BadMessage(ParseError),
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("timestamp must be a decimal number of seconds")]
    BadTimestamp,
    #[error("timestamp is {0}: outside the replay window (CALLBACK_MAX_AGE_SECS); a replayed callback?")]
    StaleTimestamp(Skew),
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
    pub channel: Channel,
    /// The decrypted XML exactly as WeCom sent it.
    pub xml: String,
    pub message: AppMessage,
}

impl OpenedCallback {
    /// The identity that makes a retried delivery a duplicate: the MsgId of a
    /// message, or a hash of the whole decrypted plaintext of an event (two
    /// distinct events in the same second differ somewhere in their XML).
    pub(crate) fn dedup_key(&self) -> String {
        let identity = match &self.message.msg_id {
            Some(msg_id) => Identity::MsgId(msg_id),
            None => Identity::Event(self.xml.as_bytes()),
        };
        dedup_key(self.channel, identity)
    }
}

/// Everything needed to open callbacks: the corp id and the keys of each channel.
#[derive(Debug, Clone)]
pub struct CallbackCredentials {
    corp_id: Option<CorpId>,
    /// Tried in order; the kf entry is dropped when it equals the app's.
    channels: Vec<(Channel, CallbackKeys)>,
    /// `CALLBACK_MAX_AGE_SECS`; `None`: any age.
    max_age: Option<u64>,
}

impl CallbackCredentials {
    pub fn from_config(config: &Config) -> Self {
        let mut channels = Vec::new();
        let (app, kf) = (config.channels.builtin_app(), config.channels.builtin_kf());
        if let Some(app) = app {
            channels.push((Channel::App, app.keys.clone()));
        }
        if let (Some(app), Some(kf)) = (app, kf) {
            let same_token = kf.keys.token.secret().matches(app.keys.token.expose());
            if !(same_token && kf.keys.aes_key == app.keys.aes_key) {
                channels.push((Channel::Kf, kf.keys.clone()));
            }
        }
        let corp_id = app.map(|app| app.corp_id.clone());
        Self { corp_id, channels, max_age: config.callback_max_age.map(|age| age.as_secs()) }
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

    pub(crate) fn corp_id(&self) -> Option<&CorpId> {
        self.corp_id.as_ref()
    }

    /// Finds the channel whose Token signs `encrypted`, checks the signed
    /// timestamp against `now` (Unix seconds), and decrypts with its key.
    fn open_ciphertext(
        &self,
        query: &CallbackQuery,
        encrypted: &str,
        now: i64,
    ) -> Result<(Channel, Plaintext), CallbackError> {
        let signature = CallbackQuery::require(&query.msg_signature, "msg_signature")?;
        let timestamp = CallbackQuery::require(&query.timestamp, "timestamp")?;
        let nonce = CallbackQuery::require(&query.nonce, "nonce")?;
        let seconds = parse_timestamp(timestamp)?;
        let mut first_error = None;
        for (channel, keys) in &self.channels {
            if !crypto::sign(keys.token.expose(), timestamp, nonce, encrypted).matches(signature) {
                continue;
            }
            // Only a signed timestamp says anything: a stranger's is a bad signature.
            self.check_age(seconds, now)?;
            match crypto::decrypt(&keys.aes_key, encrypted) {
                Ok(plain) if self.corp_id.as_ref().is_some_and(|id| plain.receive_id() == id.as_str()) => {
                    return Ok((*channel, plain))
                }
                Ok(_) => first_error = first_error.or(Some(CallbackError::WrongReceiveId)),
                Err(e) => first_error = first_error.or(Some(CallbackError::BadCiphertext(e))),
            }
        }
        Err(first_error.unwrap_or(CallbackError::BadSignature))
    }

    /// URL verification (`GET`): the decrypted `echostr` to answer with.
    pub fn verify_url(&self, query: &CallbackQuery, now: i64) -> Result<(Channel, String), CallbackError> {
        let echostr = query.echostr()?;
        let (channel, plain) = self.open_ciphertext(query, &echostr, now)?;
        Ok((channel, plain.into_message()))
    }

    /// A callback `POST` received at `now` (Unix seconds): verify, check the
    /// timestamp, decrypt, check the receive id, parse.
    pub fn open(&self, query: &CallbackQuery, body: &[u8], now: i64) -> Result<OpenedCallback, CallbackError> {
        // Parameters first: a request without them is a client error, not bad XML.
        for (value, name) in
            [(&query.msg_signature, "msg_signature"), (&query.timestamp, "timestamp"), (&query.nonce, "nonce")]
        {
            CallbackQuery::require(value, name)?;
        }
        let envelope = CallbackEnvelope::parse_bytes(body).map_err(CallbackError::BadEnvelope)?;
        let (channel, plain) = self.open_ciphertext(query, &envelope.encrypt, now)?;
        let xml = plain.into_message();
        let message = AppMessage::parse(&xml).map_err(CallbackError::BadMessage)?;
        // The kf notice may arrive on the app's Token when both share one URL.
        let channel = match message.event() {
            Some(AppEvent::KfMsgOrEvent { .. }) => Channel::Kf,
            _ => channel,
        };
        Ok(OpenedCallback { channel, xml, message })
    }
}
