//! Google Gemini `generateContent` / `streamGenerateContent`: an egress-only format.
//!
//! Clients speak OpenAI or Anthropic to Backstop; this module is what Backstop
//! sends to Gemini ([`encode_request`]) and how it reads the answers
//! ([`decode_response`], [`StreamDecoder`], [`decode_error`]). There is no
//! ingress side: no client ever receives Gemini's format.
//!
//! Translation choices that lose or invent information, in one place:
//! - Roles are `user` and `model`; consecutive messages of one role are merged.
//!   A request with only a system prompt sends it as the one `user` turn (Gemini
//!   rejects empty `contents`), with no `systemInstruction`.
//!   Tool results become `functionResponse` parts of a `user` turn. Gemini matches
//!   a response to its call by the function *name*, which the neutral model keeps
//!   only on the call: it is looked up by `tool_call_id` in earlier assistant turns.
//!   A result's text is sent as `{"output": …}` (`{"error": …}` when it is an
//!   error), parsed as JSON when it is a JSON object; images in a result follow it
//!   as `inlineData`/`fileData` parts.
//! - Gemini 3 models require the `thoughtSignature` they attached to a function
//!   call to come back with it. Clients of other formats cannot carry it, so the
//!   first `functionCall` of each model turn carries the documented placeholder
//!   [`THOUGHT_SIGNATURE_PLACEHOLDER`] instead; other models ignore it.
//! - Tool parameter schemas are cut down to the OpenAPI subset Gemini accepts
//!   (see [`gemini_schema`]): `$ref`s are inlined from `$defs`/`definitions`,
//!   `oneOf` becomes `anyOf`, `const` an `enum`, `type: [T, "null"]` becomes
//!   `type: T, nullable: true`, and keys Gemini rejects (`$schema`,
//!   `additionalProperties`, …) are dropped. Gemini rejects an untyped schema:
//!   `properties` imply `OBJECT`, `items` `ARRAY`, and a free-form value (`{}`)
//!   becomes a `STRING`.
//! - Gemini takes at most 5 stop sequences: a request with more sends the first 5
//!   (and logs a warning).
//! - JSON mode is `generationConfig.responseMimeType: "application/json"`, with
//!   `responseSchema` for a `json_schema` format.
//! - `parallel_tool_calls`, `user` and `metadata` have no Gemini equivalent and
//!   are dropped, as are thinking blocks of earlier turns (Gemini only takes its
//!   own signed thoughts). A reasoning request becomes `thinkingConfig`.
//! - Gemini has no ids for function calls: answers get fresh `call_…` ids. It
//!   reports `STOP` after function calls; that becomes `ToolCalls`. A stop
//!   sequence also ends in `STOP`, so `StopSequence` is never reported.
//! - `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS` and
//!   `MALFORMED_RESPONSE` mean no usable answer: they are in-band errors (a
//!   failed attempt), not a finish. Safety and recitation stops stay `ContentFilter`.
//! - Usage: prompt tokens are `promptTokenCount` (cached ones included, as in the
//!   neutral model); output tokens are `candidatesTokenCount` plus
//!   `thoughtsTokenCount` (thinking is billed as output).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::chat::{
    self, FinishReason, ImageSource, Message, Part, ResponseFormat, Role, StreamEvent, ToolChoice,
    UpstreamErrorBody, Usage, WireError,
};
use crate::sse::SseEvent;

/// The thought signature Google documents for function calls that Gemini did not
/// produce in this conversation (history from another model or client).
pub const THOUGHT_SIGNATURE_PLACEHOLDER: &str = "skip_thought_signature_validator";

/// Schema keys Gemini's `Schema` object accepts (an OpenAPI 3.0 subset).
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "minimum",
    "maximum",
];

/// `generationConfig.stopSequences` takes at most this many (Google's API reference:
/// "up to 5"); more is a 400. The rest are dropped, not refused: the chain's other
/// targets could honour them all, and a refusal would never fail over.
const MAX_STOP_SEQUENCES: usize = 5;

/// How deep `$ref`s are inlined before a recursive schema is cut off.
const MAX_REF_DEPTH: usize = 8;

