//! A client's Chat Completions body decoded straight from its bytes, for the common
//! shape (text messages, the usual sampling fields): no `serde_json::Value` is built,
//! and the top-level fields the engine splices (`model`, `stream`, `stream_options`)
//! are located on the way.
//!
//! [`decode_request_fast`] accepts only bodies it decodes exactly as
//! `decode_request(&serde_json::from_slice(body)?)` would, and declines (`None`)
//! everything else: anything unusual (tools, content parts, a `tool` message, escaped
//! keys, a repeated key, a malformed or doubtful value) goes to the general path,
//! which also writes every error. A differential test compares the two.

use std::ops::Range;

use serde_json::Value;

use crate::chat::{Message, Part, Request, Role, SystemBlock};
use crate::wire::scan::{Cursor, RawStr};

/// What the engine reads of a client's body besides its neutral request: the fields
/// only a same-format upstream honours, and where the spliced fields stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// `n` as an unsigned integer, else 1.
    pub choices: u64,
    /// `logprobs: true`.
    pub logprobs: bool,
    /// A `stream_options` field is present (even `null`).
    pub stream_options: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// Where the top-level fields stand in the body, when it was decoded from bytes.
    pub spans: Option<Spans>,
}

/// Where the top-level fields a same-format body has spliced stand in it (the body has
/// no repeated key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spans {
    /// The value ranges of `model`, `stream` and `stream_options` when present.
    pub model: Option<Range<usize>>,
    pub stream: Option<Range<usize>>,
    pub stream_options: Option<Range<usize>>,
    /// Whether the object has no field at all.
    pub empty: bool,
    /// How deeply objects and arrays nest in the body (the top-level object is 1).
    pub depth: usize,
}

impl Spans {
    /// The value range of top-level field `name`: `Some(None)` when it is absent, `None`
    /// when these spans do not tell.
    pub fn of(&self, name: &str) -> Option<Option<Range<usize>>> {
        match name {
            "model" => Some(self.model.clone()),
            "stream" => Some(self.stream.clone()),
            "stream_options" => Some(self.stream_options.clone()),
            _ => None,
        }
    }
}

impl RequestFacts {
    /// The facts of a parsed body.
    pub fn of(body: &Value) -> Self {
        RequestFacts {
            choices: body.get("n").and_then(Value::as_u64).unwrap_or(1),
            logprobs: body.get("logprobs") == Some(&Value::Bool(true)),
            stream_options: body.get("stream_options").is_some(),
            include_usage: super::include_usage(body),
            spans: None,
        }
    }
}

/// Fields the fast decoder reads; each may appear once.
#[derive(Clone, Copy)]
enum Known {
    Model = 0,
    Messages,
    MaxTokens,
    MaxCompletionTokens,
    Temperature,
    TopP,
    Stream,
    StreamOptions,
    User,
    N,
    Logprobs,
    Stop,
}

/// Fields `decode_request` reads that this decoder leaves to it.
const DECLINED: [&str; 8] = [
    "functions",
    "function_call",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "metadata",
    "reasoning_effort",
];

