//! What the load generator sends: a [`Generator`] makes each request whole, either
//! fixed (one callback replayed, or a plain GET) or a new callback per request
//! ([`Callbacks`]: app text messages with a new MsgId, or kf `kf_msg_or_event` notices
//! with a new Token), encrypted and signed with the library's own `crypto::encrypt`
//! and `crypto::sign` under the service's configuration.
//!
//! Deliberately not here: sockets and framing (`client`), pacing and counting
//! (`run`), and the kf messages the service then fetches (`fake_wecom` makes those).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Bytes;
use wechat_api::testing::config::{self, CallbackKeys, Sources};
use wechat_api::testing::crypto;

use crate::client::Target;
use crate::{unix_nanos, Mode};

/// Where callbacks go when the URL names no path.
pub(crate) const CALLBACK_PATH: &str = "/api/v1/wecom/callback";
/// The kf account of the generated `kf_msg_or_event` notices.
pub(crate) const OPEN_KFID: &str = "wkload";

/// Makes each request's path and body.
pub(crate) enum Generator {
    /// Encrypted, signed callbacks made per request.
    Callbacks(Callbacks),
    /// The same request every time (the duplicate path, or a plain GET).
    Fixed(Bytes),
}

/// App text callbacks or kf notices, each one new.
pub(crate) struct Callbacks {
    keys: CallbackKeys,
    corp: String,
    agent: i64,
    kf: bool,
    next: AtomicU64,
    id_base: u64,
}

impl Generator {
    /// The generator of `mode`; callbacks use the service's configuration as the
    /// service would load it (`config_file`, then the environment and .env).
    pub(crate) fn new(mode: Mode, config_file: Option<PathBuf>, target: &Target) -> anyhow::Result<Self> {
        if mode == Mode::Get {
            return Ok(Self::Fixed(target.request(&target.path, None)));
        }
        let sources = Sources::from_process(config_file);
        let (config, _warnings) = config::load(&sources).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let name = if mode == Mode::Kf { "kf" } else { "app" };
        let channel = config.channels.get(name).ok_or_else(|| anyhow::anyhow!("no channel {name} is configured"))?;
        let keys = channel.keys.clone();
        // Unique across runs against one store: milliseconds since the epoch times a
        // million leaves room for a million requests per run started a second apart.
        let id_base = u64::try_from(unix_nanos() / 1_000_000).unwrap_or_default().saturating_mul(1_000_000);
        let callbacks = Callbacks {
            keys,
            corp: channel.corp_id.as_str().to_owned(),
            agent: channel.agent_id().unwrap_or(1_000_002),
            kf: mode == Mode::Kf,
            next: AtomicU64::new(0),
            id_base,
        };
        if mode == Mode::Duplicate {
            let (path_and_query, body) = callbacks.make(target);
            return Ok(Self::Fixed(target.request(&path_and_query, Some(body.as_bytes()))));
        }
        Ok(Self::Callbacks(callbacks))
    }

    /// The next request, whole.
    pub(crate) fn next(&self, target: &Target) -> Bytes {
        match self {
            Self::Fixed(request) => request.clone(),
            Self::Callbacks(callbacks) => {
                let (path, body) = callbacks.make(target);
                target.request(&path, Some(body.as_bytes()))
            }
        }
    }
}

impl Callbacks {
    /// The next callback's path with query, and body: a new MsgId (app) or Token
    /// (kf), encrypted and signed.
    pub(crate) fn make(&self, target: &Target) -> (String, String) {
        let Self { keys, corp, agent, kf, next, id_base } = self;
        let n = next.fetch_add(1, Ordering::Relaxed);
        let id = id_base + n;
        let timestamp = (unix_nanos() / 1_000_000_000).to_string();
        let xml = if *kf {
            format!(
                "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><CreateTime>{timestamp}</CreateTime>\
                 <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
                 <Token><![CDATA[LOAD{id}]]></Token><OpenKfId><![CDATA[{OPEN_KFID}]]></OpenKfId></xml>"
            )
        } else {
            format!(
                "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[load{}]]></FromUserName>\
                 <CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[{}]]></Content><MsgId>{id}</MsgId><AgentID>{agent}</AgentID></xml>",
                n % 100,
                content(id)
            )
        };
        let encrypted = crypto::encrypt(&keys.aes_key, xml.as_bytes(), corp.as_bytes());
        let nonce = n.to_string();
        let signature = crypto::sign(keys.token.expose(), &timestamp, &nonce, &encrypted);
        let separator = if target.path.contains('?') { '&' } else { '?' };
        let path = format!(
            "{}{separator}msg_signature={}&timestamp={timestamp}&nonce={nonce}",
            target.path,
            signature.as_str()
        );
        let body = format!(
            "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>\
             <AgentID>{agent}</AgentID></xml>"
        );
        (path, body)
    }
}

