//! A proxy for WeCom's API (SPEC §14): `WECOM_PROXY_URL`, or a channel's
//! `proxy_url`. [`ProxyUrl`] is parsed once; its password is a secret that no
//! output shows ([`ProxyUrl::shown`] is `http://user:***@host:port`), and a parse
//! error says what is wrong without repeating the value.
//!
//! Deliberately not here: using it (`wecom::client` builds its HTTP client with
//! it, and without it ignores the environment's `HTTP_PROXY`/`HTTPS_PROXY`).

use super::secret::Secret;

/// The schemes a WeCom proxy may have: an HTTP proxy (CONNECT for HTTPS), an HTTP
/// proxy reached over TLS, or SOCKS5 (`socks5h`: the proxy resolves names).
const SCHEMES: [&str; 4] = ["http", "https", "socks5", "socks5h"];

/// A validated proxy URL.
#[derive(Clone)]
pub struct ProxyUrl {
    url: Secret,
    shown: String,
}

impl ProxyUrl {
    /// `value` as a proxy URL: one of [`SCHEMES`], a host, a port, optional
    /// `user:password`, nothing else. The error never repeats the value.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        const FORM: &str = "(http://user:password@host:port, https://… or socks5://…)";
        let url = url::Url::parse(value).map_err(|_| format!("must be a proxy URL {FORM}"))?;
        if !SCHEMES.contains(&url.scheme()) {
            return Err(format!("must start with http://, https://, socks5:// or socks5h:// {FORM}"));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("must name the proxy's host {FORM}"));
        };
        if !url.path().trim_matches('/').is_empty() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("must be only scheme, credentials, host and port {FORM}"));
        }
        if url.password().is_some() && url.username().is_empty() {
            return Err(format!("has a password without a user {FORM}"));
        }
        let port = url.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
        let user = match (url.username(), url.password()) {
            ("", _) => String::new(),
            (user, Some(_)) => format!("{user}:***@"),
            (user, None) => format!("{user}@"),
        };
        let shown = format!("{}://{user}{host}{port}", url.scheme());
        Ok(Self { url: Secret::new(value.trim_end_matches('/')), shown })
    }

    /// The URL as an operator may see it: the password replaced by `***`.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// The URL with its password: only for the HTTP client that uses it.
    pub(crate) fn expose(&self) -> &str {
        self.url.expose()
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({})", self.shown)
    }
}

impl PartialEq for ProxyUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url.expose() == other.url.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_is_shown_without_its_password_and_its_errors_never_repeat_it() {
        let proxy = ProxyUrl::parse("http://egress:s3cretPass@proxy.internal:3128").expect("valid");
        assert_eq!(proxy.shown(), "http://egress:***@proxy.internal:3128");
        assert!(!format!("{proxy:?}").contains("s3cretPass"));
        assert_eq!(proxy.expose(), "http://egress:s3cretPass@proxy.internal:3128");
        assert_eq!(ProxyUrl::parse("socks5h://10.0.0.1:1080").expect("socks").shown(), "socks5h://10.0.0.1:1080");
        assert_eq!(ProxyUrl::parse("http://proxy").expect("default port").shown(), "http://proxy:80");
        for bad in [
            "ftp://u:s3cretPass@proxy:21",
            "http://u:s3cretPass@proxy:3128/path",
            "s3cretPass",
            "http://:s3cretPass@proxy:3128",
            "http://u:s3cretPass@proxy:3128?x=1",
        ] {
            let error = ProxyUrl::parse(bad).expect_err(bad);
            assert!(!error.contains("s3cretPass"), "{error}");
        }
    }
}
