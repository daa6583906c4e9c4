//! Access tokens kept across restarts, keyed by (corp id, secret identity), and
//! the [`AccessToken`] type itself: here because the store keeps it and `wecom/`
//! (which imports the store, never the reverse) fetches and sends it.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{backend, Store, StoreError};

/// An access token from `gettoken`: as secret as the Secret it was issued for,
/// for its two hours. `Debug` and `Display` show only its length; it reads from
/// WeCom's JSON as the plain string; [`AccessToken::expose`] is for the request
/// that carries it and the store that keeps it. Equality is constant-time.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The token itself, for the request's `access_token` and the store's row.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for AccessToken {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for AccessToken {}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken({self})")
    }
}

impl std::fmt::Display for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} chars>", self.0.len())
    }
}

/// A stored token (its `Debug` shows the token's length, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: AccessToken,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Store {
    pub async fn load_token(&self, cache_key: String) -> Result<Option<StoredToken>, StoreError> {
        backend!(self, b => b.load_token(cache_key).await)
    }

    pub async fn save_token(&self, cache_key: String, token: StoredToken) -> Result<(), StoreError> {
        backend!(self, b => b.save_token(cache_key, token).await)
    }

    /// Deletes the stored token of `cache_key` if it is still `stale`: a token
    /// another refresher stored meanwhile is kept.
    pub async fn drop_token(&self, cache_key: String, stale: AccessToken) -> Result<(), StoreError> {
        backend!(self, b => b.drop_token(cache_key, stale).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_token_shows_its_length_only() {
        let token: AccessToken = serde_json::from_str(r#""ACCESS-TOKEN-value-123""#).expect("a JSON string");
        for shown in [format!("{token:?}"), format!("{token}"), format!("{token:#?}")] {
            assert!(!shown.contains("ACCESS") && !shown.contains("value"), "{shown}");
            assert!(shown.contains("22 chars"), "{shown}");
        }
        assert_eq!(token.expose(), "ACCESS-TOKEN-value-123");
        assert_eq!(token, AccessToken::new("ACCESS-TOKEN-value-123"));
        assert_ne!(token, AccessToken::new("ACCESS-TOKEN-value-12"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = StoredToken { token: "ACCESS-TOKEN-value-123".into(), expires_at: 7 };
        let shown = format!("{token:?}");
        assert!(!shown.contains("ACCESS-TOKEN"), "{shown}");
        assert!(shown.contains("22 chars") && shown.contains("expires_at: 7"), "{shown}");
    }
}
