//! One suite, two stores: every scenario runs against SQLite (`Store::open`) and
//! PostgreSQL (`Store::connect`, a real server from `postgres`). Where a scenario
//! has several owners racing, PostgreSQL gets several replicas (stores on one
//! database) and SQLite several handles of its one store, which is how each is
//! deployed. Lease expiry is awaited by polling with a deadline, never a fixed sleep.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use wechat_api::testing::channels::ChannelName;
use wechat_api::testing::store::AnswerKey;
use wechat_api::testing::store::NewAction;
use wechat_api::testing::store::StoredToken;
use wechat_api::testing::store::StreamOpen;
use wechat_api::testing::store::{now, Store, StoreError};
use wechat_api::testing::store::{Customer, Observation, Refusal, Verdict};
use wechat_api::testing::store::{EntryKind, KfAccount, NameKey, NewEntry, Recorded};
use wechat_api::testing::store::{KfMsgid, NewSend, Queued, SendStatus, SendUpdate};
use wechat_api::testing::streams::{Update, UpdateError};

/// Which engine a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A store under test, and how to get another owner of the same data.
struct Subject {
    store: Store,
    lease: Duration,
    url: Option<String>,
    _dir: Option<TempDir>,
}

impl Subject {
    /// `None` when PostgreSQL is not installed (outside CI): the scenario is skipped.
    async fn open(engine: Engine, lease: Duration) -> Option<Self> {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("dir");
                let store = Store::open(dir.path()).expect("opens").with_lease(lease);
                Some(Self { store, lease, url: None, _dir: Some(dir) })
            }
            Engine::Postgres => {
                let url = super::postgres::fresh_database().await?;
                let store = Store::connect(&url, 8, lease).await.expect("connects").with_lease(lease);
                Some(Self { store, lease, url: Some(url), _dir: None })
            }
        }
    }

    /// Another owner: a replica on the same database (PostgreSQL), or another
    /// handle of the one store (SQLite, one process per file).
    async fn replica(&self) -> Store {
        match &self.url {
            Some(url) => Store::connect(url, 8, self.lease).await.expect("connects").with_lease(self.lease),
            None => self.store.clone(),
        }
    }

    /// `n` owners, the first being the subject's own store.
    async fn owners(&self, n: usize) -> Vec<Store> {
        let mut owners = vec![self.store.clone()];
        while owners.len() < n {
            owners.push(self.replica().await);
        }
        owners
    }
}

fn entry(key: &str) -> NewEntry {
    NewEntry {
        dedup_key: key.to_owned(),
        channel: ChannelName::app(),
        kind: EntryKind::Callback,
        sender: None,
        payload: format!("<xml>{key}</xml>"),
        parsed: None,
    }
}

/// Account `open_kfid` of the built-in kf channel.
pub(crate) fn kf_account(open_kfid: &str) -> KfAccount {
    KfAccount { channel: ChannelName::kf(), open_kfid: open_kfid.to_owned() }
}

fn action(key: &str) -> NewAction {
    NewAction { key: key.into(), kind: "forward".into(), payload: "{}".into() }
}

/// Polls `attempt` until it gives `Some`, within `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        // Polling, within the deadline (lease expiry has a granularity of seconds).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Journals `n` entries and completes them with one action each: the actions' keys.
async fn queue_actions(store: &Store, prefix: &str, n: usize) -> Vec<String> {
    let mut completions = Vec::new();
    for i in 0..n {
        let Recorded::New(id) = store.journal(entry(&format!("{prefix}-m{i}"))).await.expect("journal") else {
            panic!("new")
        };
        completions.push((id, vec![action(&format!("{prefix}-a{i}"))]));
    }
    store.complete_entries(completions).await.expect("complete");
    (0..n).map(|i| format!("{prefix}-a{i}")).collect()
}

async fn duplicate_deliveries_racing_are_journaled_once(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let owners = subject.owners(3).await;
    let writes = (0..48).map(|i| {
        let store = owners[i % owners.len()].clone();
        tokio::spawn(async move { store.journal(entry("the-same-message")).await })
    });
    let results: Vec<Recorded> =
        futures_util::future::join_all(writes).await.into_iter().map(|r| r.expect("task").expect("journal")).collect();
    let new = results.iter().filter(|r| matches!(r, Recorded::New(_))).count();
    assert_eq!(new, 1, "{results:?}");
    assert_eq!(subject.store.unhandled().await.expect("unhandled"), 1);
    assert!(subject.store.contains("the-same-message".into()).await.expect("query"));
}

async fn distinct_deliveries_are_never_merged(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let owners = subject.owners(2).await;
    let writes = (0..200).map(|i| {
        let store = owners[i % owners.len()].clone();
        tokio::spawn(async move { store.journal(entry(&format!("distinct-{i}"))).await })
    });
    let mut ids = HashSet::new();
    for write in futures_util::future::join_all(writes).await {
        let Recorded::New(id) = write.expect("task").expect("journal") else { panic!("each is new") };
        assert!(ids.insert(id), "id {id} given twice");
    }
    assert_eq!(subject.store.unhandled().await.expect("unhandled"), 200);
}