type Obj = Map<String, Value>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh tool-call id (`call_` + 24 alphanumerics): unique across turns, as
/// Anthropic requires of the ids in a conversation that may fail over there.
fn new_call_id() -> String {
    let mut id = String::from("call_");
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Requests (egress).
// ---------------------------------------------------------------------------

/// Builds the body Backstop sends to Gemini's `models/{model}:generateContent`
/// (and `:streamGenerateContent`, which takes the same body). The model is part
/// of the URL, so `upstream_model` only matters for error messages; the body has
/// no `model` or `stream` field.
///
/// ```
/// use backstop::chat::{Message, Request, Role, SystemBlock};
/// use backstop::wire::gemini::encode_request;
/// let req = Request {
///     system: vec![SystemBlock { text: "Be brief.".into() }],
///     messages: vec![Message::text(Role::User, "Hi")],
///     max_tokens: Some(100),
///     ..Request::default()
/// };
/// let body = encode_request(&req, "gemini-2.5-flash");
/// assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
/// assert_eq!(body["contents"][0]["role"], "user");
/// assert_eq!(body["contents"][0]["parts"][0]["text"], "Hi");
/// assert_eq!(body["generationConfig"]["maxOutputTokens"], 100);
/// ```
pub fn encode_request(req: &chat::Request, upstream_model: &str) -> Value {
    let _ = upstream_model;
    let mut body = Map::new();
    let contents = encode_contents(&req.messages);
    let system: Vec<Value> = req
        .system
        .iter()
        .filter(|b| !b.text.is_empty())
        .map(|b| json!({"text": b.text}))
        .collect();
    if contents.is_empty() && !system.is_empty() {
        // Gemini rejects empty `contents` (400): a system prompt alone is the user's turn.
        body.insert(
            "contents".into(),
            json!([{"role": "user", "parts": system}]),
        );
    } else {
        body.insert("contents".into(), contents.into());
        if !system.is_empty() {
            body.insert("systemInstruction".into(), json!({"parts": system}));
        }
    }

    if !req.tools.is_empty() {
        let decls: Vec<Value> = req.tools.iter().map(encode_tool).collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        if let Some(config) = encode_tool_choice(req.tool_choice.as_ref()) {
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }

    let config = generation_config(req);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Value::Object(body)
}

fn generation_config(req: &chat::Request) -> Obj {
    let mut c = Map::new();
    if let Some(n) = req.max_tokens {
        c.insert("maxOutputTokens".into(), n.into());
    }
    if let Some(t) = req.temperature {
        c.insert("temperature".into(), t.into());
    }
    if let Some(p) = req.top_p {
        c.insert("topP".into(), p.into());
    }
    if let Some(k) = req.top_k {
        c.insert("topK".into(), k.into());
    }
    if !req.stop.is_empty() {
        let stop = super::capped_stop(&req.stop, MAX_STOP_SEQUENCES, "Gemini");
        c.insert("stopSequences".into(), json!(stop));
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            c.insert("responseMimeType".into(), "application/json".into());
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            c.insert("responseMimeType".into(), "application/json".into());
            if let Some(schema) = json_schema.get("schema").filter(|s| s.is_object()) {
                c.insert("responseSchema".into(), gemini_schema(schema));
            }
        }
    }
    if let Some(thinking) = req.reasoning.as_ref().and_then(thinking_config) {
        c.insert("thinkingConfig".into(), thinking);
    }
    c
}

/// Anthropic `{"type":"enabled","budget_tokens":N}` or OpenAI `{"effort":"low"}` →
/// Gemini `thinkingConfig` (the budgets Google's own OpenAI compatibility layer uses).
fn thinking_config(reasoning: &Value) -> Option<Value> {
    let budget = if reasoning.get("type").and_then(Value::as_str) == Some("enabled") {
        reasoning.get("budget_tokens").and_then(Value::as_u64)?
    } else {
        match reasoning.get("effort").and_then(Value::as_str)? {
            "minimal" | "low" => 1024,
            "medium" => 8192,
            "high" => 24576,
            _ => return None,
        }
    };
    Some(json!({"thinkingBudget": budget, "includeThoughts": true}))
}

fn encode_tool(t: &chat::Tool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), t.name.clone().into());
    if let Some(d) = &t.description {
        m.insert("description".into(), d.clone().into());
    }
    // A function without parameters has no `parameters`: Gemini rejects an OBJECT
    // schema with no properties.
    let schema = gemini_schema(&t.parameters);
    let no_params = schema.get("properties").is_none()
        && schema.get("anyOf").is_none()
        && schema.get("type").is_none_or(|ty| ty == "OBJECT");
    if !no_params {
        m.insert("parameters".into(), schema);
    }
    Value::Object(m)
}

