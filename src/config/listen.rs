//! The listener settings on their own: [`ListenConfig`] (validated from the same
//! settings as the whole configuration, by `ListenConfig::from_settings` in
//! `validation.rs`, so `healthcheck` can find the local listener without
//! requiring anything else); and the one way to spell the listener's local URL.
//!
//! Deliberately not here: the wording of its value errors (`validation.rs`, which
//! owns all of them), binding (`startup`) and certificates (`tls`).

use std::net::IpAddr;
use std::path::PathBuf;

/// Where and how the service listens.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// `BIND_ADDRESS`.
    pub bind_address: IpAddr,
    /// `HTTPS_PORT` (plain HTTP there when TLS is off).
    pub https_port: u16,
    /// `HTTP_PORT`, the optional plain-HTTP listener.
    pub http_port: Option<u16>,
    /// `TLS_ENABLED`.
    pub tls_enabled: bool,
    /// `TLS_CERT_PATH`.
    pub cert_path: PathBuf,
    /// `TLS_KEY_PATH`.
    pub key_path: PathBuf,
}

impl ListenConfig {
    /// The URL of `path` on the main listener, reached from this machine on `port`
    /// (the configured `https_port`, or the one actually bound when that was 0):
    /// `https` unless TLS is off; an unspecified bind address is reached on
    /// loopback (`127.0.0.1`, `[::1]`), a specific one as itself.
    pub(crate) fn local_url(&self, port: u16, path: &str) -> String {
        let scheme = if self.tls_enabled { "https" } else { "http" };
        let host = match self.bind_address {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        format!("{scheme}://{host}:{port}{path}")
    }
}

/// Whether `url` points at this machine (a loopback address or `localhost`),
/// where a certificate not made out to that name is expected and may be accepted.
pub(crate) fn is_loopback(url: &str) -> bool {
    match reqwest::Url::parse(url).ok().as_ref().and_then(reqwest::Url::host) {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layering::Settings;
    use crate::config::variables as var;

    fn listen(pairs: &[(var::Var, &str)]) -> ListenConfig {
        let mut settings = Settings::default();
        for (var, value) in pairs {
            settings.set(*var, *value);
        }
        ListenConfig::from_settings(&settings).expect("valid listener settings")
    }

    #[test]
    fn local_url_reaches_the_bind_address_from_this_machine() {
        assert_eq!(listen(&[]).local_url(8092, "/x"), "https://127.0.0.1:8092/x");
        assert_eq!(listen(&[(var::BIND_ADDRESS, "::")]).local_url(1, "/x"), "https://[::1]:1/x");
        assert_eq!(listen(&[(var::BIND_ADDRESS, "10.0.0.7")]).local_url(2, "/x"), "https://10.0.0.7:2/x");
        assert_eq!(listen(&[(var::BIND_ADDRESS, "fd00::7")]).local_url(3, "/x"), "https://[fd00::7]:3/x");
        assert_eq!(listen(&[(var::TLS_ENABLED, "false")]).local_url(4, "/x"), "http://127.0.0.1:4/x");
    }

    #[test]
    fn listener_settings_are_validated_on_their_own() {
        let mut settings = Settings::default();
        settings.set(var::HTTPS_PORT, "http");
        settings.set(var::TLS_ENABLED, "maybe");
        let errors = ListenConfig::from_settings(&settings).expect_err("invalid").0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("HTTPS_PORT must be a port"), "{errors:?}");
    }

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback("https://127.0.0.1:8092/x"));
        assert!(is_loopback("https://localhost/x"));
        assert!(is_loopback("https://[::1]:8092/x"));
        assert!(!is_loopback("https://wx.example.com/x"));
        assert!(!is_loopback("https://10.0.0.7/x"));
        assert!(!is_loopback("not a url"));
    }
}
