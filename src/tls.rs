//! The server's TLS: rustls with the `ring` provider, certificates from PEM files,
//! a resolver whose certificate can be swapped while serving, and self-signed
//! certificates for a first start and for tests.
//!
//! Owns: reading and checking the certificate and key (chain parses, key matches),
//! the protocol versions (TLS 1.2 and 1.3 only) and the certificate's expiry.
//! Deliberately not here: when to reload (the supervisor decides) and ALPN, which
//! actix-web sets to `http/1.1` itself (HTTP/2 is not built in: see SECURITY.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Installs `ring` as the process's rustls provider (for reqwest too). Idempotent.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `ring` provider, for every rustls configuration this crate builds.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the certificate or key cannot be used; each names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS_CERT_PATH {path}: cannot read a PEM certificate: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS_CERT_PATH {path}: contains no certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("TLS_KEY_PATH {path}: cannot read a PEM private key (PKCS#8, RSA or EC): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS_KEY_PATH {key}: does not belong to the certificate in TLS_CERT_PATH {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS_CERT_PATH {path}: the first certificate cannot be parsed: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded certificate with the facts the supervisor and health report need.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf certificate, unix seconds.
    pub not_after: i64,
    pub subject: String,
}

/// Reads and checks a PEM chain and its private key.
pub fn load_certificate(cert_path: &Path, key_path: &Path) -> Result<LoadedCertificate, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate { path: cert_path.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(pem_reason(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(pem_reason(&e)))?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate { path: cert_path.to_owned() })?;
    let (not_after, subject) = {
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| TlsError::Parse { path: cert_path.to_owned(), reason: e.to_string() })?;
        (parsed.validity().not_after.timestamp(), parsed.subject().to_string())
    };
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError::Key { path: key_path.to_owned(), reason: pem_reason(&e) })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Mismatch { cert: cert_path.to_owned(), key: key_path.to_owned() }
        }
        other => TlsError::Key { path: key_path.to_owned(), reason: other.to_string() },
    })?;
    Ok(LoadedCertificate { key: Arc::new(certified), not_after, subject })
}

fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind found".to_owned(),
        other => format!("malformed PEM ({other:?})").chars().take(120).collect(),
    }
}

/// Serves whatever certificate was loaded last; swapping it needs no restart.
#[derive(Debug)]
pub(crate) struct CertificateStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    not_after: std::sync::atomic::AtomicI64,
}

impl CertificateStore {
    /// Loads the files once; fails when they cannot be used.
    pub(crate) fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let loaded = load_certificate(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::new(loaded.key),
            not_after: loaded.not_after.into(),
        }))
    }

    /// Re-reads the files. On error the previous certificate keeps serving.
    pub(crate) fn reload(&self) -> Result<i64, TlsError> {
        let loaded = load_certificate(&self.cert_path, &self.key_path)?;
        self.current.store(loaded.key);
        self.not_after.store(loaded.not_after, std::sync::atomic::Ordering::Relaxed);
        Ok(loaded.not_after)
    }

    /// `notAfter` of the certificate being served, unix seconds.
    pub(crate) fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A rustls server configuration that resolves through this store.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        Ok(config)
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertificateStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// A self-signed certificate and its PKCS#8 key, both PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a self-signed certificate for `names` (DNS names or IP addresses),
/// valid from a day ago for `valid_for`.
pub fn self_signed(names: &[&str], valid_for: time::Duration) -> Result<SelfSigned, rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + valid_for;
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("wechat-api"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "wechat-api self-signed");
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes a fresh self-signed pair where none exists; the key file is 0600.
/// Returns whether files were written.
pub(crate) fn ensure_self_signed(cert_path: &Path, key_path: &Path, names: &[&str]) -> std::io::Result<bool> {
    if cert_path.exists() || key_path.exists() {
        return Ok(false);
    }
    let pair = self_signed(names, time::Duration::days(365)).map_err(std::io::Error::other)?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(cert_path, pair.cert_pem)?;
    write_private(key_path, pair.key_pem.as_bytes())?;
    Ok(true)
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents)
}

/// A client-side verifier that accepts any server certificate chain while still
/// checking the handshake's signatures: an encrypted channel to a peer whose
/// identity is not checked. For libpq's `sslmode=require`/`prefer` (the store) and
/// the load generator's self-signed loopback target; never for WeCom.
#[derive(Debug)]
pub struct AnyServerCertificate(Arc<CryptoProvider>);

impl AnyServerCertificate {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf) {
        let pair = self_signed(&["localhost", "127.0.0.1"], time::Duration::days(days)).expect("self-signed");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, pair.cert_pem).expect("write cert");
        std::fs::write(&key, pair.key_pem).expect("write key");
        (cert, key)
    }

    #[test]
    fn loads_a_self_signed_pair_and_reports_its_expiry() {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "a", 2);
        let loaded = load_certificate(&cert, &key).expect("loads");
        let left = loaded.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((2 * 86_400 - 120..=2 * 86_400).contains(&left), "{left}");
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch_naming_both_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = write_pair(dir.path(), "a", 30);
        let (_, other_key) = write_pair(dir.path(), "b", 30);
        let err = load_certificate(&cert, &other_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("TLS_KEY_PATH") && err.to_string().contains("TLS_CERT_PATH"));
    }

    #[test]
    fn missing_and_garbage_files_name_the_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.crt");
        let err = load_certificate(&missing, &missing).expect_err("missing");
        assert!(err.to_string().starts_with("TLS_CERT_PATH"), "{err}");
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "hello").expect("write");
        let err = load_certificate(&garbage, &garbage).expect_err("garbage");
        assert!(err.to_string().starts_with("TLS_CERT_PATH"), "{err}");
        let (cert, _) = write_pair(dir.path(), "c", 30);
        let err = load_certificate(&cert, &garbage).expect_err("bad key");
        assert!(err.to_string().starts_with("TLS_KEY_PATH"), "{err}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "live", 10);
        let store = CertificateStore::open(&cert, &key).expect("opens");
        let before = store.not_after();
        let (new_cert, new_key) = write_pair(dir.path(), "next", 90);
        std::fs::rename(new_cert, &cert).expect("rename");
        std::fs::rename(new_key, &key).expect("rename");
        let after = store.reload().expect("reloads");
        assert!(after > before + 70 * 86_400);
        std::fs::write(&cert, "broken").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.not_after(), after, "the old certificate keeps serving");
    }
}
