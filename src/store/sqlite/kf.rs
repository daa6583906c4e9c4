//! kf cursors in SQLite.

use rusqlite::{params, OptionalExtension};

use super::journal::insert;
use super::{leases, Sqlite};
use crate::store::journal::{NewEntry, Recorded};
use crate::store::leases::Lease;
use crate::store::{now, StoreError};

impl Sqlite {
    /// Every kf account that has synced at least once.
    pub(in crate::store) async fn kf_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.run_relaxed(|db| {
            let mut statement = db.prepare_cached("SELECT open_kfid FROM kf_cursors ORDER BY open_kfid")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Takes lease `name` and reads the account's cursor, in one transaction.
    pub(in crate::store) async fn claim_kf_account(
        &self,
        name: String,
        open_kfid: String,
        lease_secs: i64,
    ) -> Result<Option<(Lease, Option<String>)>, StoreError> {
        self.run_relaxed(move |db| {
            let Some(claim) = leases::claim(db, &name, lease_secs)? else { return Ok(None) };
            let cursor = db
                .query_row("SELECT cursor FROM kf_cursors WHERE open_kfid = ?1", [&open_kfid], |row| row.get(0))
                .optional()?;
            Ok(Some((Lease { name, claim }, cursor)))
        })
        .await
    }

    /// Journals a page and moves the cursor from `expected` to `next_cursor`
    /// (unless empty), fenced by `lease`; strict: the messages are journaled here.
    pub(in crate::store) async fn kf_store_page(
        &self,
        lease: Lease,
        open_kfid: String,
        expected: Option<String>,
        entries: Vec<NewEntry>,
        next_cursor: String,
        lease_secs: i64,
    ) -> Result<usize, StoreError> {
        self.run(move |db| {
            let stored: Option<String> = db
                .query_row("SELECT cursor FROM kf_cursors WHERE open_kfid = ?1", [&open_kfid], |row| row.get(0))
                .optional()?;
            if !leases::renew(db, &lease, lease_secs)? || stored != expected {
                return Ok(None);
            }
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
            Ok(Some(new))
        })
        .await?
        .ok_or(StoreError::LeaseLost)
    }
}
