//! Anthropic Messages (`POST /v1/messages`): the wire format on both sides.
//!
//! - Ingress: what an Anthropic SDK client sends us ([`decode_request`]) and
//!   what it gets back ([`encode_response`], [`StreamEncoder`], [`encode_error`]).
//! - Egress: what we send to Anthropic ([`encode_request`]) and how we read its
//!   answers ([`decode_response`], [`StreamDecoder`], [`decode_error`]).
//!
//! Bodies are read by walking `serde_json::Value`s by hand rather than through
//! derived types, so every validation error names the exact JSON path
//! (`messages[2].content[0].type`) and what was expected there.
//!
//! Translation choices that lose or invent information, in one place:
//! - Anthropic has no JSON mode. A `response_format` of `json_object` or
//!   `json_schema` becomes an extra, last system block telling the model to answer
//!   with only a JSON object (quoting the schema when one is given).
//! - Tool-call arguments are JSON text in the neutral model but an object on
//!   Anthropic's wire. Empty text (or `null`) becomes `{}`; text cut off mid-object
//!   (a truncated stream) is closed and parsed if that yields an object; anything
//!   else is sent as `{"_raw": "<text>"}` so nothing the model produced is lost.
//! - Content blocks other than text, image, tool_use, tool_result and thinking
//!   (`document`, …) and tools that are not custom tools (`web_search_…`,
//!   `text_editor_…`) are left out of the neutral request and noted in
//!   [`chat::Request::untranslatable`]: only an Anthropic model, sent the client's
//!   body as is, serves such a request.
//! - Tool-call ids from other providers that Anthropic would refuse (it takes only
//!   `[a-zA-Z0-9_-]`) are rewritten deterministically (`tool_use_id`), both in
//!   requests to Anthropic and in answers to Anthropic clients.
//! - A streamed tool call that ends with no JSON text (no parameters) gets `{}`.
//! - Thinking without a signature cannot be sent back to Anthropic and is dropped;
//!   `redacted_thinking` from clients is dropped too. Empty text blocks are dropped
//!   (Anthropic rejects them), and a message left with no blocks disappears.
//! - Neutral usage counts *all* prompt tokens in `input_tokens`; Anthropic's
//!   `input_tokens` excludes cache reads and writes. We add them on decode and
//!   subtract them on encode.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::chat::{
    self, ChunkEvents, ClientError, ErrorKind, FinishReason, ImageSource, Message, Part,
    ResponseFormat, Role, StreamEvent, SystemBlock, Tool, ToolChoice, Untranslatable,
    UpstreamErrorBody, Usage, WireError,
};
use crate::sse::{SseEvent, write_event};
use crate::wire::scan::{Cursor, RawStr, Seen, Template};

/// The `anthropic-version` header value we speak.
pub const API_VERSION: &str = "2023-06-01";

/// The message id used when a stream has to be opened without a `Start` event.
const SYNTHETIC_MESSAGE_ID: &str = "msg_backstop";

/// A message id in Anthropic's shape (`msg_` and letters and digits) for an answer
/// translated from another format, derived from the upstream's id (`chatcmpl-B9MB…`
/// → `msg_B9MB…`), so it stays the same for the whole answer. An id already in that
/// shape is kept.
///
/// ```
/// use backstop::wire::anthropic::message_id;
/// assert_eq!(message_id("chatcmpl-B9MBs8Cjc"), "msg_B9MBs8Cjc");
/// assert_eq!(message_id("2ei_aPWE-OIX"), "msg_2eiaPWEOIX");
/// assert_eq!(message_id("msg_013Zva2C"), "msg_013Zva2C");
/// assert_eq!(message_id(""), "msg_backstop");
/// ```
pub fn message_id(upstream_id: &str) -> String {
    super::reshape_id(upstream_id, "msg_", "chatcmpl-", SYNTHETIC_MESSAGE_ID)
}

const SUPPORTED_BLOCKS: &str = "text, image, tool_use, tool_result, thinking, redacted_thinking";

/// The system instruction that stands in for JSON mode.
const JSON_MODE_INSTRUCTION: &str = "Respond with only a single valid JSON object. Do not write \
any text before or after it, and do not wrap it in Markdown code fences.";

/// The error `type`s Anthropic documents; anything else is reported as `api_error`.
const ANTHROPIC_ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
];

// ---------------------------------------------------------------------------
// Small helpers for walking JSON with paths.
// ---------------------------------------------------------------------------

type Obj = Map<String, Value>;

fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A short description of a value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("\"{head}…\"")
        }
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn expected(path: &str, what: &str, got: &Value) -> WireError {
    WireError::at(path, format!("expected {what}, got {}", describe(got)))
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, WireError> {
    v.as_object().ok_or_else(|| expected(path, "an object", v))
}

/// A field that may be absent; `null` counts as absent.
fn opt<'a>(obj: &'a Obj, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn req<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a Value, WireError> {
    opt(obj, key).ok_or_else(|| WireError::at(field(path, key), "Field required"))
}

fn req_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<&'a str, WireError> {
    let v = req(obj, key, path)?;
    v.as_str()
        .ok_or_else(|| expected(&field(path, key), "a string", v))
}

fn opt_str<'a>(obj: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| expected(&field(path, key), "a string", v)),
    }
}

fn opt_bool(obj: &Obj, key: &str, path: &str) -> Result<Option<bool>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| expected(&field(path, key), "a boolean", v)),
    }
}

fn opt_f64(obj: &Obj, key: &str, path: &str) -> Result<Option<f64>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| expected(&field(path, key), "a number", v)),
    }
}

fn opt_u32(obj: &Obj, key: &str, path: &str) -> Result<Option<u32>, WireError> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| expected(&field(path, key), "a non-negative integer", v)),
    }
}