async fn claimed_entries_complete_in_arrival_order(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    for key in ["first", "second", "third"] {
        store.journal(entry(key)).await.expect("journal");
    }
    let claimed = store.claim_entries(10).await.expect("claim");
    let keys: Vec<&str> = claimed.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys, ["first", "second", "third"]);
    assert!(claimed.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(claimed[0].payload, "<xml>first</xml>");
    assert_eq!(claimed[0].channel, ChannelName::app());
    let completions = claimed.iter().map(|e| (e.id, vec![action(&format!("forward:{}", e.dedup_key))])).collect();
    store.complete_entries(completions).await.expect("complete");
    assert_eq!(store.unhandled().await.expect("unhandled"), 0);
    assert!(store.claim_entries(10).await.expect("claim").is_empty());
    // Completing again (a handler that ran twice) queues nothing new.
    let again = claimed.iter().map(|e| (e.id, vec![action(&format!("forward:{}", e.dedup_key))])).collect();
    store.complete_entries(again).await.expect("complete again");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 3);
    let due = store.claim_actions(10).await.expect("claim actions");
    assert_eq!(
        due.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(),
        ["forward:first", "forward:second", "forward:third"]
    );
}

async fn an_entry_claimed_and_never_completed_is_claimed_again(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(1)).await else { return };
    let owners = subject.owners(2).await;
    owners[0].journal(entry("orphan")).await.expect("journal");
    let first = owners[0].claim_entries(10).await.expect("claim");
    assert_eq!(first.len(), 1);
    // Its handler died: once the claim runs out, another owner gets the entry.
    let again = eventually(Duration::from_secs(10), "the entry is claimed again", || async {
        let claimed = owners[1].claim_entries(10).await.expect("claim");
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!(again[0].id, first[0].id);
    owners[1].complete_entries(vec![(again[0].id, Vec::new())]).await.expect("complete");
    assert_eq!(owners[0].unhandled().await.expect("unhandled"), 0);
}

async fn each_due_action_is_claimed_by_exactly_one_claimer(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let queued = queue_actions(&subject.store, "x", 120).await;
    let owners = subject.owners(3).await;
    let claimers = (0..16).map(|i| {
        let store = owners[i % owners.len()].clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_actions(7).await.expect("claim");
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed);
            }
        })
    });
    let mut seen = HashSet::new();
    for claimer in futures_util::future::join_all(claimers).await {
        for action in claimer.expect("task") {
            assert!(seen.insert(action.key.clone()), "{} claimed twice", action.key);
            assert_eq!(action.claim, 1);
        }
    }
    assert_eq!(seen, queued.into_iter().collect::<HashSet<_>>());
}

async fn an_expired_claim_is_taken_over_and_the_stale_finish_is_refused(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(1)).await else { return };
    let owners = subject.owners(2).await;
    queue_actions(&owners[0], "slow", 1).await;
    let stale = owners[0].claim_actions(10).await.expect("claim").pop().expect("one due");
    assert!(owners[1].claim_actions(10).await.expect("claim").is_empty(), "held by a live claim");
    let taken = eventually(Duration::from_secs(10), "the action is taken over", || async {
        owners[1].claim_actions(10).await.expect("claim").pop()
    })
    .await;
    assert_eq!(taken.id, stale.id);
    assert!(taken.claim > stale.claim);

    // The stale owner's finish and its follow-up are refused, nothing written.
    let refused = owners[0].action_succeeded(&stale, vec![action("follow-up-of-stale")]).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    assert!(matches!(owners[0].action_failed(&stale, 0, "late".into()).await, Err(StoreError::LeaseLost)));
    assert!(matches!(owners[0].action_abandoned(&stale, "late".into()).await, Err(StoreError::LeaseLost)));
    owners[1].action_succeeded(&taken, Vec::new()).await.expect("the live claim finishes");
    assert_eq!(owners[0].outbox_backlog().await.expect("backlog"), 0, "no follow-up of the stale claim");
}

async fn a_failed_action_is_due_again_after_its_back_off(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    queue_actions(store, "retry", 1).await;
    let due = store.claim_actions(10).await.expect("claim").pop().expect("due");
    store.action_failed(&due, 60, "HTTP 500".into()).await.expect("failed");
    assert!(store.claim_actions(10).await.expect("claim").is_empty(), "not before its back-off");
    queue_actions(store, "now", 1).await;
    let due = store.claim_actions(10).await.expect("claim").pop().expect("due");
    store.action_failed(&due, 0, "HTTP 502".into()).await.expect("failed");
    let again = store.claim_actions(10).await.expect("claim").pop().expect("due at once");
    assert_eq!((again.id, again.attempts), (due.id, 1));
    store.action_succeeded(&again, vec![action("next")]).await.expect("done");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 2, "the follow-up and the backed-off one");
}

