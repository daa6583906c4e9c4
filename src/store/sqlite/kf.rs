//! kf cursors in SQLite.

use rusqlite::{params, OptionalExtension};

use super::journal::insert;
use super::Sqlite;
use crate::store::journal::{NewEntry, Recorded};
use crate::store::{now, StoreError};

impl Sqlite {
    /// The stored `next_cursor` of `open_kfid`; `None` before its first sync.
    pub(in crate::store) async fn kf_cursor(&self, open_kfid: String) -> Result<Option<String>, StoreError> {
        self.run(move |db| {
            db.query_row("SELECT cursor FROM kf_cursors WHERE open_kfid = ?1", [open_kfid], |row| row.get(0)).optional()
        })
        .await
    }

    /// Every kf account that has synced at least once.
    pub(in crate::store) async fn kf_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let mut statement = db.prepare_cached("SELECT open_kfid FROM kf_cursors ORDER BY open_kfid")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Journals a page's messages (each once, by its dedup key) and stores the
    /// cursor that follows it, atomically. Returns how many messages were new.
    pub(in crate::store) async fn kf_store_page(
        &self,
        open_kfid: String,
        entries: Vec<NewEntry>,
        next_cursor: String,
    ) -> Result<usize, StoreError> {
        self.run(move |db| {
            let mut new = 0;
            for entry in &entries {
                if let Recorded::New(_) = insert(db, entry)? {
                    new += 1;
                }
            }
            if !next_cursor.is_empty() {
                db.execute(
                    "INSERT INTO kf_cursors (open_kfid, cursor, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(open_kfid) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    params![open_kfid, next_cursor, now()],
                )?;
            }
            Ok(new)
        })
        .await
    }
}
