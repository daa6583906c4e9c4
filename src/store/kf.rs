//! kf sync state: the cursor of each kf account, stored with the messages of the
//! page it follows, in one transaction.

use super::journal::NewEntry;
use super::{backend, Store, StoreError};

impl Store {
    /// The stored `next_cursor` of `open_kfid`; `None` before its first sync.
    pub async fn kf_cursor(&self, open_kfid: String) -> Result<Option<String>, StoreError> {
        backend!(self, b => b.kf_cursor(open_kfid).await)
    }

    /// Every kf account that has synced at least once.
    pub async fn kf_accounts(&self) -> Result<Vec<String>, StoreError> {
        backend!(self, b => b.kf_accounts().await)
    }

    /// Journals a page's messages (each once, by its dedup key) and stores the
    /// cursor that follows it, atomically. Returns how many messages were new.
    pub async fn kf_store_page(
        &self,
        open_kfid: String,
        entries: Vec<NewEntry>,
        next_cursor: String,
    ) -> Result<usize, StoreError> {
        backend!(self, b => b.kf_store_page(open_kfid, entries, next_cursor).await)
    }
}
