//! Access tokens: one cache per (corp id, Secret), refreshed ahead of expiry, one
//! refresh in flight at a time, kept in the store across restarts.
//!
//! The cache key names the Secret by a fingerprint (SHA-256 prefix), never the
//! Secret itself, so the app's and the kf Secret get separate tokens and a changed
//! Secret does not reuse the old one's token.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::client::WeComClient;
use super::error::{ApiError, WeComError};
use crate::channels::ChannelName;
use crate::config::Secret;
use crate::store::tokens::{AccessToken, StoredToken};
use crate::store::{now, Store};
use crate::telemetry::Metrics;

/// How long a replica waits for the token another replica is fetching.
const OTHER_REFRESH_WAIT: Duration = Duration::from_secs(10);

/// A token is refreshed when it has less than this left (WeCom issues 7200 s).
pub(crate) const REFRESH_MARGIN_SECS: i64 = 300;

use crate::telemetry::ACCESS_TOKEN_EXPIRES_IN_SECONDS as EXPIRES_IN;
use crate::telemetry::ACCESS_TOKEN_REFRESHES_TOTAL as REFRESHES;

/// The values of the refreshes' `outcome` label.
const REFRESH_OUTCOMES: [&str; 2] = ["ok", "error"];

/// The labels of the token families for `channel`, whose token is the one of
/// `app`'s Secret (the first channel configured with that corp id and Secret).
fn token_labels(channel: &ChannelName, app: &ChannelName) -> Vec<(&'static str, String)> {
    vec![("channel", channel.to_string()), ("app", app.to_string())]
}

/// Declares the token families' series of `channel` at zero (`app`: the channel
/// whose Secret its token is, itself when it has none), so dashboards and alerts
/// see them from the first scrape: no refreshes yet, and 0 seconds left of a
/// token there is not (yet) any of.
pub(crate) fn declare_metrics(metrics: &Metrics, channel: &ChannelName, app: &ChannelName) {
    metrics.declare(EXPIRES_IN, &token_labels(channel, app));
    for outcome in REFRESH_OUTCOMES {
        let mut labels = token_labels(channel, app);
        labels.push(("outcome", outcome.to_owned()));
        metrics.declare(REFRESHES, &labels);
    }
}

/// What the token cache knows about its last refresh, for health checks.
#[derive(Debug, Clone, Default)]
pub struct TokenStatus {
    pub expires_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    /// The last `gettoken` failure, cleared by a success.
    pub last_error: Option<String>,
    pub last_errcode: Option<i64>,
    /// Tokens WeCom refused (42001/40014/40001 on a business API) since start.
    pub invalidations: u64,
}

/// The token cache of one Secret.
pub struct TokenSource {
    /// The first channel configured with this corp id and Secret (`app`, `kf`, a
    /// file channel's): the `app` label of the token metrics, the name in health
    /// output, and the channel `gettoken` is counted for.
    label: ChannelName,
    /// Every channel whose token this is (the `channel` label of the token
    /// metrics): `label` first, then those sharing its corp id and Secret.
    channels: Vec<ChannelName>,
    corp_id: String,
    secret: Secret,
    cache_key: String,
    client: WeComClient,
    store: Store,
    metrics: Arc<Metrics>,
    /// Held across a refresh: that is the single flight.
    current: Mutex<Option<StoredToken>>,
    status: std::sync::Mutex<TokenStatus>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("label", &self.label).field("cache_key", &self.cache_key).finish()
    }
}

/// The cache key for (corp id, Secret): `corp:` + 16 hex digits of SHA-256(secret).
pub(crate) fn cache_key(corp_id: &str, secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    format!("{corp_id}:{}", crate::crypto::hex(&digest[..8]))
}

impl TokenSource {
    /// The cache of channel `label`'s Secret; its `gettoken` calls are counted for `label`.
    pub fn new(
        label: ChannelName,
        corp_id: &str,
        secret: Secret,
        client: WeComClient,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        declare_metrics(&metrics, &label, &label);
        Self {
            client: client.on(&label),
            channels: vec![label.clone()],
            label,
            corp_id: corp_id.to_owned(),
            cache_key: cache_key(corp_id, &secret),
            secret,
            store,
            metrics,
            current: Mutex::new(None),
            status: std::sync::Mutex::new(TokenStatus::default()),
        }
    }

    /// The cache shared by `channel` too (the same corp id and Secret): its
    /// token metrics follow this cache.
    pub(crate) fn share_with(&mut self, channel: ChannelName) {
        declare_metrics(&self.metrics, &channel, &self.label);
        self.channels.push(channel);
    }

