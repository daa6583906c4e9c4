//! Alert state, `meta` values and the write probe in PostgreSQL.

use tokio_postgres::Row;

use super::{Postgres, EPOCH};
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

    /// A value in `meta`.
    pub(in crate::store) async fn meta_value(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT value FROM meta WHERE key = $1").await?;
        Ok(client.query_opt(&statement, &[&key]).await?.map(|row| row.get(0)))
    }

    pub(in crate::store) async fn set_meta_value(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .await?;
        client.execute(&statement, &[&key, &value]).await?;
        self.committed(1);
        Ok(())
    }

    /// Writes and deletes a probe row in one transaction: the `store:writable`
    /// check. The row never becomes visible, so concurrent replicas' probes only
    /// queue on it.
    pub(in crate::store) async fn probe_write(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &format!(
                "INSERT INTO meta (key, value) VALUES ('probe', {EPOCH}::text)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            &[],
        )
        .await?;
        tx.execute("DELETE FROM meta WHERE key = 'probe'", &[]).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(())
    }
}
