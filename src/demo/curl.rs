//! The signed sample callbacks as ready-to-run curl commands: a URL verification
//! (GET) and an encrypted text message (POST), with the configured Token and key.
//! `wechat-api sign` prints them; the demo banner shows them.
//!
//! Deliberately not here: the protocol itself (`crypto` signs and encrypts).

use std::fmt::Write as _;

use rand::distr::{Alphanumeric, SampleString};

use crate::config::{is_loopback, Config};
use crate::crypto;

/// The callback path the commands target by default: the first of the routes'.
pub(crate) const CALLBACK_PATH: &str = crate::routes::CALLBACK_PATHS[0];

/// The agent id a sample message carries when none is configured.
const SAMPLE_AGENT_ID: i64 = 1_000_002;

/// XML text inside CDATA; a literal `]]>` is split across two sections.
fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// `pairs` as a query string.
fn query(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// The commands for `url`, sending `text`, with comments saying what each should print.
/// The channel is the built-in `app`, else the first configured one.
pub(crate) fn commands(config: &Config, url: &str, text: &str) -> String {
    let Some(channel) = config.channels.builtin_app().or_else(|| config.channels.iter().next()) else {
        return "# no channel is configured: nothing to sign\n".to_owned();
    };
    let keys = &channel.keys;
    let corp = channel.corp_id.as_str();
    let insecure = if is_loopback(url) { "-k " } else { "" };
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut out = String::new();

    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = rand::random::<u32>().to_string();
    let echo = Alphanumeric.sample_string(&mut rand::rng(), 19);
    let echostr = crypto::encrypt(&keys.aes_key, echo.as_bytes(), corp.as_bytes());
    let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &echostr);
    let verification = query(&[
        ("msg_signature", signature.as_str()),
        ("timestamp", &timestamp),
        ("nonce", &nonce),
        ("echostr", &echostr),
    ]);
    let _ = writeln!(out, "# 1. URL verification (GET): prints {echo}");
    let _ = writeln!(out, "curl -fsS {insecure}'{url}{separator}{verification}'; echo");

    let nonce = rand::random::<u32>().to_string();
    let msg_id = rand::random::<u64>() >> 1;
    let agent = channel.agent_id().unwrap_or(SAMPLE_AGENT_ID);
    let xml = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{timestamp}</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId><AgentID>{agent}</AgentID></xml>",
        cdata(corp),
        cdata("wechat-api-sign"),
        cdata(text)
    );
    let encrypted = crypto::encrypt(&keys.aes_key, xml.as_bytes(), corp.as_bytes());
    let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &encrypted);
    let message = query(&[("msg_signature", signature.as_str()), ("timestamp", &timestamp), ("nonce", &nonce)]);
    let envelope = format!(
        "<xml><ToUserName>{}</ToUserName><AgentID>{agent}</AgentID><Encrypt>{}</Encrypt></xml>",
        cdata(corp),
        cdata(&encrypted)
    );
    let _ = writeln!(out, "# 2. Encrypted text callback (POST): answers HTTP 200; the service logs the message");
    let _ = writeln!(
        out,
        "curl -fsS {insecure}-o /dev/null -w '%{{http_code}}\\n' -H 'Content-Type: text/xml' --data-binary '{envelope}' '{url}{separator}{message}'"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_survives_its_terminator() {
        assert_eq!(cdata("a]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    }

    #[test]
    fn query_encodes_like_a_form() {
        assert_eq!(query(&[("a", "1 2"), ("b", "x/y+z=")]), "a=1+2&b=x%2Fy%2Bz%3D");
    }
}
