//! Issue 19, finding 1 and 8: a PostgreSQL that stalls (SIGSTOP of the server and
//! all its processes: a storage hiccup, a failover, a long checkpoint) under
//! callback load. Every callback is answered within WeCom's 5 s — 503 or 200 —
//! for the whole stall; nothing answered 200 is lost or handled twice; the
//! outage is logged in a few lines, not one per callback. The real binary on a
//! real, throwaway cluster; every wait is a poll with a deadline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;
use crate::postgres::Cluster;

/// WeCom's patience.
const WECOM_WAITS: Duration = Duration::from_secs(5);
const STALL: Duration = Duration::from_secs(20);
const SENDERS: u64 = 8;
const SEND_TOKEN: &str = "send-token-for-the-stall-test";

/// What one callback got: its status (`None`: no answer at all) and how long it took.
#[derive(Debug, Clone, Copy)]
struct Answer {
    msg_id: u64,
    status: Option<u16>,
    took: Duration,
}

async fn post(client: &reqwest::Client, port: u16, msg_id: u64) -> Answer {
    let signed = sign_post(TOKEN, AES_KEY, CORP_ID, &text_message("during a stall", msg_id));
    let url = format!("https://127.0.0.1:{port}/api/v1/wecom/callback?{}", signed.query);
    let began = Instant::now();
    let status = client.post(url).body(signed.body).send().await.ok().map(|r| r.status().as_u16());
    Answer { msg_id, status, took: began.elapsed() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgresql_gets_a_quick_503_and_loses_nothing() {
    wechat_api::testing::tls::install_crypto_provider();
    let Some(cluster) = Cluster::start() else { return };
    cluster.create_database("stall").await;
    let receiver = ForwardReceiver::start().await;
    let wecom = FakeWeCom::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let url = cluster.url("stall");
    let env = test_env(
        dir.path(),
        &[
            ("DATABASE_URL", url.as_str()),
            ("DATABASE_POOL_SIZE", "4"),
            ("FORWARD_URL", receiver.url.as_str()),
            ("FORWARD_SECRET", receiver.secret.as_str()),
            ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
            ("WECOM_SECRET", "app-secret"),
            ("WECOM_AGENT_ID", "1000002"),
            ("SEND_TOKEN", SEND_TOKEN),
        ],
    );
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(&env);
    let mut service = Running::start(command);
    let port = service.port();
    // Longer than WeCom waits, so a slow answer is seen as slow, not as an error.
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(30));

    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let (stop, next) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(1)));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (client, answers, stop, next) =
                (client.clone(), Arc::clone(&answers), Arc::clone(&stop), Arc::clone(&next));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = post(&client, port, next.fetch_add(1, Ordering::Relaxed)).await;
                    answers.lock().expect("lock").push(answer);
                }
            })
        })
        .collect();
    let answered = |answers: &Mutex<Vec<Answer>>| answers.lock().expect("lock").len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered(&answers) < 50 {
        assert!(Instant::now() < deadline, "no load before the stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.freeze();
    let stalled_at = answered(&answers);
    let frozen = Instant::now();
    // The send API too: a bot asking to send while the database stalls.
    let mut sends = Vec::new();
    while frozen.elapsed() < STALL {
        let began = Instant::now();
        let answer = client
            .post(format!("https://127.0.0.1:{port}/api/v1/messages"))
            .bearer_auth(SEND_TOKEN)
            .json(&serde_json::json!({"channel": "app", "to": "zhangsan", "text": "hi", "idempotency_key": format!("k{}", sends.len())}))
            .send()
            .await
            .expect("the send API answers");
        sends.push((answer.status().as_u16(), began.elapsed()));
    }
    cluster.thaw();
    let thawed_at = answered(&answers);
    let after = Instant::now();
    while answered(&answers) < thawed_at + 50 {
        assert!(after.elapsed() < Duration::from_secs(30), "no recovery after the stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }

    let answers = answers.lock().expect("lock").clone();
    let late: Vec<&Answer> = answers.iter().filter(|a| a.status.is_none() || a.took >= WECOM_WAITS).collect();
    assert!(
        late.is_empty(),
        "{} of {} callbacks not answered within 5 s: {:?}",
        late.len(),
        answers.len(),
        &late[..late.len().min(5)]
    );
    let during = &answers[stalled_at..thawed_at];
    let refused = during.iter().filter(|a| a.status == Some(503)).count();
    assert!(refused > 0, "the stall was not felt: {} answers during it, none 503", during.len());
    assert!(answers.iter().all(|a| matches!(a.status, Some(200 | 503))), "only 200 or 503");
    assert!(
        sends.iter().all(|(status, took)| *status == 503 && *took < WECOM_WAITS),
        "send API during the stall: {sends:?}"
    );

    // As WeCom does: every unanswered message again until it is taken.
    let mut acknowledged: HashSet<u64> = answers.iter().filter(|a| a.status == Some(200)).map(|a| a.msg_id).collect();
    let retries: Vec<u64> = answers.iter().filter(|a| a.status != Some(200)).map(|a| a.msg_id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for msg_id in retries {
        loop {
            let answer = post(&client, port, msg_id).await;
            assert!(answer.took < WECOM_WAITS, "a retry took {:?}", answer.took);
            if answer.status == Some(200) {
                acknowledged.insert(msg_id);
                break;
            }
            assert!(Instant::now() < deadline, "retries of {msg_id} never taken: {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    let forwarded = loop {
        let mut forwarded: HashMap<u64, usize> = HashMap::new();
        for delivery in receiver.delivered() {
            let msg_id =
                delivery.message_id.rsplit(':').next().and_then(|id| id.parse().ok()).expect("app:msg:<MsgId>");
            *forwarded.entry(msg_id).or_default() += 1;
        }
        let missing = acknowledged.iter().filter(|id| !forwarded.contains_key(id)).count();
        if missing == 0 {
            break forwarded;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged callbacks never forwarded",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let twice: Vec<(&u64, &usize)> = forwarded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "forwarded more than once: {twice:?}");
    assert_eq!(forwarded.len(), acknowledged.len(), "forwarded what was never acknowledged");

    service.terminate();
    let lines = service.rest();
    let failures = lines.iter().filter(|l| l.contains("cannot journal a callback")).count();
    eprintln!(
        "{} callbacks, {refused} answered 503 during the {STALL:?} stall, slowest {:?}; {failures} log lines about it",
        answers.len(),
        answers.iter().map(|a| a.took).max().unwrap_or_default()
    );
    // At most ten a minute per kind of failure; the stall fits in one or two minutes.
    assert!(failures <= 20, "{failures} lines for {refused} refused callbacks:\n{}", lines.join("\n"));
    let errors = lines.iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).count();
    assert!(errors <= 80, "{errors} error and warning lines for one outage:\n{}", lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_forward_url_is_logged_in_a_few_lines_not_one_per_attempt() {
    wechat_api::testing::tls::install_crypto_provider();
    let receiver = ForwardReceiver::start().await;
    receiver.fail_first(usize::MAX);
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, cert_pem) = write_certificate(dir.path(), 30);
    let env =
        test_env(dir.path(), &[("FORWARD_URL", receiver.url.as_str()), ("FORWARD_SECRET", receiver.secret.as_str())]);
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(&env);
    let mut service = Running::start(command);
    let port = service.port();
    let client = client_trusting(cert_pem.as_bytes(), Duration::from_secs(10));
    for msg_id in 0..60 {
        assert_eq!(post(&client, port, msg_id).await.status, Some(200));
    }
    // Every message tried at least twice: 120 failed attempts or more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.attempts() < 120 {
        assert!(Instant::now() < deadline, "{} attempts", receiver.attempts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.terminate();
    let lines = service.rest();
    let retries = lines.iter().filter(|l| l.contains("retry_in_secs")).count();
    assert!(
        (1..=20).contains(&retries),
        "{retries} lines for {} failed attempts:\n{}",
        receiver.attempts(),
        lines.join("\n")
    );
}
