//! The AI bot (智能机器人, SPEC §13) in callback mode, over real TLS against the
//! fake WeCom's bot side: JSON callbacks with an empty receive id, streams kept
//! in the store and shown to refreshes, the bot's answer from the forward reply
//! or the send API, the 20,480-byte cut and the deadline with `response_url`,
//! the three events, and the bad input refused with a 4xx that changes nothing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fakes::{FakeAibot, FakeWeCom, ForwardProxy, ForwardReceiver, Reach, Replica};
use crate::helpers::*;

const BOT_TOKEN: &str = "BotToken0123";
const BOT_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const SEND: &str = "send-token-0123456789abcdef";
/// How often the fake plays refreshes (WeCom: about once a second).
const PERIOD: Duration = Duration::from_millis(100);

fn bot() -> FakeAibot {
    FakeAibot::new(BOT_TOKEN, BOT_KEY, "aibot")
}

/// An appliance with the built-in `aibot` channel, forwarding to `receiver`,
/// calling `wecom` (whose origin `response_url`s must have).
async fn spawn_aibot(wecom: &FakeWeCom, receiver: &ForwardReceiver, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("AIBOT_TOKEN", BOT_TOKEN),
        ("AIBOT_ENCODING_AES_KEY", BOT_KEY),
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("FORWARD_URL", receiver.url.as_str()),
        ("FORWARD_SECRET", receiver.secret.as_str()),
        ("SEND_TOKEN", SEND),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

/// A user's text in a single chat, as WeCom sends it.
fn text(wecom: &FakeWeCom, msgid: &str, userid: &str, content: &str) -> Value {
    json!({"msgid": msgid, "aibotid": "BOT", "chattype": "single", "from": {"userid": userid},
           "response_url": wecom.response_url(msgid), "msgtype": "text", "text": {"content": content}})
}

fn event(msgid: &str, eventtype: &str, body: Value) -> Value {
    json!({"msgid": msgid, "create_time": 1_700_000_000, "aibotid": "BOT", "chattype": "single",
           "from": {"userid": "zhangsan"}, "msgtype": "event", "event": {"eventtype": eventtype, eventtype: body}})
}

/// Delivers a message; the stream id of the stream just begun.
async fn open_stream(app: &impl Reach, message: &Value) -> String {
    let (status, answer) = bot().post(app, message).await;
    assert_eq!(status, 200);
    let answer = answer.expect("a stream answer");
    assert_eq!(answer["msgtype"], "stream", "{answer}");
    assert_eq!((&answer["stream"]["finish"], &answer["stream"]["content"]), (&json!(false), &json!("")));
    answer["stream"]["id"].as_str().expect("stream id").to_owned()
}

/// `POST /api/v1/messages`: the status and the answer.
async fn post_send(app: &impl Reach, body: &Value) -> (u16, Value) {
    let response =
        app.client().post(app.url("/api/v1/messages")).bearer_auth(SEND).json(body).send().await.expect("send API");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn message_status(app: &TestApp, id: &str) -> Value {
    let url = app.url(&format!("/api/v1/messages/{id}"));
    app.client.get(url).bearer_auth(SEND).send().await.expect("status").json().await.expect("json")
}

/// Polls the message's status until it is `want`, or fails after 15 s.
async fn status_becomes(app: &TestApp, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = message_status(app, id).await;
        if status["status"] == want {
            return status;
        }
        assert!(Instant::now() < deadline, "still {status}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fake's `response_url` bodies, waited for until there are `count`.
async fn responses(wecom: &FakeWeCom, count: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = wecom.responses();
        if got.len() >= count {
            return got;
        }
        assert!(Instant::now() < deadline, "{} response_url calls, expected {count}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_ai_bot_verifies_its_url_with_an_empty_receive_id_on_its_own_path() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let key = wechat_api::testing::crypto::AesKey::parse(BOT_KEY).expect("key");
    let echostr = wechat_api::testing::crypto::encrypt(&key, b"echo-1234", b"");
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let signature = wechat_api::testing::crypto::sign(BOT_TOKEN, &now, "n1", &echostr);
    let url =
        app.url(&format!("/api/v1/wecom/callback/aibot?{}", query(signature.as_str(), &now, "n1", Some(&echostr))));
    let started = Instant::now();
    let response = app.client.get(url).send().await.expect("verification");
    assert!(started.elapsed() < Duration::from_secs(1), "WeCom allows 1 s");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "echo-1234");
    // The shared paths stay the app's and kf's: the bot's Token signs nothing there.
    let shared = app.url(&format!("/api/v1/wecom/callback?{}", query(signature.as_str(), &now, "n1", Some(&echostr))));
    assert_eq!(app.client.get(shared).send().await.expect("shared").status(), 403);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_message_is_journaled_forwarded_once_and_answered_with_the_same_stream_on_a_retry() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let mut message = json!({"msgid": "M1", "aibotid": "BOT", "chatid": "CHAT1", "chattype": "group",
        "from": {"userid": "zhangsan"}, "response_url": wecom.response_url("M1"), "msgtype": "mixed",
        "mixed": {"msg_item": [{"msgtype": "text", "text": {"content": "@bot 看看"}},
                               {"msgtype": "text", "text": {"content": "这段"}}]},
        "quote": {"msgtype": "text", "text": {"content": "上一句"}}});
    let first = open_stream(&app, &message).await;
    let again = open_stream(&app, &message).await;
    assert_eq!(first, again, "a retry gets the same stream");
    assert_eq!(
        first,
        wechat_api::testing::streams::stream_id(&wechat_api::testing::channels::ChannelName::aibot(), "M1")
    );
    message["msgid"] = json!("M2");
    assert_ne!(open_stream(&app, &message).await, first, "another message, another stream");
    let delivered = receiver.wait_for(2, Duration::from_secs(15)).await;
    app.wait_until_outbox_empty().await;
    assert_eq!(receiver.delivered().len(), 2, "each message forwarded once");
    let record = &delivered.iter().find(|d| d.record["id"] == "aibot:msg:M1").expect("M1 forwarded").record;
    assert!(delivered[0].signature_ok);
    assert_eq!(record["kind"], "aibot");
    assert_eq!(record["channel"], "aibot");
    assert_eq!(record["chattype"], "group");
    assert_eq!(record["chatid"], "CHAT1");
    assert_eq!(record["from"], "zhangsan");
    assert_eq!(record["text"], "@bot 看看\n这段");
    assert_eq!(record["quote"]["text"]["content"], "上一句");
    assert_eq!(record["stream_id"], first.as_str());
    assert!(record["raw"].get("response_url").is_none(), "the one-use URL stays in the appliance: {record}");
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"aibot\",outcome=\"duplicate\"}").await, 1.0);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_bot_streams_its_answer_through_the_send_api_and_each_refresh_shows_the_answer_so_far() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "S1", "zhangsan", "讲个笑话")).await;
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!(""), &json!(false)));

    let (status, first) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:S1", "text": "<think>想想</think>", "finish": false})).await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(first["status"], "streaming");
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("<think>想想</think>"), &json!(false)));

    let (status, second) = post_send(
        &app,
        &json!({"in_reply_to": "aibot:msg:S1", "text": "\n**从前**有座山。", "append": true, "finish": false}),
    )
    .await;
    assert_eq!((status, second["id"].as_str()), (202, Some(id.as_str())), "every update is the same message");
    let (status, third) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:S1", "text": "山里有座庙。", "append": true})).await;
    assert_eq!((status, third["id"].as_str()), (202, Some(id.as_str())));
    assert_eq!(message_status(&app, &id).await["status"], "streaming", "not shown yet");

    let seen = bot().play_refreshes(&app, &stream, "zhangsan", PERIOD, Duration::from_secs(10)).await;
    let last = seen.last().expect("a refresh");
    assert_eq!(last["finish"], true);
    assert_eq!(last["content"], "<think>想想</think>\n**从前**有座山。山里有座庙。", "Markdown kept as it is");
    status_becomes(&app, &id, "sent").await;

    let (status, late) = post_send(&app, &json!({"in_reply_to": "aibot:msg:S1", "text": "还有"})).await;
    assert_eq!(status, 409, "{late}");
    let (status, _) = post_send(&app, &json!({"in_reply_to": "aibot:msg:NOPE", "text": "x"})).await;
    assert_eq!(status, 404);
    let (status, refused) =
        post_send(&app, &json!({"channel": "aibot", "to": "zhangsan", "text": "x", "finish": true})).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(app.metric("wechat_api_aibot_streams_total{channel=\"aibot\",outcome=\"finished\"}").await, 1.0);
    assert!(app.metric("wechat_api_aibot_refreshes_total{channel=\"aibot\"}").await >= 3.0);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_retried_append_with_its_idempotency_key_is_taken_once_and_the_key_with_another_body_is_409() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "I1", "zhangsan", "讲个故事")).await;
    let append = |text: &str, key: &str| json!({"in_reply_to": "aibot:msg:I1", "text": text, "append": true, "finish": false, "idempotency_key": key});
    let (status, first) = post_send(&app, &append("从前", "k-1")).await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    let (status, again) = post_send(&app, &append("从前", "k-1")).await;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())), "the retry is the first request: {again}");
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!(refresh["content"], "从前", "appended once");

    let (status, reused) = post_send(&app, &append("有座山", "k-1")).await;
    assert_eq!(status, 409, "{reused}");
    let reason = reused.to_string();
    assert!(reason.contains("$.idempotency_key") && reason.contains(&id), "{reason}");
    let finished = json!({"in_reply_to": "aibot:msg:I1", "text": "有座山", "append": true, "idempotency_key": "k-1"});
    assert_eq!(post_send(&app, &finished).await.0, 409, "finish is part of the request too");
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("从前"), &json!(false)), "nothing taken");

    let (status, _) = post_send(&app, &append("有座山", "k-2")).await;
    assert_eq!(status, 202);
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!(refresh["content"], "从前有座山");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_answer_past_40960_bytes_is_refused_with_413_and_changes_nothing() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "B1", "zhangsan", "长文")).await;
    let (status, _) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:B1", "text": "a".repeat(40_000), "finish": false})).await;
    assert_eq!(status, 202);
    let (status, answer) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:B1", "text": "b".repeat(961), "append": true})).await;
    assert_eq!(status, 413, "{answer}");
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!(refresh["finish"], false, "the refused update changed nothing");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_forward_reply_is_the_whole_answer_and_a_long_one_is_cut_with_the_rest_through_response_url_once() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let first = "第一段。".repeat(1_000);
    let second = "第二段。".repeat(1_000);
    receiver.reply_with(&format!("{first}\n\n{second}"));
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "L1", "zhangsan", "写长文")).await;
    let seen = bot().play_refreshes(&app, &stream, "zhangsan", PERIOD, Duration::from_secs(15)).await;
    let last = seen.last().expect("a refresh");
    assert_eq!(
        (&last["finish"], last["content"].as_str()),
        (&json!(true), Some(first.as_str())),
        "cut at the paragraph"
    );
    let calls = responses(&wecom, 1).await;
    assert_eq!(calls[0].0, "L1");
    assert_eq!(calls[0].1, json!({"msgtype": "markdown", "markdown": {"content": second}}));
    status_becomes(&app, &format!("stream_{stream}"), "sent").await;
    // The action again (a retry after a lost record of it) calls nothing more.
    assert_eq!(wecom.responses().len(), 1);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_answer_with_an_early_paragraph_break_reaches_the_user_whole_in_the_stream_and_one_response_url_call() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    // A paragraph break at 15,000 bytes, then 24,996 bytes of sentences: cut at the
    // break, the rest would not fit one response_url call.
    let answer = format!("{}\n\n{}", "第一段。".repeat(1_250), "第二段。".repeat(2_083));
    receiver.reply_with(&answer);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "P1", "zhangsan", "写长文")).await;
    let seen = bot().play_refreshes(&app, &stream, "zhangsan", PERIOD, Duration::from_secs(15)).await;
    let last = seen.last().expect("a refresh");
    assert_eq!(last["finish"], true);
    let shown = last["content"].as_str().expect("content").to_owned();
    let calls = responses(&wecom, 1).await;
    let rest = calls[0].1["markdown"]["content"].as_str().expect("markdown").to_owned();
    assert!(shown.len() <= 20_480 && rest.len() <= 20_480, "{} and {} bytes", shown.len(), rest.len());
    assert_eq!(format!("{shown}{rest}"), answer, "the whole answer, nothing dropped");
    status_becomes(&app, &format!("stream_{stream}"), "sent").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_rest_of_a_long_answer_goes_to_response_url_through_wecom_proxy_url() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let proxy = ForwardProxy::start("egress", "proxy-password-1").await;
    let proxy_url = proxy.url("egress:proxy-password-1@");
    receiver.reply_with(&format!("{}\n\n{}", "第一段。".repeat(1_000), "第二段。".repeat(1_000)));
    let app = spawn_aibot(&wecom, &receiver, &[("WECOM_PROXY_URL", &proxy_url)]).await;
    let stream = open_stream(&app, &text(&wecom, "X2", "zhangsan", "写长文")).await;
    bot().play_refreshes(&app, &stream, "zhangsan", PERIOD, Duration::from_secs(15)).await;
    responses(&wecom, 1).await;
    let through: Vec<_> = proxy.seen().into_iter().filter(|p| p.target.contains("/cgi-bin/aibot/response")).collect();
    assert!(!through.is_empty() && through.iter().all(|p| p.authorized), "response_url went direct: {through:?}");
    assert!(!proxy.seen().iter().any(|p| p.target.starts_with(&receiver.url)), "the forward stays direct");
    status_becomes(&app, &format!("stream_{stream}"), "sent").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_unfinished_stream_closes_at_the_deadline_with_the_late_text_and_the_finished_answer_follows_by_response_url(
) {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(
        &wecom,
        &receiver,
        &[("AIBOT_STREAM_DEADLINE_SECS", "5"), ("AIBOT_LATE_TEXT", "（稍后发送）"), ("SUPERVISOR_INTERVAL_SECS", "1")],
    )
    .await;
    let stream = open_stream(&app, &text(&wecom, "D1", "zhangsan", "慢问题")).await;
    let (status, _) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:D1", "text": "正在查资料", "finish": false})).await;
    assert_eq!(status, 202);
    // WeCom's window, shortened: it asks until it sees finish.
    let seen = bot().play_refreshes(&app, &stream, "zhangsan", PERIOD, Duration::from_secs(20)).await;
    let last = seen.last().expect("a refresh");
    assert_eq!((&last["finish"], &last["content"]), (&json!(true), &json!("正在查资料（稍后发送）")));
    assert!(seen.len() > 1 && seen[0]["finish"] == false, "unfinished until the deadline");
    assert_eq!(message_status(&app, &format!("stream_{stream}")).await["status"], "streaming");
    assert_eq!(app.metric("wechat_api_aibot_streams_total{channel=\"aibot\",outcome=\"late\"}").await, 1.0);
    let check = app.check_becomes("aibot:aibot", "warn").await;
    assert!(check["output"].as_str().expect("output").contains("AIBOT_STREAM_DEADLINE_SECS"), "{check}");

    // The bot goes on; what the stream did not show goes through response_url.
    let (status, _) =
        post_send(&app, &json!({"in_reply_to": "aibot:msg:D1", "text": "……答案是 42。", "append": true})).await;
    assert_eq!(status, 202);
    let calls = responses(&wecom, 1).await;
    assert_eq!(calls[0].1["markdown"]["content"], "……答案是 42。");
    status_becomes(&app, &format!("stream_{stream}"), "sent").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_stream_survives_a_restart_and_an_unknown_or_anothers_stream_is_finished_empty() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let stream = open_stream(&app, &text(&wecom, "R1", "zhangsan", "你好")).await;
    let (status, _) = post_send(&app, &json!({"in_reply_to": "aibot:msg:R1", "text": "你好呀", "finish": false})).await;
    assert_eq!(status, 202);
    let app = app.restart().await;
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("你好呀"), &json!(false)));
    let stranger = bot().refresh(&app, &stream, "lisi").await;
    assert_eq!((&stranger["content"], &stranger["finish"]), (&json!(""), &json!(true)), "not lisi's stream");
    let unknown = bot().refresh(&app, "0123456789abcdef0123456789abcdef", "zhangsan").await;
    assert_eq!(
        (&unknown["content"], &unknown["finish"], &unknown["id"]),
        (&json!(""), &json!(true), &json!("0123456789abcdef0123456789abcdef"))
    );
    let (status, _) = post_send(&app, &json!({"in_reply_to": "aibot:msg:R1", "text": "！", "append": true})).await;
    assert_eq!(status, 202);
    let refresh = bot().refresh(&app, &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("你好呀！"), &json!(true)));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn enter_chat_gets_the_welcome_template_cards_and_feedback_are_answered_empty_forwarded_and_counted() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[("AIBOT_WELCOME_TEXT", "你好，我是助手")]).await;
    assert_eq!(app.metric("wechat_api_aibot_feedback_total{channel=\"aibot\",type=\"inaccurate\"}").await, 0.0);
    assert!(app.metrics().await.contains("wechat_api_aibot_connected{channel=\"aibot\"} 0"));
    let (status, welcome) = bot().post(&app, &event("E1", "enter_chat", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(welcome, Some(json!({"msgtype": "text", "text": {"content": "你好，我是助手"}})));
    let card = event(
        "E2",
        "template_card_event",
        json!({"card_type": "button_interaction", "event_key": "yes", "task_id": "T1"}),
    );
    let started = Instant::now();
    assert_eq!(bot().post(&app, &card).await, (200, None));
    assert!(started.elapsed() < Duration::from_secs(5), "WeCom drops a card event after 5 s");
    let feedback = event("E3", "feedback_event", json!({"id": "S", "type": 2, "content": "不对"}));
    assert_eq!(bot().post(&app, &feedback).await, (200, None), "only an empty answer is allowed");
    assert_eq!(bot().post(&app, &feedback).await, (200, None), "a retry");
    let delivered = receiver.wait_for(3, Duration::from_secs(15)).await;
    let events: Vec<&Value> = delivered.iter().map(|d| &d.record["event"]).collect();
    assert!(
        events.contains(&&json!("template_card_event")) && events.contains(&&json!("feedback_event")),
        "{events:?}"
    );
    app.wait_until_outbox_empty().await;
    assert_eq!(receiver.delivered().len(), 3);
    assert_eq!(app.metric("wechat_api_aibot_feedback_total{channel=\"aibot\",type=\"inaccurate\"}").await, 1.0);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_ai_bot_callbacks_get_a_clear_4xx_and_change_nothing_while_an_unknown_msgtype_is_kept() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[("AIBOT_ID", "BOT")]).await;
    let bot = bot();
    let good = text(&wecom, "G1", "zhangsan", "hi");
    let (query, _, body) = bot.signed_for(&good, "ww-some-corp");
    assert_eq!(bot.post_raw(&app, &query, body).await.0, 400, "a receive id that is not empty");
    let mut foreign = good.clone();
    foreign["aibotid"] = json!("OTHER");
    let (status, _) = bot.post(&app, &foreign).await;
    assert_eq!(status, 400, "another bot's callback");
    let cases: [(Value, &str); 3] = [
        (json!([1, 2]), "not a JSON object"),
        (json!("text"), "not a JSON object"),
        (json!({"msgtype": "text", "text": {"content": "x"}}), "no msgid"),
    ];
    for (json, reason) in cases {
        let (query, _, body) = bot.signed_for(&json, "");
        let (status, text) = bot.post_raw(&app, &query, body).await;
        assert_eq!(status, 400, "{json}");
        assert!(text.contains(reason), "{text}");
    }
    let (query, _, _) = bot.signed_for(&good, "");
    assert_eq!(bot.post_raw(&app, &query, "<xml><Encrypt>x</Encrypt></xml>".into()).await.0, 400, "an XML body");
    let (_, _, body) = bot.signed_for(&good, "");
    assert_eq!(bot.post_raw(&app, "timestamp=1&nonce=2", body).await.0, 400, "no signature");
    assert_eq!(app.store.unhandled().await.expect("journal"), 0);
    // Counted for the bot whose own path it came to.
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"aibot\",outcome=\"wrong_aibotid\"}").await, 1.0);

    let unknown = json!({"msgid": "U1", "aibotid": "BOT", "from": {"userid": "zhangsan"}, "msgtype": "hologram", "hologram": {"x": 1}});
    assert_eq!(bot.post(&app, &unknown).await, (200, None), "kept, answered empty");
    let delivered = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(delivered[0].record["msgtype"], "hologram");
    assert_eq!(delivered[0].record["raw"]["hologram"]["x"], 1);
    assert_eq!(receiver.delivered().len(), 1, "nothing refused was forwarded");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_response_url_off_the_api_base_origin_is_never_called_and_the_answer_is_failed() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let elsewhere = FakeWeCom::start().await;
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let mut message = text(&wecom, "X1", "zhangsan", "长文");
    message["response_url"] = json!(elsewhere.response_url("X1"));
    let stream = open_stream(&app, &message).await;
    let long = format!("{}\n{}", "a".repeat(20_000), "b".repeat(1_000));
    let (status, _) = post_send(&app, &json!({"in_reply_to": "aibot:msg:X1", "text": long})).await;
    assert_eq!(status, 202);
    let failed = status_becomes(&app, &format!("stream_{stream}"), "failed").await;
    assert!(failed["reason"].as_str().expect("reason").contains("WECOM_API_BASE_URL"), "{failed}");
    assert!(elsewhere.responses().is_empty() && wecom.responses().is_empty());
    assert_eq!(app.metric("wechat_api_aibot_streams_total{channel=\"aibot\",outcome=\"expired\"}").await, 1.0);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_image_is_downloaded_at_once_decrypted_with_the_bots_key_and_forwarded_with_its_path() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_aibot(&wecom, &receiver, &[]).await;
    let png: Vec<u8> = (0..5_000u32).map(|i| (i % 253) as u8).collect();
    let url = wecom.serve_aibot_media("img1", &png, BOT_KEY);
    let image = json!({"msgid": "I1", "aibotid": "BOT", "chattype": "single", "from": {"userid": "zhangsan"},
        "response_url": wecom.response_url("I1"), "msgtype": "image", "image": {"url": url}});
    open_stream(&app, &image).await;
    let delivered = receiver.wait_for(1, Duration::from_secs(15)).await;
    let record = &delivered[0].record;
    let path = record["media_path"].as_str().unwrap_or_else(|| panic!("a media_path: {record}"));
    assert_eq!(std::fs::read(path).expect("the saved file"), png, "decrypted");
    assert!(path.starts_with(&app.dir.path().join("uploads").display().to_string()));
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_the_kill_9_of_the_replica_that_took_the_message() {
    let Some(url) = crate::postgres::fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let env = test_env(
        dir.path(),
        &[
            ("DATABASE_URL", &url),
            ("DATABASE_POOL_SIZE", "2"),
            ("AIBOT_TOKEN", BOT_TOKEN),
            ("AIBOT_ENCODING_AES_KEY", BOT_KEY),
            ("WECOM_API_BASE_URL", &wecom.base_url),
            ("FORWARD_URL", &receiver.url),
            ("FORWARD_SECRET", &receiver.secret),
            ("SEND_TOKEN", SEND),
        ],
    );
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(5));
    let (mut processes, mut replicas) = (Vec::new(), Vec::new());
    for index in 0..3 {
        let mut command = wechat_api(dir.path());
        command.arg("serve").envs(&env).env("REPLICA_ID", format!("replica-{index}"));
        let process = tokio::task::block_in_place(|| Running::start(command));
        let port = tokio::task::block_in_place(|| process.port());
        processes.push(process);
        replicas.push(Replica { port, client: client.clone() });
    }
    // Replica 0 takes the message and the bot's first words; then it dies.
    let stream = open_stream(&replicas[0], &text(&wecom, "K1", "zhangsan", "问个问题")).await;
    let (status, first) =
        post_send(&replicas[0], &json!({"in_reply_to": "aibot:msg:K1", "text": "一半的答案", "finish": false})).await;
    assert_eq!(status, 202, "{first}");
    processes[0].kill_9();
    // WeCom's next refresh lands on another replica: the snapshot is there.
    let refresh = bot().refresh(&replicas[1], &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("一半的答案"), &json!(false)));
    // The bot's next call reaches a third replica and updates the same stream.
    let (status, last) =
        post_send(&replicas[2], &json!({"in_reply_to": "aibot:msg:K1", "text": "，另一半。", "append": true})).await;
    assert_eq!((status, &last["id"]), (202, &first["id"]), "{last}");
    let refresh = bot().refresh(&replicas[1], &stream, "zhangsan").await;
    assert_eq!((&refresh["content"], &refresh["finish"]), (&json!("一半的答案，另一半。"), &json!(true)));
    // A retry of the message on a living replica gets the same stream, and nothing is forwarded twice.
    assert_eq!(open_stream(&replicas[2], &text(&wecom, "K1", "zhangsan", "问个问题")).await, stream);
    let delivered = receiver.wait_for(1, Duration::from_secs(90)).await;
    assert_eq!(delivered[0].record["stream_id"], stream.as_str());
    assert_eq!(receiver.delivered().len(), 1);
}
