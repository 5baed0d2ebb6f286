//! From a step and a request to a [`Plan`]: the exact bytes to send and when.
//!
//! Planning is pure (no I/O, no clock but the `created` timestamp), so every wire
//! shape can be tested without a socket; the server only executes plans. A wire
//! format is a [`Wire`] implementation (`openai`, `anthropic`, `gemini`), and
//! every delay goes through [`Plan`] so a latency multiplier can scale them in
//! one place.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::errors::ErrKind;
use crate::step::{ErrorStep, Reply, Step, Usage};
use crate::text::{last_user_text, split_even, split_words};
use crate::{anthropic, gemini, openai};

/// The wire format of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Chat Completions (`…/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// Google Gemini (`…/models/{model}:generateContent`, `:streamGenerateContent`).
    Gemini,
}

impl Format {
    /// The format a request path speaks, if any: any path ending in
    /// `/chat/completions` (so base URLs with a prefix such as `/api/v1` work), and
    /// any path ending in `/v1/messages`, and any `…/models/{model}:generateContent`
    /// or `:streamGenerateContent`.
    pub fn for_path(path: &str) -> Option<Format> {
        if path.ends_with("/chat/completions") {
            Some(Format::OpenAi)
        } else if path.ends_with("/v1/messages") {
            Some(Format::Anthropic)
        } else if gemini_target(path).is_some() {
            Some(Format::Gemini)
        } else {
            None
        }
    }

    pub(crate) fn wire(self) -> &'static dyn Wire {
        match self {
            Format::OpenAi => &openai::OpenAi,
            Format::Anthropic => &anthropic::Anthropic,
            Format::Gemini => &gemini::Gemini,
        }
    }
}

/// `(model, streaming)` of a Gemini path: `…/models/{model}:generateContent` or
/// `…/models/{model}:streamGenerateContent`.
pub(crate) fn gemini_target(path: &str) -> Option<(&str, bool)> {
    let (_, rest) = path.rsplit_once("/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    (!model.is_empty() && !model.contains('/')).then_some((model, stream))
}

/// What one wire format knows how to write.
pub(crate) trait Wire: Sync {
    /// Headers of a successful response (content type, request id).
    fn success_headers(&self, stream: bool) -> Vec<(String, String)>;
    /// Headers of an error response.
    fn error_headers(&self) -> Vec<(String, String)>;
    /// A complete non-streaming response body.
    fn success_body(&self, content: &Content) -> Bytes;
    /// Every SSE frame of a complete stream, in order.
    fn stream_frames(&self, content: &Content, ctx: &Ctx) -> Vec<Frame>;
    /// A realistic error body.
    fn error_body(&self, kind: &ErrKind, status: u16, model: &str) -> Value;
    /// The payload of an in-band stream error (see `Step::StreamThenError`).
    fn stream_error_payload(&self, error: &Value, model: &str) -> Value;
    /// The SSE frame carrying an in-band error payload.
    fn stream_error_frame(&self, payload: &Value) -> Bytes;
    /// A frame whose data is not JSON.
    fn malformed_frame(&self) -> Bytes;
    /// Says "retry after `after`" inside a generated error body, where the format
    /// does (Gemini's `RetryInfo`); `false` means the `retry-after` header says it.
    fn retry_in_body(&self, _body: &mut Value, _after: &str) -> bool {
        false
    }
}

/// What the request says that shapes the answer.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub format: Format,
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// OpenAI `stream_options.include_obfuscation` (on unless `false`).
    pub include_obfuscation: bool,
    /// Estimated prompt tokens (body size / 4).
    pub input_tokens: u64,
}

impl Ctx {
    pub(crate) fn new(format: Format, body: &Value, body_len: usize) -> Ctx {
        Ctx {
            format,
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("fake-model")
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            include_obfuscation: body
                .pointer("/stream_options/include_obfuscation")
                .and_then(Value::as_bool)
                != Some(false),
            input_tokens: (body_len as u64 / 4).max(1),
        }
    }

    /// A streaming request's context with these stream options (for tests).
    #[cfg(test)]
    pub(crate) fn streaming(format: Format, include_usage: bool, include_obfuscation: bool) -> Ctx {
        let body = serde_json::json!({"model": "m", "stream": true, "stream_options": {
            "include_usage": include_usage, "include_obfuscation": include_obfuscation}});
        Ctx::new(format, &body, 40)
    }

    /// Gemini names the model and whether to stream in the path, not the body.
    pub(crate) fn with_path(mut self, path: &str) -> Ctx {
        if self.format == Format::Gemini
            && let Some((model, stream)) = gemini_target(path)
        {
            self.model = model.to_string();
            self.stream = stream;
        }
        self
    }
}

