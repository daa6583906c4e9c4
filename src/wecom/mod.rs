//! The WeCom API: a client ([`client`]), its request and response bodies
//! ([`models`]), its errors with hints ([`error`]) and the access tokens of each
//! Secret ([`tokens`]).
//!
//! Architecture invariant: only `wecom/` knows WeCom's JSON.

pub mod client;
pub mod connection;
pub mod error;
pub mod models;
pub mod tokens;

use std::sync::Arc;

pub use client::WeComClient;
pub use error::{ApiError, WeComError};
pub use tokens::TokenSource;

use crate::config::Config;
use crate::store::Store;
use crate::telemetry::Metrics;

/// The API client and the token cache of each configured Secret.
#[derive(Debug, Clone)]
pub struct WeCom {
    pub client: WeComClient,
    /// `WECOM_SECRET`: the self-built app.
    pub app: Option<Arc<TokenSource>>,
    /// `WECOM_KF_SECRET`, else `WECOM_SECRET`. The same `Arc` as `app` when the two
    /// Secrets are equal: one cache per (corp id, Secret).
    pub kf: Option<Arc<TokenSource>>,
}

impl WeCom {
    pub fn new(config: &Config, store: &Store, metrics: &Arc<Metrics>) -> Result<Self, WeComError> {
        let client = WeComClient::new(&config.api_base_url, Arc::clone(metrics))?;
        let source = |label, secret: &crate::config::Secret| {
            Arc::new(TokenSource::new(
                label,
                config.corp_id.as_str(),
                secret.clone(),
                client.clone(),
                store.clone(),
                Arc::clone(metrics),
            ))
        };
        let app = config.secret.as_ref().map(|s| source("app", s));
        let kf = match (&config.kf_secret, &app) {
            (Some(kf), Some(app)) if tokens::cache_key(config.corp_id.as_str(), kf) == app.cache_key() => {
                Some(Arc::clone(app))
            }
            (Some(kf), _) => Some(source("kf", kf)),
            (None, Some(app)) => Some(Arc::clone(app)),
            (None, None) => None,
        };
        Ok(Self { client, app, kf })
    }

    /// The token cache for the app channel, or why there is none.
    pub fn app_tokens(&self) -> Result<&Arc<TokenSource>, WeComError> {
        self.app.as_ref().ok_or(WeComError::NotConfigured("WECOM_SECRET"))
    }

    /// The token cache for kf APIs, or why there is none.
    pub fn kf_tokens(&self) -> Result<&Arc<TokenSource>, WeComError> {
        self.kf.as_ref().ok_or(WeComError::NotConfigured("WECOM_KF_SECRET"))
    }
}
