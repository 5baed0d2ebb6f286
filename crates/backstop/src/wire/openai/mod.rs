//! OpenAI Chat Completions (`POST /v1/chat/completions`), both sides.
//!
//! Ingress: what an OpenAI SDK client sends us ([`decode_request`]) and what it
//! gets back ([`encode_response`], [`StreamEncoder`], [`encode_error`]).
//! Egress: what we send an OpenAI-compatible provider ([`encode_request`]) and
//! what it answers ([`decode_response`], [`StreamDecoder`], [`decode_error`]).
//! The egress parsers are lenient about the dialects of OpenAI-compatible
//! servers (OpenRouter, DeepSeek, vLLM, Groq, Gemini's compatibility layer):
//! `reasoning_content`/`reasoning`, numeric error codes, in-band stream errors.
//!
//! Conventions (see also [`crate::chat`]):
//! - `Usage::input_tokens` is OpenAI's `prompt_tokens`, which *includes* the
//!   cached tokens reported in `prompt_tokens_details.cached_tokens`.
//! - Everything is built on `serde_json::Value` so that every decoding error
//!   can name the JSON path of the offending field.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::chat::{self};
use crate::chat::{
    ChunkEvents, ClientError, ErrorKind, FinishReason, ImageSource, Message, Part, Request,
    ResponseFormat, Role, StreamEvent, SystemBlock, Tool, ToolChoice, UpstreamErrorBody, Usage,
    WireError,
};
use crate::sse::{SseEvent, write_event};
use crate::wire::scan::{Cursor, Key, RawStr, Seen, StrAt, Template};
use std::ops::Range;

/// Stream id used when a stream to a client begins without a `Start` event.
const SYNTHETIC_ID: &str = "chatcmpl-backstop";

/// A completion id in OpenAI's shape (`chatcmpl-` and letters and digits) for an
/// answer translated from another format, derived from the upstream's id
/// (`msg_013Zva…` → `chatcmpl-013Zva…`), so it stays the same for the whole answer.
/// An id already in that shape is kept.
///
/// ```
/// use backstop::wire::openai::completion_id;
/// assert_eq!(completion_id("msg_013Zva2C"), "chatcmpl-013Zva2C");
/// assert_eq!(completion_id("2ei_aPWE-OIX"), "chatcmpl-2eiaPWEOIX");
/// assert_eq!(completion_id("chatcmpl-B9MB"), "chatcmpl-B9MB");
/// assert_eq!(completion_id(""), "chatcmpl-backstop");
/// ```
pub fn completion_id(upstream_id: &str) -> String {
    super::reshape_id(upstream_id, "chatcmpl-", "msg_", SYNTHETIC_ID)
}

type Obj = Map<String, Value>;

mod fast;
pub use fast::{RequestFacts, Spans, decode_request_fast};

// ---------------------------------------------------------------------------
// Small JSON helpers (absent and `null` are the same thing everywhere)
// ---------------------------------------------------------------------------

fn field<'a>(obj: &'a Obj, key: &str) -> Option<&'a Value> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn as_obj<'a>(v: &'a Value, path: &str, expected: &str) -> Result<&'a Obj, WireError> {
    v.as_object()
        .ok_or_else(|| WireError::at(path, format!("expected {expected}")))
}

fn opt_str(obj: &Obj, key: &str, base: &str) -> Result<Option<String>, WireError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WireError::at(join(base, key), "expected a string")),
    }
}

fn req_str(obj: &Obj, key: &str, base: &str) -> Result<String, WireError> {
    opt_str(obj, key, base)?.ok_or_else(|| WireError::at(join(base, key), "required"))
}

fn opt_bool(obj: &Obj, key: &str) -> Result<Option<bool>, WireError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(WireError::at(key, "expected a boolean")),
    }
}

fn opt_f64(obj: &Obj, key: &str) -> Result<Option<f64>, WireError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| WireError::at(key, "expected a number")),
    }
}

fn opt_u32(obj: &Obj, key: &str) -> Result<Option<u32>, WireError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| WireError::at(key, "expected a non-negative integer")),
    }
}

fn u64_of(obj: &Obj, key: &str) -> Option<u64> {
    field(obj, key).and_then(Value::as_u64)
}

fn str_of<'a>(obj: &'a Obj, key: &str) -> Option<&'a str> {
    field(obj, key).and_then(Value::as_str)
}

/// Tool-call arguments as JSON text: a string as is, anything else serialized.
fn arguments_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Requests: ingress decoding
// ---------------------------------------------------------------------------

