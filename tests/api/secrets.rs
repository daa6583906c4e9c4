//! No secret in any output: a whole session of the real binary with every secret
//! set to a distinctive value, every output collected (the process's stdout and
//! stderr, every HTTP answer with its headers, every forwarded webhook, every
//! email, every request the fake WeCom API got, the other subcommands' output),
//! and none of it may show more of a secret than the short prefix SPEC §2 allows.
//!
//! Deliberately not searched: the places a secret must go. `gettoken`'s
//! `corpsecret`, the `access_token` parameter of WeCom calls and the SMTP `AUTH`
//! line are asserted to carry the right values instead, which also proves the
//! secrets were in use during the session.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::fakes::{FakeWeCom, ForwardProxy, ForwardReceiver};
use crate::helpers::*;
use crate::smtp::SmtpSink;

// Random letters and digits: any run of them in an output is a leak, not chance.
const APP_SECRET: &str = "XAanm3MN1OGXa9Mruhq3WzF6xzqU6eCt6fC4DEfS";
const KF_SECRET: &str = "rTP72bkS4R83t87iCXmbG9qBy5N5TBFOYknXSWUC";
const APP_TOKEN: &str = "1cTi7msaLqUDCQHefSLzWPVm";
const KF_TOKEN: &str = "nEoPgj5hoI6IqFKBnagxwhFB";
const APP_KEY: &str = "1jDomvzUzmlVbgc7s61bu6tNk26EmO1cFrRsvuFpi2Q";
const KF_KEY: &str = "tlk5maaXL8t769780ikTCemNnXCoShJoJipA8BUcVfw";
const ADMIN: &str = "NAuPlexjST1puhZojZpr8XqNGu2gWzq9";
const FORWARD_SECRET: &str = "PYFGKLcXo89pkxK1UuVLNGubiMiK2d9o";
const SMTP_PASS: &str = "sVrktBfSiBPFuSsVkus25HIQBMQy";
/// The password inside `DATABASE_URL`: what makes that URL a secret. (The test
/// cluster trusts every local connection, so any password opens it.)
const DB_PASSWORD: &str = "pGw8Zr3Kq7Xm2Lv9Tn4Hb6Jd";
const SEND: &str = "Sq4vKw9RtY2pLm7Nx3Bc8Hj5";
/// The password inside `WECOM_PROXY_URL`: every WeCom call goes through a proxy.
const PROXY_PASSWORD: &str = "Wv3nQ8xLp2Rk7Zt5Mc9Bj4Hs";
const BOT_TOKEN: &str = "Vh3mQx8ZkT2pWn7Rb5Lc9Yd4";
const BOT_KEY: &str = "d2VjaGF0LWFwaSBhaWJvdCBzZWNyZXRzIHRlc3QhISE";
const BOT_SECRET: &str = "Kc7Xw3Rm9Tq5Zp2Nl8Hb4Vj6";
const SMTP_USER: &str = "alerts@example.test";
/// Every access token the fake WeCom API issues is this, `-`, a number.
const ACCESS_TOKEN: &str = "5Cz25vBT6meUE4iFysYw732mtL";

/// At most this many leading characters of a secret may be shown
/// (`Secret::redacted` shows 3).
const ALLOWED_PREFIX: usize = 5;
/// No run of this many characters from anywhere in a secret may appear.
const WINDOW: usize = 8;

/// A value that must not appear, under the name a failure reports.
struct Needle {
    name: String,
    value: String,
    /// Search prefixes and runs too, not only the whole value (off for hex,
    /// whose short runs occur by chance in signatures).
    partial: bool,
}

fn needle(name: &str, value: &str) -> Needle {
    Needle { name: name.to_owned(), value: value.to_owned(), partial: true }
}

/// The session's value of each secret variable.
const SECRET_VALUES: &[(&str, &str)] = &[
    ("WECOM_SECRET", APP_SECRET),
    ("WECOM_KF_SECRET", KF_SECRET),
    ("WECOM_TOKEN", APP_TOKEN),
    ("WECOM_KF_TOKEN", KF_TOKEN),
    ("WECOM_ENCODING_AES_KEY", APP_KEY),
    ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
    ("ADMIN_TOKEN", ADMIN),
    ("FORWARD_SECRET", FORWARD_SECRET),
    ("SMTP_PASS", SMTP_PASS),
    ("DATABASE_URL", DB_PASSWORD),
    ("SEND_TOKEN", SEND),
    ("WECOM_PROXY_URL", PROXY_PASSWORD),
    ("AIBOT_TOKEN", BOT_TOKEN),
    ("AIBOT_ENCODING_AES_KEY", BOT_KEY),
    ("AIBOT_SECRET", BOT_SECRET),
];

