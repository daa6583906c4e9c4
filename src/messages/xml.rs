//! A single-pass reader for WeCom's flat XML: one root with text-only children,
//! `<xml><Tag>text</Tag>…</xml>`.
//!
//! Why not serde: this shape needs none of its generality, and the reader is about
//! three times faster on the callback hot path. What it guarantees:
//! - no DTD is accepted (no entity expansion, no external entities);
//! - only the five predefined entities and numeric character references resolve;
//! - a known tag given twice, or holding nested elements, is an error (ambiguous);
//! - unknown tags, nested or not, are skipped;
//! - no recursion: depth is a counter, so deep nesting costs nothing but time.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::ParseError;

/// A struct whose fields are filled from the root's children by tag name.
pub(crate) trait XmlFields: Default {
    /// The slot for `tag`, or `None` for a tag this struct does not keep.
    fn slot(&mut self, tag: &[u8]) -> Option<&mut Option<String>>;
}

/// Declares a struct of `Option<String>` fields, each filled from one tag.
macro_rules! xml_fields {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident = $tag:literal,)* }) => {
        $(#[$meta])*
        #[derive(Default, Debug)]
        $vis struct $name { $(pub(crate) $field: Option<String>,)* }

        impl $crate::messages::xml::XmlFields for $name {
            fn slot(&mut self, tag: &[u8]) -> Option<&mut Option<String>> {
                match tag {
                    $($tag => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use xml_fields;

/// Reads `xml` into `F`. `what` names the document in errors.
pub(crate) fn read<F: XmlFields>(xml: &str, what: &'static str) -> Result<F, ParseError> {
    let fail = |reason: String| ParseError::new(what, reason);
    let mut reader = Reader::from_str(xml);
    let mut fields = F::default();
    let mut depth = 0usize;
    let mut root_closed = false;
    // The child being read: its tag, its text so far, and whether it nests elements.
    let mut tag: Vec<u8> = Vec::new();
    let mut value = String::new();
    let mut nested = false;

    loop {
        let event = reader.read_event().map_err(|e| fail(format!("{e} at byte {}", reader.error_position())))?;
        match event {
            Event::Start(start) => {
                match depth {
                    0 if root_closed => return Err(fail("more than one root element".into())),
                    0 => {}
                    1 => {
                        tag.clear();
                        tag.extend_from_slice(start.name().as_ref());
                        value.clear();
                        nested = false;
                    }
                    _ => nested = true,
                }
                depth += 1;
            }
            Event::Empty(start) => match depth {
                0 if root_closed => return Err(fail("more than one root element".into())),
                0 => root_closed = true,
                1 => assign(&mut fields, start.name().as_ref(), String::new(), false, &fail)?,
                _ => nested = true,
            },
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                match depth {
                    0 => root_closed = true,
                    1 => assign(&mut fields, &tag, std::mem::take(&mut value), nested, &fail)?,
                    _ => {}
                }
            }
            Event::Text(text) => {
                let text = lent_or(xml, &text, || text.decode()).map_err(|e| fail(e.to_string()))?;
                content(&mut value, depth, &text, Content::Text).map_err(fail)?;
            }
            Event::CData(data) => {
                let data = lent_or(xml, &data, || data.decode()).map_err(|e| fail(e.to_string()))?;
                content(&mut value, depth, &data, Content::CData).map_err(fail)?;
            }
            Event::GeneralRef(reference) => {
                if depth < 2 {
                    return Err(fail("entity reference outside any element".into()));
                }
                let resolved = if reference.is_char_ref() {
                    reference.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    let name = reference.decode().map_err(|e| fail(e.to_string()))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_owned)
                };
                let resolved = resolved.ok_or_else(|| fail("unknown entity reference".into()))?;
                if depth == 2 {
                    value.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(fail("a DOCTYPE is not allowed".into())),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof if root_closed => return Ok(fields),
            Event::Eof => return Err(fail("unexpected end of document".into())),
        }
    }
}

/// `bytes` as the part of `xml` they are, when the reader lent them from it:
/// already UTF-8, so not validated again (validating every text and CDATA
/// event of a callback was ~2 % of its CPU, twice: in the route and in the
/// dispatcher, BENCHMARKS.md). `None`: not a part of `xml` on character
/// boundaries, and the caller decodes them.
fn within<'a>(xml: &'a str, bytes: &[u8]) -> Option<&'a str> {
    let start = (bytes.as_ptr() as usize).checked_sub(xml.as_ptr() as usize)?;
    let part = xml.get(start..start.checked_add(bytes.len())?)?;
    (part.as_ptr() == bytes.as_ptr()).then_some(part)
}

/// `bytes` as lent from `xml` (see [`within`]), else as `decode` makes them.
fn lent_or<'a, E>(
    xml: &'a str,
    bytes: &[u8],
    decode: impl FnOnce() -> Result<std::borrow::Cow<'a, str>, E>,
) -> Result<std::borrow::Cow<'a, str>, E> {
    within(xml, bytes).map_or_else(decode, |text| Ok(std::borrow::Cow::Borrowed(text)))
}

/// Text or CDATA: outside any element, only text that is whitespace is allowed.
#[derive(Clone, Copy)]
enum Content {
    Text,
    CData,
}

/// Appends text or CDATA at `depth` to the value of the field being read
/// (depth 2), or refuses it outside any element.
fn content(value: &mut String, depth: usize, text: &str, kind: Content) -> Result<(), String> {
    match (depth, kind) {
        (2, _) => value.push_str(text),
        (0 | 1, Content::Text) if text.trim().is_empty() => {}
        (0 | 1, Content::Text) => return Err("text outside any element".into()),
        (0 | 1, Content::CData) => return Err("CDATA outside any element".into()),
        _ => {}
    }
    Ok(())
}

fn assign<F: XmlFields>(
    fields: &mut F,
    tag: &[u8],
    value: String,
    nested: bool,
    fail: &impl Fn(String) -> ParseError,
) -> Result<(), ParseError> {
    let Some(slot) = fields.slot(tag) else {
        return Ok(());
    };
    let name = || String::from_utf8_lossy(tag).chars().take(40).collect::<String>();
    if nested {
        return Err(fail(format!("<{}> holds nested elements", name())));
    }
    if slot.is_some() {
        return Err(fail(format!("<{}> appears twice", name())));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    xml_fields! {
        struct Sample {
            a = b"A",
            b = b"B",
        }
    }

    fn sample(xml: &str) -> Result<Sample, ParseError> {
        read(xml, "sample")
    }

    #[test]
    fn reads_text_cdata_entities_and_skips_the_unknown() {
        let s = sample(
            "<?xml version=\"1.0\"?><xml><!-- c --><A>x &amp; &#20320;<![CDATA[<y>]]></A><Z><B>no</B></Z><B/></xml>",
        )
        .expect("reads");
        assert_eq!(s.a.as_deref(), Some("x & 你<y>"));
        assert_eq!(s.b.as_deref(), Some(""), "nested B under an unknown tag is not B");
    }

    #[test]
    fn refuses_what_is_ambiguous_or_dangerous() {
        for (xml, reason) in [
            ("<xml><A>1</A><A>2</A></xml>", "appears twice"),
            ("<xml><A><i>1</i></A></xml>", "nested"),
            ("<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><A>&e;</A></xml>", "DOCTYPE"),
            ("<xml><A>&e;</A></xml>", "unknown entity"),
            ("<xml><A>1</A></xml><xml/>", "more than one root"),
            ("<xml><A>1</A>", "unexpected end"),
            ("", "unexpected end"),
            ("<xml><A>1</B></xml>", "sample"),
            ("junk<xml/>", "text outside"),
        ] {
            let error = sample(xml).expect_err(xml).to_string();
            assert!(error.contains(reason), "{xml}: {error}");
        }
    }

    proptest::proptest! {
        /// Text and CDATA in any script (lent from the document, not decoded
        /// again) read exactly as written.
        #[test]
        fn text_and_cdata_in_any_script_read_as_written(text in "[^<&\\]]{0,40}", data in "[^\\]]{0,40}") {
            let s = sample(&format!("<xml><A>{text}</A><B><![CDATA[{data}]]></B></xml>")).expect("reads");
            proptest::prop_assert_eq!(s.a.as_deref(), Some(text.as_str()));
            proptest::prop_assert_eq!(s.b.as_deref(), Some(data.as_str()));
        }
    }

    #[test]
    fn deep_nesting_of_unknown_tags_is_skipped_without_recursion() {
        let deep = format!("<xml><A>ok</A><Z>{}{}</Z></xml>", "<n>".repeat(50_000), "</n>".repeat(50_000));
        assert_eq!(sample(&deep).expect("reads").a.as_deref(), Some("ok"));
    }
}
