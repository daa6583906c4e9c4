//! Logs: the tracing subscriber (text or JSON lines, `RUST_LOG`), written by a
//! log thread through [`OneLine`], which escapes every control and bidi character
//! inside an event, so outside text never forges a line or reads backwards.
//!
//! Deliberately not here: metrics (`metrics.rs`), and what is logged (each
//! component writes its own lines; `log_limit` bounds the repetitive ones).

use crate::config::LogFormat;

/// Keeps the log writer alive; dropping it flushes what is queued.
#[must_use = "logs are lost unless the guard lives until exit"]
pub(crate) struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Lines queued for the log thread before a request thread waits for it: ~0.3 s
/// of the durable path at full speed. The queue's slots are allocated and
/// written when it is made (~40 bytes each): 65,536 of them were 2.5 MiB of the
/// idle service's 17.5 MiB (issue 25, BENCHMARKS.md).
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// Starts logging to stdout. Safe to call more than once (later calls are ignored).
///
/// Lines go through a queue to a log thread that writes whatever has queued up in
/// one `write`: one line per callback must not cost one system call per callback.
/// The queue is not lossy: when full, the request thread waits rather than drop a line.
///
/// `filter` (`RUST_LOG`, validated) replaces the default filter, but other
/// crates never log below `info` whatever it says: at `debug` and `trace` they
/// print request URLs (with access tokens) and SQL parameters (with tokens and
/// messages), and no secret may reach a log line.
pub(crate) fn init_tracing(format: LogFormat, filter: Option<&str>) -> LogGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    const DEFAULT: &str = "info,actix_server=warn,rustls=warn,h2=warn,hyper=warn";
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter.unwrap_or(DEFAULT))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT));
    let others_at_most_info = tracing_subscriber::filter::Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), tracing::level_filters::LevelFilter::TRACE)
        .with_default(tracing::level_filters::LevelFilter::INFO);
    // Colour only for a person at a terminal; Docker logs and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("wechat-api-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    // tracing's own escaping of the message (a `write_char` per character, ~3 %
    // of a callback's CPU, BENCHMARKS.md) only for a terminal: everywhere else
    // `OneLine` escapes every control character, ESC included, already.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_ansi_sanitization(ansi);
    let installed = match format {
        // Text lines carry what strangers send (a customer's text, a sender id):
        // every control character in them is escaped, so one event is one line.
        LogFormat::Text => builder
            .with_writer(OneLine { inner: writer, format: Escaping::Text { keep_escape: ansi } })
            .finish()
            .with(others_at_most_info)
            .try_init(),
        // JSON escapes C0 itself; the bidi controls and the rest are escaped here.
        LogFormat::Json => builder
            .with_writer(OneLine { inner: writer, format: Escaping::Json })
            .json()
            .flatten_event(true)
            .finish()
            .with(others_at_most_info)
            .try_init(),
    };
    LogGuard { _worker: installed.is_ok().then_some(guard) }
}

/// A writer of log lines that keeps each event on its line and reading as
/// written (SPEC §15): CR, LF and the other control characters (C0, DEL, C1
/// such as NEL, the Unicode line and paragraph separators) and the
/// bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E,
/// U+2066–U+2069, which make a line display other than its bytes) inside an
/// event are written escaped; only the event's final newline is kept. Text
/// lines get `\n`, `\x1b`, `\u{202e}` (ESC kept when the output is coloured
/// for a terminal); JSON lines, whose encoder escapes only C0, get `\u202e`,
/// which is the same string to a JSON reader.
#[derive(Clone)]
struct OneLine<M> {
    inner: M,
    format: Escaping,
}

