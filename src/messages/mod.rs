//! The typed messages WeCom sends, parsed once and classified.
//!
//! Owns: the outer callback envelope ([`envelope`]) and the decrypted app XML
//! ([`app`]). Unknown message or event types are kept, never a parse failure:
//! WeCom adds types faster than any client learns them.
//!
//! Deliberately not here: decryption (see `crypto`), I/O, and what to do with a
//! message (the dispatcher's job).

pub mod app;
pub mod envelope;
pub mod kf;
mod xml;

pub use app::{AppEvent, AppMessage, AppMessageKind};
pub use envelope::CallbackEnvelope;

/// Cuts `text` to at most `max` characters (never inside one), marking the cut.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// A decrypted payload that is not well-formed XML of the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("{what} is not well-formed XML: {reason}")]
pub struct ParseError {
    what: &'static str,
    reason: String,
}

impl ParseError {
    fn new(what: &'static str, reason: String) -> Self {
        // quick-xml's messages can quote input; keep only the first line, bounded.
        let first_line = reason.lines().next().unwrap_or_default();
        Self { what, reason: clip(first_line, 160).into_owned() }
    }

    fn not_utf8(what: &'static str) -> Self {
        Self { what, reason: "body is not UTF-8".to_owned() }
    }

    fn missing(what: &'static str, element: &'static str) -> Self {
        Self { what, reason: format!("<{element}> is missing or empty") }
    }
}