async fn a_stale_kf_claim_stores_no_page(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(1)).await else { return };
    let owners = subject.owners(2).await;
    let mut stale = owners[0].claim_kf_account(kf_account("wk1")).await.expect("claim").expect("free");
    assert_eq!(stale.cursor, None);
    assert!(owners[1].claim_kf_account(kf_account("wk1")).await.expect("claim").is_none(), "two claims never hold");
    let mut live = eventually(Duration::from_secs(10), "the account is taken over", || async {
        owners[1].claim_kf_account(kf_account("wk1")).await.expect("claim")
    })
    .await;
    let new = owners[1].kf_store_page(&mut live, vec![entry("kf-1")], "c1".into()).await.expect("stored");
    assert_eq!((new, live.cursor.as_deref()), (1, Some("c1")));

    let refused = owners[0].kf_store_page(&mut stale, vec![entry("kf-stale")], "c-stale".into()).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    assert!(!owners[0].contains("kf-stale".into()).await.expect("query"), "the loser journaled nothing");

    owners[1].release_kf_account(live).await.expect("release");
    let next = owners[0].claim_kf_account(kf_account("wk1")).await.expect("claim").expect("released");
    assert_eq!(next.cursor.as_deref(), Some("c1"), "the cursor is the winner's");
    assert_eq!(owners[0].kf_accounts().await.expect("accounts"), [kf_account("wk1")]);
}

async fn a_kf_page_whose_cursor_moved_is_refused(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let mut claim = store.claim_kf_account(kf_account("wk2")).await.expect("claim").expect("free");
    let mut copy = claim.clone();
    assert_eq!(store.kf_store_page(&mut claim, vec![entry("p1"), entry("p1b")], "c1".into()).await.expect("first"), 2);
    // The same claim with an old cursor (a page stored twice): compare-and-set fails.
    let refused = store.kf_store_page(&mut copy, vec![entry("p2")], "c2".into()).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    assert!(!store.contains("p2".into()).await.expect("query"));
    // A page repeating a message journals it once; an empty next cursor keeps the cursor.
    assert_eq!(store.kf_store_page(&mut claim, vec![entry("p1"), entry("p3")], String::new()).await.expect("next"), 1);
    assert_eq!(claim.cursor.as_deref(), Some("c1"));
    store.release_kf_account(claim).await.expect("release");
    let again = store.claim_kf_account(kf_account("wk2")).await.expect("claim").expect("free");
    assert_eq!(again.cursor.as_deref(), Some("c1"));
}

async fn each_kf_channel_keeps_its_own_cursor_of_an_account(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let other = KfAccount { channel: ChannelName::parse("support").expect("a name"), open_kfid: "wk3".into() };
    let mut builtin = store.claim_kf_account(kf_account("wk3")).await.expect("claim").expect("free");
    let mut file = store.claim_kf_account(other.clone()).await.expect("claim").expect("its own lease");
    store.kf_store_page(&mut builtin, vec![entry("kf-b")], "builtin-c1".into()).await.expect("stored");
    store.kf_store_page(&mut file, vec![entry("kf-f")], "support-c1".into()).await.expect("stored apart");
    store.release_kf_account(builtin).await.expect("release");
    store.release_kf_account(file).await.expect("release");
    let accounts = store.kf_accounts().await.expect("accounts");
    assert_eq!(accounts, [kf_account("wk3"), other.clone()], "ordered by channel, then open_kfid");
    let again = store.claim_kf_account(other).await.expect("claim").expect("free");
    assert_eq!(again.cursor.as_deref(), Some("support-c1"));
    let again = store.claim_kf_account(kf_account("wk3")).await.expect("claim").expect("free");
    assert_eq!(again.cursor.as_deref(), Some("builtin-c1"));
}

async fn a_live_lease_has_one_holder_until_released(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let owners = subject.owners(3).await;
    let claims = (0..12).map(|i| {
        let store = owners[i % owners.len()].clone();
        tokio::spawn(async move { store.claim_lease("token:corp:secret".into()).await })
    });
    let mut held: Vec<_> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|c| c.expect("task").expect("claim"))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let lease = held.remove(0);
    assert!(owners[1].claim_lease("token:corp:secret".into()).await.expect("claim").is_none());
    assert!(owners[1].claim_lease("another".into()).await.expect("claim").is_some(), "leases are per name");
    owners[0].release_lease(lease.clone()).await.expect("release");
    let next = owners[2].claim_lease("token:corp:secret".into()).await.expect("claim").expect("released");
    assert!(next.claim > lease.claim, "claims only go up");
    // Releasing a lease already taken over changes nothing; nor can its old holder renew it.
    assert!(!owners[0].renew_lease(lease.clone()).await.expect("renew"), "a lease taken over is not renewed");
    assert!(owners[2].renew_lease(next.clone()).await.expect("renew"), "the holder renews its lease");
    owners[0].release_lease(lease).await.expect("release");
    assert!(owners[1].claim_lease("token:corp:secret".into()).await.expect("claim").is_none());
}

async fn a_rejected_token_is_dropped_only_if_still_current(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let owners = subject.owners(2).await;
    let fresh = StoredToken { token: "fresh".into(), expires_at: now() + 7200 };
    owners[0]
        .save_token("corp:app".into(), StoredToken { token: "old".into(), expires_at: now() + 10 })
        .await
        .expect("save");
    owners[1].save_token("corp:app".into(), fresh.clone()).await.expect("refresh");
    owners[0].drop_token("corp:app".into(), "old".into()).await.expect("drop");
    assert_eq!(owners[0].load_token("corp:app".into()).await.expect("load"), Some(fresh), "a newer token is kept");
    owners[1].drop_token("corp:app".into(), "fresh".into()).await.expect("drop");
    assert_eq!(owners[0].load_token("corp:app".into()).await.expect("load"), None);
}

