//! Outbound HTTP: the one place that builds the HTTP clients this appliance uses
//! (the WeCom API, the forward webhook, the heartbeat, the local probes of
//! `healthcheck` and `diagnose`).
//!
//! Owns: the rustls provider for reqwest, the user agent, and the time limits
//! every client has. Deliberately not here: what a client sends, and how an
//! answer is judged (each caller's business).

use std::time::Duration;

/// How the appliance introduces itself.
pub(crate) const USER_AGENT: &str = concat!("wechat-api/", env!("CARGO_PKG_VERSION"));

/// A client builder with the user agent and an overall `timeout` per request,
/// on the `ring` provider (installed here, so no caller forgets it).
pub(crate) fn client(timeout: Duration) -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder().timeout(timeout).user_agent(USER_AGENT)
}
