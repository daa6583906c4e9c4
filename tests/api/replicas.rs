//! Replicas (SPEC §9), the real binary as three `serve` processes on one real
//! PostgreSQL: killed with SIGKILL and restarted under load, with unanswered
//! callbacks retried on another replica as WeCom's retries may land; one message
//! sent to every replica at once; and HAProxy in `mode tcp` in front of them,
//! losing nothing when a replica dies behind it.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use wechat_api::testing::store::Store;

use crate::fakes::{Delivery, FakeWeCom, ForwardReceiver};
use crate::helpers::*;
use crate::postgres::fresh_database;

const REPLICAS: usize = 3;
const ROUNDS: usize = 6;
const SENDERS: u64 = 6;
/// The shortest lease the configuration allows: how long a dead replica's claims hold.
const LEASE_SECS: &str = "35";

/// Three replicas sharing one database, one certificate and one uploads directory.
struct Cluster {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    replicas: Vec<Running>,
    /// The port of each replica; `None` while it is down.
    ports: Arc<Mutex<Vec<Option<u16>>>>,
    client: reqwest::Client,
}

impl Cluster {
    fn start(url: &str, overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let (_, _, cert_pem) = write_certificate(dir.path(), 30);
        let mut pairs = vec![("DATABASE_URL", url), ("LEASE_SECS", LEASE_SECS), ("DATABASE_POOL_SIZE", "4")];
        pairs.extend_from_slice(overrides);
        let env = test_env(dir.path(), &pairs);
        let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(5));
        let mut cluster = Self { dir, env, replicas: Vec::new(), ports: Arc::default(), client };
        for index in 0..REPLICAS {
            let (replica, port) = cluster.launch(index);
            cluster.replicas.push(replica);
            cluster.ports.lock().expect("lock").push(Some(port));
        }
        cluster
    }

    fn launch(&self, index: usize) -> (Running, u16) {
        let mut command = wechat_api(self.dir.path());
        command.arg("serve").envs(&self.env).env("REPLICA_ID", format!("replica-{index}"));
        let replica = Running::start(command);
        let lines = replica.read_until(|l| l.contains("wechat-api listening"));
        assert!(!lines.iter().any(|l| l.contains("panicked")), "replica {index} did not start:\n{}", lines.join("\n"));
        let port = listening_port(lines.last().expect("a line"));
        (replica, port)
    }

    /// SIGKILL replica `index`, then start it again (on a new port).
    fn kill_and_restart(&mut self, index: usize) {
        self.ports.lock().expect("lock")[index] = None;
        self.replicas[index].kill_9();
        let (replica, port) = self.launch(index);
        self.replicas[index] = replica;
        self.ports.lock().expect("lock")[index] = Some(port);
    }
}

/// Acknowledged message ids, and those sent without a 2xx (WeCom retries them).
#[derive(Default)]
struct Ledger {
    acknowledged: HashSet<u64>,
    unanswered: HashSet<u64>,
}

/// Sends `msg_id` to the replica after `after` (round robin over live ones); the
/// replica it went to, and whether it was acknowledged.
async fn send_to_next(
    client: &reqwest::Client,
    ports: &Mutex<Vec<Option<u16>>>,
    after: usize,
    msg_id: u64,
) -> (usize, bool) {
    let live: Vec<(usize, u16)> = {
        let ports = ports.lock().expect("lock");
        (1..=REPLICAS).map(|step| (after + step) % REPLICAS).filter_map(|i| ports[i].map(|p| (i, p))).collect()
    };
    let Some(&(index, port)) = live.first() else { return (after, false) };
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("replicated", msg_id));
    let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
    let acknowledged = client.post(url).body(signed.body).send().await.is_ok_and(|r| r.status().is_success());
    (index, acknowledged)
}

