//! Display names of user ids and external user ids, resolved through WeCom and
//! cached with where they came from.

use super::{backend, Store, StoreError};

/// A cached name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedName {
    pub name: String,
    /// The API that answered, e.g. `user/get`.
    pub source: String,
}

impl Store {
    pub async fn cached_name(&self, id_type: &'static str, id: String) -> Result<Option<CachedName>, StoreError> {
        backend!(self, b => b.cached_name(id_type, id).await)
    }

    pub async fn cache_name(&self, id_type: &'static str, id: String, name: CachedName) -> Result<(), StoreError> {
        backend!(self, b => b.cache_name(id_type, id, name).await)
    }

    /// Senders seen on `channel`, optionally only those without a cached name.
    pub async fn seen_senders(
        &self,
        channel: &'static str,
        id_type: &'static str,
        only_unmapped: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        backend!(self, b => b.seen_senders(channel, id_type, only_unmapped, limit).await)
    }
}
