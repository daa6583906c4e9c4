//! Facts about the installation in PostgreSQL: the first start of the cluster.

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
}
