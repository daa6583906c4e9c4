//! Outbound HTTP: the one place that builds the HTTP clients this appliance uses
//! (the WeCom API, the forward webhook, the heartbeat, the local probes of
//! `healthcheck` and `diagnose`).
//!
//! Owns: the rustls provider for reqwest, the user agent, the time limits every
//! client has, and the redirect policy: none is followed. A 307 from
//! `FORWARD_URL` would otherwise re-POST the message and its `X-Signature` to a
//! URL nobody configured; a 3xx is a failed attempt whose reason
//! ([`refused_redirect`]) says where it pointed. Deliberately not here: what a
//! client sends, and how an answer is judged (each caller's business).

use std::time::Duration;

/// How the appliance introduces itself.
pub(crate) const USER_AGENT: &str = concat!("wechat-api/", env!("CARGO_PKG_VERSION"));

/// A client builder with the user agent, an overall `timeout` per request and no
/// redirects followed, on the `ring` provider (installed here, so no caller
/// forgets it).
pub(crate) fn client(timeout: Duration) -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder().timeout(timeout).user_agent(USER_AGENT).redirect(reqwest::redirect::Policy::none())
}

/// For a 3xx answer, the reason its attempt failed: "redirect to … not followed"
/// (`None` for any other status).
pub(crate) fn refused_redirect(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
    Some(format!("HTTP {}: redirect to {} not followed", response.status(), shown_location(location)))
}

/// Where a redirect pointed, as a log line may show it: scheme, host, port and
/// path; never a user, password or query (which could carry a token).
fn shown_location(location: Option<&str>) -> String {
    let Some(location) = location else {
        return "nowhere (no Location header)".to_owned();
    };
    match url::Url::parse(location) {
        Ok(url) => {
            let host = url.host_str().unwrap_or_default();
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", url.scheme(), url.path())
        }
        // A relative reference: its path only.
        Err(_) => location.split(['?', '#']).next().unwrap_or_default().chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_target_is_shown_without_credentials_or_query() {
        assert_eq!(
            shown_location(Some("https://user:pw@example.com:8443/hook?access_token=SECRET#x")),
            "https://example.com:8443/hook"
        );
        assert_eq!(shown_location(Some("/elsewhere?token=SECRET")), "/elsewhere");
        assert_eq!(shown_location(None), "nowhere (no Location header)");
    }
}
