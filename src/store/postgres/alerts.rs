//! Alert state in PostgreSQL.

use tokio_postgres::Row;

use super::Postgres;
use crate::store::alerts::FiringRecord;
use crate::store::StoreError;

/// Every firing check, read by [`read_firing`] (also by the snapshot's export).
pub(super) const FIRING: &str = "SELECT check_name, firing_since, last_notified_at FROM alert_state";

pub(super) fn read_firing(row: &Row) -> FiringRecord {
    FiringRecord { check: row.get(0), since: row.get(1), last_notified_at: row.get(2) }
}

impl Postgres {
    pub(in crate::store) async fn firing_checks(&self) -> Result<Vec<FiringRecord>, StoreError> {
        self.read_all(FIRING, |row| Ok(read_firing(row))).await
    }

    pub(in crate::store) async fn set_firing(&self, record: FiringRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO alert_state (check_name, firing_since, last_notified_at) VALUES ($1, $2, $3)
                 ON CONFLICT (check_name) DO UPDATE SET firing_since = excluded.firing_since,
                 last_notified_at = excluded.last_notified_at",
            )
            .await?;
        client.execute(&statement, &[&record.check, &record.since, &record.last_notified_at]).await?;
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn clear_firing(&self, check: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("DELETE FROM alert_state WHERE check_name = $1").await?;
        client.execute(&statement, &[&check]).await?;
        self.committed(1);
        Ok(())
    }
}
