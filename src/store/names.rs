//! Display names of user ids and external user ids, resolved through WeCom and
//! cached per channel (an id is only unique within its corp) with the API that
//! answered.

use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// A cached name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedName {
    pub name: String,
    /// The API that answered, e.g. `user/get`.
    pub source: String,
}

/// What a name is cached under: an id is only unique within its corp, and
/// each channel's API answers for its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameKey {
    /// The channel whose API answers.
    pub channel: ChannelName,
    /// `userid` or `external_userid`.
    pub id_type: String,
    pub id: String,
}

/// A resolved name: what the engines store (a lookup's, or a moved store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedId {
    pub key: NameKey,
    pub name: CachedName,
}

/// Which senders [`Store::seen_senders`] lists.
#[derive(Debug, Clone)]
pub(super) struct SeenSenders {
    pub channel: ChannelName,
    pub id_type: &'static str,
    /// Only those without a name cached for one of these channels.
    pub only_unmapped: Option<Vec<ChannelName>>,
    pub limit: usize,
}

impl Store {
    /// The name cached under `key`, if any.
    pub async fn cached_name(&self, key: NameKey) -> Result<Option<CachedName>, StoreError> {
        backend!(self, b => b.cached_name(key).await)
    }

    /// Caches `name` under `key`, replacing what was cached there.
    pub async fn cache_name(&self, key: NameKey, name: CachedName) -> Result<(), StoreError> {
        backend!(self, b => b.cache_name(NamedId { key, name }).await)
    }

    /// Senders seen on `channel`; with `only_unmapped`, only those without a
    /// name cached for one of those channels.
    pub async fn seen_senders(
        &self,
        channel: ChannelName,
        id_type: &'static str,
        only_unmapped: Option<Vec<ChannelName>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let query = SeenSenders { channel, id_type, only_unmapped, limit };
        backend!(self, b => b.seen_senders(query).await)
    }
}
