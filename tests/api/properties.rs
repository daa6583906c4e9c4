//! Property tests of every parser that hostile input reaches: the callback
//! envelope, the crypto, the app XML, the kf JSON and the configuration. What
//! they show: no panic, output never larger than the input, errors that are
//! short and never quote a secret, and targeted attacks (XML bombs, deep nesting,
//! huge attributes and text, invalid UTF-8, truncated base64, length fields and
//! padding that lie) refused or parsed in one pass.
//!
//! The number of cases is `PROPTEST_CASES` (default 256, the CI run). A longer run:
//! `PROPTEST_CASES=100000 cargo test --release --test api properties`.
//! Deliberately not here: anything over HTTP (see `hostile`), and timing: every
//! case must finish, but no test measures how fast.

use std::collections::HashMap;

use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use wechat_api::testing::callback::{CallbackCredentials, CallbackError, CallbackQuery};
use wechat_api::testing::config::{self, Sources};
use wechat_api::testing::crypto::{self, AesKey, DecryptError};
use wechat_api::testing::messages::KfMessage;
use wechat_api::testing::messages::{AppEvent, AppMessage, AppMessageKind, CallbackEnvelope};
use wechat_api::testing::shaping;
use wechat_api::testing::wecom::KfSyncPage;

use crate::helpers::{AES_KEY, CORP_ID, TOKEN};

/// The callback body limit of the service: targeted inputs stay just inside it.
const BODY_LIMIT: usize = wechat_api::testing::routes::MAX_BODY_BYTES;

/// `PROPTEST_CASES`, or 256.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// A parse error is one short line whatever the input: it is logged and sent back.
fn assert_short(error: &impl std::fmt::Display) {
    let text = error.to_string();
    assert!(text.chars().count() <= 256 && !text.contains('\n'), "error too long or multi-line: {text}");
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Text made of XML pieces: tags WeCom uses, markup that attacks parsers, and noise.
fn xml_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<xml>".to_owned()),
        Just("</xml>".to_owned()),
        Just("<Encrypt>".to_owned()),
        Just("</Encrypt>".to_owned()),
        Just("<ToUserName>".to_owned()),
        Just("</ToUserName>".to_owned()),
        Just("<MsgType>text</MsgType>".to_owned()),
        Just("<MsgType><![CDATA[event]]></MsgType>".to_owned()),
        Just("<Event>kf_msg_or_event</Event>".to_owned()),
        Just("<Content>".to_owned()),
        Just("</Content>".to_owned()),
        Just("<MsgId>1</MsgId>".to_owned()),
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        Just("&amp;".to_owned()),
        Just("&#x4f60;".to_owned()),
        Just("&#1114112;".to_owned()),
        Just("&lol;".to_owned()),
        Just("<!DOCTYPE xml [<!ENTITY lol \"lol\">]>".to_owned()),
        Just("<!ENTITY x SYSTEM \"file:///etc/passwd\">".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("<a b=\"c\" d='e'>".to_owned()),
        Just("</a>".to_owned()),
        Just("<a/>".to_owned()),
        Just("<".to_owned()),
        Just(">".to_owned()),
        Just("&".to_owned()),
        Just("\"".to_owned()),
        "[A-Za-z0-9+/= ]{0,12}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(piece, 0..48).prop_map(|pieces| pieces.concat())
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::hash_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value of a kf field: sometimes the right type, often not.
fn kf_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[a-zA-Z0-9_-]{0,24}".prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => json_value(),
    ]
}

/// A `kf/sync_msg` message of any msgtype, with fields of any type.
fn kf_message() -> impl Strategy<Value = Value> {
    let msgtype = prop_oneof![
        Just("text"),
        Just("image"),
        Just("voice"),
        Just("video"),
        Just("file"),
        Just("location"),
        Just("link"),
        Just("business_card"),
        Just("miniprogram"),
        Just("msgmenu"),
        Just("channels_shop_product"),
        Just("event"),
        Just("unheard_of"),
    ];
    let event_type = prop_oneof![
        Just("enter_session"),
        Just("msg_send_fail"),
        Just("servicer_status_change"),
        Just("session_status_change"),
        Just("user_recall_msg"),
        Just("servicer_recall_msg"),
        Just("unheard_of"),
    ];
    (msgtype, event_type, kf_field(), kf_field(), kf_field(), kf_field(), kf_field(), json_value()).prop_map(
        |(msgtype, event_type, msgid, origin, send_time, a, b, extra)| {
            let body = json!({
                "content": a, "menu_id": b, "media_id": a, "latitude": b, "longitude": a, "name": b,
                "address": a, "title": b, "url": a, "userid": b, "appid": a, "head_content": b,
                "event_type": event_type, "open_kfid": a, "external_userid": b, "welcome_code": a,
                "fail_type": b, "status": a, "change_type": b, "recall_msgid": a, "extra": extra,
            });
            json!({
                "msgid": msgid, "open_kfid": "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw", "external_userid": "wmAJ2GCAAAme1XQRC",
                "send_time": send_time, "origin": origin, "msgtype": msgtype, msgtype: body, "event": body,
            })
        },
    )
}