/// A format-neutral answer, ready to be written in any format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Content {
    pub model: String,
    pub text: String,
    /// The text as stream chunks (concatenated, they are `text`).
    pub text_pieces: Vec<String>,
    pub tools: Vec<ToolContent>,
    /// As scripted, in either vocabulary; each format maps it.
    pub finish_reason: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolContent {
    pub id: Option<String>,
    pub name: String,
    pub arguments: String,
    /// The arguments as stream fragments.
    pub pieces: Vec<String>,
}

/// One SSE frame of a stream, with its role in the stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub bytes: Bytes,
    pub kind: FrameKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// Before any content (role chunk, message_start, ping, first block start).
    Preamble,
    /// Carries content: text, a tool call's name or argument fragment.
    Content,
    /// Between content frames (block stop/start).
    Inner,
    /// After the content (finish chunk, usage chunk, message_delta).
    Closing,
    /// The stream terminator (`data: [DONE]`, `message_stop`).
    Terminator,
}

impl Frame {
    pub(crate) fn new(kind: FrameKind, bytes: Vec<u8>) -> Frame {
        Frame {
            bytes: Bytes::from(bytes),
            kind,
        }
    }
}

/// The response to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Wait this long before sending the response head.
    pub delay: Duration,
    pub body: PlanBody,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PlanBody {
    Full(Bytes),
    Stream(Vec<Piece>),
    /// Drop the connection without a response.
    Reset,
    /// Never answer.
    Hang,
}

/// One step of a streamed body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Data(Bytes),
    Delay(Duration),
    /// Abort the connection mid-body.
    Cut,
    /// Stay open and silent.
    Stall,
}

/// What goes wrong in a stream, and after how many content chunks.
#[derive(Debug, Clone, Copy)]
enum Fault<'a> {
    None,
    Cut(usize),
    Stall(usize),
    Error(usize, &'a Value),
    Malformed(usize),
    NoTerminator,
}

/// Plan the answer to one request.
pub(crate) fn plan(step: &Step, ctx: &Ctx, body: &Value) -> Plan {
    let wire = ctx.format.wire();
    match step {
        Step::Reply(reply) => {
            let fault = reply.cut_after_chunks.map_or(Fault::None, Fault::Cut);
            reply_plan(wire, ctx, reply, fault)
        }
        Step::Echo => {
            let reply = Reply {
                text: format!("echo: {}", last_user_text(body)),
                ..Reply::default()
            };
            reply_plan(wire, ctx, &reply, Fault::None)
        }
        Step::Error(e) => error_plan(wire, ctx, e),
        Step::Reset => bare(PlanBody::Reset),
        Step::Hang => bare(PlanBody::Hang),
        Step::StreamThenCut { text, after_chunks } => {
            reply_plan(wire, ctx, &text_reply(text), Fault::Cut(*after_chunks))
        }
        Step::StreamThenStall { text, after_chunks } => {
            reply_plan(wire, ctx, &text_reply(text), Fault::Stall(*after_chunks))
        }
        Step::StreamThenError {
            text,
            after_chunks,
            error,
        } => reply_plan(
            wire,
            ctx,
            &text_reply(text),
            Fault::Error(*after_chunks, error),
        ),
        Step::StreamMalformed { text, after_chunks } => reply_plan(
            wire,
            ctx,
            &text_reply(text),
            Fault::Malformed(*after_chunks),
        ),
        Step::StreamNoDone { text } => {
            reply_plan(wire, ctx, &text_reply(text), Fault::NoTerminator)
        }
        Step::Raw {
            status,
            headers,
            body,
        } => Plan {
            status: *status,
            headers: headers.clone(),
            delay: Duration::ZERO,
            body: PlanBody::Full(Bytes::from(body.clone())),
        },
    }
}

fn bare(body: PlanBody) -> Plan {
    Plan {
        status: 200,
        headers: Vec::new(),
        delay: Duration::ZERO,
        body,
    }
}

fn text_reply(text: &str) -> Reply {
    Reply {
        text: text.to_string(),
        ..Reply::default()
    }
}