/// `loadgen bodies`: `count` distinct app text callbacks for wrk, one per line
/// (path and query, a tab, the body), under the service's configuration.
pub(crate) fn write_bodies(count: u64, out: &std::path::Path, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    let target = Target::parse("http://127.0.0.1:1", Some(CALLBACK_PATH))?;
    let Generator::Callbacks(callbacks) = Generator::new(Mode::Distinct, config_file, &target)? else {
        anyhow::bail!("distinct callbacks are made per request");
    };
    let file = std::fs::File::create(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    for _ in 0..count {
        let (path, body) = callbacks.make(&target);
        writeln!(file, "{path}\t{body}")?;
    }
    file.flush()?;
    Ok(())
}

/// What people write, made up: 50 to 300 characters of Chinese, ASCII words and
/// emoji, different for every `seed` and the same for the same one. Bodies then
/// span ~680 to ~1,550 bytes, mean ~1,060, like the callbacks of a real chat (an
/// independent wrk benchmark used wechatpy's: 647–1,759, mean 1,072): the tail of the durable path
/// depends on how many bytes each journal entry writes, so a short fixed text
/// would flatter it.
pub(crate) fn content(seed: u64) -> String {
    const CHINESE: &[&str] = &[
        "你好",
        "请问",
        "报销",
        "流程",
        "怎么",
        "提交",
        "审批",
        "会议室",
        "明天",
        "下午",
        "谢谢",
        "系统",
        "密码",
        "登录",
        "不了",
    ];
    const ASCII: &[&str] = &["VPN", "OA", "ok", "IT", "help", "ticket", "#4521", "laptop", "Wi-Fi", "9:30", "email"];
    const EMOJI: &[&str] = &["😀", "👍", "🙏", "🎉", "❤️", "🤔"];
    // xorshift64*: a cheap, reproducible stream per seed.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let want = 50 + (next() % 251) as usize;
    let mut text = String::with_capacity(want * 3);
    let mut chars = 0;
    while chars < want {
        let roll = next();
        let word = match roll % 10 {
            0..=6 => CHINESE[(roll >> 8) as usize % CHINESE.len()],
            7..=8 => ASCII[(roll >> 8) as usize % ASCII.len()],
            _ => EMOJI[(roll >> 8) as usize % EMOJI.len()],
        };
        text.push_str(word);
        chars += word.chars().count();
        if roll % 10 >= 7 {
            text.push(' ');
            chars += 1;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORP_ID: &str = "wx5823bf96d3bd56c7";
    const TOKEN: &str = "QDG6eK";
    const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn callbacks(kf: bool) -> Callbacks {
        let env = [("WECOM_CORP_ID", CORP_ID), ("WECOM_TOKEN", TOKEN), ("WECOM_ENCODING_AES_KEY", AES_KEY)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (config, _) = config::load(&Sources { env, ..Sources::default() }).expect("a valid configuration");
        Callbacks {
            keys: config.channels.builtin_app().expect("the built-in app channel").keys.clone(),
            corp: CORP_ID.to_owned(),
            agent: 1_000_002,
            kf,
            next: AtomicU64::new(0),
            id_base: 7_000_000,
        }
    }

    /// The query parameter `name` of `path`.
    fn parameter<'a>(path: &'a str, name: &str) -> &'a str {
        let query = path.split_once('?').expect("a query").1;
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).expect("the parameter")
    }

    fn decrypt(path: &str, body: &str) -> String {
        let encrypted =
            body.split("<Encrypt><![CDATA[").nth(1).and_then(|rest| rest.split("]]>").next()).expect("Encrypt");
        let signature = crypto::sign(TOKEN, parameter(path, "timestamp"), parameter(path, "nonce"), encrypted);
        assert!(signature.matches(parameter(path, "msg_signature")), "signed with the Token");
        let key = crypto::AesKey::parse(AES_KEY).expect("key");
        let plaintext = crypto::decrypt(&key, encrypted).expect("decrypts");
        assert_eq!(plaintext.receive_id(), CORP_ID);
        plaintext.message().to_owned()
    }

    fn target() -> Target {
        Target::parse("http://127.0.0.1:1", Some(CALLBACK_PATH)).expect("a loopback URL")
    }

    #[test]
    fn every_text_callback_is_signed_encrypted_and_has_a_new_msg_id() {
        let (callbacks, target) = (callbacks(false), target());
        let (path, body) = callbacks.make(&target);
        assert!(path.starts_with("/api/v1/wecom/callback?msg_signature="), "{path}");
        assert!(decrypt(&path, &body).contains("<MsgId>7000000</MsgId>"));
        let (path, body) = callbacks.make(&target);
        assert!(decrypt(&path, &body).contains("<MsgId>7000001</MsgId>"));
    }

    #[test]
    fn contents_differ_per_seed_repeat_for_a_seed_and_make_chat_sized_bodies() {
        assert_eq!(content(1), content(1));
        assert_ne!(content(1), content(2));
        let (callbacks, target) = (callbacks(false), target());
        let sizes: Vec<usize> = (0..2_000).map(|_| callbacks.make(&target).1.len()).collect();
        let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!(min.is_some_and(|m| m < 800) && max.is_some_and(|m| m > 1_500), "{min:?}..{max:?}");
        assert!((900..1_300).contains(&mean), "mean {mean}");
        assert!(content(3).chars().any(|c| c > '\u{4e00}'), "Chinese in {}", content(3));
    }

    #[test]
    fn every_kf_notice_has_a_new_token() {
        let (callbacks, target) = (callbacks(true), target());
        let (path, body) = callbacks.make(&target);
        let xml = decrypt(&path, &body);
        assert!(xml.contains("<Event><![CDATA[kf_msg_or_event]]></Event>"), "{xml}");
        assert!(xml.contains("<Token><![CDATA[LOAD7000000]]></Token>"), "{xml}");
        let (path, body) = callbacks.make(&target);
        assert!(decrypt(&path, &body).contains("<Token><![CDATA[LOAD7000001]]></Token>"));
    }
}