/// A token count; lenient (absent, null or malformed counts are `None`).
fn count(obj: &Obj, key: &str) -> Option<u64> {
    obj.get(key).and_then(Value::as_u64)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Finish reasons, usage, error kinds.
// ---------------------------------------------------------------------------

fn finish_from_stop_reason(s: &str) -> FinishReason {
    match s {
        "end_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence,
        // The answer was cut by the context window rather than `max_tokens`: cut all the same.
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// `Other` (e.g. `pause_turn`) has no faithful rendering for a client; it ends the turn.
fn stop_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Other => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic usage → neutral: `input_tokens` becomes the whole prompt.
fn neutral_usage(
    input: u64,
    output: u64,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
) -> Usage {
    Usage {
        input_tokens: input
            .saturating_add(cache_read.unwrap_or(0))
            .saturating_add(cache_write.unwrap_or(0)),
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
    }
}

/// Neutral prompt tokens → Anthropic's `input_tokens` (excluding cache reads and writes).
fn anthropic_input_tokens(u: &Usage) -> u64 {
    u.input_tokens
        .saturating_sub(u.cache_read_tokens.unwrap_or(0))
        .saturating_sub(u.cache_write_tokens.unwrap_or(0))
}

fn encode_usage(u: &Usage) -> Value {
    let mut m = Map::new();
    m.insert("input_tokens".into(), anthropic_input_tokens(u).into());
    m.insert("output_tokens".into(), u.output_tokens.into());
    if let Some(w) = u.cache_write_tokens {
        m.insert("cache_creation_input_tokens".into(), w.into());
    }
    if let Some(r) = u.cache_read_tokens {
        m.insert("cache_read_input_tokens".into(), r.into());
    }
    Value::Object(m)
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RequestTooLarge => "request_too_large",
        ErrorKind::RateLimit => "rate_limit_error",
        ErrorKind::Api => "api_error",
        ErrorKind::Overloaded => "overloaded_error",
        // Listed in Anthropic's `ErrorType` (HTTP 504).
        ErrorKind::Timeout => "timeout_error",
    }
}

// ---------------------------------------------------------------------------
// Requests: ingress (decode) and egress (encode).
// ---------------------------------------------------------------------------

/// Reads an Anthropic Messages request body from a client into a [`chat::Request`].
///
/// Validation follows the real API where it matters (`model` and `max_tokens`
/// are required, roles are `user`/`assistant`), and every error names the JSON
/// path of the offending field. Unknown top-level fields are ignored.
///
/// ```
/// use backstop::wire::anthropic::decode_request;
/// let body = serde_json::json!({
///     "model": "claude-sonnet-4-5",
///     "max_tokens": 1024,
///     "messages": [{"role": "user", "content": "Hello"}],
/// });
/// let req = decode_request(&body).unwrap();
/// assert_eq!(req.max_tokens, Some(1024));
///
/// let err = decode_request(&serde_json::json!({"model": "m", "messages": []})).unwrap_err();
/// assert_eq!(err.message, "max_tokens: Field required");
/// ```
pub fn decode_request(body: &Value) -> Result<chat::Request, WireError> {
    let obj = body.as_object().ok_or_else(|| {
        WireError::new(format!(
            "request body: expected a JSON object, got {}",
            describe(body)
        ))
    })?;

    let model = req_str(obj, "model", "")?;
    if model.is_empty() {
        return Err(WireError::at("model", "must be a non-empty string"));
    }

    let max_tokens = {
        let v = req(obj, "max_tokens", "")?;
        match v.as_u64() {
            Some(n) if n >= 1 => u32::try_from(n)
                .map_err(|_| WireError::at("max_tokens", format!("{n} is too large")))?,
            _ => return Err(expected("max_tokens", "a positive integer", v)),
        }
    };

    let system = match opt(obj, "system") {
        None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![SystemBlock { text: s.clone() }],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(i, b)| decode_system_block(b, &index("system", i)))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(expected("system", "a string or an array of text blocks", v));
        }
    };

    let mut untranslatable = None;
    let messages = match req(obj, "messages", "")? {
        Value::Array(ms) if ms.is_empty() => {
            return Err(WireError::at(
                "messages",
                "at least one message is required",
            ));
        }
        Value::Array(ms) => ms
            .iter()
            .enumerate()
            .map(|(i, m)| decode_message(m, &index("messages", i), &mut untranslatable))
            .collect::<Result<Vec<_>, _>>()?,
        v => return Err(expected("messages", "an array of messages", v)),
    };

    let tools = match opt(obj, "tools") {
        None => Vec::new(),
        Some(Value::Array(ts)) => {
            let mut tools = Vec::with_capacity(ts.len());
            for (i, t) in ts.iter().enumerate() {
                if let Some(t) = decode_tool(t, &index("tools", i), &mut untranslatable)? {
                    tools.push(t);
                }
            }
            tools
        }
        Some(v) => return Err(expected("tools", "an array of tools", v)),
    };

    let (tool_choice, parallel_tool_calls) = match opt(obj, "tool_choice") {
        None => (None, None),
        Some(v) => {
            let (c, p) = decode_tool_choice(v, "tool_choice")?;
            (Some(c), p)
        }
    };

    let stop = match opt(obj, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(ss)) => ss
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| expected(&index("stop_sequences", i), "a string", s))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(expected("stop_sequences", "an array of strings", v)),
    };

    let user = match opt(obj, "metadata") {
        None => None,
        Some(m) => {
            let m = as_object(m, "metadata")?;
            opt_str(m, "user_id", "metadata")?.map(str::to_string)
        }
    };

    Ok(chat::Request {
        model: model.to_string(),
        system,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        max_tokens: Some(max_tokens),
        temperature: opt_f64(obj, "temperature", "")?,
        top_p: opt_f64(obj, "top_p", "")?,
        top_k: opt_u32(obj, "top_k", "")?,
        stop,
        response_format: None,
        stream: opt_bool(obj, "stream", "")?.unwrap_or(false),
        user,
        metadata: None,
        reasoning: opt(obj, "thinking").cloned(),
        untranslatable,
    })
}

