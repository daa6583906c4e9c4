//! Display names for user ids (`user/get`) and external user ids
//! (`externalcontact/get`, else `kf/customer/batchget`), cached in the store with
//! the API that answered.

use std::sync::Arc;

use serde::Serialize;

use crate::store::names::CachedName;
use crate::store::{Store, StoreError};
use crate::wecom::{WeCom, WeComError};

/// The kind of id, as the admin API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdType {
    UserId,
    ExternalUserId,
}

impl IdType {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "user_id" | "userid" => Some(Self::UserId),
            "external_user_id" | "external_userid" => Some(Self::ExternalUserId),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::UserId => "user_id",
            Self::ExternalUserId => "external_user_id",
        }
    }

    /// The journal channel whose senders are ids of this type.
    pub(crate) fn channel(self) -> &'static str {
        match self {
            Self::UserId => "app",
            Self::ExternalUserId => "kf",
        }
    }
}

/// A resolved name.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Resolved {
    pub id_type: &'static str,
    pub id: String,
    pub name: String,
    pub source: String,
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NameError {
    #[error(transparent)]
    WeCom(#[from] WeComError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves and caches names.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    store: Store,
    wecom: Arc<WeCom>,
}

impl Names {
    pub(crate) fn new(store: Store, wecom: Arc<WeCom>) -> Self {
        Self { store, wecom }
    }

    /// The cached name, or one fetched from WeCom (then cached).
    pub(crate) async fn resolve(&self, id_type: IdType, id: &str) -> Result<Resolved, NameError> {
        if let Some(cached) = self.store.cached_name(id_type.as_str(), id.to_owned()).await? {
            return Ok(Resolved {
                id_type: id_type.as_str(),
                id: id.to_owned(),
                name: cached.name,
                source: cached.source,
                cached: true,
            });
        }
        let (name, source) = match id_type {
            IdType::UserId => (self.user(id).await?, "user/get"),
            IdType::ExternalUserId => match self.external_contact(id).await {
                Ok(name) => (name, "externalcontact/get"),
                Err(first) => match self.kf_customer(id).await {
                    Ok(Some(name)) => (name, "kf/customer/batchget"),
                    Ok(None) | Err(_) => return Err(first.into()),
                },
            },
        };
        let cached = CachedName { name: name.clone(), source: source.to_owned() };
        self.store.cache_name(id_type.as_str(), id.to_owned(), cached).await?;
        Ok(Resolved { id_type: id_type.as_str(), id: id.to_owned(), name, source: source.to_owned(), cached: false })
    }

    /// Ids seen in stored messages, optionally only those without a cached name.
    pub(crate) async fn seen(
        &self,
        id_type: IdType,
        only_unmapped: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.store.seen_senders(id_type.channel(), id_type.as_str(), only_unmapped, limit).await
    }

    async fn user(&self, id: &str) -> Result<String, WeComError> {
        let tokens = self.wecom.app_tokens()?;
        tokens.call(|token| async move { self.wecom.client.user_get(&token, id).await }).await.map(|u| u.name)
    }

    async fn external_contact(&self, id: &str) -> Result<String, WeComError> {
        let tokens = self.wecom.app_tokens()?;
        let contact =
            tokens.call(|token| async move { self.wecom.client.externalcontact_get(&token, id).await }).await?;
        Ok(contact.external_contact.name)
    }

    async fn kf_customer(&self, id: &str) -> Result<Option<String>, WeComError> {
        let tokens = self.wecom.kf_tokens()?;
        let ids = [id.to_owned()];
        let ids = &ids;
        let customers =
            tokens.call(|token| async move { self.wecom.client.kf_customer_batchget(&token, ids).await }).await?;
        Ok(customers.customer_list.into_iter().find(|c| c.external_userid == id).map(|c| c.nickname))
    }
}