/// Every secret of the session, and the AES keys also as the bytes they decode to.
/// Which variables are secret comes from the configuration's table: a new secret
/// variable fails here until the session gives it a distinctive value.
fn session_secrets() -> Vec<Needle> {
    let mut needles: Vec<Needle> = wechat_api::testing::config::VARIABLES
        .iter()
        .filter(|v| v.secret)
        .map(|v| {
            let value = SECRET_VALUES.iter().find(|(name, _)| *name == v.name).map(|(_, value)| *value);
            needle(
                v.name,
                value.unwrap_or_else(|| panic!("give the secret variable {} a value in SECRET_VALUES", v.name)),
            )
        })
        .collect();
    needles.push(needle("the access token", ACCESS_TOKEN));
    for (name, key) in [
        ("WECOM_ENCODING_AES_KEY", APP_KEY),
        ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
        ("AIBOT_ENCODING_AES_KEY", BOT_KEY),
    ] {
        let bytes = base64::engine::general_purpose::STANDARD.decode(format!("{key}=")).expect("a canonical key");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        needles.push(Needle { name: format!("{name} as hex bytes"), value: hex, partial: false });
    }
    needles
}

/// What of `needle` `text` shows beyond the allowed prefix, if anything.
fn exposure(needle: &Needle, text: &str) -> Option<String> {
    if text.contains(&needle.value) {
        return Some("the whole value".into());
    }
    if !needle.partial {
        return None;
    }
    let chars: Vec<char> = needle.value.chars().collect();
    if chars.len() > ALLOWED_PREFIX {
        let prefix: String = chars[..=ALLOWED_PREFIX].iter().collect();
        if text.contains(&prefix) {
            return Some(format!("a prefix longer than {ALLOWED_PREFIX} characters ({prefix:?})"));
        }
    }
    chars
        .windows(WINDOW)
        .map(|w| w.iter().collect::<String>())
        .find(|run| text.contains(run))
        .map(|run| format!("{WINDOW} characters of it ({run:?})"))
}

/// Everything the session produced, by where it came from.
#[derive(Default)]
struct Evidence {
    outputs: Vec<(String, String)>,
}

impl Evidence {
    fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.outputs.push((source.into(), text.into()));
    }

    fn process(&mut self, label: &str, output: &Output) {
        self.add(format!("{label}: stdout"), String::from_utf8_lossy(&output.stdout));
        self.add(format!("{label}: stderr"), String::from_utf8_lossy(&output.stderr));
    }

    /// Sends `request`, keeps the status, every header and the body; returns
    /// the status and the body.
    async fn http(&mut self, label: &str, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request.send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let status = response.status().as_u16();
        let mut text = format!("HTTP {status}\n");
        for (name, value) in response.headers() {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        let body = response.text().await.unwrap_or_else(|e| panic!("{label}: body: {e}"));
        text.push('\n');
        text.push_str(&body);
        self.add(format!("HTTP {label}"), text);
        (status, body)
    }

    /// One line per exposure: which secret, how much of it, where, and the line.
    fn leaks(&self, needles: &[Needle]) -> Vec<String> {
        let mut found = Vec::new();
        for needle in needles {
            for (source, text) in &self.outputs {
                if let Some(what) = exposure(needle, text) {
                    let line = text.lines().find(|l| exposure(needle, l).is_some()).unwrap_or_default();
                    found.push(format!("{}: {what} in {source}: {line}", needle.name));
                }
            }
        }
        found
    }

    fn total_len(&self) -> usize {
        self.outputs.iter().map(|(_, text)| text.len()).sum()
    }
}

/// Runs `command` to completion off the async workers (it may call back into
/// servers that run on them).
async fn finish(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs")).await.expect("process thread")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A signed URL verification query for `token` / `key`, with the echo it must answer.
fn verification(token: &str, key: &str) -> (String, String) {
    let echo = format!("echo{}", rand::random::<u32>());
    let key = wechat_api::testing::crypto::AesKey::parse(key).expect("key");
    let echostr = wechat_api::testing::crypto::encrypt(&key, echo.as_bytes(), CORP_ID.as_bytes());
    let nonce = rand::random::<u32>().to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let signature = wechat_api::testing::crypto::sign(token, &now, &nonce, &echostr);
    (query(signature.as_str(), &now, &nonce, Some(&echostr)), echo)
}

fn kf_notice(event_token: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[{event_token}]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>",
        now()
    )
}

