//! Shaping: every text the appliance sends (help, welcome, forward replies, the
//! send API) made to fit WeChat (SPEC §10). WeChat shows Markdown as the symbols
//! it is written with, so it is flattened into plain text; WeCom refuses a text
//! over 2048 bytes, so a longer one is split into parts sent in order.
//!
//! Pure functions of their input: no I/O, no panics on any input. Deliberately not
//! here: how many parts may be sent (the kf rules) and sending them (the outbox).

/// The most UTF-8 bytes WeCom takes in one text message.
pub const MAX_PART_BYTES: usize = 2048;

/// `text` flattened and split: the parts to send, in order; none empty.
pub fn shape(text: &str) -> Vec<String> {
    let flat = flatten_markdown(text);
    split(&flat, MAX_PART_BYTES).into_iter().map(str::to_owned).collect()
}

/// Splits `text` into parts of at most `max` UTF-8 bytes (at least 4, the longest
/// character), never inside a character, preferring to end a part after a
/// paragraph break, then a line break, then the end of a sentence, then a space.
/// The parts concatenated are `text` exactly.
pub fn split(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let (part, tail) = rest.split_at(cut_point(rest, 0, max));
        parts.push(part);
        rest = tail;
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Where to end the first part of `text` so that it is at most `max` UTF-8 bytes
/// and, where a character boundary allows, at least `min` (all of it when it
/// fits): just after the last
/// paragraph break, line break, sentence end or space in that range (in that
/// order of preference), else at `max`. With `min` 0 it is where [`split`] ends
/// its first part.
pub(crate) fn cut_point(text: &str, min: usize, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let end = floor_char_boundary(text, max.max(4));
    let mut start = min.min(end);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let start = start.min(end);
    last_break(&text[start..end]).map_or(end, |at| start + at)
}

/// The largest character boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Where to end a part inside `window`: just after its last paragraph break, line
/// break, sentence end or space, in that order of preference; `None` when it has
/// none past its start.
fn last_break(window: &str) -> Option<usize> {
    let after = |found: Option<usize>, len: usize| found.map(|at| at + len).filter(|&end| end > 0);
    after(window.rfind("\n\n"), 2)
        .or_else(|| after(window.rfind('\n'), 1))
        .or_else(|| {
            window
                .char_indices()
                .rev()
                .find(|(_, c)| matches!(c, '。' | '！' | '？' | '；' | '.' | '!' | '?' | ';'))
                .map(|(at, c)| at + c.len_utf8())
        })
        .or_else(|| window.char_indices().rev().find(|(_, c)| c.is_whitespace()).map(|(at, c)| at + c.len_utf8()))
        .filter(|&end| end > 0)
}

/// Markdown that WeChat would show as symbols, as plain text: `**b**` → `b`,
/// `# T` → `T`, `[t](u)` → `t (u)`, `- item` → `• item`, numbered items kept,
/// code fences and quote markers dropped. Idempotent: flattening twice changes
/// nothing more.
pub fn flatten_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut first = true;
    for line in text.split('\n') {
        let Some(line) = flatten_line(line) else { continue };
        if !first {
            out.push('\n');
        }
        first = false;
        out.push_str(&line);
    }
    out
}

/// One line flattened; `None` for a line that is only Markdown (a code fence).
///
/// Rules are applied until none changes the line any more: each removes Markdown
/// punctuation (`# > * _ ~ ` [ ] - +`) and none adds any, so this ends, and
/// flattening the result again changes nothing.
fn flatten_line(line: &str) -> Option<String> {
    let mut line = line.to_owned();
    loop {
        let next = flatten_line_once(&line)?;
        if next == line {
            return Some(line);
        }
        line = next;
    }
}

fn flatten_line_once(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
        return None;
    }
    let indent = &line[..line.len() - trimmed.len()];
    let mut body = trimmed;
    // What stands before the text: quote markers and a heading's hashes.
    loop {
        let before = body;
        while let Some(rest) = body.strip_prefix('>') {
            body = rest.trim_start();
        }
        let hashes = body.len() - body.trim_start_matches('#').len();
        if (1..=6).contains(&hashes) && body[hashes..].starts_with([' ', '\t']) {
            body = body[hashes..].trim_start();
        }
        if body == before {
            break;
        }
    }
    let bullet = ["- ", "* ", "+ "].iter().find_map(|marker| body.strip_prefix(marker));
    let (prefix, body) = match bullet {
        Some(rest) => ("• ", rest.trim_start()),
        None => ("", body),
    };
    Some(format!("{indent}{prefix}{}", inline(body)))
}

