//! The callback paths: URL verification, message POSTs and every bad input.

use serde::Deserialize;
use wechat_api::testing::crypto::{self, AesKey};
use wechat_api::testing::routes::CALLBACK_PATHS;

use crate::helpers::*;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    kind: String,
    token: String,
    encoding_aes_key: String,
    receiveid: String,
    msg_signature: String,
    timestamp: String,
    nonce: String,
    echostr: Option<String>,
    reply: Option<String>,
}

fn verify_url_vectors() -> Vec<Vector> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/official.json")).expect("fixture");
    let all: Vectors = serde_json::from_str(&text).expect("fixture JSON");
    all.vectors.into_iter().filter(|v| v.kind == "verify_url").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_official_url_verification_vector_passes_on_every_path() {
    let vectors = verify_url_vectors();
    assert!(vectors.len() >= 3);
    for v in vectors {
        let app = spawn_app_with(&[
            ("WECOM_CORP_ID", &v.receiveid),
            ("WECOM_TOKEN", &v.token),
            ("WECOM_ENCODING_AES_KEY", &v.encoding_aes_key),
            // The vectors were signed years ago: replayable only without a window.
            ("CALLBACK_MAX_AGE_SECS", "0"),
        ])
        .await;
        for path in CALLBACK_PATHS {
            let q = query(&v.msg_signature, &v.timestamp, &v.nonce, v.echostr.as_deref());
            let response = app.client.get(app.url(&format!("{path}?{q}"))).send().await.expect("request");
            assert_eq!(response.status(), 200, "{} on {path}", v.name);
            assert_eq!(response.text().await.expect("body"), v.reply.clone().expect("reply"), "{} on {path}", v.name);
        }
        assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"}").await, 3.0);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_verification_survives_an_unescaped_plus_in_echostr() {
    let app = spawn_app().await;
    let key = AesKey::parse(AES_KEY).expect("key");
    // Find an echostr whose base64 contains '+', then send it unescaped.
    let (echo, echostr) = (0..200)
        .map(|i| {
            let echo = format!("echo-{i}");
            let enc = crypto::encrypt(&key, echo.as_bytes(), CORP_ID.as_bytes());
            (echo, enc)
        })
        .find(|(_, enc)| enc.contains('+'))
        .expect("some ciphertext has a plus");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = crypto::sign(TOKEN, &now.to_string(), "2", &echostr);
    let url = app.url(&format!("/wework/callback?msg_signature={signature}&timestamp={now}&nonce=2&echostr={echostr}"));
    let response = app.client.get(url).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), echo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_text_post_is_acknowledged_on_every_path() {
    let app = spawn_app().await;
    for (i, path) in CALLBACK_PATHS.iter().enumerate() {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("你好", 100 + i as u64));
        let response = app
            .client
            .post(app.url(&format!("{path}?{}", signed.query)))
            .header("Content-Type", "text/xml")
            .body(signed.body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("body"), "", "app callbacks get an empty answer");
    }
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kf_token_selects_the_kf_channel() {
    let kf_token = "KfToken123";
    let kf_key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let app = spawn_app_with(&[("WECOM_KF_TOKEN", kf_token), ("WECOM_KF_ENCODING_AES_KEY", kf_key)]).await;
    let event = format!(
        "<xml><ToUserName>{CORP_ID}</ToUserName><CreateTime>1348831860</CreateTime><MsgType>event</MsgType>\
         <Event>kf_msg_or_event</Event><Token>ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR</Token><OpenKfId>wkABC</OpenKfId></xml>"
    );
    let response = app.post_signed("/wechat/callback", kf_token, kf_key, &event).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "success");
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"kf\",outcome=\"ok\"}").await, 1.0);
    // The app Token still works alongside, on the same path.
    let response = app.post_signed("/wechat/callback", TOKEN, AES_KEY, &text_message("hi", 1)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"}").await, 1.0);
}

