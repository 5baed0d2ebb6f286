//! Anthropic Messages: `message` bodies, named-event streams (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`) and `{"type":"error",…}` bodies.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::ErrKind;
use crate::ids::random_id;
use crate::plan::{Content, Ctx, Frame, FrameKind, Wire, sse_event};

pub(crate) struct Anthropic;

/// The stop reason in Anthropic's words (OpenAI's are translated).
fn stop_reason(content: &Content) -> String {
    match content.finish_reason.as_deref() {
        Some("stop") => "end_turn".into(),
        Some("length") => "max_tokens".into(),
        Some("tool_calls" | "function_call") => "tool_use".into(),
        Some("content_filter") => "refusal".into(),
        Some(other) => other.into(),
        None if content.tools.is_empty() => "end_turn".into(),
        None => "tool_use".into(),
    }
}

fn tool_id(id: &Option<String>) -> String {
    id.clone().unwrap_or_else(|| random_id("toolu_01", 22))
}

fn message_id() -> String {
    random_id("msg_01", 22)
}

fn request_id() -> String {
    random_id("req_011C", 20)
}

/// Whether the answer has a text block (it always has one unless it is tool calls only).
fn has_text_block(content: &Content) -> bool {
    !content.text.is_empty() || content.tools.is_empty()
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
        "service_tier": "standard",
    })
}

/// The text delta of block 0, written without building a JSON tree (hot path).
fn text_delta(text: &str) -> Vec<u8> {
    const PREFIX: &[u8] = br#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#;
    let mut out = Vec::with_capacity(PREFIX.len() + text.len() + 8);
    out.extend_from_slice(PREFIX);
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, text);
    out.extend_from_slice(b"}}\n\n");
    out
}

impl Wire for Anthropic {
    fn success_headers(&self, stream: bool) -> Vec<(String, String)> {
        let content_type = if stream {
            "text/event-stream; charset=utf-8"
        } else {
            "application/json"
        };
        vec![
            ("content-type".into(), content_type.into()),
            ("request-id".into(), request_id()),
        ]
    }