async fn bookkeeping_round_trips(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let owners = subject.owners(2).await;
    let first = owners[0].first_started_at().await.expect("first start");
    assert!((now() - first).abs() < 60);
    assert_eq!(owners[1].first_started_at().await.expect("first start"), first, "set once");

    let record = wechat_api::testing::store::FiringRecord { check: "token".into(), since: 5, last_notified_at: 6 };
    owners[0].set_firing(record.clone()).await.expect("set");
    assert_eq!(owners[1].firing_checks().await.expect("firing"), [record]);
    owners[1].clear_firing("token".into()).await.expect("clear");
    assert!(owners[0].firing_checks().await.expect("firing").is_empty());

    assert_eq!(owners[0].meta_value("note").await.expect("meta"), None);
    owners[0].set_meta_value("note", "v1".into()).await.expect("set");
    owners[0].set_meta_value("note", "v2".into()).await.expect("set");
    assert_eq!(owners[1].meta_value("note").await.expect("meta").as_deref(), Some("v2"));
    owners[0].probe_write().await.expect("probe");

    let mut sender = entry("from-lisi");
    sender.sender = Some("lisi".into());
    owners[0].journal(sender).await.expect("journal");
    let (app, hr) = (ChannelName::app(), ChannelName::parse("hr").expect("a name"));
    let unmapped_on = |channel: &ChannelName| Some(vec![channel.clone()]);
    assert_eq!(owners[0].seen_senders(app.clone(), "userid", unmapped_on(&app), 10).await.expect("senders"), ["lisi"]);
    let name = wechat_api::testing::store::CachedName { name: "李四".into(), source: "user/get".into() };
    let lisi =
        |channel: &ChannelName| NameKey { channel: channel.clone(), id_type: "userid".into(), id: "lisi".into() };
    owners[1].cache_name(lisi(&app), name.clone()).await.expect("cache");
    assert_eq!(owners[0].cached_name(lisi(&app)).await.expect("name"), Some(name));
    assert_eq!(owners[0].cached_name(lisi(&hr)).await.expect("name"), None, "hr's lisi");
    assert!(owners[0].seen_senders(app.clone(), "userid", unmapped_on(&app), 10).await.expect("senders").is_empty());
    assert_eq!(owners[0].seen_senders(app.clone(), "userid", unmapped_on(&hr), 10).await.expect("senders"), ["lisi"]);
    assert_eq!(owners[0].seen_senders(app, "userid", None, 10).await.expect("senders"), ["lisi"]);
    assert!(owners[0].seen_senders(hr, "userid", None, 10).await.expect("senders").is_empty(), "seen on app only");
}

async fn pruning_keeps_unhandled_entries_and_owed_actions(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let Recorded::New(handled) = store.journal(entry("handled")).await.expect("journal") else { panic!("new") };
    store.journal(entry("unhandled")).await.expect("journal");
    store.complete_entries(vec![(handled, vec![action("done"), action("owed")])]).await.expect("complete");
    let done = store.claim_actions(10).await.expect("claim").into_iter().find(|a| a.key == "done").expect("due");
    store.action_succeeded(&done, Vec::new()).await.expect("done");
    assert_eq!(store.prune(now() - 3600).await.expect("prune"), Default::default(), "young rows stay");

    let pruned = store.prune(now() + 60).await.expect("prune");

    assert_eq!((pruned.journal, pruned.outbox), (1, 1));
    assert_eq!(store.unhandled().await.expect("unhandled"), 1);
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 1);
    assert!(!store.contains("handled".into()).await.expect("query"));
    assert!(store.contains("unhandled".into()).await.expect("query"));
}

/// An AI bot stream of `channel` opened now for zhangsan's message `id`, in
/// callback mode (no `response_url`, no `req_id`).
fn stream_open(id: &str, channel: ChannelName) -> StreamOpen {
    StreamOpen {
        stream_id: id.to_owned(),
        record_id: format!("{channel}:msg:{id}"),
        channel,
        userid: "zhangsan".into(),
        chatid: None,
        response_url: None,
        created_at: now(),
        req_id: None,
    }
}

fn new_send(id: &str, key: Option<&str>) -> NewSend {
    NewSend {
        id: id.into(),
        channel: ChannelName::kf(),
        recipient: "wm1".into(),
        open_kfid: Some("wkA".into()),
        parts: 2,
        idempotency_key: key.map(str::to_owned),
        fingerprint: key.map(|_| "f".repeat(64)),
    }
}

