//! Access tokens kept across restarts, keyed by (corp id, secret identity).

use rusqlite::{params, OptionalExtension};

use super::{now, Store, StoreError};

/// A stored token. `Debug` shows its length, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("token", &format_args!("<{} chars>", self.token.len()))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Store {
    pub async fn load_token(&self, cache_key: String) -> Result<Option<StoredToken>, StoreError> {
        self.run(move |db| {
            db.query_row("SELECT token, expires_at FROM access_tokens WHERE cache_key = ?1", [cache_key], |row| {
                Ok(StoredToken { token: row.get(0)?, expires_at: row.get(1)? })
            })
            .optional()
        })
        .await
    }

    pub async fn save_token(&self, cache_key: String, token: StoredToken) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "INSERT INTO access_tokens (cache_key, token, expires_at, obtained_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(cache_key) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at,
                 obtained_at = excluded.obtained_at",
                params![cache_key, token.token, token.expires_at, now()],
            )
            .map(drop)
        })
        .await
    }

    pub async fn delete_token(&self, cache_key: String) -> Result<(), StoreError> {
        self.run(move |db| db.execute("DELETE FROM access_tokens WHERE cache_key = ?1", [cache_key]).map(drop)).await
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
