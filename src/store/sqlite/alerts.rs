//! alerts in SQLite.

use rusqlite::{params, Row};

use super::Sqlite;
use crate::store::alerts::FiringRecord;
use crate::store::StoreError;

/// Every firing check, read by [`read_firing`] (also by the snapshot's export).
pub(super) const FIRING: &str = "SELECT check_name, firing_since, last_notified_at FROM alert_state";

pub(super) fn read_firing(row: &Row<'_>) -> rusqlite::Result<FiringRecord> {
    Ok(FiringRecord { check: row.get(0)?, since: row.get(1)?, last_notified_at: row.get(2)? })
}

impl Sqlite {
    pub(in crate::store) async fn firing_checks(&self) -> Result<Vec<FiringRecord>, StoreError> {
        self.read_all(FIRING, read_firing).await
    }

    pub(in crate::store) async fn set_firing(&self, record: FiringRecord) -> Result<(), StoreError> {
        self.run(move |db| {
            db.execute(
                "INSERT INTO alert_state (check_name, firing_since, last_notified_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(check_name) DO UPDATE SET firing_since = excluded.firing_since,
                 last_notified_at = excluded.last_notified_at",
                params![record.check, record.since, record.last_notified_at],
            )
            .map(drop)
        })
        .await
    }

    pub(in crate::store) async fn clear_firing(&self, check: String) -> Result<(), StoreError> {
        self.run(move |db| db.execute("DELETE FROM alert_state WHERE check_name = ?1", [check]).map(drop)).await
    }
}
