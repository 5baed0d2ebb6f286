//! OpenAI Chat Completions: `chat.completion` bodies, `chat.completion.chunk`
//! streams ending in `data: [DONE]`, and `{"error":{…}}` bodies.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::ErrKind;
use crate::ids::{random_hex, random_id, unix_now};
use crate::plan::{Content, Ctx, Frame, FrameKind, Wire, sse_data};

pub(crate) struct OpenAi;

/// The finish reason in OpenAI's words (Anthropic's are translated).
fn finish_reason(content: &Content) -> String {
    match content.finish_reason.as_deref() {
        Some("end_turn" | "stop_sequence") => "stop".into(),
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(other) => other.into(),
        None if content.tools.is_empty() => "stop".into(),
        None => "tool_calls".into(),
    }
}

fn usage(content: &Content) -> Value {
    let u = content.usage;
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn tool_id(id: &Option<String>) -> String {
    id.clone().unwrap_or_else(|| random_id("call_", 24))
}

fn request_id_header() -> (String, String) {
    ("x-request-id".into(), random_hex("req_", 32))
}

/// A stream chunk with one choice holding `delta`.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    /// Delta chunks end with `"obfuscation"`: random characters that vary their
    /// size, as OpenAI sends unless `stream_options.include_obfuscation` is `false`.
    obfuscate: bool,
    /// A text-delta frame is `prefix + JSON string + middle + obfuscation + suffix`:
    /// built once per stream so each text chunk costs one string escape, not a JSON
    /// tree.
    text_template: Option<TextTemplate>,
}

struct TextTemplate {
    prefix: Vec<u8>,
    /// From the text's closing quote to the obfuscation's opening quote (all of
    /// the rest when there is no obfuscation).
    middle: Vec<u8>,
    suffix: Vec<u8>,
}

/// Stand in for the text and the obfuscation in the text-delta template.
const SENTINEL: &str = "\u{1}";
const PAD_SENTINEL: &str = "\u{2}";

/// Random letters and digits, 1 to 16 of them (OpenAI's padding looks like this).
fn obfuscation() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(fastrand::usize(1..=16))
        .collect()
}

/// The only place `needle` occurs in `hay`.
fn only(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut found = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle);
    match (found.next(), found.next()) {
        (Some((at, _)), None) => Some(at),
        _ => None,
    }
}