/// Whether the client asked for `stream_options.include_usage`.
pub fn include_usage(body: &Value) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Decode an OpenAI client's Chat Completions body into a neutral request.
///
/// Errors name the JSON path of the offending field. Unknown top-level fields
/// are ignored (only the same-format passthrough carries them).
///
/// ```
/// use backstop::wire::openai::decode_request;
/// let body = serde_json::json!({
///     "model": "gpt-4o",
///     "messages": [{"role": "system", "content": "Be brief."},
///                  {"role": "user", "content": "Hi"}],
///     "max_tokens": 50,
/// });
/// let req = decode_request(&body).unwrap();
/// assert_eq!(req.system[0].text, "Be brief.");
/// assert_eq!(req.max_tokens, Some(50));
///
/// let err = decode_request(&serde_json::json!({"model": "gpt-4o"})).unwrap_err();
/// assert_eq!(err.message, "messages: required");
/// ```
pub fn decode_request(body: &Value) -> Result<Request, WireError> {
    let obj = body
        .as_object()
        .ok_or_else(|| WireError::new("request body: expected a JSON object"))?;
    let model = match field(obj, "model") {
        None => return Err(WireError::at("model", "required")),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(WireError::at("model", "expected a non-empty string")),
    };
    if field(obj, "functions").is_some() {
        return Err(WireError::at(
            "functions",
            "the legacy `functions` parameter is not supported; use `tools`",
        ));
    }
    if field(obj, "function_call").is_some() {
        return Err(WireError::at(
            "function_call",
            "the legacy `function_call` parameter is not supported; use `tool_choice`",
        ));
    }
    let messages = field(obj, "messages")
        .ok_or_else(|| WireError::at("messages", "required"))?
        .as_array()
        .ok_or_else(|| WireError::at("messages", "expected an array of messages"))?;

    let mut req = Request {
        model,
        ..Request::default()
    };
    decode_messages(messages, &mut req)?;

    if let Some(tools) = field(obj, "tools") {
        let tools = tools
            .as_array()
            .ok_or_else(|| WireError::at("tools", "expected an array of tools"))?;
        req.tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| decode_tool(t, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(tc) = field(obj, "tool_choice") {
        req.tool_choice = Some(decode_tool_choice(tc)?);
    }
    req.parallel_tool_calls = opt_bool(obj, "parallel_tool_calls")?;
    // `max_tokens` is deprecated in favour of `max_completion_tokens`; prefer the newer one.
    let max_completion = opt_u32(obj, "max_completion_tokens")?;
    let max_tokens = opt_u32(obj, "max_tokens")?;
    req.max_tokens = max_completion.or(max_tokens);
    req.temperature = opt_f64(obj, "temperature")?;
    req.top_p = opt_f64(obj, "top_p")?;
    req.stop = decode_stop(field(obj, "stop"))?;
    if let Some(rf) = field(obj, "response_format") {
        req.response_format = Some(decode_response_format(rf)?);
    }
    req.stream = opt_bool(obj, "stream")?.unwrap_or(false);
    req.user = opt_str(obj, "user", "")?;
    if let Some(md) = field(obj, "metadata") {
        req.metadata = Some(as_obj(md, "metadata", "an object of string values")?.clone());
    }
    if let Some(effort) = opt_str(obj, "reasoning_effort", "")? {
        req.reasoning = Some(json!({ "effort": effort }));
    }
    Ok(req)
}

fn decode_messages(messages: &[Value], req: &mut Request) -> Result<(), WireError> {
    // Whether the last neutral message was built from `tool` messages, so the
    // next `tool` message joins it.
    let mut in_tool_run = false;
    for (i, v) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(v, &path, "a message object")?;
        let role = match field(m, "role") {
            None => return Err(WireError::at(join(&path, "role"), "required")),
            Some(Value::String(r)) => r.as_str(),
            Some(_) => return Err(WireError::at(join(&path, "role"), "expected a string")),
        };
        let content_path = join(&path, "content");
        match role {
            "system" | "developer" => {
                let texts = text_content(field(m, "content"), &content_path, false)?
                    .ok_or_else(|| WireError::at(&content_path, "required"))?;
                req.system
                    .extend(texts.into_iter().map(|text| SystemBlock { text }));
            }
            "user" => {
                let content =
                    user_content(field(m, "content"), &content_path, &mut req.untranslatable)?;
                req.messages.push(Message {
                    role: Role::User,
                    content,
                    name: opt_str(m, "name", &path)?,
                });
                in_tool_run = false;
            }
            "assistant" => {
                req.messages.push(decode_assistant(m, &path)?);
                in_tool_run = false;
            }
            "tool" => {
                let tool_call_id = req_str(m, "tool_call_id", &path)?;
                let texts = text_content(field(m, "content"), &content_path, false)?
                    .ok_or_else(|| WireError::at(&content_path, "required"))?;
                let part = Part::ToolResult {
                    tool_call_id,
                    content: texts.into_iter().map(|text| Part::Text { text }).collect(),
                    is_error: false,
                };
                match req.messages.last_mut() {
                    Some(last) if in_tool_run => last.content.push(part),
                    _ => req.messages.push(Message {
                        role: Role::User,
                        content: vec![part],
                        name: None,
                    }),
                }
                in_tool_run = true;
            }
            "function" => {
                return Err(WireError::at(
                    join(&path, "role"),
                    "the legacy \"function\" role is not supported; send tool results as \"tool\" messages",
                ));
            }
            other => {
                return Err(WireError::at(
                    join(&path, "role"),
                    format!(
                        "expected one of \"system\", \"developer\", \"user\", \"assistant\", \"tool\" (got {other:?})"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Content that may only hold text: a string, or an array of `text` parts
/// (and `refusal` parts when `allow_refusal`). `None` when absent.
fn text_content(
    v: Option<&Value>,
    path: &str,
    allow_refusal: bool,
) -> Result<Option<Vec<String>>, WireError> {
    let expected = "expected a string or an array of text parts";
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let ppath = format!("{path}[{j}]");
                let p = as_obj(p, &ppath, "a content part object")?;
                match str_of(p, "type") {
                    Some("text") => out.push(req_str(p, "text", &ppath)?),
                    Some("refusal") if allow_refusal => out.push(req_str(p, "refusal", &ppath)?),
                    Some(other) => {
                        let allowed = if allow_refusal {
                            "\"text\" or \"refusal\""
                        } else {
                            "\"text\""
                        };
                        return Err(WireError::at(
                            join(&ppath, "type"),
                            format!("unsupported content part type {other:?}; expected {allowed}"),
                        ));
                    }
                    None => return Err(WireError::at(join(&ppath, "type"), "required")),
                }
            }
            Ok(Some(out))
        }
        Some(_) => Err(WireError::at(path, expected)),
    }
}

fn user_content(
    v: Option<&Value>,
    path: &str,
    untranslatable: &mut Option<chat::Untranslatable>,
) -> Result<Vec<Part>, WireError> {
    match v {
        None => Err(WireError::at(path, "required")),
        Some(Value::String(s)) => Ok(vec![Part::Text { text: s.clone() }]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                if let Some(p) = user_part(p, &format!("{path}[{j}]"), untranslatable)? {
                    out.push(p);
                }
            }
            Ok(out)
        }
        Some(_) => Err(WireError::at(
            path,
            "expected a string or an array of content parts",
        )),
    }
}

fn user_part(
    v: &Value,
    path: &str,
    untranslatable: &mut Option<chat::Untranslatable>,
) -> Result<Option<Part>, WireError> {
    let p = as_obj(v, path, "a content part object")?;
    match str_of(p, "type") {
        Some("text") => Ok(Some(Part::Text {
            text: req_str(p, "text", path)?,
        })),
        Some("image_url") => {
            let ipath = join(path, "image_url");
            let url = match field(p, "image_url") {
                None => return Err(WireError::at(ipath, "required")),
                // Some clients send the URL directly.
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => req_str(o, "url", &ipath)?,
                Some(_) => return Err(WireError::at(ipath, "expected an object with a `url`")),
            };
            Ok(Some(Part::Image {
                source: image_source(&url),
            }))
        }
        // `file`, `input_audio`, …: only an OpenAI-compatible model (sent the client's
        // body as is) can take them.
        Some(other) => {
            chat::Untranslatable::note(
                untranslatable,
                join(path, "type"),
                format!("content part type {other:?} (translated: \"text\", \"image_url\")"),
            );
            Ok(None)
        }
        None => Err(WireError::at(join(path, "type"), "required")),
    }
}

/// A `data:<mime>;base64,<data>` URL becomes inline data; anything else stays a URL.
fn image_source(url: &str) -> ImageSource {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return ImageSource::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        };
    }
    ImageSource::Url {
        url: url.to_string(),
    }
}

fn decode_assistant(m: &Obj, path: &str) -> Result<Message, WireError> {
    let mut content = Vec::new();
    let content_path = join(path, "content");
    match field(m, "content") {
        None => {}
        // An empty string is how many clients say "no text" beside tool calls.
        Some(Value::String(s)) if s.is_empty() => {}
        v @ Some(_) => {
            let texts = text_content(v, &content_path, true)?.unwrap_or_default();
            content.extend(texts.into_iter().map(|text| Part::Text { text }));
        }
    }
    if let Some(refusal) = opt_str(m, "refusal", path)?
        && !refusal.is_empty()
    {
        content.push(Part::Text { text: refusal });
    }
    if field(m, "function_call").is_some() {
        return Err(WireError::at(
            join(path, "function_call"),
            "the legacy `function_call` is not supported; use `tool_calls`",
        ));
    }
    if let Some(calls) = field(m, "tool_calls") {
        let calls_path = join(path, "tool_calls");
        let calls = calls
            .as_array()
            .ok_or_else(|| WireError::at(&calls_path, "expected an array of tool calls"))?;
        for (k, c) in calls.iter().enumerate() {
            let cpath = format!("{calls_path}[{k}]");
            let c = as_obj(c, &cpath, "a tool call object")?;
            if let Some(t) = opt_str(c, "type", &cpath)?
                && t != "function"
            {
                return Err(WireError::at(
                    join(&cpath, "type"),
                    format!("unsupported tool call type {t:?}; expected \"function\""),
                ));
            }
            let id = req_str(c, "id", &cpath)?;
            let fpath = join(&cpath, "function");
            let f = as_obj(
                field(c, "function").ok_or_else(|| WireError::at(&fpath, "required"))?,
                &fpath,
                "an object with `name` and `arguments`",
            )?;
            let name = req_str(f, "name", &fpath)?;
            let arguments = match field(f, "arguments") {
                None => "{}".to_string(),
                v => arguments_text(v),
            };
            content.push(Part::ToolCall {
                id,
                name,
                arguments,
            });
        }
    }
    Ok(Message {
        role: Role::Assistant,
        content,
        name: opt_str(m, "name", path)?,
    })
}

fn decode_tool(v: &Value, path: &str) -> Result<Tool, WireError> {
    let t = as_obj(v, path, "a tool object")?;
    if let Some(ty) = opt_str(t, "type", path)?
        && ty != "function"
    {
        return Err(WireError::at(
            join(path, "type"),
            format!("unsupported tool type {ty:?}; expected \"function\""),
        ));
    }
    let fpath = join(path, "function");
    let f = as_obj(
        field(t, "function").ok_or_else(|| WireError::at(&fpath, "required"))?,
        &fpath,
        "an object with `name`, `description` and `parameters`",
    )?;
    let name = req_str(f, "name", &fpath)?;
    if name.is_empty() {
        return Err(WireError::at(
            join(&fpath, "name"),
            "expected a non-empty string",
        ));
    }
    let parameters = match field(f, "parameters") {
        None => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(WireError::at(
                join(&fpath, "parameters"),
                "expected a JSON Schema object",
            ));
        }
    };
    // `strict` has no neutral equivalent and is dropped.
    Ok(Tool {
        name,
        description: opt_str(f, "description", &fpath)?,
        parameters,
    })
}

fn decode_tool_choice(v: &Value) -> Result<ToolChoice, WireError> {
    let expected = "expected \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}";
    match v {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(WireError::at("tool_choice", expected)),
        },
        Value::Object(o) => {
            if str_of(o, "type") != Some("function") {
                return Err(WireError::at("tool_choice.type", "expected \"function\""));
            }
            let f = field(o, "function")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    WireError::at("tool_choice.function", "expected an object with a `name`")
                })?;
            Ok(ToolChoice::Tool {
                name: req_str(f, "name", "tool_choice.function")?,
            })
        }
        _ => Err(WireError::at("tool_choice", expected)),
    }
}

