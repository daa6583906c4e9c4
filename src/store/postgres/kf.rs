//! kf cursors in PostgreSQL, keyed by channel and `open_kfid`: a page and its
//! cursor stored in one transaction, fenced by the account's lease and a
//! compare-and-set on the cursor.

use deadpool_postgres::GenericClient;

use super::journal::insert_in;
use super::{leases, named, Postgres, EPOCH};
use crate::channels::ChannelName;
use crate::store::kf::{KfAccount, KfClaim, KfPage};
use crate::store::leases::Lease;
use crate::store::StoreError;

/// The account's stored cursor; `lock`: the row stays locked to the end of the transaction.
async fn cursor(client: &impl GenericClient, account: &KfAccount, lock: bool) -> Result<Option<String>, StoreError> {
    let sql = format!(
        "SELECT cursor FROM kf_cursors WHERE channel = $1 AND open_kfid = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let statement = client.prepare_cached(&sql).await?;
    Ok(client.query_opt(&statement, &[&account.channel.as_str(), &account.open_kfid]).await?.map(|row| row.get(0)))
}

impl Postgres {
    /// Every kf account that has synced at least once.
    pub(in crate::store) async fn kf_accounts(&self) -> Result<Vec<KfAccount>, StoreError> {
        self.read_all("SELECT channel, open_kfid FROM kf_cursors ORDER BY channel, open_kfid", |row| {
            let channel = named(row.get(0), |name| ChannelName::parse(name).ok())?;
            Ok(KfAccount { channel, open_kfid: row.get(1) })
        })
        .await
    }

    /// Takes the account's lease and reads its cursor, in one transaction.
    pub(in crate::store) async fn claim_kf_account(&self, account: KfAccount) -> Result<Option<KfClaim>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let name = account.lease_name();
        let Some(claim) = leases::claim(&tx, &name, self.lease_secs).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let cursor = cursor(&tx, &account, false).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(Some(KfClaim { account, cursor, lease: Lease { name, claim } }))
    }

    /// Journals a page and moves the cursor from the claim's to the page's
    /// `next_cursor` (unless empty), renewing the claim's lease, in one
    /// transaction; [`StoreError::LeaseLost`] and nothing written when the lease
    /// was taken over or the cursor moved.
    pub(in crate::store) async fn kf_store_page(&self, claim: KfClaim, page: KfPage) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The lease row first: it stays locked to the end, so two stores of one
        // account queue here and the second sees the first's cursor.
        let renewed = leases::renew(&tx, &claim.lease, self.lease_secs).await?;
        if !renewed || cursor(&tx, &claim.account, true).await? != claim.cursor {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost);
        }
        let new = insert_in(&tx, &page.entries).await?;
        if !page.next_cursor.is_empty() {
            let statement = tx
                .prepare_cached(&format!(
                    "INSERT INTO kf_cursors (channel, open_kfid, cursor, updated_at) VALUES ($1, $2, $3, {EPOCH})
                     ON CONFLICT (channel, open_kfid) DO UPDATE SET cursor = excluded.cursor,
                     updated_at = excluded.updated_at"
                ))
                .await?;
            let account = &claim.account;
            tx.execute(&statement, &[&account.channel.as_str(), &account.open_kfid, &page.next_cursor]).await?;
        }
        tx.commit().await?;
        self.committed(1);
        Ok(new)
    }
}