async fn a_send_is_queued_once_per_idempotency_key_and_moves_through_its_statuses(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(30)).await else { return };
    let owners = subject.owners(4).await;
    let racing = owners.iter().enumerate().map(|(n, store)| {
        let store = store.clone();
        async move {
            store
                .queue_send(new_send(&format!("msg_{n}"), Some("same-key")), action(&format!("send:msg_{n}")), 1_000)
                .await
        }
    });
    let results: Vec<Queued> =
        futures_util::future::join_all(racing).await.into_iter().map(|r| r.expect("queued")).collect();
    let new: Vec<&String> =
        results.iter().filter_map(|q| if let Queued::New(id) = q { Some(id) } else { None }).collect();
    assert_eq!(new.len(), 1, "one send for one key: {results:?}");
    assert!(results.iter().all(|q| matches!(q, Queued::Existing(id) | Queued::New(id) if id == new[0])), "{results:?}");
    assert_eq!(subject.store.outbox_backlog().await.expect("backlog"), 1, "one action queued");
    // The same key for another request: a conflict naming the first send, nothing written.
    let other = NewSend { fingerprint: Some("0".repeat(64)), ..new_send("msg_other", Some("same-key")) };
    assert_eq!(
        subject.store.queue_send(other, action("send:msg_other"), 1_000).await.expect("answered"),
        Queued::Conflict(new[0].clone())
    );
    assert_eq!(subject.store.outbox_backlog().await.expect("backlog"), 1, "still one action queued");

    let store = &subject.store;
    let id = new[0].clone();
    let update = |u: SendUpdate| store.update_send(id.clone(), u);
    assert_eq!(update(SendUpdate::PartSent { number: 1 }).await.expect("update"), None, "1 of 2 parts: still queued");
    assert_eq!(update(SendUpdate::PartSent { number: 2 }).await.expect("update"), Some(SendStatus::Sent));
    assert_eq!(update(SendUpdate::PartSent { number: 2 }).await.expect("update"), None, "a repeat changes nothing");
    assert_eq!(
        update(SendUpdate::Refused { reason: "late".into() }).await.expect("update"),
        None,
        "only queued is refused"
    );
    let (kf, shop) = (ChannelName::kf(), ChannelName::parse("shop").expect("a name"));
    let msgid = |channel: &ChannelName, msgid: &str| KfMsgid { channel: channel.clone(), msgid: msgid.into() };
    store.note_msgid(msgid(&kf, "MSGID1"), id.clone()).await.expect("msgid");
    assert_eq!(store.send_of_msgid(msgid(&kf, "MSGID1")).await.expect("lookup"), Some(id.clone()));
    assert_eq!(store.send_of_msgid(msgid(&shop, "MSGID1")).await.expect("lookup"), None, "another channel's msgid");
    assert_eq!(store.send_of_msgid(msgid(&kf, "other")).await.expect("lookup"), None);
    let failed = update(SendUpdate::Failed { errcode: None, reason: "msg_send_fail".into() }).await.expect("update");
    assert_eq!(failed, Some(SendStatus::Failed), "a sent message may still fail");
    let row = store.send(id.clone()).await.expect("read").expect("found");
    assert_eq!(
        (row.status, row.parts, row.parts_sent, row.reason.as_deref()),
        (SendStatus::Failed, 2, 2, Some("msg_send_fail"))
    );
    assert_eq!(store.recent_sends(5).await.expect("recent")[0].id, id);
    let recorded = store.record_send(new_send("reply:kf:msg:1", None)).await.expect("recorded");
    assert_eq!(recorded.status, SendStatus::Queued);
    assert_eq!(
        store.record_send(new_send("reply:kf:msg:1", None)).await.expect("again").created_at,
        recorded.created_at
    );

    store.journal(entry("kf:msg:found")).await.expect("journal");
    assert_eq!(
        store.find_entry("kf:msg:found".into()).await.expect("find").map(|e| e.dedup_key),
        Some("kf:msg:found".into())
    );
    assert!(store.find_entry("kf:msg:absent".into()).await.expect("find").is_none());
}

async fn racing_replicas_never_send_more_than_the_kf_rules_allow(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(30)).await else { return };
    let customer = Customer { channel: ChannelName::kf(), open_kfid: "wkA".into(), external_userid: "wm1".into() };
    let at = now();
    // Never heard from: refused like a closed window, also for the handover text (SPEC §15).
    let never_heard_from = Verdict::Refused(Refusal::Window { last_customer_at: None });
    for handover in [false, true] {
        let verdict = subject.store.reserve_kf_sends(customer.clone(), 1, at, handover).await.expect("reserve");
        assert_eq!(verdict, never_heard_from);
    }
    subject.store.observe_kf(vec![(customer.clone(), Observation::Wrote { at })]).await.expect("observe");
    let elsewhere = Customer { open_kfid: "wkB".into(), ..customer.clone() };
    assert_eq!(
        subject.store.reserve_kf_sends(elsewhere, 1, at, false).await.expect("reserve"),
        never_heard_from,
        "known on wkA is not known on wkB"
    );
    let other_channel = Customer { channel: ChannelName::parse("shop").expect("a name"), ..customer.clone() };
    assert_eq!(
        subject.store.reserve_kf_sends(other_channel, 1, at, false).await.expect("reserve"),
        never_heard_from,
        "known on kf is not known on shop"
    );
    let owners = subject.owners(4).await;
    let racing = owners.iter().flat_map(|store| std::iter::repeat_n(store.clone(), 3)).map(|store| {
        let customer = customer.clone();
        async move { store.reserve_kf_sends(customer, 1, at, false).await.expect("reserve") }
    });
    let verdicts = futures_util::future::join_all(racing).await;
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allowed).count(), 5, "{verdicts:?}");

    subject.store.observe_kf(vec![(customer.clone(), Observation::Wrote { at: at + 1 })]).await.expect("observe");
    subject.store.observe_kf(vec![(customer.clone(), Observation::Human { at: at + 2 })]).await.expect("observe");
    assert!(matches!(
        subject.store.reserve_kf_sends(customer.clone(), 1, at + 3, false).await.expect("reserve"),
        Verdict::Refused(Refusal::Human { .. })
    ));
    assert_eq!(
        subject.store.reserve_kf_sends(customer.clone(), 1, at + 3, true).await.expect("reserve"),
        Verdict::Allowed
    );
    subject.store.observe_kf(vec![(customer.clone(), Observation::Ended)]).await.expect("observe");
    let conversation = subject.store.kf_conversation(customer.clone()).await.expect("read").expect("known");
    assert_eq!((conversation.sent_since, conversation.human_since), (1, None));
    assert_eq!(subject.store.prune_replies(now() - 60).await.expect("prune"), 0, "recent: kept");
    assert_eq!(subject.store.prune_replies(now() + 60).await.expect("prune"), 1, "past retention: gone");
    assert!(subject.store.kf_conversation(customer).await.expect("read").is_none());
}

