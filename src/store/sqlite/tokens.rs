//! tokens in SQLite.

use rusqlite::{params, OptionalExtension};

use super::Sqlite;
use crate::store::tokens::{AccessToken, StoredToken};
use crate::store::{now, StoreError};

impl Sqlite {
    pub(in crate::store) async fn load_token(&self, cache_key: String) -> Result<Option<StoredToken>, StoreError> {
        self.run(move |db| {
            db.query_row("SELECT token, expires_at FROM access_tokens WHERE cache_key = ?1", [cache_key], |row| {
                Ok(StoredToken { token: AccessToken::new(row.get::<_, String>(0)?), expires_at: row.get(1)? })
            })
            .optional()
        })
        .await
    }

    pub(in crate::store) async fn save_token(&self, cache_key: String, token: StoredToken) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "INSERT INTO access_tokens (cache_key, token, expires_at, obtained_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(cache_key) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at,
                 obtained_at = excluded.obtained_at",
                params![cache_key, token.token.expose(), token.expires_at, now()],
            )
            .map(drop)
        })
        .await
    }

    pub(in crate::store) async fn drop_token(&self, cache_key: String, stale: AccessToken) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "DELETE FROM access_tokens WHERE cache_key = ?1 AND token = ?2",
                params![cache_key, stale.expose()],
            )
            .map(drop)
        })
        .await
    }
}
