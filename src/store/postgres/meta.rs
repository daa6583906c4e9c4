//! Facts about the installation in PostgreSQL: the first start of the cluster,
//! the other `meta` values, and the write probe.

use super::{Postgres, PostgresError, EPOCH};
use crate::store::StoreError;

impl Postgres {
    /// Unix seconds of the very first start of any replica on this database (set
    /// once, by whichever replica asks first).
    pub(in crate::store) async fn first_started_at(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO meta (key, value) VALUES ('first_started_at', {EPOCH}::text) ON CONFLICT (key) DO NOTHING"
            ))
            .await?;
        client.execute(&statement, &[]).await?;
        self.committed(1);
        let statement = client.prepare_cached("SELECT value FROM meta WHERE key = 'first_started_at'").await?;
        let value: String = client.query_one(&statement, &[]).await?.get(0);
        value.parse().map_err(|_| StoreError::Postgres(PostgresError::Corrupt(format!("first_started_at {value:?}"))))
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
