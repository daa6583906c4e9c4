//! Display names for user ids (`user/get`) and external user ids
//! (`externalcontact/get` on an app channel, `kf/customer/batchget` on a kf
//! channel), looked up with the Secret of the channel the id was seen on and
//! cached in the store under that channel (an id is unique only within its
//! corp) with the API that answered.
//!
//! Deliberately not here: which channel an id belongs to when nobody says. The
//! admin API names it (`?channel=`, `"channel"`); without one, the built-in
//! channels are asked as before channels had names.

use std::sync::Arc;

use serde::Serialize;

use crate::channels::{ChannelKind, ChannelName};
use crate::config::Channels;
use crate::store::names::{CachedName, NameKey};
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

    /// The built-in channels that know ids of this type, asked in this order
    /// when the caller names no channel: members through the app's Secret,
    /// external users through the app's (its customer contacts), then the kf
    /// Secret (kf customers).
    fn builtin_channels(self) -> &'static [&'static str] {
        match self {
            Self::UserId => &[ChannelName::APP],
            Self::ExternalUserId => &[ChannelName::APP, ChannelName::KF],
        }
    }

    /// The built-in channel whose senders are ids of this type.
    fn seen_on(self) -> &'static str {
        match self {
            Self::UserId => ChannelName::APP,
            Self::ExternalUserId => ChannelName::KF,
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
    /// No channel of that name is configured.
    #[error("no channel named {0:?}")]
    UnknownChannel(String),
    /// The channel's API answered, without that id.
    #[error("channel {channel} knows no {id_type} {id:?}")]
    NotFound { channel: ChannelName, id_type: &'static str, id: String },
}

/// Resolves and caches names.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    store: Store,
    wecom: Arc<WeCom>,
    channels: Channels,
}

impl Names {
    pub(crate) fn new(store: Store, wecom: Arc<WeCom>, channels: Channels) -> Self {
        Self { store, wecom, channels }
    }

    /// The channels to ask about an id of `id_type`: `channel` when the caller
    /// names one (it must exist), else the built-in ones.
    fn channels_for(&self, id_type: IdType, channel: Option<&str>) -> Result<Vec<ChannelName>, NameError> {
        match channel {
            Some(name) => match self.channels.get(name) {
                Some(spec) => Ok(vec![spec.name.clone()]),
                None => Err(NameError::UnknownChannel(crate::messages::clip(name, 64).into_owned())),
            },
            None => Ok(id_type
                .builtin_channels()
                .iter()
                .filter_map(|name| self.channels.get(name))
                .map(|spec| spec.name.clone())
                .collect()),
        }
    }

    /// Refuses a `channel` that is not configured (`None` is always fine: the built-ins).
    pub(crate) fn check_channel(&self, channel: Option<&str>) -> Result<(), NameError> {
        self.channels_for(IdType::UserId, channel).map(drop)
    }

    /// The cached name, or one fetched from WeCom (then cached) with the Secret
    /// of `channel`, the channel the id was seen on (`None`: the built-in ones).
    pub(crate) async fn resolve(
        &self,
        channel: Option<&str>,
        id_type: IdType,
        id: &str,
    ) -> Result<Resolved, NameError> {
        let channels = self.channels_for(id_type, channel)?;
        let resolved = |name: String, source: String, cached: bool| Resolved {
            id_type: id_type.as_str(),
            id: id.to_owned(),
            name,
            source,
            cached,
        };
        let keys: Vec<NameKey> = channels
            .into_iter()
            .map(|channel| NameKey { channel, id_type: id_type.as_str().to_owned(), id: id.to_owned() })
            .collect();
        for key in &keys {
            if let Some(cached) = self.store.cached_name(key.clone()).await? {
                return Ok(resolved(cached.name, cached.source, true));
            }
        }
        let mut first_error = None;
        for key in keys {
            match self.look_up(&key.channel, id_type, id).await {
                Ok((name, source)) => {
                    let cached = CachedName { name: name.clone(), source: source.to_owned() };
                    self.store.cache_name(key, cached).await?;
                    return Ok(resolved(name, source.to_owned(), false));
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| WeComError::NotConfigured("WECOM_SECRET").into()))
    }

    /// Asks `channel`'s API for the name: an app channel's contacts (`user/get`,
    /// `externalcontact/get`), a kf channel's customers (`kf/customer/batchget`).
    async fn look_up(
        &self,
        channel: &ChannelName,
        id_type: IdType,
        id: &str,
    ) -> Result<(String, &'static str), NameError> {
        let api = self.wecom.api(channel)?;
        let kind = self.channels.get(channel.as_str()).map(|spec| spec.kind());
        Ok(match (id_type, kind) {
            (IdType::UserId, _) => {
                let user = api.call(|client, token| async move { client.user_get(&token, id).await }).await?;
                (user.name, "user/get")
            }
            (IdType::ExternalUserId, Some(ChannelKind::Kf)) => {
                let ids = [id.to_owned()];
                let ids = &ids;
                let customers =
                    api.call(|client, token| async move { client.kf_customer_batchget(&token, ids).await }).await?;
                let customer = customers.customer_list.into_iter().find(|c| c.external_userid == id);
                let not_found =
                    || NameError::NotFound { channel: channel.clone(), id_type: id_type.as_str(), id: id.to_owned() };
                (customer.ok_or_else(not_found)?.nickname, "kf/customer/batchget")
            }
            (IdType::ExternalUserId, _) => {
                let contact =
                    api.call(|client, token| async move { client.externalcontact_get(&token, id).await }).await?;
                (contact.external_contact.name, "externalcontact/get")
            }
        })
    }

    /// Ids seen on `channel` (`None`: the built-in channel of `id_type`'s ids),
    /// optionally only those without a name cached by a channel that would be
    /// asked for them.
    pub(crate) async fn seen(
        &self,
        channel: Option<&str>,
        id_type: IdType,
        only_unmapped: bool,
        limit: usize,
    ) -> Result<Vec<String>, NameError> {
        let asked = self.channels_for(id_type, channel)?;
        let seen_on = match channel {
            Some(_) => asked.first().cloned(),
            None => self.channels.get(id_type.seen_on()).map(|spec| spec.name.clone()),
        };
        let Some(seen_on) = seen_on else { return Ok(Vec::new()) };
        let only_unmapped = only_unmapped.then_some(asked);
        Ok(self.store.seen_senders(seen_on, id_type.as_str(), only_unmapped, limit).await?)
    }
}
