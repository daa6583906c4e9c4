//! Channels (SPEC §12): several apps, corps and kf accounts in one appliance.
//! The configuration of `[channels.<name>]` tables as an operator writes it
//! (the real binary, exit 64 with one line per problem), and the channels
//! served: each on its own path, the shared paths routing by Token, receive id
//! and AgentID, dedup per channel.

use std::path::{Path, PathBuf};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;

/// A second corp's app channel: its own corp id, Token and key.
const HR_CORP: &str = "wwhr0123456789abcd";
const HR_TOKEN: &str = "hrToken42";
const HR_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const HR_AGENT: i64 = 1_000_005;

/// The `[channels.hr]` table, with `extra` lines appended.
fn hr_table(extra: &str) -> String {
    format!(
        "[channels.hr]\nkind = \"app\"\ncorp_id = \"{HR_CORP}\"\nagent_id = {HR_AGENT}\nsecret = \"hr-secret-value\"\n\
         token = \"{HR_TOKEN}\"\nencoding_aes_key = \"{HR_KEY}\"\n{extra}"
    )
}

/// Writes `text` as the TOML file in `dir`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("wechat-api.toml");
    std::fs::write(&file, text).expect("write the config file");
    file
}

/// `serve --config <text>` with no `WECOM_*` variable: the exit code and the
/// lines of stderr that report configuration errors.
fn serve_with_file(text: &str) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let file = write_config(dir.path(), text);
    let env = test_env(dir.path(), &[("WECOM_CORP_ID", ""), ("WECOM_TOKEN", ""), ("WECOM_ENCODING_AES_KEY", "")]);
    let out = wechat_api(dir.path())
        .args(["serve", "--config", &file.display().to_string()])
        .envs(env)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = stderr.lines().filter(|l| l.starts_with("configuration error:")).map(str::to_owned).collect();
    (out.status.code(), lines, stderr)
}