fn encode_tool_choice(choice: Option<&ToolChoice>) -> Option<Value> {
    Some(match choice? {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Tool { name } => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    })
}

/// A JSON Schema cut down to the OpenAPI subset Gemini's `Schema` accepts.
///
/// ```
/// use backstop::wire::gemini::gemini_schema;
/// let s = serde_json::json!({
///     "$schema": "http://json-schema.org/draft-07/schema#",
///     "type": "object",
///     "properties": {"city": {"type": ["string", "null"]}},
///     "required": ["city"],
///     "additionalProperties": false,
/// });
/// assert_eq!(gemini_schema(&s), serde_json::json!({
///     "type": "OBJECT",
///     "properties": {"city": {"type": "STRING", "nullable": true}},
///     "required": ["city"],
/// }));
/// ```
pub fn gemini_schema(schema: &Value) -> Value {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    convert_schema(schema, defs, 0)
}

fn convert_schema(schema: &Value, defs: Option<&Obj>, depth: usize) -> Value {
    let Some(obj) = schema.as_object() else {
        // `true`/`false` schemas and junk: anything goes.
        return json!({});
    };
    // `$ref`: inline the definition (siblings such as `description` win).
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"));
        let target = name.and_then(|n| defs.and_then(|d| d.get(n)));
        let mut out = match target {
            Some(t) if depth < MAX_REF_DEPTH => convert_schema(t, defs, depth + 1),
            _ => json!({}),
        };
        if let (Some(o), Some(d)) = (out.as_object_mut(), obj.get("description")) {
            o.insert("description".into(), d.clone());
        }
        return out;
    }
    // `allOf` of one schema (how many generators wrap a `$ref`): that schema.
    if let Some([only]) = obj
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let mut out = convert_schema(only, defs, depth);
        if let (Some(o), Some(d)) = (out.as_object_mut(), obj.get("description")) {
            o.insert("description".into(), d.clone());
        }
        return out;
    }
    let mut out = Map::new();
    for (key, value) in obj {
        match key.as_str() {
            "type" => match value {
                Value::String(t) => {
                    if t == "null" {
                        out.insert("nullable".into(), true.into());
                    } else {
                        out.insert("type".into(), t.to_ascii_uppercase().into());
                    }
                }
                Value::Array(types) => {
                    if types.iter().any(|t| t == "null") {
                        out.insert("nullable".into(), true.into());
                    }
                    let non_null: Vec<&str> = types
                        .iter()
                        .filter_map(Value::as_str)
                        .filter(|t| *t != "null")
                        .collect();
                    match non_null.as_slice() {
                        [] => {}
                        [one] => {
                            out.insert("type".into(), one.to_ascii_uppercase().into());
                        }
                        many => {
                            let any: Vec<Value> = many
                                .iter()
                                .map(|t| json!({"type": t.to_ascii_uppercase()}))
                                .collect();
                            out.insert("anyOf".into(), any.into());
                        }
                    }
                }
                _ => {}
            },
            "properties" => {
                if let Some(props) = value.as_object().filter(|p| !p.is_empty()) {
                    let props: Map<String, Value> = props
                        .iter()
                        .map(|(k, v)| (k.clone(), convert_child(v, defs, depth)))
                        .collect();
                    out.insert("properties".into(), Value::Object(props));
                }
            }
            "items" => {
                // Tuple-style `items: [..]` has no equivalent: the first schema stands in.
                let item = match value {
                    Value::Array(items) => items.first().cloned().unwrap_or(json!({})),
                    other => other.clone(),
                };
                out.insert("items".into(), convert_child(&item, defs, depth));
            }
            "anyOf" | "oneOf" => {
                if let Some(alts) = value.as_array() {
                    let mut nullable = false;
                    let alts: Vec<Value> = alts
                        .iter()
                        .filter(|a| {
                            let is_null = a.get("type").and_then(Value::as_str) == Some("null");
                            nullable |= is_null;
                            !is_null
                        })
                        .map(|a| convert_child(a, defs, depth))
                        .collect();
                    if nullable {
                        out.insert("nullable".into(), true.into());
                    }
                    match alts.len() {
                        0 => {}
                        // `anyOf: [X, null]` (Pydantic's Optional[X]): X, nullable.
                        1 => {
                            if let Some(Value::Object(only)) = alts.into_iter().next() {
                                for (k, v) in only {
                                    out.entry(k).or_insert(v);
                                }
                            }
                        }
                        _ => {
                            out.insert("anyOf".into(), alts.into());
                        }
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([enum_value(value)]));
            }
            "enum" => {
                if let Some(values) = value.as_array() {
                    let values: Vec<Value> = values
                        .iter()
                        .filter(|v| !v.is_null())
                        .map(|v| enum_value(v).into())
                        .collect();
                    out.insert("enum".into(), values.into());
                }
            }
            "required" => {
                // Gemini rejects names that are not properties.
                let names: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| {
                        n.as_str().is_some_and(|n| {
                            obj.get("properties")
                                .and_then(Value::as_object)
                                .is_some_and(|p| p.contains_key(n))
                        })
                    })
                    .cloned()
                    .collect();
                if !names.is_empty() {
                    out.insert("required".into(), names.into());
                }
            }
            // Integers as int64 strings, the way Google's JSON mapping writes them.
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties"
            | "maxProperties" => {
                if let Some(n) = value.as_u64() {
                    out.insert(key.clone(), n.to_string().into());
                }
            }
            "minimum" | "maximum" => {
                out.extend(value.is_number().then(|| (key.clone(), value.clone())));
            }
            "format" => {
                // Gemini only acts on a few formats and rejects some others on strings.
                if let Some(f) = value.as_str()
                    && matches!(
                        f,
                        "enum" | "date-time" | "float" | "double" | "int32" | "int64"
                    )
                {
                    out.insert("format".into(), f.into());
                }
            }
            k if SCHEMA_KEYS.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            // `$schema`, `$id`, `$defs`, `additionalProperties`, `examples`, `not`, …
            _ => {}
        }
    }
    // Gemini's enums are strings whatever the declared type.
    if out.contains_key("enum") {
        out.insert("type".into(), "STRING".into());
        out.insert("format".into(), "enum".into());
    }
    // Gemini rejects a schema without `type` unless it is an `anyOf`; JSON Schema
    // lets the shape imply it.
    if !out.contains_key("type") && !out.contains_key("anyOf") {
        if out.contains_key("properties") {
            out.insert("type".into(), "OBJECT".into());
        } else if out.contains_key("items") {
            out.insert("type".into(), "ARRAY".into());
        }
    }
    Value::Object(out)
}