fn decode_system_block(v: &Value, path: &str) -> Result<SystemBlock, WireError> {
    let obj = as_object(v, path)?;
    let ty = req_str(obj, "type", path)?;
    if ty != "text" {
        return Err(WireError::at(
            field(path, "type"),
            format!("system blocks must be of type \"text\", got \"{ty}\""),
        ));
    }
    Ok(SystemBlock {
        text: req_str(obj, "text", path)?.to_string(),
    })
}

fn decode_message(
    v: &Value,
    path: &str,
    untranslatable: &mut Option<Untranslatable>,
) -> Result<Message, WireError> {
    let obj = as_object(v, path)?;
    let role = match req_str(obj, "role", path)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => {
            return Err(WireError::at(
                field(path, "role"),
                "unexpected role \"system\": the Messages API takes system instructions \
                 in the top-level `system` field; roles must be \"user\" or \"assistant\"",
            ));
        }
        other => {
            return Err(WireError::at(
                field(path, "role"),
                format!("expected \"user\" or \"assistant\", got \"{other}\""),
            ));
        }
    };
    let content_path = field(path, "content");
    let content = match req(obj, "content", path)? {
        Value::String(s) => vec![Part::Text { text: s.clone() }],
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                if let Some(p) = decode_block(b, &index(&content_path, i), role, untranslatable)? {
                    parts.push(p);
                }
            }
            parts
        }
        v => {
            return Err(expected(
                &content_path,
                "a string or an array of content blocks",
                v,
            ));
        }
    };
    Ok(Message {
        role,
        content,
        name: None,
    })
}

fn decode_block(
    v: &Value,
    path: &str,
    role: Role,
    untranslatable: &mut Option<Untranslatable>,
) -> Result<Option<Part>, WireError> {
    let obj = as_object(v, path)?;
    let ty = req_str(obj, "type", path)?;
    let part = match ty {
        "text" => Part::Text {
            text: req_str(obj, "text", path)?.to_string(),
        },
        "image" => Part::Image {
            source: decode_image_source(req(obj, "source", path)?, &field(path, "source"))?,
        },
        "tool_use" => {
            if role != Role::Assistant {
                return Err(WireError::at(
                    field(path, "type"),
                    "tool_use blocks are only allowed in assistant messages",
                ));
            }
            let input = req(obj, "input", path)?;
            if !input.is_object() {
                return Err(expected(&field(path, "input"), "an object", input));
            }
            Part::ToolCall {
                id: req_str(obj, "id", path)?.to_string(),
                name: req_str(obj, "name", path)?.to_string(),
                arguments: input.to_string(),
            }
        }
        "tool_result" => {
            if role != Role::User {
                return Err(WireError::at(
                    field(path, "type"),
                    "tool_result blocks are only allowed in user messages",
                ));
            }
            let content_path = field(path, "content");
            let content = match opt(obj, "content") {
                None => Vec::new(),
                Some(Value::String(s)) if s.is_empty() => Vec::new(),
                Some(Value::String(s)) => vec![Part::Text { text: s.clone() }],
                Some(Value::Array(blocks)) => {
                    let mut parts = Vec::with_capacity(blocks.len());
                    for (i, b) in blocks.iter().enumerate() {
                        let at = index(&content_path, i);
                        if let Some(p) = decode_tool_result_block(b, &at, untranslatable)? {
                            parts.push(p);
                        }
                    }
                    parts
                }
                Some(v) => {
                    return Err(expected(
                        &content_path,
                        "a string or an array of text and image blocks",
                        v,
                    ));
                }
            };
            Part::ToolResult {
                tool_call_id: req_str(obj, "tool_use_id", path)?.to_string(),
                content,
                is_error: opt_bool(obj, "is_error", path)?.unwrap_or(false),
            }
        }
        "thinking" => Part::Thinking {
            text: req_str(obj, "thinking", path)?.to_string(),
            signature: opt_str(obj, "signature", path)?
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        },
        // Encrypted reasoning only Anthropic can read; no other provider can take it.
        "redacted_thinking" => return Ok(None),
        // `document`, `search_result`, `container_upload`, server tool blocks, …: Anthropic's
        // own, which only an Anthropic model (sent the client's body as is) can take.
        other => {
            Untranslatable::note(
                untranslatable,
                field(path, "type"),
                format!("content block type \"{other}\" (translated: {SUPPORTED_BLOCKS})"),
            );
            return Ok(None);
        }
    };
    Ok(Some(part))
}

fn decode_tool_result_block(
    v: &Value,
    path: &str,
    untranslatable: &mut Option<Untranslatable>,
) -> Result<Option<Part>, WireError> {
    let obj = as_object(v, path)?;
    match req_str(obj, "type", path)? {
        "text" => Ok(Some(Part::Text {
            text: req_str(obj, "text", path)?.to_string(),
        })),
        "image" => Ok(Some(Part::Image {
            source: decode_image_source(req(obj, "source", path)?, &field(path, "source"))?,
        })),
        other => {
            Untranslatable::note(
                untranslatable,
                field(path, "type"),
                format!("tool_result content block type \"{other}\" (translated: text, image)"),
            );
            Ok(None)
        }
    }
}

fn decode_image_source(v: &Value, path: &str) -> Result<ImageSource, WireError> {
    let obj = as_object(v, path)?;
    match req_str(obj, "type", path)? {
        "base64" => Ok(ImageSource::Base64 {
            media_type: req_str(obj, "media_type", path)?.to_string(),
            data: req_str(obj, "data", path)?.to_string(),
        }),
        "url" => Ok(ImageSource::Url {
            url: req_str(obj, "url", path)?.to_string(),
        }),
        other => Err(WireError::at(
            field(path, "type"),
            format!("unsupported image source type \"{other}\"; supported: base64, url"),
        )),
    }
}