/// Decode the common shape of an OpenAI client's body, or `None` (see the module doc).
pub fn decode_request_fast(body: &[u8]) -> Option<(Request, RequestFacts)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut c = Cursor::new(text);
    let mut req = Request::default();
    let mut spans = Spans {
        empty: true,
        depth: 1,
        ..Spans::default()
    };
    // The deepest nesting of a value below the top level (the body's own is 1).
    let mut depth = 1usize;
    let mut facts = RequestFacts {
        choices: 1,
        logprobs: false,
        stream_options: false,
        include_usage: false,
        spans: None,
    };
    let mut seen = 0u32;
    let mut others: Vec<&str> = Vec::new();
    let (mut max_tokens, mut max_completion) = (None, None);
    c.object(|c, key| {
        let key = key.plain()?;
        spans.empty = false;
        let known = match key {
            "model" => Known::Model,
            "messages" => Known::Messages,
            "max_tokens" => Known::MaxTokens,
            "max_completion_tokens" => Known::MaxCompletionTokens,
            "temperature" => Known::Temperature,
            "top_p" => Known::TopP,
            "stream" => Known::Stream,
            "stream_options" => Known::StreamOptions,
            "user" => Known::User,
            "n" => Known::N,
            "logprobs" => Known::Logprobs,
            "stop" => Known::Stop,
            k if DECLINED.contains(&k) => return None,
            other => {
                others.push(other);
                checked_value(c, text, 1, &mut depth)?;
                return Some(());
            }
        };
        let bit = 1u32 << known as u32;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        c.peek()?;
        let start = c.pos();
        match known {
            Known::Model => {
                let model = c.string()?.text()?;
                if model.is_empty() {
                    return None;
                }
                req.model = model.into_owned();
                spans.model = Some(start..c.pos());
            }
            Known::Messages => messages(c, text, &mut req, &mut depth)?,
            Known::MaxTokens => max_tokens = opt_u32(c)?,
            Known::MaxCompletionTokens => max_completion = opt_u32(c)?,
            Known::Temperature => req.temperature = opt_f64(c, text, &mut depth)?,
            Known::TopP => req.top_p = opt_f64(c, text, &mut depth)?,
            Known::Stream => {
                req.stream = opt_bool(c, text, &mut depth)?.unwrap_or(false);
                spans.stream = Some(start..c.pos());
            }
            Known::User => {
                req.user = RawStr::opt_text(c.opt_string()?)?.map(|s| s.into_owned());
            }
            Known::StreamOptions => {
                let v = checked_value(c, text, 1, &mut depth)?;
                facts.stream_options = true;
                facts.include_usage = v
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                spans.stream_options = Some(start..c.pos());
            }
            Known::Stop => req.stop = stop(c, &mut depth)?,
            Known::N => {
                facts.choices = checked_value(c, text, 1, &mut depth)?.as_u64().unwrap_or(1);
            }
            Known::Logprobs => {
                facts.logprobs = checked_value(c, text, 1, &mut depth)? == Value::Bool(true);
            }
        }
        Some(())
    })?;
    c.end()?;
    let required = (1 << Known::Model as u32) | (1 << Known::Messages as u32);
    if seen & required != required {
        return None;
    }
    // A repeated key: serde keeps the last one, a splice would keep both.
    others.sort_unstable();
    if others.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    req.max_tokens = max_completion.or(max_tokens);
    spans.depth = depth;
    facts.spans = Some(spans);
    Some((req, facts))
}

/// The next value, checked by serde_json itself (the cursor skips and bounds it first):
/// what it accepts, serde_json accepts in the whole body, and the other way round.
/// `depth` rises to the value's nesting below `level` (the nesting of its container).
fn checked_value(c: &mut Cursor<'_>, text: &str, level: usize, depth: &mut usize) -> Option<Value> {
    c.peek()?;
    let start = c.pos();
    c.skip()?;
    let value = text.get(start..c.pos())?;
    *depth = (*depth).max(level + nesting(value.as_bytes()));
    serde_json::from_str(value).ok()
}