/// A property, item or alternative: as [`convert_schema`], and a schema that still
/// has no type (`{}`, `{"description": …}`: any value) becomes a string, the one
/// type that can carry any value — Gemini rejects it untyped.
fn convert_child(schema: &Value, defs: Option<&Obj>, depth: usize) -> Value {
    let mut out = convert_schema(schema, defs, depth);
    if let Some(o) = out.as_object_mut()
        && !o.contains_key("type")
        && !o.contains_key("anyOf")
    {
        o.insert("type".into(), "STRING".into());
    }
    out
}

fn enum_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Merges the conversation into alternating `user`/`model` turns.
fn encode_contents(messages: &[Message]) -> Vec<Value> {
    // Tool call id → function name, from every assistant turn.
    let names: HashMap<&str, &str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| &m.content)
        .filter_map(|p| match p {
            Part::ToolCall { id, name, .. } => Some((id.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    let mut merged: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let mut parts = Vec::new();
        for p in &m.content {
            encode_part(p, &names, &mut parts);
        }
        if parts.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some((role, existing)) if *role == m.role => existing.extend(parts),
            _ => merged.push((m.role, parts)),
        }
    }
    merged
        .into_iter()
        .map(|(role, mut parts)| match role {
            Role::User => {
                // Function responses lead their turn, in the order of the calls.
                let (mut responses, others): (Vec<Value>, Vec<Value>) = parts
                    .into_iter()
                    .partition(|p| p.get("functionResponse").is_some());
                responses.extend(others);
                json!({"role": "user", "parts": responses})
            }
            Role::Assistant => {
                if let Some(first_call) = parts
                    .iter_mut()
                    .find(|p| p.get("functionCall").is_some())
                    .and_then(Value::as_object_mut)
                {
                    first_call.insert(
                        "thoughtSignature".into(),
                        THOUGHT_SIGNATURE_PLACEHOLDER.into(),
                    );
                }
                json!({"role": "model", "parts": parts})
            }
        })
        .collect()
}

fn encode_part(p: &Part, names: &HashMap<&str, &str>, out: &mut Vec<Value>) {
    match p {
        Part::Text { text } if text.is_empty() => {}
        Part::Text { text } => out.push(json!({"text": text})),
        Part::Image { source } => out.push(encode_image(source)),
        Part::ToolCall {
            name, arguments, ..
        } => out.push(json!({"functionCall": {"name": name, "args": tool_args(arguments)}})),
        Part::ToolResult {
            tool_call_id,
            content,
            is_error,
        } => {
            let name = names
                .get(tool_call_id.as_str())
                .copied()
                .unwrap_or(tool_call_id.as_str());
            let text: String = content
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
            let value = match serde_json::from_str::<Value>(text.trim()) {
                Ok(v @ Value::Object(_)) => v,
                _ => Value::String(text),
            };
            let key = if *is_error { "error" } else { "output" };
            out.push(json!({"functionResponse": {"name": name, "response": {key: value}}}));
            for part in content {
                if let Part::Image { source } = part {
                    out.push(encode_image(source));
                }
            }
        }
        // Gemini only takes back thoughts it signed itself.
        Part::Thinking { .. } => {}
    }
}

fn encode_image(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        ImageSource::Url { url } => match parse_data_url(url) {
            Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
            None => json!({"fileData": {"mimeType": mime_from_url(url), "fileUri": url}}),
        },
    }
}