    /// The Secret, for the connection test's own `gettoken`.
    pub(crate) fn secret(&self) -> &Secret {
        &self.secret
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn cache_key(&self) -> &str {
        &self.cache_key
    }

    /// A snapshot of the cache's state.
    pub fn status(&self) -> TokenStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update_status(&self, change: impl FnOnce(&mut TokenStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn fresh(token: &StoredToken) -> bool {
        token.expires_at - now() > REFRESH_MARGIN_SECS
    }

    /// A token with more than [`REFRESH_MARGIN_SECS`] left: cached, stored (by this
    /// process earlier, or by another replica), or new.
    pub async fn token(&self) -> Result<AccessToken, WeComError> {
        let mut current = self.current.lock().await;
        if !current.as_ref().is_some_and(Self::fresh) {
            // A fresh stored token saves a gettoken: after a restart, or when another
            // replica has just refreshed.
            if let Ok(Some(stored)) = self.store.load_token(self.cache_key.clone()).await {
                *current = Some(stored);
            }
        }
        if let Some(token) = current.as_ref().filter(|t| Self::fresh(t)) {
            self.publish_expiry(token.expires_at);
            return Ok(token.token.clone());
        }
        let token = self.refresh_once_for_the_cluster(current.as_ref()).await?;
        let value = token.token.clone();
        *current = Some(token);
        Ok(value)
    }

    /// One `gettoken` per Secret across replicas: the holder of the Secret's lease
    /// refreshes; the others wait for its token in the store, using the current one
    /// meanwhile if it has not expired.
    async fn refresh_once_for_the_cluster(&self, current: Option<&StoredToken>) -> Result<StoredToken, WeComError> {
        let lease = match self.store.claim_lease(format!("token:{}", self.cache_key)).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                if let Some(token) = self.wait_for_the_other_refresh(current).await {
                    return Ok(token);
                }
                // The other refresher did not deliver in time (it may have died):
                // fetch one here rather than fail.
                return self.refresh().await;
            }
            // No store to coordinate through: refresh here, the cache still works.
            Err(_) => return self.refresh().await,
        };
        let refreshed = self.refresh().await;
        if let Err(error) = self.store.release_lease(lease).await {
            tracing::debug!(app = %self.label, "token lease not released (it runs out by itself): {error}");
        }
        refreshed
    }

    /// Polls the store for the token another replica is fetching.
    async fn wait_for_the_other_refresh(&self, current: Option<&StoredToken>) -> Option<StoredToken> {
        if let Some(token) = current.filter(|t| t.expires_at > now()) {
            // Still valid, if not for long: keep using it.
            return Some(token.clone());
        }
        let deadline = tokio::time::Instant::now() + OTHER_REFRESH_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(Some(stored)) = self.store.load_token(self.cache_key.clone()).await {
                if Self::fresh(&stored) {
                    return Some(stored);
                }
            }
        }
        None
    }

    async fn refresh(&self) -> Result<StoredToken, WeComError> {
        let outcome = self.client.gettoken(&self.corp_id, self.secret.expose()).await;
        // A refresh of the token of every channel that shares it.
        let counter = |outcome: &str| {
            for channel in &self.channels {
                let mut labels = token_labels(channel, &self.label);
                labels.push(("outcome", outcome.to_owned()));
                self.metrics.counter(REFRESHES, &labels).increment(1);
            }
        };
        match outcome {
            Ok(response) => {
                counter("ok");
                let token = StoredToken { token: response.access_token, expires_at: now() + response.expires_in };
                if let Err(error) = self.store.save_token(self.cache_key.clone(), token.clone()).await {
                    tracing::warn!(app = %self.label, "cannot keep the access token in the store: {error}");
                }
                self.publish_expiry(token.expires_at);
                self.update_status(|s| {
                    s.expires_at = Some(token.expires_at);
                    s.last_refresh_at = Some(now());
                    s.last_error = None;
                    s.last_errcode = None;
                });
                tracing::info!(app = %self.label, expires_in = response.expires_in, "access token refreshed");
                Ok(token)
            }
            Err(error) => {
                counter("error");
                if let Some(ApiError { errcode: 40001, .. }) = error.api() {
                    tracing::error!(app = %self.label, "gettoken refused the Secret (40001): {error}");
                } else {
                    tracing::warn!(app = %self.label, "gettoken failed: {error}");
                }
                self.update_status(|s| {
                    s.last_error = Some(error.to_string());
                    s.last_errcode = error.errcode();
                });
                Err(error)
            }
        }
    }

    fn publish_expiry(&self, expires_at: i64) {
        for channel in &self.channels {
            self.metrics.gauge(EXPIRES_IN, &token_labels(channel, &self.label)).set((expires_at - now()) as f64);
        }
    }

    /// Drops `stale` if it is still the current token (a concurrent caller may have
    /// refreshed already; then there is nothing to drop).
    pub(crate) async fn invalidate(&self, stale: &AccessToken) {
        let mut current = self.current.lock().await;
        // Constant time like every comparison of a credential, though both are ours.
        if current.as_ref().is_none_or(|t| t.token == *stale) {
            let _ = self.store.drop_token(self.cache_key.clone(), stale.clone()).await;
            // The next `token()` must not pick the stale one up from the store again.
            *current = Some(StoredToken { token: AccessToken::new(""), expires_at: 0 });
            self.update_status(|s| s.invalidations += 1);
        }
    }

    /// Calls a business API with a token; when WeCom says the token is invalid
    /// (42001, 40014, 40001), drops it, refreshes once and retries once.
    pub async fn call<T, F, Fut>(&self, api_call: F) -> Result<T, WeComError>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: Future<Output = Result<T, WeComError>>,
    {
        let token = self.token().await?;
        match api_call(token.clone()).await {
            Err(error) if error.api().is_some_and(ApiError::token_invalid) => {
                tracing::info!(app = %self.label, "token refused ({error}); refreshing once");
                self.invalidate(&token).await;
                let token = self.token().await?;
                api_call(token).await
            }
            other => other,
        }
    }
}