fn decode_stop(v: Option<&Value>) -> Result<Vec<String>, WireError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| WireError::at(format!("stop[{i}]"), "expected a string"))
            })
            .collect(),
        Some(_) => Err(WireError::at(
            "stop",
            "expected a string or an array of strings",
        )),
    }
}

fn decode_response_format(v: &Value) -> Result<ResponseFormat, WireError> {
    let o = as_obj(v, "response_format", "an object with a `type`")?;
    match str_of(o, "type") {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => match field(o, "json_schema") {
            Some(s @ Value::Object(_)) => Ok(ResponseFormat::JsonSchema {
                json_schema: s.clone(),
            }),
            Some(_) => Err(WireError::at(
                "response_format.json_schema",
                "expected an object with `name` and `schema`",
            )),
            None => Err(WireError::at("response_format.json_schema", "required")),
        },
        _ => Err(WireError::at(
            "response_format.type",
            "expected \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

// ---------------------------------------------------------------------------
// Requests: egress encoding
// ---------------------------------------------------------------------------

/// The most stop sequences Chat Completions accepts (`stop` has `maxItems: 4`).
const MAX_STOP_SEQUENCES: usize = 4;

/// Whether the model takes `max_completion_tokens` instead of `max_tokens`
/// (OpenAI's reasoning models reject the older field).
fn uses_max_completion_tokens(model: &str) -> bool {
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p))
}

/// Encode a neutral request as a Chat Completions body for an OpenAI-compatible
/// provider serving `upstream_model`.
///
/// ```
/// use backstop::chat::{Message, Request, Role};
/// use backstop::wire::openai::encode_request;
/// let req = Request {
///     model: "fast".into(),
///     messages: vec![Message::text(Role::User, "Hi")],
///     max_tokens: Some(100),
///     ..Request::default()
/// };
/// let body = encode_request(&req, "o3-mini");
/// assert_eq!(body["model"], "o3-mini");
/// assert_eq!(body["max_completion_tokens"], 100);
/// assert_eq!(body["messages"][0], serde_json::json!({"role": "user", "content": "Hi"}));
/// ```
pub fn encode_request(req: &Request, upstream_model: &str) -> Value {
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));

    let mut messages = Vec::new();
    for block in &req.system {
        messages.push(json!({"role": "system", "content": block.text}));
    }
    for m in &req.messages {
        match m.role {
            Role::User => encode_user(m, &mut messages),
            Role::Assistant => messages.push(encode_assistant(m)),
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    f.insert("description".into(), json!(d));
                }
                f.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
        // OpenAI rejects `tool_choice`/`parallel_tool_calls` without `tools`.
        if let Some(tc) = &req.tool_choice {
            let v = match tc {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool { name } => {
                    json!({"type": "function", "function": {"name": name}})
                }
            };
            out.insert("tool_choice".into(), v);
        }
        if let Some(p) = req.parallel_tool_calls {
            out.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    if let Some(n) = req.max_tokens {
        let key = if uses_max_completion_tokens(upstream_model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        out.insert(key.into(), json!(n));
    }
    if let Some(t) = req.temperature {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if !req.stop.is_empty() {
        // OpenAI takes at most 4 (a longer list is a 400): the first 4 are sent.
        let stop = super::capped_stop(&req.stop, MAX_STOP_SEQUENCES, "OpenAI");
        out.insert("stop".into(), json!(stop));
    }
    if let Some(rf) = &req.response_format {
        let v = match rf {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema { json_schema } => {
                json!({"type": "json_schema", "json_schema": json_schema})
            }
        };
        out.insert("response_format".into(), v);
    }
    if let Some(effort) = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(u) = &req.user {
        out.insert("user".into(), json!(u));
    }
    if let Some(md) = &req.metadata
        && !md.is_empty()
    {
        out.insert("metadata".into(), Value::Object(md.clone()));
    }
    if req.stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(out)
}

fn joined_text(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of a `tool` message: an error result (Anthropic `is_error`, which OpenAI's
/// `tool` message cannot carry) is marked `Error: …` so the model still knows the call
/// failed; a text that already says so is left as it is.
fn tool_result_text(content: &[Part], is_error: bool) -> String {
    let text = joined_text(content);
    if !is_error
        || text
            .get(..5)
            .is_some_and(|head| head.eq_ignore_ascii_case("error"))
    {
        return text;
    }
    if text.is_empty() {
        return "Error".to_string();
    }
    format!("Error: {text}")
}

fn image_url_part(source: &ImageSource) -> Value {
    let url = match source {
        ImageSource::Url { url } => url.clone(),
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// A user turn: its tool results become `tool` messages (OpenAI puts them
/// first, right after the assistant's calls), then the rest a `user` message.
fn encode_user(m: &Message, messages: &mut Vec<Value>) {
    let mut rest: Vec<&Part> = Vec::new();
    for p in &m.content {
        match p {
            // Tool messages take text only; images in a result are dropped. A `tool`
            // message has no error flag: a failed call's result says so in its text.
            Part::ToolResult {
                tool_call_id,
                content,
                is_error,
            } => messages.push(json!({
                "role": "tool",
                "tool_call_id": tool_call_id,
                "content": tool_result_text(content, *is_error),
            })),
            Part::Text { .. } | Part::Image { .. } => rest.push(p),
            Part::ToolCall { .. } | Part::Thinking { .. } => {}
        }
    }
    if rest.is_empty() {
        return;
    }
    let content = match rest.as_slice() {
        [Part::Text { text }] => json!(text),
        parts => Value::Array(
            parts
                .iter()
                .map(|p| match p {
                    Part::Image { source } => image_url_part(source),
                    Part::Text { text } => json!({"type": "text", "text": text}),
                    _ => Value::Null,
                })
                .collect(),
        ),
    };
    let mut msg = Map::new();
    msg.insert("role".into(), json!("user"));
    msg.insert("content".into(), content);
    if let Some(n) = &m.name {
        msg.insert("name".into(), json!(n));
    }
    messages.push(Value::Object(msg));
}

fn encode_assistant(m: &Message) -> Value {
    let texts: Vec<&str> = m
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = m
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            _ => None,
        })
        .collect();
    let content = match texts.as_slice() {
        // OpenAI requires content unless there are tool calls.
        [] if calls.is_empty() => json!(""),
        [] => Value::Null,
        [one] => json!(one),
        many => Value::Array(
            many.iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect(),
        ),
    };
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert("content".into(), content);
    if let Some(n) = &m.name {
        msg.insert("name".into(), json!(n));
    }
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(msg)
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

fn finish_from_str(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn finish_to_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::StopSequence | FinishReason::Other => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn decode_usage(u: &Obj) -> Usage {
    let cached = field(u, "prompt_tokens_details")
        .and_then(Value::as_object)
        .and_then(|d| u64_of(d, "cached_tokens"))
        // DeepSeek reports cache hits at the top level.
        .or_else(|| u64_of(u, "prompt_cache_hit_tokens"));
    Usage {
        input_tokens: u64_of(u, "prompt_tokens").unwrap_or(0),
        output_tokens: u64_of(u, "completion_tokens").unwrap_or(0),
        cache_read_tokens: cached,
        cache_write_tokens: None,
    }
}

fn encode_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens.unwrap_or(0)},
    })
}

/// Reasoning text some OpenAI-compatible servers add beside `content`.
fn reasoning_of(o: &Obj) -> Option<&str> {
    str_of(o, "reasoning_content")
        .or_else(|| str_of(o, "reasoning"))
        .filter(|s| !s.is_empty())
}

/// Decode a provider's non-streaming Chat Completions answer.
pub fn decode_response(body: &[u8]) -> Result<chat::Response, WireError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| WireError::new(format!("response body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| WireError::new("response body: expected a JSON object"))?;
    if let Some(err) = error_from_value(&v) {
        return Err(WireError::new(format!(
            "the provider returned an error: {}",
            err.message
        )));
    }
    let choices = field(obj, "choices")
        .ok_or_else(|| WireError::at("choices", "required"))?
        .as_array()
        .ok_or_else(|| WireError::at("choices", "expected an array"))?;
    let choice = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        .or_else(|| choices.first());

    let mut content = Vec::new();
    let mut finish_reason = None;
    if let Some(choice) = choice {
        let choice = as_obj(choice, "choices[0]", "an object")?;
        finish_reason = str_of(choice, "finish_reason").map(finish_from_str);
        if let Some(msg) = field(choice, "message") {
            let msg = as_obj(msg, "choices[0].message", "an object")?;
            decode_response_message(msg, &mut content)?;
        }
    }
    Ok(chat::Response {
        id: str_of(obj, "id").unwrap_or_default().to_string(),
        model: str_of(obj, "model").unwrap_or_default().to_string(),
        content,
        finish_reason,
        stop_sequence: None,
        usage: field(obj, "usage")
            .and_then(Value::as_object)
            .map(decode_usage)
            .unwrap_or_default(),
        created: u64_of(obj, "created").unwrap_or(0),
    })
}

fn decode_response_message(msg: &Obj, content: &mut Vec<Part>) -> Result<(), WireError> {
    if let Some(text) = reasoning_of(msg) {
        content.push(Part::Thinking {
            text: text.to_string(),
            signature: None,
        });
    }
    match field(msg, "content") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => content.push(Part::Text { text: s.clone() }),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    content.push(Part::Text {
                        text: t.to_string(),
                    });
                }
            }
        }
        Some(_) => {
            return Err(WireError::at(
                "choices[0].message.content",
                "expected a string or null",
            ));
        }
    }
    if let Some(r) = str_of(msg, "refusal")
        && !r.is_empty()
    {
        content.push(Part::Text {
            text: r.to_string(),
        });
    }
    if let Some(calls) = field(msg, "tool_calls").and_then(Value::as_array) {
        for (k, c) in calls.iter().enumerate() {
            let path = format!("choices[0].message.tool_calls[{k}]");
            let c = as_obj(c, &path, "a tool call object")?;
            let f = field(c, "function")
                .and_then(Value::as_object)
                .ok_or_else(|| WireError::at(join(&path, "function"), "required"))?;
            content.push(Part::ToolCall {
                id: str_of(c, "id").unwrap_or_default().to_string(),
                name: req_str(f, "name", &join(&path, "function"))?,
                arguments: arguments_text(field(f, "arguments")),
            });
        }
    }
    Ok(())
}

/// Encode a neutral answer as a `chat.completion` object for an OpenAI client.
/// Thinking is dropped (Chat Completions has no field for it).
pub fn encode_response(resp: &chat::Response) -> Value {
    let text = joined_text_concat(&resp.content);
    let calls: Vec<Value> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            _ => None,
        })
        .collect();
    let has_text = resp.content.iter().any(|p| matches!(p, Part::Text { .. }));
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if !has_text && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    message.insert("content".into(), content);
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_to_str(resp.finish_reason.unwrap_or(FinishReason::Stop)),
        }],
        "usage": encode_usage(&resp.usage),
    })
}

