//! WeChat Customer Service: the sync, its cursor across restarts, history,
//! replies, the welcome message, media, and the admin API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wechat_api::testing::dispatch::HELP_TEXT;

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;

pub(crate) const KF_TOKEN: &str = "KfCallbackToken1";
pub(crate) const KF_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
pub(crate) const ADMIN: &str = "admin-token-0123456789abcdef";

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) async fn spawn_kf_app(wecom: &FakeWeCom, receiver: &ForwardReceiver, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("WECOM_KF_SECRET", "kf-secret"),
        ("WECOM_KF_TOKEN", KF_TOKEN),
        ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
        ("FORWARD_URL", receiver.url.as_str()),
        ("FORWARD_SECRET", receiver.secret.as_str()),
        ("ADMIN_TOKEN", ADMIN),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

/// The `kf_msg_or_event` notice, signed with the kf Token; returns status and body.
pub(crate) async fn notify(app: &TestApp, token: &str) -> (u16, String) {
    let xml = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>",
        now()
    );
    let response = app.post_signed("/wechat/callback", KF_TOKEN, KF_KEY, &xml).await;
    (response.status().as_u16(), response.text().await.expect("body"))
}

pub(crate) fn text_msg(msgid: &str, content: &str, send_time: i64) -> Value {
    json!({"msgid": msgid, "open_kfid": "wkA", "external_userid": format!("wm-{msgid}"), "send_time": send_time,
           "origin": 3, "msgtype": "text", "text": {"content": content}})
}

