//! `wechat-api healthcheck`: for Docker's HEALTHCHECK; no curl in the image.
//!
//! Asks `/api/health/live` on the local listener. The certificate's name will not
//! be 127.0.0.1, so certificate checks are relaxed for this machine only: a
//! loopback address, or the configured listener's own address (a specific
//! `BIND_ADDRESS` is one of this machine's, and the kernel routes traffic to it
//! over loopback). A `--url` elsewhere is checked strictly.
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

/// Whether the probe of `url` accepts any certificate: on this machine only
/// (`own_listener`: the URL was made from the listener settings).
fn accepts_any_certificate(url: &str, own_listener: bool) -> bool {
    own_listener || is_loopback(url)
}

async fn probe(url: &str, own_listener: bool) -> Result<(), String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let client = crate::outbound::client(TIMEOUT)
        .danger_accept_invalid_certs(accepts_any_certificate(url.as_str(), own_listener))
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
    let own_listener = url.is_none();
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
    match runtime.block_on(async { tokio::time::timeout(TIMEOUT, probe(&url, own_listener)).await }) {
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
    fn the_own_listener_is_probed_relaxed_at_any_address_and_a_given_url_only_on_loopback() {
        let mut settings = Settings::default();
        settings.set(BIND_ADDRESS, "10.0.0.7");
        let own = local_live_url(&settings).expect("valid");
        assert_eq!(own, "https://10.0.0.7:8092/api/health/live");
        assert!(accepts_any_certificate(&own, true), "a specific BIND_ADDRESS is this machine's own");
        assert!(!accepts_any_certificate(&own, false), "a --url elsewhere is checked strictly");
        assert!(accepts_any_certificate("https://127.0.0.1:8092/api/health/live", false));
        assert!(accepts_any_certificate("https://[::1]:8092/api/health/live", false));
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
