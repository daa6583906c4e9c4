//! Named leases in SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::Sqlite;
use crate::store::leases::Lease;
use crate::store::{now, StoreError};

/// Takes lease `name` for `lease_secs` unless a live one is held: its new claim.
pub(super) fn claim(db: &Connection, name: &str, lease_secs: i64) -> rusqlite::Result<Option<i64>> {
    db.prepare_cached(
        "INSERT INTO leases (name, claim, until) VALUES (?1, 1, ?2 + ?3)
         ON CONFLICT(name) DO UPDATE SET claim = leases.claim + 1, until = excluded.until WHERE leases.until <= ?2
         RETURNING claim",
    )?
    .query_row(params![name, now(), lease_secs], |row| row.get(0))
    .optional()
}

/// Extends a lease still held under `claim`; `false` when it was taken over.
pub(super) fn renew(db: &Connection, lease: &Lease, lease_secs: i64) -> rusqlite::Result<bool> {
    let changed = db
        .prepare_cached("UPDATE leases SET until = ?1 + ?2 WHERE name = ?3 AND claim = ?4")?
        .execute(params![now(), lease_secs, lease.name, lease.claim])?;
    Ok(changed == 1)
}

impl Sqlite {
    pub(in crate::store) async fn claim_lease(&self, name: String) -> Result<Option<Lease>, StoreError> {
        let lease_secs = self.lease_secs;
        self.run_relaxed(move |db| Ok(claim(db, &name, lease_secs)?.map(|claim| Lease { name, claim }))).await
    }

    pub(in crate::store) async fn renew_lease(&self, lease: Lease) -> Result<bool, StoreError> {
        let lease_secs = self.lease_secs;
        self.run_relaxed(move |db| renew(db, &lease, lease_secs)).await
    }

    pub(in crate::store) async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.execute("UPDATE leases SET until = 0 WHERE name = ?1 AND claim = ?2", params![lease.name, lease.claim])
                .map(drop)
        })
        .await
    }
}
