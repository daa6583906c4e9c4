//! Limits under pressure (SPEC §15, issue 19 findings 4 and 5), attacked through
//! the real service: a send flood against the queue cap and the store volume's
//! floor, WeCom's frequency limit for one member, and the two checks that tell
//! on-call when the outbox or the forward receiver is stuck.
//!
//! The duration checks warn after a minute and fail after five or ten: instead
//! of waiting, the tests move the checks' clock ahead (`TestApp::clock`, the
//! `testing` feature); everything else — the outbox, the retries, the store's
//! timestamps, the supervisor's hysteresis and its email — runs for real.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;
use crate::smtp::SmtpSink;

const SEND: &str = "send-token-0123456789abcdef";

/// An appliance with the app channel on `wecom`, the send API, checks every
/// second and alert email to `sink` (when given); plus `extra`.
async fn spawn_quota_app(wecom: &FakeWeCom, sink: Option<&SmtpSink>, extra: &[(&str, &str)]) -> TestApp {
    let smtp_port = sink.map(|s| s.port.to_string()).unwrap_or_default();
    let mut settings = vec![
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("SEND_TOKEN", SEND),
        ("SUPERVISOR_INTERVAL_SECS", "1"),
        ("ALERT_GROUP_WAIT_SECS", "0"),
    ];
    if sink.is_some() {
        settings.extend([
            ("ALERT_EMAIL_ENABLED", "true"),
            ("SMTP_SERVER", "127.0.0.1"),
            ("SMTP_PORT", smtp_port.as_str()),
            ("SMTP_TLS", "none"),
            ("ALERT_EMAIL_FROM", "wechat-api@example.test"),
            ("ALERT_EMAIL_TO", "oncall@example.test"),
        ]);
    }
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

/// `POST /api/v1/messages`: the status, the `Retry-After` header and the JSON answer.
async fn post_send(app: &TestApp, body: &Value) -> (u16, Option<String>, Value) {
    let response =
        app.client.post(app.url("/api/v1/messages")).bearer_auth(SEND).json(body).send().await.expect("answered");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

fn app_text(to: &str, text: &str) -> Value {
    json!({"channel": "app", "to": to, "text": text})
}

/// Bytes under `dir`, recursively.
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => size_of(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The full health report's result for `check`.
async fn check(app: &TestApp, name: &str) -> Value {
    let body: Value = app.client.get(app.url("/api/health")).send().await.expect("health").json().await.expect("JSON");
    body["checks"][name][0].clone()
}

/// Polls until `series` in `/metrics` reaches `at_least`, or fails after 15 s.
async fn wait_for_metric(app: &TestApp, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = app.metric(series).await;
        if value >= at_least {
            return value;
        }
        assert!(Instant::now() < deadline, "{series} is {value}, expected at least {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_flood_is_answered_429_past_the_queue_cap_and_data_dir_stays_bounded() {
    let wecom = FakeWeCom::start().await;
    // WeCom is overloaded: nothing the outbox sends finishes, so every send stays queued.
    wecom.fail_api("message/send", Some(json!({"errcode": 45009, "errmsg": "api freq out of limit"})));
    let app = spawn_quota_app(&wecom, None, &[("SEND_QUEUE_MAX", "5")]).await;
    let data_dir = app.dir.path().join("data");
    let before = size_of(&data_dir);
    // The finding's flood: 60 KB texts (20,000 CJK characters), as fast as they are answered.
    let text = "满".repeat(20_000);
    let mut answers = Vec::new();
    for i in 0..100 {
        answers.push(post_send(&app, &app_text(&format!("member{i}"), &text)).await);
    }
    let accepted = answers.iter().filter(|(status, _, _)| *status == 202).count();
    assert_eq!(accepted, 5, "SEND_QUEUE_MAX sends are queued, no more");
    let (status, retry_after, answer) = answers.last().expect("answers").clone();
    assert_eq!(status, 429, "{answer}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    let reason = answer["error"].as_str().expect("a reason");
    assert!(reason.contains("5 sends are queued on channel app") && reason.contains("SEND_QUEUE_MAX is 5"), "{reason}");
    assert!(answers.iter().all(|(status, _, _)| [202, 429].contains(status)));
    assert_eq!(app.metric("wechat_api_send_api_refused_total{channel=\"app\",reason=\"queue_full\"}").await, 95.0);
    // 100 accepted would have written ≥ 6 MB (the finding: 254 MB for 1,500); retries
    // of the 5 rewrite their rows, hence the margin.
    let grown = size_of(&data_dir).saturating_sub(before);
    assert!(grown < 5 * 1024 * 1024, "DATA_DIR grew {grown} bytes");
    eprintln!("DATA_DIR grew {grown} bytes for 5 accepted and 95 refused 60 KB texts");
    // (A finished send makes room again: the store conformance suite shows it.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_data_floor_the_send_api_answers_503_while_callbacks_are_journaled() {
    let wecom = FakeWeCom::start().await;
    // No real volume has 100 % free: the floor is always above what is left.
    let app = spawn_quota_app(&wecom, None, &[("DATA_MIN_FREE_PERCENT", "100")]).await;
    let (status, _, answer) = post_send(&app, &app_text("zhangsan", "hello")).await;
    assert_eq!(status, 503, "{answer}");
    let reason = answer["error"].as_str().expect("a reason");
    assert!(reason.starts_with("disk below floor: the DATA_DIR volume has"), "{reason}");
    assert!(reason.contains("DATA_MIN_FREE_PERCENT is 100 %") && reason.contains("kept for callbacks"), "{reason}");
    assert_eq!(
        app.store.queued_sends(wechat_api::testing::channels::ChannelName::app()).await.expect("count"),
        0,
        "nothing queued"
    );
    assert_eq!(app.metric("wechat_api_send_api_refused_total{channel=\"app\",reason=\"disk_low\"}").await, 1.0);

    // WeCom's callbacks keep the rest of the volume.
    assert_eq!(app.post_text("still journaled", 4_242).await, 200);
    assert!(app.store.contains("app:msg:4242".into()).await.expect("store"), "journaled");
    let free = app.check_becomes("store:free", "fail").await;
    assert!(free["output"].as_str().expect("output").contains("the send API answers 503"), "{free}");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_to_one_member_are_paced_at_30_a_minute_while_others_proceed() {
    let wecom = FakeWeCom::start().await;
    let app = spawn_quota_app(&wecom, None, &[]).await;
    for i in 0..31 {
        assert_eq!(post_send(&app, &app_text("zhangsan", &format!("message {i}"))).await.0, 202);
    }
    wecom.wait_for_calls("message/send", 30).await;
    // The 31st is put off (counted as paced, not as an error), not sent.
    wait_for_metric(&app, "wechat_api_outbox_actions_total{channel=\"app\",kind=\"app_text\",outcome=\"paced\"}", 1.0)
        .await;
    let to_zhangsan =
        |wecom: &FakeWeCom| wecom.calls("message/send").iter().filter(|c| c.body["touser"] == "zhangsan").count();
    assert_eq!(to_zhangsan(&wecom), 30, "WeCom would drop the 31st within the minute");
    assert_eq!(
        app.store.queued_sends(wechat_api::testing::channels::ChannelName::app()).await.expect("count"),
        1,
        "still owed, not failed or dropped"
    );
    assert_eq!(
        app.metric("wechat_api_outbox_actions_total{channel=\"app\",kind=\"app_text\",outcome=\"retry\"}").await,
        0.0
    );
    assert_eq!(
        app.metric("wechat_api_outbox_actions_total{channel=\"app\",kind=\"app_text\",outcome=\"failed\"}").await,
        0.0
    );

    // Another member is not held up by zhangsan's window.
    assert_eq!(post_send(&app, &app_text("lisi", "hello")).await.0, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !wecom.calls("message/send").iter().any(|c| c.body["touser"] == "lisi") {
        assert!(Instant::now() < deadline, "lisi's text was held up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(to_zhangsan(&wecom), 30);
    assert_eq!(app.store.queued_sends(wechat_api::testing::channels::ChannelName::app()).await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_backlog_warns_then_fires_while_wecom_fails_and_resolves_once_it_recovers() {
    let (wecom, sink) = (FakeWeCom::start().await, SmtpSink::start().await);
    let app = spawn_quota_app(&wecom, Some(&sink), &[]).await;
    let fresh = app.check_becomes("outbox:backlog", "pass").await;
    assert_eq!(fresh["output"], "nothing owed");
    wecom.fail_api("message/send", Some(json!({"errcode": 45009, "errmsg": "api freq out of limit"})));
    assert_eq!(post_send(&app, &app_text("zhangsan", "hello")).await.0, 202);
    wait_for_metric(&app, "wechat_api_outbox_actions_total{channel=\"app\",kind=\"app_text\",outcome=\"retry\"}", 1.0)
        .await;

    app.clock.advance(61);
    let warn = app.check_becomes("outbox:backlog", "warn").await;
    assert!(warn["output"].as_str().expect("output").contains("1 action(s) owed, the oldest for 6"), "{warn}");
    app.clock.advance(540);
    app.check_becomes("outbox:backlog", "fail").await;
    let firing = sink.wait_for("[wechat-api FIRING] outbox:backlog", Duration::from_secs(30)).await;
    assert!(firing.text().contains("WeCom or FORWARD_URL is failing or slow"), "{}", firing.data);
    assert_eq!(app.metric("wechat_api_check_status{check=\"outbox:backlog\"}").await, 2.0);
    assert!(app.metric("wechat_api_outbox_backlog_age_seconds").await > 600.0);
    assert_eq!(app.metric("wechat_api_outbox_backlog_actions").await, 1.0);

    wecom.fail_api("message/send", None);
    sink.wait_for("[wechat-api RESOLVED] outbox:backlog", Duration::from_secs(60)).await;
    assert_eq!(check(&app, "outbox:backlog").await["status"], "pass");
    assert_eq!(app.metric("wechat_api_outbox_backlog_age_seconds").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_delivery_fires_after_five_minutes_of_failures_and_resolves_on_a_success() {
    let (wecom, sink, receiver) = (FakeWeCom::start().await, SmtpSink::start().await, ForwardReceiver::start().await);
    let without = spawn_quota_app(&wecom, None, &[]).await;
    without.check_becomes("outbox:backlog", "pass").await;
    assert_eq!(check(&without, "forward:delivery").await, Value::Null, "no FORWARD_URL, no check");
    without.stop().await.expect("clean stop");

    receiver.fail_first(usize::MAX);
    let app = spawn_quota_app(
        &wecom,
        Some(&sink),
        &[("FORWARD_URL", receiver.url.as_str()), ("FORWARD_SECRET", receiver.secret.as_str())],
    )
    .await;
    app.check_becomes("forward:delivery", "pass").await;
    assert_eq!(app.post_text("to the bot", 7_001).await, 200);
    let warn = app.check_becomes("forward:delivery", "warn").await;
    assert!(warn["output"].as_str().expect("output").contains("forward: HTTP 500"), "{warn}");

    app.clock.advance(301);
    app.check_becomes("forward:delivery", "fail").await;
    let firing = sink.wait_for("[wechat-api FIRING] forward:delivery", Duration::from_secs(30)).await;
    assert!(firing.text().contains("FORWARD_URL has failed for 3"), "{}", firing.data);
    assert!(app.metric("wechat_api_forward_failing_seconds").await > 300.0);
    // Callbacks are still taken while the receiver fails.
    assert_eq!(app.post_text("still answered", 7_002).await, 200);

    receiver.fail_first(0);
    sink.wait_for("[wechat-api RESOLVED] forward:delivery", Duration::from_secs(60)).await;
    assert_eq!(check(&app, "forward:delivery").await["status"], "pass");
    assert_eq!(app.metric("wechat_api_forward_failing_seconds").await, 0.0);
    receiver.wait_for(2, Duration::from_secs(30)).await;
}