/// Inline Markdown: emphasis markers, code ticks, links and images.
fn inline(text: &str) -> String {
    let mut text = links(text);
    for marker in ["**", "__", "~~", "*", "`"] {
        text = strip_pairs(&text, marker);
    }
    text
}

/// `[t](u)` → `t (u)` and `![a](u)` → `a (u)`, left to right.
fn links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(link) = parse_link(&rest[open..]) else {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        let before = &rest[..open];
        out.push_str(before.strip_suffix('!').unwrap_or(before));
        out.push_str(link.text);
        if !link.url.is_empty() && link.url != link.text {
            out.push_str(" (");
            out.push_str(link.url);
            out.push(')');
        }
        rest = &rest[open + link.len..];
    }
    out.push_str(rest);
    out
}

struct Link<'a> {
    text: &'a str,
    url: &'a str,
    /// Bytes from `[` to the closing `)`, inclusive.
    len: usize,
}

/// A link at the start of `text` (which starts with `[`), without nesting.
fn parse_link(text: &str) -> Option<Link<'_>> {
    let close = text.find(']')?;
    let inner = &text[1..close];
    if inner.contains('[') || inner.trim().is_empty() || !text[close + 1..].starts_with('(') {
        return None;
    }
    let url_end = text[close + 2..].find(')')? + close + 2;
    let url = &text[close + 2..url_end];
    if url.contains(['(', '[', ']', ' ']) {
        return None;
    }
    Some(Link { text: inner, url, len: url_end + 1 })
}

/// Removes `marker` pairs around non-blank text (`**b**` → `b`), left to right;
/// a lone marker, or one against white space (`2 * 3`), stays.
fn strip_pairs(text: &str, marker: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(marker) {
        let after = &rest[open + marker.len()..];
        let close = after.find(marker).filter(|&close| {
            let inner = &after[..close];
            !inner.is_empty()
                && !inner.starts_with(char::is_whitespace)
                && !inner.ends_with(char::is_whitespace)
                && !inner.contains(marker.chars().next().unwrap_or('*'))
        });
        match close {
            Some(close) => {
                out.push_str(&rest[..open]);
                out.push_str(&after[..close]);
                rest = &after[close + marker.len()..];
            }
            None => {
                out.push_str(&rest[..open + marker.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_examples_become_plain_text() {
        assert_eq!(flatten_markdown("**b**"), "b");
        assert_eq!(flatten_markdown("# T"), "T");
        assert_eq!(flatten_markdown("[t](u)"), "t (u)");
        assert_eq!(flatten_markdown("- one\n- two\n1. first"), "• one\n• two\n1. first");
        assert_eq!(
            flatten_markdown("## 结果\n```\ncode\n```\n> 引用 *强调* 和 `代码`"),
            "结果\ncode\n引用 强调 和 代码"
        );
        assert_eq!(flatten_markdown("2 * 3 * 4 = 24, a_b_c"), "2 * 3 * 4 = 24, a_b_c", "arithmetic stays");
    }

    #[test]
    fn a_long_chinese_text_splits_at_paragraphs_then_sentences_and_rejoins() {
        let paragraph = "这是一个很长的段落。".repeat(80);
        let text = format!("{paragraph}\n\n{paragraph}");
        let parts = split(&text, MAX_PART_BYTES);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.len() <= MAX_PART_BYTES && !p.is_empty()));
        assert_eq!(parts.concat(), text);
        assert_eq!(parts[0].chars().last(), Some('。'), "a sentence end, not mid-sentence");
        let short = "第一段\n\n第二段";
        assert_eq!(split(short, 12), vec!["第一段\n\n", "第二段"], "the paragraph break first");
    }

    #[test]
    fn a_cut_point_kept_past_a_minimum_takes_the_best_break_in_its_range() {
        let text = "第一段。\n\n第二段很长。第三句";
        assert_eq!(&text[..cut_point(text, 0, 30)], "第一段。\n\n", "the paragraph break when it may");
        assert_eq!(&text[..cut_point(text, 15, 35)], "第一段。\n\n第二段很长。", "else a sentence in range");
        assert_eq!(&text[..cut_point(text, 33, 37)], "第一段。\n\n第二段很长。第", "else at most max");
        assert_eq!(cut_point(text, 13, text.len()), text.len(), "all of it when it fits");
    }

    #[test]
    fn a_text_without_any_break_is_cut_between_characters() {
        let text = "字".repeat(1000);
        let parts = split(&text, 100);
        assert!(parts.iter().all(|p| p.len() <= 100 && p.len() % 3 == 0));
        assert_eq!(parts.concat(), text);
    }
}
