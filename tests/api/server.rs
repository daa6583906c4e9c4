//! The server around the callbacks: TLS, health, metrics, the plain listener, shutdown.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_in_the_draft_shape_with_its_content_type() {
    let app = spawn_app().await;
    for path in ["/api/health", "/health"] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/health+json", "{path}");
        let body: serde_json::Value = response.json().await.expect("JSON");
        // Every check passes, but for the machine's own free space (not this test's subject).
        let not_passing: Vec<&String> = body["checks"]
            .as_object()
            .expect("checks")
            .iter()
            .filter(|(name, results)| results[0]["status"] != "pass" && !name.ends_with(":free"))
            .map(|(name, _)| name)
            .collect();
        assert!(not_passing.is_empty(), "{not_passing:?}: {body}");
        assert_ne!(body["status"], "fail", "{body}");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let cert = &body["checks"]["tls:certificate"][0];
        assert_eq!(cert["status"], "pass");
        assert_eq!(cert["observedUnit"], "d");
        assert!(cert["observedValue"].as_i64().expect("days") >= 363, "{cert}");
        assert_eq!(body["checks"]["config:secrets"][0]["status"], "pass");
    }
    let live = app.client.get(app.url("/api/health/live")).send().await.expect("request");
    assert_eq!(live.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_secrets_are_a_warning_in_health_that_shows_no_secret() {
    let secret = "IdenticalSecretValue0123456789";
    let wecom = crate::fakes::FakeWeCom::start().await;
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", secret),
        ("WECOM_KF_SECRET", secret),
    ])
    .await;
    let response = app.client.get(app.url("/api/health")).send().await.expect("request");
    assert_eq!(response.status(), 200, "warn still answers 200");
    let text = response.text().await.expect("body");
    assert!(!text.contains(secret));
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["status"], "warn");
    assert!(body["checks"]["config:secrets"][0]["output"].as_str().expect("output").contains("95018"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_in_two_days_fails_health_with_503() {
    let app = spawn_app_with_certificate(2, &[]).await;
    let response = app.client.get(app.url("/api/health")).send().await.expect("request");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["status"], "fail");
    let check = &body["checks"]["tls:certificate"][0];
    assert!(check["output"].as_str().expect("output").contains("the certificate expires in"), "{body}");
    assert!(check["observedValue"].as_i64().expect("days") <= 2, "{body}");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_build_info_and_a_histogram() {
    let app = spawn_app().await;
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("m", 9));
    app.client
        .post(app.url(&format!("/wework/callback?{}", signed.query)))
        .body(signed.body)
        .send()
        .await
        .expect("request");
    let response = app.client.get(app.url("/metrics")).send().await.expect("request");
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.expect("body");
    let build = wechat_api::testing::telemetry::BuildInfo::sqlite(env!("CARGO_PKG_VERSION"));
    let build_info = format!("{{version=\"{}\",backend=\"sqlite\",replica=\"{}\"}} 1", build.version, build.replica);
    assert!(text.contains(&format!("wechat_api_build_info{build_info}")), "{text}");
    assert!(text.contains("# TYPE wechat_api_callback_duration_seconds histogram"), "{text}");
    assert!(text.contains("wechat_api_callback_duration_seconds_bucket{le=\"+Inf\"} 1"), "{text}");
    assert!(text.contains("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_http_1_1_only_also_over_tls_1_2() {
    let app = spawn_app().await;
    // A client that would take HTTP/2 gets HTTP/1.1: h2 is not offered (SECURITY.md).
    let response = app.client.get(app.url("/api/health/live")).send().await.expect("request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let pem = std::fs::read(app.dir.path().join("server.crt")).expect("cert");
    let old_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .http1_only()
        .build()
        .expect("client");
    let response = old_client.get(app.url("/api/health/live")).send().await.expect("TLS 1.2 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_plain_listener_serves_the_same_routes() {
    let app = spawn_app_with(&[("HTTP_PORT", "0")]).await;
    let port = app.http_port.expect("plain listener");
    assert_ne!(port, app.port);
    let plain = reqwest::Client::new();
    let response = plain.get(format!("http://127.0.0.1:{port}/api/health")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("plain", 5));
    let response = plain
        .post(format!("http://127.0.0.1:{port}/wechat/callback?{}", signed.query))
        .body(signed.body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_disabled_serves_plain_http_on_the_main_port() {
    let app = spawn_app_with(&[("TLS_ENABLED", "false")]).await;
    let response = reqwest::get(format!("http://127.0.0.1:{}/api/health/live", app.port)).await.expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_the_service_stops_cleanly() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/nope")).send().await.expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.expect("body"), "not found\n");
    let port = app.port;
    app.stop().await.expect("run_until_stopped returns Ok");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the listener is closed after stop");
}
