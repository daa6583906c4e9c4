//! Test harness: `spawn_app()` starts the real `Application` on 127.0.0.1:0 with a
//! certificate made for the test, and a client that trusts only that certificate.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use wechat_api::testing::config::{self, Sources};
use wechat_api::testing::crypto::{self, AesKey};
use wechat_api::testing::startup::Application;

/// The official PHP sample's credentials (a non-canonical key, on purpose).
pub(crate) const CORP_ID: &str = "wx5823bf96d3bd56c7";
pub(crate) const TOKEN: &str = "QDG6eK";
pub(crate) const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

pub(crate) struct TestApp {
    pub port: u16,
    pub http_port: Option<u16>,
    pub client: reqwest::Client,
    pub store: wechat_api::testing::store::Store,
    pub liveness: std::sync::Arc<wechat_api::testing::health::Liveness>,
    /// The clock of the duration checks, to move ahead instead of waiting minutes.
    pub clock: std::sync::Arc<wechat_api::testing::health::CheckClock>,
    pub dir: tempfile::TempDir,
    overrides: Vec<(String, String)>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A certificate for 127.0.0.1 and localhost, written into `dir`.
pub(crate) fn write_certificate(dir: &std::path::Path, days: i64) -> (PathBuf, PathBuf, String) {
    let pair = wechat_api::testing::tls::self_signed(&["localhost", "127.0.0.1"], time::Duration::days(days))
        .expect("self-signed certificate");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &pair.cert_pem).expect("write certificate");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    (cert, key, pair.cert_pem)
}

