//! Named leases in PostgreSQL: a row per name whose claim only goes up, with an
//! expiry by the database's clock. Deliberately not here: session advisory locks,
//! which break behind pgbouncer's transaction pooling.

use deadpool_postgres::Transaction;

use super::Postgres;
use crate::store::leases::Lease;
use crate::store::StoreError;

/// Takes lease `name` for `lease_secs` unless a live one is held: its new claim.
pub(super) async fn claim(tx: &Transaction<'_>, name: &str, lease_secs: i64) -> Result<Option<i64>, StoreError> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO leases (name, claim, until) VALUES ($1, 1, now() + make_interval(secs => $2::bigint))
             ON CONFLICT (name) DO UPDATE SET claim = leases.claim + 1, until = excluded.until
             WHERE leases.until <= now()
             RETURNING claim",
        )
        .await?;
    Ok(tx.query_opt(&statement, &[&name, &lease_secs]).await?.map(|row| row.get(0)))
}

/// Extends a lease still held under its claim; `false` when it was taken over.
/// Locks the lease's row until the transaction ends.
pub(super) async fn renew(tx: &Transaction<'_>, lease: &Lease, lease_secs: i64) -> Result<bool, StoreError> {
    let statement = tx
        .prepare_cached(
            "UPDATE leases SET until = now() + make_interval(secs => $3::bigint) WHERE name = $1 AND claim = $2",
        )
        .await?;
    Ok(tx.execute(&statement, &[&lease.name, &lease.claim, &lease_secs]).await? == 1)
}

impl Postgres {
    pub(in crate::store) async fn claim_lease(&self, name: String) -> Result<Option<Lease>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let claimed = claim(&tx, &name, self.lease_secs).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(claimed.map(|claim| Lease { name, claim }))
    }

    pub(in crate::store) async fn renew_lease(&self, lease: Lease) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let renewed = renew(&tx, &lease, self.lease_secs).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(renewed)
    }

    pub(in crate::store) async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("UPDATE leases SET until = '-infinity' WHERE name = $1 AND claim = $2").await?;
        client.execute(&statement, &[&lease.name, &lease.claim]).await?;
        self.committed(1);
        Ok(())
    }
}