fn decode_tool(
    v: &Value,
    path: &str,
    untranslatable: &mut Option<Untranslatable>,
) -> Result<Option<Tool>, WireError> {
    let obj = as_object(v, path)?;
    if let Some(ty) = opt_str(obj, "type", path)?
        && ty != "custom"
    {
        // A server tool (`web_search_…`) or an Anthropic-defined one (`bash_…`,
        // `text_editor_…`): only Anthropic knows its schema.
        Untranslatable::note(
            untranslatable,
            field(path, "type"),
            format!(
                "tool type \"{ty}\" (an Anthropic-defined tool; only custom tools with \
                 name, description and input_schema are translated)"
            ),
        );
        return Ok(None);
    }
    let schema = req(obj, "input_schema", path)?;
    if !schema.is_object() {
        return Err(expected(
            &field(path, "input_schema"),
            "a JSON Schema object",
            schema,
        ));
    }
    Ok(Some(Tool {
        name: req_str(obj, "name", path)?.to_string(),
        description: opt_str(obj, "description", path)?.map(str::to_string),
        parameters: schema.clone(),
    }))
}

fn decode_tool_choice(v: &Value, path: &str) -> Result<(ToolChoice, Option<bool>), WireError> {
    let obj = as_object(v, path)?;
    let choice = match req_str(obj, "type", path)? {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool {
            name: req_str(obj, "name", path)?.to_string(),
        },
        other => {
            return Err(WireError::at(
                field(path, "type"),
                format!("expected one of \"auto\", \"any\", \"tool\", \"none\", got \"{other}\""),
            ));
        }
    };
    let parallel = opt_bool(obj, "disable_parallel_tool_use", path)?.map(|d| !d);
    Ok((choice, parallel))
}

/// Builds the body Backstop sends to Anthropic's `POST /v1/messages`.
///
/// Consecutive messages of the same role are merged (Anthropic requires
/// alternation) and tool results lead their user message. A trailing assistant
/// message is kept: it is a prefill. See the module docs for JSON mode and
/// tool-argument handling.
///
/// ```
/// use backstop::chat::{Message, Request, Role};
/// use backstop::wire::anthropic::encode_request;
/// let req = Request {
///     messages: vec![Message::text(Role::User, "Hi")],
///     ..Request::default()
/// };
/// let body = encode_request(&req, "claude-sonnet-4-5", 4096);
/// assert_eq!(body["max_tokens"], 4096);
/// assert_eq!(body["messages"][0]["content"][0]["text"], "Hi");
/// ```
pub fn encode_request(req: &chat::Request, upstream_model: &str, default_max_tokens: u32) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), upstream_model.into());
    body.insert(
        "max_tokens".into(),
        req.max_tokens.unwrap_or(default_max_tokens).into(),
    );

    let mut system: Vec<String> = req
        .system
        .iter()
        .filter(|b| !b.text.is_empty())
        .map(|b| b.text.clone())
        .collect();
    if let Some(instruction) = json_mode_instruction(req.response_format.as_ref()) {
        system.push(instruction);
    }
    match system.len() {
        0 => {}
        1 => {
            body.insert("system".into(), system.remove(0).into());
        }
        _ => {
            let blocks: Vec<Value> = system
                .into_iter()
                .map(|text| json!({"type": "text", "text": text}))
                .collect();
            body.insert("system".into(), blocks.into());
        }
    }

    body.insert("messages".into(), encode_messages(&req.messages).into());

    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), req.stop.clone().into());
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), k.into());
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    // A tool_choice without tools is rejected by Anthropic and means nothing.
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req.tools.iter().map(encode_tool).collect();
        body.insert("tools".into(), tools.into());
        if let Some(choice) = encode_tool_choice(req) {
            body.insert("tool_choice".into(), choice);
        }
    }
    if req.stream {
        body.insert("stream".into(), true.into());
    }
    if let Some(r) = &req.reasoning
        && r.get("type").is_some()
    {
        body.insert("thinking".into(), r.clone());
    }
    Value::Object(body)
}

fn json_mode_instruction(rf: Option<&ResponseFormat>) -> Option<String> {
    match rf? {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(JSON_MODE_INSTRUCTION.to_string()),
        ResponseFormat::JsonSchema { json_schema } => {
            let schema = json_schema.get("schema").unwrap_or(json_schema);
            Some(format!(
                "{JSON_MODE_INSTRUCTION}\nThe JSON object must conform to this JSON Schema:\n{schema}"
            ))
        }
    }
}

fn encode_tool(t: &Tool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), t.name.clone().into());
    if let Some(d) = &t.description {
        m.insert("description".into(), d.clone().into());
    }
    m.insert("input_schema".into(), t.parameters.clone());
    Value::Object(m)
}

fn encode_tool_choice(req: &chat::Request) -> Option<Value> {
    let mut choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool { name }) => Some(json!({"type": "tool", "name": name})),
    };
    // `none` has no `disable_parallel_tool_use` (no tools run at all).
    if req.parallel_tool_calls == Some(false) && req.tool_choice != Some(ToolChoice::None) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(obj) = c.as_object_mut() {
            obj.insert("disable_parallel_tool_use".into(), true.into());
        }
    }
    choice
}

fn encode_messages(messages: &[Message]) -> Vec<Value> {
    let mut merged: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let blocks: Vec<Value> = m.content.iter().filter_map(encode_part).collect();
        if blocks.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some((role, existing)) if *role == m.role => existing.extend(blocks),
            _ => merged.push((m.role, blocks)),
        }
    }
    merged
        .into_iter()
        .map(|(role, blocks)| {
            let (role, blocks) = match role {
                Role::User => {
                    let (mut results, others): (Vec<Value>, Vec<Value>) =
                        blocks.into_iter().partition(|b| {
                            b.get("type").and_then(Value::as_str) == Some("tool_result")
                        });
                    results.extend(others);
                    ("user", results)
                }
                Role::Assistant => ("assistant", blocks),
            };
            json!({"role": role, "content": blocks})
        })
        .collect()
}

