//! kf cursors in SQLite, keyed by channel and `open_kfid`.

use rusqlite::{params, Connection, OptionalExtension};

use super::journal::{insert, named};
use super::{leases, Sqlite};
use crate::channels::ChannelName;
use crate::store::journal::Recorded;
use crate::store::kf::{KfAccount, KfClaim, KfPage};
use crate::store::leases::Lease;
use crate::store::{now, StoreError};

/// The account's stored cursor.
fn cursor(db: &Connection, account: &KfAccount) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT cursor FROM kf_cursors WHERE channel = ?1 AND open_kfid = ?2")?
        .query_row(params![account.channel.as_str(), account.open_kfid], |row| row.get(0))
        .optional()
}

impl Sqlite {
    /// Every kf account that has synced at least once.
    pub(in crate::store) async fn kf_accounts(&self) -> Result<Vec<KfAccount>, StoreError> {
        self.read_all("SELECT channel, open_kfid FROM kf_cursors ORDER BY channel, open_kfid", |row| {
            let channel = named(0, row.get(0)?, |name| ChannelName::parse(name).ok())?;
            Ok(KfAccount { channel, open_kfid: row.get(1)? })
        })
        .await
    }

    /// Takes the account's lease and reads its cursor, in one transaction.
    pub(in crate::store) async fn claim_kf_account(&self, account: KfAccount) -> Result<Option<KfClaim>, StoreError> {
        let lease_secs = self.lease_secs;
        self.run_relaxed(move |db| {
            let name = account.lease_name();
            let Some(claim) = leases::claim(db, &name, lease_secs)? else { return Ok(None) };
            let cursor = cursor(db, &account)?;
            Ok(Some(KfClaim { account, cursor, lease: Lease { name, claim } }))
        })
        .await
    }

    /// Journals a page and moves the cursor from the claim's to the page's
    /// `next_cursor` (unless empty), fenced by the claim's lease; strict: the
    /// messages are journaled here.
    pub(in crate::store) async fn kf_store_page(&self, claim: KfClaim, page: KfPage) -> Result<usize, StoreError> {
        let lease_secs = self.lease_secs;
        self.run(move |db| {
            if !leases::renew(db, &claim.lease, lease_secs)? || cursor(db, &claim.account)? != claim.cursor {
                return Ok(None);
            }
            let mut new = 0;
            for entry in &page.entries {
                if let Recorded::New(_) = insert(db, entry)? {
                    new += 1;
                }
            }
            if !page.next_cursor.is_empty() {
                db.prepare_cached(
                    "INSERT INTO kf_cursors (channel, open_kfid, cursor, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(channel, open_kfid) DO UPDATE SET cursor = excluded.cursor,
                     updated_at = excluded.updated_at",
                )?
                .execute(params![
                    claim.account.channel.as_str(),
                    claim.account.open_kfid,
                    page.next_cursor,
                    now()
                ])?;
            }
            Ok(Some(new))
        })
        .await?
        .ok_or(StoreError::LeaseLost)
    }
}