/// `serde_json::to_vec(&encode_response(resp))`, written without building a `Value`
/// (the same bytes: a test compares them).
pub fn encode_response_bytes(resp: &chat::Response) -> Vec<u8> {
    encode_response_bytes_as(resp, &resp.id)
}

/// [`encode_response_bytes`] with another `id` (a translated answer's, in OpenAI's shape).
/// Written byte by byte as serde_json writes `encode_response`'s value (a test compares
/// them), with the text parts escaped where they stand instead of joined first.
pub fn encode_response_bytes_as(resp: &chat::Response, id: &str) -> Vec<u8> {
    use crate::wire::{push_json_str, push_json_str_contents, push_u64};
    let mut has_text = false;
    let mut has_calls = false;
    let mut size = 320 + id.len() + resp.model.len();
    for p in &resp.content {
        match p {
            Part::Text { text } => {
                has_text = true;
                size += text.len();
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                has_calls = true;
                size += 64 + id.len() + name.len() + arguments.len();
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(size + size / 8);
    out.extend_from_slice(b"{\"id\":");
    push_json_str(&mut out, id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    push_u64(&mut out, resp.created);
    out.extend_from_slice(b",\"model\":");
    push_json_str(&mut out, &resp.model);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    if has_text || !has_calls {
        out.push(b'"');
        for p in &resp.content {
            if let Part::Text { text } = p {
                push_json_str_contents(&mut out, text);
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"refusal\":null");
    if has_calls {
        out.extend_from_slice(b",\"tool_calls\":[");
        let mut first = true;
        for p in &resp.content {
            if let Part::ToolCall {
                id,
                name,
                arguments,
            } = p
            {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(b"{\"id\":");
                push_json_str(&mut out, id);
                out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                push_json_str(&mut out, name);
                out.extend_from_slice(b",\"arguments\":");
                push_json_str(&mut out, arguments);
                out.extend_from_slice(b"}}");
            }
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(
        finish_to_str(resp.finish_reason.unwrap_or(FinishReason::Stop)).as_bytes(),
    );
    let u = &resp.usage;
    out.extend_from_slice(b"\"}],\"usage\":{\"prompt_tokens\":");
    push_u64(&mut out, u.input_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    push_u64(&mut out, u.output_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(&mut out, u.input_tokens + u.output_tokens);
    out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
    push_u64(&mut out, u.cache_read_tokens.unwrap_or(0));
    out.extend_from_slice(b"}}}");
    out
}

/// The text of an answer: consecutive text parts are pieces of one message.
fn joined_text_concat(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The `type` an OpenAI client sees for each kind (the categories of OpenAI's
/// error guide and SDK exception classes; SDKs dispatch on the HTTP status).
fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        // OpenAI types a bad or missing key `invalid_request_error` (code `invalid_api_key`
        // for a bad one); the SDKs raise AuthenticationError from the 401 status.
        ErrorKind::InvalidRequest
        | ErrorKind::NotFound
        | ErrorKind::RequestTooLarge
        | ErrorKind::Authentication => "invalid_request_error",
        ErrorKind::Permission => "permission_error",
        // OpenAI's own 429s say which limit: `requests` (RPM) or `tokens` (TPM), with code
        // `rate_limit_exceeded`; a chain whose every target is rate limited is out of requests.
        ErrorKind::RateLimit => "requests",
        ErrorKind::Api | ErrorKind::Overloaded | ErrorKind::Timeout => "server_error",
    }
}

/// `{"error": {"message", "type", "param", "code"}}` for an OpenAI client.
pub fn encode_error(err: &ClientError) -> Value {
    json!({
        "error": {
            "message": err.message,
            "type": error_type(err.kind),
            "param": err.param,
            "code": err.code.as_deref().or(match err.kind {
                ErrorKind::RateLimit => Some("rate_limit_exceeded"),
                _ => None,
            }),
        }
    })
}

/// Parse a provider's error body. Accepts OpenAI's `{"error": {message, type,
/// param, code}}` (code a string, number or null), OpenRouter's numeric codes
/// with `metadata.raw`, Gemini-style `{"error": {code, status, message}}`, a
/// top-level array of those, `{"error": "text"}` and vLLM's top-level
/// `{"object": "error", "message", "type", "code"}`. `None` when the body is
/// not an error.
pub fn decode_error(body: &[u8]) -> Option<UpstreamErrorBody> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match &v {
        Value::Array(items) => items.iter().find_map(error_from_value),
        _ => error_from_value(&v),
    }
}

fn code_text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn error_from_value(v: &Value) -> Option<UpstreamErrorBody> {
    let obj = v.as_object()?;
    match field(obj, "error") {
        Some(Value::String(s)) => Some(UpstreamErrorBody {
            kind: None,
            code: None,
            message: s.clone(),
            retry_after: None,
        }),
        Some(Value::Object(e)) => Some(error_from_obj(e)),
        Some(_) => None,
        // vLLM and some other servers put the error at the top level.
        None if str_of(obj, "object") == Some("error") => Some(error_from_obj(obj)),
        None => None,
    }
}

fn error_from_obj(e: &Obj) -> UpstreamErrorBody {
    let mut message = match field(e, "message") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => Value::Object(e.clone()).to_string(),
    };
    // OpenRouter passes the underlying provider's error text in `metadata.raw`;
    // keep it, the classifier reads the message.
    if let Some(raw) = field(e, "metadata")
        .and_then(Value::as_object)
        .and_then(|m| field(m, "raw"))
    {
        let raw = match raw {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !raw.is_empty() && !message.contains(&raw) {
            message = format!("{message}: {raw}");
        }
    }
    UpstreamErrorBody {
        kind: str_of(e, "type")
            .or_else(|| str_of(e, "status"))
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        code: code_text(field(e, "code")),
        message,
        retry_after: None,
    }
}

// ---------------------------------------------------------------------------
// Streams: provider SSE -> neutral events
// ---------------------------------------------------------------------------

/// One tool call seen in an upstream stream.
#[derive(Debug, Clone)]
struct UpstreamCall {
    /// The provider's `index`, while it still refers to this call.
    upstream: Option<u64>,
    /// Our 0-based index.
    ours: u32,
    id: String,
}

/// Turns a provider's Chat Completions SSE events into neutral [`StreamEvent`]s.
///
/// Only choice 0 is read. Tool calls are renumbered from 0 in the order they
/// start, whatever indices the provider used.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    calls: Vec<UpstreamCall>,
    /// The last chunk that carried only text, to recognise the next ones by comparing
    /// bytes (see [`Template`]).
    repeat: Template,
    /// Spare buffer for the fast path's holes.
    holes: Vec<Range<usize>>,
    /// The bytes of the last chunk walked in full, up to its `choices` member (the
    /// id, model and fields a provider repeats in every chunk); `resume` is the walk's
    /// state there. A chunk starting with these bytes is walked from there.
    prefix: String,
    resume: Option<Resume>,
}

/// The fast walk of a chunk's top-level fields (but `choices`).
#[derive(Debug, Clone, Default)]
struct Top {
    seen: Seen,
    id: Option<StrAt>,
    model: Option<StrAt>,
    usage: Option<Usage>,
}

/// Where a fast walk stood at the start of the `choices` member: see
/// [`StreamDecoder::prefix`].
#[derive(Debug, Clone, Default)]
struct Resume {
    top: Top,
    /// The holes found before it.
    holes: Vec<Range<usize>>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one SSE event. Comments and empty events yield nothing; a chunk
    /// that is not JSON is an error (the caller decides what to do with it).
    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        self.push_chunk(ev).map(Vec::from)
    }

    /// [`push`](Self::push), a text chunk's one event kept inline.
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
        if data.is_empty() {
            return Ok(ChunkEvents::default());
        }
        if data == "[DONE]" {
            return Ok(ChunkEvents::One(StreamEvent::Done));
        }
        // Read otherwise (invalid UTF-8 replaced, other whitespace trimmed), it may still
        // be like the template.
        let same_bytes =
            matches!(text, Cow::Borrowed(_)) && data.len() == ev.data.trim_ascii().len();
        if !same_bytes && let Some(text) = self.repeat.text_of(data).and_then(RawStr::text) {
            return Ok(crate::wire::text_events(text).into());
        }
        if let Some(out) = self.push_fast(data) {
            return Ok(out);
        }
        self.push_value(ev, data).map(ChunkEvents::from)
    }

    /// The general decoder: any chunk, through a `Value`.
    fn push_value(&mut self, ev: &SseEvent, data: &str) -> Result<Vec<StreamEvent>, WireError> {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            // An `event: error` frame with a plain-text body is still an error report.
            Err(_) if ev.event.as_deref() == Some("error") => {
                return Ok(vec![StreamEvent::Error {
                    error: UpstreamErrorBody {
                        message: data.to_string(),
                        ..UpstreamErrorBody::default()
                    },
                }]);
            }
            Err(e) => {
                return Err(WireError::new(format!(
                    "stream chunk is not valid JSON: {e}"
                )));
            }
        };
        if let Some(error) = error_from_value(&v) {
            return Ok(vec![StreamEvent::Error { error }]);
        }
        let obj = v
            .as_object()
            .ok_or_else(|| WireError::new("stream chunk: expected a JSON object"))?;

        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: str_of(obj, "id").unwrap_or_default().to_string(),
                model: str_of(obj, "model").unwrap_or_default().to_string(),
                input_tokens: None,
            });
        }
        if let Some(choices) = field(obj, "choices").and_then(Value::as_array) {
            for choice in choices.iter().filter_map(Value::as_object) {
                if u64_of(choice, "index").unwrap_or(0) != 0 {
                    continue;
                }
                if let Some(delta) = field(choice, "delta").and_then(Value::as_object) {
                    self.decode_delta(delta, &mut out);
                }
                if let Some(reason) = str_of(choice, "finish_reason") {
                    out.push(StreamEvent::Finish {
                        reason: finish_from_str(reason),
                        stop_sequence: None,
                    });
                }
            }
        }
        let usage = field(obj, "usage").or_else(|| {
            // Groq reports streaming usage under `x_groq`.
            obj.get("x_groq").and_then(|x| x.get("usage"))
        });
        if let Some(usage) = usage.and_then(Value::as_object) {
            out.push(StreamEvent::Usage {
                usage: decode_usage(usage),
            });
        }
        Ok(out)
    }

    fn decode_delta(&mut self, delta: &Obj, out: &mut Vec<StreamEvent>) {
        if let Some(text) = reasoning_of(delta) {
            out.push(StreamEvent::ThinkingDelta {
                text: text.to_string(),
            });
        }
        for key in ["content", "refusal"] {
            if let Some(text) = str_of(delta, key)
                && !text.is_empty()
            {
                out.push(StreamEvent::TextDelta {
                    text: text.to_string(),
                });
            }
        }
        if let Some(calls) = field(delta, "tool_calls").and_then(Value::as_array) {
            for call in calls.iter().filter_map(Value::as_object) {
                self.decode_tool_call(call, out);
            }
        }
    }

    fn decode_tool_call(&mut self, call: &Obj, out: &mut Vec<StreamEvent>) {
        let upstream = u64_of(call, "index");
        let id = str_of(call, "id").filter(|s| !s.is_empty());
        let function = field(call, "function").and_then(Value::as_object);
        let name = function.and_then(|f| str_of(f, "name")).unwrap_or_default();
        let arguments = arguments_text(function.and_then(|f| field(f, "arguments")));

        let existing = match (upstream, id) {
            (Some(i), _) => self.calls.iter().position(|c| c.upstream == Some(i)),
            // No index (some compatibility layers): match by id, else continue the last call.
            (None, Some(id)) => self.calls.iter().position(|c| c.id == id),
            (None, None) => self.calls.len().checked_sub(1),
        };
        // A different id under a known index is a new call reusing the index.
        let existing = existing.filter(|&pos| id.is_none_or(|id| self.calls[pos].id == id));
        let ours = match existing {
            Some(pos) => self.calls[pos].ours,
            None => {
                if let Some(i) = upstream {
                    for c in self.calls.iter_mut().filter(|c| c.upstream == Some(i)) {
                        c.upstream = None;
                    }
                }
                let ours = u32::try_from(self.calls.len()).unwrap_or(u32::MAX);
                let id = id.map_or_else(|| format!("call_{ours}"), str::to_string);
                out.push(StreamEvent::ToolCallStart {
                    index: ours,
                    id: id.clone(),
                    name: name.to_string(),
                });
                self.calls.push(UpstreamCall { upstream, ours, id });
                ours
            }
        };
        if !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index: ours,
                arguments,
            });
        }
    }
}