fn encode_part(p: &Part) -> Option<Value> {
    match p {
        Part::Text { text } if text.is_empty() => None,
        Part::Text { text } => Some(json!({"type": "text", "text": text})),
        Part::Image { source } => {
            Some(json!({"type": "image", "source": encode_image_source(source)}))
        }
        Part::ToolCall {
            id,
            name,
            arguments,
        } => Some(json!({
            "type": "tool_use",
            "id": tool_use_id(id),
            "name": name,
            "input": tool_input(arguments),
        })),
        Part::ToolResult {
            tool_call_id,
            content,
            is_error,
        } => {
            let mut m = Map::new();
            m.insert("type".into(), "tool_result".into());
            m.insert("tool_use_id".into(), tool_use_id(tool_call_id).into());
            let inner: Vec<Value> = content
                .iter()
                .filter(|p| matches!(p, Part::Text { .. } | Part::Image { .. }))
                .filter_map(encode_part)
                .collect();
            if !inner.is_empty() {
                m.insert("content".into(), inner.into());
            }
            if *is_error {
                m.insert("is_error".into(), true.into());
            }
            Some(Value::Object(m))
        }
        Part::Thinking {
            text,
            signature: Some(sig),
        } if !sig.is_empty() => {
            Some(json!({"type": "thinking", "thinking": text, "signature": sig}))
        }
        // Anthropic rejects thinking it did not sign.
        Part::Thinking { .. } => None,
    }
}

fn encode_image_source(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        ImageSource::Url { url } => match parse_data_url(url) {
            Some((media_type, data)) => {
                json!({"type": "base64", "media_type": media_type, "data": data})
            }
            None => json!({"type": "url", "url": url}),
        },
    }
}

/// `data:image/png;base64,AAAA` → (`image/png`, `AAAA`); Anthropic's `url` source
/// only takes http(s) URLs.
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// Tool-call arguments (JSON text) → Anthropic's `input` object; see module docs.
fn tool_input(arguments: &str) -> Value {
    let t = arguments.trim();
    if t.is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ Value::Object(_)) => return v,
        Ok(Value::Null) => return json!({}),
        Ok(_) => {}
        Err(_) => {
            if let Some(v @ Value::Object(_)) = close_truncated_json(t) {
                return v;
            }
        }
    }
    json!({ "_raw": arguments })
}

/// A tool-call id in the shape Anthropic accepts (`^[a-zA-Z0-9_-]+$`; it answers 400
/// "tool_use.id: String should match pattern" otherwise). Ids from other providers
/// can hold other characters (Kimi's `functions.get_weather:0`): each one is
/// replaced by `_` and a hash of the whole original id is appended, so that the
/// mapping is the same for a `tool_use` and its `tool_result` (in every turn) and
/// two ids that differ only in such characters stay distinct. Valid ids are kept.
fn tool_use_id(id: &str) -> Cow<'_, str> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(valid) {
        return Cow::Borrowed(id);
    }
    // FNV-1a: stable across processes and versions (unlike std's hasher).
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut out: String = id.chars().map(|c| if valid(c) { c } else { '_' }).collect();
    out.push_str(&format!("_{hash:016x}"));
    Cow::Owned(out)
}

/// Closes the open strings, arrays and objects of JSON text that was cut off,
/// and parses the result.
fn close_truncated_json(t: &str) -> Option<Value> {
    let mut closers = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in t.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => closers.push('}'),
            '[' => closers.push(']'),
            // Pops in the guard: a closer that does not match the innermost opener is fatal.
            '}' | ']' if closers.pop() != Some(c) => return None,
            _ => {}
        }
    }
    let mut s = t.to_string();
    if in_string {
        if escaped {
            s.pop();
        }
        s.push('"');
    } else {
        let kept = s
            .trim_end_matches(|c: char| c == ',' || c.is_whitespace())
            .len();
        s.truncate(kept);
    }
    while let Some(c) = closers.pop() {
        s.push(c);
    }
    serde_json::from_str(&s).ok()
}

// ---------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------

/// Reads Anthropic's non-streaming answer. An error body or anything that is
/// not a `message` object is a [`WireError`].
pub fn decode_response(body: &[u8]) -> Result<chat::Response, WireError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| WireError::new(format!("Anthropic response is not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        WireError::new(format!(
            "Anthropic response: expected a JSON object, got {}",
            describe(&v)
        ))
    })?;
    match opt_str(obj, "type", "")? {
        None | Some("message") => {}
        Some("error") => {
            let e = decode_error_value(&v).unwrap_or_default();
            return Err(WireError::new(format!(
                "Anthropic returned an error instead of a message: {} ({})",
                e.message,
                e.kind.as_deref().unwrap_or("unknown type"),
            )));
        }
        Some(other) => {
            return Err(WireError::at(
                "type",
                format!("expected \"message\", got \"{other}\""),
            ));
        }
    }
    let id = req_str(obj, "id", "")?.to_string();
    let content = match req(obj, "content", "")? {
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                if let Some(p) = decode_response_block(b, &index("content", i))? {
                    parts.push(p);
                }
            }
            parts
        }
        v => return Err(expected("content", "an array of content blocks", v)),
    };
    let usage = match opt(obj, "usage") {
        Some(Value::Object(u)) => neutral_usage(
            count(u, "input_tokens").unwrap_or(0),
            count(u, "output_tokens").unwrap_or(0),
            count(u, "cache_read_input_tokens"),
            count(u, "cache_creation_input_tokens"),
        ),
        _ => Usage::default(),
    };
    Ok(chat::Response {
        id,
        model: opt_str(obj, "model", "")?.unwrap_or_default().to_string(),
        content,
        finish_reason: opt_str(obj, "stop_reason", "")?.map(finish_from_stop_reason),
        stop_sequence: opt_str(obj, "stop_sequence", "")?.map(str::to_string),
        usage,
        created: unix_now(),
    })
}

