//! `wechat-api sign`: ready-to-run curl commands for a signed URL verification and
//! a signed, encrypted text callback.

use std::fmt::Write as _;

use rand::distr::{Alphanumeric, SampleString};

use super::{serve, CommandError};
use crate::config::{self, Config, Sources};
use crate::crypto;

/// The default callback URL of the local listener.
pub fn local_url(config: &Config, port: u16) -> String {
    let scheme = if config.listen.tls_enabled { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}/api/v1/wecom/callback")
}

/// Whether `url` points at this machine, where `-k` (self-signed) is reasonable.
fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).is_some_and(|host| {
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "[::1]"
    })
}

/// XML text inside CDATA; a literal `]]>` is split across two sections.
fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// The commands, with comments saying what each should print.
pub fn curl_commands(config: &Config, url: &str, text: &str) -> String {
    let keys = &config.app_keys;
    let corp = config.corp_id.as_str();
    let insecure = if is_loopback(url) { "-k " } else { "" };
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut out = String::new();

    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = rand::random::<u32>().to_string();
    let echo = Alphanumeric.sample_string(&mut rand::rng(), 19);
    let echostr = crypto::encrypt(&keys.aes_key, echo.as_bytes(), corp.as_bytes());
    let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &echostr);
    let query = serde_urlencoded::to_string([
        ("msg_signature", signature.as_str()),
        ("timestamp", &timestamp),
        ("nonce", &nonce),
        ("echostr", &echostr),
    ])
    .unwrap_or_default();
    let _ = writeln!(out, "# 1. URL verification (GET): prints {echo}");
    let _ = writeln!(out, "curl -fsS {insecure}'{url}{separator}{query}'; echo");

    let nonce = rand::random::<u32>().to_string();
    let msg_id = rand::random::<u64>() >> 1;
    let agent = config.agent_id.unwrap_or(1_000_002);
    let xml = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{timestamp}</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId><AgentID>{agent}</AgentID></xml>",
        cdata(corp),
        cdata("wechat-api-sign"),
        cdata(text)
    );
    let encrypted = crypto::encrypt(&keys.aes_key, xml.as_bytes(), corp.as_bytes());
    let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &encrypted);
    let query = serde_urlencoded::to_string([
        ("msg_signature", signature.as_str()),
        ("timestamp", &timestamp),
        ("nonce", &nonce),
    ])
    .unwrap_or_default();
    let envelope = format!(
        "<xml><ToUserName>{}</ToUserName><AgentID>{agent}</AgentID><Encrypt>{}</Encrypt></xml>",
        cdata(corp),
        cdata(&encrypted)
    );
    let _ = writeln!(out, "# 2. Encrypted text callback (POST): answers HTTP 200; the service logs the message");
    let _ = writeln!(
        out,
        "curl -fsS {insecure}-o /dev/null -w '%{{http_code}}\\n' -H 'Content-Type: text/xml' --data-binary '{envelope}' '{url}{separator}{query}'"
    );
    out
}

pub fn run(mut sources: Sources, url: Option<String>, text: &str, demo: bool) -> Result<(), CommandError> {
    if demo {
        sources.file = Some(serve::demo_config_file(&sources).map_err(anyhow::Error::from)?);
    }
    let (config, _) = config::load(&sources)?;
    let url = url.unwrap_or_else(|| local_url(&config, config.listen.https_port));
    print!("{}", curl_commands(&config, &url, text));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_get_insecure_and_others_do_not() {
        assert!(is_loopback("https://127.0.0.1:8092/x"));
        assert!(is_loopback("https://localhost/x"));
        assert!(is_loopback("https://[::1]:8092/x"));
        assert!(!is_loopback("https://wx.example.com/x"));
    }

    #[test]
    fn cdata_survives_its_terminator() {
        assert_eq!(cdata("a]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    }
}