/// The text fields of one choice's `delta`, as written in the chunk.
#[derive(Default)]
struct FastDelta<'a> {
    content: Option<RawStr<'a>>,
    /// Where `content` is written (quotes included), when it is a string.
    content_at: Option<Range<usize>>,
    refusal: Option<RawStr<'a>>,
    reasoning_content: Option<RawStr<'a>>,
    reasoning: Option<RawStr<'a>>,
}

impl StreamDecoder {
    /// The events of a plain text chunk (no error, no tool call), walked once with the
    /// [`Cursor`] instead of built through serde. `None` leaves the chunk to the general
    /// decoder, and nothing is changed then: a field of another type, a duplicate or
    /// escaped key, an error, a tool call, anything the cursor does not accept. Both
    /// paths give the same events (tests: `fast_stream_path_*`).
    fn push_fast(&mut self, data: &str) -> Option<ChunkEvents> {
        let mut holes = Holes {
            spans: std::mem::take(&mut self.holes),
            ..Holes::default()
        };
        holes.spans.clear();
        let out = self.walk_fast(data, &mut holes);
        // A chunk whose only event is choice 0's text becomes the template (not one
        // with empty text: the role chunk that opens a stream, which the next chunks
        // are not like).
        let text_only = out.as_ref().is_some_and(|out| {
            let events = out
                .iter()
                .filter(|e| !matches!(e, StreamEvent::Start { .. }));
            holes.texts == 1 && holes.text_nonempty && events.count() == 1
        });
        match holes.text {
            // The holes are strings the walk read (`Cursor::spanned_string`), in order.
            Some(text) if text_only => self.repeat.set_walked(data, &holes.spans, text),
            _ => {}
        }
        self.holes = holes.spans;
        out
    }