fn app_send(id: &str, key: Option<&str>) -> NewSend {
    NewSend { channel: ChannelName::app(), recipient: "zhangsan".into(), open_kfid: None, ..new_send(id, key) }
}

async fn racing_replicas_never_queue_more_sends_than_the_cap_of_their_channel(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(30)).await else { return };
    let owners = subject.owners(4).await;
    let racing = (0..40).map(|n| {
        let store = owners[n % owners.len()].clone();
        async move { store.queue_send(new_send(&format!("kf_{n}"), None), action(&format!("send:kf_{n}")), 5).await }
    });
    let results: Vec<Queued> =
        futures_util::future::join_all(racing).await.into_iter().map(|r| r.expect("answered")).collect();
    let new = results.iter().filter(|q| matches!(q, Queued::New(_))).count();
    assert_eq!(new, 5, "exactly SEND_QUEUE_MAX: {results:?}");
    assert!(results.iter().all(|q| matches!(q, Queued::New(_) | Queued::Full { queued: 5 })), "{results:?}");
    let store = &subject.store;
    assert_eq!(store.queued_sends(ChannelName::kf()).await.expect("count"), 5);
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 5, "nothing written for a refused send");

    // Per channel: app has room.
    assert_eq!(store.queued_sends(ChannelName::app()).await.expect("count"), 0);
    let app = store.queue_send(app_send("app_1", Some("app-key")), action("send:app_1"), 5).await.expect("queued");
    assert_eq!(app, Queued::New("app_1".into()));
    // A known idempotency key is the first send again, full or not.
    let again = store.queue_send(app_send("app_2", Some("app-key")), action("send:app_2"), 1).await.expect("queued");
    assert_eq!(again, Queued::Existing("app_1".into()));
    let full = store.queue_send(app_send("app_3", None), action("send:app_3"), 1).await.expect("answered");
    assert_eq!(full, Queued::Full { queued: 1 });

    // A finished send makes room.
    let first = results.iter().find_map(|q| if let Queued::New(id) = q { Some(id.clone()) } else { None });
    let first = first.expect("a new send");
    store.update_send(first, SendUpdate::Refused { reason: "rule".into() }).await.expect("update");
    assert_eq!(store.queued_sends(ChannelName::kf()).await.expect("count"), 4);
    let room = store.queue_send(new_send("kf_late", None), action("send:kf_late"), 5).await.expect("queued");
    assert_eq!(room, Queued::New("kf_late".into()));
}

async fn the_oldest_owed_action_gives_the_backlog_its_age_and_a_deferred_one_stays_owed(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(30)).await else { return };
    let store = &subject.store;
    let empty = store.outbox_owed().await.expect("owed");
    assert_eq!((empty.actions, empty.oldest_since), (0, None));
    let before = now();
    let keys = queue_actions(store, "owed", 2).await;
    let owed = store.outbox_owed().await.expect("owed");
    assert_eq!(owed.actions, 2);
    let since = owed.oldest_since.expect("an oldest");
    assert!((before - 1..=now() + 1).contains(&since), "{since} not in [{before}, now]");

    let due = store.claim_actions(10).await.expect("claim");
    assert_eq!(due.iter().map(|a| a.key.clone()).collect::<Vec<_>>(), keys);
    // Paced: put off without an attempt or an error; a stale claim cannot.
    let stale = wechat_api::testing::store::DueAction { claim: due[0].claim - 1, ..due[0].clone() };
    assert!(matches!(store.action_deferred(&stale, 0).await, Err(StoreError::LeaseLost)));
    store.action_deferred(&due[0], 0).await.expect("deferred");
    store.action_deferred(&due[1], 3_600).await.expect("deferred");
    let again = eventually(Duration::from_secs(5), "the first due again", || async {
        let due = store.claim_actions(10).await.expect("claim");
        (!due.is_empty()).then_some(due)
    })
    .await;
    assert_eq!(again.len(), 1, "the second waits its hour: {again:?}");
    assert_eq!((again[0].key.as_str(), again[0].attempts), (keys[0].as_str(), 0), "no attempt counted");
    store.action_succeeded(&again[0], Vec::new()).await.expect("done");
    let owed = store.outbox_owed().await.expect("owed");
    assert_eq!(owed.actions, 1, "the deferred one is still owed");
    assert!(owed.oldest_since.is_some_and(|at| at >= since));
}

