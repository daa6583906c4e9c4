//! Self-monitoring: checks, alert emails through a real SMTP server, liveness,
//! certificate expiry and hot reload, and `/metrics` as Prometheus reads it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fakes::FakeWeCom;
use crate::helpers::*;
use crate::smtp::SmtpSink;

fn alerting(sink: &SmtpSink) -> Vec<(&'static str, String)> {
    vec![
        ("SUPERVISOR_INTERVAL_SECS", "1".into()),
        ("ALERT_GROUP_WAIT_SECS", "0".into()),
        ("ALERT_EMAIL_ENABLED", "true".into()),
        ("SMTP_SERVER", "127.0.0.1".into()),
        ("SMTP_PORT", sink.port.to_string()),
        ("SMTP_TLS", "none".into()),
        ("ALERT_EMAIL_FROM", "wechat-api@example.test".into()),
        ("ALERT_EMAIL_TO", "oncall@example.test, backup@example.test".into()),
    ]
}

async fn spawn_monitored(sink: &SmtpSink, extra: &[(&str, String)]) -> TestApp {
    let mut settings = alerting(sink);
    settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(&pairs).await
}

async fn health(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/api/health")).send().await.expect("health");
    (response.status().as_u16(), response.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_upload_dir_fires_once_with_the_fix_and_resolves_once() {
    let sink = SmtpSink::start().await;
    let root = tempfile::tempdir().expect("dir");
    // A file where the directory should be: not writable for any uid, root included.
    let blocker = root.path().join("uploadall");
    std::fs::write(&blocker, "not a directory").expect("blocker");
    let upload_dir = blocker.join("uploads").display().to_string();
    let app = spawn_monitored(&sink, &[("UPLOAD_DIR", upload_dir)]).await;

    let firing = sink.wait_for("[wechat-api FIRING] uploads:writable", Duration::from_secs(20)).await;
    assert!(firing.text().contains("chown -R 1001:1001"), "{}", firing.data);
    assert!(firing.text().contains("All checks:"), "{}", firing.data);
    assert!(firing.text().contains("To: oncall@example.test, backup@example.test"), "{}", firing.data);
    let (status, body) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["uploads:writable"][0]["status"], "fail");
    assert!(body["checks"]["uploads:writable"][0]["output"]
        .as_str()
        .expect("output")
        .contains("cannot create UPLOAD_DIR"));
    let metrics = app.metrics().await;
    assert!(metrics.contains("wechat_api_check_status{check=\"uploads:writable\"} 2"), "{metrics}");

    // Fixed: one RESOLVED, and no second FIRING.
    std::fs::remove_file(&blocker).expect("remove blocker");
    sink.wait_for("[wechat-api RESOLVED] uploads:writable", Duration::from_secs(20)).await;
    app.check_becomes("uploads:writable", "pass").await;
    let firing_mails = sink.received().iter().filter(|m| m.subject().contains("FIRING")).count();
    assert_eq!(firing_mails, 1);
    assert_eq!(health(&app).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_while_a_check_fires_delays_the_email_but_not_the_callbacks() {
    let mut sink = SmtpSink::start().await;
    sink.stop();
    let root = tempfile::tempdir().expect("dir");
    let blocker = root.path().join("file");
    std::fs::write(&blocker, "x").expect("blocker");
    let app = spawn_monitored(&sink, &[("UPLOAD_DIR", blocker.join("u").display().to_string())]).await;
    app.check_becomes("alerts:email", "warn").await;
    for i in 0..20 {
        assert_eq!(app.post_text("still answering", 5_000 + i).await, 200, "callbacks go on while SMTP is down");
    }
    assert!(sink.received().is_empty());
    sink.resume().await;
    let mail = sink.wait_for("uploads:writable", Duration::from_secs(40)).await;
    assert!(mail.subject().contains("FIRING"));
    assert!(app.metrics().await.contains("wechat_api_alerts_total{outcome=\"failed\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errcode_60020_fails_the_token_check_with_the_ip_in_health_and_email() {
    let sink = SmtpSink::start().await;
    let wecom = FakeWeCom::start().await;
    wecom.refuse_secret(
        "app-secret",
        Some(json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 192.0.2.77, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"})),
    );
    let app = spawn_monitored(
        &sink,
        &[("WECOM_API_BASE_URL", wecom.base_url.clone()), ("WECOM_SECRET", "app-secret".into())],
    )
    .await;
    let check = app.check_becomes("token:app", "fail").await;
    assert!(check["output"].as_str().expect("output").contains("add 192.0.2.77 to the app's trusted IPs"), "{check}");
    let mail = sink.wait_for("[wechat-api FIRING] token:app", Duration::from_secs(20)).await;
    assert!(mail.text().contains("192.0.2.77"), "{}", mail.data);
    assert!(!mail.text().contains("app-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_supervisor_fails_liveness_but_not_before() {
    let app = spawn_app_with(&[("SUPERVISOR_INTERVAL_SECS", "1")]).await;
    let live = app.client.get(app.url("/api/health/live")).send().await.expect("live");
    assert_eq!(live.status(), 200);
    assert!(app.liveness.inject_fault("supervisor"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = app.client.get(app.url("/api/health/live")).send().await.expect("live");
        if live.status() == 503 {
            let body: Value = live.json().await.expect("JSON");
            assert!(body["output"].as_str().expect("output").contains("supervisor"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "liveness never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_expiry_fails_and_new_files_are_served_without_a_restart() {
    let app = spawn_app_with_certificate(2, &[("SUPERVISOR_INTERVAL_SECS", "1")]).await;
    let (port, dir) = (app.port, app.dir.path().to_owned());
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    let old_pem = std::fs::read_to_string(&cert_path).expect("certificate");
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    };
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let old_client = trusting(&old_pem);
    let body: Value = old_client.get(url("/api/health")).send().await.expect("health").json().await.expect("JSON");
    assert_eq!(body["checks"]["tls:certificate"][0]["status"], "fail");
    let metrics = old_client.get(url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let not_after = wechat_api::testing::tls::load_certificate(&cert_path, &key_path).expect("cert").not_after;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = metrics;
    while !metrics.contains(&format!("wechat_api_tls_certificate_expiry_timestamp_seconds {not_after}")) {
        assert!(Instant::now() < deadline, "expiry metric missing: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = old_client.get(url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    }

    // Renew the way certbot does: new files, renamed into place.
    let fresh =
        wechat_api::testing::tls::self_signed(&["localhost", "127.0.0.1"], time::Duration::days(90)).expect("fresh");
    std::fs::write(dir.join("new.crt"), &fresh.cert_pem).expect("write");
    std::fs::write(dir.join("new.key"), &fresh.key_pem).expect("write");
    std::fs::rename(dir.join("new.key"), &key_path).expect("rename");
    std::fs::rename(dir.join("new.crt"), &cert_path).expect("rename");
    let new_client = trusting(&fresh.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = new_client.get(url("/api/health")).send().await {
            let body: Value = response.json().await.expect("JSON");
            if body["checks"]["tls:certificate"][0]["status"] == "pass" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new connection (a new handshake) gets the new certificate, which a client
    // trusting only the old one refuses.
    assert!(
        trusting(&old_pem).get(url("/api/health")).send().await.is_err(),
        "the old certificate is no longer served"
    );
    drop((old_client, new_client));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_page_again_for_a_check_already_firing() {
    let sink = SmtpSink::start().await;
    let root = tempfile::tempdir().expect("dir");
    let blocker = root.path().join("file");
    std::fs::write(&blocker, "x").expect("blocker");
    let app = spawn_monitored(&sink, &[("UPLOAD_DIR", blocker.join("u").display().to_string())]).await;
    sink.wait_for("[wechat-api FIRING] uploads:writable", Duration::from_secs(20)).await;
    let started = sink.received().iter().filter(|m| m.subject().contains("STARTED")).count();
    assert_eq!(started, 1, "the first start is announced");

    let app = app.restart().await;
    // Wait for three supervisor rounds after the restart (each stamps the check anew),
    // all still failing: enough for a wrongly reset state machine to fire again.
    let mut rounds = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rounds.len() < 4 {
        let (status, body) = health(&app).await;
        if let Some(time) = body["checks"]["uploads:writable"][0]["time"].as_str() {
            assert_eq!(status, 503, "still failing");
            rounds.insert(time.to_owned());
        }
        assert!(Instant::now() < deadline, "the supervisor stopped running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subjects: Vec<String> = sink.received().iter().map(|m| m.subject()).collect();
    assert_eq!(subjects.iter().filter(|s| s.contains("FIRING")).count(), 1, "{subjects:?}");
    assert_eq!(
        subjects.iter().filter(|s| s.contains("STARTED")).count(),
        1,
        "restart notes are rate-limited: {subjects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_url_is_fetched_and_a_test_alert_reaches_the_smtp_server() {
    let sink = SmtpSink::start().await;
    let outside = crate::fakes::ForwardReceiver::start().await;
    let app = spawn_monitored(
        &sink,
        &[("HEARTBEAT_URL", outside.url.clone()), ("ADMIN_TOKEN", "admin-token-0123456789abcdef".into())],
    )
    .await;
    outside.wait_for(1, Duration::from_secs(10)).await;

    let url = app.url("/api/alerts/test");
    assert_eq!(app.client.post(&url).send().await.expect("request").status(), 401);
    let queued = app.client.post(&url).bearer_auth("admin-token-0123456789abcdef").send().await.expect("request");
    assert_eq!(queued.status(), 202);
    let mail = sink.wait_for("[wechat-api TEST]", Duration::from_secs(10)).await;
    assert!(mail.text().contains("alerts reach you"), "{}", mail.data);

    // Regression: 100 requests sent 84 mails. One a minute; the rest are told when.
    for _ in 0..99 {
        let again = app.client.post(&url).bearer_auth("admin-token-0123456789abcdef").send().await.expect("request");
        assert_eq!(again.status(), 429);
        let retry_after: u64 = again.headers()["retry-after"].to_str().expect("text").parse().expect("seconds");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    let tests = sink.received().iter().filter(|m| m.subject().contains("[wechat-api TEST]")).count();
    assert_eq!(tests, 1, "only the first test mail was sent");
}

/// The sample lines of `/metrics` whose family has no `# HELP` or no `# TYPE`.
fn undocumented_samples(exposition: &str) -> Vec<String> {
    let mut helped = HashSet::new();
    let mut typed = HashMap::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                helped.insert(name.to_owned());
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                typed.insert(name.to_owned(), words.next().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    let family = |sample: &str| {
        let name = sample.split(['{', ' ']).next().unwrap_or_default().to_owned();
        // A histogram's or summary's series carry suffixes to the family's name.
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| matches!(typed.get(*base).map(String::as_str), Some("histogram" | "summary")))
            .map_or(name.clone(), str::to_owned)
    };
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| {
            let family = family(line);
            !helped.contains(&family) || !typed.contains_key(&family)
        })
        .map(str::to_owned)
        .collect()
}

/// What `promtool check metrics` says about `exposition`: its success and its
/// output; `None` when promtool is not installed.
fn promtool_check(exposition: &str) -> Option<(bool, String)> {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin is piped");
    stdin.write_all(exposition.as_bytes()).expect("write to promtool");
    drop(stdin);
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Some((output.status.success(), said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_running_service_have_help_and_type_and_pass_promtool() {
    let wecom = FakeWeCom::start().await;
    let app = spawn_app_with(&[
        ("SUPERVISOR_INTERVAL_SECS", "1"),
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
    ])
    .await;
    assert_eq!(app.post_text("metrics", 7_001).await, 200);
    // Wait until the supervisor and the token refresh have added their families.
    let wanted = [
        "wechat_api_check_status{",
        "wechat_api_tls_certificate_expiry_timestamp_seconds ",
        "wechat_api_access_token_refreshes_total{",
        "wechat_api_wecom_api_requests_total{",
        "wechat_api_store_commits_total ",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut exposition = app.metrics().await;
    while let Some(missing) = wanted.iter().find(|family| !exposition.contains(**family)) {
        assert!(Instant::now() < deadline, "{missing} never appeared: {exposition}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        exposition = app.metrics().await;
    }

    let undocumented = undocumented_samples(&exposition);
    assert!(undocumented.is_empty(), "samples without HELP or TYPE: {undocumented:#?}");
    match promtool_check(&exposition) {
        Some((passed, said)) => {
            assert!(passed && said.trim().is_empty(), "promtool check metrics: {said}\n{exposition}");
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed (Debian's prometheus package has it; .ci/run installs it)")
        }
        None => eprintln!("notice: promtool is not installed, so /metrics was not checked with it"),
    }
}

/// Sends a callback's head and the first bytes of a body that never ends.
async fn start_a_body(port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", 1));
    let head = format!(
        "POST /wechat/callback?{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\nContent-Length: 4096\r\n\r\n",
        signed.query
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&signed.body.as_bytes()[..16]).await.expect("some body");
    stream
}

/// Polls `/metrics` until `series` reaches `value`, or fails after 30 s.
async fn wait_for_metric(app: &TestApp, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.metric(series).await < value {
        assert!(Instant::now() < deadline, "{series} never reached {value}: {}", app.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_timeout_and_a_client_gone_mid_body_are_counted_apart_from_bad_envelopes() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(&[("HTTP_PORT", "0")]).await;
    let port = app.http_port.expect("plain HTTP listener");
    let series = |outcome: &str| format!("wechat_api_callbacks_total{{channel=\"unknown\",outcome=\"{outcome}\"}}");

    // A client that goes away mid-body.
    drop(start_a_body(port).await);
    wait_for_metric(&app, &series("incomplete_body"), 1.0).await;

    // A client that stalls mid-body until the server gives up on it.
    let mut stalled = start_a_body(port).await;
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    tokio::time::timeout_at(deadline, stalled.read_to_end(&mut answer))
        .await
        .expect("the server closes a stalled body")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    wait_for_metric(&app, &series("body_timeout"), 1.0).await;

    assert_eq!(app.metric(&series("incomplete_body")).await, 1.0, "the timeout is not a disconnect");
    assert_eq!(app.metric(&series("bad_envelope")).await, 0.0, "neither is a bad envelope");
}

/// Where a callback's durable time goes is in the metrics (issue 25): waiting for
/// the writer, the group's statements, its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_store_stages_are_timed_in_the_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.post_text("timed", 1).await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    for stage in ["queue", "execute", "commit"] {
        let series = format!("wechat_api_store_stage_seconds_count{{stage=\"{stage}\"}}");
        while app.metric(&series).await < 1.0 {
            assert!(Instant::now() < deadline, "{series} never counted:\n{}", app.metrics().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
