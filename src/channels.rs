//! What a channel is called and what kind it is (SPEC §12): [`ChannelName`]
//! (1–32 of `a-z 0-9 _ -`, parsed once) and [`ChannelKind`] (`app`, `kf`,
//! `aibot`), the two words every layer uses to say which source of callbacks a
//! message, a token, a record or a metric belongs to.
//!
//! A foundation: it imports nothing from the crate, so the store, the messages
//! and the configuration can all name channels without importing each other.
//! Deliberately not here: a channel's credentials and the registry of the
//! configured channels (`config::channels`, which holds and validates them).

use std::sync::Arc;

/// The longest channel name.
const MAX_NAME_CHARS: usize = 32;

/// A channel's name: 1 to 32 of `a-z 0-9 _ -`. It prefixes dedup keys, names
/// the channel's path (`/api/v1/wecom/callback/<name>`), checks and metric
/// labels. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// The built-in self-built app channel (`WECOM_*`).
    pub const APP: &'static str = "app";
    /// The built-in kf channel (`WECOM_KF_*`).
    pub const KF: &'static str = "kf";
    /// The built-in AI bot channel (`AIBOT_*`).
    pub const AIBOT: &'static str = "aibot";

    /// Checks the alphabet and the length; the error says what a name must be.
    pub fn parse(value: &str) -> Result<Self, String> {
        let len = value.chars().count();
        if !(1..=MAX_NAME_CHARS).contains(&len)
            || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!("is not a channel name: 1 to {MAX_NAME_CHARS} of a-z 0-9 _ -"));
        }
        Ok(Self(value.into()))
    }

    /// The built-in app channel's name.
    pub fn app() -> Self {
        Self(Self::APP.into())
    }

    /// The built-in kf channel's name.
    pub fn kf() -> Self {
        Self(Self::KF.into())
    }

    /// The built-in AI bot channel's name.
    pub fn aibot() -> Self {
        Self(Self::AIBOT.into())
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(|e| serde::de::Error::custom(format!("channel {text:?} {e}")))
    }
}

/// What kind of source a channel is: the compiler checks every `match` on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A self-built app (自建应用): XML callbacks, `message/send`.
    App,
    /// WeChat Customer Service (微信客服): `kf_msg_or_event` notices, `kf/sync_msg`.
    Kf,
    /// An AI bot (智能机器人, SPEC §13) in callback mode: JSON callbacks, answers that stream.
    Aibot,
}

impl ChannelKind {
    /// Every kind, in the order the configuration documents them.
    pub const ALL: [ChannelKind; 3] = [ChannelKind::App, ChannelKind::Kf, ChannelKind::Aibot];

    /// The word in the configuration, records and the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::App => "app",
            ChannelKind::Kf => "kf",
            ChannelKind::Aibot => "aibot",
        }
    }

    /// The kind named by [`ChannelKind::as_str`].
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_to_thirty_two_of_lower_case_letters_digits_underscore_and_dash() {
        for good in ["hr", "a", "it-helpdesk_2", "0", &"x".repeat(32)] {
            assert_eq!(ChannelName::parse(good).expect(good).as_str(), good);
        }
        for bad in ["", "HR", "hr bot", "hr.bot", "hr/x", "é", &"x".repeat(33)] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_name_round_trips_through_json_and_a_bad_one_is_refused() {
        let name: ChannelName = serde_json::from_str("\"hr\"").expect("a name");
        assert_eq!(serde_json::to_string(&name).expect("json"), "\"hr\"");
        assert!(serde_json::from_str::<ChannelName>("\"H R\"").is_err());
    }

    #[test]
    fn kinds_are_the_three_words_of_the_configuration() {
        for kind in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ChannelKind::parse("bot"), None);
    }
}
