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
//! - Thinking without a signature cannot be sent back to Anthropic and is dropped;
//!   `redacted_thinking` from clients is dropped too. Empty text blocks are dropped
//!   (Anthropic rejects them), and a message left with no blocks disappears.
//! - Neutral usage counts *all* prompt tokens in `input_tokens`; Anthropic's
//!   `input_tokens` excludes cache reads and writes. We add them on decode and
//!   subtract them on encode.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::chat::{
    self, ClientError, ErrorKind, FinishReason, ImageSource, Message, Part, ResponseFormat, Role,
    StreamEvent, SystemBlock, Tool, ToolChoice, UpstreamErrorBody, Usage, WireError,
};
use crate::sse::{SseEvent, write_event};

/// The `anthropic-version` header value we speak.
pub const API_VERSION: &str = "2023-06-01";

/// The message id used when a stream has to be opened without a `Start` event.
const SYNTHETIC_MESSAGE_ID: &str = "msg_backstop";

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
        "max_tokens" => FinishReason::Length,
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
            .map(|(i, m)| decode_message(m, &index("messages", i)))
            .collect::<Result<Vec<_>, _>>()?,
        v => return Err(expected("messages", "an array of messages", v)),
    };

    let tools = match opt(obj, "tools") {
        None => Vec::new(),
        Some(Value::Array(ts)) => ts
            .iter()
            .enumerate()
            .map(|(i, t)| decode_tool(t, &index("tools", i)))
            .collect::<Result<_, _>>()?,
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

fn decode_message(v: &Value, path: &str) -> Result<Message, WireError> {
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
                if let Some(p) = decode_block(b, &index(&content_path, i), role)? {
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

fn decode_block(v: &Value, path: &str, role: Role) -> Result<Option<Part>, WireError> {
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
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| decode_tool_result_block(b, &index(&content_path, i)))
                    .collect::<Result<_, _>>()?,
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
        other => {
            return Err(WireError::at(
                field(path, "type"),
                format!(
                    "unsupported content block type \"{other}\"; supported: {SUPPORTED_BLOCKS}"
                ),
            ));
        }
    };
    Ok(Some(part))
}

fn decode_tool_result_block(v: &Value, path: &str) -> Result<Part, WireError> {
    let obj = as_object(v, path)?;
    match req_str(obj, "type", path)? {
        "text" => Ok(Part::Text {
            text: req_str(obj, "text", path)?.to_string(),
        }),
        "image" => Ok(Part::Image {
            source: decode_image_source(req(obj, "source", path)?, &field(path, "source"))?,
        }),
        other => Err(WireError::at(
            field(path, "type"),
            format!(
                "unsupported tool_result content block type \"{other}\"; supported: text, image"
            ),
        )),
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

fn decode_tool(v: &Value, path: &str) -> Result<Tool, WireError> {
    let obj = as_object(v, path)?;
    if let Some(ty) = opt_str(obj, "type", path)?
        && ty != "custom"
    {
        return Err(WireError::at(
            field(path, "type"),
            format!(
                "tool type \"{ty}\" (an Anthropic server tool) is not supported by Backstop; \
                 only custom tools with name, description and input_schema can be translated"
            ),
        ));
    }
    let schema = req(obj, "input_schema", path)?;
    if !schema.is_object() {
        return Err(expected(
            &field(path, "input_schema"),
            "a JSON Schema object",
            schema,
        ));
    }
    Ok(Tool {
        name: req_str(obj, "name", path)?.to_string(),
        description: opt_str(obj, "description", path)?.map(str::to_string),
        parameters: schema.clone(),
    })
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
            "id": id,
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
            m.insert("tool_use_id".into(), tool_call_id.clone().into());
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
                "id": id,
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
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. Unknown event and delta types are ignored (Anthropic
    /// may add new ones); malformed JSON is an error.
    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        let data = ev.data.trim();
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
}

fn emit(out: &mut Vec<u8>, name: &str, data: &Value) {
    write_event(out, Some(name), &data.to_string());
}

impl StreamEncoder {
    pub fn new() -> Self {
        Self::default()
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
                    self.message_start(id, model, *input_tokens, out);
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
                            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::chat::Request;
    use bytes::Bytes;
    use proptest::prelude::*;

    const STREAM_FIXTURE: &str = include_str!("../../tests/fixtures/anthropic/stream_tool_use.sse");

    /// A minimal SSE splitter for tests (the real parser lives in `crate::sse`).
    fn parse_sse(text: &str) -> Vec<SseEvent> {
        text.split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|frame| {
                let mut ev = SseEvent {
                    raw: Bytes::from(format!("{frame}\n\n")),
                    ..SseEvent::default()
                };
                let mut data = Vec::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        ev.event = Some(e.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d);
                    }
                }
                ev.data = data.join("\n");
                ev
            })
            .collect()
    }

    fn decode_all(events: &[SseEvent]) -> Vec<StreamEvent> {
        let mut dec = StreamDecoder::new();
        events.iter().flat_map(|e| dec.push(e).unwrap()).collect()
    }

    fn text(t: &str) -> Part {
        Part::Text { text: t.into() }
    }

    fn base(messages: Value) -> Value {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages})
    }

    // ---- decode_request -------------------------------------------------

    #[test]
    fn decodes_simple_request_with_system_string() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": [{"type": "text", "text": "How are you?"}]}
            ],
            "stop_sequences": ["\n\nHuman:", "END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stream": true,
            "metadata": {"user_id": "user-1234"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "service_tier": "auto"
        });
        let r = decode_request(&body).unwrap();
        assert_eq!(r.model, "claude-sonnet-4-5");
        assert_eq!(
            r.system,
            vec![SystemBlock {
                text: "You are terse.".into()
            }]
        );
        assert_eq!(
            r.messages,
            vec![
                Message::text(Role::User, "Hello"),
                Message::text(Role::Assistant, "Hi."),
                Message::text(Role::User, "How are you?"),
            ]
        );
        assert_eq!(r.max_tokens, Some(1024));
        assert_eq!(r.stop, vec!["\n\nHuman:".to_string(), "END".to_string()]);
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.top_p, Some(0.9));
        assert_eq!(r.top_k, Some(40));
        assert!(r.stream);
        assert_eq!(r.user.as_deref(), Some("user-1234"));
        assert_eq!(
            r.reasoning,
            Some(json!({"type": "enabled", "budget_tokens": 2048}))
        );
        assert_eq!(r.tool_choice, None);
        assert_eq!(r.parallel_tool_calls, None);
    }

    #[test]
    fn decodes_system_blocks_and_images() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 512,
            "system": [
                {"type": "text", "text": "Be helpful.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in French."}
            ],
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "Compare these."}
            ]}]
        });
        let r = decode_request(&body).unwrap();
        assert_eq!(
            r.system,
            vec![
                SystemBlock {
                    text: "Be helpful.".into()
                },
                SystemBlock {
                    text: "Answer in French.".into()
                }
            ]
        );
        assert_eq!(
            r.messages[0].content,
            vec![
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into()
                    }
                },
                Part::Image {
                    source: ImageSource::Url {
                        url: "https://example.com/cat.jpg".into()
                    }
                },
                text("Compare these."),
            ]
        );
    }

    #[test]
    fn decodes_tools_parallel_tool_use_and_results() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [{
                "name": "get_weather",
                "description": "Get the weather",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
            }],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": false},
            "messages": [
                {"role": "user", "content": "Weather in Paris and London?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two lookups.", "signature": "EqQBCgIYAhIM"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "London"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                     "content": [{"type": "text", "text": "service unavailable"}]},
                    {"type": "text", "text": "Go on."}
                ]}
            ]
        });
        let r = decode_request(&body).unwrap();
        assert_eq!(
            r.tools,
            vec![Tool {
                name: "get_weather".into(),
                description: Some("Get the weather".into()),
                parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
            }]
        );
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.parallel_tool_calls, Some(true));
        assert_eq!(
            r.messages[1].content,
            vec![
                Part::Thinking {
                    text: "Two lookups.".into(),
                    signature: Some("EqQBCgIYAhIM".into())
                },
                text("Checking."),
                Part::ToolCall {
                    id: "toolu_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris"}"#.into()
                },
                Part::ToolCall {
                    id: "toolu_2".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"London"}"#.into()
                },
            ]
        );
        assert_eq!(
            r.messages[2].content,
            vec![
                Part::ToolResult {
                    tool_call_id: "toolu_1".into(),
                    content: vec![text("18°C, sunny")],
                    is_error: false
                },
                Part::ToolResult {
                    tool_call_id: "toolu_2".into(),
                    content: vec![text("service unavailable")],
                    is_error: true
                },
                text("Go on."),
            ]
        );
    }

    #[test]
    fn decodes_tool_choice_variants() {
        let with = |choice: Value| {
            let mut b = base(json!([{"role": "user", "content": "x"}]));
            b["tool_choice"] = choice;
            decode_request(&b).unwrap()
        };
        let r = with(json!({"type": "auto", "disable_parallel_tool_use": true}));
        assert_eq!(
            (r.tool_choice, r.parallel_tool_calls),
            (Some(ToolChoice::Auto), Some(false))
        );
        let r = with(json!({"type": "none"}));
        assert_eq!(
            (r.tool_choice, r.parallel_tool_calls),
            (Some(ToolChoice::None), None)
        );
        let r = with(json!({"type": "tool", "name": "get_weather"}));
        assert_eq!(
            r.tool_choice,
            Some(ToolChoice::Tool {
                name: "get_weather".into()
            })
        );
    }

    fn err_of(body: Value) -> WireError {
        decode_request(&body).unwrap_err()
    }

    #[test]
    fn errors_name_the_path() {
        let e = err_of(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.path.as_deref(), Some("max_tokens"));
        assert_eq!(e.message, "max_tokens: Field required");

        let e = err_of(json!({"model": "m", "max_tokens": 0, "messages": []}));
        assert_eq!(e.message, "max_tokens: expected a positive integer, got 0");

        let e = err_of(json!({"max_tokens": 5, "messages": []}));
        assert_eq!(e.message, "model: Field required");

        let e = err_of(base(json!([
            {"role": "user", "content": "x"},
            {"role": "tool", "content": "y"}
        ])));
        assert_eq!(e.path.as_deref(), Some("messages[1].role"));
        assert!(e.message.contains("\"tool\""), "{}", e.message);

        let e = err_of(base(json!([{"role": "system", "content": "x"}])));
        assert_eq!(e.path.as_deref(), Some("messages[0].role"));
        assert!(e.message.contains("top-level `system`"), "{}", e.message);

        let e = err_of(base(json!([{"role": "user", "content": [
            {"type": "text", "text": "read this"},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}
        ]}])));
        assert_eq!(e.path.as_deref(), Some("messages[0].content[1].type"));
        assert!(e.message.contains("\"document\""), "{}", e.message);

        let e = err_of(base(
            json!([{"role": "user", "content": [{"type": "text"}]}]),
        ));
        assert_eq!(e.message, "messages[0].content[0].text: Field required");

        let e = err_of(base(json!([{"role": "user", "content": 42}])));
        assert_eq!(e.path.as_deref(), Some("messages[0].content"));

        let e = err_of(base(json!([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}
        ]}])));
        assert_eq!(
            e.path.as_deref(),
            Some("messages[0].content[0].content[0].type")
        );

        let e = err_of(base(json!([{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "n", "input": {}}
        ]}])));
        assert_eq!(e.path.as_deref(), Some("messages[0].content[0].type"));

        let mut b = base(json!([{"role": "user", "content": "x"}]));
        b["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
        let e = err_of(b);
        assert_eq!(e.path.as_deref(), Some("tools[0].type"));
        assert!(e.message.contains("web_search_20250305"), "{}", e.message);

        let mut b = base(json!([{"role": "user", "content": "x"}]));
        b["tool_choice"] = json!({"type": "required"});
        assert_eq!(err_of(b).path.as_deref(), Some("tool_choice.type"));

        let e = err_of(base(json!([])));
        assert_eq!(e.path.as_deref(), Some("messages"));

        let e = err_of(json!([1, 2]));
        assert_eq!(e.path, None);
        assert!(e.message.contains("JSON object"));
    }

    // ---- encode_request -------------------------------------------------

    #[test]
    fn encodes_full_request() {
        let req = Request {
            model: "default".into(),
            system: vec![SystemBlock {
                text: "Be terse.".into(),
            }],
            messages: vec![
                Message::text(Role::User, "What is in this picture?"),
                Message {
                    role: Role::User,
                    content: vec![Part::Image {
                        source: ImageSource::Url {
                            url: "data:image/png;base64,iVBORw0KGgo=".into(),
                        },
                    }],
                    name: None,
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Part::Thinking {
                            text: "hmm".into(),
                            signature: None,
                        },
                        Part::Thinking {
                            text: "signed".into(),
                            signature: Some("sig".into()),
                        },
                        Part::ToolCall {
                            id: "call_1".into(),
                            name: "lookup".into(),
                            arguments: r#"{"q":"cat"}"#.into(),
                        },
                    ],
                    name: None,
                },
                Message {
                    role: Role::User,
                    content: vec![
                        text("thanks"),
                        Part::ToolResult {
                            tool_call_id: "call_1".into(),
                            content: vec![
                                text("a cat"),
                                Part::Image {
                                    source: ImageSource::Url {
                                        url: "https://example.com/c.png".into(),
                                    },
                                },
                            ],
                            is_error: false,
                        },
                    ],
                    name: None,
                },
                Message::text(Role::Assistant, "It is"),
            ],
            tools: vec![Tool {
                name: "lookup".into(),
                description: Some("Look things up".into()),
                parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            }],
            tool_choice: Some(ToolChoice::Tool {
                name: "lookup".into(),
            }),
            parallel_tool_calls: Some(false),
            max_tokens: None,
            temperature: Some(0.2),
            top_p: Some(0.5),
            top_k: Some(10),
            stop: vec!["END".into()],
            response_format: None,
            stream: true,
            user: Some("u-1".into()),
            metadata: Some(Map::from_iter([("k".to_string(), json!("v"))])),
            reasoning: Some(json!({"type": "enabled", "budget_tokens": 1024})),
        };
        let body = encode_request(&req, "claude-opus-4-5", 4096);
        assert_eq!(
            body,
            json!({
                "model": "claude-opus-4-5",
                "max_tokens": 4096,
                "system": "Be terse.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "signed", "signature": "sig"},
                        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": [
                            {"type": "text", "text": "a cat"},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}}
                        ]},
                        {"type": "text", "text": "thanks"}
                    ]},
                    {"role": "assistant", "content": [{"type": "text", "text": "It is"}]}
                ],
                "stop_sequences": ["END"],
                "temperature": 0.2,
                "top_p": 0.5,
                "top_k": 10,
                "metadata": {"user_id": "u-1"},
                "tools": [{"name": "lookup", "description": "Look things up",
                           "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": true},
                "stream": true,
                "thinking": {"type": "enabled", "budget_tokens": 1024}
            })
        );
    }

    #[test]
    fn merges_same_role_and_puts_tool_results_first() {
        let req = Request {
            messages: vec![
                Message::text(Role::User, "a"),
                Message::text(Role::User, "b"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Part::ToolCall {
                            id: "t1".into(),
                            name: "f".into(),
                            arguments: String::new(),
                        },
                        Part::ToolCall {
                            id: "t2".into(),
                            name: "f".into(),
                            arguments: "null".into(),
                        },
                    ],
                    name: None,
                },
                Message::text(Role::User, "note first"),
                Message {
                    role: Role::User,
                    content: vec![Part::ToolResult {
                        tool_call_id: "t1".into(),
                        content: vec![],
                        is_error: true,
                    }],
                    name: None,
                },
                Message {
                    role: Role::User,
                    content: vec![Part::ToolResult {
                        tool_call_id: "t2".into(),
                        content: vec![text("ok")],
                        is_error: false,
                    }],
                    name: None,
                },
                Message::text(Role::Assistant, ""),
            ],
            max_tokens: Some(100),
            ..Request::default()
        };
        let body = encode_request(&req, "m", 1);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                    {"type": "tool_use", "id": "t2", "name": "f", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]},
                    {"type": "text", "text": "note first"}
                ]}
            ])
        );
        assert_eq!(body["max_tokens"], 100);
        assert!(body.get("system").is_none());
        assert!(body.get("tools").is_none());
        assert!(body.get("stream").is_none());
        assert!(body.get("metadata").is_none());
    }

    #[test]
    fn encodes_json_mode_as_system_instruction() {
        let mut req = Request {
            system: vec![SystemBlock {
                text: "You extract data.".into(),
            }],
            messages: vec![Message::text(Role::User, "Alice is 30")],
            response_format: Some(ResponseFormat::JsonSchema {
                json_schema: json!({"name": "person", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}}),
            }),
            ..Request::default()
        };
        let body = encode_request(&req, "m", 1);
        let system = body["system"].as_array().unwrap();
        assert_eq!(system.len(), 2);
        assert_eq!(
            system[0],
            json!({"type": "text", "text": "You extract data."})
        );
        let instruction = system[1]["text"].as_str().unwrap();
        assert!(instruction.starts_with(JSON_MODE_INSTRUCTION));
        assert!(
            instruction.ends_with(r#"{"type":"object","properties":{"age":{"type":"integer"}}}"#)
        );

        req.system.clear();
        req.response_format = Some(ResponseFormat::JsonObject);
        let body = encode_request(&req, "m", 1);
        assert_eq!(body["system"], json!(JSON_MODE_INSTRUCTION));

        req.response_format = Some(ResponseFormat::Text);
        assert!(encode_request(&req, "m", 1).get("system").is_none());
    }

    #[test]
    fn encodes_tool_choice_variants() {
        let mk = |choice: Option<ToolChoice>, parallel: Option<bool>| {
            let req = Request {
                messages: vec![Message::text(Role::User, "x")],
                tools: vec![Tool {
                    name: "f".into(),
                    description: None,
                    parameters: json!({"type": "object"}),
                }],
                tool_choice: choice,
                parallel_tool_calls: parallel,
                ..Request::default()
            };
            encode_request(&req, "m", 1).get("tool_choice").cloned()
        };
        assert_eq!(
            mk(Some(ToolChoice::Auto), None),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            mk(Some(ToolChoice::None), Some(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            mk(Some(ToolChoice::Required), Some(true)),
            Some(json!({"type": "any"}))
        );
        assert_eq!(mk(None, None), None);
        assert_eq!(
            mk(None, Some(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
    }

    #[test]
    fn tool_input_is_lenient() {
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input("  "), json!({}));
        assert_eq!(tool_input("null"), json!({}));
        assert_eq!(tool_input(r#"{"a":[1,2]}"#), json!({"a": [1, 2]}));
        assert_eq!(tool_input(r#"{"a":[1,2"#), json!({"a": [1, 2]}));
        assert_eq!(tool_input(r#"{"a":"hel"#), json!({"a": "hel"}));
        assert_eq!(tool_input(r#"{"a":1,"#), json!({"a": 1}));
        assert_eq!(tool_input("[1]"), json!({"_raw": "[1]"}));
        assert_eq!(tool_input("not json"), json!({"_raw": "not json"}));
        assert_eq!(tool_input(r#"{"a":}"#), json!({"_raw": r#"{"a":}"#}));
    }

    // ---- round trip property ---------------------------------------------

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9 .,!?]{0,15}"
    }

    fn image() -> impl Strategy<Value = Part> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(|p| Part::Image {
                source: ImageSource::Url {
                    url: format!("https://example.com/{p}.png")
                }
            }),
            (
                prop::sample::select(vec!["image/png", "image/jpeg", "image/gif", "image/webp"]),
                "[A-Za-z0-9+/]{4,24}"
            )
                .prop_map(|(mt, data)| Part::Image {
                    source: ImageSource::Base64 {
                        media_type: mt.into(),
                        data
                    }
                }),
        ]
    }

    fn text_or_image() -> impl Strategy<Value = Part> {
        prop_oneof![word().prop_map(|t| Part::Text { text: t }), image()]
    }

    fn arguments() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            any::<i32>().prop_map(Value::from),
            word().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ];
        prop::collection::vec(("[a-z]{1,6}", value), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()).to_string())
    }

    fn user_message() -> impl Strategy<Value = Message> {
        let result = (
            "toolu_[a-zA-Z0-9]{4,8}",
            prop::collection::vec(text_or_image(), 0..3),
            any::<bool>(),
        )
            .prop_map(|(id, content, is_error)| Part::ToolResult {
                tool_call_id: id,
                content,
                is_error,
            });
        (
            prop::collection::vec(result, 0..3),
            prop::collection::vec(text_or_image(), 0..3),
        )
            .prop_filter("a message has content", |(r, o)| {
                !r.is_empty() || !o.is_empty()
            })
            .prop_map(|(mut results, others)| {
                results.extend(others);
                Message {
                    role: Role::User,
                    content: results,
                    name: None,
                }
            })
    }

    fn assistant_message() -> impl Strategy<Value = Message> {
        let part = prop_oneof![
            word().prop_map(|t| Part::Text { text: t }),
            ("toolu_[a-zA-Z0-9]{4,8}", "[a-z_]{1,10}", arguments()).prop_map(
                |(id, name, arguments)| Part::ToolCall {
                    id,
                    name,
                    arguments
                }
            ),
            (word(), "[A-Za-z0-9]{8,16}").prop_map(|(t, s)| Part::Thinking {
                text: t,
                signature: Some(s)
            }),
        ];
        prop::collection::vec(part, 1..4).prop_map(|content| Message {
            role: Role::Assistant,
            content,
            name: None,
        })
    }

    fn messages() -> impl Strategy<Value = Vec<Message>> {
        (
            prop::collection::vec((user_message(), assistant_message()), 1..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(pairs, skip_first, drop_last)| {
                let mut ms: Vec<Message> = pairs.into_iter().flat_map(|(u, a)| [u, a]).collect();
                if skip_first {
                    ms.remove(0);
                }
                if drop_last && ms.len() > 1 {
                    ms.pop();
                }
                ms
            })
    }

    fn tenth() -> impl Strategy<Value = Option<f64>> {
        prop::option::of((0u32..=20).prop_map(|k| f64::from(k) / 10.0))
    }

    fn tooling() -> impl Strategy<Value = (Vec<Tool>, Option<ToolChoice>, Option<bool>)> {
        let tool =
            ("[a-z_]{1,10}", prop::option::of(word())).prop_map(|(name, description)| Tool {
                name,
                description,
                parameters: json!({"type": "object", "properties": {"x": {"type": "string"}}}),
            });
        let choice = prop::option::of(prop_oneof![
            Just(ToolChoice::Auto),
            Just(ToolChoice::None),
            Just(ToolChoice::Required),
            "[a-z_]{1,10}".prop_map(|name| ToolChoice::Tool { name }),
        ]);
        (prop::collection::vec(tool, 0..3), choice, any::<bool>()).prop_map(
            |(tools, choice, serial)| {
                if tools.is_empty() {
                    return (tools, None, None);
                }
                let parallel = match &choice {
                    Some(c) if *c != ToolChoice::None && serial => Some(false),
                    _ => None,
                };
                (tools, choice, parallel)
            },
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            (prop::collection::vec(word(), 0..3), messages(), tooling()),
            (1u32..200_000, tenth(), tenth(), prop::option::of(1u32..500)),
            (
                prop::collection::vec(word(), 0..3),
                any::<bool>(),
                prop::option::of("[a-z0-9-]{1,12}"),
                prop::option::of(
                    (1024u32..8192).prop_map(|b| json!({"type": "enabled", "budget_tokens": b})),
                ),
            ),
        )
            .prop_map(
                |(
                    (system, messages, (tools, tool_choice, parallel_tool_calls)),
                    (max_tokens, temperature, top_p, top_k),
                    (stop, stream, user, reasoning),
                )| Request {
                    model: "client-model".into(),
                    system: system
                        .into_iter()
                        .map(|text| SystemBlock { text })
                        .collect(),
                    messages,
                    tools,
                    tool_choice,
                    parallel_tool_calls,
                    max_tokens: Some(max_tokens),
                    temperature,
                    top_p,
                    top_k,
                    stop,
                    response_format: None,
                    stream,
                    user,
                    metadata: None,
                    reasoning,
                },
            )
    }

    proptest! {
        #[test]
        fn request_round_trips(req in request()) {
            let body = encode_request(&req, "claude-upstream", 1);
            let mut back = decode_request(&body).unwrap();
            prop_assert_eq!(&back.model, "claude-upstream");
            back.model = req.model.clone();
            prop_assert_eq!(back, req);
        }
    }

    // ---- responses --------------------------------------------------------

    #[test]
    fn decodes_realistic_response_with_cache_tokens() {
        let body = br#"{
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": "I'll check the weather."},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 50, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000, "output_tokens": 75}
        }"#;
        let r = decode_response(body).unwrap();
        assert_eq!(r.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(
            r.content,
            vec![
                Part::Thinking {
                    text: "Let me think.".into(),
                    signature: Some("EqQBCgIYAhIM".into())
                },
                text("I'll check the weather."),
                Part::ToolCall {
                    id: "toolu_01A09q90qw90lq917835lq9".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"San Francisco, CA"}"#.into()
                },
            ]
        );
        assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 1070,
                output_tokens: 75,
                cache_read_tokens: Some(1000),
                cache_write_tokens: Some(20)
            }
        );
        assert!(r.created > 0);

        let encoded = encode_response(&r);
        assert_eq!(
            encoded["usage"],
            json!({"input_tokens": 50, "output_tokens": 75, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000})
        );
        let mut back = decode_response(encoded.to_string().as_bytes()).unwrap();
        back.created = r.created;
        assert_eq!(back, r);
    }

    #[test]
    fn encodes_response() {
        let resp = chat::Response {
            id: "chatcmpl-1".into(),
            model: "gpt-4o".into(),
            content: vec![
                Part::Thinking {
                    text: "unsigned".into(),
                    signature: None,
                },
                text("Done"),
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                },
            ],
            finish_reason: Some(FinishReason::StopSequence),
            stop_sequence: Some("END".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 3,
                cache_read_tokens: Some(40),
                cache_write_tokens: None,
            },
            created: 1,
        };
        assert_eq!(
            encode_response(&resp),
            json!({
                "id": "chatcmpl-1",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o",
                "content": [
                    {"type": "thinking", "thinking": "unsigned", "signature": ""},
                    {"type": "text", "text": "Done"},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}
                ],
                "stop_reason": "stop_sequence",
                "stop_sequence": "END",
                // 10 prompt tokens cannot hold 40 cached ones: saturates at 0.
                "usage": {"input_tokens": 0, "output_tokens": 3, "cache_read_input_tokens": 40}
            })
        );
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (wire, neutral) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::StopSequence),
            ("max_tokens", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
        ] {
            assert_eq!(finish_from_stop_reason(wire), neutral);
            assert_eq!(stop_reason_str(neutral), wire);
        }
        assert_eq!(finish_from_stop_reason("pause_turn"), FinishReason::Other);
        assert_eq!(stop_reason_str(FinishReason::Other), "end_turn");
    }

    #[test]
    fn bad_responses_are_errors() {
        assert!(decode_response(b"<html>502 Bad Gateway</html>").is_err());
        assert!(decode_response(b"[]").is_err());
        assert!(decode_response(br#"{"type":"message","content":[]}"#).is_err());
        let e = decode_response(include_bytes!(
            "../../tests/fixtures/anthropic/error_overloaded.json"
        ))
        .unwrap_err();
        assert!(e.message.contains("Overloaded"), "{}", e.message);
        assert!(e.message.contains("overloaded_error"), "{}", e.message);
    }

    // ---- errors -----------------------------------------------------------

    #[test]
    fn decodes_error_bodies() {
        assert_eq!(
            decode_error(include_bytes!(
                "../../tests/fixtures/anthropic/error_overloaded.json"
            )),
            Some(UpstreamErrorBody {
                kind: Some("overloaded_error".into()),
                code: None,
                message: "Overloaded".into()
            })
        );
        assert_eq!(
            decode_error(include_bytes!(
                "../../tests/fixtures/anthropic/error_invalid_request.json"
            ))
            .and_then(|e| e.kind),
            Some("invalid_request_error".into())
        );
        assert_eq!(
            decode_error(br#"{"type":"message","id":"x","content":[]}"#),
            None
        );
        assert_eq!(decode_error(b"upstream connect error"), None);
        assert_eq!(
            decode_error(br#"{"type":"error","error":{"type":"api_error"}}"#),
            None
        );
    }

    #[test]
    fn encodes_errors_per_kind() {
        for (kind, ty) in [
            (ErrorKind::InvalidRequest, "invalid_request_error"),
            (ErrorKind::Authentication, "authentication_error"),
            (ErrorKind::Permission, "permission_error"),
            (ErrorKind::NotFound, "not_found_error"),
            (ErrorKind::RequestTooLarge, "request_too_large"),
            (ErrorKind::RateLimit, "rate_limit_error"),
            (ErrorKind::Api, "api_error"),
            (ErrorKind::Overloaded, "overloaded_error"),
            (ErrorKind::Timeout, "timeout_error"),
        ] {
            let body = encode_error(&ClientError::new(kind, "boom"));
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": ty, "message": "boom"}})
            );
            assert_eq!(
                decode_error(body.to_string().as_bytes())
                    .and_then(|e| e.kind)
                    .as_deref(),
                Some(ty)
            );
        }
    }

    // ---- streaming --------------------------------------------------------

    #[test]
    fn decodes_realistic_stream() {
        let events = decode_all(&parse_sse(STREAM_FIXTURE));
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                    model: "claude-sonnet-4-5-20250929".into(),
                    input_tokens: Some(572),
                },
                StreamEvent::TextDelta {
                    text: "Okay, let me check".into()
                },
                StreamEvent::TextDelta {
                    text: " both cities.".into()
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{\"location\":".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: " \"Paris\"}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "toolu_01Hq7bSgZ4TdEt3aC5cXzP2N".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: "{\"location\": \"London\"}".into()
                },
                StreamEvent::Finish {
                    reason: FinishReason::ToolCalls,
                    stop_sequence: None
                },
                StreamEvent::Usage {
                    usage: Usage {
                        input_tokens: 572,
                        output_tokens: 89,
                        cache_read_tokens: Some(100),
                        cache_write_tokens: Some(0)
                    }
                },
                StreamEvent::Done,
            ]
        );
    }

    fn sse(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: Some(event.into()),
            data: data.into(),
            raw: Bytes::new(),
        }
    }

    #[test]
    fn decodes_in_band_error_and_rejects_garbage() {
        let mut dec = StreamDecoder::new();
        let got = dec
            .push(&sse(
                "error",
                r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
            ))
            .unwrap();
        assert_eq!(
            got,
            vec![StreamEvent::Error {
                error: UpstreamErrorBody {
                    kind: Some("overloaded_error".into()),
                    code: None,
                    message: "Overloaded".into()
                }
            }]
        );
        assert!(dec.push(&sse("content_block_delta", "{not json")).is_err());
        assert!(dec.push(&sse("message_start", "42")).is_err());
        // input_json_delta for a block that never started as tool_use.
        let e = dec
            .push(&sse(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            ))
            .unwrap_err();
        assert!(e.message.contains("block 3"), "{}", e.message);
        // The event name alone is enough (empty data), and unknown events are ignored.
        assert_eq!(
            dec.push(&sse("message_stop", "")).unwrap(),
            vec![StreamEvent::Done]
        );
        assert!(dec.push(&sse("ping", "{}")).unwrap().is_empty());
        assert!(
            dec.push(&sse("future_event", r#"{"type":"future_event"}"#))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn decodes_thinking_and_stop_sequence_stream() {
        let mut dec = StreamDecoder::new();
        let frames = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-opus-4-5","usage":{"input_tokens":10,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":"Hi"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"input_tokens":12,"output_tokens":7}}"#,
        ];
        let got: Vec<StreamEvent> = frames
            .iter()
            .flat_map(|f| {
                dec.push(&SseEvent {
                    data: (*f).into(),
                    ..SseEvent::default()
                })
                .unwrap()
            })
            .collect();
        assert_eq!(
            got,
            vec![
                StreamEvent::Start {
                    id: "msg_1".into(),
                    model: "claude-opus-4-5".into(),
                    input_tokens: Some(10)
                },
                StreamEvent::ThinkingDelta { text: "Hmm".into() },
                StreamEvent::TextDelta { text: "Hi".into() },
                StreamEvent::Finish {
                    reason: FinishReason::StopSequence,
                    stop_sequence: Some("END".into())
                },
                StreamEvent::Usage {
                    usage: Usage {
                        input_tokens: 12,
                        output_tokens: 7,
                        cache_read_tokens: None,
                        cache_write_tokens: None
                    }
                },
            ]
        );
    }

    fn encode_all(events: &[StreamEvent]) -> String {
        let mut enc = StreamEncoder::new();
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        let events = vec![
            StreamEvent::Start {
                id: "msg_x".into(),
                model: "gpt-4o".into(),
                input_tokens: Some(120),
            },
            StreamEvent::ThinkingDelta {
                text: "Plan".into(),
            },
            StreamEvent::TextDelta {
                text: "Hello".into(),
            },
            StreamEvent::TextDelta {
                text: ", world".into(),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_b".into(),
                name: "g".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None,
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 120,
                    output_tokens: 33,
                    cache_read_tokens: Some(100),
                    cache_write_tokens: None,
                },
            },
            StreamEvent::Done,
        ];
        let text = encode_all(&events);
        let frames = parse_sse(&text);
        // Every frame's `event:` name matches its JSON type.
        for f in &frames {
            let v: Value = serde_json::from_str(&f.data).unwrap();
            assert_eq!(v["type"].as_str(), f.event.as_deref());
        }
        let names: Vec<&str> = frames.iter().filter_map(|f| f.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let start: Value = serde_json::from_str(&frames[0].data).unwrap();
        assert_eq!(
            start,
            json!({"type": "message_start", "message": {
                "id": "msg_x", "type": "message", "role": "assistant", "content": [], "model": "gpt-4o",
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 120, "output_tokens": 0}}})
        );
        let tool_start: Value = serde_json::from_str(&frames[12].data).unwrap();
        assert_eq!(
            tool_start,
            json!({"type": "content_block_start", "index": 3,
                   "content_block": {"type": "tool_use", "id": "call_b", "name": "g", "input": {}}})
        );
        let delta: Value = serde_json::from_str(&frames[15].data).unwrap();
        assert_eq!(
            delta,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 33}})
        );
        // The decoder emits Finish before Usage, the same as the input order here.
        assert_eq!(decode_all(&frames), events);
    }

    #[test]
    fn encoder_synthesizes_start_and_defaults() {
        let text = encode_all(&[
            StreamEvent::TextDelta { text: "Hi".into() },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 9,
                    output_tokens: 2,
                    ..Usage::default()
                },
            },
            StreamEvent::Done,
            StreamEvent::TextDelta {
                text: "after done".into(),
            },
        ]);
        let frames = parse_sse(&text);
        let first: Value = serde_json::from_str(&frames[0].data).unwrap();
        assert_eq!(first["message"]["id"], "msg_backstop");
        assert_eq!(first["message"]["usage"]["input_tokens"], 0);
        let delta: Value = serde_json::from_str(&frames[frames.len() - 2].data).unwrap();
        assert_eq!(
            delta,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"input_tokens": 9, "output_tokens": 2}})
        );
        assert_eq!(
            frames.last().unwrap().event.as_deref(),
            Some("message_stop")
        );
        assert!(!text.contains("after done"));
        let decoded = decode_all(&frames);
        assert_eq!(decoded.last(), Some(&StreamEvent::Done),);
        assert!(decoded.contains(&StreamEvent::Usage {
            usage: Usage {
                input_tokens: 9,
                output_tokens: 2,
                ..Usage::default()
            }
        }));
    }

    #[test]
    fn encoder_writes_errors() {
        let mut enc = StreamEncoder::new();
        let mut out = Vec::new();
        enc.encode_error(
            &ClientError::new(ErrorKind::Overloaded, "all targets overloaded"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"all targets overloaded\"}}\n\n"
        );
        let upstream = StreamEvent::Error {
            error: UpstreamErrorBody {
                kind: Some("server_error".into()),
                code: None,
                message: "boom".into(),
            },
        };
        let frames = parse_sse(&encode_all(&[upstream]));
        assert_eq!(frames.len(), 1);
        assert_eq!(
            decode_all(&frames),
            vec![StreamEvent::Error {
                error: UpstreamErrorBody {
                    kind: Some("api_error".into()),
                    code: None,
                    message: "boom".into()
                }
            }]
        );
    }
}
