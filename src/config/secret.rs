//! The types of secret and identifying values: [`Secret`] (redacted `Debug`, no
//! `Display`, comparison that reveals neither content nor length), the callback
//! [`Token`], the [`CorpId`], and fresh Tokens and EncodingAESKeys in the alphabet
//! the WeCom console accepts.
//!
//! Deliberately not here: which variables hold secrets (the table in
//! `variables.rs`) and the EncodingAESKey's decoding (`crypto::AesKey`).

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of an EncodingAESKey (SPEC §7).
const ENCODING_AES_KEY_CHARS: usize = 43;
/// Length of a generated Token: the most the WeCom console accepts.
const TOKEN_CHARS: usize = 32;

/// A secret value. It has no `Display`; `Debug` shows a short prefix and the length.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must use it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// At most a 3-character prefix and the length: enough to tell two secrets apart.
    pub fn redacted(&self) -> String {
        let prefix: String = self.0.chars().take(3.min(self.0.chars().count() / 4)).collect();
        format!("{prefix}… ({} chars)", self.0.chars().count())
    }

    /// Constant-time comparison, for bearer tokens and the like. Both sides are
    /// hashed first so the comparison always covers 32 bytes: a byte-wise
    /// comparison of the values themselves returns early on a length mismatch,
    /// which tells a guesser the secret's length.
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate.as_bytes());
        bool::from(expected.as_slice().ct_eq(given.as_slice()))
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
    /// Checks the console's rules; the error names the problem, never the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let len = value.chars().count();
        if !(1..=TOKEN_CHARS).contains(&len) {
            return Err(format!("must be 1 to 32 letters or digits, got {len} characters"));
        }
        if let Some(i) = value.chars().position(|c| !c.is_ascii_alphanumeric()) {
            return Err(format!("must be letters or digits only; character {} is not", i + 1));
        }
        Ok(Self(Secret::new(value)))
    }

    /// A fresh random Token of 32 letters and digits.
    pub(crate) fn generate() -> Self {
        Self(Secret::new(Alphanumeric.sample_string(&mut rand::rng(), TOKEN_CHARS)))
    }

    /// The Token itself, for signing.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// A fresh EncodingAESKey: 43 characters of `a-z A-Z 0-9` only, the alphabet the
/// WeCom console generates and accepts (plain base64 of 32 random bytes has `+` or
/// `/` three times in four). Its last character may be non-canonical base64,
/// which `crypto::AesKey::parse` accepts, as WeCom does.
pub(crate) fn generate_encoding_aes_key() -> Secret {
    Secret::new(Alphanumeric.sample_string(&mut rand::rng(), ENCODING_AES_KEY_CHARS))
}

/// The corp id (`ww…`): also the receive id every decrypted callback must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpId(String);

impl CorpId {
    /// Letters and digits, at most 64.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(
                "must be the corp id from 我的企业 → 企业信息 (letters and digits, usually starting with ww)".into()
            );
        }
        Ok(Self(value.to_owned()))
    }

    /// The empty receive id of an enterprise's own AI bot (SPEC §12): its
    /// callbacks are opened for no corp.
    pub(crate) fn none() -> Self {
        Self(String::new())
    }

    /// The corp id as WeCom spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_shows_little() {
        let s = Secret::new("abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(s.redacted(), "abc… (36 chars)");
        assert_eq!(format!("{s:?}"), "Secret(abc… (36 chars))");
        assert_eq!(Secret::new("short").redacted(), "s… (5 chars)");
        assert!(s.matches("abcdefghijklmnopqrstuvwxyz0123456789"));
        assert!(!s.matches("abc"));
    }

    /// Regression: `matches` returned early when the lengths differed, so its
    /// timing told a guesser the token's length. Every candidate now goes through
    /// the same digest comparison; functionally, only the equal one matches.
    #[test]
    fn bearer_comparison_does_not_depend_on_the_candidates_length() {
        let secret = Secret::new("0123456789abcdef");
        assert!(secret.matches("0123456789abcdef"));
        for len in 0..64 {
            let candidate: String = "0123456789abcdef".chars().cycle().take(len).collect();
            assert_eq!(secret.matches(&candidate), len == 16, "length {len}");
        }
        assert!(!secret.matches("0123456789abcdeF"));
        assert!(Secret::new("").matches(""));
    }

    #[test]
    fn generated_tokens_are_valid_and_fresh() {
        let token = Token::generate();
        assert!(Token::parse(token.expose()).is_ok());
        assert_ne!(token.expose(), Token::generate().expose());
    }
}