/// `data:image/png;base64,AAAA` → (`image/png`, `AAAA`).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// `fileData` needs a MIME type; guess it from the URL's extension.
fn mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        Some("pdf") => "application/pdf",
        _ => "image/jpeg",
    }
}

/// Tool-call arguments (JSON text) → Gemini's `args` object: empty text is `{}`,
/// anything that is not an object is kept as `{"_raw": text}`.
fn tool_args(arguments: &str) -> Value {
    let t = arguments.trim();
    if t.is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ Value::Object(_)) => v,
        Ok(Value::Null) => json!({}),
        _ => json!({ "_raw": arguments }),
    }
}

// ---------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------

/// The failure a candidate's `finishReason` stands for when Gemini produced no usable
/// answer (a broken or refused function call, a malformed response; the texts are what
/// Google's reference says they mean). It is a failed attempt (an in-band error with no
/// status: the classifier makes it a `server_error`, retried, failed over), never an
/// answer that merely ended: an empty `stop` would read to an agent as a finished turn.
fn unusable_in(candidate: Option<&Obj>) -> Option<UpstreamErrorBody> {
    let reason = candidate?.get("finishReason")?.as_str()?;
    let why = match reason {
        "MALFORMED_FUNCTION_CALL" => "the function call the model generated is invalid",
        "UNEXPECTED_TOOL_CALL" => "the model called a tool that was not available to it",
        "TOO_MANY_TOOL_CALLS" => "the model called too many tools consecutively",
        "MALFORMED_RESPONSE" => "the response the model generated was malformed",
        _ => return None,
    };
    Some(UpstreamErrorBody {
        code: Some(reason.to_string()),
        message: format!("Gemini gave no usable answer (finishReason {reason}: {why})"),
        ..UpstreamErrorBody::default()
    })
}