/// A configuration value: arbitrary text, or something close to what a variable expects.
fn setting() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,50}",
        "[A-Za-z0-9]{0,50}",
        "[A-Za-z0-9+/]{42,44}",
        "[0-9]{0,7}",
        "-[0-9]{1,20}",
        "(true|false|yes|no|on|off|1|0|TRUE| true|maybe)",
        "(starttls|tls|none|ssl|json|text|xml)",
        "https?://[a-z.]{0,20}(:[0-9]{1,6})?/?[a-z]{0,5}",
        "[a-z]{0,8}@[a-z]{0,8}(,[a-z]{0,8}@?[a-z.]{0,8}){0,3}",
        "(::1|0.0.0.0|127.0.0.1|256.1.1.1|::g)",
        " [A-Za-z0-9]{1,20}\t",
    ]
}

/// Whether the variable (or alias) `name` holds a secret, as the table says.
fn is_secret(name: &str) -> bool {
    config::Var::named(name).is_some_and(|v| v.secret)
}

/// Every variable and alias, the names an environment may carry.
fn every_variable() -> Vec<&'static str> {
    config::VARIABLES.iter().flat_map(|v| std::iter::once(v.name).chain(v.alias)).collect()
}

/// A valid configuration (so validation runs to the end), with some variables
/// replaced by arbitrary values and some removed.
fn environment() -> impl Strategy<Value = HashMap<String, String>> {
    let variables = every_variable();
    let count = variables.len();
    prop::collection::vec((0..count, prop::option::weighted(0.9, setting())), 0..12).prop_map(move |changes| {
        let mut env: HashMap<String, String> = [
            ("WECOM_CORP_ID", CORP_ID),
            ("WECOM_TOKEN", TOKEN),
            ("WECOM_ENCODING_AES_KEY", AES_KEY),
            ("DATA_DIR", "/nonexistent/data"),
            ("UPLOAD_DIR", "/nonexistent/uploads"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (index, value) in changes {
            let name = variables[index].to_owned();
            match value {
                Some(value) => env.insert(name, value),
                None => env.remove(&name),
            };
        }
        env
    })
}

/// What a configuration shows with no secret in it at all: its defaults (the API
/// base URL, the certificate paths…). A "secret" that is part of this text, such as
/// `https://`, would be found in any output, leaked or not.
fn shown_without_secrets() -> String {
    let env = [("WECOM_CORP_ID", CORP_ID), ("WECOM_TOKEN", TOKEN), ("WECOM_ENCODING_AES_KEY", AES_KEY)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match config::load(&Sources { env, ..Sources::default() }) {
        Ok((config, warnings)) => format!("{config:?}\n{}", warnings.join("\n")),
        Err(errors) => errors.to_string(),
    }
}

/// Secrets in `env` worth looking for in output: long enough, and unlike any
/// word of an error message (a digit or a character outside plain ASCII letters),
/// so they cannot occur by chance; not also given as the value of a variable that
/// may be quoted; and not part of what a configuration shows anyway.
fn secrets_in(env: &HashMap<String, String>) -> Vec<String> {
    let baseline = shown_without_secrets();
    let public: Vec<&String> = env.iter().filter(|(k, _)| !is_secret(k)).map(|(_, v)| v).collect();
    let distinctive = |v: &str| {
        v.chars().count() >= 8
            && v.chars().any(|c| c.is_ascii_digit() || !(c.is_ascii_alphabetic() || " _.,()'-".contains(c)))
    };
    env.iter()
        .filter(|(k, v)| is_secret(k) && distinctive(v.trim()))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|secret| !public.iter().any(|p| p.contains(secret.as_str())) && !baseline.contains(secret.as_str()))
        .collect()
}

/// Found by a 10,000-case run: `FORWARD_SECRET=https://` "appeared" in the API
/// base URL's default. Such a value is no evidence of a leak; a real one still is.
#[test]
fn a_secret_that_is_part_of_the_defaults_is_not_looked_for() {
    let env: HashMap<String, String> = [("FORWARD_SECRET", "https://"), ("SMTP_PASS", "s3cret-Pass-42")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(secrets_in(&env), vec!["s3cret-Pass-42".to_owned()]);
}

// ---------------------------------------------------------------------------
// Crypto helpers: plaintexts built by hand, so they can lie
// ---------------------------------------------------------------------------

/// An EncodingAESKey for 32 raw key bytes.
fn encoding_key(raw: &[u8; 32]) -> String {
    STANDARD.encode(raw).trim_end_matches('=').to_owned()
}

/// AES-256-CBC with WeCom's IV (the key's first 16 bytes) over whole blocks, base64.
fn seal(raw_key: &[u8; 32], plaintext: &[u8]) -> String {
    let mut buffer = plaintext.to_vec();
    let len = buffer.len();
    cbc::Encryptor::<aes::Aes256>::new_from_slices(raw_key, &raw_key[..16])
        .expect("32-byte key, 16-byte IV")
        .encrypt_padded_mut::<NoPadding>(&mut buffer, len)
        .expect("whole blocks");
    STANDARD.encode(buffer)
}

/// `random(16) | declared (BE) | rest`, padded WeCom's way to 32-byte blocks.
fn plaintext(declared: u32, rest: &[u8]) -> Vec<u8> {
    let mut plain = vec![7u8; 16];
    plain.extend_from_slice(&declared.to_be_bytes());
    plain.extend_from_slice(rest);
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, u8::try_from(pad).expect("1..=32"));
    plain
}

/// What the official SDK accepts as padding: the last byte p in 1..=32, and p bytes of p.
fn padding_is_valid(plain: &[u8]) -> bool {
    let Some(&last) = plain.last() else { return false };
    let pad = usize::from(last);
    (1..=32).contains(&pad) && pad <= plain.len() && plain[plain.len() - pad..].iter().all(|&b| b == last)
}

/// When the properties' callbacks were signed, and so "now" for them.
const SIGNED_AT: i64 = 1_409_659_813;

fn credentials() -> CallbackCredentials {
    let env = crate::helpers::test_env(std::path::Path::new("/nonexistent"), &[]);
    let (config, _) = config::load(&Sources { env, ..Sources::default() }).expect("test configuration");
    CallbackCredentials::from_config(&config)
}

/// The query string of a request whose signature matches `encrypted` under the test Token.
fn signed_query(encrypted: &str) -> CallbackQuery {
    let signature = crypto::sign(TOKEN, &SIGNED_AT.to_string(), "263014780", encrypted);
    CallbackQuery {
        msg_signature: Some(signature.as_str().to_owned()),
        timestamp: Some("1409659813".to_owned()),
        nonce: Some("263014780".to_owned()),
        echostr: None,
    }
}

fn envelope(encrypted: &str) -> String {
    format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
}

/// The strings an app message carries, to bound them by the input.
fn app_strings(message: &AppMessage) -> Vec<&str> {
    let mut strings = vec![message.to_user_name.as_str(), message.msg_type.as_str()];
    strings.extend(message.from_user_name.as_deref());
    strings.extend(message.msg_id.as_deref());
    match &message.kind {
        AppMessageKind::Text { content } => strings.push(content),
        AppMessageKind::Event(AppEvent::Other { event, event_key }) => {
            strings.push(event);
            strings.extend(event_key.as_deref());
        }
        AppMessageKind::Event(AppEvent::KfMsgOrEvent { token, open_kfid }) => {
            strings.extend(token.as_deref());
            strings.extend(open_kfid.as_deref());
        }
        _ => {}
    }
    strings
}

/// A text message with `content` escaped as XML text (not CDATA).
fn escaped_text_message(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>zhangsan</FromUserName><CreateTime>1409659813</CreateTime>\
         <MsgType>text</MsgType><Content>{}</Content><MsgId>{msg_id}</MsgId></xml>",
        quick_xml::escape::escape(content)
    )
}

proptest! {
    // A failure prints its shrunk input; no regression file is written into the tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(cases()) })]

    // --- the envelope ------------------------------------------------------

    #[test]
    fn envelope_of_arbitrary_bytes_is_parsed_or_refused_briefly(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        match CallbackEnvelope::parse_bytes(&body) {
            Ok(envelope) => {
                prop_assert!(!envelope.encrypt.is_empty() && envelope.encrypt.len() <= body.len());
                prop_assert!(envelope.to_user_name.map_or(0, |t| t.len()) <= body.len());
            }
            Err(error) => assert_short(&error),
        }
    }

    #[test]
    fn envelope_of_xml_pieces_is_parsed_or_refused_briefly(body in xml_like()) {
        match CallbackEnvelope::parse(&body) {
            Ok(envelope) => {
                prop_assert!(envelope.encrypt.len() <= body.len());
                prop_assert!(envelope.agent_id.map_or(0, |a| a.len()) <= body.len());
                prop_assert!(!body.contains("<!DOCTYPE"), "a DOCTYPE was accepted: {body}");
            }
            Err(error) => assert_short(&error),
        }
    }

    #[test]
    fn envelope_gives_back_any_escaped_or_cdata_value(encrypt in "[A-Za-z0-9+/=]{1,400}", to in "\\PC{0,40}", cdata in any::<bool>()) {
        let to_xml = if cdata && !to.contains("]]>") {
            format!("<![CDATA[{to}]]>")
        } else {
            quick_xml::escape::escape(to.as_str()).into_owned()
        };
        let body = format!("<xml><ToUserName>{to_xml}</ToUserName><AgentID>1</AgentID><Encrypt>{encrypt}</Encrypt></xml>");
        let envelope = CallbackEnvelope::parse(&body).expect("a well-formed envelope");
        prop_assert_eq!(envelope.encrypt, encrypt);
        prop_assert_eq!(envelope.to_user_name, Some(to));
    }

    // --- the crypto --------------------------------------------------------

    #[test]
    fn decrypting_arbitrary_text_is_an_error_not_a_panic(text in any::<String>()) {
        if let Err(error) = crypto::decrypt(&AesKey::parse(AES_KEY).expect("key"), &text) {
            assert_short(&error);
        }
    }

    #[test]
    fn decrypting_arbitrary_blocks_never_yields_more_than_came_in(raw in prop::collection::vec(any::<u8>(), 0..1024)) {
        let key = AesKey::parse(AES_KEY).expect("key");
        if let Ok(plain) = crypto::decrypt(&key, &STANDARD.encode(&raw)) {
            prop_assert!(plain.message().len() + plain.receive_id().len() + 20 < raw.len());
        }
    }

    #[test]
    fn truncated_base64_never_decrypts_to_the_original(message in "\\PC{0,200}", receive_id in "[a-z0-9]{1,24}", cut in any::<prop::sample::Index>()) {
        let key = AesKey::parse(AES_KEY).expect("key");
        let ciphertext = crypto::encrypt(&key, message.as_bytes(), receive_id.as_bytes());
        let truncated = &ciphertext[..cut.index(ciphertext.len())];
        if let Ok(plain) = crypto::decrypt(&key, truncated) {
            prop_assert!(plain.message() != message || plain.receive_id() != receive_id);
        }
    }

    #[test]
    fn a_length_field_is_believed_only_when_it_fits(raw_key in any::<[u8; 32]>(), rest in "\\PC{0,80}", declared in prop_oneof![any::<u32>(), 0u32..100]) {
        let key = AesKey::parse(&encoding_key(&raw_key)).expect("43-character key");
        let rest = rest.as_bytes();
        let result = crypto::decrypt(&key, &seal(&raw_key, &plaintext(declared, rest)));
        let fits = usize::try_from(declared).is_ok_and(|d| d <= rest.len());
        match result {
            Ok(plain) => {
                prop_assert!(fits);
                prop_assert_eq!(plain.message().len(), declared as usize);
                prop_assert_eq!([plain.message().as_bytes(), plain.receive_id().as_bytes()].concat(), rest);
            }
            Err(DecryptError::LengthField { declared: reported, available }) => {
                prop_assert!(!fits);
                prop_assert_eq!((reported, available), (declared, rest.len()));
            }
            // The split may cut a character in two; nothing else can go wrong here.
            Err(DecryptError::Utf8) => prop_assert!(fits && !rest.is_empty()),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn padding_is_accepted_exactly_when_it_is_valid(raw_key in any::<[u8; 32]>(), blocks in 2usize..6, tail in prop::collection::vec(any::<u8>(), 0..40), last in any::<u8>()) {
        let key = AesKey::parse(&encoding_key(&raw_key)).expect("43-character key");
        let mut plain = plaintext(0, b"corp");
        plain.resize(16 * blocks, b'x');
        let from = plain.len() - tail.len().min(plain.len() - 20);
        let len = plain.len();
        plain[from..].copy_from_slice(&tail[..len - from]);
        *plain.last_mut().expect("not empty") = last;
        let result = crypto::decrypt(&key, &seal(&raw_key, &plain));
        prop_assert_eq!(matches!(result, Err(DecryptError::Padding)), !padding_is_valid(&plain), "{:?}", result);
    }

    #[test]
    fn round_trip_through_a_signed_callback_gives_back_the_message(content in "\\PC{0,300}", msg_id in any::<u64>()) {
        let key = AesKey::parse(AES_KEY).expect("key");
        let xml = escaped_text_message(&content, msg_id);
        let encrypted = crypto::encrypt(&key, xml.as_bytes(), CORP_ID.as_bytes());
        let opened = credentials().open(&signed_query(&encrypted), envelope(&encrypted).as_bytes(), SIGNED_AT).expect("opens");
        prop_assert_eq!(opened.message.kind, AppMessageKind::Text { content });
        prop_assert_eq!(opened.message.msg_id, Some(msg_id.to_string()));
    }

    #[test]
    fn a_signed_callback_of_arbitrary_ciphertext_is_refused_as_a_client_error(raw in prop::collection::vec(any::<u8>(), 1..512)) {
        let encrypted = STANDARD.encode(&raw);
        match credentials().open(&signed_query(&encrypted), envelope(&encrypted).as_bytes(), SIGNED_AT) {
            Ok(opened) => prop_assert!(opened.xml.len() < raw.len()),
            Err(error) => {
                prop_assert!(matches!(error, CallbackError::BadCiphertext(_) | CallbackError::WrongReceiveId | CallbackError::BadMessage(_)), "{error:?}");
                assert_short(&error);
            }
        }
    }

    #[test]
    fn arbitrary_query_strings_are_parsed_or_refused(query in "[a-z_=&%0-9A-F+]{0,80}|\\PC{0,80}") {
        if let Ok(parsed) = CallbackQuery::parse(&query) {
            let encrypted = "AAAA";
            let _ = credentials().open(&parsed, envelope(encrypted).as_bytes(), SIGNED_AT);
            let _ = credentials().verify_url(&parsed, SIGNED_AT);
        }
    }

    // --- the app XML -------------------------------------------------------

    #[test]
    fn app_xml_of_pieces_is_parsed_or_refused_briefly(xml in xml_like()) {
        match AppMessage::parse(&xml) {
            Ok(message) => {
                for text in app_strings(&message) {
                    prop_assert!(text.len() <= xml.len(), "{text} from {xml}");
                }
                let _ = message.summary();
            }
            Err(error) => assert_short(&error),
        }
    }

    #[test]
    fn app_xml_of_arbitrary_text_is_parsed_or_refused_briefly(xml in any::<String>()) {
        if let Err(error) = AppMessage::parse(&xml) {
            assert_short(&error);
        }
    }

    #[test]
    fn app_summary_is_bounded_whatever_the_content(content in "\\PC{0,2000}", from in "[a-z]{1,20}") {
        let xml = format!(
            "<xml><ToUserName>c</ToUserName><FromUserName>{from}</FromUserName><MsgType>text</MsgType><Content>{}</Content></xml>",
            quick_xml::escape::escape(content.as_str())
        );
        let message = AppMessage::parse(&xml).expect("parses");
        prop_assert!(message.summary().chars().count() <= 240);
    }

    // --- the kf JSON -------------------------------------------------------

    #[test]
    fn kf_messages_of_every_type_parse_or_name_the_missing_msgid(raw in kf_message()) {
        let msgid = raw["msgid"].as_str().map(str::to_owned);
        let input = raw.to_string();
        match KfMessage::parse(raw) {
            Ok(message) => {
                prop_assert_eq!(Some(&message.msgid), msgid.as_ref());
                let summary = message.summary();
                prop_assert!(summary.len() <= input.len() + 100, "{summary}");
                let _ = (message.media_id(), message.event(), message.origin.answerable());
            }
            // Only a message without a msgid (nothing to dedup by) is refused; a field
            // of an unexpected type elsewhere must not lose the message.
            Err(error) => {
                prop_assert!(msgid.is_none_or(|m| m.is_empty()), "{error}");
                prop_assert!(error.to_string().starts_with("kf message without a msgid"));
            }
        }
    }

    #[test]
    fn kf_messages_of_arbitrary_json_never_panic(raw in json_value()) {
        if let Ok(message) = KfMessage::parse(raw) {
            let _ = message.summary();
        }
    }

    #[test]
    fn kf_sync_pages_of_arbitrary_text_are_parsed_or_refused(text in "\\PC{0,400}|[\\[\\]{}\":,0-9a-z_ ]{0,400}") {
        if let Ok(page) = serde_json::from_str::<KfSyncPage>(&text) {
            prop_assert!(page.next_cursor.len() <= text.len());
            for raw in page.msg_list {
                let _ = KfMessage::parse(raw);
            }
        }
    }

    #[test]
    fn kf_sync_pages_of_generated_messages_round_trip(messages in prop::collection::vec(kf_message(), 0..20), cursor in "\\PC{0,40}", has_more in any::<i64>()) {
        let text = json!({"errcode": 0, "errmsg": "ok", "next_cursor": cursor, "has_more": has_more, "msg_list": messages}).to_string();
        let page: KfSyncPage = serde_json::from_str(&text).expect("a well-formed page");
        prop_assert_eq!(page.msg_list.len(), messages.len());
        prop_assert_eq!(page.next_cursor, cursor);
        for raw in page.msg_list {
            let _ = KfMessage::parse(raw);
        }
    }

    // --- the configuration -------------------------------------------------

    #[test]
    fn any_environment_is_a_config_or_readable_errors_without_secrets(env in environment()) {
        let secrets = secrets_in(&env);
        match config::load(&Sources { env, ..Sources::default() }) {
            Ok((config, warnings)) => {
                let shown = format!("{config:?}\n{}", warnings.join("\n"));
                for secret in &secrets {
                    prop_assert!(!shown.contains(secret.as_str()), "a secret in the config's Debug or warnings: {shown}");
                }
            }
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for line in &errors.0 {
                    prop_assert!(!line.trim().is_empty());
                    for secret in &secrets {
                        prop_assert!(!line.contains(secret.as_str()), "a secret in: {line}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_broken_config_file_never_quotes_its_secrets(secret in "[A-Za-z0-9]{12,32}", garbage in "\\PC{0,40}|[\\[\\]=\"'{}a-z_ ]{0,40}", before in any::<bool>()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("wechat-api.toml");
        let line = format!("wecom_secret = \"{secret}\"\nadmin_token = '{secret}'\n");
        let text = if before { format!("{garbage}\n{line}") } else { format!("{line}{garbage}\n") };
        std::fs::write(&file, &text).expect("write config file");
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, format!("SMTP_PASS={secret}\n{garbage}\nWECOM_KF_SECRET=\"{secret}")).expect("write .env");
        let env = [("WECOM_CORP_ID", CORP_ID), ("WECOM_TOKEN", TOKEN), ("WECOM_ENCODING_AES_KEY", AES_KEY)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let sources = Sources { file: Some(file), dotenv: Some(dotenv), env };
        let shown = match config::load(&sources) {
            Ok((config, warnings)) => format!("{config:?}\n{}", warnings.join("\n")),
            Err(errors) => errors.to_string(),
        };
        prop_assert!(!shown.contains(&secret), "{shown}");
    }

    // --- shaping what the appliance sends ----------------------------------

    #[test]
    fn split_parts_fit_never_break_a_character_and_rejoin_to_the_text(
        text in "(\\PC|[\n 。.!?]){0,3000}",
        max in 4usize..3000,
    ) {
        let parts = shaping::split(&text, max);
        prop_assert_eq!(parts.concat(), text.clone());
        for part in &parts {
            prop_assert!(!part.is_empty());
            prop_assert!(part.len() <= max, "{} bytes over {}", part.len(), max);
            prop_assert!(std::str::from_utf8(part.as_bytes()).is_ok());
        }
    }

    #[test]
    fn flattening_markdown_never_panics_and_a_second_time_changes_nothing(
        text in "([-*+#>_~`\\[\\]()!\n 1.]|\\PC){0,400}",
    ) {
        let once = shaping::flatten_markdown(&text);
        prop_assert_eq!(shaping::flatten_markdown(&once), once.clone());
        for part in shaping::shape(&text) {
            prop_assert!(part.len() <= shaping::MAX_PART_BYTES);
        }
    }
}

// ---------------------------------------------------------------------------
// Targeted attacks
// ---------------------------------------------------------------------------

/// The classic billion laughs: ten entities, each ten of the one before.
fn billion_laughs() -> String {
    let mut doc = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE xml [\n<!ENTITY lol0 \"lol\">\n");
    for i in 1..10 {
        let refs = format!("&lol{};", i - 1).repeat(10);
        doc.push_str(&format!("<!ENTITY lol{i} \"{refs}\">\n"));
    }
    doc.push_str("]>\n<xml><ToUserName>&lol9;</ToUserName><MsgType>text</MsgType><Encrypt>&lol9;</Encrypt></xml>");
    doc
}

#[test]
fn xml_bombs_and_external_entities_are_refused_by_every_parser() {
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>\
               <xml><MsgType>text</MsgType><Content>&e;</Content><Encrypt>&e;</Encrypt></xml>";
    // Entities used without a DTD are refused as unknown, not expanded or kept.
    let undeclared = "<xml><MsgType>text</MsgType><Content>&lol9;</Content><Encrypt>&lol9;</Encrypt></xml>";
    for doc in [billion_laughs().as_str(), xxe, undeclared] {
        let envelope = CallbackEnvelope::parse(doc).expect_err("envelope with entities");
        let message = AppMessage::parse(doc).expect_err("app message with entities");
        for error in [envelope.to_string(), message.to_string()] {
            assert!(error.contains("DOCTYPE") || error.contains("unknown entity"), "{error}");
            assert_short(&error);
        }
    }
    // The same bomb inside a correctly signed and encrypted callback.
    let key = AesKey::parse(AES_KEY).expect("key");
    let encrypted = crypto::encrypt(&key, billion_laughs().as_bytes(), CORP_ID.as_bytes());
    let error =
        credentials().open(&signed_query(&encrypted), envelope(&encrypted).as_bytes(), SIGNED_AT).expect_err("bomb");
    assert!(matches!(error, CallbackError::BadMessage(_)), "{error:?}");
}

#[test]
fn a_hundred_thousand_nested_elements_are_read_in_one_pass() {
    let depth = 100_000;
    let nest = |inner: &str| format!("{}{inner}{}", "<a>".repeat(depth), "</a>".repeat(depth));
    // Deep nesting under an unknown tag is skipped; the fields around it are read.
    let body = format!("<xml><Junk>{}</Junk><Encrypt>abc</Encrypt></xml>", nest("<Encrypt>inner</Encrypt>"));
    assert_eq!(CallbackEnvelope::parse(&body).expect("skips the nesting").encrypt, "abc");
    let xml = format!("<xml><MsgType>text</MsgType><Content>hi</Content><Junk>{}</Junk></xml>", nest("x"));
    assert_eq!(AppMessage::parse(&xml).expect("skips the nesting").kind, AppMessageKind::Text { content: "hi".into() });
    // Nesting inside a field is ambiguous: refused, whatever the depth.
    let inside = format!("<xml><Encrypt>{}</Encrypt></xml>", nest("abc"));
    assert!(CallbackEnvelope::parse(&inside).expect_err("nested Encrypt").to_string().contains("nested"));
    // Never closed: an error, not a stack overflow.
    let unclosed = format!("<xml>{}", "<a>".repeat(depth));
    assert_short(&CallbackEnvelope::parse(&unclosed).expect_err("unclosed"));
}

#[test]
fn huge_attributes_and_huge_text_inside_the_body_limit_are_parsed() {
    let attribute = "x".repeat(BODY_LIMIT - 200);
    let body = format!("<xml a=\"{attribute}\"><Encrypt b=\"{}\">abc</Encrypt></xml>", &attribute[..100]);
    assert!(body.len() <= BODY_LIMIT);
    assert_eq!(CallbackEnvelope::parse(&body).expect("attributes are ignored").encrypt, "abc");
    let many = format!("<xml {}><Encrypt>abc</Encrypt></xml>", "a=\"1\" ".repeat(BODY_LIMIT / 8));
    assert_eq!(CallbackEnvelope::parse(&many).expect("many attributes").encrypt, "abc");

    let text = "A".repeat(BODY_LIMIT - 100);
    let body = envelope(&text);
    assert_eq!(CallbackEnvelope::parse(&body).expect("huge Encrypt").encrypt, text);
    // Huge text in a decrypted message, escaped: it only ever gets shorter.
    let content = "&amp;".repeat(BODY_LIMIT / 6);
    let xml = format!("<xml><MsgType>text</MsgType><Content>{content}</Content></xml>");
    let message = AppMessage::parse(&xml).expect("huge content");
    assert_eq!(message.kind, AppMessageKind::Text { content: "&".repeat(BODY_LIMIT / 6) });
    assert!(message.summary().chars().count() < 300);
}

#[test]
fn invalid_utf8_is_refused_wherever_it_appears() {
    let mut body = envelope("abc").into_bytes();
    body.splice(10..10, [0xff, 0xfe, 0xc3]);
    assert!(CallbackEnvelope::parse_bytes(&body).expect_err("not UTF-8").to_string().contains("not UTF-8"));
    assert!(CallbackEnvelope::parse_bytes(&[0xc3]).is_err());
    // Inside the ciphertext: decrypts, but the message is not UTF-8.
    let raw_key = [9u8; 32];
    let key = AesKey::parse(&encoding_key(&raw_key)).expect("key");
    let bad = [b"<xml>".as_slice(), &[0xc3, 0x28], b"</xml>corp"].concat();
    let sealed = seal(&raw_key, &plaintext(13, &bad));
    assert_eq!(crypto::decrypt(&key, &sealed).expect_err("invalid UTF-8"), DecryptError::Utf8);
    // The split between message and receive id inside a character.
    let sealed = seal(&raw_key, &plaintext(1, "你corp".as_bytes()));
    assert_eq!(crypto::decrypt(&key, &sealed).expect_err("split character"), DecryptError::Utf8);
}

#[test]
fn truncated_and_mangled_base64_is_refused_with_the_reason() {
    let key = AesKey::parse(AES_KEY).expect("key");
    let ciphertext = crypto::encrypt(&key, b"<xml><MsgType>text</MsgType></xml>", CORP_ID.as_bytes());
    type Expected = fn(&DecryptError) -> bool;
    let block_length: Expected = |e| matches!(e, DecryptError::BlockLength(_));
    let base64: Expected = |e| *e == DecryptError::Base64;
    let any: Expected = |_| true;
    let cases = [
        (&ciphertext[..ciphertext.len() - 1], base64),
        (&ciphertext[..ciphertext.len() - 4], block_length),
        (&ciphertext[..ciphertext.len() / 2], any),
        ("", block_length),
        ("====", base64),
        ("AAAA AAAA", base64),
        // One block of zeros: decrypts to noise, refused by padding or length.
        ("AAAAAAAAAAAAAAAAAAAAAA==", any),
    ];
    for (input, expected) in cases {
        let error = crypto::decrypt(&key, input).expect_err(input);
        assert!(expected(&error), "{input:?}: {error:?}");
        assert_short(&error);
    }
}

#[test]
fn length_fields_at_the_extremes_are_refused() {
    let raw_key = [3u8; 32];
    let key = AesKey::parse(&encoding_key(&raw_key)).expect("key");
    for declared in [u32::MAX, u32::MAX - 19, 1 << 31, 5] {
        let sealed = seal(&raw_key, &plaintext(declared, b"corp"));
        let error = crypto::decrypt(&key, &sealed).expect_err("past the end");
        assert_eq!(error, DecryptError::LengthField { declared, available: 4 });
        assert_short(&error);
    }
    // Shorter than the 20-byte header once unpadded.
    let mut short = vec![0u8; 32];
    short[31] = 20;
    short[12..31].fill(20);
    let error = crypto::decrypt(&key, &seal(&raw_key, &short)).expect_err("no header");
    assert!(matches!(error, DecryptError::LengthField { available: 12, .. }), "{error:?}");
}

#[test]
fn json_nested_a_hundred_thousand_deep_is_refused_without_overflowing_the_stack() {
    let deep = format!("{{\"msg_list\": [{}{}]}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(serde_json::from_str::<KfSyncPage>(&deep).is_err());
    let deep_object = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(serde_json::from_str::<Value>(&deep_object).is_err());
    // A wide page is fine: ten thousand messages, each parsed.
    let messages: Vec<Value> =
        (0..10_000).map(|i| json!({"msgid": i.to_string(), "msgtype": "text", "text": {"content": "x"}})).collect();
    let page: KfSyncPage =
        serde_json::from_str(&json!({"next_cursor": "c", "has_more": 0, "msg_list": messages}).to_string())
            .expect("page");
    assert!(page.msg_list.into_iter().all(|raw| KfMessage::parse(raw).is_ok()));
}

#[test]
fn config_values_that_are_tables_lists_or_nul_are_readable_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("wechat-api.toml");
    std::fs::write(&file, "wecom_token = [1, 2]\nhttps_port = { a = 1 }\nwecom_secret = \"s3cr3t-value-xyz\"\n")
        .expect("write");
    let mut env: HashMap<String, String> =
        [("WECOM_CORP_ID", CORP_ID), ("WECOM_ENCODING_AES_KEY", AES_KEY)].map(|(k, v)| (k.into(), v.into())).into();
    env.insert("WECOM_AGENT_ID".into(), "1\0".into());
    let errors = config::load(&Sources { file: Some(file), dotenv: None, env }).expect_err("refused");
    let text = errors.to_string();
    assert!(text.contains("WECOM_TOKEN must be a single value"), "{text}");
    assert!(text.contains("HTTPS_PORT must be a single value"), "{text}");
    assert!(!text.contains("s3cr3t-value-xyz"), "{text}");
}