pub(crate) fn page(messages: Vec<Value>, next_cursor: &str, has_more: i64) -> Value {
    json!({"errcode": 0, "errmsg": "ok", "next_cursor": next_cursor, "has_more": has_more, "msg_list": messages})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_are_handled_once_and_a_restart_resumes_from_the_stored_cursor() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let t = now() + 5;
    wecom.answer_once("kf/sync_msg", page(vec![text_msg("m1", "一", t), text_msg("m2", "二", t)], "C1", 1));
    wecom.answer_once("kf/sync_msg", page(vec![], "C2", 1));
    wecom.answer_once("kf/sync_msg", page(vec![text_msg("m3", "三", t)], "C3", 0));
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;

    assert_eq!(notify(&app, "EVT1").await, (200, "success".to_owned()));
    receiver.wait_for(3, Duration::from_secs(15)).await;
    let calls = wecom.calls("kf/sync_msg");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].body["token"], "EVT1");
    assert_eq!(calls[0].body["limit"], 1000);
    assert_eq!(calls[0].body["open_kfid"], "wkA");
    assert!(calls[0].body.get("cursor").is_none(), "no cursor on the first sync");
    assert_eq!(calls[1].body["cursor"], "C1");
    assert_eq!(calls[2].body["cursor"], "C2", "the empty page with has_more=1 was followed");

    // After a restart: the stored cursor, and m3 (delivered again by WeCom) not twice.
    wecom.answer_once("kf/sync_msg", page(vec![text_msg("m3", "三", t), text_msg("m4", "四", t)], "C4", 0));
    let app = app.restart().await;
    assert_eq!(notify(&app, "EVT2").await.0, 200);
    receiver.wait_for(4, Duration::from_secs(15)).await;
    let calls = wecom.wait_for_calls("kf/sync_msg", 5).await;
    assert_eq!(calls[3].body["cursor"], "C3", "resumed from the stored cursor");
    assert_eq!(calls[4].body["cursor"], "C4");
    assert_eq!(calls[4].body["token"], "EVT2");
    app.wait_until_outbox_empty().await;
    let mut ids: Vec<String> = receiver.delivered().iter().map(|d| d.message_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["kf:msg:m1", "kf:msg:m2", "kf:msg:m3", "kf:msg:m4"], "each exactly once");
    let delivered = receiver.delivered();
    let record = &delivered.iter().find(|d| d.message_id == "kf:msg:m1").expect("m1").record;
    assert_eq!(record["channel"], "kf");
    assert_eq!(record["open_kfid"], "wkA");
    assert_eq!(record["from"], "wm-m1");
    assert_eq!(record["text"], "一");
    assert_eq!(record["raw"]["msgid"], "m1");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("wechat_api_kf_messages_total{channel=\"kf\",msgtype=\"text\"} 1"),
        "since the restart only m4 was handled: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sync_never_delays_the_callback_answer() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    wecom.delay("kf/sync_msg", Duration::from_secs(3));
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    assert_eq!(notify(&app, "EVT").await, (200, "success".to_owned()));
    assert_eq!(wecom.answered("kf/sync_msg"), 0, "answered before WeCom answered the sync");
    // And the sync does happen.
    let deadline = Instant::now() + Duration::from_secs(15);
    while wecom.answered("kf/sync_msg") == 0 {
        assert!(Instant::now() < deadline, "the sync never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_from_before_the_first_start_is_recorded_but_not_answered() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let three_days_ago = now() - 3 * 86_400;
    wecom.answer_once(
        "kf/sync_msg",
        page(
            vec![
                text_msg("old1", "帮助", three_days_ago),
                text_msg("old2", "在吗", three_days_ago + 60),
                text_msg("new1", "帮助", now() + 5),
            ],
            "C1",
            0,
        ),
    );
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    notify(&app, "EVT").await;
    let delivered = receiver.wait_for(3, Duration::from_secs(15)).await;
    app.wait_until_outbox_empty().await;
    let sends = wecom.calls("kf/send_msg");
    assert_eq!(sends.len(), 1, "only the new message is answered");
    assert_eq!(sends[0].body["touser"], "wm-new1");
    assert_eq!(sends[0].body["open_kfid"], "wkA");
    assert_eq!(sends[0].body["text"]["content"], HELP_TEXT);
    let old = delivered.iter().find(|d| d.message_id == "kf:msg:old1").expect("history is forwarded");
    assert_eq!(old.record["history"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_receivers_reply_to_history_is_not_sent() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    receiver.reply_with("收到");
    wecom.answer_once(
        "kf/sync_msg",
        page(
            vec![
                // History an hour old: inside WeCom's 48-hour window, so only the history rule keeps it unanswered.
                text_msg("old1", "在吗", now() - 3_600),
                text_msg("new1", "在吗", now() + 5),
            ],
            "C1",
            0,
        ),
    );
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    notify(&app, "EVT").await;
    receiver.wait_for(2, Duration::from_secs(15)).await;
    app.wait_until_outbox_empty().await;
    let sends = wecom.calls("kf/send_msg");
    assert_eq!(sends.len(), 1, "only the new message's reply is sent: {sends:?}");
    assert_eq!(sends[0].body["touser"], "wm-new1");
    assert_eq!(sends[0].body["text"]["content"], "收到");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_shop_message_is_recorded_and_counted_as_channels_with_its_raw_type_kept() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    wecom.answer_once(
        "kf/sync_msg",
        page(
            vec![json!({"msgid": "c1", "open_kfid": "wkA", "external_userid": "wmC", "send_time": now() + 5,
                        "origin": 3, "msgtype": "channels_shop_product",
                        "channels_shop_product": {"product_id": "P1", "title": "茶杯"}})],
            "C1",
            0,
        ),
    );
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    notify(&app, "EVT").await;
    let delivered = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(delivered[0].record["msgtype"], "channels");
    assert_eq!(delivered[0].record["raw"]["msgtype"], "channels_shop_product");
    let metrics = app.metrics().await;
    assert!(metrics.contains("wechat_api_kf_messages_total{channel=\"kf\",msgtype=\"channels\"} 1"), "{metrics}");
    assert!(!metrics.contains("channels_shop_product"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_session_with_a_welcome_code_sends_the_welcome_text_and_servicer_messages_are_not_answered() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let t = now() + 5;
    wecom.answer_once(
        "kf/sync_msg",
        page(
            vec![
                json!({"msgid": "e1", "send_time": t, "origin": 4, "msgtype": "event",
                       "event": {"event_type": "enter_session", "open_kfid": "wkA", "external_userid": "wmZ", "welcome_code": "WELCOME-CODE"}}),
                json!({"msgid": "s1", "open_kfid": "wkA", "external_userid": "wmZ", "send_time": t, "origin": 5,
                       "servicer_userid": "lisi", "msgtype": "text", "text": {"content": "help"}}),
            ],
            "C1",
            0,
        ),
    );
    let app = spawn_kf_app(&wecom, &receiver, &[("WELCOME_TEXT", "您好，欢迎咨询！")]).await;
    notify(&app, "EVT").await;
    let welcome = wecom.wait_for_calls("kf/send_msg_on_event", 1).await;
    assert_eq!(welcome[0].body["code"], "WELCOME-CODE");
    assert_eq!(welcome[0].body["text"]["content"], "您好，欢迎咨询！");
    receiver.wait_for(2, Duration::from_secs(15)).await;
    app.wait_until_outbox_empty().await;
    assert!(wecom.calls("kf/send_msg").is_empty(), "a servicer's `help` is not answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_saved_under_upload_dir_and_forwarded_with_its_path() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    wecom.serve_media("MEDIA-1", &bytes);
    wecom.answer_once(
        "kf/sync_msg",
        page(
            vec![
                json!({"msgid": "i1", "open_kfid": "wkA", "external_userid": "wmI", "send_time": now() + 5, "origin": 3,
                         "msgtype": "image", "image": {"media_id": "MEDIA-1"}}),
            ],
            "C1",
            0,
        ),
    );
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    notify(&app, "EVT").await;
    let delivered = receiver.wait_for(1, Duration::from_secs(15)).await;
    let path = delivered[0].record["media_path"].as_str().expect("media_path").to_owned();
    assert!(path.starts_with(&app.dir.path().join("uploads").display().to_string()), "{path}");
    assert_eq!(std::fs::read(&path).expect("the file"), bytes);
    assert_eq!(delivered[0].record["media_id"], "MEDIA-1");
    let media_calls = wecom.calls("media/get");
    assert_eq!(
        media_calls[0].query["access_token"],
        wecom
            .calls("gettoken")
            .iter()
            .position(|c| c.query["corpsecret"] == "kf-secret")
            .map(|i| format!("TOKEN-{}", i + 1))
            .expect("a kf token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_bearer_reports_60020_with_the_ip_and_caches_names() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    let url = app.url("/api/test-wecom-connection");
    assert_eq!(app.client.get(&url).send().await.expect("request").status(), 401);
    let wrong = app.client.get(&url).bearer_auth("admin-token-0123456789abcdeX").send().await.expect("request");
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");

    wecom.refuse_secret("app-secret", Some(json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 203.0.113.9, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"})));
    let report: Value =
        app.client.get(&url).bearer_auth(ADMIN).send().await.expect("request").json().await.expect("JSON");
    assert_eq!(report["status"], "error");
    let app_secret = &report["secrets"][0];
    assert_eq!(app_secret["app"], "app");
    assert_eq!(app_secret["errcode"], 60020);
    assert_eq!(app_secret["ip"], "203.0.113.9");
    assert!(app_secret["hint"].as_str().expect("hint").contains("203.0.113.9"));
    let kf = &report["secrets"][1];
    assert_eq!(kf["status"], "success");
    assert_eq!(kf["kf_api"]["status"], "success");
    assert!(!report.to_string().contains("kf-secret") && !report.to_string().contains("app-secret"));

    wecom.refuse_secret("app-secret", None);
    let name_url = app.url("/api/fetch-wecom-name/user_id/zhangsan");
    let first: Value =
        app.client.get(&name_url).bearer_auth(ADMIN).send().await.expect("request").json().await.expect("JSON");
    assert_eq!(first["result"]["name"], "张三");
    assert_eq!(first["result"]["cached"], false);
    let second: Value =
        app.client.get(&name_url).bearer_auth(ADMIN).send().await.expect("request").json().await.expect("JSON");
    assert_eq!(second["result"]["cached"], true);
    assert_eq!(wecom.calls("user/get").len(), 1, "the second answer came from the cache");

    // An external user id unknown to externalcontact/get is found by kf/customer/batchget.
    let batch = batch_names(&app, json!({"id_type": "external_user_id", "ids": ["wmCUSTOMER"]})).await;
    assert_eq!(batch["resolved"], 1, "{batch}");
    assert_eq!(batch["results"][0]["name"], "微信用户甲");
    assert_eq!(batch["results"][0]["source"], "kf/customer/batchget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_test_leads_with_the_errcode_and_hint_of_the_first_failing_secret_and_errcode_0_on_success() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    let report = || async {
        let request = app.client.get(app.url("/api/test-wecom-connection")).bearer_auth(ADMIN);
        request.send().await.expect("request").json::<Value>().await.expect("JSON")
    };

    wecom.refuse_secret("app-secret", Some(json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 203.0.113.9, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"})));
    let refused = report().await;
    assert_eq!((&refused["status"], &refused["errcode"]), (&json!("error"), &json!(60020)), "{refused}");
    assert!(refused["hint"].as_str().expect("a hint").contains("203.0.113.9"), "{refused}");
    assert_eq!(refused["hint"], refused["secrets"][0]["hint"], "the failing Secret's, which stays: {refused}");

    // gettoken works, the kf Secret may not call kf APIs: that call's errcode and hint.
    wecom.refuse_secret("app-secret", None);
    wecom.answer_once("kf/account/list", json!({"errcode": 48002, "errmsg": "api forbidden"}));
    let forbidden = report().await;
    assert_eq!((&forbidden["status"], &forbidden["errcode"]), (&json!("error"), &json!(48002)), "{forbidden}");
    assert_eq!(forbidden["hint"], forbidden["secrets"][1]["kf_api"]["hint"], "{forbidden}");
    assert!(forbidden["hint"].as_str().is_some_and(|hint| !hint.is_empty()), "{forbidden}");

    let fine = report().await;
    assert_eq!((&fine["status"], &fine["errcode"]), (&json!("success"), &json!(0)), "{fine}");
    assert!(fine.get("hint").is_none() && fine.get("error").is_none(), "nothing to fix: {fine}");
    assert_eq!(fine["secrets"].as_array().map(Vec::len), Some(2), "{fine}");
}

async fn batch_names(app: &TestApp, body: Value) -> Value {
    let url = app.url("/api/batch-fetch-wecom-names");
    app.client.post(url).bearer_auth(ADMIN).json(&body).send().await.expect("request").json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_an_admin_token() {
    let app = spawn_app().await;
    let response =
        app.client.get(app.url("/api/test-wecom-connection")).bearer_auth(ADMIN).send().await.expect("request");
    assert_eq!(response.status(), 404);
    assert!(response.text().await.expect("body").contains("set ADMIN_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_names_over_senders_seen_in_stored_messages() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let app = spawn_kf_app(&wecom, &receiver, &[]).await;
    assert_eq!(app.post_text("hello", 99).await, 200);
    app.wait_until_outbox_empty().await;
    let batch = batch_names(&app, json!({"id_type": "user_id", "limit": 10, "only_unmapped": true})).await;
    assert_eq!(batch["resolved"], 1, "{batch}");
    assert_eq!(batch["results"][0]["id"], "zhangsan");
    let again = batch_names(&app, json!({"id_type": "user_id", "limit": 10, "only_unmapped": true})).await;
    assert_eq!(again["resolved"], 0, "nothing unmapped is left: {again}");
}
