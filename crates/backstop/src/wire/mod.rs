//! Wire formats: one file per format, each with its serde types and its
//! conversions to and from [`crate::chat`].
//!
//! Every format module offers the same functions:
//! - `decode_request(&Value) -> Result<chat::Request, WireError>`: a client's body (ingress);
//! - `encode_request(&chat::Request, upstream_model) -> Value`: a provider's body (egress);
//! - `decode_response(&[u8]) -> Result<chat::Response, WireError>`: a provider's answer;
//! - `encode_response(&chat::Response) -> Value`: the client's answer;
//! - `decode_error(&[u8]) -> Option<UpstreamErrorBody>` and `encode_error(&ClientError) -> Value`;
//! - `StreamDecoder` (provider SSE → `StreamEvent`s) and `StreamEncoder` (`StreamEvent`s → client SSE bytes).
//!
//! `gemini` is egress only (no client speaks it): it has `encode_request`,
//! `decode_response`, `decode_error` and `StreamDecoder`.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub(crate) mod scan;

use serde_json::Value;

/// Replace the `model` field of a same-format body, leaving everything else as the client sent it.
pub fn with_model(body: &Value, model: &str) -> Value {
    let mut body = body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), Value::String(model.to_string()));
    }
    body
}

/// An answer's id in the shape of the client's format: `id` itself when it already
/// starts with `prefix`, else `prefix` and the letters and digits of `id` (after the
/// other format's prefix `other`), or `synthetic` when none are left.
pub(crate) fn reshape_id(id: &str, prefix: &str, other: &str, synthetic: &str) -> String {
    if id.starts_with(prefix) {
        return id.to_string();
    }
    let core = id.strip_prefix(other).unwrap_or(id);
    let mut out = String::with_capacity(prefix.len() + core.len());
    out.push_str(prefix);
    out.extend(
        core.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(char::from),
    );
    if out.len() == prefix.len() {
        return synthetic.to_string();
    }
    out
}

/// A same-format body without a round trip through `serde_json::Value`: the client's
/// bytes, with each top-level field of `fields` (name, JSON text of its new value)
/// replaced where it stands or, when absent, added at the end in the order given —
/// what [`with_model`] and inserting the fields into the `Value` would give, but the
/// rest of the body (a long prompt) is copied byte for byte instead of re-serialized.
///
/// `None` when `body` is not one JSON object or repeats a top-level key (the caller then
/// goes through a `Value`, whose last-one-wins rule a splice could not follow).
///
/// ```
/// use backstop::wire::splice_fields;
/// let body = br#"{"model": "default", "messages": [{"role":"user","content":"hi"}]}"#;
/// let out = splice_fields(body, &[("model", r#""gpt-4o""#), ("stream", "true")]).unwrap();
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     r#"{"model": "gpt-4o", "messages": [{"role":"user","content":"hi"}],"stream":true}"#
/// );
/// ```
pub fn splice_fields(body: &[u8], fields: &[(&str, &str)]) -> Option<Vec<u8>> {
    // Walked with the strict cursor (no allocation but for escaped keys): each top-level
    // key with the byte range of its value.
    let text = std::str::from_utf8(body).ok()?;
    let mut c = scan::Cursor::new(text);
    let mut entries: Vec<(std::borrow::Cow<'_, str>, usize, usize)> = Vec::new();
    c.object(|c, key| {
        let key = key.text()?;
        c.peek()?;
        let start = c.pos();
        c.skip()?;
        entries.push((key, start, c.pos()));
        Some(())
    })?;
    c.end()?;
    let mut keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_ref()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    splice_at(body, fields, entries.is_empty(), |name| {
        Some(
            entries
                .iter()
                .find(|(k, _, _)| k.as_ref() == name)
                .map(|&(_, start, end)| start..end),
        )
    })
}

/// [`splice_fields`] on a body whose top-level fields were already located (by
/// [`openai::decode_request_fast`]): `None` when the spans do not tell where one of
/// `fields` stands.
pub fn splice_spans(
    body: &[u8],
    spans: &openai::Spans,
    fields: &[(&str, &str)],
) -> Option<Vec<u8>> {
    splice_at(body, fields, spans.empty, |name| spans.of(name))
}

/// Replace or append `fields` in a JSON object with no repeated key: `find` gives the
/// value range of a top-level field (`Some(None)` when absent, `None` when unknown),
/// `empty` whether the object has no field.
fn splice_at(
    body: &[u8],
    fields: &[(&str, &str)],
    empty: bool,
    find: impl Fn(&str) -> Option<Option<std::ops::Range<usize>>>,
) -> Option<Vec<u8>> {
    // (start, end, new text) of every value replaced in place, in body order; the
    // others are appended (found again below, in the order given).
    let mut replace: Vec<(usize, usize, &str)> = Vec::with_capacity(fields.len());
    let mut extra = 0;
    for &(name, value) in fields {
        match find(name)? {
            Some(r) => replace.push((r.start, r.end, value)),
            None => extra += name.len() + value.len() + 8,
        }
    }
    replace.sort_unstable_by_key(|r| r.0);
    // The object's closing brace: the last byte that is not whitespace.
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[close] != b'}' {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + extra + 64);
    let mut at = 0;
    for (start, end, value) in replace {
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(value.as_bytes());
        at = end;
    }
    out.extend_from_slice(body.get(at..close)?);
    let mut empty = empty;
    for &(name, value) in fields {
        if find(name)?.is_some() {
            continue;
        }
        if !empty {
            out.push(b',');
        }
        empty = false;
        push_json_str(&mut out, name);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&body[close..]);
    Some(out)
}

/// How serde_json escapes each byte of a string: 0 for none, else the letter after the
/// backslash (`u` for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// `s` as a JSON string, quotes included, as serde_json writes it.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    push_json_str_contents(out, s);
    out.push(b'"');
}