/// How deeply objects and arrays nest in a valid JSON value (0 for a scalar): brackets
/// counted outside strings.
fn nesting(value: &[u8]) -> usize {
    if !matches!(value.first(), Some(b'{' | b'[')) {
        return 0;
    }
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => {
                // To the closing quote, stepping over escapes.
                i += 1;
                while i < value.len() && value[i] != b'"' {
                    i += if value[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

fn opt_u32(c: &mut Cursor<'_>) -> Option<Option<u32>> {
    match c.opt_u64()? {
        None => Some(None),
        Some(n) => u32::try_from(n).ok().map(Some),
    }
}

/// A number as serde_json reads it (its own float parsing), or `null`.
fn opt_f64(c: &mut Cursor<'_>, text: &str, depth: &mut usize) -> Option<Option<f64>> {
    if c.null() {
        return Some(None);
    }
    if !matches!(c.peek()?, b'-' | b'0'..=b'9') {
        return None;
    }
    if let Some(f) = plain_decimal(text.as_bytes().get(c.pos()..)?) {
        c.skip()?;
        return Some(Some(f));
    }
    checked_value(c, text, 1, depth)?.as_f64().map(Some)
}

/// A number written `int.frac` (no sign, no exponent, at most 15 digits in all, then a
/// delimiter) as serde_json reads it: the digits as an integer (exact in an `f64`),
/// divided by the power of ten of the fraction's length (exact too), as its
/// `f64_from_parts` does. `None` for any other number (serde_json reads those).
fn plain_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let int_len = b.iter().position(|c| !c.is_ascii_digit())?;
    // One digit at least, and no leading zero before another digit.
    if int_len == 0 || (int_len > 1 && b[0] == b'0') || b[int_len] != b'.' {
        return None;
    }
    let frac = &b[int_len + 1..];
    let frac_len = frac
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(frac.len());
    if frac_len == 0 || int_len + frac_len > 15 {
        return None;
    }
    if let Some(&next) = frac.get(frac_len)
        && !matches!(next, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
    {
        return None;
    }
    let digits = b[..int_len].iter().chain(&frac[..frac_len]);
    let significand = digits.fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(significand as f64 / POW10[frac_len])
}

fn opt_bool(c: &mut Cursor<'_>, text: &str, depth: &mut usize) -> Option<Option<bool>> {
    if c.null() {
        return Some(None);
    }
    match checked_value(c, text, 1, depth)? {
        Value::Bool(b) => Some(Some(b)),
        _ => None,
    }
}

/// `stop`: a string, an array of strings, or `null`.
fn stop(c: &mut Cursor<'_>, depth: &mut usize) -> Option<Vec<String>> {
    if c.null() {
        return Some(Vec::new());
    }
    if c.peek()? == b'"' {
        return Some(vec![c.string()?.text()?.into_owned()]);
    }
    *depth = (*depth).max(2);
    let mut out = Vec::new();
    c.array(|c| {
        out.push(c.string()?.text()?.into_owned());
        Some(())
    })?;
    Some(out)
}

/// `messages`: text-only system, developer, user and assistant messages.
fn messages(c: &mut Cursor<'_>, text: &str, req: &mut Request, depth: &mut usize) -> Option<()> {
    *depth = (*depth).max(2);
    c.array(|c| {
        *depth = (*depth).max(3);
        let mut role: Option<&str> = None;
        // `Some(None)`: written as `null`.
        let mut content: Option<Option<String>> = None;
        let mut name: Option<Option<String>> = None;
        c.object(|c, key| match key.plain()? {
            "role" if role.is_none() => {
                role = Some(c.string()?.plain()?);
                Some(())
            }
            "content" if content.is_none() => {
                let s = c.opt_string()?;
                content = Some(RawStr::opt_text(s)?.map(|s| s.into_owned()));
                Some(())
            }
            "name" if name.is_none() => {
                let s = c.opt_string()?;
                name = Some(RawStr::opt_text(s)?.map(|s| s.into_owned()));
                Some(())
            }
            "role" | "content" | "name" | "refusal" | "tool_calls" | "function_call"
            | "tool_call_id" => None,
            _ => checked_value(c, text, 3, depth).map(drop),
        })?;
        let name = name.flatten();
        match role? {
            "system" | "developer" => req.system.push(SystemBlock {
                text: content.flatten()?,
            }),
            "user" => req.messages.push(Message {
                role: Role::User,
                content: vec![Part::Text {
                    text: content.flatten()?,
                }],
                name,
            }),
            "assistant" => req.messages.push(Message {
                role: Role::Assistant,
                content: match content.flatten() {
                    Some(text) if !text.is_empty() => vec![Part::Text { text }],
                    _ => Vec::new(),
                },
                name,
            }),
            _ => return None,
        }
        Some(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openai::decode_request;

    const BENCH: &str = r#"{"model": "oa/m", "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "lorem ipsum"}], "max_tokens": 256, "temperature": 0.2}"#;

    #[test]
    fn the_common_shape_is_read_without_a_value() {
        let (req, facts) = decode_request_fast(BENCH.as_bytes()).unwrap();
        assert_eq!(req.model, "oa/m");
        assert_eq!(req.system[0].text, "You are a helpful assistant.");
        assert_eq!(req.max_tokens, Some(256));
        assert_eq!(req.temperature, Some(0.2));
        assert_eq!(facts.choices, 1);
        let spans = facts.spans.unwrap();
        assert_eq!(&BENCH[spans.model.unwrap()], r#""oa/m""#);
        assert_eq!(spans.stream, None);
    }

    /// What the general path makes of a body: its request and facts, or `None` when it
    /// refuses it.
    fn general(body: &[u8]) -> Option<(Request, RequestFacts)> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.is_object().then_some(())?;
        let req = decode_request(&v).ok()?;
        Some((req, RequestFacts::of(&v)))
    }

    const KEYS: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "user",
        "n",
        "logprobs",
        "stop",
        "tools",
        "functions",
        "extra",
        "x",
        "mod\\u0065l",
        "metadata",
    ];

    const SCALARS: &[&str] = &[
        r#""gpt""#,
        r#""""#,
        r#""a\nb""#,
        r#""\ud800""#,
        r#""\ud83d\ude00 é€𝄞""#,
        r#""\u00e9\"\\/""#,
        "\"tab\there\"",
        "0",
        "1",
        "-1",
        "1.5",
        "0.2",
        "1e400",
        "1e-400",
        "01",
        "4294967296",
        "4294967295",
        "18446744073709551616",
        "256",
        "1e2",
        "1.0",
        "-0",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "[]",
        "{}",
        r#"["a", "b"]"#,
        r#"["a", 1]"#,
        r#"{"include_usage": true}"#,
        r#"{"include_usage": false, "include_usage": true}"#,
        r#"{"a": [1, {"b": "\ud800"}]}"#,
        r#"{"a": 1e999}"#,
        r#"[[["x]}", {"b": [[]]}]], "\\"]"#,
        r#"{"a": {"b": {"c": ["[{\"", [[1]]]}}}"#,
    ];

    const ROLES: &[&str] = &[
        r#""system""#,
        r#""developer""#,
        r#""user""#,
        r#""assistant""#,
        r#""tool""#,
        r#""us\u0065r""#,
        "5",
        "null",
    ];

    const MESSAGE_KEYS: &[&str] = &[
        "role",
        "content",
        "name",
        "refusal",
        "tool_calls",
        "extra",
        "cont\\u0065nt",
    ];

    fn ws(rng: &mut fastrand::Rng) -> &'static str {
        [" ", "", "", "\n", "\r\n", "\t"][rng.usize(0..6)]
    }

    fn scalar(rng: &mut fastrand::Rng) -> String {
        SCALARS[rng.usize(0..SCALARS.len())].to_string()
    }

    /// Mostly a string that decodes, else anything.
    fn text(rng: &mut fastrand::Rng) -> String {
        if rng.u8(0..4) > 0 {
            [
                r#""gpt""#,
                r#""a\nb""#,
                r#""é€𝄞 \ud83d\ude00""#,
                r#""x\"y""#,
            ][rng.usize(0..4)]
            .to_string()
        } else {
            scalar(rng)
        }
    }

    fn message(rng: &mut fastrand::Rng) -> String {
        let mut fields = Vec::new();
        if rng.u8(0..10) > 0 {
            let role = if rng.bool() {
                ROLES[rng.usize(0..4)]
            } else {
                ROLES[rng.usize(0..ROLES.len())]
            };
            fields.push(format!("\"role\":{}{role}", ws(rng)));
        }
        if rng.u8(0..10) > 0 {
            fields.push(format!("\"content\": {}", text(rng)));
        }
        for _ in 0..rng.usize(0..2) {
            let key = MESSAGE_KEYS[rng.usize(0..MESSAGE_KEYS.len())];
            fields.push(format!("\"{key}\":{}", scalar(rng)));
        }
        rng.shuffle(&mut fields);
        format!("{{{}}}", fields.join(","))
    }

    fn body(rng: &mut fastrand::Rng) -> String {
        let mut fields = vec![format!("\"model\": {}", text(rng))];
        let messages: Vec<String> = (0..rng.usize(0..4)).map(|_| message(rng)).collect();
        fields.push(format!("\"messages\":{}[{}]", ws(rng), messages.join(", ")));
        for _ in 0..rng.usize(0..4) {
            let key = KEYS[rng.usize(0..KEYS.len())];
            fields.push(format!("{}\"{key}\"{}:{}", ws(rng), ws(rng), scalar(rng)));
        }
        rng.shuffle(&mut fields);
        if rng.u8(0..20) == 0 {
            fields.clear();
        }
        let mut out = format!("{}{{{}}}{}", ws(rng), fields.join(","), ws(rng));
        if rng.u8(0..30) == 0 {
            out.push_str(["x", "}", ",", "\u{0}"][rng.usize(0..4)]);
        }
        out
    }

    /// How deeply objects and arrays nest in a value (0 for a scalar).
    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let mut rng = fastrand::Rng::with_seed(6);
        let mut accepted = 0;
        for _ in 0..40_000 {
            let text = body(&mut rng);
            let bytes = text.as_bytes();
            let Some((req, facts)) = decode_request_fast(bytes) else {
                continue;
            };
            accepted += 1;
            let (want_req, want_facts) = general(bytes)
                .unwrap_or_else(|| panic!("accepted what the general path refuses: {text}"));
            assert_eq!(req, want_req, "{text}");
            let spans = facts.spans.clone().unwrap();
            let value: Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(spans.depth, value_depth(&value), "{text}");
            assert_eq!(
                RequestFacts {
                    spans: None,
                    ..facts
                },
                want_facts,
                "{text}"
            );
            for fields in [
                &[("model", r#""m""#)][..],
                &[("model", r#""m""#), ("stream", "true")][..],
                &[
                    ("model", r#""a\"b""#),
                    ("stream", "true"),
                    ("stream_options", r#"{"include_usage":true}"#),
                ][..],
            ] {
                assert_eq!(
                    crate::wire::splice_spans(bytes, &spans, fields),
                    crate::wire::splice_fields(bytes, fields),
                    "{text}"
                );
            }
        }
        assert!(
            accepted > 2_000,
            "only {accepted} bodies took the fast path"
        );
    }

    proptest::proptest! {
        /// Plain decimals read as serde_json reads them, to the bit.
        #[test]
        fn plain_decimals_are_serde_jsons(
            int in "(0|[1-9][0-9]{0,14})",
            frac in "[0-9]{1,15}",
            tail in "(|,|}|]| |\t|\n|\r|e1|E-2|x|\\.5)",
        ) {
            let text = format!("{int}.{frac}{tail}");
            let number = text.trim_end_matches([',', '}', ']', ' ', '\t', '\n', '\r']);
            let theirs = serde_json::from_str::<Value>(number).ok().and_then(|v| v.as_f64());
            match plain_decimal(text.as_bytes()) {
                Some(f) => proptest::prop_assert_eq!(Some(f.to_bits()), theirs.map(f64::to_bits)),
                None => {
                    let delimited = matches!(tail.as_str(), "" | "," | "}" | "]" | " " | "\t" | "\n" | "\r");
                    proptest::prop_assert!(int.len() + frac.len() > 15 || !delimited);
                }
            }
        }
    }

    #[test]
    fn plain_decimals_decline_the_rest() {
        for text in [
            "",
            ".5",
            "-0.5",
            "01.5",
            "1",
            "1.",
            "1.e5",
            "0.2e1",
            "1234567890.1234567",
            "0.2x",
        ] {
            assert_eq!(plain_decimal(text.as_bytes()), None, "{text}");
        }
        assert_eq!(plain_decimal(b"0.2"), Some(0.2));
        assert_eq!(plain_decimal(b"10.25,"), Some(10.25));
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        assert_eq!(Spans::default().of("temperature"), None);
        for body in [
            r#"{"model":"m","messages":[],"model":"n"}"#,
            r#"{"model":"m","messages":[],"x":1,"x":2}"#,
            r#"{"model":"m","messages":[],"tools":[]}"#,
            r#"{"model":"m","messages":[{"role":"tool","content":"x","tool_call_id":"a"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
            r#"{"model":"m","messages":[],"x":"\ud800"}"#,
            r#"{"model":"m","messages":[],"x":1e400}"#,
            r#"{"model":"","messages":[]}"#,
            r#"{"messages":[]}"#,
        ] {
            assert!(decode_request_fast(body.as_bytes()).is_none(), "{body}");
        }
    }
}
