//! The AI bot's refresh (SPEC §13): WeCom asks about once a second for every
//! stream in flight, so a refresh must be cheap — a read of one row and a
//! counter. This measures the whole answer without HTTP: the callback verified
//! and decrypted, the stream's row refreshed in the store (SQLite, as the
//! appliance runs it), the snapshot cut and encrypted, with 64 refreshes in
//! flight at once on one core (a current-thread runtime), and prints the
//! latency percentiles. The bar: p99 ≤ 5 ms.
//!
//! `cargo bench --bench aibot` (`REFRESHES=…` per task, default 200;
//! `BENCH_DATABASE_URL=postgres://…` measures on PostgreSQL instead, an empty database)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wechat_api::testing::callback::{CallbackCredentials, CallbackQuery};
use wechat_api::testing::config::{self, Sources};
use wechat_api::testing::crypto::{self, AesKey};
use wechat_api::testing::store::{NewAction, Store, StreamOpen};
use wechat_api::testing::streams::{shown, stream_id, Update};
use wechat_api::testing::wecom::{encrypted_answer, stream_answer, AibotKind};

const TOKEN: &str = "BenchToken";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CONCURRENT: usize = 64;
const STREAMS: usize = 1_000;

fn main() {
    let refreshes: usize = std::env::var("REFRESHES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let env: HashMap<String, String> =
        [("AIBOT_TOKEN", TOKEN), ("AIBOT_ENCODING_AES_KEY", KEY), ("DATA_DIR", &dir.path().display().to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let (config, _) = config::load(&Sources { env, ..Sources::default() }).expect("valid configuration");
    let credentials = CallbackCredentials::from_config(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let (store, engine) = match std::env::var("BENCH_DATABASE_URL") {
            Ok(url) => (Store::connect(&url, 8, Duration::from_secs(60)).await.expect("PostgreSQL"), "PostgreSQL"),
            Err(_) => (Store::open(dir.path()).expect("store"), "SQLite"),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Streams with a 2 KB answer so far, as an LLM's half-written answer.
        let answer = "这是一个正在生成的回答。".repeat(60);
        let bot = wechat_api::testing::channels::ChannelName::aibot();
        for i in 0..STREAMS {
            let msgid = format!("m{i}");
            store
                .aibot_open(StreamOpen {
                    stream_id: stream_id(&bot, &msgid),
                    record_id: format!("aibot:msg:{msgid}"),
                    channel: bot.clone(),
                    userid: "zhangsan".into(),
                    chatid: None,
                    response_url: None,
                    created_at: now,
                    req_id: None,
                })
                .await
                .expect("open");
            let update = Update { text: answer.clone(), append: false, finish: false };
            let rest = NewAction { key: format!("rest:{msgid}"), kind: "aibot_rest".into(), payload: "{}".into() };
            store.aibot_update(stream_id(&bot, &msgid), update, rest, None).await.expect("update").expect("known").expect("taken");
        }
        let key = AesKey::parse(KEY).expect("key");
        // The refresh callbacks, signed and encrypted as WeCom sends them.
        let requests: Vec<(String, String)> = (0..STREAMS)
            .map(|i| {
                let id = stream_id(&bot, &format!("m{i}"));
                let json = format!(
                    r#"{{"msgid":"r{i}","aibotid":"BOT","chattype":"single","from":{{"userid":"zhangsan"}},"msgtype":"stream","stream":{{"id":"{id}"}}}}"#
                );
                let encrypted = crypto::encrypt(&key, json.as_bytes(), b"");
                let timestamp = now.to_string();
                let signature = crypto::sign(TOKEN, &timestamp, "n1", &encrypted);
                (format!("msg_signature={signature}&timestamp={timestamp}&nonce=n1"), format!(r#"{{"encrypt":"{encrypted}"}}"#))
            })
            .collect();
        let channel = credentials.channel("aibot").expect("the aibot channel").clone();
        let started = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT)
            .map(|task| {
                let (store, credentials, channel, requests) =
                    (store.clone(), credentials.clone(), channel.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(refreshes);
                    for n in 0..refreshes {
                        let (query, body) = &requests[(task * refreshes + n) % STREAMS];
                        let t0 = Instant::now();
                        let query = CallbackQuery::parse(query).expect("query");
                        let opened = credentials.open_aibot(&channel, &query, body.as_bytes(), now).expect("opens");
                        let AibotKind::Refresh { id } = &opened.message.kind else { panic!("a refresh") };
                        let row = store
                            .aibot_refresh(id.clone(), opened.message.userid.clone(), now, 330)
                            .await
                            .expect("refresh")
                            .expect("a known stream");
                        let view = shown(&row.row, "");
                        let answer = encrypted_answer(TOKEN, &key_of(), &stream_answer(id, &view.content, view.finish), "n1", now);
                        std::hint::black_box(answer);
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        let elapsed = started.elapsed();
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "aibot refresh, {CONCURRENT} in flight on one core ({engine}): {} refreshes in {:.2} s = {:.0}/s; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            all.len(),
            elapsed.as_secs_f64(),
            all.len() as f64 / elapsed.as_secs_f64(),
            ms(at(0.50)),
            ms(at(0.90)),
            ms(at(0.99)),
            ms(*all.last().expect("samples"))
        );
    });
}

fn key_of() -> AesKey {
    AesKey::parse(KEY).expect("key")
}
