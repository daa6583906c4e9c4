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

/// A resolved name: what the engines store (a lookup's, or a moved store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedId {
    /// The channel whose API answered.
    pub channel: ChannelName,
    pub id_type: String,
    pub id: String,
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
    /// The name `channel`'s API gave for `id`, when cached.
    pub async fn cached_name(
        &self,
        channel: ChannelName,
        id_type: &'static str,
        id: String,
    ) -> Result<Option<CachedName>, StoreError> {
        backend!(self, b => b.cached_name(channel, id_type, id).await)
    }

    pub async fn cache_name(
        &self,
        channel: ChannelName,
        id_type: &'static str,
        id: String,
        name: CachedName,
    ) -> Result<(), StoreError> {
        let named = NamedId { channel, id_type: id_type.to_owned(), id, name };
        backend!(self, b => b.cache_name(named).await)
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