/// Gemini's finish reason → neutral. `STOP` after function calls is `ToolCalls`.
fn finish_reason(reason: &str, has_calls: bool) -> FinishReason {
    match reason {
        "STOP" if has_calls => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn usage(meta: &Obj) -> Usage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64);
    Usage {
        input_tokens: n("promptTokenCount").unwrap_or(0),
        output_tokens: n("candidatesTokenCount")
            .unwrap_or(0)
            .saturating_add(n("thoughtsTokenCount").unwrap_or(0)),
        cache_read_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: None,
    }
}

/// The prompt was blocked (`promptFeedback.blockReason`): no candidates at all.
fn prompt_blocked(obj: &Obj) -> bool {
    obj.get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
}

/// One part of a candidate's content, if it means something to us.
fn decode_part(v: &Value) -> Option<Part> {
    let obj = v.as_object()?;
    if let Some(text) = obj.get("text").and_then(Value::as_str) {
        if obj.get("thought").and_then(Value::as_bool) == Some(true) {
            return Some(Part::Thinking {
                text: text.to_string(),
                signature: None,
            });
        }
        return Some(Part::Text {
            text: text.to_string(),
        });
    }
    if let Some(call) = obj.get("functionCall").and_then(Value::as_object) {
        let name = call.get("name").and_then(Value::as_str)?.to_string();
        let arguments = match call.get("args") {
            None | Some(Value::Null) => "{}".to_string(),
            Some(args) => args.to_string(),
        };
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(new_call_id, str::to_string);
        return Some(Part::ToolCall {
            id,
            name,
            arguments,
        });
    }
    None
}

fn parse_object(body: &[u8], what: &str) -> Result<Obj, WireError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| WireError::new(format!("Gemini {what} is not valid JSON: {e}")))?;
    match v {
        Value::Object(obj) => Ok(obj),
        other => Err(WireError::new(format!(
            "Gemini {what}: expected a JSON object, got {}",
            describe(&other)
        ))),
    }
}

fn error_in(obj: &Obj) -> Option<UpstreamErrorBody> {
    obj.get("error")?;
    crate::failover::classify::decode_gemini_error(&Value::Object(obj.clone()))
}

/// Reads Gemini's non-streaming `GenerateContentResponse`. An error body is a [`WireError`];
/// a blocked prompt is an empty answer that finished with `ContentFilter`.
///
/// ```
/// use backstop::chat::{FinishReason, Part};
/// use backstop::wire::gemini::decode_response;
/// let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi!"}]},
///   "finishReason":"STOP","index":0}],
///   "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6},
///   "modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;
/// let r = decode_response(body).unwrap();
/// assert_eq!(r.content, vec![Part::Text { text: "Hi!".into() }]);
/// assert_eq!(r.finish_reason, Some(FinishReason::Stop));
/// assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (4, 2));
/// assert_eq!(r.model, "gemini-2.5-flash");
/// ```
pub fn decode_response(body: &[u8]) -> Result<chat::Response, WireError> {
    let obj = parse_object(body, "response")?;
    if let Some(e) = error_in(&obj) {
        return Err(WireError::new(format!(
            "Gemini returned an error instead of an answer: {} ({})",
            e.message,
            e.kind.as_deref().unwrap_or("unknown status"),
        )));
    }
    let candidate = obj
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(Value::as_object);
    if let Some(e) = unusable_in(candidate) {
        return Err(WireError::new(e.message));
    }
    let content: Vec<Part> = candidate
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(decode_part)
        .filter(|p| !matches!(p, Part::Text { text } if text.is_empty()))
        .collect();
    if candidate.is_none() && !prompt_blocked(&obj) {
        return Err(WireError::at(
            "candidates",
            "Gemini response has no candidates and no promptFeedback.blockReason",
        ));
    }
    let has_calls = content.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let finish = match candidate
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
    {
        Some(r) => Some(finish_reason(r, has_calls)),
        None if candidate.is_none() => Some(FinishReason::ContentFilter),
        None => None,
    };
    let usage = obj
        .get("usageMetadata")
        .and_then(Value::as_object)
        .map(usage)
        .unwrap_or_default();
    Ok(chat::Response {
        id: obj
            .get("responseId")
            .and_then(Value::as_str)
            .map_or_else(new_call_id, str::to_string),
        model: obj
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        content,
        finish_reason: finish,
        stop_sequence: None,
        usage,
        created: unix_now(),
    })
}

