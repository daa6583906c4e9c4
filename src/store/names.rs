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

/// A resolved name: what the engines store (a lookup's, or a moved store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedId {
    pub id_type: String,
    pub id: String,
    pub name: CachedName,
}

/// Which senders [`Store::seen_senders`] lists.
#[derive(Debug, Clone, Copy)]
pub(super) struct SeenSenders {
    pub channel: &'static str,
    pub id_type: &'static str,
    /// Only those without a cached name.
    pub only_unmapped: bool,
    pub limit: usize,
}

impl Store {
    pub async fn cached_name(&self, id_type: &'static str, id: String) -> Result<Option<CachedName>, StoreError> {
        backend!(self, b => b.cached_name(id_type, id).await)
    }

    pub async fn cache_name(&self, id_type: &'static str, id: String, name: CachedName) -> Result<(), StoreError> {
        let named = NamedId { id_type: id_type.to_owned(), id, name };
        backend!(self, b => b.cache_name(named).await)
    }

    /// Senders seen on `channel`, optionally only those without a cached name.
    pub async fn seen_senders(
        &self,
        channel: &'static str,
        id_type: &'static str,
        only_unmapped: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let query = SeenSenders { channel, id_type, only_unmapped, limit };
        backend!(self, b => b.seen_senders(query).await)
    }
}
