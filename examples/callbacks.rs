//! Prints N distinct, signed and encrypted text callbacks, one per line as
//! `<path?query>\t<body>`, for load generators (see `benches/load.sh`).
//!
//! `cargo run --release --example callbacks -- COUNT [--config FILE]`
//! Credentials come from the same configuration as the service.

use std::io::Write;

use wechat_api::config::{self, Sources};
use wechat_api::crypto;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().ok_or("usage: callbacks COUNT [--config FILE]")?.parse()?;
    let file = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => Some(path.into()),
        _ => None,
    };
    let (config, _) = config::load(&Sources::from_process(file)).map_err(|e| e.to_string())?;
    let corp = config.corp_id.as_str();
    let keys = &config.app_keys;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let run = std::process::id();
    for i in 0..count {
        let msg_id = u64::from(run) * 1_000_000_000 + i;
        let xml = format!(
            "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[load{}]]></FromUserName>\
             <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[load test message {i}]]></Content><MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>",
            i % 100
        );
        let encrypted = crypto::encrypt(&keys.aes_key, xml.as_bytes(), corp.as_bytes());
        let nonce = i.to_string();
        let signature = crypto::sign(keys.token.expose(), "1700000000", &nonce, &encrypted);
        writeln!(
            out,
            "/api/v1/wecom/callback?msg_signature={signature}&timestamp=1700000000&nonce={nonce}\t\
             <xml><ToUserName><![CDATA[{corp}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID>1000002</AgentID></xml>"
        )?;
    }
    Ok(())
}
