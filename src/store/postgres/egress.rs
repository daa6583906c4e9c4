//! The egress IPs in PostgreSQL, and the release of parked actions.

use super::Postgres;
use crate::store::egress::EgressRecord;
use crate::store::StoreError;

impl Postgres {
    pub(in crate::store) async fn egress_ips(&self) -> Result<Vec<EgressRecord>, StoreError> {
        self.read_all("SELECT channel, ip, first_seen, last_seen FROM egress_ips ORDER BY channel", |row| {
            Ok(EgressRecord { channel: row.get(0), ip: row.get(1), first_seen: row.get(2), last_seen: row.get(3) })
        })
        .await
    }

    pub(in crate::store) async fn set_egress_ip(&self, record: EgressRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO egress_ips (channel, ip, first_seen, last_seen) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel) DO UPDATE SET ip = excluded.ip, first_seen = excluded.first_seen,
                                                     last_seen = excluded.last_seen",
            )
            .await?;
        client.execute(&statement, &[&record.channel, &record.ip, &record.first_seen, &record.last_seen]).await?;
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn release_actions(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE outbox SET next_attempt_at = now()
                 WHERE id = ANY($1) AND done_at IS NULL AND next_attempt_at > now()
                   AND (claimed_until IS NULL OR claimed_until <= now())",
            )
            .await?;
        client.execute(&statement, &[&ids]).await?;
        self.committed(1);
        Ok(())
    }
}
