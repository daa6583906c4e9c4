//! kf cursors in PostgreSQL: a page and its cursor stored in one transaction,
//! fenced by the account's lease and a compare-and-set on the cursor.

use super::journal::insert_in;
use super::{leases, Postgres, EPOCH};
use crate::store::journal::NewEntry;
use crate::store::leases::Lease;
use crate::store::StoreError;

impl Postgres {
    /// Every kf account that has synced at least once.
    pub(in crate::store) async fn kf_accounts(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT open_kfid FROM kf_cursors ORDER BY open_kfid").await?;
        Ok(client.query(&statement, &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// Takes lease `name` and reads the account's cursor, in one transaction.
    pub(in crate::store) async fn claim_kf_account(
        &self,
        name: String,
        open_kfid: String,
        lease_secs: i64,
    ) -> Result<Option<(Lease, Option<String>)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(claim) = leases::claim(&tx, &name, lease_secs).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let statement = tx.prepare_cached("SELECT cursor FROM kf_cursors WHERE open_kfid = $1").await?;
        let cursor = tx.query_opt(&statement, &[&open_kfid]).await?.map(|row| row.get(0));
        tx.commit().await?;
        self.committed(1);
        Ok(Some((Lease { name, claim }, cursor)))
    }

    /// Journals a page and moves the cursor from `expected` to `next_cursor`
    /// (unless empty), renewing `lease`, in one transaction; [`StoreError::LeaseLost`]
    /// and nothing written when the lease was taken over or the cursor moved.
    pub(in crate::store) async fn kf_store_page(
        &self,
        lease: Lease,
        open_kfid: String,
        expected: Option<String>,
        entries: Vec<NewEntry>,
        next_cursor: String,
        lease_secs: i64,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The lease row first: it stays locked to the end, so two stores of one
        // account queue here and the second sees the first's cursor.
        let renewed = leases::renew(&tx, &lease, lease_secs).await?;
        let statement = tx.prepare_cached("SELECT cursor FROM kf_cursors WHERE open_kfid = $1 FOR UPDATE").await?;
        let stored: Option<String> = tx.query_opt(&statement, &[&open_kfid]).await?.map(|row| row.get(0));
        if !renewed || stored != expected {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost);
        }
        let new = insert_in(&tx, &entries).await?;
        if !next_cursor.is_empty() {
            let statement = tx
                .prepare_cached(&format!(
                    "INSERT INTO kf_cursors (open_kfid, cursor, updated_at) VALUES ($1, $2, {EPOCH})
                     ON CONFLICT (open_kfid) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at"
                ))
                .await?;
            tx.execute(&statement, &[&open_kfid, &next_cursor]).await?;
        }
        tx.commit().await?;
        self.committed(1);
        Ok(new)
    }
}
