//! Alert state kept across restarts: which checks are firing and when on-call was
//! last told, so a crash loop does not page again for the same firing check.

use super::{backend, Store, StoreError};

/// A check that was firing when last recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringRecord {
    pub check: String,
    pub since: i64,
    pub last_notified_at: i64,
}

impl Store {
    pub async fn firing_checks(&self) -> Result<Vec<FiringRecord>, StoreError> {
        backend!(self, b => b.firing_checks().await)
    }

    pub async fn set_firing(&self, record: FiringRecord) -> Result<(), StoreError> {
        backend!(self, b => b.set_firing(record).await)
    }

    pub async fn clear_firing(&self, check: String) -> Result<(), StoreError> {
        backend!(self, b => b.clear_firing(check).await)
    }
}