/// An AI bot's stream (SPEC §13): opened once, updated by any owner, refreshed
/// by any owner, closed by exactly one of the refreshes racing to close it, the
/// one use of its `response_url` taken once, and pruned with the replies.
async fn an_ai_bot_stream_is_closed_once_by_racing_refreshes_and_its_response_url_taken_once(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let at = now();
    let open = |id: &str| StreamOpen {
        response_url: Some("https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=x".into()),
        created_at: at,
        ..stream_open(id, ChannelName::aibot())
    };
    store.aibot_open(open("s1")).await.expect("open");
    store.aibot_open(open("s1")).await.expect("a retry opens nothing twice");
    let rest = |id: &str| NewAction { key: format!("rest:{id}"), kind: "aibot_rest".into(), payload: "{}".into() };
    let replica = subject.replica().await;
    let update = |text: &str, append, finish| Update { text: text.into(), append, finish };
    let first = replica.aibot_update("s1".into(), update("半", false, false), rest("s1"), None).await.expect("store");
    assert_eq!(first.expect("known").expect("taken").content, "半");
    let refreshed = store.aibot_refresh("s1".into(), Some("zhangsan".into()), at, 330).await.expect("store");
    let refreshed = refreshed.expect("known");
    assert_eq!((refreshed.row.content.as_str(), refreshed.closed_now), ("半", false));
    assert!(store.aibot_refresh("s1".into(), Some("lisi".into()), at, 330).await.expect("store").is_none());
    let done = store.aibot_update("s1".into(), update("全", true, true), rest("s1"), None).await.expect("store");
    assert!(done.expect("known").expect("taken").finished);
    assert!(store
        .aibot_update("s1".into(), update("x", true, true), rest("s1"), None)
        .await
        .expect("store")
        .expect("known")
        .is_err());
    let owners = subject.owners(4).await;
    let refreshes = owners.iter().map(|owner| owner.aibot_refresh("s1".into(), None, at, 330));
    let closes: Vec<bool> = futures_util::future::join_all(refreshes)
        .await
        .into_iter()
        .map(|r| r.expect("store").expect("known").closed_now)
        .collect();
    assert_eq!(closes.iter().filter(|c| **c).count(), 1, "closed once: {closes:?}");
    // Past the deadline, an unfinished stream is closed late, keeping what it showed.
    store.aibot_open(open("s2")).await.expect("open");
    replica.aibot_update("s2".into(), update("慢", false, false), rest("s2"), None).await.expect("store");
    let late = store.aibot_refresh("s2".into(), None, at + 331, 330).await.expect("store").expect("known");
    assert!(late.closed_now && late.late_now);
    assert_eq!(late.row.shown.as_deref(), Some("慢"));
    let takes = owners.iter().map(|owner| owner.aibot_take_response("s2".into()));
    let taken: Vec<bool> = futures_util::future::join_all(takes).await.into_iter().map(|t| t.expect("store")).collect();
    assert_eq!(taken.iter().filter(|t| **t).count(), 1, "one use: {taken:?}");
    assert_eq!(store.aibot_incidents(ChannelName::aibot(), at - 1).await.expect("store"), (1, 0));
    store.prune_replies(at + 1).await.expect("prune");
    assert!(store.aibot_stream("s1".into()).await.expect("store").is_none(), "pruned with the replies");
}

/// The long connection's streams (SPEC §13): the first delivery's `req_id`
/// kept (a retry of the open changes nothing), and the streams with one that
/// the holder is not done with found by any owner until it is.
async fn a_long_connection_stream_keeps_its_first_req_id_and_is_found_until_its_holder_is_done(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let open = |id: &str, channel: ChannelName, req_id: Option<&str>| StreamOpen {
        req_id: req_id.map(str::to_owned),
        ..stream_open(id, channel)
    };
    store.aibot_open(open("w1", ChannelName::aibot(), Some("REQ-1"))).await.expect("open");
    store.aibot_open(open("w1", ChannelName::aibot(), Some("REQ-2"))).await.expect("a redelivery");
    store.aibot_open(open("c1", ChannelName::aibot(), None)).await.expect("a callback-mode stream");
    let bot2 = ChannelName::parse("bot2").expect("a name");
    store.aibot_open(open("w2", bot2.clone(), Some("REQ-3"))).await.expect("another bot's");
    let replica = subject.replica().await;
    let found = replica.aibot_pushing(ChannelName::aibot()).await.expect("store");
    let found: Vec<(&str, Option<&str>)> =
        found.iter().map(|row| (row.opened.stream_id.as_str(), row.opened.req_id.as_deref())).collect();
    assert_eq!(found, [("w1", Some("REQ-1"))], "the first delivery's req_id, this bot's only");
    replica.aibot_pushed("w1".into()).await.expect("done");
    assert!(store.aibot_pushing(ChannelName::aibot()).await.expect("store").is_empty());
    assert_eq!(store.aibot_pushing(bot2).await.expect("store").len(), 1);
}