/// Reads a Gemini error body (`{"error":{"code","message","status","details"}}`, or
/// that object wrapped in an array); `None` when the bytes are not one.
///
/// ```
/// use backstop::wire::gemini::decode_error;
/// let e = decode_error(br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#).unwrap();
/// assert_eq!(e.kind.as_deref(), Some("RESOURCE_EXHAUSTED"));
/// assert_eq!(e.code.as_deref(), Some("429"));
/// ```
pub fn decode_error(body: &[u8]) -> Option<UpstreamErrorBody> {
    let v: Value = serde_json::from_slice(body).ok()?;
    crate::failover::classify::decode_gemini_error(&v)
}

// ---------------------------------------------------------------------------
// Streaming.
// ---------------------------------------------------------------------------

/// Turns Gemini's `streamGenerateContent?alt=sse` events into neutral [`StreamEvent`]s.
///
/// Each `data:` event holds one whole `GenerateContentResponse`. The first one
/// opens the answer (`Start`); text parts become `TextDelta`s (`ThinkingDelta`s
/// for thoughts); a `functionCall` arrives whole, so it becomes a `ToolCallStart`
/// and one `ToolCallDelta` with all its arguments. Gemini sends no terminator
/// event: the chunk that carries `finishReason` (with the final `usageMetadata`)
/// ends the answer, and `Usage`, `Finish` and `Done` follow it.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    finished: bool,
    next_tool: u32,
    /// The latest usage seen (Gemini repeats it, growing, on every chunk).
    usage: Option<Usage>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. Malformed JSON is an error; events after the finish are ignored.
    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        let text = ev.data_text();
        let data = text.trim();
        if data.is_empty() || self.finished {
            return Ok(Vec::new());
        }
        let obj = parse_object(data.as_bytes(), "stream chunk")?;
        let mut out = Vec::new();
        if let Some(error) = error_in(&obj) {
            out.push(StreamEvent::Error { error });
            return Ok(out);
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: obj
                    .get("responseId")
                    .and_then(Value::as_str)
                    .map_or_else(new_call_id, str::to_string),
                model: obj
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                input_tokens: None,
            });
        }
        if let Some(meta) = obj.get("usageMetadata").and_then(Value::as_object) {
            self.usage = Some(usage(meta));
        }
        let candidate = obj
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .and_then(Value::as_object);
        // No usable answer: the attempt failed (whatever text came with it is dropped).
        if let Some(error) = unusable_in(candidate) {
            self.finished = true;
            out.push(StreamEvent::Error { error });
            return Ok(out);
        }
        let parts = candidate
            .and_then(|c| c.get("content"))
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten().filter_map(decode_part) {
            match part {
                Part::Text { text } if !text.is_empty() => {
                    out.push(StreamEvent::TextDelta { text });
                }
                Part::Thinking { text, .. } if !text.is_empty() => {
                    out.push(StreamEvent::ThinkingDelta { text });
                }
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let index = self.next_tool;
                    self.next_tool += 1;
                    out.push(StreamEvent::ToolCallStart { index, id, name });
                    out.push(StreamEvent::ToolCallDelta { index, arguments });
                }
                _ => {}
            }
        }
        let reason = match candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            Some(r) => Some(finish_reason(r, self.next_tool > 0)),
            None if candidate.is_none() && prompt_blocked(&obj) => {
                Some(FinishReason::ContentFilter)
            }
            None => None,
        };
        if let Some(reason) = reason {
            self.finished = true;
            if let Some(usage) = self.usage {
                out.push(StreamEvent::Usage { usage });
            }
            out.push(StreamEvent::Finish {
                reason,
                stop_sequence: None,
            });
            out.push(StreamEvent::Done);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
