//! The upgrade from a store the main before channels (3a5a042) really wrote, on
//! SQLite and on PostgreSQL: today's service opens it, migrates it, and carries
//! on where the old one stopped. The stores are `tests/fixtures/store-3a5a042/`
//! (its README says how they were made: the old binary, a fake WeCom, dumps).
//!
//! What the old main left: two app texts (MsgId 4200000001 forwarded,
//! 4200000002's forward still owed), a `kf_msg_or_event` notice, kf account
//! `wkOLD` synced to `CURSOR-OLD-1` (message `old-kf-1`), the tokens
//! `OLD-app-secret` and `OLD-kf-secret` (valid for 20 years), and one send per
//! channel.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use wechat_api::testing::channels::ChannelName;
use wechat_api::testing::store::{KfAccount, KfMsgid, NameKey, SendStatus, DATABASE_FILE};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;
use crate::kf::{now, ADMIN, KF_KEY, KF_TOKEN};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-3a5a042");
const SEND: &str = "send-token-0123456789abcdef";

/// The notice the old main journaled, to the byte: a retry of it is the same plaintext.
const OLD_NOTICE: &str =
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><CreateTime>1700000000</CreateTime>\
    <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
    <Token><![CDATA[OLDEVT]]></Token><OpenKfId><![CDATA[wkOLD]]></OpenKfId></xml>";

#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// The settings the old main ran with (`make.py`), pointed at `wecom` and `receiver`.
fn settings(wecom: &FakeWeCom, receiver: &ForwardReceiver) -> Vec<(String, String)> {
    [
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("WECOM_KF_SECRET", "kf-secret"),
        ("WECOM_KF_TOKEN", KF_TOKEN),
        ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
        ("FORWARD_URL", receiver.url.as_str()),
        ("FORWARD_SECRET", receiver.secret.as_str()),
        ("SEND_TOKEN", SEND),
        ("ADMIN_TOKEN", ADMIN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Names the old main cached (its fixture has none): a member through the app's
/// Secret and a kf customer through the kf Secret.
/// `table`: `names`, or `public.names` after a pg_dump emptied the search path.
fn old_names(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id_type, id, name, source, updated_at) VALUES
         ('user_id', 'zhangsan', '张三', 'user/get', 1796540460),
         ('external_user_id', 'wmOLD', '老客户', 'kf/customer/batchget', 1796540460);"
    )
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("the fixture")
}

/// `user_version` of the SQLite database in `data`.
fn sqlite_version(data: &Path) -> i64 {
    let db = rusqlite::Connection::open(data.join(DATABASE_FILE)).expect("opens");
    db.pragma_query_value(None, "user_version", |row| row.get(0)).expect("user_version")
}

/// The schema version PostgreSQL database `url` is at.
async fn postgres_version(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    let connection = tokio::spawn(connection);
    let version = client.query_one("SELECT max(version) FROM schema_version", &[]).await.expect("version").get(0);
    drop(client);
    let _ = connection.await;
    version
}

/// The service on the old main's store, and the schema version it is at and
/// the one a new store of this build gets.
async fn spawn_on_old_store(engine: Engine, overrides: &[(String, String)]) -> Option<(TestApp, i64, i64)> {
    let mut pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match engine {
        Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("dir");
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("DATA_DIR");
            rusqlite::Connection::open(data.join(DATABASE_FILE))
                .expect("a database file")
                .execute_batch(&(fixture("sqlite.sql") + &old_names("names")))
                .expect("the old main's store loads");
            assert_eq!(sqlite_version(&data), 6, "the old main's schema");
            let app = spawn_app_in(dir, &pairs).await;
            let fresh = tempfile::tempdir().expect("dir");
            drop(wechat_api::testing::store::Store::open(fresh.path()).expect("a new store"));
            let versions = (sqlite_version(&app.dir.path().join("data")), sqlite_version(fresh.path()));
            Some((app, versions.0, versions.1))
        }
        Engine::Postgres => {
            let (old, fresh) = (crate::postgres::fresh_database().await?, crate::postgres::fresh_database().await?);
            let (client, connection) = tokio_postgres::connect(&old, tokio_postgres::NoTls).await.expect("connects");
            let connection = tokio::spawn(connection);
            client
                .batch_execute(&(fixture("postgres.sql") + &old_names("public.names")))
                .await
                .expect("the old main's store loads");
            drop(client);
            let _ = connection.await;
            assert_eq!(postgres_version(&old).await, 4, "the old main's schema");
            pairs.push(("DATABASE_URL", old.as_str()));
            let app = spawn_app_with(&pairs).await;
            drop(wechat_api::testing::store::Store::connect(&fresh, 1, Duration::from_secs(60)).await.expect("new"));
            let versions = (postgres_version(&old).await, postgres_version(&fresh).await);
            Some((app, versions.0, versions.1))
        }
    }
}

