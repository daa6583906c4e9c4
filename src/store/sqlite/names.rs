//! names in SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::Sqlite;
use crate::channels::ChannelName;
use crate::store::names::{CachedName, NameKey, NamedId, SeenSenders};
use crate::store::{now, StoreError};

/// Stores `named`, replacing what was cached for its id.
pub(super) fn upsert(db: &Connection, named: &NamedId) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO names (channel, id_type, id, name, source, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(channel, id_type, id) DO UPDATE SET name = excluded.name, source = excluded.source,
         updated_at = excluded.updated_at",
    )?
    .execute(params![named.key.channel, named.key.id_type, named.key.id, named.name.name, named.name.source, now()])
    .map(drop)
}

impl Sqlite {
    pub(in crate::store) async fn cached_name(&self, key: NameKey) -> Result<Option<CachedName>, StoreError> {
        self.run(move |db| {
            db.query_row(
                "SELECT name, source FROM names WHERE channel = ?1 AND id_type = ?2 AND id = ?3",
                params![key.channel, key.id_type, key.id],
                |row| Ok(CachedName { name: row.get(0)?, source: row.get(1)? }),
            )
            .optional()
        })
        .await
    }

    pub(in crate::store) async fn cache_name(&self, named: NamedId) -> Result<(), StoreError> {
        self.run(move |db| upsert(db, &named)).await
    }

    /// Senders seen on a channel, optionally only those without a cached name.
    pub(in crate::store) async fn seen_senders(&self, query: SeenSenders) -> Result<Vec<String>, StoreError> {
        self.run(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT DISTINCT sender FROM journal WHERE channel = ?1 AND sender IS NOT NULL
                 AND (?2 IS NULL OR sender NOT IN (SELECT id FROM names WHERE id_type = ?3
                      AND channel IN (SELECT value FROM json_each(?2))))
                 ORDER BY sender LIMIT ?4",
            )?;
            let SeenSenders { channel, id_type, only_unmapped, limit } = query;
            let named_on = only_unmapped.map(|channels| {
                serde_json::Value::from(channels.iter().map(ChannelName::as_str).collect::<Vec<_>>()).to_string()
            });
            let rows = statement.query_map(params![channel, named_on, id_type, limit as i64], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }
}