/// `s` escaped as serde_json escapes a string, without the quotes.
pub(crate) fn push_json_str_contents(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    let mut start = 0;
    // The bytes to escape are [`scan::stop_at`]'s stops: plain runs are skipped a word
    // (in a long string, a block) at a time.
    while let Some(i) = scan::stop_at(b, start) {
        let c = b[i];
        let esc = ESCAPE[usize::from(c)];
        out.extend_from_slice(&b[start..i]);
        if esc == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// `n` in decimal, as `n.to_string()` writes it (heads and bodies written without
/// `format!`; also used by the server's HTTP/1 loop).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The stop sequences an API that takes at most `max` is sent: the first `max`, with a
/// warning, rather than a request it would refuse (other models of the chain may take
/// them all).
pub(crate) fn capped_stop<'a>(stop: &'a [String], max: usize, api: &str) -> &'a [String] {
    if stop.len() > max {
        tracing::warn!(
            given = stop.len(),
            "{api} takes at most {max} stop sequences: sending the first {max}"
        );
    }
    &stop[..stop.len().min(max)]
}

/// The events of a chunk that carries only `text` (none for empty text, as the
/// decoders give none).
pub(crate) fn text_events(text: std::borrow::Cow<'_, str>) -> Vec<crate::chat::StreamEvent> {
    if text.is_empty() {
        return Vec::new();
    }
    vec![crate::chat::StreamEvent::TextDelta {
        text: text.into_owned(),
    }]
}

/// Test support: `text` with one edit at `at` (0: the character removed, 1: doubled,
/// else replaced by `with`), for the proptests that check the fast decoders on
/// corrupted chunks.
#[cfg(test)]
pub(crate) fn one_edit(text: &str, at: proptest::sample::Index, edit: u8, with: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = at.index(chars.len());
    match edit {
        0 => {
            chars.remove(i);
        }
        1 => chars.insert(i, chars[i]),
        _ => chars[i] = with,
    }
    chars.into_iter().collect()
}

