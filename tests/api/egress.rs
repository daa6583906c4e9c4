//! The egress IP WeCom sees (SPEC §14, issue 24), through the real service
//! against the fake WeCom, which names the caller's IP in every error answer as
//! WeCom does (`…, from ip: A.B.C.D, more info at …`): learned from any answer
//! or, when none names it, by one probe; a change mailed at once; 60020 parking
//! only that channel's outbox; every WeCom call through an explicit proxy, never
//! through the environment's; the proxy's password in no output.
//!
//! Durations (the probe period, the minute between a parked channel's trials)
//! run on the checks' clock, which the tests move ahead (`TestApp::clock`);
//! everything else runs for real.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fakes::{FakeWeCom, ForwardProxy, ForwardReceiver, DEFAULT_CALLER_IP};
use crate::helpers::*;
use crate::smtp::SmtpSink;

const SEND: &str = "send-token-0123456789abcdef";
const HR_CORP: &str = "wwhr0123456789abcd";
const HR_TOKEN: &str = "hrToken42";
const HR_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const PROXY_PASSWORD: &str = "Pr0xyPassw0rdXYZ";

/// The first result of check `name` in `report`, if any.
fn check<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["checks"][name].get(0)
}

fn egress_ip(report: &Value, channel: &str) -> Option<String> {
    check(report, &format!("egress:{channel}"))?["observedValue"].as_str().map(str::to_owned)
}

/// Probes are `gettoken` calls without a Secret.
fn probes(wecom: &FakeWeCom) -> usize {
    wecom.calls("gettoken").iter().filter(|c| c.query.get("corpsecret").is_some_and(String::is_empty)).count()
}

async fn post_send(app: &TestApp, body: Value) -> Value {
    let response =
        app.client.post(app.url("/api/v1/messages")).bearer_auth(SEND).json(&body).send().await.expect("send API");
    assert_eq!(response.status().as_u16(), 202);
    response.json().await.expect("JSON")
}

