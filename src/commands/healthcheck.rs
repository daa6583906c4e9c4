//! `wechat-api healthcheck`: for Docker's HEALTHCHECK; no curl in the image.
//!
//! Asks `/api/health/live` on the local listener. The certificate's name will not
//! be 127.0.0.1, so certificate checks are relaxed for loopback addresses only.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Settings, Sources};

/// Docker's default timeout is longer; answering within this keeps us honest.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The liveness URL of the local listener, from the listener settings alone.
pub fn local_live_url(settings: &Settings) -> String {
    let tls = !matches!(
        settings.get("TLS_ENABLED").map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("false" | "0" | "no" | "off")
    );
    let port = settings.get("HTTPS_PORT").and_then(|p| p.trim().parse::<u16>().ok()).unwrap_or(8092);
    let host = match settings.get("BIND_ADDRESS").and_then(|a| a.trim().parse::<IpAddr>().ok()) {
        Some(IpAddr::V6(v6)) if v6.is_unspecified() => "[::1]".to_owned(),
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(IpAddr::V4(v4)) if !v4.is_unspecified() => v4.to_string(),
        _ => "127.0.0.1".to_owned(),
    };
    format!("{}://{host}:{port}/api/health/live", if tls { "https" } else { "http" })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

async fn probe(url: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .danger_accept_invalid_certs(is_loopback(&url))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let response = client.get(url.clone()).send().await.map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", response.status()))
    }
}

pub fn run(sources: &Sources, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match Settings::read(sources) {
            Ok(settings) => local_live_url(&settings),
            Err(errors) => {
                eprintln!("unhealthy: configuration: {errors}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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

    #[test]
    fn local_url_follows_the_listener_settings() {
        let mut settings = Settings::default();
        assert_eq!(local_live_url(&settings), "https://127.0.0.1:8092/api/health/live");
        settings.set("HTTPS_PORT", "9443");
        settings.set("TLS_ENABLED", "false");
        settings.set("BIND_ADDRESS", "::");
        assert_eq!(local_live_url(&settings), "http://[::1]:9443/api/health/live");
    }
}