/// Test support: the characters [`one_edit`] puts in, the ones that matter to JSON.
#[cfg(test)]
pub(crate) const EDIT_CHARS: [char; 19] = [
    '"', '\\', '{', '}', '[', ']', ',', ':', ' ', '0', '1', '-', '.', 'e', 'n', 'u', 'x', '\u{1}',
    '\u{e9}',
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Strings and numbers are written exactly as serde_json writes them: every
        /// control character, quotes, backslashes, DEL, multi-byte UTF-8.
        #[test]
        fn json_strings_and_numbers_are_serde_json_s(
            s in "[\\x00-\\x7f\u{80}\u{e9}\u{2028}\u{20ac}\u{1d11e}a-z\"\\\\]{0,40}",
            n in any::<u64>(),
        ) {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
            let mut out = Vec::new();
            push_u64(&mut out, n);
            prop_assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }

        /// Long strings (a prompt, an answer: runs of plain text past the block scan's
        /// threshold, escapes here and there) too.
        #[test]
        fn long_json_strings_are_serde_json_s(
            s in "([ -!#-\\[\\]-~\\x7f\u{e9}\u{20ac}\u{1d11e}]{0,90}[\\x00-\\x1f\"\\\\]?){0,6}",
        ) {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn numbers_at_the_edges_are_written_as_to_string_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    /// What the `Value` path sends: `with_model`, then the fields inserted in order.
    fn via_value(body: &[u8], fields: &[(&str, &str)]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        let model: Value = serde_json::from_str(fields[0].1).unwrap();
        let mut v = with_model(&v, model.as_str().unwrap());
        let obj = v.as_object_mut().unwrap();
        for (k, text) in &fields[1..] {
            obj.insert((*k).into(), serde_json::from_str(text).unwrap());
        }
        v.to_string()
    }

    fn via_splice(body: &[u8], fields: &[(&str, &str)]) -> String {
        let out = splice_fields(body, fields).unwrap();
        // Same members, same order, same values once parsed.
        serde_json::from_slice::<Value>(&out).unwrap().to_string()
    }

    #[test]
    fn splice_gives_what_the_value_path_gives() {
        let stream = [
            ("model", r#""gpt-4o""#),
            ("stream", "true"),
            ("stream_options", r#"{"include_usage":true}"#),
        ];
        let bodies: [&[u8]; 8] = [
            br#"{"model":"default","messages":[{"role":"user","content":"hi"}]}"#,
            br#"{"messages":[],"model":"x","stream":false,"temperature":0.5}"#,
            br#"  { "temperature" : 1 , "model" : "a\"b" , "stream_options" : {"include_usage": false} }  "#,
            br#"{}"#,
            b"{\n}\n",
            br#"{"\u006dodel":"escaped key","messages":[]}"#,
            br#"{"messages":[{"content":"caf\u00e9 \ud83d\ude00 \n {\"model\":1}"}],"model":null}"#,
            br#"{"a":{"model":"nested stays"},"b":[1,2,{"stream":1}]}"#,
        ];
        for body in bodies {
            for n in 1..=stream.len() {
                let fields = &stream[..n];
                assert_eq!(
                    via_splice(body, fields),
                    via_value(body, fields),
                    "body {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn splice_copies_the_rest_byte_for_byte() {
        let body = br#"{"model": "m", "x": 1.000000000000000000001, "big": 123456789012345678901234567890}"#;
        let out = splice_fields(body, &[("model", r#""n""#)]).unwrap();
        assert_eq!(
            out,
            br#"{"model": "n", "x": 1.000000000000000000001, "big": 123456789012345678901234567890}"#
        );
    }

    #[test]
    fn splice_declines_what_it_cannot_do_exactly() {
        let f = [("model", r#""m""#)];
        assert!(splice_fields(br#"{"model":"a","model":"b"}"#, &f).is_none());
        assert!(splice_fields(br#"{"x":1,"x":2}"#, &f).is_none());
        assert!(splice_fields(br#"[1]"#, &f).is_none());
        assert!(splice_fields(br#"{"model":"a"} x"#, &f).is_none());
        assert!(splice_fields(b"", &f).is_none());
    }

    proptest! {
        #[test]
        fn splice_matches_the_value_path(
            keys in proptest::collection::vec("(model|stream|stream_options|messages|[a-z]{1,6})", 0..6),
            text in ".{0,30}",
            ws in "[ \n\t]{0,2}",
        ) {
            let mut body = String::from("{");
            let mut seen = std::collections::HashSet::new();
            for (i, k) in keys.iter().filter(|k| seen.insert(k.as_str())).enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&ws);
                body.push_str(&serde_json::to_string(k).unwrap());
                body.push_str(&ws);
                body.push(':');
                body.push_str(&serde_json::to_string(&json_of(&text, i)).unwrap());
            }
            body.push_str(&ws);
            body.push('}');
            let fields = [("model", r#""up""#), ("stream", "true")];
            prop_assert_eq!(via_splice(body.as_bytes(), &fields), via_value(body.as_bytes(), &fields));
        }
    }

    fn json_of(text: &str, i: usize) -> Value {
        match i % 3 {
            0 => Value::String(text.to_string()),
            1 => serde_json::json!([text, {"model": text}]),
            _ => serde_json::json!(i),
        }
    }
}
