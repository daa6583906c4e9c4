//! Test harness: `spawn_app()` starts the real `Application` on 127.0.0.1:0 with a
//! certificate made for the test, and a client that trusts only that certificate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wechat_api::config::{self, Sources};
use wechat_api::crypto::{self, AesKey};
use wechat_api::startup::Application;

/// The official PHP sample's credentials (a non-canonical key, on purpose).
pub const CORP_ID: &str = "wx5823bf96d3bd56c7";
pub const TOKEN: &str = "QDG6eK";
pub const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

pub struct TestApp {
    pub port: u16,
    pub http_port: Option<u16>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A certificate for 127.0.0.1 and localhost, written into `dir`.
pub fn write_certificate(dir: &std::path::Path, days: i64) -> (PathBuf, PathBuf, String) {
    let pair =
        wechat_api::tls::self_signed(&["localhost", "127.0.0.1"], time::Duration::days(days))
            .expect("self-signed certificate");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &pair.cert_pem).expect("write certificate");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    (cert, key, pair.cert_pem)
}

/// The environment of a valid test configuration, plus `overrides`.
pub fn test_env(dir: &std::path::Path, overrides: &[(&str, &str)]) -> HashMap<String, String> {
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
    env.insert(
        "TLS_CERT_PATH".into(),
        dir.join("server.crt").display().to_string(),
    );
    env.insert(
        "TLS_KEY_PATH".into(),
        dir.join("server.key").display().to_string(),
    );
    env.insert("DATA_DIR".into(), dir.join("data").display().to_string());
    env.insert(
        "UPLOAD_DIR".into(),
        dir.join("uploads").display().to_string(),
    );
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 365);
    let sources = Sources {
        env: test_env(dir.path(), overrides),
        ..Sources::default()
    };
    let (config, _) = config::load(&sources).expect("test configuration is valid");
    let app = Application::build(config)
        .await
        .expect("application starts");
    let port = app.port();
    let http_port = app.http_port();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("PEM"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    TestApp {
        port,
        http_port,
        client,
        dir,
        shutdown,
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the application like SIGTERM and waits for it to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        // Close our keep-alive connections first: the drain waits for open ones.
        drop(self.client);
        self.shutdown.cancel();
        self.server.await.expect("server task")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }

    /// The value of one sample line in `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

/// A signed callback: the query string and the envelope body.
pub struct Signed {
    pub query: String,
    pub body: String,
}

pub fn query(signature: &str, timestamp: &str, nonce: &str, echostr: Option<&str>) -> String {
    let mut pairs = vec![
        ("msg_signature", signature),
        ("timestamp", timestamp),
        ("nonce", nonce),
    ];
    if let Some(echostr) = echostr {
        pairs.push(("echostr", echostr));
    }
    serde_urlencoded::to_string(pairs).expect("query")
}

/// Encrypts `xml` for `receive_id` with `key` and signs it with `token`.
pub fn sign_post(token: &str, key: &str, receive_id: &str, xml: &str) -> Signed {
    let key = AesKey::parse(key).expect("key");
    let encrypted = crypto::encrypt(&key, xml.as_bytes(), receive_id.as_bytes());
    sign_envelope(token, &encrypted)
}

/// Signs an already-encrypted `Encrypt` value and wraps it in an envelope.
pub fn sign_envelope(token: &str, encrypted: &str) -> Signed {
    let timestamp = "1409659813";
    let nonce = rand::random::<u32>().to_string();
    let signature = crypto::sign(token, timestamp, &nonce, encrypted);
    Signed {
        query: query(signature.as_str(), timestamp, &nonce, None),
        body: format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID>1000002</AgentID></xml>"),
    }
}

pub fn text_message(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
    )
}