/// A sender: fresh ids until `stop`, each unanswered one retried on another replica.
async fn sender(
    client: reqwest::Client,
    ports: Arc<Mutex<Vec<Option<u16>>>>,
    first: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = first;
    let mut replica = (first as usize) % REPLICAS;
    let mut retry: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) || retry.is_some() {
        let msg_id = retry.take().unwrap_or_else(|| {
            next += 1;
            next
        });
        let (went_to, acknowledged) = send_to_next(&client, &ports, replica, msg_id).await;
        replica = went_to;
        {
            let mut ledger = ledger.lock().expect("lock");
            if acknowledged {
                ledger.acknowledged.insert(msg_id);
                ledger.unanswered.remove(&msg_id);
            } else {
                ledger.unanswered.insert(msg_id);
            }
        }
        if !acknowledged {
            // As WeCom would: the same message again, here to another replica.
            retry = Some(msg_id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn msg_id_of(message_id: &str) -> u64 {
    message_id.rsplit(':').next().and_then(|id| id.parse().ok()).expect("app:msg:<MsgId>")
}

/// Waits until every id in `acknowledged` reached the receiver; the deliveries.
async fn all_forwarded(receiver: &ForwardReceiver, acknowledged: &HashSet<u64>, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let deliveries = receiver.delivered();
        let forwarded: HashSet<u64> = deliveries.iter().map(|d| msg_id_of(&d.message_id)).collect();
        let missing = acknowledged.difference(&forwarded).count();
        if missing == 0 {
            return deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged callbacks never forwarded",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A repeat is only ever the same delivery: same X-Message-Id, same record.
fn repeats_are_identical(deliveries: &[Delivery]) -> usize {
    let mut by_message: HashMap<&str, Vec<String>> = HashMap::new();
    for delivery in deliveries {
        assert!(delivery.signature_ok, "a forward with a bad signature");
        by_message.entry(&delivery.message_id).or_default().push(delivery.record.to_string());
    }
    for (message_id, records) in &by_message {
        assert!(records.windows(2).all(|pair| pair[0] == pair[1]), "{message_id} was handled twice differently");
    }
    by_message.len()
}

/// Polls the shared store until nothing is left unhandled or owed.
async fn drained(store: &Store, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (unhandled, owed) = (store.unhandled().await.expect("count"), store.outbox_backlog().await.expect("count"));
        if unhandled + owed == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "still {unhandled} unhandled and {owed} owed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_under_load_lose_nothing_and_handle_nothing_twice() {
    let Some(url) = fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let receiver = ForwardReceiver::start().await;
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start(&url, &[("FORWARD_URL", &receiver.url), ("FORWARD_SECRET", &receiver.secret)])
    });
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let (client, ports) = (cluster.client.clone(), Arc::clone(&cluster.ports));
            tokio::spawn(sender(client, ports, worker * 1_000_000, Arc::clone(&ledger), Arc::clone(&stop)))
        })
        .collect();
    let mut rng = rand::rng();
    for _ in 0..ROUNDS {
        let until = Instant::now() + Duration::from_millis(rng.random_range(100..600));
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let victim = rng.random_range(0..REPLICAS);
        tokio::task::block_in_place(|| cluster.kill_and_restart(victim));
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }
    let acknowledged = {
        let ledger = ledger.lock().expect("lock");
        assert!(ledger.unanswered.is_empty(), "every retry was answered at last");
        ledger.acknowledged.clone()
    };
    assert!(acknowledged.len() > ROUNDS, "only {} callbacks were acknowledged", acknowledged.len());

    // A dead replica's claims hold for LEASE_SECS, then another replica takes them.
    let deliveries = all_forwarded(&receiver, &acknowledged, Duration::from_secs(150)).await;
    let store = Store::connect(&url, 2, Duration::from_secs(60)).await.expect("store");
    drained(&store, Duration::from_secs(120)).await;
    let distinct = repeats_are_identical(&deliveries);
    assert_eq!(distinct, acknowledged.len(), "every acknowledged message reached the receiver, none merged");
    eprintln!(
        "{ROUNDS} replica kills: {} acknowledged, {} deliveries ({} repeated)",
        acknowledged.len(),
        deliveries.len(),
        deliveries.len() - distinct
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_sent_to_every_replica_at_once_is_handled_once() {
    let Some(url) = fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let wecom = FakeWeCom::start().await;
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(&url, &[("WECOM_API_BASE_URL", &wecom.base_url), ("WECOM_SECRET", "app-secret-of-the-test")])
    });
    let ports: Vec<u16> = cluster.ports.lock().expect("lock").iter().flatten().copied().collect();
    for msg_id in 1..=5u64 {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("帮助", msg_id));
        let sends = ports.iter().map(|port| {
            let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
            cluster.client.post(url).body(signed.body.clone()).send()
        });
        for answer in futures_util::future::join_all(sends).await {
            assert!(answer.expect("answered").status().is_success(), "every replica acknowledges");
        }
    }
    wecom.wait_for_calls("message/send", 5).await;
    let store = Store::connect(&url, 2, Duration::from_secs(60)).await.expect("store");
    drained(&store, Duration::from_secs(30)).await;
    let sends = wecom.calls("message/send");
    assert_eq!(sends.len(), 5, "each 帮助 answered once, though three replicas received it: {sends:?}");
    assert_eq!(wecom.calls("gettoken").len(), 1, "one token for the cluster");
}

