//! kf sync state: the cursor of each kf account of each kf channel, moved only by
//! the holder of the account's lease and stored with the messages of the page it
//! follows, in one transaction that fails if the cursor moved under it.
//!
//! A cursor is keyed by the channel's name and the `open_kfid` (schema 7 in
//! SQLite, 5 in PostgreSQL): a file-configured kf channel resumes its own
//! accounts after a restart, and the cursors the store held before channels
//! had names belong to the built-in `kf`.

use super::journal::NewEntry;
use super::leases::Lease;
use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// One kf account of one kf channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KfAccount {
    pub channel: ChannelName,
    pub open_kfid: String,
}

impl KfAccount {
    /// The lease that fences the account's sync.
    pub(super) fn lease_name(&self) -> String {
        format!("kf:{}:{}", self.channel, self.open_kfid)
    }
}

/// The right to sync one kf account, and where its messages continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KfClaim {
    pub account: KfAccount,
    /// The stored `next_cursor`; `None` before the account's first page.
    pub cursor: Option<String>,
    pub(super) lease: Lease,
}

/// A page of `kf/sync_msg` to store under a claim.
#[derive(Debug)]
pub(super) struct KfPage {
    pub entries: Vec<NewEntry>,
    /// Stored unless empty (WeCom's last page may carry none).
    pub next_cursor: String,
}

impl Store {
    /// Every kf account that has synced at least once, with its channel.
    pub async fn kf_accounts(&self) -> Result<Vec<KfAccount>, StoreError> {
        backend!(self, b => b.kf_accounts().await)
    }

    /// Claims the account for a sync, with its stored cursor; `None` while another
    /// owner's lease holds it.
    pub async fn claim_kf_account(&self, account: KfAccount) -> Result<Option<KfClaim>, StoreError> {
        backend!(self, b => b.claim_kf_account(account).await)
    }

    /// Journals a page's messages (each once, by its dedup key) and stores the
    /// cursor that follows it, atomically, renewing the claim's lease. Refused with
    /// [`StoreError::LeaseLost`], nothing written, when the lease was taken over or
    /// the cursor is no longer the claim's. Returns how many messages were new.
    pub async fn kf_store_page(
        &self,
        claim: &mut KfClaim,
        entries: Vec<NewEntry>,
        next_cursor: String,
    ) -> Result<usize, StoreError> {
        let page = KfPage { entries, next_cursor: next_cursor.clone() };
        let new = backend!(self, b => b.kf_store_page(claim.clone(), page).await)?;
        if !next_cursor.is_empty() {
            claim.cursor = Some(next_cursor);
        }
        Ok(new)
    }

    /// Ends the claim, so another owner may sync the account at once.
    pub async fn release_kf_account(&self, claim: KfClaim) -> Result<(), StoreError> {
        self.release_lease(claim.lease).await
    }
}