/// Server-tool blocks and redacted thinking cannot be translated; they are skipped
/// rather than failing an otherwise good answer.
fn decode_response_block(v: &Value, path: &str) -> Result<Option<Part>, WireError> {
    let obj = as_object(v, path)?;
    let part = match req_str(obj, "type", path)? {
        "text" => Part::Text {
            text: req_str(obj, "text", path)?.to_string(),
        },
        "tool_use" => Part::ToolCall {
            id: req_str(obj, "id", path)?.to_string(),
            name: req_str(obj, "name", path)?.to_string(),
            arguments: opt(obj, "input").map_or_else(|| "{}".to_string(), Value::to_string),
        },
        "thinking" => Part::Thinking {
            text: req_str(obj, "thinking", path)?.to_string(),
            signature: opt_str(obj, "signature", path)?
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        },
        _ => return Ok(None),
    };
    Ok(Some(part))
}

/// Renders a neutral answer as an Anthropic `message` for the client.
pub fn encode_response(resp: &chat::Response) -> Value {
    let content: Vec<Value> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } if text.is_empty() => None,
            Part::Text { text } => Some(json!({"type": "text", "text": text})),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({
                "type": "tool_use",
                "id": tool_use_id(id),
                "name": name,
                "input": tool_input(arguments),
            })),
            Part::Thinking { text, signature } => Some(json!({
                "type": "thinking",
                "thinking": text,
                "signature": signature.as_deref().unwrap_or(""),
            })),
            Part::Image { .. } | Part::ToolResult { .. } => None,
        })
        .collect();
    json!({
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": resp.finish_reason.map(stop_reason_str),
        "stop_sequence": resp.stop_sequence,
        "usage": encode_usage(&resp.usage),
    })
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

fn decode_error_value(v: &Value) -> Option<UpstreamErrorBody> {
    let obj = v.as_object()?;
    match obj.get("type") {
        None => {}
        Some(t) if t.as_str() == Some("error") => {}
        Some(_) => return None,
    }
    let err = obj.get("error")?.as_object()?;
    Some(UpstreamErrorBody {
        kind: err.get("type").and_then(Value::as_str).map(str::to_string),
        code: None,
        message: err.get("message")?.as_str()?.to_string(),
        retry_after: None,
    })
}

/// Reads an Anthropic error body (`{"type":"error","error":{"type","message"},"request_id"}`);
/// `None` when the bytes are not one.
pub fn decode_error(body: &[u8]) -> Option<chat::UpstreamErrorBody> {
    let v: Value = serde_json::from_slice(body).ok()?;
    decode_error_value(&v)
}

/// Renders an error for an Anthropic client: `{"type":"error","error":{"type","message"}}`.
pub fn encode_error(err: &ClientError) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(err.kind), "message": err.message},
    })
}

// ---------------------------------------------------------------------------
// Streaming.
// ---------------------------------------------------------------------------