struct Session {
    wecom: FakeWeCom,
    /// Every WeCom call goes through it (`WECOM_PROXY_URL`, with a password).
    _proxy: ForwardProxy,
    receiver: ForwardReceiver,
    sink: SmtpSink,
    env: HashMap<String, String>,
    dir: tempfile::TempDir,
}

impl Session {
    async fn start() -> Self {
        let wecom = FakeWeCom::start().await;
        wecom.issue_tokens_as(ACCESS_TOKEN);
        let receiver = ForwardReceiver::start_with_secret(FORWARD_SECRET).await;
        let sink = SmtpSink::start().await;
        let proxy = ForwardProxy::start("egress", PROXY_PASSWORD).await;
        let proxy_url = proxy.url(&format!("egress:{PROXY_PASSWORD}@"));
        let dir = tempfile::tempdir().expect("dir");
        write_certificate(dir.path(), 365);
        let smtp_port = sink.port.to_string();
        let mut env = test_env(
            dir.path(),
            &[
                ("WECOM_TOKEN", APP_TOKEN),
                ("WECOM_ENCODING_AES_KEY", APP_KEY),
                ("WECOM_AGENT_ID", "1000002"),
                ("WECOM_SECRET", APP_SECRET),
                ("WECOM_KF_SECRET", KF_SECRET),
                ("WECOM_KF_TOKEN", KF_TOKEN),
                ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
                ("WECOM_API_BASE_URL", &wecom.base_url),
                ("WECOM_PROXY_URL", &proxy_url),
                ("ADMIN_TOKEN", ADMIN),
                ("SEND_TOKEN", SEND),
                ("AIBOT_TOKEN", BOT_TOKEN),
                ("AIBOT_ENCODING_AES_KEY", BOT_KEY),
                ("FORWARD_URL", &receiver.url),
                ("FORWARD_SECRET", FORWARD_SECRET),
                ("ALERT_EMAIL_ENABLED", "true"),
                ("SMTP_SERVER", "127.0.0.1"),
                ("SMTP_PORT", &smtp_port),
                ("SMTP_TLS", "none"),
                ("SMTP_USER", SMTP_USER),
                ("SMTP_PASS", SMTP_PASS),
                ("ALERT_EMAIL_FROM", "wechat-api@example.test"),
                ("ALERT_EMAIL_TO", "oncall@example.test"),
                ("SUPERVISOR_INTERVAL_SECS", "1"),
                ("ALERT_GROUP_WAIT_SECS", "0"),
            ],
        );
        // The session runs on PostgreSQL, so DATABASE_URL and its password are in play.
        if let Some(url) = crate::postgres::fresh_database().await {
            let url = url.replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1);
            env.insert("DATABASE_URL".into(), url);
        }
        Self { wecom, _proxy: proxy, receiver, sink, env, dir }
    }

    /// The binary with the session's configuration and `HTTPS_PORT=port`.
    fn command(&self, port: u16, args: &[&str]) -> Command {
        let mut command = wechat_api(self.dir.path());
        command.args(args).envs(&self.env).env("HTTPS_PORT", port.to_string());
        command
    }

    /// What the fake WeCom API was sent, minus the two parameters that must carry
    /// a secret, which are checked here instead.
    fn wecom_requests(&self, evidence: &mut Evidence) {
        let mut secrets_used = Vec::new();
        for (i, mut call) in self.wecom.all_calls().into_iter().enumerate() {
            if let Some(secret) = call.query.remove("corpsecret") {
                assert_eq!(call.api, "gettoken", "corpsecret goes to gettoken only");
                // An empty one is the egress probe (`diagnose`), which WeCom refuses naming the IP.
                assert!([APP_SECRET, KF_SECRET, ""].contains(&secret.as_str()), "gettoken with an unknown Secret");
                secrets_used.push(secret);
            }
            if let Some(token) = call.query.remove("access_token") {
                assert!(token.starts_with(&format!("{ACCESS_TOKEN}-")), "{}: access_token {token:?}", call.api);
            }
            let headers: Vec<String> = call.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            evidence.add(
                format!("WeCom request {i} ({})", call.api),
                format!("{:?}\n{}\n{}", call.query, headers.join("\n"), call.body),
            );
        }
        assert!(secrets_used.iter().any(|s| s == APP_SECRET) && secrets_used.iter().any(|s| s == KF_SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_shows_no_secret_in_any_output() {
    let session = Session::start().await;
    let (wecom, receiver, sink) = (&session.wecom, &session.receiver, &session.sink);
    let mut evidence = Evidence::default();
    receiver.fail_first(1);
    receiver.reply_with("收到");

    let mut service = Running::start(session.command(0, &["serve"]));
    let mut service_output = tokio::task::block_in_place(|| service.read_until(|l| l.contains("wechat-api listening")));
    let port = listening_port(service_output.last().expect("a line"));
    wechat_api::testing::tls::install_crypto_provider();
    let cert = std::fs::read(session.dir.path().join("server.crt")).expect("certificate");
    let client = client_trusting(&cert, Duration::from_secs(10));
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    const CALLBACK: &str = "/api/v1/wecom/callback";

    // Callbacks: URL verification on both Tokens, messages, a kf notice, refusals.
    for (label, token, key) in [("app", APP_TOKEN, APP_KEY), ("kf", KF_TOKEN, KF_KEY)] {
        let (query, echo) = verification(token, key);
        let answer = evidence
            .http(&format!("URL verification ({label})"), client.get(url(&format!("{CALLBACK}?{query}"))))
            .await;
        assert_eq!(answer, (200, echo));
    }
    for (msg_id, content) in [(1, "hello"), (2, "帮助")] {
        let signed = sign_post(APP_TOKEN, APP_KEY, CORP_ID, &text_message(content, msg_id));
        let request = client.post(url(&format!("{CALLBACK}?{}", signed.query))).body(signed.body);
        assert_eq!(evidence.http(&format!("app message {msg_id}"), request).await.0, 200);
    }
    wecom.answer_once(
        "kf/sync_msg",
        json!({"errcode": 0, "errmsg": "ok", "next_cursor": "C1", "has_more": 0, "msg_list": [
            {"msgid": "kf1", "open_kfid": "wkA", "external_userid": "wmCUSTOMER", "send_time": now() + 5,
             "origin": 3, "msgtype": "text", "text": {"content": "帮助"}}]}),
    );
    let signed = sign_post(KF_TOKEN, KF_KEY, CORP_ID, &kf_notice("EVENTTOKEN1"));
    let request = client.post(url(&format!("/wechat/callback?{}", signed.query))).body(signed.body);
    assert_eq!(evidence.http("kf notice", request).await, (200, "success".to_owned()));
    let forged = sign_post("WrongToken42", APP_KEY, CORP_ID, &text_message("forged", 3));
    let request = client.post(url(&format!("{CALLBACK}?{}", forged.query))).body(forged.body);
    assert_eq!(evidence.http("bad signature (POST)", request).await.0, 403);
    let (forged, _) = verification("WrongToken42", APP_KEY);
    assert_eq!(evidence.http("bad signature (GET)", client.get(url(&format!("{CALLBACK}?{forged}")))).await.0, 403);
    assert_eq!(evidence.http("missing parameters", client.post(url(CALLBACK)).body("<xml/>")).await.0, 400);

    // Handling: forwarded (the first attempt refused and retried), answered
    // through message/send and kf/send_msg with tokens from gettoken.
    let delivered = receiver.wait_for(3, Duration::from_secs(20)).await;
    wecom.wait_for_calls("message/send", 3).await;
    wecom.wait_for_calls("kf/send_msg", 2).await;

    // The read-only surface.
    for path in ["/api/health", "/health", "/api/health/live", "/metrics", "/", "/no/such/page"] {
        evidence.http(path, client.get(url(path))).await;
    }

    // Admin endpoints: refused without, with a wrong and with a nearly right bearer.
    let near_miss = format!("{}X", &ADMIN[..ADMIN.len() - 1]);
    let admin = [
        ("GET", "/api/test-wecom-connection", Value::Null, 200),
        ("GET", "/api/fetch-wecom-name/user_id/zhangsan", Value::Null, 200),
        ("POST", "/api/batch-fetch-wecom-names", json!({"id_type": "user_id", "ids": ["zhangsan", "wangwu"]}), 200),
        ("POST", "/api/alerts/test", Value::Null, 202),
    ];
    for (method, path, body, ok) in &admin {
        let request = |auth: Option<&str>| {
            let mut request = match *method {
                "GET" => client.get(url(path)),
                _ => client.post(url(path)).json(body),
            };
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request
        };
        let refused = [
            ("no bearer", None),
            ("wrong bearer", Some("Bearer not-the-admin-token".to_owned())),
            ("nearly right bearer", Some(format!("Bearer {near_miss}"))),
            ("right token, wrong scheme", Some(format!("Basic {ADMIN}"))),
        ];
        for (label, auth) in refused {
            let (status, _) = evidence.http(&format!("{path} with {label}"), request(auth.as_deref())).await;
            assert_eq!(status, 401, "{path} with {label}");
        }
        let (status, answer) = evidence.http(path, request(Some(&format!("Bearer {ADMIN}")))).await;
        assert_eq!(status, *ok, "{path}: {answer}");
    }
    sink.wait_for("[wechat-api TEST]", Duration::from_secs(10)).await;

    // The subcommands against the healthy service.
    for args in [&["diagnose"][..], &["diagnose", "--json"], &["healthcheck"], &["sign"]] {
        let output = finish(session.command(port, args)).await;
        evidence.process(&format!("wechat-api {} (healthy)", args.join(" ")), &output);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stdout));
    }
    let live = url("/api/health/live");
    let output = finish(session.command(port, &["healthcheck", "--url", &live])).await;
    evidence.process("wechat-api healthcheck --url", &output);
    let output = finish(session.command(port, &["sign", "--url", &url(CALLBACK), "--text", "签名"])).await;
    evidence.process("wechat-api sign --url", &output);

    // WeCom turns against us: a wrong Secret (40001) for the app, an untrusted IP
    // (60020) for kf. Tokens are dropped on 42001, so the refusals reach the
    // service's token caches, its checks, its emails and its admin answers.
    wecom.refuse_secret(
        APP_SECRET,
        Some(json!({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest, more info at https://open.work.weixin.qq.com/devtool/query?e=40001"})),
    );
    wecom.refuse_secret(
        KF_SECRET,
        Some(json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 198.51.100.23, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"})),
    );
    let send = client
        .post(url("/api/v1/messages"))
        .header("Authorization", format!("Bearer {SEND}"))
        .json(&json!({"channel": "app", "to": "lisi", "text": "**hello** from the send API"}));
    let (status, answer) = evidence.http("send API (refused Secret)", send).await;
    assert_eq!(status, 202, "{answer}");
    let wrong = client.post(url("/api/v1/messages")).header("Authorization", format!("Bearer {ADMIN}"));
    assert_eq!(evidence.http("send API with the admin token", wrong).await.0, 401);
    let bearer = format!("Bearer {ADMIN}");
    let (status, report) = evidence
        .http(
            "test-wecom-connection (refused)",
            client.get(url("/api/test-wecom-connection")).header("Authorization", &bearer),
        )
        .await;
    assert_eq!(status, 200);
    assert!(report.contains("40001") && report.contains("198.51.100.23"), "{report}");
    wecom.answer_once("user/get", json!({"errcode": 42001, "errmsg": "access_token expired"}));
    let request = client.get(url("/api/fetch-wecom-name/user_id/lisi")).header("Authorization", &bearer);
    let (status, answer) = evidence.http("fetch-wecom-name (40001)", request).await;
    assert_eq!(status, 502, "{answer}");
    wecom.answer_once("kf/sync_msg", json!({"errcode": 42001, "errmsg": "access_token expired"}));
    let signed = sign_post(KF_TOKEN, KF_KEY, CORP_ID, &kf_notice("EVENTTOKEN2"));
    let request = client.post(url(&format!("/wechat/callback?{}", signed.query))).body(signed.body);
    assert_eq!(evidence.http("kf notice (60020)", request).await.0, 200);
    let app_alert = sink.wait_for("token:app", Duration::from_secs(20)).await;
    assert!(app_alert.text().contains("40001"), "{}", app_alert.data);
    let kf_alert = sink.wait_for("token:kf", Duration::from_secs(20)).await;
    assert!(kf_alert.text().contains("198.51.100.23"), "{}", kf_alert.data);
    for path in ["/api/health", "/metrics", "/"] {
        evidence.http(&format!("{path} (failing)"), client.get(url(path))).await;
    }
    for args in [&["diagnose"][..], &["diagnose", "--json"]] {
        let output = finish(session.command(port, args)).await;
        evidence.process(&format!("wechat-api {} (refused)", args.join(" ")), &output);
        assert_eq!(output.status.code(), Some(1), "{args:?} fails");
    }

    // SIGTERM: a clean stop, and the rest of the output.
    drop(client);
    let status = tokio::task::block_in_place(|| service.terminate());
    assert!(status.success(), "graceful stop exits 0, got {status}");
    service_output.extend(tokio::task::block_in_place(|| service.rest()));
    let log = service_output.join("\n");
    assert!(log.contains("admin request refused"), "{log}");
    assert!(log.contains("gettoken failed"), "{log}");
    evidence.add("wechat-api serve: stdout and stderr", log);

    for (i, delivery) in receiver.delivered().iter().enumerate() {
        assert!(delivery.signature_ok, "X-Signature is the HMAC under FORWARD_SECRET");
        let headers: Vec<String> = delivery.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        evidence.add(format!("forwarded webhook {i}"), format!("{}\n\n{}", headers.join("\n"), delivery.body));
    }
    assert!(delivered.len() >= 3);
    let mails = sink.received();
    assert!(mails.len() >= 3, "STARTED, TEST and the FIRING alerts");
    for (i, mail) in mails.iter().enumerate() {
        // Quoted-printable breaks long lines: search the text as read, too.
        evidence.add(format!("email {i}: {}", mail.subject()), mail.data.clone());
        evidence.add(format!("email {i} as read: {}", mail.subject()), mail.text());
    }
    let plain = format!("\0{SMTP_USER}\0{SMTP_PASS}");
    let login = format!("AUTH PLAIN {}", base64::engine::general_purpose::STANDARD.encode(plain));
    assert!(!sink.logins().is_empty() && sink.logins().iter().all(|l| *l == login), "{:?}", sink.logins());
    session.wecom_requests(&mut evidence);

    let needles = session_secrets();
    let leaks = evidence.leaks(&needles);
    assert!(
        leaks.is_empty(),
        "secrets in the output ({} outputs, {} bytes):\n{}",
        evidence.outputs.len(),
        evidence.total_len(),
        leaks.join("\n")
    );
}

/// Runs `serve` and `diagnose --json` on `env` (plus `args`) in `dir`; both must
/// refuse the configuration.
async fn refused_configuration(
    evidence: &mut Evidence,
    label: &str,
    dir: &std::path::Path,
    env: &HashMap<String, String>,
    args: &[&str],
) {
    for (command, code) in [("serve", 64), ("diagnose", 1)] {
        let mut process = wechat_api(dir);
        process.args(args).arg(command).envs(env);
        if command == "diagnose" {
            process.arg("--json");
        }
        let output = finish(process).await;
        evidence.process(&format!("{label}: wechat-api {command}"), &output);
        assert_eq!(output.status.code(), Some(code), "{label}: {command}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_never_echoes_a_secret() {
    let session = Session::start().await;
    let mut evidence = Evidence::default();
    let mut needles = session_secrets();
    let dir = session.dir.path();

    // Bad values next to good secrets.
    let mut env = session.env.clone();
    env.extend(
        [("HTTPS_PORT", "http"), ("SUPERVISOR_INTERVAL_SECS", "soon"), ("LOG_FORMAT", "xml")]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    refused_configuration(&mut evidence, "bad values beside secrets", dir, &env, &[]).await;

    // Malformed secrets: each named, none quoted.
    let malformed = [
        ("WECOM_TOKEN", "Wn4r8Hq2 Lz7Kc3Vb9Xm"),
        ("WECOM_KF_TOKEN", "Jd8sKq2Lm5Xp9Wz3Rt7Vb1Nc6Hg4Fy0Ae2Ui"),
        ("WECOM_ENCODING_AES_KEY", "Zq3Wp8Lk2Mx7Nv5Rb9Tc4Yh6Jd1Gf0Ss8Ae3Ui7Ow"),
        ("WECOM_KF_ENCODING_AES_KEY", "Hy6Tq1Wm8Lp3Zx7Kv2Rn9Bc5Jd4Gf0Sa8!e3Ui7OwQ"),
        // Short is only a warning (SPEC §2 sets no minimum); white space is refused.
        ("ADMIN_TOKEN", "Qm7Zk2Wx9Rp4Lt8Vn3Hs "),
        ("WECOM_SECRET", "Pv5Kd9Lw2Xq7Hm3Zr8Tn4Bj6Yc1Gs0 "),
        ("SMTP_PASS", " Ke2Wq7Zp4Lx9Rm3Tv8Hn5Bd1Jc6Gs"),
        ("FORWARD_SECRET", "Lp6Wz2Qk9Xm4Rv8Tn3Hb7Jd1Gc5Fs"),
        ("DATABASE_URL", "mysql://root:Mq3Zx8Kw2Lp7Rv5Tn6Hb@q9db7/w8x"),
        ("AIBOT_ENCODING_AES_KEY", "Ns5Kq8Wz3Lm7Xp2Rv9Tb4Hj6Gd1Fc0Ya8Ue3Io7!wQ"),
        ("AIBOT_SECRET", BOT_SECRET),
    ];
    let mut env = session.env.clone();
    for (name, value) in malformed {
        env.insert(name.to_owned(), value.to_owned());
        needles.push(needle(&format!("malformed {name}"), value.trim()));
    }
    env.remove("SMTP_SERVER");
    env.insert("FORWARD_URL".into(), "not a url".into());
    refused_configuration(&mut evidence, "malformed secrets", dir, &env, &[]).await;
    let stderr = &evidence.outputs.iter().rev().find(|(s, _)| s.ends_with("serve: stderr")).expect("serve output").1;
    for name in [
        "WECOM_TOKEN",
        "WECOM_KF_TOKEN",
        "WECOM_ENCODING_AES_KEY",
        "WECOM_KF_ENCODING_AES_KEY",
        "ADMIN_TOKEN",
        "WECOM_SECRET",
        "DATABASE_URL",
    ] {
        assert!(stderr.contains(&format!("configuration error: {name} ")), "{name} is named: {stderr}");
    }

    // An old alias beside the new name, with another value: refused before validation.
    let alias_secret = "Ue4Rk8Qz3Wp7Lm2Xv9Hn5Bc1Jd6Gt0";
    needles.push(needle("WEWORK_SECRET", alias_secret));
    let mut env = session.env.clone();
    env.insert("WEWORK_SECRET".into(), alias_secret.into());
    refused_configuration(&mut evidence, "conflicting alias", dir, &env, &[]).await;

    // Files whose broken line holds a secret: `.env` and the TOML file.
    let files = tempfile::tempdir().expect("dir");
    let dotenv_secret = "Rw3Kq8Zm2Xp7Lv5Hn9Tb4Jd1Gc6Fs";
    let toml_secret = "Ym5Wq2Kz8Xp3Lr7Hv4Tn9Bd6Jc1Gs";
    std::fs::write(files.path().join(".env"), format!("WECOM_CORP_ID={CORP_ID}\nWECOM_SECRET=\"{dotenv_secret}\n"))
        .expect(".env");
    let toml = files.path().join("wechat-api.toml");
    std::fs::write(&toml, format!("wecom_corp_id = \"{CORP_ID}\"\nwecom_kf_secret = \"{toml_secret}\\q\"\n"))
        .expect("toml");
    needles.push(needle("the secret on a broken .env line", dotenv_secret));
    needles.push(needle("the secret on a broken TOML line", toml_secret));
    let toml_path = toml.display().to_string();
    refused_configuration(&mut evidence, "broken files", files.path(), &HashMap::new(), &["--config", &toml_path])
        .await;
    let broken = &evidence.outputs.iter().rev().find(|(s, _)| s.ends_with("serve: stderr")).expect("serve output").1;
    assert!(broken.contains(".env: entry") && broken.contains("not valid TOML at line 2"), "{broken}");

    let leaks = evidence.leaks(&needles);
    assert!(leaks.is_empty(), "secrets in configuration errors:\n{}", leaks.join("\n"));
}

#[test]
fn the_search_finds_a_secret_whole_in_part_and_by_its_prefix_but_not_the_redacted_form() {
    let secret = needle("S", APP_SECRET);
    assert!(exposure(&secret, &format!("corpsecret={APP_SECRET}")).is_some());
    assert!(exposure(&secret, &format!("…{}…", &APP_SECRET[10..18])).is_some(), "a run from the middle");
    assert!(exposure(&secret, &format!("{}…", &APP_SECRET[..6])).is_some(), "a prefix too long");
    let redacted = wechat_api::testing::config::Secret::new(APP_SECRET).redacted();
    assert_eq!(exposure(&secret, &format!("WECOM_SECRET={redacted}")), None, "{redacted}");
}