    fn error_headers(&self) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), "application/json".into()),
            ("request-id".into(), request_id()),
        ]
    }

    fn success_body(&self, content: &Content) -> Bytes {
        let mut blocks = Vec::new();
        if has_text_block(content) {
            blocks.push(json!({"type": "text", "text": content.text}));
        }
        for tool in &content.tools {
            let input = serde_json::from_str::<Value>(&tool.arguments)
                .unwrap_or_else(|_| Value::String(tool.arguments.clone()));
            blocks.push(json!({
                "type": "tool_use",
                "id": tool_id(&tool.id),
                "name": tool.name,
                "input": input,
            }));
        }
        let body = json!({
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": content.model,
            "content": blocks,
            "stop_reason": stop_reason(content),
            "stop_sequence": null,
            "usage": usage(content.usage.input_tokens, content.usage.output_tokens),
        });
        Bytes::from(body.to_string())
    }

    fn stream_frames(&self, content: &Content, _ctx: &Ctx) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(content.text_pieces.len() + 8);
        let start = json!({"type": "message_start", "message": {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": content.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(content.usage.input_tokens, 1),
        }});
        frames.push(Frame::new(
            FrameKind::Preamble,
            sse_event("message_start", &start),
        ));
        let ping = || sse_event("ping", &json!({"type": "ping"}));
        let mut index = 0;
        if has_text_block(content) {
            let start = json!({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}});
            frames.push(Frame::new(
                FrameKind::Preamble,
                sse_event("content_block_start", &start),
            ));
            // The API sends its first ping right after the first block starts.
            frames.push(Frame::new(FrameKind::Preamble, ping()));
            for piece in &content.text_pieces {
                frames.push(Frame::new(FrameKind::Content, text_delta(piece)));
            }
            frames.push(Frame::new(
                FrameKind::Inner,
                sse_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": 0}),
                ),
            ));
            index = 1;
        } else {
            frames.push(Frame::new(FrameKind::Preamble, ping()));
        }
        for tool in &content.tools {
            let start = json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": tool_id(&tool.id),
                                  "name": tool.name, "input": {}}});
            frames.push(Frame::new(
                FrameKind::Content,
                sse_event("content_block_start", &start),
            ));
            let pieces = std::iter::once("").chain(tool.pieces.iter().map(String::as_str));
            for (k, piece) in pieces.enumerate() {
                let delta = json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": piece}});
                let kind = if k == 0 {
                    FrameKind::Inner
                } else {
                    FrameKind::Content
                };
                frames.push(Frame::new(kind, sse_event("content_block_delta", &delta)));
            }
            frames.push(Frame::new(
                FrameKind::Inner,
                sse_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                ),
            ));
            index += 1;
        }
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(content), "stop_sequence": null},
            "usage": {"output_tokens": content.usage.output_tokens}});
        frames.push(Frame::new(
            FrameKind::Closing,
            sse_event("message_delta", &delta),
        ));
        frames.push(Frame::new(
            FrameKind::Terminator,
            sse_event("message_stop", &json!({"type": "message_stop"})),
        ));
        frames
    }

    fn error_body(&self, kind: &ErrKind, status: u16, model: &str) -> Value {
        let (error_type, message): (&str, String) = match kind {
            ErrKind::RateLimit => (
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests \
                 per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. \
                 You can see the response headers for current usage. Please reduce the prompt \
                 length or the maximum tokens requested, or try again later."
                    .into(),
            ),
            ErrKind::Quota => (
                if status == 402 {
                    "billing_error"
                } else {
                    "invalid_request_error"
                },
                "Your credit balance is too low to access the Anthropic API. Please go to Plans \
                 & Billing to upgrade or purchase credits."
                    .into(),
            ),
            ErrKind::Auth => ("authentication_error", "invalid x-api-key".into()),
            ErrKind::Permission => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.".into(),
            ),
            ErrKind::ContextLength => (
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum".into(),
            ),
            ErrKind::InvalidRequest => (
                "invalid_request_error",
                "messages: scripted by backstop-fake".into(),
            ),
            ErrKind::NotFound => ("not_found_error", format!("model: {model}")),
            ErrKind::RequestTooLarge => (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.".into(),
            ),
            ErrKind::Server | ErrKind::Unavailable => ("api_error", "Internal server error".into()),
            ErrKind::Overloaded => ("overloaded_error", "Overloaded".into()),
            ErrKind::Other(name) => (name.as_str(), format!("Scripted error: {name}.")),
        };
        json!({
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id(),
        })
    }

    fn stream_error_payload(&self, error: &Value, model: &str) -> Value {
        let without_request_id = |mut body: Value| {
            if let Some(map) = body.as_object_mut() {
                map.remove("request_id");
            }
            body
        };
        match error {
            Value::Null => without_request_id(self.error_body(&ErrKind::Overloaded, 529, model)),
            Value::String(kind) => {
                without_request_id(self.error_body(&ErrKind::resolve(Some(kind), 500), 500, model))
            }
            Value::Object(map) if map.contains_key("error") => error.clone(),
            other => json!({"type": "error", "error": other}),
        }
    }

    fn stream_error_frame(&self, payload: &Value) -> Bytes {
        Bytes::from(sse_event("error", payload))
    }

    fn malformed_frame(&self) -> Bytes {
        Bytes::from_static(b"event: content_block_delta\ndata: {not json\n\n")
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
            model: "claude-x".into(),
            text: text.into(),
            text_pieces: crate::text::split_words(text),
            tools,
            finish_reason: None,
            usage: Usage {
                input_tokens: 12,
                output_tokens: 3,
            },
        }
    }

    fn tool() -> ToolContent {
        ToolContent {
            id: Some("toolu_fixed".into()),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
            pieces: vec![r#"{"city":"#.into(), r#""Paris"}"#.into()],
        }
    }

    /// (event name, data) of each frame.
    fn events(frames: &[Frame]) -> Vec<(String, Value)> {
        frames
            .iter()
            .map(|f| {
                let s = std::str::from_utf8(&f.bytes).unwrap();
                let (event, data) = s.trim_end().split_once('\n').unwrap();
                let name = event.strip_prefix("event: ").unwrap().to_string();
                let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn message_body_shape() {
        let body: Value =
            serde_json::from_slice(&Anthropic.success_body(&content("Hi", vec![tool()]))).unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("msg_01"));
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["content"][0], json!({"type": "text", "text": "Hi"}));
        assert_eq!(body["content"][1]["type"], "tool_use");
        assert_eq!(body["content"][1]["input"], json!({"city": "Paris"}));
        assert_eq!(body["stop_reason"], "tool_use");
        assert!(body["stop_sequence"].is_null());
        assert_eq!(body["usage"]["input_tokens"], 12);
        assert_eq!(body["usage"]["output_tokens"], 3);
    }

    #[test]
    fn stream_event_order() {
        let frames = Anthropic.stream_frames(
            &content("a b", vec![tool()]),
            &Ctx::streaming(Format::Anthropic, false, true),
        );
        let evs = events(&frames);
        let names: Vec<_> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &evs {
            assert_eq!(
                data["type"],
                name.as_str(),
                "data.type matches the event name"
            );
        }
        assert_eq!(evs[0].1["message"]["content"], json!([]));
        assert_eq!(
            evs[3].1["delta"],
            json!({"type": "text_delta", "text": "a "})
        );
        assert_eq!(evs[6].1["index"], 1);
        assert_eq!(evs[6].1["content_block"]["id"], "toolu_fixed");
        assert_eq!(evs[7].1["delta"]["partial_json"], "");
        let json: String = evs[7..10]
            .iter()
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(json, r#"{"city":"Paris"}"#);
        assert_eq!(evs[11].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(evs[11].1["usage"]["output_tokens"], 3);
    }

    #[test]
    fn text_delta_matches_the_json_tree() {
        for text in ["plain", "a \"q\" \\ \n 🌍", ""] {
            let slow = sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": text}}),
            );
            assert_eq!(
                String::from_utf8(text_delta(text)).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }

    #[test]
    fn tool_only_stream_has_no_text_block() {
        let frames = Anthropic.stream_frames(
            &content("", vec![tool()]),
            &Ctx::streaming(Format::Anthropic, false, true),
        );
        let evs = events(&frames);
        assert_eq!(evs[1].0, "ping");
        assert_eq!(evs[2].1["content_block"]["type"], "tool_use");
        assert_eq!(evs[2].1["index"], 0);
    }

    #[test]
    fn error_bodies() {
        let b = Anthropic.error_body(&ErrKind::Overloaded, 529, "m");
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "overloaded_error");
        assert!(b["request_id"].as_str().unwrap().starts_with("req_"));
        assert_eq!(
            Anthropic.error_body(&ErrKind::Quota, 402, "m")["error"]["type"],
            "billing_error"
        );
        assert_eq!(
            Anthropic.error_body(&ErrKind::Auth, 401, "m")["error"]["type"],
            "authentication_error"
        );
    }

    #[test]
    fn stream_error_payloads() {
        let p = Anthropic.stream_error_payload(&Value::Null, "m");
        assert_eq!(
            p,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let p = Anthropic.stream_error_payload(&json!("rate_limit"), "m");
        assert_eq!(p["error"]["type"], "rate_limit_error");
        let p = Anthropic.stream_error_payload(&json!({"type": "api_error", "message": "x"}), "m");
        assert_eq!(p["type"], "error");
        assert_eq!(p["error"]["type"], "api_error");
    }
}