    /// The walk of `data`, from the start of its `choices` member when it starts like
    /// [`StreamDecoder::prefix`] (the walk of equal bytes reaches the same state there,
    /// see [`Cursor::object_at`]).
    fn walk_fast(&mut self, data: &str, holes: &mut Holes) -> Option<ChunkEvents> {
        let resume = self
            .resume
            .as_ref()
            .filter(|_| data.as_bytes().starts_with(self.prefix.as_bytes()));
        let mut top = resume.map(|r| r.top.clone()).unwrap_or_default();
        if let Some(r) = resume {
            holes.spans.extend_from_slice(&r.holes);
        }
        let resumed = resume.is_some();
        let mut checkpoint = None;
        let mut out = ChunkEvents::default();
        let mut field = |c: &mut Cursor<'_>, at: usize, key: RawStr<'_>| {
            let seen = &mut top.seen;
            match key.plain()? {
                "id" => {
                    seen.first(0)?;
                    top.id = c.opt_string_at()?;
                }
                "model" => {
                    seen.first(1)?;
                    top.model = c.opt_string_at()?;
                }
                "object" => {
                    seen.first(2)?;
                    if let Some(object) = c.opt_string()?
                        && object.text()? == "error"
                    {
                        return None;
                    }
                }
                // Error reports (and Groq's usage) take the general path.
                "error" | "x_groq" => {
                    seen.first(if key.is("error") { 3 } else { 4 })?;
                    c.null().then_some(())?;
                }
                "choices" => {
                    if !resumed && checkpoint.is_none() {
                        checkpoint = Some((at, top.clone(), holes.spans.len()));
                    }
                    top.seen.first(5)?;
                    if !c.null() {
                        c.array(|c| fast_choice(c, &mut out, holes))?;
                    }
                }
                "usage" => {
                    seen.first(6)?;
                    top.usage = fast_usage(c)?;
                }
                // An unknown field's string (`system_fingerprint`, `obfuscation`) is
                // only checked, so it may differ from one chunk to the next.
                _ if c.peek()? == b'"' => holes.spans.push(c.spanned_string()?.1),
                _ => c.skip()?,
            }
            Some(())
        };
        let mut c;
        if resumed {
            c = Cursor::at(data, self.prefix.len());
            c.members_expecting(&TOP_KEYS[TOP_CHOICES..], &mut field)?;
        } else {
            c = Cursor::new(data);
            c.object_at(&TOP_KEYS, &mut field)?;
        }
        c.end()?;
        let read = |s: Option<StrAt>| match s {
            None => Some(None),
            Some(s) => s.of(data).map(Some),
        };
        let id = RawStr::opt_text(read(top.id)?)?;
        let model = RawStr::opt_text(read(top.model)?)?;
        if let Some((at, top, n)) = checkpoint {
            self.prefix.clear();
            self.prefix.push_str(data.get(..at)?);
            let r = self.resume.get_or_insert_with(Resume::default);
            r.top = top;
            r.holes.clear();
            r.holes.extend_from_slice(&holes.spans[..n]);
        }
        if !self.started {
            self.started = true;
            push_first(
                &mut out,
                StreamEvent::Start {
                    id: id.map(Cow::into_owned).unwrap_or_default(),
                    model: model.map(Cow::into_owned).unwrap_or_default(),
                    input_tokens: None,
                },
            );
        }
        if let Some(usage) = top.usage {
            push_event(&mut out, StreamEvent::Usage { usage });
        }
        Some(out)
    }
}

