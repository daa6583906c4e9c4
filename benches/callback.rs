//! Per-message cost of the callback pipeline, without HTTP: signature, decrypt,
//! envelope and message parsing, and all of it together as `open`.
//!
//! `cargo bench --bench callback`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wechat_api::testing::callback::{CallbackCredentials, CallbackQuery};
use wechat_api::testing::config::{self, Sources};
use wechat_api::testing::crypto::{self, AesKey};
use wechat_api::testing::messages::{AppMessage, CallbackEnvelope};

const CORP_ID: &str = "wx5823bf96d3bd56c7";
const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// A typical member text message, as WeCom sends it.
fn text_xml() -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好，请问发票怎么开？]]></Content>\
         <MsgId>7364521837465123456</MsgId><AgentID>1000002</AgentID></xml>"
    )
}

fn credentials() -> CallbackCredentials {
    let env = [("WECOM_CORP_ID", CORP_ID), ("WECOM_TOKEN", TOKEN), ("WECOM_ENCODING_AES_KEY", KEY)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (config, _) = config::load(&Sources { env, ..Sources::default() }).expect("valid configuration");
    CallbackCredentials::from_config(&config)
}

fn bench_pipeline(c: &mut Criterion) {
    let key = AesKey::parse(KEY).expect("key");
    let xml = text_xml();
    let encrypted = crypto::encrypt(&key, xml.as_bytes(), CORP_ID.as_bytes());
    let (timestamp, nonce) = ("1409659813", "1372623149");
    let signature = crypto::sign(TOKEN, timestamp, nonce, &encrypted).to_string();
    let body = format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID>1000002</AgentID></xml>");
    let query_string = format!("msg_signature={signature}&timestamp={timestamp}&nonce={nonce}");
    let credentials = credentials();

    let mut group = c.benchmark_group("callback");
    group.throughput(Throughput::Elements(1));
    group
        .bench_function("sign", |b| b.iter(|| crypto::sign(black_box(TOKEN), timestamp, nonce, black_box(&encrypted))));
    group.bench_function("decrypt", |b| b.iter(|| crypto::decrypt(&key, black_box(&encrypted)).expect("decrypts")));
    group
        .bench_function("encrypt", |b| b.iter(|| crypto::encrypt(&key, black_box(xml.as_bytes()), CORP_ID.as_bytes())));
    group.bench_function("parse_envelope", |b| b.iter(|| CallbackEnvelope::parse(black_box(&body)).expect("parses")));
    group.bench_function("parse_message", |b| b.iter(|| AppMessage::parse(black_box(&xml)).expect("parses")));
    group.bench_function("open (query + verify + decrypt + parse)", |b| {
        b.iter(|| {
            let query = CallbackQuery::parse(black_box(&query_string)).expect("query");
            credentials.open(&query, black_box(body.as_bytes()), 1_409_659_813).expect("opens")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
