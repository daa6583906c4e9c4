//! The WeCom API: a client ([`client`]), its request and response bodies
//! ([`models`]), its errors with hints ([`error`]) and the access tokens of each
//! Secret ([`tokens`]).
//!
//! Architecture invariant: only `wecom/` knows WeCom's JSON.

pub(crate) mod aibot;
pub(crate) mod aibot_ws;
pub(crate) mod client;
pub(crate) mod connection;
pub(crate) mod error;
pub(crate) mod models;
pub(crate) mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

pub use client::WeComClient;
pub(crate) use client::APP_DUPLICATE_CHECK;
pub(crate) use error::{ApiError, WeComError};
pub use tokens::TokenSource;

use crate::channels::{ChannelKind, ChannelName};
use crate::config::Config;
use crate::egress::Egress;
use crate::store::tokens::AccessToken;
use crate::store::Store;
use crate::telemetry::Metrics;
pub(crate) use client::Media;
use models::{KfServiceState, KfSyncPage, KfSyncRequest};

/// What one channel calls WeCom with: the client that counts its calls under
/// the channel's name, and the token cache of its Secret (shared with the
/// channels of the same corp id and Secret).
#[derive(Debug, Clone)]
pub(crate) struct ChannelApi {
    pub client: WeComClient,
    pub tokens: Arc<TokenSource>,
}

impl ChannelApi {
    /// Calls `api_call` with this channel's client and a token (see [`TokenSource::call`]).
    pub(crate) async fn call<'a, T, F, Fut>(&'a self, api_call: F) -> Result<T, WeComError>
    where
        F: Fn(&'a WeComClient, AccessToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, WeComError>>,
    {
        self.tokens.call(|token| api_call(&self.client, token)).await
    }
}

/// The API client and the token cache of each configured Secret.
#[derive(Debug, Clone)]
pub(crate) struct WeCom {
    /// Every channel with a Secret, by name (the built-in kf without
    /// `WECOM_KF_SECRET` with `WECOM_SECRET`, as always).
    by_channel: HashMap<ChannelName, ChannelApi>,
    /// Every channel with a Secret and its token cache, in configuration order
    /// (channels of one corp id and Secret share a cache).
    tokens_in_order: Vec<(ChannelName, Arc<TokenSource>)>,
    /// Every channel's client: through its proxy (`proxy_url`, else
    /// `WECOM_PROXY_URL`), telling [`Egress`] what each answer said of its IP.
    clients: HashMap<ChannelName, WeComClient>,
    /// The client of a name no channel has (`WECOM_PROXY_URL`, no tap).
    fallback: WeComClient,
}

impl WeCom {
    pub(crate) fn new(
        config: &Config,
        store: &Store,
        metrics: &Arc<Metrics>,
        egress: &Arc<Egress>,
    ) -> Result<Self, WeComError> {
        let fallback =
            WeComClient::with_proxy(&config.wecom.base_url, Arc::clone(metrics), config.wecom.proxy.as_ref())?;
        // One HTTP client per distinct proxy (a connection pool each); every
        // channel's client counts its calls under its name and tells `egress`
        // what each answer said of the IP.
        let mut by_proxy: HashMap<Option<String>, WeComClient> = HashMap::new();
        by_proxy.insert(config.wecom.proxy.as_ref().map(|p| p.expose().to_owned()), fallback.clone());
        let mut clients = HashMap::new();
        for channel in config.channels.iter() {
            let proxy = config.proxy_for(channel);
            let key = proxy.map(|p| p.expose().to_owned());
            let base = match by_proxy.get(&key) {
                Some(base) => base.clone(),
                None => {
                    let base = WeComClient::with_proxy(&config.wecom.base_url, Arc::clone(metrics), proxy)?;
                    by_proxy.insert(key, base.clone());
                    base
                }
            };
            clients.insert(channel.name.clone(), base.for_channel(&channel.name, Arc::clone(egress)));
        }
        let client_of = |name: &ChannelName| clients.get(name).cloned().unwrap_or_else(|| fallback.on(name));
        // Channels sharing a corp id and Secret share one cache, the first one's
        // (its client makes the refreshes).
        let mut caches: Vec<(String, TokenSource)> = Vec::new();
        let mut users: Vec<(ChannelName, usize)> = Vec::new();
        for channel in config.channels.iter().filter(|c| c.kind() != ChannelKind::Aibot) {
            client_of(&channel.name).declare(channel.kind());
            let Some(secret) = config.channels.api_secret(channel) else {
                if !(channel.builtin && channel.kind() == ChannelKind::Kf) {
                    tokens::declare_metrics(metrics, &channel.name, &channel.name);
                }
                continue;
            };
            let corp_id = channel.corp_id.as_str();
            let key = tokens::cache_key(corp_id, secret);
            let index = match caches.iter().position(|(k, _)| *k == key) {
                Some(index) => {
                    caches[index].1.share_with(channel.name.clone());
                    index
                }
                None => {
                    let source = TokenSource::new(
                        channel.name.clone(),
                        corp_id,
                        secret.clone(),
                        client_of(&channel.name),
                        store.clone(),
                        Arc::clone(metrics),
                    );
                    caches.push((key, source));
                    caches.len() - 1
                }
            };
            users.push((channel.name.clone(), index));
        }
        let sources: Vec<Arc<TokenSource>> = caches.into_iter().map(|(_, source)| Arc::new(source)).collect();
        let tokens_in_order: Vec<_> =
            users.into_iter().map(|(name, index)| (name, Arc::clone(&sources[index]))).collect();
        let by_channel = tokens_in_order
            .iter()
            .map(|(name, tokens)| (name.clone(), ChannelApi { client: client_of(name), tokens: Arc::clone(tokens) }))
            .collect();
        Ok(Self { by_channel, tokens_in_order, clients, fallback })
    }