#[test]
fn every_channel_configuration_problem_exits_64_with_one_line_naming_the_channel_and_key() {
    let cases: Vec<(String, &str)> = vec![
        (hr_table("tokne = \"x\"\n"), "channels.hr.tokne is not a channel setting"),
        (hr_table("").replace("token = ", "# token = "), "channels.hr.token is required but not set"),
        (hr_table("").replace("[channels.hr]", "[channels.HR]"), "channels.HR is not a channel name"),
        (format!("{}\n{}", hr_table(""), hr_table("")), "channels.hr is used twice"),
        (
            hr_table("").replace("secret = \"hr-secret-value\"", "secret_file = \"/nonexistent/hr\""),
            "channels.hr.secret_file cannot be read: /nonexistent/hr",
        ),
        (
            hr_table("").replace(HR_KEY, &HR_KEY[..42]),
            "channels.hr.encoding_aes_key must be 43 characters of base64, got 42",
        ),
        (
            format!("[channels.bot]\nkind = \"aibot\"\ntoken = \"T\"\nencoding_aes_key = \"{HR_KEY}\"\nbot_secret = \"s\"\n"),
            "channels.bot.bot_id is required with bot_secret",
        ),
    ];
    for (text, expected) in cases {
        let (code, lines, stderr) = serve_with_file(&text);
        assert_eq!(code, Some(64), "{expected}: {stderr}");
        assert_eq!(lines.len(), 1, "{expected}: {stderr}");
        assert!(lines[0].starts_with(&format!("configuration error: {expected}")), "{expected}: {stderr}");
        assert!(!stderr.contains("hr-secret-value") && !stderr.contains(&HR_KEY[..42]), "a secret leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_secret_file_with_a_trailing_blank_line_is_refused_without_showing_the_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("hr-secret");
    std::fs::write(&secret, "FileS3cr3tValue\n\n").expect("write the secret");
    let text = hr_table("")
        .replace("secret = \"hr-secret-value\"", &format!("secret_file = {:?}", secret.display().to_string()));
    let (code, lines, stderr) = serve_with_file(&text);
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(
        lines,
        ["configuration error: channels.hr.secret_file has leading or trailing white space (a copy-paste slip?)"]
    );
    assert!(!stderr.contains("FileS3cr3t"), "{stderr}");
}

/// A second channel in the built-in app's corp, sharing `HR_TOKEN` and `HR_KEY`
/// with `it2` and told apart by its agent id only.
fn it_table(name: &str, agent: i64) -> String {
    format!(
        "[channels.{name}]\nkind = \"app\"\ncorp_id = \"{HR_CORP}\"\nagent_id = {agent}\nsecret = \"{name}-secret\"\n\
         token = \"{HR_TOKEN}\"\nencoding_aes_key = \"{HR_KEY}\"\n"
    )
}

/// The service with the built-in channels and the file's `text`.
async fn spawn_with_file(text: &str, overrides: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let file = write_config(dir.path(), text).display().to_string();
    let mut pairs: Vec<(&str, &str)> = vec![("WECHAT_API_CONFIG", &file)];
    pairs.extend_from_slice(overrides);
    (spawn_app_with(&pairs).await, dir)
}

/// A signed URL verification for `corp` on `path`: the status and the body.
async fn verify(app: &TestApp, path: &str, token: &str, key: &str, corp: &str) -> (u16, String) {
    let aes = wechat_api::testing::crypto::AesKey::parse(key).expect("key");
    let echostr = wechat_api::testing::crypto::encrypt(&aes, b"echo-42", corp.as_bytes());
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let signature = wechat_api::testing::crypto::sign(token, &timestamp, "7", &echostr);
    let url = app.url(&format!("{path}?{}", query(signature.as_str(), &timestamp, "7", Some(&echostr))));
    let response = app.client.get(url).send().await.expect("verification");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// POSTs `xml`, encrypted for `corp` and signed, to `path`: the status and the body.
async fn post(app: &TestApp, path: &str, token: &str, key: &str, corp: &str, xml: &str) -> (u16, String) {
    let signed = sign_post(token, key, corp, xml);
    let url = app.url(&format!("{path}?{}", signed.query));
    let response = app.client.post(url).body(signed.body).send().await.expect("callback");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// A text from `from` to agent `agent` with `msg_id`.
fn text_to(agent: i64, msg_id: u64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[ww]]></ToUserName><FromUserName><![CDATA[lisi]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId><AgentID>{agent}</AgentID></xml>"
    )
}

async fn journaled(app: &TestApp, key: &str) -> bool {
    app.store.find_entry(key.to_owned()).await.expect("journal").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_answers_on_its_own_path_and_no_other_and_an_unknown_name_is_404() {
    let (app, _dir) = spawn_with_file(&hr_table(""), &[]).await;
    assert_eq!(verify(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP).await, (200, "echo-42".into()));
    assert_eq!(verify(&app, "/api/v1/wecom/callback/app", TOKEN, AES_KEY, CORP_ID).await, (200, "echo-42".into()));
    assert_eq!(verify(&app, "/api/v1/wecom/callback/kf", TOKEN, AES_KEY, CORP_ID).await, (200, "echo-42".into()));
    // The shared path serves file channels too.
    assert_eq!(verify(&app, "/api/v1/wecom/callback", HR_TOKEN, HR_KEY, HR_CORP).await, (200, "echo-42".into()));
    // Each own path tries its own channel only.
    assert_eq!(verify(&app, "/api/v1/wecom/callback/app", HR_TOKEN, HR_KEY, HR_CORP).await.0, 403);
    assert_eq!(verify(&app, "/api/v1/wecom/callback/hr", TOKEN, AES_KEY, CORP_ID).await.0, 403);
    assert_eq!(verify(&app, "/api/v1/wecom/callback/it", HR_TOKEN, HR_KEY, HR_CORP).await.0, 404);
    let (status, _) = post(&app, "/api/v1/wecom/callback/nope", TOKEN, AES_KEY, CORP_ID, &text_to(1, 1, "x")).await;
    assert_eq!(status, 404);

    let (status, _) =
        post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 7, "hi")).await;
    assert_eq!(status, 200);
    assert!(journaled(&app, "hr:msg:7").await);
    // The app's key with the hr corp's receive id is for neither channel.
    let (status, body) = post(&app, "/api/v1/wecom/callback/app", TOKEN, AES_KEY, HR_CORP, &text_to(1, 8, "x")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("receive id does not match"), "{body}");
    // Two verifications (own path, shared path) and one message.
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"hr\",outcome=\"ok\"}").await, 3.0);
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"unknown\",outcome=\"unknown_channel\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_channels_series_that_deploy_uses_are_in_the_first_scrape_at_zero() {
    let shop = format!(
        "[channels.shop]\nkind = \"kf\"\ncorp_id = \"{HR_CORP}\"\nsecret = \"shop-secret-value\"\ntoken = \"shopToken7\"\n\
         encoding_aes_key = \"{HR_KEY}\"\n"
    );
    let bot = format!("[channels.bot]\nkind = \"aibot\"\ntoken = \"botToken3\"\nencoding_aes_key = \"{HR_KEY}\"\n");
    let (app, _dir) = spawn_with_file(&format!("{}{shop}{bot}", hr_table("")), &[]).await;
    let first = app.metrics().await;
    let mut expected: Vec<String> = Vec::new();
    for channel in ["hr", "shop", "bot"] {
        for outcome in ["ok", "duplicate", "bad_signature", "wrong_receive_id", "internal_error"] {
            expected.push(format!("wechat_api_callbacks_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} 0"));
        }
    }
    // The dashboard's other per-channel families, for the kinds that have them.
    expected.extend(
        [
            "wechat_api_wecom_api_requests_total{channel=\"hr\",api=\"message/send\",errcode=\"0\"} 0",
            "wechat_api_wecom_api_requests_total{channel=\"shop\",api=\"kf/sync_msg\",errcode=\"0\"} 0",
            "wechat_api_access_token_expires_in_seconds{channel=\"shop\",app=\"shop\"} 0",
            "wechat_api_kf_messages_total{channel=\"shop\",msgtype=\"text\"} 0",
        ]
        .map(str::to_owned),
    );
    let missing: Vec<&String> = expected.iter().filter(|series| !first.contains(series.as_str())).collect();
    assert!(missing.is_empty(), "{missing:?} are not in the first scrape:\n{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_refused_on_a_channels_own_path_is_counted_for_that_channel_and_on_a_shared_path_as_unknown() {
    let (app, _dir) = spawn_with_file(&hr_table(""), &[]).await;
    let (own, shared) = ("/api/v1/wecom/callback/hr", "/api/v1/wecom/callback");
    let series = |channel: &str, outcome: &str| {
        format!("wechat_api_callbacks_total{{channel=\"{channel}\",outcome=\"{outcome}\"}}")
    };
    let message = text_to(HR_AGENT, 11, "hi");
    assert_eq!(post(&app, own, "WrongToken42", HR_KEY, HR_CORP, &message).await.0, 403);
    assert_eq!(verify(&app, own, "WrongToken42", HR_KEY, HR_CORP).await.0, 403);
    let response = app.client.post(app.url(&format!("{own}?timestamp=1&nonce=2"))).body("x").send().await;
    assert_eq!(response.expect("a callback without a signature").status(), 400);
    assert_eq!(app.metric(&series("hr", "bad_signature")).await, 2.0);
    assert_eq!(app.metric(&series("hr", "missing_parameter")).await, 1.0);
    assert_eq!(app.metric(&series("unknown", "bad_signature")).await, 0.0);
    // On a shared path no channel verified it: unknown.
    assert_eq!(post(&app, shared, "WrongToken42", HR_KEY, HR_CORP, &message).await.0, 403);
    assert_eq!(app.metric(&series("unknown", "bad_signature")).await, 1.0);
    assert_eq!(app.metric(&series("hr", "bad_signature")).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_msgid_in_two_corps_is_two_messages_each_keyed_by_its_channel() {
    let (app, _dir) = spawn_with_file(&hr_table(""), &[]).await;
    let shared = "/api/v1/wecom/callback";
    assert_eq!(post(&app, shared, TOKEN, AES_KEY, CORP_ID, &text_to(1_000_002, 42, "app")).await.0, 200);
    assert_eq!(post(&app, shared, HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 42, "hr")).await.0, 200);
    assert!(journaled(&app, "app:msg:42").await, "the built-in app keeps today's key");
    assert!(journaled(&app, "hr:msg:42").await);
    // WeCom's retry of either is a duplicate of its own channel only.
    assert_eq!(post(&app, shared, HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 42, "hr")).await.0, 200);
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"hr\",outcome=\"duplicate\"}").await, 1.0);
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"}").await, 1.0);
    app.wait_until_outbox_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_shared_path_the_agent_id_tells_channels_apart_and_else_the_answer_names_their_paths() {
    let (app, _dir) = spawn_with_file(&format!("{}{}", it_table("it1", 1), it_table("it2", 2)), &[]).await;
    let shared = "/api/v1/wecom/callback";
    assert_eq!(post(&app, shared, HR_TOKEN, HR_KEY, HR_CORP, &text_to(2, 5, "to it2")).await.0, 200);
    assert!(journaled(&app, "it2:msg:5").await && !journaled(&app, "it1:msg:5").await);
    let (status, body) = post(&app, shared, HR_TOKEN, HR_KEY, HR_CORP, &text_to(3, 6, "to nobody")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("/api/v1/wecom/callback/it1") && body.contains("/api/v1/wecom/callback/it2"),
        "the answer names the per-channel paths: {body}"
    );
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"unknown\",outcome=\"ambiguous_channel\"}").await, 1.0);
    // On its own path the same callback is no puzzle.
    let own = "/api/v1/wecom/callback/it1";
    assert_eq!(post(&app, own, HR_TOKEN, HR_KEY, HR_CORP, &text_to(3, 6, "to nobody")).await.0, 200);
    assert!(journaled(&app, "it1:msg:6").await);
    // The built-in kf shares the app's Token: a kf notice is the kf channel's, not ambiguous.
    let notice = "<xml><ToUserName><![CDATA[ww]]></ToUserName><CreateTime>1409659813</CreateTime>\
                  <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
                  <Token><![CDATA[T]]></Token><OpenKfId><![CDATA[wk1]]></OpenKfId></xml>";
    let (status, body) = post(&app, shared, TOKEN, AES_KEY, CORP_ID, notice).await;
    assert_eq!((status, body.as_str()), (200, "success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_channels_records_carry_its_name_kind_and_corp_and_go_to_its_own_forward_url() {
    let (own, shared) = (ForwardReceiver::start().await, ForwardReceiver::start().await);
    let table = hr_table(&format!("forward_url = \"{}\"\nforward_secret = \"{}\"\n", own.url, own.secret));
    let (app, _dir) =
        spawn_with_file(&table, &[("FORWARD_URL", &shared.url), ("FORWARD_SECRET", &shared.secret)]).await;
    assert_eq!(
        post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 9, "hi")).await.0,
        200
    );
    assert_eq!(app.post_text("hello", 9).await, 200);
    let record = &own.wait_for(1, std::time::Duration::from_secs(10)).await[0];
    assert!(record.signature_ok, "signed with the channel's forward_secret");
    assert_eq!(record.record["id"], "hr:msg:9");
    assert_eq!(
        (&record.record["channel"], &record.record["kind"], &record.record["corp_id"]),
        (&"hr".into(), &"app".into(), &HR_CORP.into())
    );
    let record = &shared.wait_for(1, std::time::Duration::from_secs(10)).await[0];
    assert_eq!(record.record["id"], "app:msg:9");
    assert_eq!(
        (&record.record["channel"], &record.record["kind"], &record.record["corp_id"]),
        (&"app".into(), &"app".into(), &CORP_ID.into())
    );
    app.wait_until_outbox_empty().await;
    assert_eq!((own.delivered().len(), shared.delivered().len()), (1, 1), "each record went to one receiver");
}

