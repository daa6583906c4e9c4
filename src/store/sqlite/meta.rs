//! meta in SQLite.

use rusqlite::{params, OptionalExtension};

use super::Sqlite;
use crate::store::{now, StoreError};

impl Sqlite {
    /// Unix seconds of the very first start of this data directory (set on first call).
    pub(in crate::store) async fn first_started_at(&self) -> Result<i64, StoreError> {
        self.run(|db| {
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('first_started_at', ?1) ON CONFLICT(key) DO NOTHING",
                params![now().to_string()],
            )?;
            let value: Option<String> = db
                .query_row("SELECT value FROM meta WHERE key = 'first_started_at'", [], |row| row.get(0))
                .optional()?;
            Ok(value.and_then(|v| v.parse().ok()).unwrap_or_else(now))
        })
        .await
    }
}