/// The top-level keys of a chunk in the order OpenAI writes them (the fast walk's
/// [`Cursor::object_expecting`]), `choices` the one a resumed walk starts at.
const TOP_KEYS: [Key; 9] = [
    Key::new("id"),
    Key::new("object"),
    Key::new("created"),
    Key::new("model"),
    Key::new("service_tier"),
    Key::new("system_fingerprint"),
    Key::new("choices"),
    Key::new("usage"),
    Key::new("obfuscation"),
];
const TOP_CHOICES: usize = 6;
const CHOICE_KEYS: [Key; 4] = [
    Key::new("index"),
    Key::new("delta"),
    Key::new("logprobs"),
    Key::new("finish_reason"),
];
const DELTA_KEYS: [Key; 3] = [Key::new("role"), Key::new("content"), Key::new("refusal")];
const USAGE_KEYS: [Key; 5] = [
    Key::new("prompt_tokens"),
    Key::new("completion_tokens"),
    Key::new("total_tokens"),
    Key::new("prompt_tokens_details"),
    Key::new("completion_tokens_details"),
];
const USAGE_DETAIL_KEYS: [Key; 2] = [Key::new("cached_tokens"), Key::new("audio_tokens")];
const COMPLETION_DETAIL_KEYS: [Key; 4] = [
    Key::new("reasoning_tokens"),
    Key::new("audio_tokens"),
    Key::new("accepted_prediction_tokens"),
    Key::new("rejected_prediction_tokens"),
];

/// One element of `choices`: its events go to `out` when it is choice 0. Its text is
/// decoded (and so checked) whatever its index, as the general decoder's parse does.
/// The strings of a chunk that may change without changing its events but for the
/// text: unknown fields' strings, and the text of choice 0.
#[derive(Default)]
struct Holes {
    spans: Vec<Range<usize>>,
    /// Which span is choice 0's `content`.
    text: Option<usize>,
    /// How many choice-0 `content` strings the chunk has.
    texts: u32,
    text_nonempty: bool,
}

fn fast_choice(c: &mut Cursor<'_>, out: &mut ChunkEvents, holes: &mut Holes) -> Option<()> {
    let mut seen = Seen::default();
    let mut index = None;
    let mut delta = FastDelta::default();
    let mut finish = None;
    c.object_expecting(&CHOICE_KEYS, |c, key| {
        match key.plain()? {
            "index" => {
                seen.first(0)?;
                index = c.opt_u64()?;
            }
            "delta" => {
                seen.first(1)?;
                if !c.null() {
                    delta = fast_delta(c)?;
                }
            }
            "finish_reason" => {
                seen.first(2)?;
                finish = c.opt_string()?;
            }
            _ => c.skip()?,
        }
        Some(())
    })?;
    let text = RawStr::opt_text;
    let (reasoning_content, reasoning) = (text(delta.reasoning_content)?, text(delta.reasoning)?);
    let (content, refusal) = (text(delta.content)?, text(delta.refusal)?);
    let finish = text(finish)?;
    if index.unwrap_or(0) != 0 {
        return Some(());
    }
    if let (Some(at), Some(raw)) = (delta.content_at, delta.content) {
        holes.text = Some(holes.spans.len());
        holes.spans.push(at);
        holes.texts += 1;
        holes.text_nonempty = !raw.is_empty();
    }
    if let Some(text) = reasoning_content.or(reasoning).filter(|s| !s.is_empty()) {
        push_event(
            out,
            StreamEvent::ThinkingDelta {
                text: text.into_owned(),
            },
        );
    }
    for text in [content, refusal].into_iter().flatten() {
        if !text.is_empty() {
            push_event(
                out,
                StreamEvent::TextDelta {
                    text: text.into_owned(),
                },
            );
        }
    }
    if let Some(reason) = finish {
        push_event(
            out,
            StreamEvent::Finish {
                reason: finish_from_str(&reason),
                stop_sequence: None,
            },
        );
    }
    Some(())
}

/// Add `e` after the events in `out`: a chunk's one event is kept inline (nearly every
/// chunk has one), a vector made for a second.
fn push_event(out: &mut ChunkEvents, e: StreamEvent) {
    match out {
        ChunkEvents::Many(v) if v.is_empty() => *out = ChunkEvents::One(e),
        ChunkEvents::Many(v) => v.push(e),
        ChunkEvents::One(_) => {
            if let ChunkEvents::One(first) = std::mem::take(out) {
                *out = ChunkEvents::Many(vec![first, e]);
            }
        }
    }
}