/// How [`OneLine`] escapes.
#[derive(Clone, Copy, Debug)]
enum Escaping {
    /// Text lines; `keep_escape`: leave ESC for a terminal's colours.
    Text { keep_escape: bool },
    /// JSON lines: escapes inside their strings, as JSON writes them.
    Json,
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for OneLine<M> {
    type Writer = OneLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine { inner: self.inner.make_writer(), format: self.format }
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    /// Takes the whole buffer (the formatter writes one event at a time).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&escape_controls(buf, self.format))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The bidirectional controls and the Unicode line and paragraph separators.
fn is_bidi_or_separator(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `line` with every control and bidi character escaped but a final newline.
fn escape_controls(line: &[u8], format: Escaping) -> std::borrow::Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    // The usual line, ASCII or a message in Chinese, needs no look at characters
    // (decoding every character of a 300-character message cost ~2 % of a
    // callback's CPU, BENCHMARKS.md): one pass over the bytes finds whether it
    // may hold one to escape.
    if !may_need_escaping(body) {
        return std::borrow::Cow::Borrowed(line);
    }
    escape_characters(line, format)
}

/// Whether `body` holds the UTF-8 of a character [`escape_characters`] may
/// escape: a C0 control but tab, or DEL (one byte each), C1 (0xC2 0x80–0x9F),
/// U+061C (0xD8 0x9C), U+200E, U+200F, U+2028–U+202E (0xE2 0x80 …) or
/// U+2066–U+2069 (0xE2 0x81 …). ESC (kept for a terminal) counts: the
/// character look decides. Invalid UTF-8 decodes (lossily) to these
/// characters only where their bytes are.
fn may_need_escaping(body: &[u8]) -> bool {
    // A whole chunk is screened for the bytes that can start such a character
    // without a branch per byte (the compiler makes it a few vector compares);
    // only a chunk holding one is looked at byte by byte. In Chinese text that
    // is one chunk in several (U+2000–U+2FFF punctuation starts with 0xE2).
    const CHUNK: usize = 32;
    let starts_one = |b: u8| (b < 0x20) | (b == 0x7f) | (b == 0xc2) | (b == 0xd8) | (b == 0xe2);
    body.chunks(CHUNK).enumerate().any(|(n, chunk)| {
        chunk.iter().fold(false, |seen, &b| seen | starts_one(b))
            && (n * CHUNK..n * CHUNK + chunk.len()).any(|i| escapes_at(body, i))
    })
}

/// Whether `body[i]` starts a character [`may_need_escaping`] looks for.
fn escapes_at(body: &[u8], i: usize) -> bool {
    match body[i] {
        b'\t' => false,
        0..0x20 | 0x7f => true,
        0xc2 => matches!(body.get(i + 1), Some(0x80..=0x9f)),
        0xd8 => body.get(i + 1) == Some(&0x9c),
        0xe2 => matches!(
            (body.get(i + 1), body.get(i + 2)),
            (Some(0x80), Some(0x8e | 0x8f | 0xa8..=0xae)) | (Some(0x81), Some(0xa6..=0xa9))
        ),
        _ => false,
    }
}

/// [`escape_controls`] looking at every character.
fn escape_characters(line: &[u8], format: Escaping) -> std::borrow::Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let unsafe_char = |c: char| match format {
        Escaping::Text { keep_escape } => {
            c != '\t' && !(keep_escape && c == '\x1b') && (c.is_control() || is_bidi_or_separator(c))
        }
        // The encoder escaped C0 already; outside strings there is only ASCII.
        Escaping::Json => (c.is_control() && c > '\x1f') || is_bidi_or_separator(c),
    };
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        let code = u32::from(c);
        match (format, c) {
            (Escaping::Json, _) => out.push_str(&format!("\\u{code:04x}")),
            (Escaping::Text { .. }, '\n') => out.push_str("\\n"),
            (Escaping::Text { .. }, '\r') => out.push_str("\\r"),
            (Escaping::Text { .. }, _) if code < 0x80 => out.push_str(&format!("\\x{code:02x}")),
            (Escaping::Text { .. }, _) => out.push_str(&format!("\\u{{{code:x}}}")),
        }
    }
    let mut out = out.into_bytes();
    out.extend_from_slice(&line[body.len()..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Escaping = Escaping::Text { keep_escape: false };

    #[test]
    fn bidi_controls_are_escaped_in_text_and_json_lines() {
        let bidi = "\u{061c}\u{200e}\u{200f}\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}\u{2066}\u{2067}\u{2068}\u{2069}";
        let line = format!("INFO text from evil{bidi}resu: 你好\n");
        let text = String::from_utf8(escape_controls(line.as_bytes(), TEXT).into_owned()).expect("UTF-8");
        assert_eq!(
            text,
            "INFO text from evil\\u{61c}\\u{200e}\\u{200f}\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}\\u{2066}\\u{2067}\\u{2068}\\u{2069}resu: 你好\n"
        );
        let message = format!("text from evil{bidi}\u{2028}\u{85}\u{7f}resu: 你好\n\u{1b}");
        let json = format!("{}\n", serde_json::json!({"level": "INFO", "message": message}));
        let escaped = String::from_utf8(escape_controls(json.as_bytes(), Escaping::Json).into_owned()).expect("UTF-8");
        assert!(escaped.contains("evil\\u061c\\u200e") && escaped.contains("\\u202e\\u2066"), "{escaped}");
        assert!(!escaped.trim_end().chars().any(|c| c.is_control() || is_bidi_or_separator(c)), "{escaped}");
        assert_eq!(escaped.matches('\n').count(), 1, "one event, one line");
        let parsed: serde_json::Value = serde_json::from_str(&escaped).expect("still JSON");
        assert_eq!(parsed["message"], message, "the same string to a JSON reader");
        assert!(matches!(escape_controls(b"{\"message\":\"plain\"}\n", Escaping::Json), std::borrow::Cow::Borrowed(_)));
    }

    proptest::proptest! {
        /// The byte look of the usual line decides as the character look would.
        #[test]
        fn the_quick_look_agrees_with_the_character_look(
            line in "(\\PC|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{61c}\\u{2000}-\\u{206f}\\u{2400}你好😀…])*"
        ) {
            for format in [TEXT, Escaping::Text { keep_escape: true }, Escaping::Json] {
                let quick = escape_controls(line.as_bytes(), format);
                proptest::prop_assert_eq!(&*quick, &*escape_characters(line.as_bytes(), format));
                let plain = !line.chars().any(|c| c.is_control() || is_bidi_or_separator(c));
                proptest::prop_assert!(!plain || matches!(quick, std::borrow::Cow::Borrowed(_)));
            }
        }
    }

    /// The screen goes 32 bytes at a time: a character split between two
    /// chunks is found wherever it starts.
    #[test]
    fn a_character_across_a_chunk_border_is_still_escaped() {
        for offset in 0..70 {
            let pad = "a".repeat(offset);
            for evil in ["\u{202e}", "\u{2066}", "\u{85}", "\u{61c}", "\x1b"] {
                let line = format!("INFO {pad}{evil}b\n");
                assert!(may_need_escaping(line.as_bytes()), "{offset} {evil:?}");
                assert!(matches!(escape_controls(line.as_bytes(), TEXT), std::borrow::Cow::Owned(_)), "{offset}");
            }
            let fine = format!("INFO {pad}“…”你好\tb\n");
            assert!(!may_need_escaping(fine.trim_end().as_bytes()), "{offset}");
        }
    }

    #[test]
    fn a_chinese_line_with_emoji_is_written_as_it_is() {
        let line = "INFO text from zhangsan: “你好”，请问报销流程怎么提交？😀 ok…\n".as_bytes();
        assert!(matches!(escape_controls(line, TEXT), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn a_forged_newline_stays_inside_its_line() {
        let line = "INFO kf: 你好\r\n2026-11-28T00:00:00Z ERROR store commit failed\u{2028}\u{85}\x1b[31m\x07\tok\n";
        let escaped = String::from_utf8(escape_controls(line.as_bytes(), TEXT).into_owned()).expect("UTF-8");
        assert_eq!(
            escaped,
            "INFO kf: 你好\\r\\n2026-11-28T00:00:00Z ERROR store commit failed\\u{2028}\\u{85}\\x1b[31m\\x07\tok\n"
        );
        assert_eq!(escaped.matches('\n').count(), 1, "one event, one line");
        assert!(matches!(escape_controls(b"plain line\n", TEXT), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            &*escape_controls(b"\x1b[1mbold\x1b[0m\n", Escaping::Text { keep_escape: true }),
            b"\x1b[1mbold\x1b[0m\n"
        );
    }
}