async fn the_old_mains_store_carries_on_where_it_stopped(engine: Engine) {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    wecom.accept_token("OLD-app-secret");
    wecom.accept_token("OLD-kf-secret");
    let kf_message = |msgid: &str| {
        json!({"msgid": msgid, "open_kfid": "wkOLD", "external_userid": "wmOLD", "send_time": now(), "origin": 3,
               "msgtype": "text", "text": {"content": msgid}})
    };
    // WeCom hands the old main's last message over again, and a new one.
    let page = crate::kf::page(vec![kf_message("old-kf-1"), kf_message("new-kf-1")], "CURSOR-NEW-2", 0);
    wecom.answer_once("kf/sync_msg", page);
    let Some((app, version, current)) = spawn_on_old_store(engine, &settings(&wecom, &receiver)).await else {
        return;
    };
    assert_eq!(version, current, "migrated to this build's schema");

    // The kf account resumes from the old main's cursor, with its cached token.
    let sync = &wecom.wait_for_calls("kf/sync_msg", 1).await[0];
    assert_eq!((&sync.body["open_kfid"], &sync.body["cursor"]), (&json!("wkOLD"), &json!("CURSOR-OLD-1")));
    assert_eq!(sync.query["access_token"], "OLD-kf-secret");

    // What the old main owed is done, as channel `app`; of the page only the new message is handled.
    let delivered = receiver.wait_for(2, Duration::from_secs(15)).await;
    let mut records: Vec<_> = delivered.iter().map(|d| (d.message_id.as_str(), &d.record)).collect();
    records.sort_by_key(|(id, _)| *id);
    assert_eq!(records.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ["app:msg:4200000002", "kf:msg:new-kf-1"]);
    assert_eq!((&records[0].1["channel"], &records[0].1["text"]), (&json!("app"), &json!("owed by the old main")));
    assert_eq!((&records[1].1["channel"], &records[1].1["kind"]), (&json!("kf"), &json!("kf")));

    // WeCom's retries of what the old main journaled are not handled again.
    assert_eq!(app.post_xml(&text_message("hello from the old main", 4_200_000_001)).await, 200);
    let notice = app.post_signed("/wechat/callback", KF_TOKEN, KF_KEY, OLD_NOTICE).await;
    assert_eq!(notice.status().as_u16(), 200);
    let metrics = app.metrics().await;
    for channel in ["app", "kf"] {
        let duplicate = format!("wechat_api_callbacks_total{{channel=\"{channel}\",outcome=\"duplicate\"}} 1");
        assert!(metrics.contains(&duplicate), "{duplicate} in {metrics}");
    }
    for (key, channel) in [("app:msg:4200000001", "app"), ("kf:msg:old-kf-1", "kf")] {
        let entry = app.store.find_entry(key.into()).await.expect("journal").expect("the old entry");
        assert_eq!(entry.channel.as_str(), channel, "{key}");
    }

    // The app's cached token sends too; no token was fetched at all.
    let response = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(SEND)
        .json(&json!({"channel": "app", "to": "zhangsan", "text": "after the upgrade"}))
        .send()
        .await
        .expect("send API");
    assert_eq!(response.status().as_u16(), 202);
    let sent = &wecom.wait_for_calls("message/send", 1).await[0];
    assert_eq!(sent.query["access_token"], "OLD-app-secret");
    app.wait_until_outbox_empty().await;
    assert!(wecom.calls("gettoken").is_empty(), "no gettoken: {:?}", wecom.calls("gettoken"));
    assert_eq!(receiver.delivered().len(), 2, "nothing handled twice");
    assert_eq!(wecom.calls("kf/sync_msg").len(), 1, "the notice's retry started no sync");

    // The old sends keep their channels; the cursor is the built-in kf channel's.
    let sends = app.store.recent_sends(10).await.expect("sends");
    let old_kf = sends.iter().find(|s| s.recipient == "wmOLD").expect("the old kf send");
    assert_eq!((old_kf.channel.as_str(), old_kf.status), ("kf", SendStatus::Sent));
    assert_eq!(sends.iter().filter(|s| s.channel == ChannelName::app()).count(), 2, "the old app send and the new one");
    let account = KfAccount { channel: ChannelName::kf(), open_kfid: "wkOLD".into() };
    assert_eq!(app.store.kf_accounts().await.expect("accounts"), std::slice::from_ref(&account));
    let claim = app.store.claim_kf_account(account).await.expect("claim").expect("free");
    assert_eq!(claim.cursor.as_deref(), Some("CURSOR-NEW-2"));
    app.store.release_kf_account(claim).await.expect("release");

    // Cached names belong to the channel whose API answered; kf msgids to their send's channel.
    let name = |channel: ChannelName, id_type: &str, id: &str| {
        let store = app.store.clone();
        let key = NameKey { channel, id_type: id_type.to_owned(), id: id.to_owned() };
        async move { store.cached_name(key).await.expect("name").map(|n| n.name) }
    };
    assert_eq!(name(ChannelName::app(), "user_id", "zhangsan").await.as_deref(), Some("张三"));
    assert_eq!(name(ChannelName::kf(), "external_user_id", "wmOLD").await.as_deref(), Some("老客户"));
    assert_eq!(name(ChannelName::app(), "external_user_id", "wmOLD").await, None, "the kf Secret's answer");
    let old_msgid = match engine {
        Engine::Sqlite => "CCozbgF0ACUyMWI8-3xQVHtE0X1vN2sg",
        Engine::Postgres => "3IshBhaSiScBXBvfRUkjgRcuFzyvAIv5",
    };
    let old_msgid = KfMsgid { channel: ChannelName::kf(), msgid: old_msgid.to_owned() };
    let send = app.store.send_of_msgid(old_msgid).await.expect("lookup");
    assert_eq!(send.as_deref(), Some(old_kf.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_of_the_main_before_channels_carries_on_where_it_stopped() {
    the_old_mains_store_carries_on_where_it_stopped(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_of_the_main_before_channels_carries_on_where_it_stopped() {
    the_old_mains_store_carries_on_where_it_stopped(Engine::Postgres).await;
}

/// PostgreSQL's schema 9 moves what is not handled yet into `journal_pending`:
/// entries a store of before left unhandled are still owed after the upgrade,
/// a live claim on one (its replica still at work) carries over, and the
/// handled ones stay handled.
#[tokio::test]
async fn unhandled_postgres_entries_and_their_claims_outlive_the_pending_table_migration() {
    let Some(url) = crate::postgres::fresh_database().await else { return };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connects");
    let connection = tokio::spawn(connection);
    let owed = "INSERT INTO public.journal (dedup_key, channel, kind, sender, received_at, payload, claimed_until) VALUES
        ('app:msg:owed-free', 'app', 'callback', 'zhangsan', 1796540480, '<xml>free</xml>', now() - interval '1 minute'),
        ('app:msg:owed-claimed', 'app', 'callback', 'zhangsan', 1796540481, '<xml>claimed</xml>', now() + interval '1 hour');";
    client.batch_execute(&(fixture("postgres.sql") + &old_names("public.names") + owed)).await.expect("loads");
    drop(client);
    let _ = connection.await;
    assert_eq!(postgres_version(&url).await, 4, "the old main's schema");

    let store = wechat_api::testing::store::Store::connect(&url, 2, Duration::from_secs(60)).await.expect("migrates");
    assert_eq!(postgres_version(&url).await, wechat_api::testing::store::POSTGRES_SCHEMA_VERSION);
    assert_eq!(store.unhandled().await.expect("unhandled"), 2, "both owed entries, none of the handled four");
    let claimed = store.claim_entries(10).await.expect("claim");
    let keys: Vec<&str> = claimed.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys, ["app:msg:owed-free"], "the other is still its replica's");
    assert_eq!(claimed[0].payload, "<xml>free</xml>");
    store.complete_entries(vec![(claimed[0].id, Vec::new())]).await.expect("complete");
    assert_eq!(store.unhandled().await.expect("unhandled"), 1);
}
