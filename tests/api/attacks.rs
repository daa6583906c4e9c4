//! The adversarial review's network findings (issue 15), each reproduced against
//! the real service on loopback: HTTP/2 floods, strangers' slow bodies failing
//! readiness, forged log lines, log floods, replays after the dedup window and
//! slow readers. Every wait is a poll with a deadline.

use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use wechat_api::testing::crypto::{self, AesKey};

use crate::helpers::*;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A TLS connection to the service offering `alpn` (none: HTTP/2 by prior knowledge).
async fn tls_to(
    app: &TestApp,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await?;
    tls_connector(app.dir.path(), alpn).connect(ServerName::try_from("127.0.0.1").expect("name"), tcp).await
}

/// A TLS handshake with the service offering `alpn`; the protocol it chose, or
/// the handshake's error.
async fn negotiate(app: &TestApp, alpn: &[&[u8]]) -> Result<Option<Vec<u8>>, std::io::Error> {
    let tls = tls_to(app, alpn).await?;
    Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

/// The review's attack: `connections` HTTP/2 connections (ALPN `h2`, then prior
/// knowledge) each opening up to `streams` body-less POSTs that never end.
/// Returns how many streams the server accepted, and what keeps them open.
async fn h2_stream_flood(app: &TestApp, connections: usize, streams: usize) -> (usize, Vec<Box<dyn std::any::Any>>) {
    const DEADLINE: Duration = Duration::from_secs(10);
    let (mut opened, mut held): (usize, Vec<Box<dyn std::any::Any>>) = (0, Vec::new());
    for n in 0..connections {
        let alpn: &[&[u8]] = if n % 2 == 0 { &[b"h2"] } else { &[] };
        let Ok(tls) = tls_to(app, alpn).await else { continue };
        let Ok(Ok((mut client, connection))) = tokio::time::timeout(DEADLINE, h2::client::handshake(tls)).await else {
            continue;
        };
        tokio::spawn(connection);
        // Does this connection speak HTTP/2 at all? A GET must come back over it.
        let probe = async {
            let ready = client.clone().ready().await.ok()?;
            let request = http::Request::get(app.url("/api/health/live")).body(()).ok()?;
            let (response, _) = ready.clone().send_request(request, true).ok()?;
            response.await.ok().map(|_| ready)
        };
        let Ok(Some(ready)) = tokio::time::timeout(DEADLINE, probe).await else { continue };
        client = ready;
        for _ in 0..streams {
            client = match tokio::time::timeout(DEADLINE, client.clone().ready()).await {
                Ok(Ok(ready)) => ready,
                _ => break,
            };
            let request = http::Request::post(app.url("/api/v1/wecom/callback")).body(()).expect("request");
            let Ok((_, stream)) = client.send_request(request, false) else { break };
            held.push(Box::new(stream));
            opened += 1;
        }
        held.push(Box::new(client));
    }
    (opened, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_flood_opens_nothing_and_memory_stays_flat() {
    let app = spawn_app().await;
    assert_eq!(app.post_text("warm up", 1).await, 200);
    let before = rss_kib();
    let (opened, held) = h2_stream_flood(&app, 4, 50_000).await;
    let after = rss_kib();
    assert_eq!(opened, 0, "the service served HTTP/2 streams");
    // The review saw 523 MB grow to ~2.2 GB; the ceiling here is 64 MiB of growth.
    assert!(after.saturating_sub(before) < 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    drop(held);
    assert_eq!(app.post_text("still here", 2).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_not_offered_so_its_stream_floods_cannot_start() {
    let app = spawn_app_with(&[("HTTP_PORT", "0")]).await;
    // A browser-like client offering both gets HTTP/1.1; one offering only h2 gets nothing.
    assert_eq!(negotiate(&app, &[b"h2", b"http/1.1"]).await.expect("handshake"), Some(b"http/1.1".to_vec()));
    assert!(negotiate(&app, &[b"h2"]).await.is_err(), "an h2-only client is refused in the handshake");
    let response = app.client.get(app.url("/api/health/live")).send().await.expect("answer");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // HTTP/2 with prior knowledge on the plain listener: no HTTP/2 either.
    let plain = format!("http://127.0.0.1:{}/api/health/live", app.http_port.expect("HTTP_PORT"));
    let h2c = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let refused = h2c.get(&plain).timeout(Duration::from_secs(10)).send().await;
    assert!(refused.is_err(), "HTTP/2 prior knowledge was served: {refused:?}");
    assert_eq!(app.post_text("still here", 1).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_slow_bodies_neither_time_the_callback_path_nor_fail_readiness() {
    let app = spawn_app_with(&[("SUPERVISOR_INTERVAL_SECS", "1")]).await;
    // Three requests that announce a body and never send it: answered 408 after the body deadline.
    let hang = |n: u64| {
        let client = app.client.clone();
        let url =
            app.url(&format!("/wechat/callback?{}", sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("x", n)).query));
        async move {
            let (mut sender, body) = tokio::io::duplex(64);
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(body));
            sender.write_all(b"<xml>").await.expect("first bytes");
            let answer = client.post(url).header("Content-Length", "100").body(body).send().await;
            drop(sender);
            answer.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    };
    let statuses = futures_util::future::join_all((1..=3).map(hang)).await;
    assert!(statuses.iter().all(|s| *s == 408 || *s == 0), "{statuses:?}");
    assert_eq!(app.post_text("a real one", 10).await, 200);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("wechat_api_callback_duration_seconds_count 1\n"),
        "only the real callback is timed: {metrics}"
    );
    let slow: f64 = metrics
        .lines()
        .filter(|l| l.contains("outcome=\"body_timeout\"") || l.contains("outcome=\"incomplete_body\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(slow, 3.0, "each slow body counted (408, or the client gave up first): {metrics}");
    // Readiness: the latency check passes after a supervisor round that saw the slow bodies.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: serde_json::Value =
            app.client.get(app.url("/api/health")).send().await.expect("health").json().await.expect("JSON");
        if let Some(check) = report["checks"]["callback:latency"].get(0) {
            assert_eq!(check["status"], "pass", "{report}");
            assert_ne!(report["status"], "fail", "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "no callback:latency check: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A callback signed at `timestamp` (any text), for the replay window.
fn signed_at(timestamp: &str, msg_id: u64) -> Signed {
    let key = AesKey::parse(AES_KEY).expect("key");
    let encrypted = crypto::encrypt(&key, text_message("replayed", msg_id).as_bytes(), CORP_ID.as_bytes());
    let nonce = "4242";
    let signature = crypto::sign(TOKEN, timestamp, nonce, &encrypted);
    Signed {
        query: query(signature.as_str(), timestamp, nonce, None),
        body: format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_older_than_the_window_is_refused_even_after_its_dedup_key_is_gone() {
    let app = spawn_app().await;
    let post = |signed: Signed| {
        let request = app.client.post(app.url(&format!("/wechat/callback?{}", signed.query))).body(signed.body);
        async move {
            let response = request.send().await.expect("answer");
            (response.status().as_u16(), response.text().await.expect("body"))
        }
    };
    let (status, reason) = post(signed_at("not-a-number", 1)).await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("timestamp"), "{reason}");
    // Captured two days ago: the store no longer knows it, the window refuses it.
    let (status, reason) = post(signed_at(&(now() - 2 * 86_400).to_string(), 2)).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("old") && reason.contains("CALLBACK_MAX_AGE_SECS"), "{reason}");
    let (status, reason) = post(signed_at(&(now() + 11 * 60).to_string(), 3)).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("future"), "{reason}");
    // WeCom's own retry of a minutes-old callback is fine.
    assert_eq!(post(signed_at(&(now() - 300).to_string(), 4)).await.0, 200);
    // A stranger's stale timestamp is a bad signature, not a replay.
    let mut forged = signed_at(&(now() - 2 * 86_400).to_string(), 5);
    forged.query = forged.query.replace("msg_signature=", "msg_signature=0");
    assert_eq!(post(forged).await.0, 403);
    for key in ["app:msg:1", "app:msg:2", "app:msg:3", "app:msg:5"] {
        assert!(!app.store.contains(key.into()).await.expect("store"), "{key} reached the journal");
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("outcome=\"bad_timestamp\"} 1"), "{metrics}");
    assert!(metrics.contains("outcome=\"stale_timestamp\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_url_verification_vectors_are_replays_under_the_default_window() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/official.json")).expect("fixture");
    let all: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let v = all["vectors"].as_array().expect("vectors").iter().find(|v| v["kind"] == "verify_url").expect("one");
    let field = |name: &str| v[name].as_str().expect(name).to_owned();
    let app = spawn_app_with(&[
        ("WECOM_CORP_ID", &field("receiveid")),
        ("WECOM_TOKEN", &field("token")),
        ("WECOM_ENCODING_AES_KEY", &field("encoding_aes_key")),
    ])
    .await;
    let q = query(&field("msg_signature"), &field("timestamp"), &field("nonce"), Some(&field("echostr")));
    let response = app.client.get(app.url(&format!("/wechat/callback?{q}"))).send().await.expect("answer");
    assert_eq!(response.status(), 403);
    assert!(response.text().await.expect("body").contains("replay window"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_log_lines_stay_inside_their_line_and_a_refusal_flood_is_logged_in_a_few_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let env = test_env(dir.path(), &[]);
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(&env);
    let mut service = Running::start(command);
    let port = service.port();
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(10));
    let url = |query: &str| format!("https://127.0.0.1:{port}/wechat/callback?{query}");

    let forged = "hello\n2026-01-01T00:00:00.000000Z ERROR store commit failed\r\nsecond";
    let xml = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[evil\nuser]]></FromUserName>\
         <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{forged}]]></Content>\
         <MsgId>77</MsgId><AgentID>1</AgentID></xml>"
    );
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &xml);
    let answer = client.post(url(&signed.query)).body(signed.body).send().await.expect("answer");
    assert_eq!(answer.status(), 200);

    // 300 refusals from one client.
    let bad = sign_post("WrongToken42", AES_KEY, CORP_ID, &text_message("x", 1));
    for _ in 0..300 {
        let answer = client.post(url(&bad.query)).body(bad.body.clone()).send().await.expect("answer");
        assert_eq!(answer.status(), 403);
    }
    let metrics = client.get(format!("https://127.0.0.1:{port}/metrics")).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(
        metrics.contains("wechat_api_callbacks_total{channel=\"unknown\",outcome=\"bad_signature\"} 300"),
        "{metrics}"
    );
    service.terminate();
    let lines = service.rest();
    let text = lines.join("\n");
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-01-01T00:00:00.000000Z") || l.starts_with("second") || l == "user"),
        "a forged line of its own:\n{text}"
    );
    let message_line = lines.iter().find(|l| l.contains("store commit failed")).expect("the message is logged");
    assert!(message_line.contains("hello\\n2026-01-01") && message_line.contains("\\r\\nsecond"), "{message_line}");
    let refusals: Vec<&String> = lines.iter().filter(|l| l.contains("callback refused")).collect();
    assert!((1..=10).contains(&refusals.len()), "{} refusal lines for 300 refusals:\n{text}", refusals.len());
    assert!(refusals.iter().all(|l| l.contains("client=127.0.0.1")), "the address to act on:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_that_never_reads_is_disconnected() {
    let app = spawn_app_with(&[("HTTP_PORT", "0")]).await;
    let port = app.http_port.expect("HTTP_PORT");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    // Requests for the status page (some KiB each), pipelined, never read.
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let flood = tokio::spawn(async move {
        for _ in 0..100_000 {
            if writer.write_all(request.as_bytes()).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = Instant::now();
    loop {
        // The kernel reports the server's reset on the socket without our reading anything.
        if let Some(error) = reader.as_ref().take_error().expect("SO_ERROR") {
            assert!(
                matches!(error.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::TimedOut),
                "{error}"
            );
            break;
        }
        if flood.is_finished() {
            break;
        }
        assert!(Instant::now() < deadline, "still connected after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    flood.abort();
    assert_eq!(app.post_text("others are served", 1).await, 200);
}

/// The service as a process logging in `format`, with a fake WeCom that delivers
/// one kf text from a customer whose id is 100,002 characters long, and a text
/// and a sender name with a right-to-left override (U+202E); its log lines.
async fn log_lines_of_hostile_ids(format: &str) -> Vec<String> {
    wechat_api::testing::tls::install_crypto_provider();
    let wecom = crate::fakes::FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let env = test_env(
        dir.path(),
        &[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_KF_SECRET", "kf-secret"), ("LOG_FORMAT", format)],
    );
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(&env);
    let mut service = Running::start(command);
    let mut lines = service.read_until(|l| l.contains("wechat-api listening"));
    let listening = lines.last().expect("a line");
    let port = match serde_json::from_str::<serde_json::Value>(listening) {
        Ok(json) => u16::try_from(json["port"].as_u64().expect("a port field")).expect("a port"),
        Err(_) => listening_port(listening),
    };
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(10));
    let post = |xml: String| {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &xml);
        client.post(format!("https://127.0.0.1:{port}/wechat/callback?{}", signed.query)).body(signed.body).send()
    };

    let customer = format!("wm{}", "x".repeat(100_000));
    let message = serde_json::json!({"msgid": "m1", "open_kfid": "wkA", "external_userid": customer, "send_time": now(),
        "origin": 3, "msgtype": "text", "text": {"content": "kf \u{202e}txet desrever"}});
    wecom.answer_once("kf/sync_msg", crate::kf::page(vec![message], "", 0));
    let notice = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[EVT]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>",
        now()
    );
    assert_eq!(post(notice).await.expect("answer").status(), 200);
    lines.extend(service.read_until(|l| l.contains("txet desrever")));
    let xml = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[evil\u{202e}resu]]></FromUserName>\
         <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[app \u{2066}isolated\u{2069}]]></Content>\
         <MsgId>78</MsgId><AgentID>1</AgentID></xml>"
    );
    assert_eq!(post(xml).await.expect("answer").status(), 200);
    lines.extend(service.read_until(|l| l.contains("isolated")));
    service.terminate();
    lines.extend(service.rest());
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_character_id_is_cut_and_bidi_controls_are_escaped_in_text_and_json_log_lines() {
    for format in ["text", "json"] {
        let lines = log_lines_of_hostile_ids(format).await;
        // The lines as a failure shows them: a 100 KB line would drown the report.
        let text = lines.iter().map(|l| l.chars().take(300).collect::<String>()).collect::<Vec<_>>().join("\n");
        let longest = lines.iter().map(String::len).max().unwrap_or_default();
        assert!(longest < 2_000, "{format}: a line of {longest} bytes:\n{text}");
        let kf = lines.iter().find(|l| l.contains("txet desrever")).expect("the kf message is logged");
        assert!(kf.contains(&format!("wm{}…(100002 chars)", "x".repeat(126))), "{format}: {kf}");
        let raw = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(!lines.iter().any(|l| l.chars().any(raw)), "{format}: a raw control or bidi character:\n{text}");
        let (rlo, isolate) = if format == "json" { ("\\u202e", "\\u2066") } else { ("\\u{202e}", "\\u{2066}") };
        assert!(kf.contains(&format!("kf {rlo}txet desrever")), "{format}: {kf}");
        let app = lines.iter().find(|l| l.contains("isolated")).expect("the app message is logged");
        assert!(app.contains(&format!("evil{rlo}resu")) && app.contains(&format!("app {isolate}isolated")), "{app}");
        if format == "json" {
            for line in &lines {
                serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
    }
}
