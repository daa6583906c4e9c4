//! `wechat-api healthcheck`: for Docker's HEALTHCHECK; no curl in the image.
//!
//! Asks `/api/health/live` on the local listener. The certificate's name will not
//! be 127.0.0.1, so certificate checks are relaxed for loopback addresses only.
//!
//! Deliberately not here: reading the listener settings (`config::ListenConfig`).

use std::process::ExitCode;
use std::time::Duration;

use super::{runtime, Threads};
use crate::config::{is_loopback, ConfigErrors, ListenConfig, Settings, Sources};

/// Docker's default timeout is longer; answering within this keeps us honest.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The liveness URL of the local listener, from the listener settings alone.
pub(crate) fn local_live_url(settings: &Settings) -> Result<String, ConfigErrors> {
    let listen = ListenConfig::from_settings(settings)?;
    Ok(listen.local_url(listen.https_port, "/api/health/live"))
}

async fn probe(url: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let client = crate::outbound::client(TIMEOUT)
        .danger_accept_invalid_certs(is_loopback(url.as_str()))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let response = client.get(url.clone()).send().await.map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", response.status()))
    }
}

/// Probes `url` (default: the configured local listener); exit 0 when live.
pub(crate) fn run(sources: &Sources, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => Ok(url),
        None => Settings::read(sources).and_then(|settings| local_live_url(&settings)),
    };
    let url = match url {
        Ok(url) => url,
        Err(errors) => {
            eprintln!("unhealthy: configuration: {errors}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime(Threads::One) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(TIMEOUT, probe(&url)).await }) {
        Ok(Ok(())) => {
            println!("live");
            ExitCode::SUCCESS
        }
        Ok(Err(reason)) => {
            eprintln!("unhealthy: {reason}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: {url} did not answer within {}s", TIMEOUT.as_secs());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::variables::{BIND_ADDRESS, HTTPS_PORT, TLS_CERT_PATH, TLS_ENABLED, TLS_KEY_PATH};

    #[test]
    fn local_url_follows_the_listener_settings() {
        let mut settings = Settings::default();
        assert_eq!(local_live_url(&settings).expect("valid"), "https://127.0.0.1:8092/api/health/live");
        settings.set(HTTPS_PORT, "9443");
        settings.set(TLS_ENABLED, "false");
        settings.set(BIND_ADDRESS, "::");
        assert_eq!(local_live_url(&settings).expect("valid"), "http://[::1]:9443/api/health/live");
    }

    #[test]
    fn empty_listener_settings_are_their_defaults() {
        let mut settings = Settings::default();
        for var in [HTTPS_PORT, TLS_ENABLED, BIND_ADDRESS, TLS_CERT_PATH, TLS_KEY_PATH] {
            settings.set(var, "");
        }
        assert_eq!(local_live_url(&settings).expect("valid"), "https://127.0.0.1:8092/api/health/live");
    }
}
