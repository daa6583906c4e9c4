//! Access tokens kept across restarts, keyed by (corp id, secret identity).

use super::{backend, Store, StoreError};
use crate::config::AccessToken;

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
    fn debug_never_shows_the_token() {
        let token = StoredToken { token: "ACCESS-TOKEN-value-123".into(), expires_at: 7 };
        let shown = format!("{token:?}");
        assert!(!shown.contains("ACCESS-TOKEN"), "{shown}");
        assert!(shown.contains("22 chars") && shown.contains("expires_at: 7"), "{shown}");
    }
}