impl Chunks {
    fn new(model: &str, include_usage: bool, obfuscate: bool) -> Chunks {
        let mut chunks = Chunks {
            id: random_id("chatcmpl-", 29),
            created: unix_now(),
            model: model.to_string(),
            fingerprint: random_hex("fp_", 10),
            include_usage,
            obfuscate,
            text_template: None,
        };
        let sample = chunks.delta_padded(json!({"content": SENTINEL}), None, PAD_SENTINEL);
        let (text, pad) = (br#""\u0001""#, br#""\u0002""#);
        let Some(at) = only(&sample, text) else {
            return chunks;
        };
        let prefix = sample[..at].to_vec();
        let rest = &sample[at + text.len()..];
        let (middle, suffix) = if obfuscate {
            let Some(p) = only(rest, pad) else {
                return chunks;
            };
            (rest[..p].to_vec(), rest[p + pad.len()..].to_vec())
        } else {
            (rest.to_vec(), Vec::new())
        };
        chunks.text_template = Some(TextTemplate {
            prefix,
            middle,
            suffix,
        });
        chunks
    }

    fn text_delta(&self, text: &str) -> Vec<u8> {
        match &self.text_template {
            Some(t) => {
                let pad = if self.obfuscate {
                    obfuscation()
                } else {
                    String::new()
                };
                let mut out = Vec::with_capacity(
                    t.prefix.len() + text.len() + t.middle.len() + pad.len() + t.suffix.len() + 8,
                );
                out.extend_from_slice(&t.prefix);
                // Serializing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut out, text);
                out.extend_from_slice(&t.middle);
                if self.obfuscate {
                    // Letters and digits: nothing to escape.
                    out.push(b'"');
                    out.extend_from_slice(pad.as_bytes());
                    out.push(b'"');
                }
                out.extend_from_slice(&t.suffix);
                out
            }
            None => self.delta(json!({"content": text}), None),
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Vec<u8> {
        self.delta_padded(delta, finish_reason, &obfuscation())
    }

    fn delta_padded(&self, delta: Value, finish_reason: Option<&str>, pad: &str) -> Vec<u8> {
        let mut chunk = self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        );
        if self.obfuscate {
            chunk["obfuscation"] = json!(pad);
        }
        sse_data(&chunk)
    }
}

impl Wire for OpenAi {
    fn success_headers(&self, stream: bool) -> Vec<(String, String)> {
        let content_type = if stream {
            "text/event-stream; charset=utf-8"
        } else {
            "application/json"
        };
        vec![
            ("content-type".into(), content_type.into()),
            request_id_header(),
        ]
    }

    fn error_headers(&self) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), "application/json".into()),
            request_id_header(),
        ]
    }

    fn success_body(&self, content: &Content) -> Bytes {
        let mut message = json!({
            "role": "assistant",
            "content": if content.text.is_empty() && !content.tools.is_empty() {
                Value::Null
            } else {
                Value::String(content.text.clone())
            },
            "refusal": null,
            "annotations": [],
        });
        if !content.tools.is_empty() {
            message["tool_calls"] = content
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "id": tool_id(&t.id),
                        "type": "function",
                        "function": {"name": t.name, "arguments": t.arguments},
                    })
                })
                .collect();
        }
        let body = json!({
            "id": random_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": unix_now(),
            "model": content.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(content),
            }],
            "usage": usage(content),
            "service_tier": "default",
            "system_fingerprint": random_hex("fp_", 10),
        });
        Bytes::from(body.to_string())
    }

    fn stream_frames(&self, content: &Content, ctx: &Ctx) -> Vec<Frame> {
        let include_usage = ctx.include_usage;
        let c = Chunks::new(&content.model, include_usage, ctx.include_obfuscation);
        let mut frames = Vec::with_capacity(content.text_pieces.len() + 6);
        frames.push(Frame::new(
            FrameKind::Preamble,
            c.delta(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ),
        ));
        for piece in &content.text_pieces {
            frames.push(Frame::new(FrameKind::Content, c.text_delta(piece)));
        }
        for (index, tool) in content.tools.iter().enumerate() {
            let start = json!({"tool_calls": [{
                "index": index,
                "id": tool_id(&tool.id),
                "type": "function",
                "function": {"name": tool.name, "arguments": ""},
            }]});
            frames.push(Frame::new(FrameKind::Content, c.delta(start, None)));
            for piece in &tool.pieces {
                let delta =
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
                frames.push(Frame::new(FrameKind::Content, c.delta(delta, None)));
            }
        }
        let reason = finish_reason(content);
        frames.push(Frame::new(
            FrameKind::Closing,
            c.delta(json!({}), Some(&reason)),
        ));
        if include_usage {
            frames.push(Frame::new(
                FrameKind::Closing,
                sse_data(&c.chunk(json!([]), Some(usage(content)))),
            ));
        }
        frames.push(Frame::new(
            FrameKind::Terminator,
            b"data: [DONE]\n\n".to_vec(),
        ));
        frames
    }

    fn error_body(&self, kind: &ErrKind, _status: u16, model: &str) -> Value {
        let (message, kind_type, param, code): (String, &str, Option<&str>, Option<&str>) =
            match kind {
                ErrKind::RateLimit => (
                    format!(
                        "Rate limit reached for {model} in organization org-fake on requests per \
                         min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit \
                         https://platform.openai.com/account/rate-limits to learn more."
                    ),
                    "requests",
                    None,
                    Some("rate_limit_exceeded"),
                ),
                ErrKind::Quota => (
                    "You exceeded your current quota, please check your plan and billing \
                     details. For more information on this error, read the docs: \
                     https://platform.openai.com/docs/guides/error-codes/api-errors."
                        .into(),
                    "insufficient_quota",
                    None,
                    Some("insufficient_quota"),
                ),
                ErrKind::Auth => (
                    "Incorrect API key provided: sk-fake*****************1234. You can find your \
                     API key at https://platform.openai.com/account/api-keys."
                        .into(),
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                ),
                ErrKind::Permission => (
                    "You have insufficient permissions for this operation. Missing scopes: \
                     model.request. Check that you have the correct role in your organization \
                     (Reader, Writer, Owner) and project (Member, Owner), and if you're using a \
                     restricted API key, that it has the necessary scopes."
                        .into(),
                    "invalid_request_error",
                    None,
                    None,
                ),
                ErrKind::ContextLength => (
                    "This model's maximum context length is 128000 tokens. However, your \
                     messages resulted in 131072 tokens. Please reduce the length of the \
                     messages."
                        .into(),
                    "invalid_request_error",
                    Some("messages"),
                    Some("context_length_exceeded"),
                ),
                ErrKind::InvalidRequest => (
                    "Invalid value for 'messages': scripted by backstop-fake.".into(),
                    "invalid_request_error",
                    None,
                    None,
                ),
                ErrKind::NotFound => (
                    format!("The model `{model}` does not exist or you do not have access to it."),
                    "invalid_request_error",
                    None,
                    Some("model_not_found"),
                ),
                ErrKind::RequestTooLarge => (
                    "Request too large.".into(),
                    "invalid_request_error",
                    None,
                    None,
                ),
                ErrKind::Server => (
                    "The server had an error while processing your request. Sorry about that!"
                        .into(),
                    "server_error",
                    None,
                    None,
                ),
                ErrKind::Overloaded | ErrKind::Unavailable => (
                    "The engine is currently overloaded, please try again later.".into(),
                    "server_error",
                    None,
                    None,
                ),
                ErrKind::Other(name) => (
                    format!("Scripted error: {name}."),
                    name.as_str(),
                    None,
                    Some(name.as_str()),
                ),
            };
        json!({"error": {"message": message, "type": kind_type, "param": param, "code": code}})
    }

    fn stream_error_payload(&self, error: &Value, model: &str) -> Value {
        match error {
            Value::Null => self.error_body(&ErrKind::Server, 500, model),
            Value::String(kind) => self.error_body(&ErrKind::resolve(Some(kind), 500), 500, model),
            Value::Object(map) if map.contains_key("error") => error.clone(),
            other => json!({"error": other}),
        }
    }

    fn stream_error_frame(&self, payload: &Value) -> Bytes {
        Bytes::from(sse_data(payload))
    }

    fn malformed_frame(&self) -> Bytes {
        Bytes::from_static(b"data: {not json\n\n")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{Format, ToolContent};
    use crate::step::Usage;

    fn content(text: &str, tools: Vec<ToolContent>) -> Content {
        Content {
            model: "gpt-4o".into(),
            text: text.into(),
            text_pieces: crate::text::split_words(text),
            tools,
            finish_reason: None,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
        }
    }

    fn frames_json(frames: &[Frame]) -> Vec<Value> {
        frames
            .iter()
            .filter(|f| f.kind != FrameKind::Terminator)
            .map(|f| {
                let s = std::str::from_utf8(&f.bytes).unwrap();
                let data = s.strip_prefix("data: ").unwrap().trim_end();
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }

    #[test]
    fn completion_body_shape() {
        let body: Value =
            serde_json::from_slice(&OpenAi.success_body(&content("Hi there", vec![]))).unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["object"], "chat.completion");
        assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(body["model"], "gpt-4o");
        assert_eq!(body["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["total_tokens"], 15);
        assert!(body["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn tool_call_body_shape() {
        let tool = ToolContent {
            id: None,
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
            pieces: vec![],
        };
        let body: Value =
            serde_json::from_slice(&OpenAi.success_body(&content("", vec![tool]))).unwrap();
        let msg = &body["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null);
        assert!(
            msg["tool_calls"][0]["id"]
                .as_str()
                .unwrap()
                .starts_with("call_")
        );
        assert_eq!(msg["tool_calls"][0]["type"], "function");
        assert_eq!(
            msg["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn stream_without_usage() {
        let frames = OpenAi.stream_frames(
            &content("a b", vec![]),
            &Ctx::streaming(Format::OpenAi, false, false),
        );
        assert_eq!(&frames.last().unwrap().bytes[..], b"data: [DONE]\n\n");
        let chunks = frames_json(&frames);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "a ");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "b");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        let ids: Vec<_> = chunks.iter().map(|c| c["id"].clone()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "one id per stream");
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn text_template_matches_the_json_tree() {
        for (include_usage, obfuscate) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            let c = Chunks::new("model \"quoted\" é", include_usage, obfuscate);
            assert!(c.text_template.is_some());
            for text in ["plain", "a \"q\" \\ \n\t 🌍", ""] {
                let fast = c.text_delta(text);
                let chunk: Value =
                    serde_json::from_slice(fast.strip_prefix(b"data: ").unwrap()).unwrap();
                // The padding is random: the tree is built with the one that was drawn.
                let pad = chunk.get("obfuscation").cloned();
                assert_eq!(pad.is_some(), obfuscate);
                let pad = pad.as_ref().and_then(Value::as_str).unwrap_or("");
                let slow = c.delta_padded(json!({"content": text}), None, pad);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap()
                );
            }
        }
    }

    #[test]
    fn delta_chunks_carry_random_obfuscation_unless_switched_off() {
        let frames = OpenAi.stream_frames(
            &content("a b c", vec![]),
            &Ctx::streaming(Format::OpenAi, true, true),
        );
        let chunks = frames_json(&frames);
        let (deltas, usage) = chunks.split_at(chunks.len() - 1);
        let pads: Vec<&str> = deltas
            .iter()
            .map(|c| c["obfuscation"].as_str().unwrap())
            .collect();
        assert!(
            pads.iter().all(
                |p| (1..=16).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
            )
        );
        assert!(
            usage[0].get("obfuscation").is_none(),
            "the usage chunk has no delta"
        );
        let frames = OpenAi.stream_frames(
            &content("a b c", vec![]),
            &Ctx::streaming(Format::OpenAi, true, false),
        );
        assert!(
            frames_json(&frames)
                .iter()
                .all(|c| c.get("obfuscation").is_none())
        );
    }

    #[test]
    fn stream_with_usage_chunk() {
        let frames = OpenAi.stream_frames(
            &content("a", vec![]),
            &Ctx::streaming(Format::OpenAi, true, true),
        );
        let chunks = frames_json(&frames);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 10);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );
    }

    #[test]
    fn finish_reasons_translate() {
        let mut c = content("x", vec![]);
        c.finish_reason = Some("max_tokens".into());
        assert_eq!(finish_reason(&c), "length");
        c.finish_reason = Some("weird".into());
        assert_eq!(finish_reason(&c), "weird");
    }

    #[test]
    fn error_bodies() {
        let b = OpenAi.error_body(&ErrKind::Quota, 429, "gpt-4o");
        assert_eq!(b["error"]["code"], "insufficient_quota");
        assert_eq!(b["error"]["type"], "insufficient_quota");
        assert!(b["error"]["param"].is_null());
        let b = OpenAi.error_body(&ErrKind::RateLimit, 429, "gpt-4o");
        assert_eq!(b["error"]["code"], "rate_limit_exceeded");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-4o"));
        let b = OpenAi.error_body(&ErrKind::Server, 500, "m");
        assert_eq!(b["error"]["type"], "server_error");
        assert!(b["error"]["code"].is_null());
    }

    #[test]
    fn stream_error_payloads() {
        assert_eq!(
            OpenAi.stream_error_payload(&Value::Null, "m")["error"]["type"],
            "server_error"
        );
        let raw = json!({"error": {"message": "x"}});
        assert_eq!(OpenAi.stream_error_payload(&raw, "m"), raw);
        assert_eq!(
            OpenAi.stream_error_payload(&json!({"message": "y"}), "m"),
            json!({"error": {"message": "y"}})
        );
    }
}