/// Put `e` before the events in `out` (as [`push_event`] keeps them).
fn push_first(out: &mut ChunkEvents, e: StreamEvent) {
    match std::mem::take(out) {
        ChunkEvents::Many(mut v) if !v.is_empty() => {
            v.insert(0, e);
            *out = ChunkEvents::Many(v);
        }
        ChunkEvents::Many(_) => *out = ChunkEvents::One(e),
        ChunkEvents::One(second) => *out = ChunkEvents::Many(vec![e, second]),
    }
}

/// A choice's `delta`; a tool call (any non-null `tool_calls`) takes the general path.
fn fast_delta<'a>(c: &mut Cursor<'a>) -> Option<FastDelta<'a>> {
    let mut seen = Seen::default();
    let mut d = FastDelta::default();
    c.object_expecting(&DELTA_KEYS, |c, key| {
        let (bit, slot) = match key.plain()? {
            "content" => {
                seen.first(0)?;
                if !c.null() {
                    let (s, at) = c.spanned_string()?;
                    (d.content, d.content_at) = (Some(s), Some(at));
                }
                return Some(());
            }
            "refusal" => (1, &mut d.refusal),
            "reasoning_content" => (2, &mut d.reasoning_content),
            "reasoning" => (3, &mut d.reasoning),
            "tool_calls" => {
                seen.first(4)?;
                return c.null().then_some(());
            }
            _ => return c.skip(),
        };
        seen.first(bit)?;
        *slot = c.opt_string()?;
        Some(())
    })?;
    Some(d)
}

/// `usage` (or `null`), as [`decode_usage`] reads it.
fn fast_usage(c: &mut Cursor<'_>) -> Option<Option<Usage>> {
    if c.null() {
        return Some(None);
    }
    let mut seen = Seen::default();
    let (mut prompt, mut completion, mut cached, mut cache_hit) = (None, None, None, None);
    c.object_expecting(&USAGE_KEYS, |c, key| {
        match key.plain()? {
            "prompt_tokens" => {
                seen.first(0)?;
                prompt = c.opt_u64()?;
            }
            "completion_tokens" => {
                seen.first(1)?;
                completion = c.opt_u64()?;
            }
            "prompt_cache_hit_tokens" => {
                seen.first(2)?;
                cache_hit = c.opt_u64()?;
            }
            "prompt_tokens_details" => {
                seen.first(3)?;
                if !c.null() {
                    let mut seen = Seen::default();
                    c.object_expecting(&USAGE_DETAIL_KEYS, |c, key| {
                        if key.plain()? == "cached_tokens" {
                            seen.first(0)?;
                            cached = c.opt_u64()?;
                            Some(())
                        } else {
                            c.skip()
                        }
                    })?;
                }
            }
            // Skipped as `skip` skips it (its values one level deeper: the cursor's
            // depth limit is far below serde's), its keys expected in OpenAI's order.
            "completion_tokens_details" if c.peek()? == b'{' => {
                c.object_expecting(&COMPLETION_DETAIL_KEYS, |c, _| c.skip())?;
            }
            _ => c.skip()?,
        }
        Some(())
    })?;
    Some(Some(Usage {
        input_tokens: prompt.unwrap_or(0),
        output_tokens: completion.unwrap_or(0),
        cache_read_tokens: cached.or(cache_hit),
        cache_write_tokens: None,
    }))
}

// ---------------------------------------------------------------------------
// Streams: neutral events -> client SSE
// ---------------------------------------------------------------------------

/// Writes neutral [`StreamEvent`]s as `chat.completion.chunk` SSE frames for an
/// OpenAI client.
#[derive(Debug)]
pub struct StreamEncoder {
    include_usage: bool,
    started: bool,
    id: String,
    model: String,
    created: u64,
    input_tokens: Option<u64>,
    usage: Option<Usage>,
    done: bool,
    /// The answer comes from another format: its id is reshaped ([`completion_id`]).
    translating: bool,
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::new(false)
    }
}

impl StreamEncoder {
    /// `include_usage`: the client asked for `stream_options.include_usage`
    /// (see [`include_usage`]), so a usage chunk precedes `[DONE]`.
    pub fn new(include_usage: bool) -> Self {
        StreamEncoder {
            include_usage,
            started: false,
            id: SYNTHETIC_ID.to_string(),
            model: String::new(),
            created: 0,
            input_tokens: None,
            usage: None,
            done: false,
            translating: false,
        }
    }

    /// An encoder for an answer translated from another format: every chunk carries an
    /// id in OpenAI's shape ([`completion_id`]).
    pub fn translating(mut self) -> Self {
        self.translating = true;
        self
    }

    fn frame(out: &mut Vec<u8>, v: &Value) {
        write_event(out, None, &v.to_string());
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        // "All other chunks will also include a usage field, but with a null value."
        if self.include_usage
            && let Some(o) = c.as_object_mut()
        {
            o.insert("usage".into(), Value::Null);
        }
        c
    }

    fn begin(&mut self, out: &mut Vec<u8>) {
        self.started = true;
        if self.created == 0 {
            self.created = unix_now();
        }
        let c = self.chunk(json!({"role": "assistant", "content": ""}), None);
        Self::frame(out, &c);
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.begin(out);
        }
    }

    /// Append the frames for one event to `out`.
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
                if self.started {
                    return;
                }
                if self.translating {
                    self.id = completion_id(id);
                } else {
                    self.id.clone_from(id);
                }
                self.model.clone_from(model);
                self.input_tokens = *input_tokens;
                self.begin(out);
            }
            StreamEvent::TextDelta { text } => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let c = self.chunk(json!({"content": text}), None);
                Self::frame(out, &c);
            }
            StreamEvent::ThinkingDelta { .. } => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                let delta = json!({"tool_calls": [{
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]});
                let c = self.chunk(delta, None);
                Self::frame(out, &c);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.ensure_started(out);
                let delta = json!({"tool_calls": [{
                    "index": index,
                    "function": {"arguments": arguments},
                }]});
                let c = self.chunk(delta, None);
                Self::frame(out, &c);
            }
            StreamEvent::Usage { usage } => self.usage = Some(*usage),
            StreamEvent::Finish { reason, .. } => {
                self.ensure_started(out);
                let c = self.chunk(json!({}), Some(finish_to_str(*reason)));
                Self::frame(out, &c);
            }
            StreamEvent::Error { error } => {
                let body = json!({"error": {
                    "message": error.message,
                    "type": error.kind.as_deref().unwrap_or("server_error"),
                    "param": null,
                    "code": error.code,
                }});
                Self::frame(out, &body);
                self.done = true;
            }
            StreamEvent::Done => {
                if self.include_usage {
                    if self.created == 0 {
                        self.created = unix_now();
                    }
                    let mut usage = self.usage.unwrap_or_default();
                    if usage.input_tokens == 0
                        && let Some(n) = self.input_tokens
                    {
                        usage.input_tokens = n;
                    }
                    let c = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": encode_usage(&usage),
                    });
                    Self::frame(out, &c);
                }
                write_event(out, None, "[DONE]");
                self.done = true;
            }
        }
    }

    /// Write an in-band error (`data: {"error": {...}}`); the stream ends
    /// there, with no `[DONE]`.
    pub fn encode_error(&mut self, err: &ClientError, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        Self::frame(out, &encode_error(err));
        self.done = true;
    }
}

#[cfg(test)]
mod tests;