/// An `.env` written for the appliance before channels existed: the same
/// variables, served on the shared path as before and on `/…/app` now.
#[test]
fn an_old_env_keeps_working_unchanged() {
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let env = test_env(dir.path(), &[]);
    let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.path().join(".env"), lines).expect("write .env");
    let mut command = wechat_api(dir.path());
    command.arg("serve");
    let mut service = Running::start(command);
    let port = service.port();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let cert = std::fs::read(dir.path().join("server.crt")).expect("certificate");
        let client = client_trusting(&cert, std::time::Duration::from_secs(10));
        for (path, msg_id) in
            [("/api/v1/wecom/callback", 1), ("/wework/callback", 2), ("/api/v1/wecom/callback/app", 3)]
        {
            let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("hi", msg_id));
            let url = format!("https://127.0.0.1:{port}{path}?{}", signed.query);
            let status = client.post(url).body(signed.body).send().await.expect("callback").status();
            assert_eq!(status.as_u16(), 200, "{path}");
        }
    });
    assert!(service.terminate().success());
}

const SEND: &str = "send-token-for-channels-0123";

/// The access token the fake WeCom issued for `secret` of `corp` (tokens are
/// numbered in the order `gettoken` was called).
fn token_of(wecom: &FakeWeCom, corp: &str, secret: &str) -> String {
    let calls = wecom.calls("gettoken");
    let index = calls
        .iter()
        .position(|c| {
            c.query.get("corpid").map(String::as_str) == Some(corp)
                && c.query.get("corpsecret").map(String::as_str) == Some(secret)
        })
        .unwrap_or_else(|| panic!("no gettoken for {corp} with that Secret: {calls:?}"));
    format!("TOKEN-{}", index + 1)
}

