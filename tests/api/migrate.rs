//! `wechat-api migrate-store`: a single VM's SQLite store moves into an empty
//! PostgreSQL database, the real binary against a real server.

use wechat_api::testing::channels::ChannelName;
use wechat_api::testing::store::Store;
use wechat_api::testing::store::{Customer, EntryKind, NewEntry, Observation, Refusal, Verdict};

use crate::helpers::*;
use crate::postgres::fresh_database;
use crate::store_conformance::kf_account;

fn kf_entry(key: &str) -> NewEntry {
    NewEntry {
        dedup_key: key.into(),
        channel: ChannelName::kf(),
        kind: EntryKind::KfMessage,
        sender: Some("wm".into()),
        payload: "{}".into(),
        parsed: None,
    }
}

fn customer() -> Customer {
    Customer { channel: ChannelName::kf(), open_kfid: "wkA".into(), external_userid: "wmCUSTOMER".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_what_is_owed_and_refuses_a_database_with_data() {
    let Some(url) = fresh_database().await else { return };
    let dir = tempfile::tempdir().expect("dir");
    let env = test_env(dir.path(), &[]);
    {
        let sqlite = Store::open(&dir.path().join("data")).expect("sqlite");
        sqlite.first_started_at().await.expect("first start");
        sqlite.journal(kf_entry("kf:msg:owed")).await.expect("journal");
        let mut claim = sqlite.claim_kf_account(kf_account("wkA")).await.expect("claim").expect("free");
        sqlite.kf_store_page(&mut claim, Vec::new(), "CURSOR-9".into()).await.expect("page");
        // A customer who wrote a minute ago, two of the five replies sent.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        sqlite.observe_kf(vec![(customer(), Observation::Wrote { at: now - 60 })]).await.expect("observe");
        assert_eq!(sqlite.reserve_kf_sends(customer(), 2, now, false).await.expect("reserve"), Verdict::Allowed);
    }

    let out = wechat_api(dir.path()).args(["migrate-store", "--to", &url]).envs(&env).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 kf cursors, 1 unhandled entries"), "{stdout}");
    assert!(stdout.contains("1 kf conversations"), "{stdout}");

    let postgres = Store::connect(&url, 2, std::time::Duration::from_secs(60)).await.expect("postgres");
    assert_eq!(postgres.unhandled().await.expect("count"), 1, "the unhandled message moved");
    let claim = postgres.claim_kf_account(kf_account("wkA")).await.expect("claim").expect("free");
    assert_eq!(claim.cursor.as_deref(), Some("CURSOR-9"), "the kf cursor moved");
    postgres.release_kf_account(claim).await.expect("release");
    // The kf rules hold across the move: the customer is known, 3 replies are left.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let moved = postgres.kf_conversation(customer()).await.expect("read").expect("the conversation moved");
    assert_eq!(moved.sent_since, 2);
    let refused = postgres.reserve_kf_sends(customer(), 4, now, false).await.expect("reserve");
    assert_eq!(refused, Verdict::Refused(Refusal::Quota { parts: 4, remaining: 3 }));

    let again = wechat_api(dir.path()).args(["migrate-store", "--to", &url]).envs(&env).output().expect("runs");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second migration into the same database is refused");
    assert!(stderr.contains("already holds data"), "{stderr}");
    let password_free = !stderr.contains("postgres://");
    assert!(password_free, "the URL is never echoed: {stderr}");
}

#[test]
fn a_target_that_is_not_a_postgres_url_is_one_line_naming_to_exit_64_without_its_password() {
    let dir = tempfile::tempdir().expect("dir");
    let env = test_env(dir.path(), &[]);
    let out = wechat_api(dir.path())
        .args(["migrate-store", "--to", "mysql://user:Pw9Secret@db.internal/wechat"])
        .envs(&env)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("--to") && lines[0].contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("Pw9Secret"), "no password: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_said_once() {
    let dir = tempfile::tempdir().expect("dir");
    let env = test_env(dir.path(), &[]);
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://user:Pw9Secret@127.0.0.1:{port}/wechat?sslmode=disable");
    let out = wechat_api(dir.path()).args(["migrate-store", "--to", &url]).envs(&env).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let reason = stderr.trim().rsplit(": ").next().expect("a reason");
    assert_eq!(stderr.matches(reason).count(), 1, "the reason is said once: {stderr}");
    assert!(!stderr.contains("Pw9Secret"), "no password: {stderr}");
}
