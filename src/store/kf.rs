//! kf sync state: the cursor of each kf account, moved only by the holder of
//! the account's lease and stored with the messages of the page it follows, in
//! one transaction that fails if the cursor moved under it.

use super::journal::NewEntry;
use super::leases::Lease;
use super::{backend, Store, StoreError};

/// The right to sync one kf account, and where its messages continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KfClaim {
    pub open_kfid: String,
    /// The stored `next_cursor`; `None` before the account's first page.
    pub cursor: Option<String>,
    lease: Lease,
}

/// The lease name of a kf account.
fn lease_name(open_kfid: &str) -> String {
    format!("kf:{open_kfid}")
}

impl Store {
    /// Every kf account that has synced at least once.
    pub async fn kf_accounts(&self) -> Result<Vec<String>, StoreError> {
        backend!(self, b => b.kf_accounts().await)
    }

    /// Claims the account for a sync, with its stored cursor; `None` while another
    /// owner's lease holds it.
    pub async fn claim_kf_account(&self, open_kfid: String) -> Result<Option<KfClaim>, StoreError> {
        let lease = self.lease_secs();
        let claimed = backend!(self, b => b.claim_kf_account(lease_name(&open_kfid), open_kfid.clone(), lease).await)?;
        Ok(claimed.map(|(lease, cursor)| KfClaim { open_kfid, cursor, lease }))
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
        let lease = self.lease_secs();
        let (owner, open_kfid, expected) = (claim.lease.clone(), claim.open_kfid.clone(), claim.cursor.clone());
        let next = next_cursor.clone();
        let new = backend!(self, b => b.kf_store_page(owner, open_kfid, expected, entries, next, lease).await)?;
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
