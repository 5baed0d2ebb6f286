//! Google Gemini `generateContent`: `GenerateContentResponse` bodies, and
//! `streamGenerateContent?alt=sse` streams — one whole `GenerateContentResponse`
//! per `data:` event (CRLF line ends, as Google sends them), usage on every chunk,
//! the finish reason and final counts on the last, and no terminator event — and
//! `{"error":{"code","message","status"}}` bodies.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::ErrKind;
use crate::ids::random_id;
use crate::plan::{Content, Ctx, Frame, FrameKind, Wire};

pub(crate) struct Gemini;

/// The finish reason in Gemini's words (the other formats' are translated).
/// Gemini reports `STOP` after function calls too.
fn finish_reason(content: &Content) -> String {
    match content.finish_reason.as_deref() {
        None
        | Some(
            "stop" | "end_turn" | "stop_sequence" | "tool_calls" | "tool_use" | "function_call",
        ) => "STOP".into(),
        Some("length" | "max_tokens") => "MAX_TOKENS".into(),
        Some("content_filter" | "refusal") => "SAFETY".into(),
        Some(other) => other.into(),
    }
}

/// The canonical Google status for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s < 500 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

fn response_id() -> String {
    random_id("", 22)
}

fn usage_metadata(content: &Content, last: bool) -> Value {
    let u = content.usage;
    if last {
        json!({
            "promptTokenCount": u.input_tokens,
            "candidatesTokenCount": u.output_tokens,
            "totalTokenCount": u.input_tokens + u.output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.input_tokens}],
        })
    } else {
        json!({"promptTokenCount": u.input_tokens, "totalTokenCount": u.input_tokens})
    }
}

fn function_call(tool: &crate::plan::ToolContent) -> Value {
    let args = serde_json::from_str::<Value>(&tool.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({"functionCall": {"name": tool.name, "args": args}})
}

/// `data: <json>\r\n\r\n`
fn sse_crlf(json: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// One stream chunk: a `GenerateContentResponse` with one candidate.
fn chunk(content: &Content, id: &str, parts: Value, finish: Option<&str>) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = reason.into();
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage_metadata(content, finish.is_some()),
        "modelVersion": content.model,
        "responseId": id,
    })
}

impl Wire for Gemini {
    fn success_headers(&self, stream: bool) -> Vec<(String, String)> {
        let content_type = if stream {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        };
        vec![
            ("content-type".into(), content_type.into()),
            ("vary".into(), "Origin, X-Origin, Referer".into()),
            ("server".into(), "scaffolding on HTTPServer2".into()),
        ]
    }

    fn error_headers(&self) -> Vec<(String, String)> {
        vec![
            (
                "content-type".into(),
                "application/json; charset=UTF-8".into(),
            ),
            ("vary".into(), "Origin, X-Origin, Referer".into()),
        ]
    }

    fn success_body(&self, content: &Content) -> Bytes {
        let mut parts = Vec::new();
        if !content.text.is_empty() || content.tools.is_empty() {
            parts.push(json!({"text": content.text}));
        }
        parts.extend(content.tools.iter().map(function_call));
        let body = json!({
            "candidates": [{
                "content": {"parts": parts, "role": "model"},
                "finishReason": finish_reason(content),
                "index": 0,
            }],
            "usageMetadata": usage_metadata(content, true),
            "modelVersion": content.model,
            "responseId": response_id(),
        });
        Bytes::from(body.to_string())
    }

    fn stream_frames(&self, content: &Content, _ctx: &Ctx) -> Vec<Frame> {
        let id = response_id();
        let mut frames = Vec::with_capacity(content.text_pieces.len() + 2);
        for piece in &content.text_pieces {
            let c = chunk(content, &id, json!([{"text": piece}]), None);
            frames.push(Frame::new(FrameKind::Content, sse_crlf(&c)));
        }
        // Function calls arrive whole, together in one chunk.
        if !content.tools.is_empty() {
            let parts: Vec<Value> = content.tools.iter().map(function_call).collect();
            let c = chunk(content, &id, parts.into(), None);
            frames.push(Frame::new(FrameKind::Content, sse_crlf(&c)));
        }
        // The last chunk: the finish reason and the final counts, no new text.
        let reason = finish_reason(content);
        let c = chunk(content, &id, json!([{"text": ""}]), Some(&reason));
        frames.push(Frame::new(FrameKind::Closing, sse_crlf(&c)));
        frames
    }