    /// `channel`'s client (its proxy, its egress tap).
    fn client(&self, channel: &ChannelName) -> &WeComClient {
        self.clients.get(channel).unwrap_or(&self.fallback)
    }

    /// Asks WeCom which IP `channel`'s calls come from: `gettoken` with its corp id
    /// and no Secret, which WeCom refuses naming the IP (SPEC §14). The answer
    /// reaches [`Egress`] through the channel's client like any other.
    pub(crate) async fn probe_egress(
        &self,
        channel: &ChannelName,
        corp_id: &str,
    ) -> Result<std::net::IpAddr, WeComError> {
        self.client(channel).probe_egress(corp_id).await
    }

    /// What `channel` calls WeCom with, or why it cannot.
    pub(crate) fn api(&self, channel: &ChannelName) -> Result<&ChannelApi, WeComError> {
        self.by_channel.get(channel).ok_or(match channel.as_str() {
            ChannelName::APP => WeComError::NotConfigured("WECOM_SECRET"),
            ChannelName::KF => WeComError::NotConfigured("WECOM_KF_SECRET"),
            _ => WeComError::NotConfigured("a Secret for this channel (channels.<name>.secret)"),
        })
    }

    /// The token cache for `channel`'s APIs, or why there is none.
    pub(crate) fn tokens(&self, channel: &ChannelName) -> Result<&Arc<TokenSource>, WeComError> {
        self.api(channel).map(|api| &api.tokens)
    }

    /// Every channel with a Secret and its token cache, in configuration order:
    /// each is checked as `token:<name>`, a shared cache once per channel.
    pub(crate) fn channel_tokens(&self) -> &[(ChannelName, Arc<TokenSource>)] {
        &self.tokens_in_order
    }

    /// Sends a text from app channel `channel` (its agent `agent_id`) to member `to`.
    pub(crate) async fn send_app_text(
        &self,
        channel: &ChannelName,
        to: &str,
        agent_id: i64,
        text: &str,
    ) -> Result<(), WeComError> {
        self.api(channel)?
            .call(|client, token| async move { client.send_app_text(&token, to, agent_id, text).await })
            .await
            .map(drop)
    }

    /// Sends a text to customer `to` of kf account `open_kfid` under our own
    /// `msgid` (see [`kf_msgid`]).
    pub(crate) async fn send_kf_text(
        &self,
        channel: &ChannelName,
        to: &str,
        open_kfid: &str,
        msgid: &str,
        text: &str,
    ) -> Result<(), WeComError> {
        self.api(channel)?
            .call(|client, token| async move { client.send_kf_text(&token, to, open_kfid, msgid, text).await })
            .await
            .map(drop)
    }

    /// Sends the welcome text an `enter_session` event's `code` allows.
    pub(crate) async fn send_kf_welcome(
        &self,
        channel: &ChannelName,
        code: &str,
        msgid: &str,
        text: &str,
    ) -> Result<(), WeComError> {
        self.api(channel)?
            .call(|client, token| async move { client.send_kf_welcome(&token, code, msgid, text).await })
            .await
            .map(drop)
    }

    /// Hands the session of `external_userid` to the queue, or to `servicer`.
    pub(crate) async fn kf_hand_over(
        &self,
        channel: &ChannelName,
        open_kfid: &str,
        external_userid: &str,
        servicer: Option<&str>,
    ) -> Result<(), WeComError> {
        self.api(channel)?
            .call(|client, token| async move {
                client.kf_service_state_trans(&token, open_kfid, external_userid, servicer).await
            })
            .await
            .map(drop)
    }

    /// Who owns the session of customer `external_userid` with account `open_kfid`.
    pub(crate) async fn kf_service_state(
        &self,
        channel: &ChannelName,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<KfServiceState, WeComError> {
        self.api(channel)?
            .call(|client, token| async move { client.kf_service_state_get(&token, open_kfid, external_userid).await })
            .await
    }

    /// One `kf/sync_msg` page of `open_kfid` after `cursor`, with the notice's
    /// `token` when there is one (without it WeCom applies a stricter rate limit).
    pub(crate) async fn kf_sync_page(
        &self,
        channel: &ChannelName,
        open_kfid: &str,
        cursor: Option<String>,
        token: Option<String>,
    ) -> Result<KfSyncPage, WeComError> {
        let request = KfSyncRequest { cursor, token, limit: KF_SYNC_PAGE_LIMIT, open_kfid: Some(open_kfid.to_owned()) };
        let request = &request;
        self.api(channel)?.call(|client, token| async move { client.kf_sync_msg(&token, request).await }).await
    }

    /// Posts `text` to a message's `response_url` with `channel`'s client (its proxy), once.
    pub(crate) async fn post_response_url(
        &self,
        channel: &ChannelName,
        url: &str,
        text: &str,
    ) -> Result<(), WeComError> {
        self.client(channel).post_response_url(url, text).await
    }

    /// Downloads media `media_id` of a `channel` message, at most `max_bytes`.
    pub(crate) async fn download_media(
        &self,
        channel: &ChannelName,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Media, WeComError> {
        self.api(channel)?
            .call(|client, token| async move { client.media_get(&token, media_id, max_bytes).await })
            .await
    }
}

/// Our own `msgid` for a kf message whose action has idempotency key `key`:
/// the same key always gives the same id, so a retry of a message WeCom already
/// accepted is recognised. 32 characters of `[0-9A-Za-z_-]`, WeCom's limit and
/// alphabet (URL-safe base64 of 24 bytes of SHA-256).
pub(crate) fn kf_msgid(key: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..24])
}

/// Messages per `kf/sync_msg` page: WeCom's maximum.
const KF_SYNC_PAGE_LIMIT: u32 = 1000;