async fn send(app: &TestApp, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response =
        app.client.post(app.url("/api/v1/messages")).bearer_auth(SEND).json(&body).send().await.expect("send API");
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_channel_replies_and_sends_with_its_own_agent_id_and_secret() {
    let wecom = FakeWeCom::start().await;
    let (app, _dir) = spawn_with_file(
        &hr_table(""),
        &[
            ("WECOM_API_BASE_URL", &wecom.base_url),
            ("WECOM_SECRET", "app-secret-value"),
            ("WECOM_AGENT_ID", "1000002"),
            ("SEND_TOKEN", SEND),
        ],
    )
    .await;
    // The help command on the hr channel is answered by hr's app, with hr's token.
    let (status, _) =
        post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 11, "帮助")).await;
    assert_eq!(status, 200);
    let sent = wecom.wait_for_calls("message/send", 1).await;
    assert_eq!((&sent[0].body["agentid"], &sent[0].body["touser"]), (&HR_AGENT.into(), &"lisi".into()));
    let hr_token = token_of(&wecom, HR_CORP, "hr-secret-value");
    assert_eq!(sent[0].query["access_token"], hr_token);

    // The send API's channel is a name.
    assert_eq!(send(&app, serde_json::json!({"channel": "hr", "to": "wangwu", "text": "from hr"})).await.0, 202);
    assert_eq!(send(&app, serde_json::json!({"channel": "app", "to": "zhangsan", "text": "from app"})).await.0, 202);
    assert_eq!(send(&app, serde_json::json!({"in_reply_to": "hr:msg:11", "text": "again"})).await.0, 202);
    let (status, answer) = send(&app, serde_json::json!({"channel": "it", "to": "wangwu", "text": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("unknown channel \\\"it\\\""), "{answer}");
    let (status, answer) =
        send(&app, serde_json::json!({"channel": "hr", "to": "w", "open_kfid": "wk", "text": "x"})).await;
    assert_eq!(status, 400, "{answer}");

    let sent = wecom.wait_for_calls("message/send", 4).await;
    let by_text = |text: &str| sent.iter().find(|c| c.body["text"]["content"] == text).expect(text).clone();
    let app_token = token_of(&wecom, CORP_ID, "app-secret-value");
    for (text, agent, token) in
        [("from hr", HR_AGENT, &hr_token), ("again", HR_AGENT, &hr_token), ("from app", 1_000_002, &app_token)]
    {
        let call = by_text(text);
        assert_eq!((&call.body["agentid"], &call.query["access_token"]), (&agent.into(), token), "{text}");
    }
    app.wait_until_outbox_empty().await;
    assert_eq!(app.metric("wechat_api_messages_sent_total{channel=\"hr\",outcome=\"sent\"}").await, 3.0);
}

/// SPEC §12's bound: a hundred channels start in under a second (no thread or
/// task per channel: the registry is a map), and each is served on its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_channels_start_within_a_second_and_each_answers_on_its_own_path() {
    let tables: String = (0..100)
        .map(|i| {
            format!(
                "[channels.c{i}]\nkind = \"app\"\ncorp_id = \"wwcorp{i}\"\nagent_id = {}\nsecret = \"s{i}\"\n\
                 token = \"token{i}\"\nencoding_aes_key = \"{HR_KEY}\"\n",
                1000 + i
            )
        })
        .collect();
    // What the hundred channels add to a start, against a one-channel start just
    // before on the same (possibly busy) machine: the service's own start-up
    // (certificate, migrations) is not the channels' cost. benches/channels.rs
    // measures the registry itself.
    let started = std::time::Instant::now();
    let (one, _one_dir) = spawn_with_file(&tables[..tables.find("\n[channels.c1]").expect("c1")], &[]).await;
    let baseline = started.elapsed();
    drop(one);
    let started = std::time::Instant::now();
    let (app, _dir) = spawn_with_file(&tables, &[]).await;
    let hundred = started.elapsed();
    assert!(
        hundred < baseline + std::time::Duration::from_secs(1),
        "started in {hundred:?} (one channel: {baseline:?})"
    );
    for i in [0, 57, 99] {
        let path = format!("/api/v1/wecom/callback/c{i}");
        let (status, body) = verify(&app, &path, &format!("token{i}"), HR_KEY, &format!("wwcorp{i}")).await;
        assert_eq!((status, body.as_str()), (200, "echo-42"), "{path}");
    }
}