    fn error_body(&self, kind: &ErrKind, status: u16, model: &str) -> Value {
        let message: String = match kind {
            ErrKind::RateLimit => "Resource has been exhausted (e.g. check quota).".into(),
            ErrKind::Quota => "Your prepayment credits are depleted. Please go to AI Studio at \
                 https://ai.studio/projects to manage your project and billing."
                .into(),
            ErrKind::Auth => "API key not valid. Please pass a valid API key.".into(),
            ErrKind::Permission => "The caller does not have permission".into(),
            ErrKind::ContextLength => "The input token count (1200293) exceeds the maximum \
                 number of tokens allowed (1048576)."
                .into(),
            ErrKind::InvalidRequest => "Request contains an invalid argument.".into(),
            ErrKind::NotFound => format!(
                "models/{model} is not found for API version v1beta, or is not supported for \
                 generateContent. Call ListModels to see the list of available models and their \
                 supported methods."
            ),
            ErrKind::RequestTooLarge => {
                "Request payload size exceeds the limit: 20971520 bytes.".into()
            }
            ErrKind::Server => "An internal error has occurred. Please retry or report in \
                 https://developers.generativeai.google/guide/troubleshooting"
                .into(),
            ErrKind::Overloaded | ErrKind::Unavailable => {
                "The model is overloaded. Please try again later.".into()
            }
            ErrKind::Other(name) => format!("Scripted error: {name}."),
        };
        let mut error = json!({"code": status, "message": message, "status": status_name(status)});
        if *kind == ErrKind::Auth {
            error["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }]);
        }
        json!({ "error": error })
    }

    fn stream_error_payload(&self, error: &Value, model: &str) -> Value {
        match error {
            Value::Null => self.error_body(&ErrKind::Unavailable, 503, model),
            Value::String(kind) => {
                let kind = ErrKind::resolve(Some(kind), 500);
                let status = match kind {
                    ErrKind::RateLimit => 429,
                    ErrKind::Overloaded | ErrKind::Unavailable => 503,
                    ErrKind::Auth | ErrKind::InvalidRequest | ErrKind::ContextLength => 400,
                    ErrKind::Permission => 403,
                    ErrKind::NotFound => 404,
                    _ => 500,
                };
                self.error_body(&kind, status, model)
            }
            Value::Object(map) if map.contains_key("error") => error.clone(),
            other => json!({ "error": other }),
        }
    }

    fn stream_error_frame(&self, payload: &Value) -> Bytes {
        Bytes::from(sse_crlf(payload))
    }

    fn malformed_frame(&self) -> Bytes {
        Bytes::from_static(b"data: {not json\r\n\r\n")
    }

    /// Google sends no `Retry-After` header: a `google.rpc.RetryInfo` detail carries
    /// the delay (a protobuf `Duration`, `"7s"`), and the message repeats it.
    fn retry_in_body(&self, body: &mut Value, after: &str) -> bool {
        let Some(secs) = after
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
        else {
            return false;
        };
        let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) else {
            return false;
        };
        let delay = format!("{secs}s");
        if let Some(Value::String(message)) = error.get_mut("message") {
            message.push_str(&format!("\nPlease retry in {delay}."));
        }
        let info =
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay});
        match error.get_mut("details").and_then(Value::as_array_mut) {
            Some(details) => details.push(info),
            None => {
                error.insert("details".into(), json!([info]));
            }
        }
        true
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
            model: "gemini-2.5-flash".into(),
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
            id: None,
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
            pieces: vec![r#"{"city":"#.into(), r#""Paris"}"#.into()],
        }
    }

    fn datas(frames: &[Frame]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| {
                let s = std::str::from_utf8(&f.bytes).unwrap();
                assert!(s.ends_with("\r\n\r\n"), "{s:?}");
                serde_json::from_str(s.trim_end().strip_prefix("data: ").unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn response_body_shape() {
        let body: Value =
            serde_json::from_slice(&Gemini.success_body(&content("Hi", vec![tool()]))).unwrap();
        let c = &body["candidates"][0];
        assert_eq!(c["content"]["role"], "model");
        assert_eq!(c["content"]["parts"][0], json!({"text": "Hi"}));
        assert_eq!(
            c["content"]["parts"][1],
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}})
        );
        assert_eq!(c["finishReason"], "STOP");
        assert_eq!(body["usageMetadata"]["promptTokenCount"], 12);
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 3);
        assert_eq!(body["usageMetadata"]["totalTokenCount"], 15);
        assert_eq!(body["modelVersion"], "gemini-2.5-flash");
        assert!(body["responseId"].as_str().unwrap().len() == 22);
    }

    #[test]
    fn stream_chunks() {
        let frames = Gemini.stream_frames(
            &content("a b", vec![tool()]),
            &Ctx::streaming(Format::Gemini, false, true),
        );
        let kinds: Vec<FrameKind> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FrameKind::Content,
                FrameKind::Content,
                FrameKind::Content,
                FrameKind::Closing
            ]
        );
        let d = datas(&frames);
        assert_eq!(d[0]["candidates"][0]["content"]["parts"][0]["text"], "a ");
        assert!(d[0]["candidates"][0].get("finishReason").is_none());
        assert_eq!(
            d[2]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
            "get_weather"
        );
        assert_eq!(d[3]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(d[3]["usageMetadata"]["candidatesTokenCount"], 3);
        assert!(d[1]["usageMetadata"].get("candidatesTokenCount").is_none());
        let ids: Vec<&Value> = d.iter().map(|c| &c["responseId"]).collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "one response id");
    }

    #[test]
    fn finish_reasons_translate() {
        let mut c = content("x", vec![]);
        for (given, expected) in [
            ("length", "MAX_TOKENS"),
            ("max_tokens", "MAX_TOKENS"),
            ("tool_use", "STOP"),
            ("refusal", "SAFETY"),
            ("RECITATION", "RECITATION"),
        ] {
            c.finish_reason = Some(given.into());
            assert_eq!(finish_reason(&c), expected, "{given}");
        }
    }

    #[test]
    fn error_bodies() {
        let b = Gemini.error_body(&ErrKind::RateLimit, 429, "m");
        assert_eq!(b["error"]["code"], 429);
        assert_eq!(b["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            Gemini.error_body(&ErrKind::Auth, 400, "m")["error"]["details"][0]["reason"],
            "API_KEY_INVALID"
        );
        assert_eq!(
            Gemini.error_body(&ErrKind::Permission, 403, "m")["error"]["status"],
            "PERMISSION_DENIED"
        );
        assert_eq!(
            Gemini.error_body(&ErrKind::Server, 500, "m")["error"]["status"],
            "INTERNAL"
        );
        assert_eq!(
            Gemini.error_body(&ErrKind::Unavailable, 503, "m")["error"]["status"],
            "UNAVAILABLE"
        );
        assert_eq!(
            Gemini.error_body(&ErrKind::InvalidRequest, 400, "m")["error"]["status"],
            "INVALID_ARGUMENT"
        );
        let p = Gemini.stream_error_payload(&json!("rate_limit"), "m");
        assert_eq!(p["error"]["status"], "RESOURCE_EXHAUSTED");
        let p = Gemini.stream_error_payload(&Value::Null, "m");
        assert_eq!(p["error"]["code"], 503);
    }
}