/// Sends one bad request and checks its status, its reason and its count.
async fn assert_refused(app: &TestApp, request: reqwest::RequestBuilder, status: u16, reason: &str, outcome: &str) {
    let series = format!("wechat_api_callbacks_total{{channel=\"unknown\",outcome=\"{outcome}\"}}");
    let before = app.metric(&series).await;
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), status, "{outcome}");
    let body = response.text().await.expect("body");
    assert!(body.contains(reason), "{outcome}: {body:?} lacks {reason:?}");
    assert!(!body.contains(TOKEN) && !body.contains(AES_KEY), "{outcome}: a secret leaked: {body}");
    assert_eq!(app.metric(&series).await, before + 1.0, "{outcome} is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_4xx_with_a_reason_and_is_counted() {
    let app = spawn_app().await;
    let c = &app.client;
    let path = "/api/v1/wecom/callback";
    let good = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", 1));

    assert_refused(&app, c.get(app.url(path)), 400, "missing query parameter `echostr`", "missing_parameter").await;
    assert_refused(
        &app,
        c.get(app.url(&format!("{path}?echostr=abc&timestamp=1&nonce=2"))),
        400,
        "`msg_signature`",
        "missing_parameter",
    )
    .await;
    let wrong = query("0000000000000000000000000000000000000000", "1", "2", Some("abc"));
    assert_refused(
        &app,
        c.get(app.url(&format!("{path}?{wrong}"))),
        403,
        "msg_signature does not match",
        "bad_signature",
    )
    .await;
    assert_refused(
        &app,
        c.post(app.url(path)).body(good.body.clone()),
        400,
        "missing query parameter",
        "missing_parameter",
    )
    .await;
    // A wrong Token: the right message signed by someone else.
    let forged = sign_post("OtherToken", AES_KEY, CORP_ID, &text_message("x", 2));
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", forged.query))).body(forged.body),
        403,
        "msg_signature does not match",
        "bad_signature",
    )
    .await;
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", good.query))).body("not xml"),
        400,
        "not well-formed XML",
        "bad_envelope",
    )
    .await;
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", good.query))).body("<xml><ToUserName>x</ToUserName></xml>"),
        400,
        "<Encrypt> is missing",
        "bad_envelope",
    )
    .await;
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", good.query))).body(vec![0xff, 0xfe, 0x3c]),
        400,
        "not UTF-8",
        "bad_envelope",
    )
    .await;
    // Signed correctly but not base64, not whole blocks, or under another key (bad padding).
    let not_base64 = sign_envelope(TOKEN, "%%%not-base64%%%");
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", not_base64.query))).body(not_base64.body),
        400,
        "cannot decrypt",
        "bad_ciphertext",
    )
    .await;
    let short = sign_envelope(TOKEN, "AAAA");
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", short.query))).body(short.body),
        400,
        "not a positive multiple",
        "bad_ciphertext",
    )
    .await;
    let other_key = AesKey::parse("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").expect("key");
    let garbage = crypto::encrypt_with_random(&other_key, [7; 16], text_message("x", 3).as_bytes(), CORP_ID.as_bytes());
    let garbage = sign_envelope(TOKEN, &garbage);
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", garbage.query))).body(garbage.body),
        400,
        "cannot decrypt",
        "bad_ciphertext",
    )
    .await;
    let other_corp = sign_post(TOKEN, AES_KEY, "wwSomeoneElse", &text_message("x", 4));
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", other_corp.query))).body(other_corp.body),
        400,
        "receive id does not match WECOM_CORP_ID",
        "wrong_receive_id",
    )
    .await;
    let not_xml_inside = sign_post(TOKEN, AES_KEY, CORP_ID, "hello, not xml");
    assert_refused(
        &app,
        c.post(app.url(&format!("{path}?{}", not_xml_inside.query))).body(not_xml_inside.body),
        400,
        "app message is not well-formed XML",
        "bad_message",
    )
    .await;
    let huge = "<xml>".to_owned() + &"a".repeat(200 * 1024) + "</xml>";
    assert_refused(&app, c.post(app.url(&format!("{path}?{}", good.query))).body(huge), 413, "exceeds", "too_large")
        .await;

    // After all that, the service still answers a good request.
    let response = c.post(app.url(&format!("{path}?{}", good.query))).body(good.body).send().await.expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_refused_without_content_length() {
    let app = spawn_app().await;
    let good = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", 1));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..40).map(|_| Ok(vec![b'a'; 8 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util_stream(chunks));
    let response =
        app.client.post(app.url(&format!("/wework/callback?{}", good.query))).body(body).send().await.expect("request");
    assert_eq!(response.status(), 413);
}

fn futures_util_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(chunks)
}
