//! How to reach PostgreSQL: `DATABASE_URL` read once into a driver configuration
//! and an `sslmode`, the TLS connector that mode asks for (rustls on `ring`, no
//! OpenSSL), and the pool of connections.
//!
//! `sslmode` follows libpq: `disable` never uses TLS; `prefer` (the default) tries
//! TLS and falls back to plain when the server has none; `require` insists on TLS
//! but, as libpq does without a root certificate, does not verify the server's
//! chain; `verify-full` verifies the chain against the webpki roots and the host
//! name. Deliberately not here: the SQL, and any error text that could carry the
//! URL (the password is never repeated).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PostgresError;

/// How long establishing one connection may take before it counts as a failure.
/// Short: while the database is unreachable a callback waits this long for its
/// 503, and WeCom gives up on an answer after 5 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an operation waits for a free connection of the pool. Request paths
/// are bounded tighter by `store::REQUEST_DEADLINE`; this bounds the workers.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged data on a database socket for this long ends the connection
/// (`TCP_USER_TIMEOUT`): a server that vanished (a failover, a cut cable) is
/// noticed in seconds instead of the kernel's ~15 minutes of retransmissions.
/// A server that is alive but stalled (its kernel still acknowledges) is not
/// noticed here: callers' deadlines cover that.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
/// Keepalive probes on idle database sockets: first after 10 s idle, then every
/// 5 s, dead after 3 unanswered.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Set on every new connection. `synchronous_commit` on: a commit is durable (and
/// on a synchronous standby, if the operator has one) before anyone is told of it,
/// whatever the server's default. `idle_in_transaction_session_timeout`: a replica
/// that hangs inside a transaction cannot hold its row locks for ever.
/// `statement_timeout` and `lock_timeout`: the server stops work nobody waits for
/// any more (a request gave up after 3 s; a worker retries); migrations lift them
/// for their own transaction.
const SESSION: &str = "SET synchronous_commit = on; SET idle_in_transaction_session_timeout = '60s'; \
                       SET statement_timeout = '30s'; SET lock_timeout = '10s'";

/// `sslmode` of `DATABASE_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "disable" => Some(Self::Disable),
            "prefer" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }
}

/// A parsed `DATABASE_URL`.
pub(super) struct Target {
    config: tokio_postgres::Config,
    ssl: SslMode,
}

impl Target {
    /// Reads `url`; the error says what is wrong without repeating the URL.
    pub(super) fn parse(url: &str) -> Result<Self, PostgresError> {
        let mut parsed = url::Url::parse(url).map_err(|e| PostgresError::Url(format!("not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(PostgresError::Url("the scheme must be postgres:// or postgresql://".into()));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(PostgresError::Url("no host".into()));
        }
        let mut ssl = SslMode::Prefer;
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            if key == "sslmode" {
                ssl = SslMode::parse(&value).ok_or_else(|| {
                    PostgresError::Url(format!("sslmode {value:?} is not one of disable, prefer, require, verify-full"))
                })?;
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        // The driver knows no `verify-full`: the mode is applied here, by the connector.
        parsed.set_query(None);
        if !kept.is_empty() {
            parsed.query_pairs_mut().extend_pairs(kept);
        }
        let mut config = tokio_postgres::Config::from_str(parsed.as_str())
            .map_err(|e| PostgresError::Url(format!("not a PostgreSQL URL ({e})")))?;
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        config.connect_timeout(CONNECT_TIMEOUT);
        // A database that vanished (a failover, a cut cable) is noticed, not waited for.
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("wechat-api");
        }
        Ok(Self { config, ssl })
    }

    /// A pool of at most `size` connections; none is opened until one is needed.
    pub(super) fn pool(self, size: usize) -> Result<Pool, PostgresError> {
        let tls = connector(self.ssl)?;
        let manager = Manager::from_config(self.config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move { client.batch_execute(SESSION).await.map_err(HookError::Backend) })
            }))
            .build()
            .map_err(|e| PostgresError::Unavailable(format!("cannot build the pool: {e}")))
    }
}

/// The TLS connector for `ssl` (unused with `disable`, which never starts TLS).
fn connector(ssl: SslMode) -> Result<MakeRustlsConnect, PostgresError> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::Tls(e.to_string()))?;
    let config = match ssl {
        SslMode::VerifyFull => {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyServerCertificate::new(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, String> {
        Target::parse(url).map_err(|e| e.to_string())
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_is_taken_out_of_the_url() {
        let target = parse("postgres://app:pw@db.example:5433/wechat").expect("parses");
        assert_eq!(target.ssl, SslMode::Prefer);
        assert_eq!(target.config.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        assert_eq!(target.config.get_dbname(), Some("wechat"));
        assert_eq!(target.config.get_ports(), &[5433]);
        let target = parse("postgresql://app@db/wechat?sslmode=verify-full&application_name=x").expect("parses");
        assert_eq!(target.ssl, SslMode::VerifyFull);
        assert_eq!(target.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(target.config.get_application_name(), Some("x"));
        for (mode, expected) in [("disable", SslMode::Disable), ("require", SslMode::Require)] {
            assert_eq!(parse(&format!("postgres://a@h/d?sslmode={mode}")).expect("parses").ssl, expected);
        }
    }

    #[test]
    fn a_malformed_url_is_refused_without_its_password() {
        for url in [
            "mysql://app:s3cret@db/wechat",
            "postgres://app:s3cret@/wechat",
            "postgres://app:s3cret@db/wechat?sslmode=allow",
            "postgres://app:s3cret@db:notaport/wechat",
            "app:s3cret@db",
        ] {
            let error = parse(url).err().unwrap_or_else(|| panic!("{url} is refused"));
            assert!(error.starts_with("DATABASE_URL"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn a_percent_encoded_password_reaches_the_driver_decoded() {
        let target = parse("postgres://app:p%40ss@db/wechat").expect("parses");
        assert_eq!(target.config.get_password(), Some(&b"p@ss"[..]));
    }

    #[test]
    fn every_mode_builds_its_connector() {
        for ssl in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyFull] {
            assert!(connector(ssl).is_ok(), "{ssl:?}");
        }
    }
}
