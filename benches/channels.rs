//! What channels cost (SPEC §12): loading and validating 100 `[channels.<name>]`
//! tables (half with `secret_file`) into the registry, finding a channel by the
//! name in its path, and opening a callback on its own path against opening it
//! on the shared path, where every channel's Token is tried.
//!
//! `cargo bench --bench channels`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wechat_api::testing::callback::{CallbackCredentials, CallbackQuery};
use wechat_api::testing::config::{self, Sources};
use wechat_api::testing::crypto::{self, AesKey};

const CHANNELS: usize = 100;
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// Channel `i`: its own corp, Token and agent id; every other one reads its Secret from a file.
fn table(dir: &Path, i: usize) -> String {
    let secret = if i.is_multiple_of(2) {
        let file = dir.join(format!("secret-{i}"));
        std::fs::write(&file, format!("secret-of-channel-{i}\n")).expect("write a secret");
        format!("secret_file = {:?}", file.display().to_string())
    } else {
        format!("secret = \"secret-of-channel-{i}\"")
    };
    format!(
        "[channels.c{i}]\nkind = \"app\"\ncorp_id = \"wwcorp{i}\"\nagent_id = {}\n{secret}\ntoken = \"token{i}\"\nencoding_aes_key = \"{KEY}\"\n",
        1_000_000 + i
    )
}

fn bench_channels(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text: String = (0..CHANNELS).map(|i| table(dir.path(), i)).collect();
    let file = dir.path().join("channels.toml");
    std::fs::write(&file, text).expect("write the config");
    let sources = Sources { file: Some(file), ..Sources::default() };
    let load = || {
        let (config, _) = config::load(black_box(&sources)).expect("valid");
        CallbackCredentials::from_config(&config)
    };
    let credentials = load();

    let last = CHANNELS - 1;
    let xml = format!(
        "<xml><ToUserName><![CDATA[wwcorp{last}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content>\
         <MsgId>7364521837465123456</MsgId><AgentID>{}</AgentID></xml>",
        1_000_000 + last
    );
    let key = AesKey::parse(KEY).expect("key");
    let encrypted = crypto::encrypt(&key, xml.as_bytes(), format!("wwcorp{last}").as_bytes());
    let (timestamp, nonce) = ("1409659813", "1372623149");
    let signature = crypto::sign(&format!("token{last}"), timestamp, nonce, &encrypted).to_string();
    let body = format!("<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>");
    let query =
        CallbackQuery::parse(&format!("msg_signature={signature}&timestamp={timestamp}&nonce={nonce}")).expect("query");
    let name = format!("c{last}");

    let mut group = c.benchmark_group("channels");
    group.bench_function("load and validate 100 channels", |b| b.iter(load));
    group.throughput(Throughput::Elements(1));
    group.bench_function("find a channel by name (1 of 100)", |b| {
        b.iter(|| credentials.channel(black_box(&name)).expect("configured"))
    });
    group.bench_function("open on its own path (1 of 100)", |b| {
        b.iter(|| {
            let channel = credentials.channel(black_box(&name)).expect("configured");
            credentials.open_on(channel, &query, black_box(body.as_bytes()), 1_409_659_813).expect("opens")
        })
    });
    group.bench_function("open on the shared path (100 Tokens tried)", |b| {
        b.iter(|| credentials.open(&query, black_box(body.as_bytes()), 1_409_659_813).expect("opens"))
    });
    group.finish();
}

criterion_group!(benches, bench_channels);
criterion_main!(benches);