/// HAProxy in `mode tcp`, as in `docker-compose.ha.yml`, in front of the replicas.
struct Balancer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(ports: &[u16]) -> Option<Self> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "haproxy is not installed (apt-get install haproxy)");
            eprintln!("haproxy is not installed; skipping the balancer test");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = tempfile::tempdir().ok()?;
        let servers: String =
            ports.iter().enumerate().map(|(i, p)| format!("    server replica-{i} 127.0.0.1:{p}\n")).collect();
        let config = format!(
            "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    retries 2\n    option redispatch\nfrontend callbacks\n    bind 127.0.0.1:{port}\n    \
             default_backend replicas\nbackend replicas\n    balance roundrobin\n    option httpchk GET /api/health/live\n    \
             http-check expect status 200\n    default-server check check-ssl verify none inter 300ms fall 1 rise 1 \
             on-marked-down shutdown-sessions\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).ok()?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { child, port, _dir: dir })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_behind_the_balancer_loses_no_callback() {
    let Some(url) = fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let receiver = ForwardReceiver::start().await;
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start(&url, &[("FORWARD_URL", &receiver.url), ("FORWARD_SECRET", &receiver.secret)])
    });
    let ports: Vec<u16> = cluster.ports.lock().expect("lock").iter().flatten().copied().collect();
    let Some(balancer) = Balancer::start(&ports) else { return };
    let through = |msg_id: u64| {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("balanced", msg_id));
        let url = format!("https://127.0.0.1:{}/api/v1/wecom/callback?{}", balancer.port, signed.query);
        cluster.client.post(url).body(signed.body).send()
    };
    // The balancer is up once a callback goes through it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !through(0).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "the balancer never passed a callback");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut acknowledged = HashSet::from([0u64]);
    for msg_id in 1..=60u64 {
        if msg_id == 20 {
            // Replica 1 dies for good behind the balancer.
            cluster.ports.lock().expect("lock")[1] = None;
            cluster.replicas[1].kill_9();
        }
        // As WeCom does: a callback not answered 2xx is sent again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !through(msg_id).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "callback {msg_id} never acknowledged through the balancer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acknowledged.insert(msg_id);
    }
    let deliveries = all_forwarded(&receiver, &acknowledged, Duration::from_secs(120)).await;
    assert_eq!(repeats_are_identical(&deliveries), acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_then_heals_without_a_restart() {
    let Some(postgres) = tokio::task::block_in_place(crate::postgres::Cluster::start) else { return };
    postgres.create_database("outage").await;
    let url = postgres.url("outage");
    wechat_api::testing::tls::install_crypto_provider();
    let receiver = ForwardReceiver::start().await;
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(
            &url,
            &[("FORWARD_URL", &receiver.url), ("FORWARD_SECRET", &receiver.secret), ("SUPERVISOR_INTERVAL_SECS", "1")],
        )
    });
    let port = cluster.ports.lock().expect("lock")[0].expect("replica 0 is up");
    let post = |msg_id: u64| {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("outage", msg_id));
        let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
        cluster.client.post(url).body(signed.body).send()
    };
    let get = |path: &str| cluster.client.get(format!("https://127.0.0.1:{port}{path}")).send();
    let mut acknowledged = HashSet::new();
    for msg_id in 1..=5u64 {
        assert!(post(msg_id).await.expect("answered").status().is_success());
        acknowledged.insert(msg_id);
    }

    tokio::task::block_in_place(|| postgres.stop());
    // Nothing is acknowledged that is not committed: 503, and WeCom retries.
    for msg_id in 6..=8u64 {
        let status = post(msg_id).await.expect("answered").status();
        assert_eq!(status, 503, "callback {msg_id} during the outage");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: serde_json::Value = get("/api/health").await.expect("health").json().await.expect("JSON");
        if health["checks"]["store:writable"][0]["status"] == "fail" {
            assert_eq!(health["replica"], "replica-0", "health names its replica");
            break;
        }
        assert!(Instant::now() < deadline, "store:writable never failed: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get("/api/health/live").await.expect("live").status(), 200, "a restart would not help: live");

    tokio::task::block_in_place(|| postgres.resume());
    // The same processes recover: WeCom's retries of 6..=8 are acknowledged now.
    for msg_id in 6..=8u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !post(msg_id).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "callback {msg_id} never acknowledged after the outage");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acknowledged.insert(msg_id);
    }
    let deliveries = all_forwarded(&receiver, &acknowledged, Duration::from_secs(90)).await;
    assert_eq!(repeats_are_identical(&deliveries), acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kf_notices_on_every_replica_never_sync_one_account_twice_at_once() {
    const KF_TOKEN: &str = "KfCallbackToken1";
    const KF_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let Some(url) = fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let wecom = FakeWeCom::start().await;
    // Long enough that every replica's sync would overlap the first if nothing
    // kept them apart.
    wecom.delay("kf/sync_msg", Duration::from_millis(1500));
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(
            &url,
            &[
                ("WECOM_API_BASE_URL", &wecom.base_url),
                ("WECOM_KF_SECRET", "kf-secret"),
                ("WECOM_KF_TOKEN", KF_TOKEN),
                ("WECOM_KF_ENCODING_AES_KEY", KF_KEY),
            ],
        )
    });
    let store = Store::connect(&url, 2, Duration::from_secs(60)).await.expect("store");
    let ports: Vec<u16> = cluster.ports.lock().expect("lock").iter().flatten().copied().collect();
    for (i, port) in ports.iter().enumerate() {
        // A distinct notice (its Token differs) to each replica in turn, each
        // handled (a sync requested) while the first sync is still in flight.
        let xml = format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>1700000000</CreateTime>\
             <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
             <Token><![CDATA[NOTICE{i}]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>"
        );
        let signed = sign_post(KF_TOKEN, KF_KEY, CORP_ID, &xml);
        let url = format!("https://127.0.0.1:{port}/wechat/callback?{}", signed.query);
        let answer = cluster.client.post(url).body(signed.body).send().await.expect("answered");
        assert!(answer.status().is_success());
        drained(&store, Duration::from_secs(10)).await;
    }
    // The first sync is answered after 1.5 s; the notices behind it lead to at
    // least one more, by whichever replica holds the account's lease then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wecom.answered("kf/sync_msg") < 2 {
        assert!(Instant::now() < deadline, "the notices led to only {} syncs", wecom.answered("kf/sync_msg"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wecom.most_at_once("kf/sync_msg"), 1, "kf/sync_msg for one account never overlapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_failure_every_replica_sees_is_paged_once_for_the_cluster() {
    let Some(url) = fresh_database().await else { return };
    wechat_api::testing::tls::install_crypto_provider();
    let sink = crate::smtp::SmtpSink::start().await;
    let wecom = FakeWeCom::start().await;
    wecom.refuse_secret("app-secret", Some(serde_json::json!({"errcode": 40001, "errmsg": "invalid credential"})));
    let smtp_port = sink.port.to_string();
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(
            &url,
            &[
                ("WECOM_API_BASE_URL", &wecom.base_url),
                ("WECOM_SECRET", "app-secret"),
                ("SUPERVISOR_INTERVAL_SECS", "1"),
                ("ALERT_GROUP_WAIT_SECS", "0"),
                ("ALERT_EMAIL_ENABLED", "true"),
                ("SMTP_SERVER", "127.0.0.1"),
                ("SMTP_PORT", &smtp_port),
                ("SMTP_TLS", "none"),
                ("ALERT_EMAIL_FROM", "wechat-api@example.test"),
                ("ALERT_EMAIL_TO", "oncall@example.test"),
            ],
        )
    });
    let firing = sink.wait_for("[wechat-api FIRING] token:app", Duration::from_secs(30)).await;
    // Each replica reaches its own FIRING transition and decides: the first to take
    // the transition's lease mails it ("alert sent"), the others leave it.
    for replica in &cluster.replicas {
        tokio::task::block_in_place(|| {
            replica.read_until(|l| {
                l.contains("FIRING is paged by another replica")
                    || (l.contains("alert sent") && l.contains("token:app"))
            })
        });
    }
    let pages: Vec<String> = sink
        .received()
        .iter()
        .map(|m| m.subject())
        .filter(|s| s.contains("FIRING") && s.contains("token:app"))
        .collect();
    assert_eq!(pages.len(), 1, "one FIRING email for the cluster, not one per replica: {pages:?}");
    assert!(firing.subject().contains(" on replica-"), "the email names the replica: {}", firing.subject());
}