/// The send API's `idempotency_key` on an AI bot's answer (SPEC §10, §15):
/// replicas racing the same keyed append take it once; the key with another
/// body, on another stream, or for a text send is a conflict; a text send's key
/// is a conflict for an update.
async fn an_ai_bot_answers_update_is_taken_once_per_idempotency_key(engine: Engine) {
    let Some(subject) = Subject::open(engine, Duration::from_secs(60)).await else { return };
    let store = &subject.store;
    let open = |id: &str| stream_open(id, ChannelName::aibot());
    store.aibot_open(open("s1")).await.expect("open");
    store.aibot_open(open("s2")).await.expect("open");
    let rest = |id: &str| NewAction { key: format!("rest:{id}"), kind: "aibot_rest".into(), payload: "{}".into() };
    let append = |text: &str| Update { text: text.into(), append: true, finish: false };
    let key = |fingerprint: &str| AnswerKey {
        key: "k-1".into(),
        fingerprint: fingerprint.repeat(64),
        id: "stream_s1".into(),
    };
    let owners = subject.owners(4).await;
    let racing = owners.iter().map(|owner| owner.aibot_update("s1".into(), append("一"), rest("s1"), Some(key("a"))));
    for result in futures_util::future::join_all(racing).await {
        assert_eq!(result.expect("store").expect("known").expect("taken").content, "一", "appended once");
    }
    let again = store.aibot_update("s1".into(), append("一"), rest("s1"), Some(key("a"))).await.expect("store");
    assert_eq!(again.expect("known").expect("the first answer").content, "一");
    let reused = store.aibot_update("s1".into(), append("二"), rest("s1"), Some(key("b"))).await.expect("store");
    assert_eq!(reused.expect("known"), Err(UpdateError::KeyReused { id: "stream_s1".into() }));
    let elsewhere = store.aibot_update("s2".into(), append("一"), rest("s2"), Some(key("c"))).await.expect("store");
    assert_eq!(elsewhere.expect("known"), Err(UpdateError::KeyReused { id: "stream_s1".into() }));
    assert_eq!(
        store.queue_send(new_send("msg_1", Some("k-1")), action("send:msg_1"), 1_000).await.expect("answered"),
        Queued::Conflict("stream_s1".into()),
        "one namespace of keys"
    );
    assert_eq!(
        store.queue_send(new_send("msg_2", Some("k-2")), action("send:msg_2"), 1_000).await.expect("answered"),
        Queued::New("msg_2".into())
    );
    let of_a_send = AnswerKey { key: "k-2".into(), ..key("a") };
    let reused = store.aibot_update("s2".into(), append("一"), rest("s2"), Some(of_a_send)).await.expect("store");
    assert_eq!(reused.expect("known"), Err(UpdateError::KeyReused { id: "msg_2".into() }));
    let untouched = store.aibot_stream("s2".into()).await.expect("store").expect("known");
    assert_eq!(untouched.content, "", "a conflict changes nothing");
    // A text send and an update racing with one key on two replicas: one takes it.
    let (sender, updater) = (&owners[0], &owners[1]);
    for round in 0..20 {
        let race = format!("race-{round}");
        let id = format!("msg_r{round}");
        let send = sender.queue_send(new_send(&id, Some(&race)), action(&format!("send:{id}")), 1_000);
        let answer_key = AnswerKey { key: race.clone(), fingerprint: "d".repeat(64), id: "stream_s2".into() };
        let update = updater.aibot_update("s2".into(), append("三"), rest("s2"), Some(answer_key));
        let (sent, updated) = tokio::join!(send, update);
        let sent = matches!(sent.expect("answered"), Queued::New(_));
        let updated = updated.expect("store").expect("known").is_ok();
        assert!(sent != updated, "{race}: exactly one takes the key (the send {sent}, the update {updated})");
    }
}

/// Each scenario as a test per engine.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Postgres).await;
                }
            )*
        }
    };
}

conformance!(
    a_long_connection_stream_keeps_its_first_req_id_and_is_found_until_its_holder_is_done,
    duplicate_deliveries_racing_are_journaled_once,
    distinct_deliveries_are_never_merged,
    claimed_entries_complete_in_arrival_order,
    an_entry_claimed_and_never_completed_is_claimed_again,
    each_due_action_is_claimed_by_exactly_one_claimer,
    an_expired_claim_is_taken_over_and_the_stale_finish_is_refused,
    a_failed_action_is_due_again_after_its_back_off,
    a_stale_kf_claim_stores_no_page,
    a_kf_page_whose_cursor_moved_is_refused,
    each_kf_channel_keeps_its_own_cursor_of_an_account,
    a_live_lease_has_one_holder_until_released,
    a_rejected_token_is_dropped_only_if_still_current,
    bookkeeping_round_trips,
    pruning_keeps_unhandled_entries_and_owed_actions,
    a_send_is_queued_once_per_idempotency_key_and_moves_through_its_statuses,
    racing_replicas_never_send_more_than_the_kf_rules_allow,
    racing_replicas_never_queue_more_sends_than_the_cap_of_their_channel,
    the_oldest_owed_action_gives_the_backlog_its_age_and_a_deferred_one_stays_owed,
    an_ai_bot_stream_is_closed_once_by_racing_refreshes_and_its_response_url_taken_once,
    an_ai_bot_answers_update_is_taken_once_per_idempotency_key,
);
