//! The public surface (SPEC §11), over real TLS: a stranger sees the callback
//! paths, liveness and `{"status": …}` of the health report, and nothing else;
//! a client in `TRUSTED_NETWORKS` or with the admin bearer sees everything;
//! `X-Forwarded-For` counts only from `TRUSTED_PROXIES`.
//!
//! The stranger is a client bound to 127.0.0.2 while `TRUSTED_NETWORKS` is
//! 127.0.0.1/32 (all of 127.0.0.0/8 is local on Linux).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const INSIDER: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Bounds a broken server; no test measures time.
const DEADLINE: Duration = Duration::from_secs(30);

/// Only 127.0.0.1 is trusted, plus `extra` settings.
async fn spawn_guarded(extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("TRUSTED_NETWORKS", "127.0.0.1/32"), ("ADMIN_TOKEN", ADMIN)];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

async fn get(request: reqwest::RequestBuilder) -> (StatusCode, String) {
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// What the stranger may read of `/api/health`: exactly `{"status": …}`.
fn assert_status_only(body: &str) {
    let body = json(body);
    let object = body.as_object().expect("an object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["status"], "{body}");
    assert!(["pass", "warn", "fail"].contains(&body["status"].as_str().expect("a string")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_sees_only_the_status_and_404_for_the_status_page_and_metrics() {
    let app = spawn_guarded(&[]).await;
    let stranger = client_from(&app, STRANGER);
    let insider = client_from(&app, INSIDER);

    for path in ["/", "/metrics"] {
        let (status, body) = get(stranger.get(app.url(path))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("wechat_api_") && !body.contains("uploads"), "{path}: {body}");
    }
    for path in ["/api/health", "/health"] {
        let (full_status, full) = get(insider.get(app.url(path))).await;
        assert!(json(&full)["checks"].is_object(), "the insider gets the full report: {full}");
        let (status, body) = get(stranger.get(app.url(path))).await;
        assert_eq!(status, full_status, "{path}: the same HTTP status as the full report");
        assert_status_only(&body);
    }
    let (status, body) = get(stranger.get(app.url("/api/health/live"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body), serde_json::json!({"status": "pass"}), "liveness, minimal");

    // WeCom is a stranger too: the callback paths answer it.
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("from outside", 14_001));
    let url = app.url(&format!("/wechat/callback?{}", signed.query));
    let response = stranger.post(url).body(signed.body).send().await.expect("callback");
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_tells_a_stranger_503_and_fail_and_nothing_more() {
    // A certificate valid for one day: `tls:certificate` fails at once.
    let app = spawn_app_with_certificate(1, &[("TRUSTED_NETWORKS", "127.0.0.1/32")]).await;
    let stranger = client_from(&app, STRANGER);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(app.client.get(app.url("/api/health"))).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(json(&body)["checks"]["tls:certificate"][0]["status"], "fail", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the health report never failed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(stranger.get(app.url("/api/health"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(json(&body), serde_json::json!({"status": "fail"}));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_client_or_the_admin_bearer_sees_everything_and_a_wrong_bearer_is_refused() {
    let app = spawn_guarded(&[]).await;
    let insider = client_from(&app, INSIDER);
    let stranger = client_from(&app, STRANGER);
    for (who, client, bearer) in [("trusted network", &insider, None), ("admin bearer", &stranger, Some(ADMIN))] {
        let with = |request: reqwest::RequestBuilder| match bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let (status, page) = get(with(client.get(app.url("/")))).await;
        assert_eq!(status, StatusCode::OK, "{who}: {page}");
        assert!(page.contains("<h2>Checks</h2>"), "{who}: {page}");
        let (status, metrics) = get(with(client.get(app.url("/metrics")))).await;
        assert_eq!(status, StatusCode::OK, "{who}");
        assert!(metrics.contains("wechat_api_build_info{"), "{who}: {metrics}");
        let (_, health) = get(with(client.get(app.url("/api/health")))).await;
        let health = json(&health);
        assert!(health["checks"].is_object() && health["version"].is_string(), "{who}: {health}");
        let (_, live) = get(with(client.get(app.url("/api/health/live")))).await;
        assert!(json(&live)["version"].is_string(), "{who}: {live}");
    }

    // A wrong bearer is refused plainly, a guess like any other, and changes nothing
    // (the health report answers it as a stranger: the next test).
    for path in ["/", "/metrics"] {
        let request = stranger.get(app.url(path)).bearer_auth("admin-token-0123456789abcdeX");
        let (status, body) = get(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(!body.contains("checks") && !body.contains("wechat_api_"), "{path}: {body}");
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_with_a_stale_bearer_reads_the_real_readiness_and_its_bearers_count_as_guesses() {
    // A certificate valid for one day: `tls:certificate` fails at once, so the
    // readiness to read is 503.
    let app = spawn_app_with_certificate(1, &[("TRUSTED_NETWORKS", "127.0.0.1/32"), ("ADMIN_TOKEN", ADMIN)]).await;
    let stranger = client_from(&app, STRANGER);
    let deadline = Instant::now() + DEADLINE;
    while get(app.client.get(app.url("/api/health"))).await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "the health report never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stale = "admin-token-0123456789abcdeX";
    // More than the 10 wrong bearers a minute the throttle allows: never 401 or 429.
    for attempt in 0..6 {
        for path in ["/api/health", "/health"] {
            let (status, body) = get(stranger.get(app.url(path)).bearer_auth(stale)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}, wrong bearer #{attempt}: {body}");
            assert_eq!(json(&body), serde_json::json!({"status": "fail"}), "{path}");
        }
    }
    // They were guesses all the same: the views and endpoints a bearer opens are
    // locked for that address, and the right bearer is still served.
    for path in ["/metrics", "/api/test-wecom-connection"] {
        let (status, body) = get(stranger.get(app.url(path)).bearer_auth(stale)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}: {body}");
    }
    let (status, metrics) = get(stranger.get(app.url("/metrics")).bearer_auth(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    // No trusted proxy: the peer 127.0.0.1 is the client, whatever the header says.
    let app = spawn_guarded(&[]).await;
    let insider = client_from(&app, INSIDER);
    let stranger = client_from(&app, STRANGER);
    let (status, _) = get(insider.get(app.url("/metrics")).header("X-Forwarded-For", "203.0.113.9")).await;
    assert_eq!(status, StatusCode::OK, "a forged header does not make an insider a stranger");
    let (status, _) = get(stranger.get(app.url("/metrics")).header("X-Forwarded-For", "127.0.0.1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor a stranger an insider");
    app.stop().await.expect("clean stop");

    // 127.0.0.1 is a trusted proxy: its header is believed.
    let app = spawn_guarded(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let proxy = client_from(&app, INSIDER);
    let stranger = client_from(&app, STRANGER);
    let (status, _) = get(proxy.get(app.url("/metrics")).header("X-Forwarded-For", "203.0.113.9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the proxy speaks for an outside client");
    let (status, body) = get(proxy.get(app.url("/api/health")).header("X-Forwarded-For", "203.0.113.9")).await;
    assert_eq!(status, StatusCode::OK);
    assert_status_only(&body);
    // What the outside client wrote itself, left of what the proxy appended, is not believed.
    let forged = proxy.get(app.url("/metrics")).header("X-Forwarded-For", "127.0.0.1, 203.0.113.9");
    assert_eq!(get(forged).await.0, StatusCode::NOT_FOUND);
    let (status, _) = get(proxy.get(app.url("/metrics")).header("X-Forwarded-For", "127.0.0.1")).await;
    assert_eq!(status, StatusCode::OK, "a client the proxy names as trusted is trusted");
    let (status, _) = get(stranger.get(app.url("/metrics")).header("X-Forwarded-For", "127.0.0.1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only the trusted proxy's header counts");

    // The bearer throttle counts per client behind the proxy, not per proxy.
    for attempt in 1..=10 {
        let request = proxy.get(app.url("/metrics")).header("X-Forwarded-For", "203.0.113.9");
        let status = get(request.bearer_auth("admin-token-0123456789abcdeX")).await.0;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "wrong bearer {attempt}");
    }
    let guess = proxy.get(app.url("/metrics")).header("X-Forwarded-For", "203.0.113.9");
    assert_eq!(get(guess.bearer_auth("admin-token-0123456789abcdeX")).await.0, StatusCode::TOO_MANY_REQUESTS);
    let other = proxy.get(app.url("/metrics")).header("X-Forwarded-For", "198.51.100.7");
    assert_eq!(get(other.bearer_auth("admin-token-0123456789abcdeX")).await.0, StatusCode::UNAUTHORIZED);
    let right = proxy.get(app.url("/metrics")).header("X-Forwarded-For", "203.0.113.9");
    assert_eq!(get(right.bearer_auth(ADMIN)).await.0, StatusCode::OK, "a right bearer is never throttled");
    app.stop().await.expect("clean stop");
}