async fn send_status(app: &TestApp, id: &str) -> String {
    let answer: Value = app
        .client
        .get(app.url(&format!("/api/v1/messages/{id}")))
        .bearer_auth(SEND)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("JSON");
    answer["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_ip_is_learned_by_one_probe_when_no_answer_names_it() {
    let wecom = FakeWeCom::start().await;
    let app = spawn_app_with(&[("WECOM_API_BASE_URL", &wecom.base_url), ("SUPERVISOR_INTERVAL_SECS", "1")]).await;
    // A first round ran: no probe before EGRESS_CHECK_SECS (900) from start-up.
    let report = app.health_until("the egress check", |r| check(r, "egress:app").is_some()).await;
    assert_eq!(egress_ip(&report, "app"), None, "{report:#}");
    assert_eq!(probes(&wecom), 0);

    app.clock.advance(900);
    let report = app.health_until("the probed IP", |r| egress_ip(r, "app").is_some()).await;
    assert_eq!(egress_ip(&report, "app").as_deref(), Some(DEFAULT_CALLER_IP));
    assert_eq!(check(&report, "egress:app").expect("check")["status"], "pass");
    let probe = &wecom.calls("gettoken")[0];
    assert_eq!((probe.query["corpid"].as_str(), probe.query["corpsecret"].as_str()), (CORP_ID, ""));
    assert!(
        app.metrics()
            .await
            .contains(&format!("wechat_api_egress_ip_info{{channel=\"app\",ip=\"{DEFAULT_CALLER_IP}\"}} 1")),
        "the info series"
    );
    // One probe per channel per period, however many rounds: two more go by.
    let at = |r: &Value| check(r, "egress:app").map(|c| c["time"].clone());
    let first = at(&report);
    let later = app.health_until("a later round", |r| at(r) != first).await;
    app.health_until("one more round", |r| at(r) != at(&later)).await;
    let page = app.client.get(app.url("/")).send().await.expect("status page").text().await.expect("HTML");
    assert!(page.contains(DEFAULT_CALLER_IP), "the status page shows the IP");
    assert_eq!(probes(&wecom), 2, "app and kf each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_error_names_the_egress_ip_and_no_probe_is_made() {
    let wecom = FakeWeCom::start().await;
    wecom.refuse_secret("app-secret", Some(json!({"errcode": 40001, "errmsg": "invalid credential"})));
    wecom.set_caller_ip("198.51.100.23");
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", "app-secret"),
        ("SUPERVISOR_INTERVAL_SECS", "1"),
    ])
    .await;
    // The token check's gettoken is refused, naming the IP.
    let report = app.health_until("the IP of the refusal", |r| egress_ip(r, "app").is_some()).await;
    assert_eq!(egress_ip(&report, "app").as_deref(), Some("198.51.100.23"));
    assert_eq!(probes(&wecom), 0, "no probe: an answer named it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_egress_ip_is_mailed_at_once_with_both_ips_and_the_console_path() {
    let wecom = FakeWeCom::start().await;
    let sink = SmtpSink::start().await;
    let port = sink.port.to_string();
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("SEND_TOKEN", SEND),
        // One round an hour: the mail cannot come from the checks' three rounds.
        ("SUPERVISOR_INTERVAL_SECS", "3600"),
        ("ALERT_GROUP_WAIT_SECS", "3600"),
        ("ALERT_EMAIL_ENABLED", "true"),
        ("SMTP_SERVER", "127.0.0.1"),
        ("SMTP_PORT", &port),
        ("SMTP_TLS", "none"),
        ("ALERT_EMAIL_FROM", "wechat-api@example.test"),
        ("ALERT_EMAIL_TO", "oncall@example.test"),
    ])
    .await;
    // Member "ghost" does not exist: WeCom refuses each text, naming the IP.
    wecom.fail_api("message/send", Some(json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"})));
    post_send(&app, json!({"channel": "app", "to": "ghost", "text": "one"})).await;
    wecom.wait_for_calls("message/send", 1).await;
    wecom.set_caller_ip("198.51.100.9");
    post_send(&app, json!({"channel": "app", "to": "ghost", "text": "two"})).await;

    let mail = sink.wait_for("egress IP changed", Duration::from_secs(15)).await;
    // The subject as read: header folding undone.
    let unfolded = mail.data.replace("\r\n ", " ").replace("\n ", " ");
    let subject = unfolded.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned();
    assert!(subject.contains(DEFAULT_CALLER_IP) && subject.contains("198.51.100.9"), "{subject}");
    let body = decoded_body(&mail.data);
    assert!(body.contains("应用管理 → the app → 企业可信IP"), "{body}");
    assert!(
        body.contains(&format!("before, it saw {DEFAULT_CALLER_IP}")) && body.contains("calling from 198.51.100.9"),
        "{body}"
    );

    let metrics = app.metrics().await;
    assert!(metrics.contains("wechat_api_egress_ip_info{channel=\"app\",ip=\"198.51.100.9\"} 1"), "{metrics}");
    assert!(!metrics.contains(&format!("ip=\"{DEFAULT_CALLER_IP}\"")), "the old series is gone:\n{metrics}");
    assert_eq!(app.metric("wechat_api_egress_ip_changes_total{channel=\"app\"}").await, 1.0);
    assert_eq!(app.metric("wechat_api_egress_ip_changes_total{channel=\"kf\"}").await, 0.0);
}

/// A mail body as a person reads it: quoted-printable or base64 undone.
fn decoded_body(data: &str) -> String {
    use base64::Engine as _;
    let (head, body) = data.split_once("\r\n\r\n").or_else(|| data.split_once("\n\n")).unwrap_or(("", data));
    let head = head.to_ascii_lowercase();
    if head.contains("content-transfer-encoding: base64") {
        let joined: String = body.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD.decode(joined.trim_end_matches('.')).unwrap_or_default();
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    if head.contains("quoted-printable") {
        let joined = body.replace("=\r\n", "").replace("=\n", "");
        let mut bytes = Vec::new();
        let raw = joined.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'=' && i + 2 < raw.len() {
                if let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    bytes.push(byte);
                    i += 3;
                    continue;
                }
            }
            bytes.push(raw[i]);
            i += 1;
        }
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60020_parks_only_that_channel_one_trial_a_minute_and_it_resumes_by_itself_with_nothing_lost() {
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("wechat-api.toml");
    std::fs::write(
        &file,
        format!(
            "[channels.hr]\nkind = \"app\"\ncorp_id = \"{HR_CORP}\"\nagent_id = 1000005\nsecret = \"hr-secret\"\n\
             token = \"{HR_TOKEN}\"\nencoding_aes_key = \"{HR_KEY}\"\n"
        ),
    )
    .expect("config file");
    let file = file.display().to_string();
    let app = spawn_app_with(&[
        ("WECHAT_API_CONFIG", &file),
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("SEND_TOKEN", SEND),
        ("SUPERVISOR_INTERVAL_SECS", "1"),
    ])
    .await;
    // The app's IP is not among its trusted IPs; hr's is.
    wecom.distrust("app-secret", true);
    let first = post_send(&app, json!({"channel": "app", "to": "zhangsan", "text": "first"})).await;
    wecom.wait_for_calls("message/send", 1).await;
    let mut ids = vec![first["id"].as_str().expect("id").to_owned()];
    for text in ["second", "third"] {
        ids.push(
            post_send(&app, json!({"channel": "app", "to": "zhangsan", "text": text})).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let hr = post_send(&app, json!({"channel": "hr", "to": "lisi", "text": "hr goes on"})).await;
    let report = app
        .health_until("egress:app fails with the IP", |r| check(r, "egress:app").is_some_and(|c| c["status"] == "fail"))
        .await;
    let output = check(&report, "egress:app").expect("check")["output"].as_str().unwrap_or_default().to_owned();
    assert!(output.contains(&format!("add {DEFAULT_CALLER_IP}")) && output.contains("企业可信IP"), "{output}");
    assert_eq!(check(&report, "egress:hr").expect("hr")["status"], "pass");

    // 20 s pass on the checks' clock (5 s for real): the other channel goes on,
    // the parked one calls WeCom no more — no retry storm.
    let deadline = Instant::now() + Duration::from_secs(15);
    while wecom.calls_of("message/send", "hr-secret").is_empty() {
        assert!(Instant::now() < deadline, "hr was held up by app's 60020");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        app.clock.advance(1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(wecom.calls_of("message/send", "app-secret").len(), 1, "nothing more within 20 s of the 60020");
    assert_eq!(send_status(&app, hr["id"].as_str().expect("id")).await, "sent");
    for id in &ids {
        assert_eq!(send_status(&app, id).await, "queued", "parked, not failed");
    }

    // A minute after the 60020: one trial, still refused; then nothing again.
    app.clock.advance(41);
    let deadline = Instant::now() + Duration::from_secs(15);
    while wecom.calls_of("message/send", "app-secret").len() < 2 {
        assert!(Instant::now() < deadline, "no trial a minute after the 60020");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        app.clock.advance(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(wecom.calls_of("message/send", "app-secret").len(), 2, "one trial a minute");

    // The operator adds the IP: the next trial gets through and everything follows.
    wecom.distrust("app-secret", false);
    app.clock.advance(60);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut sent = Vec::new();
        for id in &ids {
            sent.push(send_status(&app, id).await);
        }
        if sent.iter().all(|s| s == "sent") {
            break;
        }
        assert!(Instant::now() < deadline, "not resumed: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let texts: Vec<String> = wecom
        .calls_of("message/send", "app-secret")
        .iter()
        .map(|c| c.body["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    for text in ["first", "second", "third"] {
        assert!(texts.iter().any(|t| t == text), "{text} in {texts:?}");
    }
    app.health_until("egress:app passes again", |r| check(r, "egress:app").is_some_and(|c| c["status"] == "pass"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wecom_call_goes_through_the_proxy_with_its_credentials_and_the_forward_does_not() {
    let wecom = FakeWeCom::start().await;
    let receiver = ForwardReceiver::start().await;
    let proxy = ForwardProxy::start("egress", PROXY_PASSWORD).await;
    let proxy_url = proxy.url(&format!("egress:{PROXY_PASSWORD}@"));
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("WECOM_PROXY_URL", &proxy_url),
        ("FORWARD_URL", &receiver.url),
        ("FORWARD_SECRET", &receiver.secret),
        ("SUPERVISOR_INTERVAL_SECS", "1"),
    ])
    .await;
    // `帮助`: a help reply through message/send (and a token), a forward to the receiver.
    assert_eq!(app.post_text("帮助", 24_001).await, 200);
    wecom.wait_for_calls("message/send", 1).await;
    receiver.wait_for(1, Duration::from_secs(15)).await;
    app.clock.advance(900);
    app.health_until("the probe", |r| egress_ip(r, "app").is_some()).await;

    let seen = proxy.seen();
    let calls = wecom.all_calls();
    assert!(calls.len() >= 3, "{calls:?}");
    assert!(seen.iter().all(|p| p.authorized), "{seen:?}");
    for call in &calls {
        assert!(call.headers.iter().any(|(k, v)| k == "via" && v.contains("test-proxy")), "{} went direct", call.api);
    }
    let through: Vec<&str> =
        seen.iter().filter(|p| p.target.starts_with(&wecom.base_url)).map(|p| p.target.as_str()).collect();
    for api in ["gettoken", "message/send"] {
        assert!(through.iter().any(|t| t.contains(&format!("/cgi-bin/{api}"))), "{api}: {through:?}");
    }
    assert!(!seen.iter().any(|p| p.target.starts_with(&receiver.url)), "the forward went direct: {seen:?}");

    // The password is in no view.
    for path in ["/api/health", "/metrics", "/"] {
        let text = app.client.get(app.url(path)).send().await.expect("view").text().await.expect("text");
        assert!(!text.contains(PROXY_PASSWORD), "{path} shows the proxy password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_the_credentials_is_an_error_that_does_not_show_the_password() {
    let wecom = FakeWeCom::start().await;
    let proxy = ForwardProxy::start("egress", "the-right-one").await;
    let proxy_url = proxy.url(&format!("egress:{PROXY_PASSWORD}@"));
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_PROXY_URL", &proxy_url),
        ("SUPERVISOR_INTERVAL_SECS", "1"),
    ])
    .await;
    let report = app
        .health_until("the token check fails", |r| check(r, "token:app").is_some_and(|c| c["status"] == "fail"))
        .await;
    assert!(!proxy.seen().is_empty() && wecom.all_calls().is_empty(), "refused at the proxy");
    assert!(!report.to_string().contains(PROXY_PASSWORD), "{report:#}");
}

/// `diagnose --json` with `env`: the exit code, the report and the whole output.
fn diagnose(dir: &std::path::Path, env: HashMap<String, String>) -> (Option<i32>, Value, String) {
    let out = wechat_api(dir).args(["diagnose", "--json"]).envs(env).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code(), report, text)
}

fn finding<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|f| f["check"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_prints_the_egress_ip_and_the_proxy_without_its_password_and_ignores_the_ambient_proxy() {
    let wecom = FakeWeCom::start().await;
    let ambient = ForwardProxy::start("nobody", "nothing").await;
    let configured = ForwardProxy::start("egress", PROXY_PASSWORD).await;
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 365);
    let ambient_url = ambient.url("");
    let mut env = test_env(dir.path(), &[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_SECRET", "app-secret")]);
    for variable in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        env.insert(variable.to_owned(), ambient_url.clone());
    }

    let (_, report, _) = tokio::task::spawn_blocking({
        let (dir, env) = (dir.path().to_owned(), env.clone());
        move || diagnose(&dir, env)
    })
    .await
    .expect("diagnose");
    let egress = finding(&report, "egress app");
    assert_eq!(egress["ok"], true, "{egress}");
    let detail = egress["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(DEFAULT_CALLER_IP) && detail.contains("direct"), "{detail}");
    let to_wecom = |proxy: &ForwardProxy| proxy.seen().into_iter().filter(|p| p.target.contains("/cgi-bin/")).count();
    assert_eq!(to_wecom(&ambient), 0, "HTTP_PROXY is not used for WeCom: {:?}", ambient.seen());
    assert!(!wecom.calls("gettoken").is_empty());

    env.insert("WECOM_PROXY_URL".into(), configured.url(&format!("egress:{PROXY_PASSWORD}@")));
    let (_, report, text) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || diagnose(&dir, env)
    })
    .await
    .expect("diagnose");
    let detail = finding(&report, "egress app")["detail"].as_str().unwrap_or_default().to_owned();
    let shown = format!("http://egress:***@127.0.0.1:{}", configured.port);
    assert!(detail.contains(DEFAULT_CALLER_IP) && detail.contains(&shown), "{detail}");
    assert!(!text.contains(PROXY_PASSWORD), "the password in diagnose's output:\n{text}");
    assert!(configured.seen().iter().any(|p| p.authorized && p.target.contains("/cgi-bin/gettoken")));
    assert_eq!(to_wecom(&ambient), 0);
}