/// Turns Anthropic's SSE events into neutral [`StreamEvent`]s.
///
/// Tool calls are numbered from 0 in the order their `tool_use` blocks start;
/// the prompt tokens of `message_start` are combined with the `message_delta`
/// usage into one `Usage` event.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    start_input: Option<u64>,
    start_cache_read: Option<u64>,
    start_cache_write: Option<u64>,
    /// Content block index → our tool index.
    tool_blocks: HashMap<u64, u32>,
    next_tool: u32,
    /// Tools whose input has had some JSON text; one that ends with none (a tool
    /// without parameters: `input: {}` and only empty `partial_json`) gets `{}`.
    tools_with_input: Vec<u32>,
    /// The last text delta, to recognise the next ones by comparing bytes.
    repeat: Template,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. Unknown event and delta types are ignored (Anthropic
    /// may add new ones); malformed JSON is an error.
    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        self.push_chunk(ev).map(Vec::from)
    }

    /// [`push`](Self::push), a text delta's one event kept inline.
    pub fn push_chunk(&mut self, ev: &SseEvent) -> Result<ChunkEvents, WireError> {
        self.push_chunk_into(ev, None)
    }

    /// The template of the text chunks like the last one (`UpstreamStream::absorb_text`
    /// matches a read's text chunks with it).
    pub(crate) fn template(&self) -> &Template {
        &self.repeat
    }

    /// [`push_chunk`](Self::push_chunk) for an answer being assembled, `text` being its
    /// text so far (when its last part is text): a text chunk like the last one has its
    /// text appended there (`Template::append_text`) and gives no events; any other
    /// chunk reads as `push_chunk` reads it.
    pub fn push_chunk_into(
        &mut self,
        ev: &SseEvent,
        text: Option<&mut String>,
    ) -> Result<ChunkEvents, WireError> {
        // A text chunk like the last one, matched on its bytes (`Template::take_chunk`).
        if let Some(events) = self.repeat.take_chunk(&ev.data, text) {
            return Ok(events);
        }
        let text = ev.data_text();
        let data = text.trim();
        let text = match self.repeat.text_of(data) {
            Some(raw) => raw.text(),
            None => self.text_delta(data),
        };
        if let Some(text) = text {
            return Ok(ChunkEvents::text(text.into_owned()));
        }
        self.push_value(ev, data).map(ChunkEvents::from)
    }

    /// The text of a `content_block_delta` event carrying a `text_delta`, walked once
    /// with the [`Cursor`] (and kept as the template for the next ones). `None` leaves
    /// the event to the general decoder: another event type, a duplicate or escaped
    /// key, a field of another type, anything the cursor does not accept. Both paths
    /// give the same events (tests: `text_delta_fast_path_*`).
    fn text_delta<'a>(&mut self, data: &'a str) -> Option<Cow<'a, str>> {
        let mut c = Cursor::new(data);
        let mut seen = Seen::default();
        let (mut ty, mut index, mut delta_ty) = (None, None, None);
        let mut text: Option<(RawStr<'a>, std::ops::Range<usize>)> = None;
        c.object(|c, key| {
            match key.plain()? {
                "type" => {
                    seen.first(0)?;
                    ty = Some(c.string()?);
                }
                "index" => {
                    seen.first(1)?;
                    index = c.opt_u64()?;
                }
                "delta" => {
                    seen.first(2)?;
                    let mut seen = Seen::default();
                    c.object(|c, key| {
                        match key.plain()? {
                            "type" => {
                                seen.first(0)?;
                                delta_ty = Some(c.string()?);
                            }
                            "text" => {
                                seen.first(1)?;
                                text = Some(c.spanned_string()?);
                            }
                            _ => c.skip()?,
                        }
                        Some(())
                    })?;
                }
                _ => c.skip()?,
            }
            Some(())
        })?;
        c.end()?;
        let is_text_delta = ty?.is("content_block_delta") && delta_ty?.is("text_delta");
        if !is_text_delta || index.is_none() {
            return None;
        }
        let (raw, at) = text?;
        let value = raw.text()?;
        self.repeat.set(data, &[at], 0);
        Some(value)
    }

    /// The general decoder: any event, through a `Value`.
    fn push_value(&mut self, ev: &SseEvent, data: &str) -> Result<Vec<StreamEvent>, WireError> {
        let name = ev.event.as_deref().unwrap_or("");
        let v: Value = if data.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(data).map_err(|e| {
                WireError::new(format!(
                    "Anthropic stream event \"{name}\" is not valid JSON: {e}"
                ))
            })?
        };
        let obj = v.as_object().ok_or_else(|| {
            WireError::new(format!(
                "Anthropic stream event \"{name}\": expected a JSON object, got {}",
                describe(&v)
            ))
        })?;
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or(name);
        let mut out = Vec::new();
        match ty {
            "message_start" => {
                let msg = as_object(req(obj, "message", "")?, "message")?;
                let usage = msg.get("usage").and_then(Value::as_object);
                self.start_input = usage.and_then(|u| count(u, "input_tokens"));
                self.start_cache_read = usage.and_then(|u| count(u, "cache_read_input_tokens"));
                self.start_cache_write =
                    usage.and_then(|u| count(u, "cache_creation_input_tokens"));
                out.push(StreamEvent::Start {
                    id: opt_str(msg, "id", "message")?
                        .unwrap_or_default()
                        .to_string(),
                    model: opt_str(msg, "model", "message")?
                        .unwrap_or_default()
                        .to_string(),
                    input_tokens: self.start_input.map(|i| {
                        neutral_usage(i, 0, self.start_cache_read, self.start_cache_write)
                            .input_tokens
                    }),
                });
            }
            "content_block_start" => {
                let block_index = block_index(obj)?;
                let block = as_object(req(obj, "content_block", "")?, "content_block")?;
                match opt_str(block, "type", "content_block")?.unwrap_or("") {
                    "text" => {
                        if let Some(t) = opt_str(block, "text", "content_block")?
                            && !t.is_empty()
                        {
                            out.push(StreamEvent::TextDelta { text: t.into() });
                        }
                    }
                    "thinking" => {
                        if let Some(t) = opt_str(block, "thinking", "content_block")?
                            && !t.is_empty()
                        {
                            out.push(StreamEvent::ThinkingDelta { text: t.into() });
                        }
                    }
                    "tool_use" => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        self.tool_blocks.insert(block_index, tool);
                        out.push(StreamEvent::ToolCallStart {
                            index: tool,
                            id: req_str(block, "id", "content_block")?.to_string(),
                            name: req_str(block, "name", "content_block")?.to_string(),
                        });
                        if let Some(input) = block.get("input").and_then(Value::as_object)
                            && !input.is_empty()
                        {
                            self.tools_with_input.push(tool);
                            out.push(StreamEvent::ToolCallDelta {
                                index: tool,
                                arguments: Value::Object(input.clone()).to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let block_index = block_index(obj)?;
                let delta = as_object(req(obj, "delta", "")?, "delta")?;
                match opt_str(delta, "type", "delta")?.unwrap_or("") {
                    "text_delta" => {
                        let t = req_str(delta, "text", "delta")?;
                        if !t.is_empty() {
                            out.push(StreamEvent::TextDelta { text: t.into() });
                        }
                    }
                    "thinking_delta" => {
                        let t = req_str(delta, "thinking", "delta")?;
                        if !t.is_empty() {
                            out.push(StreamEvent::ThinkingDelta { text: t.into() });
                        }
                    }
                    "input_json_delta" => {
                        let json = opt_str(delta, "partial_json", "delta")?.unwrap_or("");
                        if !json.is_empty() {
                            let tool = self.tool_blocks.get(&block_index).ok_or_else(|| {
                                WireError::at(
                                    "index",
                                    format!(
                                        "input_json_delta for content block {block_index}, \
                                         which is not a tool_use block"
                                    ),
                                )
                            })?;
                            self.tools_with_input.push(*tool);
                            out.push(StreamEvent::ToolCallDelta {
                                index: *tool,
                                arguments: json.into(),
                            });
                        }
                    }
                    // signature_delta, citations_delta, …: nothing to translate.
                    _ => {}
                }
            }
            "content_block_stop" => {
                // Arguments are JSON text elsewhere (`{}` at least: OpenAI's own for a
                // call without parameters); never leave a finished call with none.
                if let Ok(block_index) = block_index(obj)
                    && let Some(&tool) = self.tool_blocks.get(&block_index)
                    && !self.tools_with_input.contains(&tool)
                {
                    self.tools_with_input.push(tool);
                    out.push(StreamEvent::ToolCallDelta {
                        index: tool,
                        arguments: "{}".into(),
                    });
                }
            }
            "message_delta" => {
                if let Some(delta) = opt(obj, "delta") {
                    let delta = as_object(delta, "delta")?;
                    if let Some(reason) = opt_str(delta, "stop_reason", "delta")? {
                        out.push(StreamEvent::Finish {
                            reason: finish_from_stop_reason(reason),
                            stop_sequence: opt_str(delta, "stop_sequence", "delta")?
                                .map(str::to_string),
                        });
                    }
                }
                if let Some(u) = opt(obj, "usage").and_then(Value::as_object) {
                    // Delta usage is cumulative; fields it leaves out keep the start's values.
                    let usage = neutral_usage(
                        count(u, "input_tokens").or(self.start_input).unwrap_or(0),
                        count(u, "output_tokens").unwrap_or(0),
                        count(u, "cache_read_input_tokens").or(self.start_cache_read),
                        count(u, "cache_creation_input_tokens").or(self.start_cache_write),
                    );
                    out.push(StreamEvent::Usage { usage });
                }
            }
            "message_stop" => out.push(StreamEvent::Done),
            "error" => {
                let error = decode_error_value(&v).unwrap_or_else(|| UpstreamErrorBody {
                    kind: None,
                    code: None,
                    message: data.to_string(),
                    retry_after: None,
                });
                out.push(StreamEvent::Error { error });
            }
            // ping, content_block_stop and event types added later.
            _ => {}
        }
        Ok(out)
    }
}

fn block_index(obj: &Obj) -> Result<u64, WireError> {
    let v = req(obj, "index", "")?;
    v.as_u64()
        .ok_or_else(|| expected("index", "a non-negative integer", v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    Tool(u32),
}

/// Turns neutral [`StreamEvent`]s into the SSE frames an Anthropic SDK expects:
/// `message_start`, blocks (`content_block_start` / `_delta` / `_stop`),
/// `message_delta`, `message_stop`.
///
/// A delta for a tool call whose block is no longer open is still sent on that
/// block's index (the SDKs accumulate by index); a delta for a tool call that
/// never started is dropped.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    started: bool,
    done: bool,
    /// The neutral prompt tokens announced in `message_start`.
    start_input: Option<u64>,
    next_block: u32,
    open: Option<(u32, BlockKind)>,
    /// Tool index → content block index.
    tool_blocks: HashMap<u32, u32>,
    usage: Option<Usage>,
    finish: Option<(FinishReason, Option<String>)>,
    /// The answer comes from another format: its id is reshaped ([`message_id`]).
    translating: bool,
}

fn emit(out: &mut Vec<u8>, name: &str, data: &Value) {
    write_event(out, Some(name), &data.to_string());
}

impl StreamEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder for an answer translated from another format: `message_start`
    /// carries an id in Anthropic's shape ([`message_id`]).
    pub fn translating(mut self) -> Self {
        self.translating = true;
        self
    }

    /// Appends the frames for `ev` to `out` (possibly none). Events after `Done` are ignored.
    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start {
                id,
                model,
                input_tokens,
            } => {
                if !self.started {
                    let id = if self.translating {
                        message_id(id)
                    } else {
                        id.clone()
                    };
                    self.message_start(&id, model, *input_tokens, out);
                }
            }
            StreamEvent::Error { error } => {
                let ty = error
                    .kind
                    .as_deref()
                    .filter(|k| ANTHROPIC_ERROR_TYPES.contains(k))
                    .unwrap_or("api_error");
                emit(
                    out,
                    "error",
                    &json!({"type": "error", "error": {"type": ty, "message": error.message}}),
                );
            }
            StreamEvent::TextDelta { text } => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let index = self.open_block(BlockKind::Text, out);
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": text}}),
                );
            }
            StreamEvent::ThinkingDelta { text } => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let index = self.open_block(BlockKind::Thinking, out);
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "thinking_delta", "thinking": text}}),
                );
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                self.close_block(out);
                let block = self.next_block;
                self.next_block += 1;
                self.open = Some((block, BlockKind::Tool(*index)));
                self.tool_blocks.insert(*index, block);
                emit(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": block,
                            "content_block": {"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}}}),
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if arguments.is_empty() {
                    return;
                }
                let Some(&block) = self.tool_blocks.get(index) else {
                    return;
                };
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                );
            }
            StreamEvent::Usage { usage } => self.usage = Some(*usage),
            StreamEvent::Finish {
                reason,
                stop_sequence,
            } => self.finish = Some((*reason, stop_sequence.clone())),
            StreamEvent::Done => {
                self.ensure_started(out);
                self.close_block(out);
                let (reason, sequence) = match &self.finish {
                    Some((r, s)) => (stop_reason_str(*r), s.clone()),
                    None => ("end_turn", None),
                };
                emit(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": sequence},
                            "usage": self.delta_usage()}),
                );
                emit(out, "message_stop", &json!({"type": "message_stop"}));
                self.done = true;
            }
        }
    }

    /// Writes an in-band `error` event (for failures after the stream began).
    pub fn encode_error(&mut self, err: &ClientError, out: &mut Vec<u8>) {
        emit(out, "error", &encode_error(err));
    }

    fn message_start(&mut self, id: &str, model: &str, input: Option<u64>, out: &mut Vec<u8>) {
        self.started = true;
        self.start_input = input;
        emit(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "content": [],
                "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input.unwrap_or(0), "output_tokens": 0},
            }}),
        );
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.message_start(SYNTHETIC_MESSAGE_ID, "", None, out);
        }
    }

    /// Opens a block of `kind` unless one is open; returns its index.
    fn open_block(&mut self, kind: BlockKind, out: &mut Vec<u8>) -> u32 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        let block = match kind {
            BlockKind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        emit(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            emit(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// `message_delta.usage`: always the output tokens; the prompt tokens (Anthropic's
    /// way, without cache) only when `message_start` did not already say it all.
    fn delta_usage(&self) -> Value {
        let mut m = Map::new();
        let Some(u) = &self.usage else {
            m.insert("output_tokens".into(), 0.into());
            return Value::Object(m);
        };
        let has_cache = u.cache_read_tokens.is_some() || u.cache_write_tokens.is_some();
        if self.start_input != Some(u.input_tokens) || has_cache {
            m.insert("input_tokens".into(), anthropic_input_tokens(u).into());
            if let Some(w) = u.cache_write_tokens {
                m.insert("cache_creation_input_tokens".into(), w.into());
            }
            if let Some(r) = u.cache_read_tokens {
                m.insert("cache_read_input_tokens".into(), r.into());
            }
        }
        m.insert("output_tokens".into(), u.output_tokens.into());
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests;
