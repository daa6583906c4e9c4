//! Crash evidence: the real binary is killed with SIGKILL at random moments under
//! load, round after round. Every acknowledged callback must be forwarded, none
//! handled twice, and the store must open cleanly every time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::fakes::ForwardReceiver;
use crate::helpers::*;

const ROUNDS: usize = 20;
const SENDERS: u64 = 8;

/// What the senders learned: acknowledged message ids, and those sent without an
/// answer (WeCom would retry those; so do we, in the next round).
#[derive(Default)]
struct Ledger {
    acknowledged: HashSet<u64>,
    unanswered: HashSet<u64>,
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_handles_nothing_twice() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        wechat_api::testing::tls::install_crypto_provider();
        let receiver = ForwardReceiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let (_, _, cert_pem) = write_certificate(dir.path(), 30);
        let env = test_env(dir.path(), &[("FORWARD_URL", &receiver.url), ("FORWARD_SECRET", &receiver.secret)]);
        let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(5));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut rng = rand::rng();

        for round in 0..ROUNDS {
            let mut service = serve(dir.path(), &env);
            let lines = service.read_until(|l| l.contains("wechat-api listening"));
            assert!(
                !lines.iter().any(|l| l.contains("ERROR") || l.contains("panicked")),
                "round {round}: the store did not open cleanly:\n{}",
                lines.join("\n")
            );
            let port = listening_port(lines.last().expect("a line"));
            let retries: Vec<u64> = ledger.lock().expect("lock").unanswered.iter().copied().collect();
            let senders: Vec<_> = (0..SENDERS)
                .map(|worker| {
                    let first = (round as u64 * SENDERS + worker) * 1_000_000;
                    let mine: Vec<u64> = retries.iter().copied().filter(|id| id % SENDERS == worker).collect();
                    let ids = mine.into_iter().chain((0..).map(move |i| first + i));
                    tokio::spawn(send_until_refused(client.clone(), port, ids, Arc::clone(&ledger)))
                })
                .collect();
            // Let the load run for a random moment, then pull the plug.
            let until = Instant::now() + Duration::from_millis(rng.random_range(20..400));
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            service.kill_9();
            for sender in senders {
                sender.await.expect("sender");
            }
        }

        // A last start drains whatever the crashes left in the journal and the outbox.
        let (acknowledged, retries) = {
            let ledger = ledger.lock().expect("lock");
            (ledger.acknowledged.clone(), ledger.unanswered.clone())
        };
        assert!(acknowledged.len() > ROUNDS, "only {} callbacks were acknowledged in all", acknowledged.len());
        let mut service = serve(dir.path(), &env);
        let port = service.port();
        send_until_refused(client.clone(), port, retries.into_iter(), Arc::clone(&ledger)).await;
        let acknowledged = {
            let ledger = ledger.lock().expect("lock");
            assert!(ledger.unanswered.is_empty(), "the last start refused a retry");
            ledger.acknowledged.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let deliveries = loop {
            let deliveries = receiver.delivered();
            let forwarded: HashSet<u64> = deliveries.iter().map(|d| msg_id_of(&d.message_id)).collect();
            let missing = acknowledged.difference(&forwarded).count();
            if missing == 0 {
                break deliveries;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} acknowledged callbacks never forwarded",
                acknowledged.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // The receiver may see a message twice (a crash between its 200 and the
        // outbox commit) but only as the same delivery: same X-Message-Id, same record.
        let mut by_message: HashMap<String, Vec<String>> = HashMap::new();
        for delivery in &deliveries {
            assert!(delivery.signature_ok, "a forward with a bad signature");
            let record = delivery.record.to_string();
            by_message.entry(delivery.message_id.clone()).or_default().push(record);
        }
        for (message_id, records) in &by_message {
            assert!(records.windows(2).all(|pair| pair[0] == pair[1]), "{message_id} was handled twice differently");
        }
        assert!(service.terminate().success());

        // One journal entry and one forward action per message, and a sound file.
        let db = rusqlite::Connection::open(dir.path().join("data").join(wechat_api::testing::store::DATABASE_FILE))
            .expect("db");
        let integrity: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity");
        assert_eq!(integrity, "ok");
        let journaled: i64 = db.query_row("SELECT COUNT(*) FROM journal", [], |row| row.get(0)).expect("count");
        let forwards: i64 =
            db.query_row("SELECT COUNT(*) FROM outbox WHERE kind = 'forward'", [], |row| row.get(0)).expect("count");
        let pending: i64 =
            db.query_row("SELECT COUNT(*) FROM outbox WHERE done_at IS NULL", [], |row| row.get(0)).expect("count");
        assert_eq!(journaled, forwards, "every journaled message was handled exactly once");
        assert_eq!(pending, 0);
        assert_eq!(by_message.len() as i64, journaled, "every journaled message reached the receiver once");
        assert_eq!(journaled as usize, acknowledged.len(), "every message sent was acknowledged at last, once");
        eprintln!(
            "{ROUNDS} kill -9 rounds: {} acknowledged, {journaled} journaled, {} deliveries ({} repeated)",
            acknowledged.len(),
            deliveries.len(),
            deliveries.len() - by_message.len()
        );
    });
}

/// Sends the messages `ids` until the service stops answering; records the answers.
async fn send_until_refused(
    client: reqwest::Client,
    port: u16,
    ids: impl Iterator<Item = u64>,
    ledger: Arc<Mutex<Ledger>>,
) {
    for msg_id in ids {
        let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("crash", msg_id));
        let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
        let answered = client.post(url).body(signed.body).send().await.is_ok_and(|r| r.status().is_success());
        let mut ledger = ledger.lock().expect("lock");
        if answered {
            ledger.acknowledged.insert(msg_id);
            ledger.unanswered.remove(&msg_id);
        } else {
            ledger.unanswered.insert(msg_id);
            return;
        }
    }
}

fn serve(dir: &std::path::Path, env: &HashMap<String, String>) -> Running {
    let mut command = wechat_api(dir);
    command.arg("serve").envs(env);
    Running::start(command)
}

fn msg_id_of(message_id: &str) -> u64 {
    message_id.rsplit(':').next().and_then(|id| id.parse().ok()).expect("app:msg:<MsgId>")
}