const ADMIN: &str = "admin-token-for-channels-0123";

/// The hr channel of the file beside the built-in app with its Secret, against
/// `wecom`, with the admin API on.
async fn spawn_hr_beside_the_app(wecom: &FakeWeCom) -> (TestApp, tempfile::TempDir) {
    let settings =
        [("WECOM_API_BASE_URL", wecom.base_url.as_str()), ("WECOM_SECRET", "app-secret-value"), ("ADMIN_TOKEN", ADMIN)];
    spawn_with_file(&hr_table(""), &settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_has_its_token_check_a_status_row_and_its_own_connection_test() {
    let wecom = FakeWeCom::start().await;
    let (app, _dir) = spawn_hr_beside_the_app(&wecom).await;
    assert_eq!(
        post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &text_to(HR_AGENT, 3, "hi")).await.0,
        200
    );

    let health = app
        .health_until("passing token:hr and token:app", |h| {
            h["checks"]["token:hr"][0]["status"] == "pass" && h["checks"]["token:app"][0]["status"] == "pass"
        })
        .await;
    assert!(!health.to_string().contains("hr-secret-value"), "{health}");
    assert_eq!(health["checks"]["config:hr"][0]["status"], "pass", "{health}");

    let connection = |query: &'static str| {
        let request = app.client.get(app.url(&format!("/api/test-wecom-connection{query}"))).bearer_auth(ADMIN);
        async move {
            let response = request.send().await.expect("connection test");
            (response.status().as_u16(), response.json::<serde_json::Value>().await.expect("JSON"))
        }
    };
    let (status, hr) = connection("?channel=hr").await;
    assert_eq!(status, 200, "{hr}");
    assert_eq!(
        (&hr["status"], &hr["errcode"], &hr["channel"], &hr["kind"], &hr["corp_id"]),
        (&"success".into(), &0.into(), &"hr".into(), &"app".into(), &HR_CORP.into())
    );
    assert!(wecom
        .calls("gettoken")
        .iter()
        .any(|c| c.query["corpid"] == HR_CORP && c.query["corpsecret"] == "hr-secret-value"));
    assert_eq!(connection("?channel=it").await.0, 404);
    let (status, all) = connection("").await;
    assert_eq!(
        (status, &all["status"], &all["channels"][0]["channel"]),
        (200, &"success".into(), &"hr".into()),
        "{all}"
    );
    assert!(!all.to_string().contains("secret-value"), "{all}");

    let page = app.client.get(app.url("/")).send().await.expect("status page").text().await.expect("HTML");
    for row in ["/api/v1/wecom/callback/hr", HR_CORP, "/api/v1/wecom/callback/app", "refreshed"] {
        assert!(page.contains(row), "{row} on the status page");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_checks_each_file_channel_on_its_own_path_and_with_its_own_secret() {
    let wecom = FakeWeCom::start().await;
    let settings = [("WECOM_API_BASE_URL", wecom.base_url.clone())];
    let (app, dir) = spawn_with_file(&hr_table(""), &[("WECOM_API_BASE_URL", &wecom.base_url)]).await;
    let port = app.port.to_string();
    let file = dir.path().join("wechat-api.toml").display().to_string();
    let mut pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend([("HTTPS_PORT", port.as_str()), ("WECHAT_API_CONFIG", file.as_str())]);
    let env = test_env(app.dir.path(), &pairs);
    let run_dir = app.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        wechat_api(&run_dir).args(["diagnose", "--json"]).envs(env).output().expect("runs")
    })
    .await
    .expect("diagnose");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let finding = |check: &str| {
        report["checks"].as_array().and_then(|c| c.iter().find(|f| f["check"] == check)).cloned().unwrap_or_default()
    };
    for check in ["local URL verification channels.hr", "wecom gettoken channels.hr", "config channels.hr"] {
        assert_eq!(finding(check)["ok"], true, "{check}: {report}");
    }
    assert!(!report.to_string().contains("hr-secret-value"), "{report}");
    assert!(wecom.calls("gettoken").iter().any(|c| c.query["corpid"] == HR_CORP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kf_channel_of_another_corp_syncs_and_answers_with_its_own_secret() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    wecom.answer_once("kf/sync_msg", crate::kf::page(vec![crate::kf::text_msg("m1", "帮助", now + 5)], "C1", 0));
    let shop = format!(
        "[channels.shop]\nkind = \"kf\"\ncorp_id = \"{HR_CORP}\"\nsecret = \"shop-secret-value\"\ntoken = \"shopToken7\"\n\
         encoding_aes_key = \"{HR_KEY}\"\n"
    );
    let (app, _dir) = spawn_with_file(
        &shop,
        &[
            ("WECOM_API_BASE_URL", &wecom.base_url),
            ("FORWARD_URL", &receiver.url),
            ("FORWARD_SECRET", &receiver.secret),
        ],
    )
    .await;
    let notice = "<xml><ToUserName><![CDATA[ww]]></ToUserName><CreateTime>1409659813</CreateTime>\
                  <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
                  <Token><![CDATA[EVT]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>";
    let answer = post(&app, "/api/v1/wecom/callback/shop", "shopToken7", HR_KEY, HR_CORP, notice).await;
    assert_eq!(answer, (200, "success".to_owned()));
    let record = &receiver.wait_for(1, std::time::Duration::from_secs(15)).await[0].record;
    assert_eq!(
        (&record["id"], &record["channel"], &record["kind"]),
        (&"shop:msg:m1".into(), &"shop".into(), &"kf".into())
    );
    assert_eq!(record["corp_id"], HR_CORP);
    let shop_token = token_of(&wecom, HR_CORP, "shop-secret-value");
    let sent = wecom.wait_for_calls("kf/send_msg", 1).await;
    assert_eq!(sent[0].query["access_token"], shop_token, "the help answer is sent with shop's Secret");
    assert_eq!(wecom.calls("kf/sync_msg")[0].query["access_token"], shop_token);
    app.wait_until_outbox_empty().await;
}

/// A third corp's app channel, beside `hr`: the second of two app channels.
const OPS_CORP: &str = "wwops0123456789abc";
const OPS_AGENT: i64 = 1_000_007;

fn ops_table() -> String {
    format!(
        "[channels.ops]\nkind = \"app\"\ncorp_id = \"{OPS_CORP}\"\nagent_id = {OPS_AGENT}\nsecret = \"ops-secret-value\"\n\
         token = \"opsToken9\"\nencoding_aes_key = \"{HR_KEY}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_channels_count_their_wecom_calls_tokens_actions_sends_and_refusals_in_series_of_their_own() {
    let wecom = FakeWeCom::start().await;
    let (app, _dir) = spawn_with_file(
        &format!("{}{}", hr_table(""), ops_table()),
        &[("WECOM_API_BASE_URL", &wecom.base_url), ("SEND_TOKEN", SEND), ("DATA_MIN_FREE_PERCENT", "100")],
    )
    .await;
    // Each channel's series are there from the first scrape.
    let first = app.metrics().await;
    for channel in ["hr", "ops"] {
        for series in [
            format!("wechat_api_wecom_api_requests_total{{channel=\"{channel}\",api=\"message/send\",errcode=\"0\"}} 0"),
            format!("wechat_api_access_token_refreshes_total{{channel=\"{channel}\",app=\"{channel}\",outcome=\"error\"}} 0"),
            format!("wechat_api_outbox_actions_total{{channel=\"{channel}\",kind=\"app_text\",outcome=\"paced\"}} 0"),
            format!("wechat_api_send_api_refused_total{{channel=\"{channel}\",reason=\"queue_full\"}} 0"),
            format!("wechat_api_messages_sent_total{{channel=\"{channel}\",outcome=\"sent\"}} 0"),
        ] {
            assert!(first.contains(&series), "{series} is not in the first scrape:\n{first}");
        }
    }

    // Two help commands on hr, one on ops: each answered by its own app.
    for msg_id in [21, 22] {
        let help = text_to(HR_AGENT, msg_id, "帮助");
        assert_eq!(post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &help).await.0, 200);
    }
    let help = text_to(OPS_AGENT, 23, "帮助");
    assert_eq!(post(&app, "/api/v1/wecom/callback/ops", "opsToken9", HR_KEY, OPS_CORP, &help).await.0, 200);
    // The send API on ops, refused by the data floor: ops's refusal, not hr's.
    assert_eq!(send(&app, serde_json::json!({"channel": "ops", "to": "wangwu", "text": "x"})).await.0, 503);
    wecom.wait_for_calls("message/send", 3).await;
    app.wait_until_outbox_empty().await;

    for (channel, sends, refused) in [("hr", 2.0, 0.0), ("ops", 1.0, 1.0)] {
        let api = |api: &str| {
            format!("wechat_api_wecom_api_requests_total{{channel=\"{channel}\",api=\"{api}\",errcode=\"0\"}}")
        };
        assert_eq!(app.metric(&api("message/send")).await, sends, "{channel}");
        assert_eq!(app.metric(&api("gettoken")).await, 1.0, "{channel}");
        let refreshed = format!(
            "wechat_api_access_token_refreshes_total{{channel=\"{channel}\",app=\"{channel}\",outcome=\"ok\"}}"
        );
        assert_eq!(app.metric(&refreshed).await, 1.0, "{channel}");
        let left = format!("wechat_api_access_token_expires_in_seconds{{channel=\"{channel}\",app=\"{channel}\"}}");
        assert!(app.metric(&left).await > 7000.0, "{channel}");
        let done = format!("wechat_api_outbox_actions_total{{channel=\"{channel}\",kind=\"app_text\",outcome=\"ok\"}}");
        assert_eq!(app.metric(&done).await, sends, "{channel}");
        let sent = format!("wechat_api_messages_sent_total{{channel=\"{channel}\",outcome=\"sent\"}}");
        assert_eq!(app.metric(&sent).await, sends, "{channel}");
        let disk = format!("wechat_api_send_api_refused_total{{channel=\"{channel}\",reason=\"disk_low\"}}");
        assert_eq!(app.metric(&disk).await, refused, "{channel}");
    }
    // Nothing was counted for no channel.
    let exposition = app.metrics().await;
    assert!(!exposition.contains("channel=\"unknown\",api="), "{exposition}");
}

/// `GET /api/fetch-wecom-name/…` as the admin: the status and the answer.
async fn fetch_name(app: &TestApp, path: &str) -> (u16, serde_json::Value) {
    let response = app
        .client
        .get(app.url(&format!("/api/fetch-wecom-name/{path}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("names");
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

/// `POST /api/batch-fetch-wecom-names` for user id `id` on `channel`: the status.
async fn batch_names(app: &TestApp, channel: &str, id: &str) -> u16 {
    let body = serde_json::json!({"id_type": "user_id", "channel": channel, "ids": [id]});
    let request = app.client.post(app.url("/api/batch-fetch-wecom-names")).bearer_auth(ADMIN).json(&body);
    request.send().await.expect("batch").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_looked_up_with_the_secret_of_the_channel_the_id_was_seen_on() {
    let wecom = FakeWeCom::start().await;
    let shop = format!(
        "[channels.shop]\nkind = \"kf\"\ncorp_id = \"{OPS_CORP}\"\nsecret = \"shop-secret-value\"\ntoken = \"shopToken7\"\n\
         encoding_aes_key = \"{HR_KEY}\"\n"
    );
    let (app, _dir) = spawn_with_file(
        &format!("{}{shop}", hr_table("")),
        &[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_SECRET", "app-secret-value"), ("ADMIN_TOKEN", ADMIN)],
    )
    .await;
    // An hr member, with hr's Secret in hr's corp.
    let (status, answer) = fetch_name(&app, "user_id/lisi?channel=hr").await;
    assert_eq!((status, &answer["result"]["source"]), (200, &"user/get".into()), "{answer}");
    let asked = wecom.calls("user/get");
    assert_eq!(asked[0].query["access_token"], token_of(&wecom, HR_CORP, "hr-secret-value"));
    // A customer of the shop kf channel, with shop's kf Secret in its corp.
    let (status, answer) = fetch_name(&app, "external_user_id/wmCUSTOMER?channel=shop").await;
    assert_eq!((status, &answer["result"]["name"]), (200, &"微信用户甲".into()), "{answer}");
    let asked = wecom.calls("kf/customer/batchget");
    assert_eq!(asked[0].query["access_token"], token_of(&wecom, OPS_CORP, "shop-secret-value"));
    // The batch, on hr.
    assert_eq!(batch_names(&app, "hr", "wangwu").await, 200);
    let asked = wecom.calls("user/get");
    let wangwu = asked.iter().find(|c| c.query["userid"] == "wangwu").expect("wangwu looked up");
    assert_eq!(wangwu.query["access_token"], token_of(&wecom, HR_CORP, "hr-secret-value"));
    // Without a channel: the built-in app, as before channels had names.
    assert_eq!(fetch_name(&app, "user_id/zhangsan").await.0, 200);
    let asked = wecom.calls("user/get");
    let zhangsan = asked.iter().find(|c| c.query["userid"] == "zhangsan").expect("zhangsan looked up");
    assert_eq!(zhangsan.query["access_token"], token_of(&wecom, CORP_ID, "app-secret-value"));
    // A channel that does not exist.
    let (status, answer) = fetch_name(&app, "user_id/lisi2?channel=it").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(batch_names(&app, "it", "lisi3").await, 404);
    assert_eq!(wecom.calls("user/get").len(), 3, "nothing asked for an unknown channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_user_id_in_two_corps_is_two_names_and_a_file_channels_senders_are_listed() {
    let wecom = FakeWeCom::start().await;
    let (app, _dir) = spawn_hr_beside_the_app(&wecom).await;
    // lisi writes to hr.
    let hr_text = text_to(HR_AGENT, 11, "hi");
    assert_eq!(post(&app, "/api/v1/wecom/callback/hr", HR_TOKEN, HR_KEY, HR_CORP, &hr_text).await.0, 200);
    assert!(journaled(&app, "hr:msg:11").await);
    // hr's senders without a name, named with hr's Secret.
    let unmapped = serde_json::json!({"id_type": "user_id", "channel": "hr", "limit": 10, "only_unmapped": true});
    let batch = |body: &serde_json::Value| {
        app.client.post(app.url("/api/batch-fetch-wecom-names")).bearer_auth(ADMIN).json(body).send()
    };
    let answer: serde_json::Value = batch(&unmapped).await.expect("batch").json().await.expect("JSON");
    assert_eq!(answer["results"][0]["id"], "lisi", "{answer}");
    assert_eq!(answer["results"][0]["cached"], false, "{answer}");
    let asked = wecom.calls("user/get");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].query["access_token"], token_of(&wecom, HR_CORP, "hr-secret-value"));
    let answer: serde_json::Value = batch(&unmapped).await.expect("batch").json().await.expect("JSON");
    assert_eq!(answer["results"], serde_json::json!([]), "hr's lisi has a name now: {answer}");
    // The app's corp has a lisi of its own: asked for with the app's Secret, not
    // answered with hr's.
    let (status, answer) = fetch_name(&app, "user_id/lisi").await;
    assert_eq!((status, &answer["result"]["cached"]), (200, &false.into()), "{answer}");
    let asked = wecom.calls("user/get");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1].query["access_token"], token_of(&wecom, CORP_ID, "app-secret-value"));
    let (status, answer) = fetch_name(&app, "user_id/lisi?channel=hr").await;
    assert_eq!((status, &answer["result"]["cached"]), (200, &true.into()), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_sharing_a_secret_share_one_token_whose_series_each_of_them_shows() {
    let wecom = FakeWeCom::start().await;
    // The built-in kf without WECOM_KF_SECRET uses the app's Secret: one token.
    let app = spawn_app_with(&[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_SECRET", "app-secret-value")]).await;
    let refreshed = |channel: &str| {
        format!("wechat_api_access_token_refreshes_total{{channel=\"{channel}\",app=\"app\",outcome=\"ok\"}}")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while app.metric(&refreshed("app")).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no token refresh: {}", app.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(wecom.calls("gettoken").len(), 1, "one token for both channels");
    assert_eq!(app.metric(&refreshed("kf")).await, 1.0, "kf's token is the app's");
    let left = app.metric("wechat_api_access_token_expires_in_seconds{channel=\"kf\",app=\"app\"}").await;
    assert!(left > 7000.0, "{left}");
    // The one gettoken call is counted once, for the channel whose Secret it is.
    let gettoken = |channel: &str| {
        format!("wechat_api_wecom_api_requests_total{{channel=\"{channel}\",api=\"gettoken\",errcode=\"0\"}}")
    };
    assert_eq!((app.metric(&gettoken("app")).await, app.metric(&gettoken("kf")).await), (1.0, 0.0));
    // Each channel is checked under its own name, the shared token for both.
    let passing = |h: &serde_json::Value, name: &str| h["checks"][name][0]["status"] == "pass";
    app.health_until("token:app and token:kf", |h| passing(h, "token:app") && passing(h, "token:kf")).await;
    assert_eq!(wecom.calls("gettoken").len(), 1, "the checks asked for no second token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kf_channels_each_resume_their_own_cursor_after_a_restart() {
    use crate::kf::{page, text_msg, KF_KEY, KF_TOKEN};
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The same open_kfid in both: only the channel tells their cursors apart.
    wecom.answer_once("kf/sync_msg", page(vec![text_msg("k1", "一", now + 5)], "KF-C1", 0));
    wecom.answer_once("kf/sync_msg", page(vec![text_msg("s1", "二", now + 5)], "SHOP-C1", 0));
    let shop = format!(
        "[channels.shop]\nkind = \"kf\"\ncorp_id = \"{HR_CORP}\"\nsecret = \"shop-secret-value\"\ntoken = \"shopToken7\"\n\
         encoding_aes_key = \"{HR_KEY}\"\n"
    );
    let (app, _dir) = spawn_with_file(
        &shop,
        &[
            ("WECOM_API_BASE_URL", &wecom.base_url),
            ("WECOM_KF_SECRET", "kf-secret"),
            ("WECOM_KF_TOKEN", KF_TOKEN),
            ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
            ("FORWARD_URL", &receiver.url),
            ("FORWARD_SECRET", &receiver.secret),
        ],
    )
    .await;
    let notice = |corp: &str| {
        format!(
            "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><CreateTime>1409659813</CreateTime>\
             <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
             <Token><![CDATA[EVT]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>"
        )
    };
    let kf = post(&app, "/api/v1/wecom/callback/kf", KF_TOKEN, KF_KEY, CORP_ID, &notice(CORP_ID)).await;
    assert_eq!(kf, (200, "success".to_owned()));
    receiver.wait_for(1, std::time::Duration::from_secs(15)).await;
    let shop_notice = post(&app, "/api/v1/wecom/callback/shop", "shopToken7", HR_KEY, HR_CORP, &notice(HR_CORP)).await;
    assert_eq!(shop_notice, (200, "success".to_owned()));
    receiver.wait_for(2, std::time::Duration::from_secs(15)).await;
    let first = wecom.calls("kf/sync_msg");
    assert!(first.iter().all(|call| call.body.get("cursor").is_none()), "each channel's first sync has no cursor");

    // After a restart each account is pulled again from its own channel's
    // cursor, with that channel's Secret.
    let app = app.restart().await;
    let calls = wecom.wait_for_calls("kf/sync_msg", 4).await;
    let (kf_token, shop_token) =
        (token_of(&wecom, CORP_ID, "kf-secret"), token_of(&wecom, HR_CORP, "shop-secret-value"));
    let mut resumed: Vec<(String, String)> = calls[2..]
        .iter()
        .map(|call| (call.query["access_token"].clone(), call.body["cursor"].as_str().unwrap_or("none").to_owned()))
        .collect();
    resumed.sort();
    let mut expected = vec![(kf_token, "KF-C1".to_owned()), (shop_token, "SHOP-C1".to_owned())];
    expected.sort();
    assert_eq!(resumed, expected);
    app.wait_until_outbox_empty().await;
}