/// The environment of a valid test configuration, plus `overrides`.
pub(crate) fn test_env(dir: &std::path::Path, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("WECOM_CORP_ID", CORP_ID),
        ("WECOM_TOKEN", TOKEN),
        ("WECOM_ENCODING_AES_KEY", AES_KEY),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("HTTPS_PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("TLS_CERT_PATH".into(), dir.join("server.crt").display().to_string());
    env.insert("TLS_KEY_PATH".into(), dir.join("server.key").display().to_string());
    env.insert("DATA_DIR".into(), dir.join("data").display().to_string());
    env.insert("UPLOAD_DIR".into(), dir.join("uploads").display().to_string());
    // Never the real WeCom: a test that needs the API starts a FakeWeCom and overrides this.
    env.insert("WECOM_API_BASE_URL".into(), "http://127.0.0.1:9".into());
    // The machine's own free space is not the test's subject: a CI disk at 97 % must
    // not refuse sends or media. The tests of the floors set them.
    env.insert("DATA_MIN_FREE_PERCENT".into(), "0".into());
    env.insert("MEDIA_MIN_FREE_PERCENT".into(), "0".into());
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub(crate) async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with_certificate(365, overrides).await
}

/// Like [`spawn_app_with`], serving a certificate valid for `days`.
pub(crate) async fn spawn_app_with_certificate(days: i64, overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificate(dir.path(), days);
    let overrides = overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    start_in(dir, overrides).await
}

/// Like [`spawn_app_with`], on the data the test put in `dir` (`dir/data` is `DATA_DIR`).
pub(crate) async fn spawn_app_in(dir: tempfile::TempDir, overrides: &[(&str, &str)]) -> TestApp {
    write_certificate(dir.path(), 365);
    let overrides = overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    start_in(dir, overrides).await
}

/// Like [`spawn_app_with`], with `tweak` applied to the loaded configuration
/// (the periods SPEC fixes and only tests shorten, e.g. the long connection's).
pub(crate) async fn spawn_app_tweaked(overrides: &[(&str, &str)], tweak: impl FnOnce(&mut config::Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificate(dir.path(), 365);
    let overrides = overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    start_tweaked(dir, overrides, tweak).await
}

/// Starts the application on the certificate and data already in `dir`.
async fn start_in(dir: tempfile::TempDir, overrides: Vec<(String, String)>) -> TestApp {
    start_tweaked(dir, overrides, |_| {}).await
}

async fn start_tweaked(
    dir: tempfile::TempDir,
    overrides: Vec<(String, String)>,
    tweak: impl FnOnce(&mut config::Config),
) -> TestApp {
    let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let env = test_env(dir.path(), &pairs);
    // As `Sources::from_process` does: the TOML file named by WECHAT_API_CONFIG.
    let file = env.get(config::CONFIG_FILE_VARIABLE).filter(|p| !p.is_empty()).map(PathBuf::from);
    let sources = Sources { env, file, ..Sources::default() };
    let (mut config, _) = config::load(&sources).expect("test configuration is valid");
    tweak(&mut config);
    let app = Application::build(config).await.expect("application starts");
    let port = app.port();
    let http_port = app.http_port();
    let store = app.store();
    let liveness = app.liveness();
    let clock = app.check_clock();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let cert_pem = std::fs::read(dir.path().join("server.crt")).expect("certificate");
    let client = client_trusting(&cert_pem, Duration::from_secs(10));
    TestApp { port, http_port, client, store, liveness, clock, dir, overrides, shutdown, server }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the application like SIGTERM and waits for it to finish.
    pub(crate) async fn stop(self) -> std::io::Result<()> {
        self.stop_keeping_dir().await.0
    }

    async fn stop_keeping_dir(self) -> (std::io::Result<()>, tempfile::TempDir, Vec<(String, String)>) {
        // Close our keep-alive connections first: the drain waits for open ones.
        drop(self.client);
        drop(self.store);
        self.shutdown.cancel();
        let stopped = self.server.await.expect("server task");
        (stopped, self.dir, self.overrides)
    }

    /// Stops gracefully and starts again on the same data directory.
    pub(crate) async fn restart(self) -> TestApp {
        let (stopped, dir, overrides) = self.stop_keeping_dir().await;
        stopped.expect("clean stop");
        start_in(dir, overrides).await
    }

    /// Sends a signed text callback with `msg_id`; returns the HTTP status.
    pub(crate) async fn post_text(&self, content: &str, msg_id: u64) -> u16 {
        self.post_xml(&text_message(content, msg_id)).await
    }

    /// Encrypts, signs and POSTs `xml` as an app callback; returns the HTTP status.
    pub(crate) async fn post_xml(&self, xml: &str) -> u16 {
        self.post_signed("/api/v1/wecom/callback", TOKEN, AES_KEY, xml).await.status().as_u16()
    }

    /// Encrypts `xml` with `key`, signs it with `token` and POSTs it to `path`.
    pub(crate) async fn post_signed(&self, path: &str, token: &str, key: &str, xml: &str) -> reqwest::Response {
        let signed = sign_post(token, key, CORP_ID, xml);
        let url = self.url(&format!("{path}?{}", signed.query));
        self.client.post(url).body(signed.body).send().await.expect("callback request")
    }

    /// Polls until the outbox has nothing left to do, or fails after 15 s.
    pub(crate) async fn wait_until_outbox_empty(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let pending = self.store.unhandled().await.expect("journal");
            let backlog = self.store.outbox_backlog().await.expect("outbox");
            if pending + backlog == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "still {pending} unhandled, {backlog} queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The full health report (the test client is on loopback, a trusted network).
    pub(crate) async fn health(&self) -> serde_json::Value {
        self.client.get(self.url("/api/health")).send().await.expect("health").json().await.expect("JSON")
    }

    /// Polls the health report until `done` holds for it, or fails after 30 s
    /// saying `what` was awaited.
    pub(crate) async fn health_until(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let report = self.health().await;
            if done(&report) {
                return report;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {report:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the health report until check `name`'s first result has `status`;
    /// returns that result, or fails after 30 s.
    pub(crate) async fn check_becomes(&self, name: &str, status: &str) -> serde_json::Value {
        let what = format!("{name} becomes {status}");
        let report = self.health_until(&what, |r| r["checks"][name][0]["status"] == status).await;
        report["checks"][name][0].clone()
    }

    pub(crate) async fn metrics(&self) -> String {
        self.client.get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("body")
    }

    /// The value of one sample line in `/metrics`, 0 when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }
}

/// A signed callback: the query string and the envelope body.
pub(crate) struct Signed {
    pub query: String,
    pub body: String,
}

pub(crate) fn query(signature: &str, timestamp: &str, nonce: &str, echostr: Option<&str>) -> String {
    let mut pairs = vec![("msg_signature", signature), ("timestamp", timestamp), ("nonce", nonce)];
    if let Some(echostr) = echostr {
        pairs.push(("echostr", echostr));
    }
    serde_urlencoded::to_string(pairs).expect("query")
}

/// Encrypts `xml` for `receive_id` with `key` and signs it with `token`.
pub(crate) fn sign_post(token: &str, key: &str, receive_id: &str, xml: &str) -> Signed {
    let key = AesKey::parse(key).expect("key");
    let encrypted = crypto::encrypt(&key, xml.as_bytes(), receive_id.as_bytes());
    sign_envelope(token, &encrypted)
}

/// Signs an already-encrypted `Encrypt` value and wraps it in an envelope.
pub(crate) fn sign_envelope(token: &str, encrypted: &str) -> Signed {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = rand::random::<u32>().to_string();
    let signature = crypto::sign(token, &timestamp, &nonce, encrypted);
    Signed {
        query: query(signature.as_str(), &timestamp, &nonce, None),
        body: format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID>1000002</AgentID></xml>"),
    }
}

pub(crate) fn text_message(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
    )
}

/// An HTTPS client that trusts only the certificate `cert_pem`.
pub(crate) fn client_trusting(cert_pem: &[u8], timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem).expect("PEM"))
        .timeout(timeout)
        .build()
        .expect("client")
}

/// The port of the service's "wechat-api listening … port=N" log line.
pub(crate) fn listening_port(line: &str) -> u16 {
    let at = line.find("port=").expect("port field") + 5;
    line[at..].split(|c: char| !c.is_ascii_digit()).next().expect("digits").parse().expect("port")
}

const BIN: &str = env!("CARGO_BIN_EXE_wechat-api");

/// The binary with a clean environment: only what the test sets.
pub(crate) fn wechat_api(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(dir);
    command
}

/// A child process killed when the test ends, with its stdout as lines.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub(crate) fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("binary starts");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self { child, lines }
    }

    /// Collects output until `done` says so; fails the test after 30 s.
    pub(crate) fn read_until(&self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let finished = done(&line);
                    seen.push(line);
                    if finished {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("timed out; output so far:\n{}", seen.join("\n"));
    }

    /// The process id (to read its memory from /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn port(&self) -> u16 {
        let lines = self.read_until(|l| l.contains("wechat-api listening"));
        listening_port(lines.last().expect("a line"))
    }

    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Every line not read yet, up to the end of both streams (call it after the
    /// process ended); fails the test after 30 s.
    pub(crate) fn rest(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return seen,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("output never ended; so far:\n{}", seen.join("\n")),
            }
        }
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    pub(crate) fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of `app` whose connections come from `address` (another loopback
/// address, such as 127.0.0.2, plays a stranger).
pub(crate) fn client_from(app: &TestApp, address: std::net::Ipv4Addr) -> reqwest::Client {
    let pem = std::fs::read(app.dir.path().join("server.crt")).expect("certificate");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
        .local_address(std::net::IpAddr::V4(address))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The resident set of this test process (the service runs in it), in KiB.
pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// A TLS client trusting only the certificate in `dir` (the service's
/// `server.crt`), offering `alpn` (none: no ALPN extension).
pub(crate) fn tls_connector(dir: &std::path::Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(dir.join("server.crt")).expect("certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&pem).expect("PEM")).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
