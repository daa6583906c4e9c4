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

    /// A value in `meta`, e.g. the last restart note or certificate step.
    pub(in crate::store) async fn meta_value(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.run(move |db| db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get(0)).optional())
            .await
    }

    pub(in crate::store) async fn set_meta_value(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
        })
        .await
    }

    /// Writes and deletes a probe row: the `store:writable` check.
    pub(in crate::store) async fn probe_write(&self) -> Result<(), StoreError> {
        self.run(|db| {
            db.execute("INSERT INTO meta (key, value) VALUES ('probe', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [now().to_string()])?;
            db.execute("DELETE FROM meta WHERE key = 'probe'", []).map(drop)
        })
        .await
    }
}
