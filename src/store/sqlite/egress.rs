//! The egress IPs in SQLite, and the release of parked actions.

use rusqlite::params;

use super::Sqlite;
use crate::store::egress::EgressRecord;
use crate::store::{now, StoreError};

impl Sqlite {
    pub(in crate::store) async fn egress_ips(&self) -> Result<Vec<EgressRecord>, StoreError> {
        self.read_all("SELECT channel, ip, first_seen, last_seen FROM egress_ips ORDER BY channel", |row| {
            Ok(EgressRecord { channel: row.get(0)?, ip: row.get(1)?, first_seen: row.get(2)?, last_seen: row.get(3)? })
        })
        .await
    }

    pub(in crate::store) async fn set_egress_ip(&self, record: EgressRecord) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.prepare_cached(
                "INSERT INTO egress_ips (channel, ip, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(channel) DO UPDATE SET ip = excluded.ip, first_seen = excluded.first_seen,
                                                    last_seen = excluded.last_seen",
            )?
            .execute(params![record.channel, record.ip, record.first_seen, record.last_seen])?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn release_actions(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            let at = now();
            let mut statement = db.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?1
                 WHERE id = ?2 AND done_at IS NULL AND next_attempt_at > ?1
                   AND (claimed_until IS NULL OR claimed_until <= ?1)",
            )?;
            for id in ids {
                statement.execute(params![at, id])?;
            }
            Ok(())
        })
        .await
    }
}
