//! Durable ingest: journal before the answer, dedup, the handler chain, the
//! outbox, the WeCom client and its tokens, and a real kill -9.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wechat_api::testing::channels::ChannelName;
use wechat_api::testing::config::Secret;
use wechat_api::testing::dispatch::HELP_TEXT;
use wechat_api::testing::store::Store;
use wechat_api::testing::store::StoredToken;
use wechat_api::testing::telemetry::{BuildInfo, Metrics};
use wechat_api::testing::wecom::{TokenSource, WeComClient};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;

const SECRET: &str = "app-secret-0123456789";

async fn spawn_forwarding_app(wecom: &FakeWeCom, receiver: &ForwardReceiver) -> TestApp {
    spawn_app_with(&[
        ("WECOM_API_BASE_URL", &wecom.base_url),
        ("WECOM_SECRET", SECRET),
        ("WECOM_AGENT_ID", "1000002"),
        ("FORWARD_URL", &receiver.url),
        ("FORWARD_SECRET", &receiver.secret),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_are_forwarded_once_also_across_a_restart() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_forwarding_app(&wecom, &receiver).await;
    for _ in 0..3 {
        assert_eq!(app.post_text("你好", 4242).await, 200);
    }
    let delivered = receiver.wait_for(1, Duration::from_secs(10)).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"duplicate\"}").await, 2.0);

    let app = app.restart().await;
    assert_eq!(app.post_text("你好", 4242).await, 200, "a retry after a restart is still acknowledged");
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"duplicate\"}").await, 1.0);
    app.wait_until_outbox_empty().await;

    assert_eq!(receiver.delivered().len(), 1, "forwarded exactly once");
    let d = &delivered[0];
    assert_eq!(d.message_id, "app:msg:4242");
    assert!(d.signature_ok, "X-Signature is the HMAC of the body");
    assert_eq!(d.content_type, "application/json");
    let r = &d.record;
    assert_eq!(r["id"], "app:msg:4242");
    assert_eq!(r["channel"], "app");
    assert_eq!(r["msgtype"], "text");
    assert_eq!(r["event"], serde_json::Value::Null);
    assert_eq!(r["from"], "zhangsan");
    assert_eq!(r["agent_id"], 1_000_002);
    assert_eq!(r["time"], 1_409_659_813);
    assert_eq!(r["text"], "你好");
    assert!(r["raw"].as_str().expect("raw XML").contains("<MsgId>4242</MsgId>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_events_in_the_same_second_are_both_forwarded() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_forwarding_app(&wecom, &receiver).await;
    let event = |kind: &str, key: &str| {
        format!(
            "<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>lisi</FromUserName><CreateTime>1700000000</CreateTime>\
             <MsgType>event</MsgType><Event>{kind}</Event><EventKey>{key}</EventKey><AgentID>1000002</AgentID></xml>"
        )
    };
    assert_eq!(app.post_xml(&event("click", "MENU_A")).await, 200);
    assert_eq!(app.post_xml(&event("click", "MENU_B")).await, 200);
    assert_eq!(app.post_xml(&event("click", "MENU_A")).await, 200, "the retry of the first");
    let delivered = receiver.wait_for(2, Duration::from_secs(10)).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(receiver.delivered().len(), 2);
    let ids: HashSet<_> = delivered.iter().map(|d| d.message_id.clone()).collect();
    assert_eq!(ids.len(), 2);
    assert!(delivered.iter().all(|d| d.record["event"] == "click" && d.message_id.starts_with("app:evt:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_still_gets_the_message_across_a_restart_and_its_reply_is_sent() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    receiver.fail_first(2);
    receiver.reply_with("收到，稍后回复您");
    let app = spawn_forwarding_app(&wecom, &receiver).await;
    assert_eq!(app.post_text("发票", 7).await, 200);
    // The first attempt fails; restart while the retry is pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.attempts() < 1 {
        assert!(std::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = app.restart().await;
    let delivered = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(delivered[0].message_id, "app:msg:7");
    assert!(receiver.attempts() >= 3);
    let sends = wecom.wait_for_calls("message/send", 1).await;
    assert_eq!(sends[0].body["touser"], "zhangsan");
    assert_eq!(sends[0].body["agentid"], 1_000_002);
    assert_eq!(sends[0].body["text"]["content"], "收到，稍后回复您");
    app.wait_until_outbox_empty().await;
    assert_eq!(receiver.delivered().len(), 1);
    assert_eq!(wecom.calls("message/send").len(), 1);
}

/// An app that can reply through the fake WeCom API (a Secret and an agent id).
async fn spawn_replying_app(wecom: &FakeWeCom) -> TestApp {
    spawn_app_with(&[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_SECRET", SECRET), ("WECOM_AGENT_ID", "1000002")])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_from_a_member_is_answered_with_message_send() {
    let wecom = FakeWeCom::start().await;
    let app = spawn_replying_app(&wecom).await;
    assert_eq!(app.post_text("帮助", 11).await, 200);
    let sends = wecom.wait_for_calls("message/send", 1).await;
    assert_eq!(sends[0].body["text"]["content"], HELP_TEXT);
    assert_eq!(sends[0].body["touser"], "zhangsan");
    assert_eq!(sends[0].query["access_token"], "TOKEN-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errcode_42001_on_a_send_refreshes_once_and_retries_once() {
    let wecom = FakeWeCom::start().await;
    let app = spawn_replying_app(&wecom).await;
    wecom.answer_once("message/send", json!({"errcode": 42001, "errmsg": "access_token expired"}));
    assert_eq!(app.post_text("help", 12).await, 200);
    let sends = wecom.wait_for_calls("message/send", 2).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(wecom.calls("gettoken").len(), 2, "one refresh");
    assert_eq!(wecom.calls("message/send").len(), 2, "one retry");
    assert_eq!(sends[1].query["access_token"], "TOKEN-2");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains("wechat_api_wecom_api_requests_total{channel=\"app\",api=\"message/send\",errcode=\"42001\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wechat_api_access_token_refreshes_total{channel=\"app\",app=\"app\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
}

fn token_source(wecom: &FakeWeCom, store: &Store) -> TokenSource {
    let metrics = Arc::new(Metrics::new(&BuildInfo::sqlite("test")));
    let client = WeComClient::new(&wecom.base_url, Arc::clone(&metrics)).expect("client");
    TokenSource::new(ChannelName::app(), CORP_ID, Secret::new(SECRET), client, store.clone(), metrics)
}

async fn send_with(source: &TokenSource, client: &WeComClient) -> Result<(), wechat_api::testing::wecom::WeComError> {
    source.call(|token| async move { client.send_app_text(&token, "u", 1, "x").await.map(drop) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sends_with_an_expired_token_cause_one_gettoken() {
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path()).expect("store");
    let source = Arc::new(token_source(&wecom, &store));
    store
        .save_token(source.cache_key().to_owned(), StoredToken { token: "EXPIRED".into(), expires_at: 1 })
        .await
        .expect("seed an expired token");
    let client = WeComClient::new(&wecom.base_url, Arc::new(Metrics::new(&BuildInfo::sqlite("t")))).expect("client");
    let sends = (0..100).map(|_| {
        let (source, client) = (Arc::clone(&source), client.clone());
        tokio::spawn(async move { send_with(&source, &client).await })
    });
    for send in futures_util::future::join_all(sends).await {
        send.expect("task").expect("send succeeds");
    }
    assert_eq!(wecom.calls("gettoken").len(), 1);
    assert_eq!(wecom.calls("message/send").len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_fresh_stored_token_makes_no_gettoken() {
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let client = WeComClient::new(&wecom.base_url, Arc::new(Metrics::new(&BuildInfo::sqlite("t")))).expect("client");
    {
        let store = Store::open(dir.path()).expect("store");
        send_with(&token_source(&wecom, &store), &client).await.expect("first send");
    }
    assert_eq!(wecom.calls("gettoken").len(), 1);
    let store = Store::open(dir.path()).expect("store reopened");
    send_with(&token_source(&wecom, &store), &client).await.expect("send after restart");
    assert_eq!(wecom.calls("gettoken").len(), 1, "the stored token was reused");
    // Another Secret of the same corp has a cache of its own.
    let metrics = Arc::new(Metrics::new(&BuildInfo::sqlite("t")));
    let kf =
        TokenSource::new(ChannelName::kf(), CORP_ID, Secret::new("kf-secret"), client.clone(), store.clone(), metrics);
    kf.token().await.expect("kf token");
    assert_eq!(wecom.calls("gettoken").len(), 2);
    assert_eq!(wecom.calls("gettoken")[1].query["corpsecret"], "kf-secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_busy_is_retried_and_a_wrong_secret_is_not() {
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path()).expect("store");
    let source = token_source(&wecom, &store);
    wecom.answer_once("gettoken", json!({"errcode": -1, "errmsg": "system busy"}));
    source.token().await.expect("busy, then a token");
    assert_eq!(wecom.calls("gettoken").len(), 2);

    let other = TokenSource::new(
        ChannelName::kf(),
        CORP_ID,
        Secret::new("wrong"),
        WeComClient::new(&wecom.base_url, Arc::new(Metrics::new(&BuildInfo::sqlite("t")))).expect("client"),
        store.clone(),
        Arc::new(Metrics::new(&BuildInfo::sqlite("t"))),
    );
    wecom.answer_once("gettoken", json!({"errcode": 40001, "errmsg": "invalid credential"}));
    let error = other.token().await.expect_err("wrong secret");
    assert_eq!(error.errcode(), Some(40001));
    assert_eq!(wecom.calls("gettoken").len(), 3, "no retry loop on 40001");
    assert_eq!(other.status().last_errcode, Some(40001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errcode_60020_names_the_ip_to_trust() {
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path()).expect("store");
    wecom.answer_once("gettoken", json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 198.51.100.23, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"}));
    let error = token_source(&wecom, &store).token().await.expect_err("60020");
    let text = error.to_string();
    assert!(text.contains("add 198.51.100.23 to the app's trusted IPs"), "{text}");
    assert!(!text.contains(SECRET));
}

#[test]
fn every_acknowledged_callback_survives_a_kill_9() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let receiver = ForwardReceiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let (_, _, cert_pem) = write_certificate(dir.path(), 30);
        let env = test_env(dir.path(), &[("FORWARD_URL", &receiver.url), ("FORWARD_SECRET", &receiver.secret)]);

        let mut command = wechat_api(dir.path());
        command.arg("serve").envs(env.clone());
        let mut service = Running::start(command);
        let port = service.port();
        let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(5));

        // 8 senders push distinct callbacks; after 150 acknowledgements, kill -9.
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = (0..8u64)
            .map(|worker| {
                let (client, acknowledged, count) = (client.clone(), Arc::clone(&acknowledged), Arc::clone(&count));
                tokio::spawn(async move {
                    for i in 0..50u64 {
                        let msg_id = 1_000_000 + worker * 1_000 + i;
                        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("burst", msg_id));
                        let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
                        match client.post(url).body(signed.body).send().await {
                            Ok(r) if r.status().is_success() => {
                                acknowledged.lock().expect("lock").push(format!("app:msg:{msg_id}"));
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::SeqCst) < 150 {
            assert!(std::time::Instant::now() < deadline, "the burst stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        service.kill_9();
        for sender in senders {
            let _ = sender.await;
        }
        let acknowledged: HashSet<String> = acknowledged.lock().expect("lock").iter().cloned().collect();
        assert!(acknowledged.len() >= 150 && acknowledged.len() < 400, "{} acknowledged", acknowledged.len());

        let mut command = wechat_api(dir.path());
        command.arg("serve").envs(env);
        let _restarted = Running::start(command);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let forwarded: HashSet<String> = receiver.delivered().into_iter().map(|d| d.message_id).collect();
            let missing: Vec<_> = acknowledged.difference(&forwarded).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} acknowledged callbacks never forwarded, e.g. {:?}",
                missing.len(),
                missing.first()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_character_chinese_reply_arrives_as_ordered_parts_that_rejoin_to_the_original() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    // An LLM-style answer: Markdown, paragraphs, 5,000 characters (15,000 bytes).
    let paragraph = format!("**第{{}}段**：{}\n\n", "这是一个需要拆分发送的很长的回答。".repeat(20));
    let mut reply = String::new();
    let mut n = 0;
    while reply.chars().count() < 5_000 {
        n += 1;
        reply.push_str(&paragraph.replace("{}", &n.to_string()));
    }
    let reply: String = reply.chars().take(5_000).collect();
    receiver.reply_with(&reply);
    let app = spawn_forwarding_app(&wecom, &receiver).await;
    assert_eq!(app.post_text("写一篇长文", 8).await, 200);
    app.wait_until_outbox_empty().await;
    let sends = wecom.calls("message/send");
    assert!(sends.len() >= 8, "15,000 bytes need at least 8 parts of 2048: {}", sends.len());
    let parts: Vec<String> =
        sends.iter().map(|c| c.body["text"]["content"].as_str().expect("text").to_owned()).collect();
    assert!(parts.iter().all(|p| p.len() <= 2048), "every part within WeCom's limit");
    assert_eq!(parts.concat(), wechat_api::testing::shaping::flatten_markdown(&reply), "in order, nothing lost");
    assert!(!parts.concat().contains("**"), "no raw Markdown reaches WeChat");
}
