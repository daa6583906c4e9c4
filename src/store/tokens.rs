//! Access tokens kept across restarts, keyed by (corp id, secret identity).

use rusqlite::{params, OptionalExtension};

use super::{now, Store, StoreError};

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
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