fn error_plan(wire: &dyn Wire, ctx: &Ctx, e: &ErrorStep) -> Plan {
    let (body, in_body) = match &e.body {
        Some(body) => (body.clone(), false),
        None => {
            let mut body = wire.error_body(
                &ErrKind::resolve(e.kind.as_deref(), e.status),
                e.status,
                &ctx.model,
            );
            let in_body = e
                .retry_after
                .as_deref()
                .is_some_and(|after| wire.retry_in_body(&mut body, after));
            (body, in_body)
        }
    };
    let mut headers = wire.error_headers();
    if let Some(after) = e.retry_after.as_ref().filter(|_| !in_body) {
        headers.push(("retry-after".into(), after.clone()));
    }
    Plan {
        status: e.status,
        headers,
        delay: Duration::ZERO,
        body: PlanBody::Full(Bytes::from(body.to_string())),
    }
}

fn reply_plan(wire: &dyn Wire, ctx: &Ctx, reply: &Reply, fault: Fault<'_>) -> Plan {
    let content = content(ctx, reply);
    let first = Duration::from_millis(reply.first_token_delay_ms.unwrap_or(0));
    let between = Duration::from_millis(reply.chunk_delay_ms.unwrap_or(0));
    if ctx.stream {
        let frames = wire.stream_frames(&content, ctx);
        Plan {
            status: 200,
            headers: wire.success_headers(true),
            delay: Duration::ZERO,
            body: PlanBody::Stream(stream_pieces(wire, ctx, frames, fault, first, between)),
        }
    } else {
        let chunks =
            content.text_pieces.len() + content.tools.iter().map(|t| t.pieces.len()).sum::<usize>();
        let delay = first + between * (chunks.max(1) as u32 - 1);
        non_stream_plan(wire, ctx, &content, fault, delay)
    }
}

/// A stream step on a non-streaming request fails the same way at the HTTP level.
fn non_stream_plan(
    wire: &dyn Wire,
    ctx: &Ctx,
    content: &Content,
    fault: Fault<'_>,
    delay: Duration,
) -> Plan {
    let body = wire.success_body(content);
    let half = || Piece::Data(body.slice(..body.len() / 2));
    let (status, headers, body) = match fault {
        Fault::None | Fault::NoTerminator => {
            (200, wire.success_headers(false), PlanBody::Full(body))
        }
        Fault::Cut(_) => (
            200,
            wire.success_headers(false),
            PlanBody::Stream(vec![half(), Piece::Cut]),
        ),
        Fault::Stall(_) => (
            200,
            wire.success_headers(false),
            PlanBody::Stream(vec![half(), Piece::Stall]),
        ),
        Fault::Error(_, error) => {
            let payload = wire.stream_error_payload(error, &ctx.model);
            (
                500,
                wire.error_headers(),
                PlanBody::Full(Bytes::from(payload.to_string())),
            )
        }
        Fault::Malformed(_) => (
            200,
            wire.success_headers(false),
            PlanBody::Full(Bytes::from_static(b"{not json")),
        ),
    };
    Plan {
        status,
        headers,
        delay,
        body,
    }
}

fn content(ctx: &Ctx, reply: &Reply) -> Content {
    let text_pieces = match reply.chunks {
        Some(n) => split_even(&reply.text, n),
        None => split_words(&reply.text),
    };
    let tools: Vec<ToolContent> = reply
        .tool_calls
        .iter()
        .map(|t| ToolContent {
            id: t.id.clone(),
            name: t.name.clone(),
            arguments: t.arguments.clone(),
            pieces: split_even(&t.arguments, reply.chunks.unwrap_or(4)),
        })
        .collect();
    let out_bytes = reply.text.len() + tools.iter().map(|t| t.arguments.len()).sum::<usize>();
    Content {
        model: reply.model.clone().unwrap_or_else(|| ctx.model.clone()),
        text: reply.text.clone(),
        text_pieces,
        tools,
        finish_reason: reply.finish_reason.clone(),
        usage: reply.usage.unwrap_or(Usage {
            input_tokens: ctx.input_tokens,
            output_tokens: (out_bytes as u64 / 4).max(1),
        }),
    }
}

fn stream_pieces(
    wire: &dyn Wire,
    ctx: &Ctx,
    mut frames: Vec<Frame>,
    fault: Fault<'_>,
    first: Duration,
    between: Duration,
) -> Vec<Piece> {
    let mut tail = None;
    match fault {
        Fault::None => {}
        Fault::NoTerminator => frames.retain(|f| f.kind != FrameKind::Terminator),
        Fault::Cut(n) => {
            frames.truncate(fault_position(&frames, n));
            tail = Some(Piece::Cut);
        }
        Fault::Stall(n) => {
            frames.truncate(fault_position(&frames, n));
            tail = Some(Piece::Stall);
        }
        Fault::Error(n, error) => {
            frames.truncate(fault_position(&frames, n));
            let payload = wire.stream_error_payload(error, &ctx.model);
            frames.push(Frame {
                bytes: wire.stream_error_frame(&payload),
                kind: FrameKind::Terminator,
            });
        }
        Fault::Malformed(n) => {
            let at = fault_position(&frames, n);
            let bad = Frame {
                bytes: wire.malformed_frame(),
                kind: FrameKind::Inner,
            };
            frames.insert(at, bad);
        }
    }
    let mut pieces = with_delays(frames, first, between);
    pieces.extend(tail);
    pieces
}

