//! Building a bot on the appliance (SPEC §10): the send API, the kf rules it
//! enforces before any call to WeCom, the handover to a human, delivery
//! outcomes, and sending exactly once across a kill -9.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wechat_api::testing::dispatch::HELP_TEXT;

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;
use crate::kf::{notify, now, page, spawn_kf_app, ADMIN};

const SEND: &str = "send-token-0123456789abcdef";
const HANDOFF_TEXT: &str = "正在为您转接人工客服，请稍候。";

/// A text from customer `customer` of account wkA, written at `at`.
fn customer_text(msgid: &str, customer: &str, content: &str, at: i64) -> Value {
    json!({"msgid": msgid, "open_kfid": "wkA", "external_userid": customer, "send_time": at,
           "origin": 3, "msgtype": "text", "text": {"content": content}})
}

/// A kf event about `customer`.
fn event(msgid: &str, customer: &str, mut body: Value) -> Value {
    body["open_kfid"] = json!("wkA");
    body["external_userid"] = json!(customer);
    json!({"msgid": msgid, "send_time": now(), "origin": 4, "msgtype": "event", "event": body})
}

/// WeCom delivers `messages` through a sync, and the appliance has handled them.
async fn deliver(app: &TestApp, wecom: &FakeWeCom, messages: Vec<Value>) {
    let keys: Vec<String> =
        messages.iter().map(|m| format!("kf:msg:{}", m["msgid"].as_str().expect("msgid"))).collect();
    wecom.answer_once("kf/sync_msg", page(messages, "", 0));
    // A notice of its own (a distinct Token), not a duplicate of the last one.
    assert_eq!(notify(app, &format!("EVT-{}", keys.join("-"))).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    for key in keys {
        while !app.store.contains(key.clone()).await.expect("store") {
            assert!(Instant::now() < deadline, "{key} was never journaled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    app.wait_until_outbox_empty().await;
}

async fn spawn_bot(wecom: &FakeWeCom, receiver: &ForwardReceiver, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("SEND_TOKEN", SEND)];
    settings.extend_from_slice(extra);
    spawn_kf_app(wecom, receiver, &settings).await
}

/// `POST /api/v1/messages` with `bearer`; the status and the JSON answer.
async fn post_send(app: &TestApp, body: &Value, bearer: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .expect("send API answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert!(!text.contains(SEND) && !text.contains(ADMIN), "a token in an answer: {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Sends `body`, expecting 202; returns the message id.
async fn send(app: &TestApp, body: Value) -> String {
    let (status, answer) = post_send(app, &body, SEND).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

async fn message_status(app: &TestApp, id: &str) -> Value {
    let response =
        app.client.get(app.url(&format!("/api/v1/messages/{id}"))).bearer_auth(SEND).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON")
}

/// Polls until message `id` leaves `queued`; returns its status document.
async fn settled(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = message_status(app, id).await;
        if status["status"] != "queued" {
            return status;
        }
        assert!(Instant::now() < deadline, "{id} stayed queued: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kf_to(customer: &str, text: &str) -> Value {
    json!({"channel": "kf", "to": customer, "open_kfid": "wkA", "text": text})
}

fn sent_texts(wecom: &FakeWeCom) -> Vec<String> {
    wecom
        .calls("kf/send_msg")
        .iter()
        .map(|c| c.body["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_opens_only_its_own_door_and_the_api_is_off_without_one() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let off = spawn_kf_app(&wecom, &receiver, &[]).await;
    let (status, answer) = post_send(&off, &kf_to("wm1", "hi"), SEND).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().expect("reason").contains("set SEND_TOKEN"), "{answer}");

    let app = spawn_bot(&wecom, &receiver, &[]).await;
    assert_eq!(post_send(&app, &kf_to("wm1", "hi"), ADMIN).await.0, 401, "the admin token does not send");
    assert_eq!(post_send(&app, &kf_to("wm1", "hi"), "wrong-token-of-another-length").await.0, 401);
    let unauthenticated = app.client.post(app.url("/api/v1/messages")).json(&kf_to("wm1", "hi")).send().await;
    assert_eq!(unauthenticated.expect("answer").status().as_u16(), 401);
    let admin = app.client.get(app.url("/api/test-wecom-connection")).bearer_auth(SEND).send().await.expect("answer");
    assert_eq!(admin.status().as_u16(), 401, "the send token opens no admin endpoint");
    assert!(wecom.calls("kf/send_msg").is_empty());

    // The same token for both doors is a configuration error that names the variable, not the value.
    let dir = tempfile::tempdir().expect("dir");
    let env = test_env(dir.path(), &[("ADMIN_TOKEN", ADMIN), ("SEND_TOKEN", ADMIN)]);
    let errors = wechat_api::testing::config::load(&wechat_api::testing::config::Sources { env, ..Default::default() })
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("SEND_TOKEN must differ from ADMIN_TOKEN") && !errors.contains(ADMIN), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_the_path_of_the_problem_and_change_nothing() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    let cases = [
        (json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA"}), 400, "$.text"),
        (json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": ""}), 400, "$.text"),
        (json!({"channel": "sms", "to": "wm1", "text": "hi"}), 400, "$.channel"),
        (json!({"to": "wm1", "text": "hi"}), 400, "$.channel"),
        (json!({"channel": "kf", "open_kfid": "wkA", "text": "hi"}), 400, "$.to"),
        (json!({"channel": "kf", "to": "wm1", "text": "hi"}), 400, "$.open_kfid"),
        (json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": "hi", "txet": 1}), 400, "$.txet"),
        (json!({"in_reply_to": "kf:msg:nobody", "text": "hi"}), 404, "kf:msg:nobody"),
        (json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": "长".repeat(20_001)}), 413, "20000"),
        (json!("just a string"), 400, "$"),
        (json!({"channel": "kf", "to": "wm1\u{0}", "open_kfid": "wkA", "text": "hi"}), 400, "$.to"),
        (json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA\r\nX", "text": "hi"}), 400, "$.open_kfid"),
        (json!({"channel": "app", "to": "\u{202e}nasgnahz", "text": "hi"}), 400, "$.to"),
        (json!({"in_reply_to": "kf:msg:\u{1b}[2J", "text": "hi"}), 400, "$.in_reply_to"),
        (
            json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": "hi", "idempotency_key": "k\u{7}"}),
            400,
            "$.idempotency_key",
        ),
    ];
    for (body, expected, mentions) in cases {
        let (status, answer) = post_send(&app, &body, SEND).await;
        assert_eq!(status, expected, "{body}: {answer}");
        let reason = answer["error"].as_str().expect("a reason");
        assert!(reason.contains(mentions), "{body}: {reason}");
    }
    let raw = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(SEND)
        .header("Content-Type", "application/json")
        .body("{\"text\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status().as_u16(), 400);
    assert!(app.store.recent_sends(10).await.expect("store").is_empty(), "nothing was recorded");
    assert!(wecom.calls("kf/send_msg").is_empty() && wecom.calls("message/send").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_forwarded_record_reaches_its_customer_once_under_our_own_msgid() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "你们几点关门？", now())]).await;
    let record = receiver.wait_for(1, Duration::from_secs(15)).await[0].record.clone();
    assert_eq!(record["handoff"], false);

    let body = json!({"in_reply_to": record["id"], "text": "我们**晚上九点**关门。", "idempotency_key": "q-1"});
    let id = send(&app, body.clone()).await;
    let status = settled(&app, &id).await;
    assert_eq!((status["status"].as_str(), status["parts"].as_i64()), (Some("sent"), Some(1)), "{status}");
    let calls = wecom.calls("kf/send_msg");
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].body["touser"].as_str(), calls[0].body["open_kfid"].as_str()), (Some("wm1"), Some("wkA")));
    assert_eq!(calls[0].body["text"]["content"], "我们晚上九点关门。", "Markdown flattened");
    let msgid = calls[0].body["msgid"].as_str().expect("our own msgid");
    assert!(
        (1..=32).contains(&msgid.len()) && msgid.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{msgid}"
    );

    // The same idempotency key again: the first message, nothing more sent.
    let (again, answer) = post_send(&app, &body, SEND).await;
    assert_eq!((again, answer["id"].as_str()), (202, Some(id.as_str())), "{answer}");
    app.wait_until_outbox_empty().await;
    assert_eq!(wecom.calls("kf/send_msg").len(), 1);
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"kf\",outcome=\"sent\"}").await, 1.0);
    let page = app.client.get(app.url("/")).send().await.expect("status page").text().await.expect("html");
    assert!(page.contains(&id) && page.contains("sent"), "the status page lists recent sends: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_with_another_body_is_answered_409_and_sends_nothing_more() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "在吗", now()), customer_text("m2", "wm2", "在吗", now())])
        .await;
    let first = json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": "您好", "idempotency_key": "k-1"});
    let id = send(&app, first.clone()).await;
    // The same request, written differently: the first send again.
    let same =
        json!({"idempotency_key": "k-1", "text": "您\u{597d}", "open_kfid": "wkA", "to": "wm1", "channel": "kf"});
    let (status, answer) = post_send(&app, &same, SEND).await;
    assert_eq!((status, answer["id"].as_str()), (202, Some(id.as_str())), "{answer}");
    for other in [
        json!({"channel": "kf", "to": "wm1", "open_kfid": "wkA", "text": "您好！", "idempotency_key": "k-1"}),
        json!({"channel": "kf", "to": "wm2", "open_kfid": "wkA", "text": "您好", "idempotency_key": "k-1"}),
        json!({"in_reply_to": "kf:msg:m1", "text": "您好", "idempotency_key": "k-1"}),
    ] {
        let (status, answer) = post_send(&app, &other, SEND).await;
        assert_eq!(status, 409, "{other}: {answer}");
        let reason = answer["error"].as_str().expect("a reason");
        assert!(reason.contains("$.idempotency_key") && reason.contains(&id), "{reason}");
    }
    assert_eq!(settled(&app, &id).await["status"], "sent");
    app.wait_until_outbox_empty().await;
    assert_eq!(sent_texts(&wecom), vec!["您好"], "one message sent");
    assert_eq!(app.store.recent_sends(10).await.expect("store").len(), 1, "one send recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_messages_per_customer_message_the_sixth_refused_without_calling_wecom() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "在吗", now())]).await;
    for n in 1..=5 {
        let id = send(&app, kf_to("wm1", &format!("第{n}条"))).await;
        assert_eq!(settled(&app, &id).await["status"], "sent");
    }
    let sixth = send(&app, kf_to("wm1", "第6条")).await;
    let status = settled(&app, &sixth).await;
    assert_eq!(status["status"], "refused", "{status}");
    assert!(status["reason"].as_str().expect("reason").contains("5 messages"), "{status}");
    assert_eq!(wecom.calls("kf/send_msg").len(), 5, "no call for the sixth");
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"kf\",outcome=\"refused\"}").await, 1.0);

    // The customer writes again: 5 more, and a text needing more parts than are left is refused whole.
    deliver(&app, &wecom, vec![customer_text("m2", "wm1", "还在吗", now() + 1)]).await;
    for n in 1..=3 {
        let id = send(&app, kf_to("wm1", &format!("再{n}"))).await;
        assert_eq!(settled(&app, &id).await["status"], "sent");
    }
    let long = ["段落。".repeat(300), "段落。".repeat(300), "段落。".repeat(300)].join("\n\n");
    let id = send(&app, kf_to("wm1", &long)).await;
    let status = settled(&app, &id).await;
    assert_eq!(status["status"], "refused", "{status}");
    assert!(status["reason"].as_str().expect("reason").contains("2 left"), "{status}");
    assert_eq!(wecom.calls("kf/send_msg").len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_48_hours_after_the_customers_last_message_nothing_is_sent() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("old", "wm1", "上周的问题", now() - 49 * 3600)]).await;
    let id = send(&app, kf_to("wm1", "抱歉回复晚了")).await;
    let status = settled(&app, &id).await;
    assert_eq!(status["status"], "refused");
    assert!(status["reason"].as_str().expect("reason").contains("48 hours"), "{status}");
    assert!(wecom.calls("kf/send_msg").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_never_heard_from_is_refused_without_any_call_to_wecom() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    // Were WeCom asked who owns these sessions, it would say the bot: nothing but
    // the appliance's own rule stops the sends.
    for _ in 0..16 {
        wecom.answer_once("kf/service_state/get", json!({"errcode": 0, "errmsg": "ok", "service_state": 1}));
    }
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "你好", now())]).await;
    let mut ids = Vec::new();
    for n in 1..=8 {
        ids.push(send(&app, kf_to("wm-stranger", &format!("第{n}条"))).await);
    }
    // wm1 wrote to wkA; to wkB it is a stranger.
    ids.push(send(&app, json!({"channel": "kf", "to": "wm1", "open_kfid": "wkB", "text": "你好"})).await);
    for id in &ids {
        let status = settled(&app, id).await;
        assert_eq!(status["status"], "refused", "{status}");
        let reason = status["reason"].as_str().expect("reason");
        assert!(reason.contains("no message from this customer") && reason.contains("48 hours"), "{status}");
    }
    assert!(wecom.calls("kf/send_msg").is_empty(), "no send");
    assert!(wecom.calls("kf/service_state/get").is_empty(), "WeCom is not asked either");
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"kf\",outcome=\"refused\"}").await, 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_keyword_while_a_human_has_the_session_sends_nothing_and_calls_nothing() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "转人工", now())]).await;
    assert_eq!(sent_texts(&wecom), vec![HANDOFF_TEXT]);
    assert_eq!(wecom.calls("kf/service_state/trans").len(), 1);

    // Again and again, in one page and in the next: the session is a human's already,
    // and a forward receiver asking for a human too changes nothing.
    receiver.answer_with(json!({"reply": {"text": "这就为您转人工"}, "handoff": true}));
    let t = now() + 1;
    deliver(&app, &wecom, vec![customer_text("m2", "wm1", "转人工", t), customer_text("m3", "wm1", " 人工客服 ", t)])
        .await;
    deliver(&app, &wecom, vec![customer_text("m4", "wm1", "转人工", t + 1)]).await;
    // A servicer took wm2's session in WeCom's console; wm2's keyword changes nothing either.
    let servicer = json!({"msgid": "s1", "open_kfid": "wkA", "external_userid": "wm2", "send_time": t,
                          "origin": 5, "servicer_userid": "wangwu", "msgtype": "text", "text": {"content": "我来处理"}});
    deliver(&app, &wecom, vec![servicer, customer_text("n1", "wm2", "转人工", t + 1)]).await;

    assert_eq!(sent_texts(&wecom), vec![HANDOFF_TEXT], "announced once");
    assert_eq!(wecom.calls("kf/service_state/trans").len(), 1, "handed over once");
    let delivered = receiver.wait_for(6, Duration::from_secs(15)).await;
    for id in ["kf:msg:m1", "kf:msg:m2", "kf:msg:m3", "kf:msg:m4", "kf:msg:n1"] {
        let record = &delivered.iter().find(|d| d.message_id == id).unwrap_or_else(|| panic!("{id} forwarded")).record;
        assert_eq!(record["handoff"], true, "{id}: {record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_silences_the_bot_until_the_session_ends() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", " 转人工 ", now())]).await;
    let calls = wecom.all_calls();
    let position = |api: &str| calls.iter().position(|c| c.api == api).unwrap_or_else(|| panic!("no {api}"));
    assert!(position("kf/send_msg") < position("kf/service_state/trans"), "announced, then handed over");
    assert_eq!(sent_texts(&wecom), vec![HANDOFF_TEXT]);
    let trans = &wecom.calls("kf/service_state/trans")[0].body;
    assert_eq!((trans["service_state"].as_i64(), trans["external_userid"].as_str()), (Some(2), Some("wm1")));
    assert!(trans.get("servicer_userid").is_none(), "to the queue");
    let record = receiver.wait_for(1, Duration::from_secs(15)).await[0].record.clone();
    assert_eq!(record["handoff"], true, "{record}");

    // Silence: neither the help command nor the send API reaches the customer.
    deliver(&app, &wecom, vec![customer_text("m2", "wm1", "帮助", now() + 1)]).await;
    let id = send(&app, json!({"in_reply_to": "kf:msg:m2", "text": "机器人在此"})).await;
    let status = settled(&app, &id).await;
    assert_eq!(status["status"], "refused");
    assert!(status["reason"].as_str().expect("reason").contains("human"), "{status}");
    assert_eq!(sent_texts(&wecom).len(), 1, "the bot stayed silent");
    assert_eq!(receiver.wait_for(2, Duration::from_secs(15)).await.len(), 2, "still forwarded");

    // The servicer ends the session: the bot answers again.
    deliver(&app, &wecom, vec![event("e1", "wm1", json!({"event_type": "session_status_change", "change_type": 3}))])
        .await;
    deliver(&app, &wecom, vec![customer_text("m3", "wm1", "帮助", now() + 2)]).await;
    assert_eq!(sent_texts(&wecom), vec![HANDOFF_TEXT.to_owned(), HELP_TEXT.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_answer_hands_over_to_the_configured_servicer_and_a_servicer_message_silences_too() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[("HANDOFF_SERVICER", "lisi")]).await;
    receiver.answer_with(json!({"reply": {"text": "这就为您转**人工**"}, "handoff": true}));
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "我要投诉", now())]).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(sent_texts(&wecom), vec!["这就为您转人工"]);
    let trans = &wecom.wait_for_calls("kf/service_state/trans", 1).await[0].body;
    assert_eq!((trans["service_state"].as_i64(), trans["servicer_userid"].as_str()), (Some(3), Some("lisi")));

    // Another customer, whose session a servicer took in WeCom's console: the bot is silent there too.
    receiver.answer_with(json!({"reply": {"text": "机器人的回答"}}));
    deliver(&app, &wecom, vec![customer_text("n1", "wm2", "你好", now())]).await;
    let servicer = json!({"msgid": "s1", "open_kfid": "wkA", "external_userid": "wm2", "send_time": now(),
                          "origin": 5, "servicer_userid": "wangwu", "msgtype": "text", "text": {"content": "我来处理"}});
    deliver(&app, &wecom, vec![servicer]).await;
    let before = sent_texts(&wecom).len();
    deliver(&app, &wecom, vec![customer_text("n2", "wm2", "好的", now() + 1)]).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(sent_texts(&wecom).len(), before, "no bot reply while a servicer has the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_send_fail_turns_a_sent_message_failed_with_the_meaning_of_its_fail_type() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "你好", now())]).await;
    let id = send(&app, kf_to("wm1", "您好，请问有什么可以帮您？")).await;
    assert_eq!(settled(&app, &id).await["status"], "sent");
    let msgid = wecom.calls("kf/send_msg")[0].body["msgid"].as_str().expect("msgid").to_owned();
    let failure = json!({"event_type": "msg_send_fail", "fail_msgid": msgid, "fail_type": 10});
    deliver(&app, &wecom, vec![event("f1", "wm1", failure)]).await;
    let status = message_status(&app, &id).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert!(status["reason"].as_str().expect("reason").contains("refused messages"), "{status}");
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"kf\",outcome=\"failed\"}").await, 1.0);
    let forwarded = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert!(forwarded.iter().any(|d| d.record["event"] == "msg_send_fail"), "forwarded like every record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msg_send_fail_naming_another_customer_or_account_changes_nothing() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    deliver(&app, &wecom, vec![customer_text("m1", "wm1", "你好", now())]).await;
    let id = send(&app, kf_to("wm1", "您好")).await;
    assert_eq!(settled(&app, &id).await["status"], "sent");
    let msgid = wecom.calls("kf/send_msg")[0].body["msgid"].as_str().expect("msgid").to_owned();
    let failure = json!({"event_type": "msg_send_fail", "fail_msgid": msgid, "fail_type": 10});

    deliver(&app, &wecom, vec![event("f1", "wm2", failure.clone())]).await;
    let mut other_account = event("f2", "wm1", failure.clone());
    other_account["event"]["open_kfid"] = json!("wkB");
    deliver(&app, &wecom, vec![other_account]).await;
    assert_eq!(message_status(&app, &id).await["status"], "sent", "about someone else: nothing changes");
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"kf\",outcome=\"failed\"}").await, 0.0);

    deliver(&app, &wecom, vec![event("f3", "wm1", failure)]).await;
    assert_eq!(message_status(&app, &id).await["status"], "failed", "about its own customer and account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_texts_ask_for_the_duplicate_check_and_a_long_one_arrives_in_ordered_parts() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_bot(&wecom, &receiver, &[]).await;
    let reply: String = "这是一个需要拆分发送的很长的回答。\n\n".repeat(400).chars().take(5_000).collect();
    let id = send(&app, json!({"channel": "app", "to": "zhangsan", "text": reply})).await;
    let status = settled(&app, &id).await;
    assert_eq!(status["status"], "sent", "{status}");
    let calls = wecom.calls("message/send");
    assert_eq!(status["parts"].as_u64(), Some(calls.len() as u64));
    assert!(calls.len() >= reply.len().div_ceil(2048), "{} bytes in {} parts", reply.len(), calls.len());
    let parts: Vec<&str> = calls.iter().map(|c| c.body["text"]["content"].as_str().expect("text")).collect();
    assert!(parts.iter().all(|p| p.len() <= 2048));
    assert_eq!(parts.concat(), reply, "in order, nothing lost");
    for call in &calls {
        assert_eq!(
            (call.body["enable_duplicate_check"].as_i64(), call.body["duplicate_check_interval"].as_i64()),
            (Some(1), Some(3600))
        );
        assert_eq!((call.body["touser"].as_str(), call.body["agentid"].as_i64()), (Some("zhangsan"), Some(1_000_002)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_after_wecom_accepted_but_before_sent_was_recorded_still_sends_exactly_once() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let env = test_env(
        dir.path(),
        &[
            ("WECOM_API_BASE_URL", &wecom.base_url),
            ("WECOM_KF_SECRET", "kf-secret"),
            ("SEND_TOKEN", SEND),
            ("FORWARD_URL", &receiver.url),
            ("FORWARD_SECRET", &receiver.secret),
        ],
    );
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(10));
    let start = || {
        let mut command = wechat_api(dir.path());
        command.arg("serve").envs(&env);
        Running::start(command)
    };
    let mut service = start();
    let port = service.port();
    // wm9 writes first (the kf rules refuse a customer never heard from); its
    // record is forwarded only once what it tells the kf rules is stored.
    wecom.answer_once("kf/sync_msg", page(vec![customer_text("m9", "wm9", "在吗", now())], "", 0));
    let notice = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[EVT9]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>",
        now()
    );
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &notice);
    let url = format!("https://127.0.0.1:{port}/wechat/callback?{}", signed.query);
    assert_eq!(client.post(url).body(signed.body).send().await.expect("notice").status().as_u16(), 200);
    receiver.wait_for(1, Duration::from_secs(15)).await;
    // WeCom takes the message at once but answers only after 30 s: the appliance dies first.
    wecom.delay("kf/send_msg", Duration::from_secs(30));
    let answer = client
        .post(format!("https://127.0.0.1:{port}/api/v1/messages"))
        .bearer_auth(SEND)
        .json(&kf_to("wm9", "只发一次"))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status().as_u16(), 202);
    let id = answer.json::<Value>().await.expect("JSON")["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while wecom.kf_delivered().is_empty() {
        assert!(Instant::now() < deadline, "the message never reached WeCom");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.kill_9();

    wecom.delay("kf/send_msg", Duration::ZERO);
    let mut service = start();
    let port = service.port();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status: Value = client
            .get(format!("https://127.0.0.1:{port}/api/v1/messages/{id}"))
            .bearer_auth(SEND)
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("JSON");
        if status["status"] != "queued" {
            break status;
        }
        assert!(Instant::now() < deadline, "still queued after the restart: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(wecom.calls("kf/send_msg").len(), 2, "retried after the crash, with the same msgid");
    assert_eq!(wecom.kf_delivered().len(), 1, "the customer saw it once");
    service.terminate();
}
