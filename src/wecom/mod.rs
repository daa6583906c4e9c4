//! The WeCom API: a client ([`client`]), its request and response bodies
//! ([`models`]), its errors with hints ([`error`]) and the access tokens of each
//! Secret ([`tokens`]).
//!
//! Architecture invariant: only `wecom/` knows WeCom's JSON.

pub(crate) mod aibot;
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
use crate::store::Store;
use crate::telemetry::Metrics;
pub(crate) use client::Media;
use models::{KfServiceState, KfSyncPage, KfSyncRequest};

/// The API client and the token cache of each configured Secret.
#[derive(Debug, Clone)]
pub(crate) struct WeCom {
    pub client: WeComClient,
    /// `WECOM_SECRET`: the built-in self-built app.
    pub app: Option<Arc<TokenSource>>,
    /// `WECOM_KF_SECRET`, else `WECOM_SECRET`. The same `Arc` as `app` when the two
    /// Secrets are equal: one cache per (corp id, Secret).
    pub kf: Option<Arc<TokenSource>>,
    /// Every channel's cache, by channel name (the built-ins' are `app` and `kf`
    /// above); channels sharing a corp id and Secret share one.
    by_channel: HashMap<ChannelName, Arc<TokenSource>>,
    /// The distinct caches, in configuration order.
    sources: Vec<Arc<TokenSource>>,
}

impl WeCom {
    pub(crate) fn new(config: &Config, store: &Store, metrics: &Arc<Metrics>) -> Result<Self, WeComError> {
        let client = WeComClient::new(&config.api_base_url, Arc::clone(metrics))?;
        tokens::declare_metrics(metrics);
        let mut by_key: HashMap<String, Arc<TokenSource>> = HashMap::new();
        let mut by_channel = HashMap::new();
        let mut sources = Vec::new();
        let app_secret = config.channels.builtin_app().and_then(|app| app.secret());
        for channel in config.channels.iter() {
            // The built-in kf without WECOM_KF_SECRET calls kf APIs with WECOM_SECRET, as always.
            let secret = match channel.secret() {
                Some(secret) => secret,
                None if channel.builtin && channel.kind() == ChannelKind::Kf => match app_secret {
                    Some(secret) => secret,
                    None => continue,
                },
                None => continue,
            };
            let corp_id = channel.corp_id.as_str();
            let source = by_key.entry(tokens::cache_key(corp_id, secret)).or_insert_with(|| {
                let source = Arc::new(TokenSource::new(
                    channel.name.as_str(),
                    corp_id,
                    secret.clone(),
                    client.clone(),
                    store.clone(),
                    Arc::clone(metrics),
                ));
                sources.push(Arc::clone(&source));
                source
            });
            by_channel.insert(channel.name.clone(), Arc::clone(source));
        }
        let builtin = |channel: Option<&Arc<crate::config::ChannelSpec>>| {
            channel.and_then(|c| by_channel.get(c.name.as_str())).cloned()
        };
        let app = builtin(config.channels.builtin_app());
        let kf = builtin(config.channels.builtin_kf());
        Ok(Self { client, app, kf, by_channel, sources })
    }

    /// The token cache for the built-in app channel, or why there is none.
    pub(crate) fn app_tokens(&self) -> Result<&Arc<TokenSource>, WeComError> {
        self.app.as_ref().ok_or(WeComError::NotConfigured("WECOM_SECRET"))
    }

    /// The token cache for the built-in kf channel's APIs, or why there is none.
    pub(crate) fn kf_tokens(&self) -> Result<&Arc<TokenSource>, WeComError> {
        self.kf.as_ref().ok_or(WeComError::NotConfigured("WECOM_KF_SECRET"))
    }

    /// The token cache for `channel`'s APIs, or why there is none.
    pub(crate) fn tokens(&self, channel: &ChannelName) -> Result<&Arc<TokenSource>, WeComError> {
        match self.by_channel.get(channel) {
            Some(source) => Ok(source),
            None if channel.as_str() == ChannelName::APP => self.app_tokens(),
            None if channel.as_str() == ChannelName::KF => self.kf_tokens(),
            None => Err(WeComError::NotConfigured("a Secret for this channel (channels.<name>.secret)")),
        }
    }

    /// Every distinct token cache, in configuration order.
    pub(crate) fn token_sources(&self) -> &[Arc<TokenSource>] {
        &self.sources
    }

    /// Sends a text from app channel `channel` (its agent `agent_id`) to member `to`.
    pub(crate) async fn send_app_text(
        &self,
        channel: &ChannelName,
        to: &str,
        agent_id: i64,
        text: &str,
    ) -> Result<(), WeComError> {
        let client = &self.client;
        self.tokens(channel)?
            .call(|token| async move { client.send_app_text(&token, to, agent_id, text).await })
            .await?;
        Ok(())
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
        let client = &self.client;
        self.tokens(channel)?
            .call(|token| async move { client.send_kf_text(&token, to, open_kfid, msgid, text).await })
            .await?;
        Ok(())
    }

    /// Sends the welcome text an `enter_session` event's `code` allows.
    pub(crate) async fn send_kf_welcome(
        &self,
        channel: &ChannelName,
        code: &str,
        msgid: &str,
        text: &str,
    ) -> Result<(), WeComError> {
        let client = &self.client;
        self.tokens(channel)?
            .call(|token| async move { client.send_kf_welcome(&token, code, msgid, text).await })
            .await?;
        Ok(())
    }

    /// Hands the session of `external_userid` to the queue, or to `servicer`.
    pub(crate) async fn kf_hand_over(
        &self,
        channel: &ChannelName,
        open_kfid: &str,
        external_userid: &str,
        servicer: Option<&str>,
    ) -> Result<(), WeComError> {
        let client = &self.client;
        self.tokens(channel)?
            .call(|token| async move {
                client.kf_service_state_trans(&token, open_kfid, external_userid, servicer).await
            })
            .await?;
        Ok(())
    }

    /// Who owns the session of customer `external_userid` with account `open_kfid`.
    pub(crate) async fn kf_service_state(
        &self,
        channel: &ChannelName,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<KfServiceState, WeComError> {
        let client = &self.client;
        self.tokens(channel)?
            .call(|token| async move { client.kf_service_state_get(&token, open_kfid, external_userid).await })
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
        let (client, request) = (&self.client, &request);
        self.tokens(channel)?.call(|t| async move { client.kf_sync_msg(&t, request).await }).await
    }

    /// Downloads media `media_id` of a `channel` message, at most `max_bytes`.
    pub(crate) async fn download_media(
        &self,
        channel: &ChannelName,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Media, WeComError> {
        let client = &self.client;
        self.tokens(channel)?.call(|token| async move { client.media_get(&token, media_id, max_bytes).await }).await
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