/// Where a fault goes: just before the `(n+1)`-th content frame, else right after
/// the last content frame, else before the closing frames.
fn fault_position(frames: &[Frame], n: usize) -> usize {
    let mut seen = 0;
    let mut after_last = None;
    for (i, f) in frames.iter().enumerate() {
        if f.kind == FrameKind::Content {
            if seen == n {
                return i;
            }
            seen += 1;
            after_last = Some(i + 1);
        }
    }
    after_last.unwrap_or_else(|| {
        frames
            .iter()
            .position(|f| matches!(f.kind, FrameKind::Closing | FrameKind::Terminator))
            .unwrap_or(frames.len())
    })
}

/// Frames to body pieces: a delay before each content frame (the first one gets
/// `first`), and adjacent frames with no delay between them merged into one write.
fn with_delays(frames: Vec<Frame>, first: Duration, between: Duration) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut seen_content = false;
    for f in frames {
        if f.kind == FrameKind::Content {
            let delay = if seen_content { between } else { first };
            seen_content = true;
            if !delay.is_zero() {
                if !pending.is_empty() {
                    pieces.push(Piece::Data(Bytes::from(std::mem::take(&mut pending))));
                }
                pieces.push(Piece::Delay(delay));
            }
        }
        pending.extend_from_slice(&f.bytes);
    }
    if !pending.is_empty() {
        pieces.push(Piece::Data(Bytes::from(pending)));
    }
    pieces
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(json: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    out
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event(name: &str, json: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(format: Format, stream: bool) -> Ctx {
        Ctx::new(format, &json!({"model": "m", "stream": stream}), 400)
    }

    fn stream_bytes(plan: &Plan) -> (Vec<u8>, Vec<&Piece>) {
        let PlanBody::Stream(pieces) = &plan.body else {
            panic!("not a stream: {:?}", plan.body);
        };
        let mut data = Vec::new();
        let mut other = Vec::new();
        for p in pieces {
            match p {
                Piece::Data(b) => data.extend_from_slice(b),
                p => other.push(p),
            }
        }
        (data, other)
    }

    #[test]
    fn paths_pick_formats() {
        assert_eq!(
            Format::for_path("/v1/chat/completions"),
            Some(Format::OpenAi)
        );
        assert_eq!(
            Format::for_path("/api/v1/chat/completions"),
            Some(Format::OpenAi)
        );
        assert_eq!(Format::for_path("/v1/messages"), Some(Format::Anthropic));
        assert_eq!(Format::for_path("/v1/models"), None);
        assert_eq!(
            Format::for_path("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(Format::Gemini)
        );
        assert_eq!(
            gemini_target("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some(("gemini-2.5-flash", true))
        );
        assert_eq!(
            Format::for_path("/v1beta/models/gemini-2.5-flash:countTokens"),
            None
        );
        assert_eq!(Format::for_path("/v1beta/models/:generateContent"), None);
    }

    #[test]
    fn gemini_ctx_reads_the_path() {
        let c = Ctx::new(Format::Gemini, &json!({"contents": []}), 40)
            .with_path("/v1beta/models/gemini-2.0-flash:streamGenerateContent");
        assert_eq!(c.model, "gemini-2.0-flash");
        assert!(c.stream);
        let c = Ctx::new(Format::Gemini, &json!({"stream": true}), 40)
            .with_path("/v1beta/models/g:generateContent");
        assert!(!c.stream, "the body's stream field means nothing to Gemini");
    }

    #[test]
    fn ctx_reads_the_request() {
        let c = Ctx::new(
            Format::OpenAi,
            &json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}}),
            40,
        );
        assert_eq!(c.model, "gpt-4o");
        assert!(c.stream && c.include_usage);
        assert_eq!(c.input_tokens, 10);
        let c = Ctx::new(Format::Anthropic, &Value::Null, 0);
        assert_eq!(c.model, "fake-model");
        assert!(!c.stream && !c.include_usage);
        assert_eq!(c.input_tokens, 1);
    }

    #[test]
    fn delays_go_before_content_frames() {
        let step = Step::Reply(Reply {
            text: "a b c".into(),
            first_token_delay_ms: Some(50),
            chunk_delay_ms: Some(10),
            ..Reply::default()
        });
        let plan = plan(&step, &ctx(Format::OpenAi, true), &Value::Null);
        let PlanBody::Stream(pieces) = &plan.body else {
            panic!("{plan:?}")
        };
        let delays: Vec<_> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Delay(d) => Some(d.as_millis()),
                _ => None,
            })
            .collect();
        assert_eq!(delays, [50, 10, 10]);
        assert!(matches!(pieces[0], Piece::Data(_)), "preamble first");

        let plan = super::plan(&step, &ctx(Format::OpenAi, false), &Value::Null);
        assert_eq!(plan.delay, Duration::from_millis(70));
    }

    #[test]
    fn no_delays_means_one_write() {
        let plan = plan(
            &Step::text("a b c"),
            &ctx(Format::Anthropic, true),
            &Value::Null,
        );
        let PlanBody::Stream(pieces) = &plan.body else {
            panic!("{plan:?}")
        };
        assert_eq!(pieces.len(), 1);
    }

    #[test]
    fn cut_keeps_exactly_the_first_chunks() {
        for format in [Format::OpenAi, Format::Anthropic, Format::Gemini] {
            let step = Step::StreamThenCut {
                text: "one two three".into(),
                after_chunks: 2,
            };
            let plan = plan(&step, &ctx(format, true), &Value::Null);
            let (data, other) = stream_bytes(&plan);
            let text = String::from_utf8(data).unwrap();
            assert!(text.contains("one ") && text.contains("two "), "{text}");
            assert!(!text.contains("three"), "{text}");
            assert_eq!(other, [&Piece::Cut]);
        }
    }

    #[test]
    fn fault_after_more_chunks_than_exist_follows_the_content() {
        let step = Step::StreamThenStall {
            text: "one two".into(),
            after_chunks: 10,
        };
        let plan = plan(&step, &ctx(Format::Anthropic, true), &Value::Null);
        let (data, other) = stream_bytes(&plan);
        let text = String::from_utf8(data).unwrap();
        assert!(text.contains("two"), "{text}");
        assert!(!text.contains("content_block_stop"), "{text}");
        assert_eq!(other, [&Piece::Stall]);
    }

    #[test]
    fn stream_steps_on_non_streaming_requests() {
        let c = ctx(Format::OpenAi, false);
        let cut = plan(
            &Step::StreamThenCut {
                text: "x".into(),
                after_chunks: 0,
            },
            &c,
            &Value::Null,
        );
        let (_, other) = stream_bytes(&cut);
        assert_eq!(other, [&Piece::Cut]);
        let err = plan(
            &Step::StreamThenError {
                text: "x".into(),
                after_chunks: 0,
                error: Value::Null,
            },
            &c,
            &Value::Null,
        );
        assert_eq!(err.status, 500);
        let nodone = plan(&Step::StreamNoDone { text: "x".into() }, &c, &Value::Null);
        assert_eq!(nodone.status, 200);
        assert!(matches!(nodone.body, PlanBody::Full(_)));
    }

    /// Google sends no `Retry-After` header: the delay is a `RetryInfo` detail (and
    /// "Please retry in …" in the message).
    #[test]
    fn gemini_error_plan_says_retry_after_in_retry_info() {
        let p = plan(
            &Step::rate_limited(7),
            &ctx(Format::Gemini, false),
            &Value::Null,
        );
        assert_eq!(p.status, 429);
        assert!(p.headers.iter().all(|(k, _)| k != "retry-after"));
        let PlanBody::Full(body) = &p.body else {
            panic!("a full body")
        };
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        let details = body["error"]["details"].as_array().unwrap();
        assert!(details.contains(&json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "7s",
        })));
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("Please retry in 7s.")
        );
        // An exact body is sent as given; the header still carries the delay.
        let exact = Step::Error(ErrorStep {
            status: 429,
            body: Some(json!({"error": {"code": 429}})),
            retry_after: Some("3".into()),
            kind: None,
        });
        let p = plan(&exact, &ctx(Format::Gemini, false), &Value::Null);
        assert!(
            p.headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "3")
        );
    }

    #[test]
    fn error_plan_sets_retry_after() {
        let p = plan(
            &Step::rate_limited(7),
            &ctx(Format::OpenAi, false),
            &Value::Null,
        );
        assert_eq!(p.status, 429);
        assert!(
            p.headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "7")
        );
    }
}
