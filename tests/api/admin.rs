//! The bearer gate in front of the admin endpoints, over real TLS: off without
//! `ADMIN_TOKEN`, 401 for a missing or wrong bearer whatever its length, 429 with
//! `Retry-After` from the 11th wrong bearer of one address, and a right bearer
//! served from any address. What the admin endpoints answer once in is tested
//! beside the fake WeCom (`kf`, `monitoring`, `secrets`).
//!
//! Different client addresses are loopback addresses: the client binds
//! 127.0.0.2 while the service listens on 127.0.0.1 (all of 127.0.0.0/8 is local
//! on Linux).

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
/// An admin endpoint answered without WeCom: with alerts off it says 409 once in.
const GATED: &str = "/api/alerts/test";
/// Bounds a broken server; no test measures time.
const DEADLINE: Duration = Duration::from_secs(30);

async fn spawn_admin_app() -> TestApp {
    spawn_app_with(&[("ADMIN_TOKEN", ADMIN)]).await
}

async fn post(client: &reqwest::Client, app: &TestApp, bearer: &str) -> reqwest::Response {
    client.post(app.url(GATED)).bearer_auth(bearer).send().await.expect("request")
}

async fn assert_served(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::CONFLICT, "the handler answered, not the gate");
    let body: Value = response.json().await.expect("JSON");
    assert!(body["error"].as_str().expect("reason").contains("email alerts are off"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_wrong_bearer_from_one_address_is_answered_429_with_retry_after() {
    let app = spawn_admin_app().await;
    let stranger = client_from(&app, Ipv4Addr::new(127, 0, 0, 2));
    for attempt in 1..=10 {
        let response = post(&stranger, &app, "admin-token-0123456789abcdeX").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "wrong bearer {attempt}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let throttled = post(&stranger, &app, "admin-token-0123456789abcdeX").await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().expect("ASCII").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = throttled.json().await.expect("JSON");
    assert_eq!(body["status"], "error");
    assert!(body["error"].as_str().expect("reason").contains("too many wrong bearer tokens"), "{body}");

    // Another address is not held to the stranger's failures, and even the
    // throttled address is served once it presents the right bearer.
    assert_served(post(&client_from(&app, Ipv4Addr::new(127, 0, 0, 1)), &app, ADMIN).await).await;
    assert_served(post(&stranger, &app, ADMIN).await).await;
    assert_eq!(post(&stranger, &app, "still-wrong").await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bearers_to_the_send_api_and_the_admin_endpoints_share_one_throttle() {
    const SEND: &str = "send-token-0123456789abcdef";
    let app = spawn_app_with(&[("ADMIN_TOKEN", ADMIN), ("SEND_TOKEN", SEND)]).await;
    let stranger = client_from(&app, Ipv4Addr::new(127, 0, 0, 2));
    let send = |client: &reqwest::Client, bearer: &str| {
        client.post(app.url("/api/v1/messages")).bearer_auth(bearer).json(&serde_json::json!({})).send()
    };
    for attempt in 1..=5 {
        assert_eq!(post(&stranger, &app, "wrong-admin").await.status(), StatusCode::UNAUTHORIZED, "admin {attempt}");
        let answer = send(&stranger, "wrong-send").await.expect("answer");
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "send {attempt}");
    }
    // Ten wrong bearers in all: the 11th is throttled on either door.
    assert_eq!(post(&stranger, &app, "wrong-admin").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(&stranger, "wrong-send").await.expect("answer").status(), StatusCode::TOO_MANY_REQUESTS);
    // Right bearers are served whatever the address did, and other addresses are not held to it.
    assert_served(post(&stranger, &app, ADMIN).await).await;
    let answer = send(&stranger, SEND).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "the send API itself answered (no text)");
    let neighbour = client_from(&app, Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(send(&neighbour, "wrong-send").await.expect("answer").status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bearers_of_any_length_get_the_same_answer() {
    let app = spawn_admin_app().await;
    let mut answers = Vec::new();
    for wrong in ["x".to_owned(), "0123456789abcdef".to_owned(), "y".repeat(200)] {
        let response = post(&app.client, &app, &wrong).await;
        let status = response.status();
        let challenge = response.headers()["www-authenticate"].clone();
        answers.push((status, challenge, response.bytes().await.expect("body")));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert!(answers.iter().all(|answer| *answer == answers[0]), "{answers:?}");
    let no_bearer = app.client.post(app.url(GATED)).send().await.expect("request");
    assert_eq!(no_bearer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_bearer.bytes().await.expect("body"), answers[0].2, "a missing bearer gets the same body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_without_admin_token_answer_404_saying_how_to_turn_them_on() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/test-wecom-connection"),
        (reqwest::Method::GET, "/api/fetch-wecom-name/user_id/zhangsan"),
        (reqwest::Method::POST, "/api/batch-fetch-wecom-names"),
        (reqwest::Method::POST, "/api/alerts/test"),
    ] {
        let response = app.client.request(method, app.url(path)).bearer_auth(ADMIN).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert!(body["error"].as_str().expect("reason").contains("set ADMIN_TOKEN"), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_paths_beside_the_admin_endpoints_need_no_bearer() {
    let app = spawn_admin_app().await;
    for path in ["/api/health", "/api/health/live", "/metrics", "/health", "/"] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        assert_ne!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_ne!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let unknown = app.client.get(app.url("/api/no-such-endpoint")).send().await.expect("request");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "an unknown /api path is not behind the gate");
    // A callback path answers for itself: a GET without its parameters is a 400.
    let callback = app.client.get(app.url("/api/v1/wecom/callback")).send().await.expect("request");
    assert_eq!(callback.status(), StatusCode::BAD_REQUEST);
}

/// Regression: the batch endpoint read (and waited for) the body before looking
/// at the bearer, so a stranger announcing a body it never sent got a 408 after
/// the body deadline instead of an immediate 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_announcing_a_body_it_never_sends_is_refused_401_without_the_body() {
    let app = spawn_admin_app().await;
    let mut tls = connect(&app).await;
    let head = "POST /api/batch-fetch-wecom-names HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    tls.write_all(head.as_bytes()).await.expect("write head");
    tls.flush().await.expect("flush");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(DEADLINE, tls.read(&mut buf)).await.expect("an answer").expect("read");
        assert_ne!(read, 0, "closed before answering: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..read]);
    }
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// A TLS connection to `app` from 127.0.0.1, trusting only its certificate.
async fn connect(app: &TestApp) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tls_connector(app.dir.path(), &[]).connect(name, tcp).await.expect("handshake")
}
