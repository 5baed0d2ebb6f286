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

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::chat::{self};
use crate::chat::{
    ClientError, ErrorKind, FinishReason, ImageSource, Message, Part, Request, ResponseFormat,
    Role, StreamEvent, SystemBlock, Tool, ToolChoice, UpstreamErrorBody, Usage, WireError,
};
use crate::sse::{SseEvent, write_event};

/// Stream id used when a stream to a client begins without a `Start` event.
const SYNTHETIC_ID: &str = "chatcmpl-backstop";

type Obj = Map<String, Value>;

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
                let content = user_content(field(m, "content"), &content_path)?;
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

fn user_content(v: Option<&Value>, path: &str) -> Result<Vec<Part>, WireError> {
    match v {
        None => Err(WireError::at(path, "required")),
        Some(Value::String(s)) => Ok(vec![Part::Text { text: s.clone() }]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| user_part(p, &format!("{path}[{j}]")))
            .collect(),
        Some(_) => Err(WireError::at(
            path,
            "expected a string or an array of content parts",
        )),
    }
}

fn user_part(v: &Value, path: &str) -> Result<Part, WireError> {
    let p = as_obj(v, path, "a content part object")?;
    match str_of(p, "type") {
        Some("text") => Ok(Part::Text {
            text: req_str(p, "text", path)?,
        }),
        Some("image_url") => {
            let ipath = join(path, "image_url");
            let url = match field(p, "image_url") {
                None => return Err(WireError::at(ipath, "required")),
                // Some clients send the URL directly.
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => req_str(o, "url", &ipath)?,
                Some(_) => return Err(WireError::at(ipath, "expected an object with a `url`")),
            };
            Ok(Part::Image {
                source: image_source(&url),
            })
        }
        Some(other) => Err(WireError::at(
            join(path, "type"),
            format!("unsupported content part type {other:?}; expected \"text\" or \"image_url\""),
        )),
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
        out.insert("stop".into(), json!(req.stop));
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
            // Tool messages take text only; images in a result are dropped.
            Part::ToolResult {
                tool_call_id,
                content,
                ..
            } => messages.push(json!({
                "role": "tool",
                "tool_call_id": tool_call_id,
                "content": joined_text(content),
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
        ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::RequestTooLarge => {
            "invalid_request_error"
        }
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::RateLimit => "rate_limit_error",
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
            "code": err.code,
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
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one SSE event. Comments and empty events yield nothing; a chunk
    /// that is not JSON is an error (the caller decides what to do with it).
    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if data == "[DONE]" {
            return Ok(vec![StreamEvent::Done]);
        }
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
        }
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
                self.id.clone_from(id);
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn text(t: &str) -> Part {
        Part::Text { text: t.into() }
    }

    fn call(id: &str, name: &str, args: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn result(id: &str, t: &str) -> Part {
        Part::ToolResult {
            tool_call_id: id.into(),
            content: vec![text(t)],
            is_error: false,
        }
    }

    fn user(parts: Vec<Part>) -> Message {
        Message {
            role: Role::User,
            content: parts,
            name: None,
        }
    }

    fn assistant(parts: Vec<Part>) -> Message {
        Message {
            role: Role::Assistant,
            content: parts,
            name: None,
        }
    }

    fn err_of(body: Value) -> String {
        match decode_request(&body) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.message,
        }
    }

    fn sse(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
            raw: bytes::Bytes::new(),
        }
    }

    /// Split SSE bytes into events (our writer only ever emits single-line data).
    fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"), "frames end with a blank line");
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let data = f.strip_prefix("data: ").unwrap();
                assert!(!data.contains('\n'));
                sse(data)
            })
            .collect()
    }

    // ---- decode_request -------------------------------------------------

    #[test]
    fn decodes_system_developer_and_multi_turn() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Rule one."},
                                                  {"type": "text", "text": "Rule two."}]},
                {"role": "user", "content": "Hello", "name": "alice"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 256,
            "user": "u-1",
            "metadata": {"team": "a"},
            "reasoning_effort": "low",
            "some_unknown_field": {"x": 1},
        });
        let req = decode_request(&body).unwrap();
        assert_eq!(req.model, "gpt-4o");
        assert_eq!(
            req.system,
            vec![
                SystemBlock {
                    text: "You are terse.".into()
                },
                SystemBlock {
                    text: "Rule one.".into()
                },
                SystemBlock {
                    text: "Rule two.".into()
                },
            ]
        );
        assert_eq!(
            req.messages,
            vec![
                Message {
                    role: Role::User,
                    content: vec![text("Hello")],
                    name: Some("alice".into())
                },
                assistant(vec![text("Hi!")]),
                user(vec![text("Again")]),
            ]
        );
        assert_eq!(req.temperature, Some(0.2));
        assert_eq!(req.top_p, Some(0.9));
        assert_eq!(req.max_tokens, Some(256));
        assert_eq!(req.user.as_deref(), Some("u-1"));
        assert_eq!(req.metadata, json!({"team": "a"}).as_object().cloned());
        assert_eq!(req.reasoning, Some(json!({"effort": "low"})));
        assert!(!req.stream);
    }

    #[test]
    fn decodes_images_url_and_base64() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ]}],
        });
        let req = decode_request(&body).unwrap();
        assert_eq!(
            req.messages[0].content,
            vec![
                text("What is in these?"),
                Part::Image {
                    source: ImageSource::Url {
                        url: "https://example.com/cat.png".into()
                    }
                },
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/jpeg".into(),
                        data: "/9j/4AAQ".into()
                    }
                },
            ]
        );
        let out = encode_request(&req, "gpt-4o");
        assert_eq!(
            out["messages"][0],
            json!({"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ]})
        );
    }

    fn tool_conversation() -> Value {
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "4C"}]},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]},
                "strict": true}}],
            "tool_choice": "required",
            "parallel_tool_calls": true,
        })
    }

    #[test]
    fn decodes_parallel_tool_calls_and_merges_tool_results() {
        let req = decode_request(&tool_conversation()).unwrap();
        assert_eq!(
            req.messages,
            vec![
                user(vec![text("Weather in Paris and Oslo?")]),
                assistant(vec![
                    call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                    call("call_b", "get_weather", "{\"city\":\"Oslo\"}"),
                ]),
                user(vec![result("call_a", "18C"), result("call_b", "4C")]),
                user(vec![text("Thanks")]),
            ]
        );
        assert_eq!(req.tools.len(), 1);
        assert_eq!(req.tools[0].name, "get_weather");
        assert_eq!(req.tools[0].description.as_deref(), Some("Current weather"));
        assert_eq!(req.tools[0].parameters["required"], json!(["city"]));
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.parallel_tool_calls, Some(true));
    }

    #[test]
    fn encodes_tool_conversation() {
        let req = decode_request(&tool_conversation()).unwrap();
        let out = encode_request(&req, "gpt-4.1");
        assert_eq!(
            out,
            json!({
                "model": "gpt-4.1",
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Oslo?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_b", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                    {"role": "tool", "tool_call_id": "call_b", "content": "4C"},
                    {"role": "user", "content": "Thanks"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}}}],
                "tool_choice": "required",
                "parallel_tool_calls": true,
            })
        );
    }

    #[test]
    fn tool_results_come_before_the_rest_of_a_user_turn() {
        let req = Request {
            model: "x".into(),
            messages: vec![
                assistant(vec![text("Let me check."), call("c1", "f", "{}")]),
                user(vec![
                    text("Here you go"),
                    Part::ToolResult {
                        tool_call_id: "c1".into(),
                        content: vec![text("line 1"), text("line 2")],
                        is_error: true,
                    },
                ]),
            ],
            ..Request::default()
        };
        let out = encode_request(&req, "gpt-4o");
        assert_eq!(
            out["messages"],
            json!([
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "line 1\nline 2"},
                {"role": "user", "content": "Here you go"},
            ])
        );
    }

    #[test]
    fn decodes_json_mode_and_schema() {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}});
        assert_eq!(
            decode_request(&body).unwrap().response_format,
            Some(ResponseFormat::JsonObject)
        );
        let schema = json!({"name": "person", "strict": true,
                            "schema": {"type": "object", "properties": {"name": {"type": "string"}}}});
        body["response_format"] = json!({"type": "json_schema", "json_schema": schema});
        let req = decode_request(&body).unwrap();
        assert_eq!(
            req.response_format,
            Some(ResponseFormat::JsonSchema {
                json_schema: schema.clone()
            })
        );
        assert_eq!(
            encode_request(&req, "gpt-4o")["response_format"],
            json!({"type": "json_schema", "json_schema": schema})
        );
        let json_mode = Request {
            response_format: Some(ResponseFormat::JsonObject),
            ..req
        };
        assert_eq!(
            encode_request(&json_mode, "gpt-4o")["response_format"],
            json!({"type": "json_object"})
        );
    }

    #[test]
    fn decodes_stop_string_and_array() {
        let mut body = json!({"model": "m", "messages": [], "stop": "END"});
        assert_eq!(decode_request(&body).unwrap().stop, vec!["END".to_string()]);
        body["stop"] = json!(["a", "b"]);
        let req = decode_request(&body).unwrap();
        assert_eq!(req.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(encode_request(&req, "m")["stop"], json!(["a", "b"]));
        body["stop"] = json!(null);
        assert!(decode_request(&body).unwrap().stop.is_empty());
    }

    #[test]
    fn decodes_tool_choice_forms_and_token_fields() {
        let base = json!({"model": "m", "messages": []});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            decode_request(&b).unwrap()
        };
        assert_eq!(
            with("tool_choice", json!("none")).tool_choice,
            Some(ToolChoice::None)
        );
        assert_eq!(
            with("tool_choice", json!("auto")).tool_choice,
            Some(ToolChoice::Auto)
        );
        assert_eq!(
            with(
                "tool_choice",
                json!({"type": "function", "function": {"name": "f"}})
            )
            .tool_choice,
            Some(ToolChoice::Tool { name: "f".into() })
        );
        assert_eq!(
            with("max_completion_tokens", json!(77)).max_tokens,
            Some(77)
        );
        let mut both = base.clone();
        both["max_tokens"] = json!(10);
        both["max_completion_tokens"] = json!(20);
        assert_eq!(decode_request(&both).unwrap().max_tokens, Some(20));
        assert!(with("stream", json!(true)).stream);
    }

    #[test]
    fn assistant_refusal_and_empty_content() {
        let body = json!({"model": "m", "messages": [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "assistant", "content": null, "refusal": "I can't help with that."},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}]},
        ]});
        let req = decode_request(&body).unwrap();
        assert_eq!(req.messages[0].content, vec![call("c", "f", "{}")]);
        assert_eq!(
            req.messages[1].content,
            vec![text("I can't help with that.")]
        );
        assert_eq!(req.messages[2].content, vec![text("a"), text("b")]);
    }

    #[test]
    fn path_precise_errors() {
        assert_eq!(err_of(json!({"messages": []})), "model: required");
        assert_eq!(
            err_of(json!({"model": "", "messages": []})),
            "model: expected a non-empty string"
        );
        assert_eq!(
            err_of(json!({"model": 3, "messages": []})),
            "model: expected a non-empty string"
        );
        assert_eq!(err_of(json!({"model": "m"})), "messages: required");
        assert_eq!(
            err_of(json!({"model": "m", "messages": {}})),
            "messages: expected an array of messages"
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"},
                                                       {"role": "user", "content": 5}]})
            ),
            "messages[1].content: expected a string or an array of content parts"
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [{"content": "x"}]})),
            "messages[0].role: required"
        );
        assert!(
            err_of(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .starts_with("messages[0].role: expected one of")
        );
        assert!(
            err_of(json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}))
                .contains("legacy \"function\" role")
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "x"}, {"type": "input_audio", "input_audio": {}}]}]})
            ),
            "messages[0].content[1].type: unsupported content part type \"input_audio\"; expected \"text\" or \"image_url\""
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {}}]}]})
            ),
            "messages[0].content[0].image_url.url: required"
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
            "messages[0].tool_call_id: required"
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]})
            ),
            "messages[0].tool_calls[0].function.name: required"
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url"}]}]})
            ),
            "messages[0].content[0].type: unsupported content part type \"image_url\"; expected \"text\""
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]})
            ),
            "tools[0].function.name: required"
        );
        assert!(
            err_of(json!({"model": "m", "messages": [], "tool_choice": "always"}))
                .starts_with("tool_choice: expected")
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [], "stop": 5})),
            "stop: expected a string or an array of strings"
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [], "stop": ["a", 1]})),
            "stop[1]: expected a string"
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [], "max_tokens": -1})),
            "max_tokens: expected a non-negative integer"
        );
        assert_eq!(
            err_of(json!({"model": "m", "messages": [], "temperature": "hot"})),
            "temperature: expected a number"
        );
        assert_eq!(
            err_of(
                json!({"model": "m", "messages": [], "response_format": {"type": "json_schema"}})
            ),
            "response_format.json_schema: required"
        );
        assert!(
            err_of(json!({"model": "m", "messages": [], "functions": []}))
                .starts_with("functions:")
        );
        let e = decode_request(&json!({"model": "m", "messages": [1]})).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("messages[0]"));
        assert_eq!(e.to_client_error().param.as_deref(), Some("messages[0]"));
        assert!(decode_request(&json!([1])).is_err());
    }

    #[test]
    fn include_usage_flag() {
        assert!(include_usage(
            &json!({"stream": true, "stream_options": {"include_usage": true}})
        ));
        assert!(!include_usage(
            &json!({"stream": true, "stream_options": {"include_usage": false}})
        ));
        assert!(!include_usage(&json!({"stream": true})));
    }

    // ---- encode_request -------------------------------------------------

    #[test]
    fn encodes_full_request() {
        let req = Request {
            model: "alias".into(),
            system: vec![
                SystemBlock { text: "S1".into() },
                SystemBlock { text: "S2".into() },
            ],
            messages: vec![
                user(vec![text("hi")]),
                assistant(vec![
                    Part::Thinking {
                        text: "hmm".into(),
                        signature: Some("sig".into()),
                    },
                    text("hello"),
                ]),
                user(vec![Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "AAAA".into(),
                    },
                }]),
            ],
            max_tokens: Some(100),
            temperature: Some(0.5),
            top_p: Some(1.0),
            top_k: Some(40),
            stop: vec!["\n\n".into()],
            stream: true,
            user: Some("u".into()),
            metadata: json!({"k": "v"}).as_object().cloned(),
            reasoning: Some(json!({"effort": "high"})),
            tool_choice: Some(ToolChoice::Auto),
            parallel_tool_calls: Some(false),
            ..Request::default()
        };
        let out = encode_request(&req, "gpt-4o-mini");
        assert_eq!(
            out,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "S1"},
                    {"role": "system", "content": "S2"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                ],
                "max_tokens": 100,
                "temperature": 0.5,
                "top_p": 1.0,
                "stop": ["\n\n"],
                "reasoning_effort": "high",
                "user": "u",
                "metadata": {"k": "v"},
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        // No tools: tool_choice and parallel_tool_calls are left out; top_k never appears.
        assert!(out.get("tool_choice").is_none());
        assert!(out.get("top_k").is_none());
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        let req = Request {
            max_tokens: Some(9),
            ..Request::default()
        };
        for m in ["o1", "o1-mini", "o3-mini", "o4-mini", "gpt-5", "gpt-5-nano"] {
            let out = encode_request(&req, m);
            assert_eq!(out["max_completion_tokens"], 9, "{m}");
            assert!(out.get("max_tokens").is_none(), "{m}");
        }
        for m in ["gpt-4o", "gpt-4.1", "llama-3"] {
            let out = encode_request(&req, m);
            assert_eq!(out["max_tokens"], 9, "{m}");
            assert!(out.get("max_completion_tokens").is_none(), "{m}");
        }
    }

    #[test]
    fn empty_request_has_only_model_and_messages() {
        let out = encode_request(&Request::default(), "m");
        assert_eq!(out, json!({"model": "m", "messages": []}));
        let only_thinking = Request {
            messages: vec![assistant(vec![Part::Thinking {
                text: "t".into(),
                signature: None,
            }])],
            ..Request::default()
        };
        assert_eq!(
            encode_request(&only_thinking, "m")["messages"],
            json!([{"role": "assistant", "content": ""}])
        );
    }

    // ---- round trip (proptest) -------------------------------------------

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 .,!?\n]{1,24}"
    }

    fn arb_id() -> impl Strategy<Value = String> {
        "call_[a-z0-9]{1,8}"
    }

    fn arb_image() -> impl Strategy<Value = Part> {
        prop_oneof![
            "https://example\\.com/[a-z]{1,8}\\.png".prop_map(|url| Part::Image {
                source: ImageSource::Url { url }
            }),
            ("image/(png|jpeg|webp)", "[A-Za-z0-9+/]{4,16}={0,2}").prop_map(
                |(media_type, data)| Part::Image {
                    source: ImageSource::Base64 { media_type, data }
                }
            ),
        ]
    }

    fn arb_user() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                prop::collection::vec(
                    prop_oneof![arb_text().prop_map(|t| Part::Text { text: t }), arb_image()],
                    1..4
                ),
                prop::option::of("[a-z]{1,8}")
            )
                .prop_map(|(content, name)| Message {
                    role: Role::User,
                    content,
                    name
                }),
            prop::collection::vec((arb_id(), arb_text()), 1..4).prop_map(|rs| Message {
                role: Role::User,
                content: rs.into_iter().map(|(id, t)| result(&id, &t)).collect(),
                name: None,
            }),
        ]
    }

    fn arb_assistant() -> impl Strategy<Value = Message> {
        (
            prop::collection::vec(arb_text(), 0..3),
            prop::collection::vec(
                (arb_id(), "[a-z_]{1,10}", "\\{\"[a-z]{1,5}\":[0-9]{1,3}\\}"),
                0..3,
            ),
            prop::option::of("[a-z]{1,8}"),
        )
            .prop_map(|(texts, calls, name)| {
                let mut content: Vec<Part> =
                    texts.into_iter().map(|t| Part::Text { text: t }).collect();
                content.extend(calls.into_iter().map(|(id, n, a)| call(&id, &n, &a)));
                Message {
                    role: Role::Assistant,
                    content,
                    name,
                }
            })
    }

    fn arb_messages() -> impl Strategy<Value = Vec<Message>> {
        // Roles alternate, so two tool-result turns are never adjacent (OpenAI
        // has no way to tell them apart).
        prop::collection::vec((arb_user(), arb_assistant()), 0..4)
            .prop_map(|pairs| pairs.into_iter().flat_map(|(u, a)| [u, a]).collect())
    }

    fn arb_tools() -> impl Strategy<Value = Vec<Tool>> {
        prop::collection::vec(
            ("[a-z_]{1,10}", prop::option::of(arb_text()), "[a-z]{1,6}").prop_map(
                |(name, description, prop)| Tool {
                    name,
                    description,
                    parameters: json!({"type": "object", "properties": {prop: {"type": "string"}}}),
                },
            ),
            0..3,
        )
    }

    fn arb_tool_choice() -> impl Strategy<Value = ToolChoice> {
        prop_oneof![
            Just(ToolChoice::Auto),
            Just(ToolChoice::None),
            Just(ToolChoice::Required),
            "[a-z_]{1,10}".prop_map(|name| ToolChoice::Tool { name }),
        ]
    }

    fn arb_response_format() -> impl Strategy<Value = ResponseFormat> {
        prop_oneof![
            Just(ResponseFormat::Text),
            Just(ResponseFormat::JsonObject),
            "[a-z]{1,8}".prop_map(|name| ResponseFormat::JsonSchema {
                json_schema: json!({"name": name, "strict": true, "schema": {"type": "object"}})
            }),
        ]
    }

    prop_compose! {
        fn arb_request()(
            system in prop::collection::vec(arb_text().prop_map(|text| SystemBlock { text }), 0..3),
            messages in arb_messages(),
            tools in arb_tools(),
            tool_choice in prop::option::of(arb_tool_choice()),
            parallel in prop::option::of(any::<bool>()),
            max_tokens in prop::option::of(any::<u32>()),
            temperature in prop::option::of(0.0f64..2.0),
            top_p in prop::option::of(0.0f64..1.0),
            stop in prop::collection::vec(arb_text(), 0..4),
            response_format in prop::option::of(arb_response_format()),
            stream in any::<bool>(),
            user in prop::option::of("[a-z0-9-]{1,12}"),
            metadata in prop::option::of(prop::collection::btree_map("[a-z]{1,6}", "[a-z]{0,6}", 1..3)),
            effort in prop::option::of(prop_oneof![Just("low"), Just("medium"), Just("high")]),
        ) -> Request {
            let has_tools = !tools.is_empty();
            Request {
                model: "client-alias".into(),
                system,
                messages,
                tools,
                tool_choice: tool_choice.filter(|_| has_tools),
                parallel_tool_calls: parallel.filter(|_| has_tools),
                max_tokens,
                temperature,
                top_p,
                top_k: None,
                stop,
                response_format,
                stream,
                user,
                metadata: metadata.map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
                reasoning: effort.map(|e| json!({"effort": e})),
            }
        }
    }

    proptest! {
        #[test]
        fn request_round_trips(req in arb_request(), reasoning_model in any::<bool>()) {
            let upstream = if reasoning_model { "o3-mini" } else { "gpt-4o" };
            let body = encode_request(&req, upstream);
            let back = decode_request(&body).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(&back.model, upstream);
            let back = Request { model: req.model.clone(), ..back };
            prop_assert_eq!(back, req);
        }
    }

    // ---- responses --------------------------------------------------------

    #[test]
    fn decodes_openai_response() {
        let body = br#"{
          "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
          "object": "chat.completion",
          "created": 1741569952,
          "model": "gpt-4.1-2025-04-14",
          "choices": [{
            "index": 0,
            "message": {
              "role": "assistant",
              "content": null,
              "refusal": null,
              "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
              ],
              "annotations": []
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
          }],
          "usage": {
            "prompt_tokens": 82, "completion_tokens": 40, "total_tokens": 122,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
          },
          "service_tier": "default",
          "system_fingerprint": "fp_x"
        }"#;
        let r = decode_response(body).unwrap();
        assert_eq!(r.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
        assert_eq!(r.model, "gpt-4.1-2025-04-14");
        assert_eq!(r.created, 1741569952);
        assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            r.content,
            vec![
                call("call_1", "get_weather", "{\"city\":\"Paris\"}"),
                call("call_2", "get_weather", "{\"city\":\"Oslo\"}"),
            ]
        );
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 82,
                output_tokens: 40,
                cache_read_tokens: Some(64),
                cache_write_tokens: None
            }
        );
    }

    #[test]
    fn decodes_reasoning_content_and_finish_reasons() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"deepseek-reasoner",
            "choices":[{"index":0,"message":{"role":"assistant","content":"42","reasoning_content":"think"},
            "finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let r = decode_response(body).unwrap();
        assert_eq!(
            r.content,
            vec![
                Part::Thinking {
                    text: "think".into(),
                    signature: None
                },
                text("42")
            ]
        );
        assert_eq!(r.finish_reason, Some(FinishReason::Length));
        assert_eq!(r.usage.cache_read_tokens, None);
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a","reasoning":"r"},
            "finish_reason":"content_filter"}]}"#;
        let r = decode_response(body).unwrap();
        assert_eq!(
            r.content[0],
            Part::Thinking {
                text: "r".into(),
                signature: None
            }
        );
        assert_eq!(r.finish_reason, Some(FinishReason::ContentFilter));
        for (s, want) in [
            ("stop", FinishReason::Stop),
            ("function_call", FinishReason::ToolCalls),
            ("weird", FinishReason::Other),
        ] {
            assert_eq!(finish_from_str(s), want);
        }
    }

    #[test]
    fn decode_response_rejects_errors_and_garbage() {
        assert!(decode_response(b"not json").is_err());
        assert!(decode_response(b"[]").is_err());
        assert!(decode_response(br#"{"id":"x"}"#).is_err());
        let e = decode_response(br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#)
            .unwrap_err();
        assert!(e.message.contains("Rate limit reached"));
    }

    #[test]
    fn encodes_response_exactly() {
        let resp = chat::Response {
            id: "chatcmpl-1".into(),
            model: "claude-sonnet-4-5".into(),
            content: vec![
                Part::Thinking {
                    text: "hidden".into(),
                    signature: None,
                },
                text("Hello"),
                text(" world"),
            ],
            finish_reason: Some(FinishReason::StopSequence),
            stop_sequence: Some("END".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_tokens: None,
                cache_write_tokens: Some(3),
            },
            created: 1700000000,
        };
        assert_eq!(
            encode_response(&resp),
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "claude-sonnet-4-5",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello world", "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                          "prompt_tokens_details": {"cached_tokens": 0}},
            })
        );
    }

    #[test]
    fn response_round_trips() {
        let resp = chat::Response {
            id: "chatcmpl-9".into(),
            model: "gpt-4o".into(),
            content: vec![
                text("Checking."),
                call("call_1", "lookup", "{\"q\":\"x\"}"),
                call("call_2", "lookup", "{}"),
            ],
            finish_reason: Some(FinishReason::ToolCalls),
            stop_sequence: None,
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: Some(50),
                cache_write_tokens: None,
            },
            created: 1234,
        };
        let bytes = serde_json::to_vec(&encode_response(&resp)).unwrap();
        assert_eq!(decode_response(&bytes).unwrap(), resp);
        let tools_only = chat::Response {
            content: vec![call("c", "f", "{}")],
            ..resp.clone()
        };
        let v = encode_response(&tools_only);
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        for r in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ContentFilter,
        ] {
            let x = chat::Response {
                finish_reason: Some(r),
                ..resp.clone()
            };
            let back = decode_response(&serde_json::to_vec(&encode_response(&x)).unwrap()).unwrap();
            assert_eq!(back.finish_reason, Some(r));
        }
    }

    // ---- errors -----------------------------------------------------------

    #[test]
    fn encodes_errors() {
        let e = ClientError::invalid("messages: required").with_param("messages");
        assert_eq!(
            encode_error(&e),
            json!({"error": {"message": "messages: required", "type": "invalid_request_error",
                             "param": "messages", "code": null}})
        );
        let e = ClientError::new(ErrorKind::NotFound, "no such model").with_code("model_not_found");
        assert_eq!(
            encode_error(&e),
            json!({"error": {"message": "no such model", "type": "invalid_request_error",
                             "param": null, "code": "model_not_found"}})
        );
        for (kind, ty) in [
            (ErrorKind::Authentication, "authentication_error"),
            (ErrorKind::Permission, "permission_error"),
            (ErrorKind::RequestTooLarge, "invalid_request_error"),
            (ErrorKind::RateLimit, "rate_limit_error"),
            (ErrorKind::Api, "server_error"),
            (ErrorKind::Overloaded, "server_error"),
            (ErrorKind::Timeout, "server_error"),
        ] {
            assert_eq!(
                encode_error(&ClientError::new(kind, "m"))["error"]["type"],
                ty
            );
        }
    }

    #[test]
    fn decodes_provider_error_bodies() {
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-abc***.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(
            decode_error(openai),
            Some(UpstreamErrorBody {
                kind: Some("invalid_request_error".into()),
                code: Some("invalid_api_key".into()),
                message: "Incorrect API key provided: sk-abc***.".into(),
            })
        );
        let quota = br#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(
            decode_error(quota).unwrap().code.as_deref(),
            Some("insufficient_quota")
        );
        let server = br#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
        let s = decode_error(server).unwrap();
        assert_eq!((s.kind.as_deref(), s.code), (Some("server_error"), None));

        let openrouter = br#"{"error":{"code":429,"message":"Provider returned error","metadata":{"raw":"rate limited upstream","provider_name":"Together"}}}"#;
        let o = decode_error(openrouter).unwrap();
        assert_eq!(o.code.as_deref(), Some("429"));
        assert_eq!(o.kind, None);
        assert_eq!(o.message, "Provider returned error: rate limited upstream");

        let gemini = br#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(
            decode_error(gemini),
            Some(UpstreamErrorBody {
                kind: Some("RESOURCE_EXHAUSTED".into()),
                code: Some("429".into()),
                message: "Resource has been exhausted (e.g. check quota).".into(),
            })
        );
        let vllm = br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
        let v = decode_error(vllm).unwrap();
        assert_eq!(
            (v.kind.as_deref(), v.code.as_deref()),
            (Some("NotFoundError"), Some("404"))
        );
        let ollama = br#"{"error":"model 'llama9' not found"}"#;
        assert_eq!(
            decode_error(ollama).unwrap().message,
            "model 'llama9' not found"
        );

        assert_eq!(decode_error(b"<html>Bad Gateway</html>"), None);
        assert_eq!(decode_error(br#"{"id":"chatcmpl-1","choices":[]}"#), None);
        assert_eq!(decode_error(br#"{"error":null}"#), None);
    }

    // ---- stream decoder ---------------------------------------------------

    fn decode_all(dec: &mut StreamDecoder, datas: &[&str]) -> Vec<StreamEvent> {
        datas
            .iter()
            .flat_map(|d| dec.push(&sse(d)).unwrap())
            .collect()
    }

    #[test]
    fn decodes_realistic_stream() {
        let chunks = [
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Let me "},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"check."},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_P","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_O","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"city\":\"Oslo\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":30,"total_tokens":110,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            "",
            "[DONE]",
        ];
        let mut dec = StreamDecoder::new();
        let events = decode_all(&mut dec, &chunks);
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "chatcmpl-1".into(),
                    model: "gpt-4o-2024-08-06".into(),
                    input_tokens: None
                },
                StreamEvent::TextDelta {
                    text: "Let me ".into()
                },
                StreamEvent::TextDelta {
                    text: "check.".into()
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_P".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{\"ci".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "ty\":\"Paris\"}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_O".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: "{\"city\":\"Oslo\"}".into()
                },
                StreamEvent::Finish {
                    reason: FinishReason::ToolCalls,
                    stop_sequence: None
                },
                StreamEvent::Usage {
                    usage: Usage {
                        input_tokens: 80,
                        output_tokens: 30,
                        cache_read_tokens: Some(0),
                        cache_write_tokens: None
                    }
                },
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn renumbers_tool_calls_and_reads_reasoning() {
        let mut dec = StreamDecoder::new();
        let events = decode_all(
            &mut dec,
            &[
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"reasoning":"more"}}]}"#,
                // Upstream indices need not start at 0.
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
                // No index at all, but a new id: a new call.
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":{"x":1}}}]}}]}"#,
                // Same upstream index as the first, different id: a new call too.
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"c","function":{"name":"h"}}]}}]}"#,
                r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"arguments":"[]"}}]}}]}"#,
            ],
        );
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "g".into(),
                    model: "m".into(),
                    input_tokens: None
                },
                StreamEvent::ThinkingDelta { text: "hmm".into() },
                StreamEvent::ThinkingDelta {
                    text: "more".into()
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "a".into(),
                    name: "f".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "b".into(),
                    name: "g".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: "{\"x\":1}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 2,
                    id: "c".into(),
                    name: "h".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 2,
                    arguments: "[]".into()
                },
            ]
        );
    }

    #[test]
    fn stream_decoder_handles_errors_and_garbage() {
        let mut dec = StreamDecoder::new();
        // OpenRouter's mid-stream error chunk.
        let ev = dec
            .push(&sse(r#"{"id":"cmpl-abc","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error","native_finish_reason":"error"}]}"#))
            .unwrap();
        assert_eq!(
            ev,
            vec![StreamEvent::Error {
                error: UpstreamErrorBody {
                    kind: None,
                    code: Some("server_error".into()),
                    message: "Provider disconnected unexpectedly".into(),
                }
            }]
        );
        let ev = dec.push(&sse(r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#)).unwrap();
        assert!(matches!(&ev[..], [StreamEvent::Error { error }] if error.message == "overloaded"));
        assert!(dec.push(&sse("{not json")).is_err());
        assert!(dec.push(&sse("   ")).unwrap().is_empty());
        let plain = SseEvent {
            event: Some("error".into()),
            data: "upstream went away".into(),
            raw: bytes::Bytes::new(),
        };
        assert!(
            matches!(&dec.push(&plain).unwrap()[..], [StreamEvent::Error { error }] if error.message == "upstream went away")
        );
    }

    // ---- stream encoder ---------------------------------------------------

    fn sample_events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "chatcmpl-77".into(),
                model: "gpt-4o".into(),
                input_tokens: None,
            },
            StreamEvent::TextDelta { text: "Hi ".into() },
            StreamEvent::ThinkingDelta {
                text: "dropped".into(),
            },
            StreamEvent::TextDelta {
                text: "there".into(),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_2".into(),
                name: "g".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 9,
                    output_tokens: 4,
                    cache_read_tokens: Some(2),
                    cache_write_tokens: None,
                },
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None,
            },
            StreamEvent::Done,
        ]
    }

    #[test]
    fn encoder_output_decodes_back() {
        let events = sample_events();
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        for ev in &events {
            enc.encode(ev, &mut out);
        }
        let frames = parse_sse(&out);
        let mut dec = StreamDecoder::new();
        let mut back = Vec::new();
        for f in &frames {
            back.extend(dec.push(f).unwrap());
        }
        // Thinking is dropped; usage moves to the end, just before [DONE].
        let mut want: Vec<StreamEvent> = events
            .iter()
            .filter(|e| {
                !matches!(
                    e,
                    StreamEvent::ThinkingDelta { .. } | StreamEvent::Usage { .. }
                )
            })
            .cloned()
            .collect();
        want.insert(want.len() - 1, events[9].clone());
        assert_eq!(back, want);
    }

    #[test]
    fn encoder_frames_match_openai_shapes() {
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        for ev in sample_events() {
            enc.encode(&ev, &mut out);
        }
        let frames = parse_sse(&out);
        let chunks: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|f| serde_json::from_str(&f.data).unwrap())
            .collect();
        assert_eq!(frames.last().unwrap().data, "[DONE]");
        let created = chunks[0]["created"].clone();
        assert!(created.as_u64().unwrap() > 0);
        for c in &chunks {
            assert_eq!(c["id"], "chatcmpl-77");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-4o");
            assert_eq!(c["created"], created);
            assert!(c.get("system_fingerprint").is_none());
        }
        assert_eq!(
            chunks[0],
            json!({"id": "chatcmpl-77", "object": "chat.completion.chunk", "created": created, "model": "gpt-4o",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": null, "finish_reason": null}],
                   "usage": null})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hi "}));
        assert_eq!(
            chunks[3]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": ""}}]})
        );
        assert_eq!(
            chunks[4]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]})
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                   "prompt_tokens_details": {"cached_tokens": 2}})
        );
    }

    #[test]
    fn encoder_without_usage_or_start() {
        let mut enc = StreamEncoder::new(false);
        let mut out = Vec::new();
        enc.encode(&StreamEvent::TextDelta { text: "x".into() }, &mut out);
        enc.encode(
            &StreamEvent::Usage {
                usage: Usage::default(),
            },
            &mut out,
        );
        enc.encode(
            &StreamEvent::Finish {
                reason: FinishReason::StopSequence,
                stop_sequence: Some("E".into()),
            },
            &mut out,
        );
        enc.encode(&StreamEvent::Done, &mut out);
        enc.encode(
            &StreamEvent::TextDelta {
                text: "after done".into(),
            },
            &mut out,
        );
        let frames = parse_sse(&out);
        assert_eq!(frames.len(), 4, "role, text, finish, [DONE]");
        let first: Value = serde_json::from_str(&frames[0].data).unwrap();
        assert_eq!(first["id"], SYNTHETIC_ID);
        assert!(first.get("usage").is_none());
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let finish: Value = serde_json::from_str(&frames[2].data).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(frames[3].data, "[DONE]");
    }

    #[test]
    fn encoder_in_band_error_has_no_done() {
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        enc.encode(
            &StreamEvent::Start {
                id: "c".into(),
                model: "m".into(),
                input_tokens: None,
            },
            &mut out,
        );
        enc.encode(
            &StreamEvent::TextDelta {
                text: "partial".into(),
            },
            &mut out,
        );
        let err = ClientError::new(ErrorKind::Overloaded, "all targets failed");
        enc.encode_error(&err, &mut out);
        enc.encode(&StreamEvent::Done, &mut out);
        let frames = parse_sse(&out);
        assert_eq!(frames.len(), 3);
        let last: Value = serde_json::from_str(&frames[2].data).unwrap();
        assert_eq!(
            last,
            json!({"error": {"message": "all targets failed", "type": "server_error", "param": null, "code": null}})
        );
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
        // Our decoder reads it back as an in-band error.
        let mut dec = StreamDecoder::new();
        let ev = dec.push(&frames[2]).unwrap();
        assert!(
            matches!(&ev[..], [StreamEvent::Error { error }] if error.message == "all targets failed")
        );
    }

    #[test]
    fn encoder_writes_upstream_error_events() {
        let mut enc = StreamEncoder::default();
        let mut out = Vec::new();
        let error = UpstreamErrorBody {
            kind: None,
            code: Some("502".into()),
            message: "bad gateway".into(),
        };
        enc.encode(
            &StreamEvent::Error {
                error: error.clone(),
            },
            &mut out,
        );
        enc.encode(&StreamEvent::Done, &mut out);
        let frames = parse_sse(&out);
        assert_eq!(frames.len(), 1);
        let back = StreamDecoder::new().push(&frames[0]).unwrap();
        assert_eq!(
            back,
            vec![StreamEvent::Error {
                error: UpstreamErrorBody {
                    kind: Some("server_error".into()),
                    ..error
                }
            }]
        );
    }
}
