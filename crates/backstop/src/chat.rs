//! The provider-neutral chat model.
//!
//! Every wire format (`wire::openai`, `wire::anthropic`, …) converts to and from
//! these types. They hold what Backstop *translates* between formats; traffic
//! whose ingress and egress format are the same does not go through them at all
//! (the original body is forwarded with only `model` rewritten), so fields that
//! are not modelled here still reach the provider.
//!
//! Conventions:
//! - Tool-call arguments are kept as the raw JSON *text* the model produced
//!   (OpenAI sends a string, Anthropic an object; both convert losslessly to text).
//! - System prompts are pulled out of the message list into `Request::system`
//!   (OpenAI `system`/`developer` messages, Anthropic `system`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The wire formats Backstop speaks, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// OpenAI Chat Completions (also OpenRouter, vLLM, Ollama, LM Studio, …).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl WireFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::OpenAi => "openai",
            WireFormat::Anthropic => "anthropic",
            WireFormat::Gemini => "gemini",
        }
    }
}

impl std::fmt::Display for WireFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chat request, independent of wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The model field as the client sent it (an alias, agent id, or provider/model).
    pub model: String,
    /// System / developer instructions, in order. Each entry is one block.
    pub system: Vec<SystemBlock>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may emit several tool calls in one turn (`None` = provider default).
    pub parallel_tool_calls: Option<bool>,
    /// Maximum tokens to generate (OpenAI `max_tokens`/`max_completion_tokens`, Anthropic `max_tokens`).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Anthropic `top_k` (OpenAI has none; dropped there).
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub response_format: Option<ResponseFormat>,
    pub stream: bool,
    /// End-user identifier (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// OpenAI `metadata` (string map); not sent to providers that lack it.
    pub metadata: Option<Map<String, Value>>,
    /// Reasoning/thinking request carried across when both sides support it (opaque).
    pub reasoning: Option<Value>,
    /// The first thing in the client's request that no other format can carry (left out
    /// of this request): only a model of the client's own format, which gets the client's
    /// body as it is, can serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untranslatable: Option<Untranslatable>,
}

/// Request content only the client's own format has: an Anthropic `document` block or
/// server tool, an OpenAI `file` or `input_audio` part, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Untranslatable {
    /// Its JSON path, e.g. `messages[0].content[1].type`.
    pub param: String,
    /// What it is, e.g. `content block type "document"`.
    pub what: String,
}

impl Untranslatable {
    /// Keep the first one seen.
    pub(crate) fn note(slot: &mut Option<Untranslatable>, param: String, what: String) {
        if slot.is_none() {
            *slot = Some(Untranslatable { param, what });
        }
    }
}

/// One block of system instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemBlock {
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// A turn of the conversation. Tool results are parts of a `User` message
/// (Anthropic's model); OpenAI `tool` messages convert to/from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
    /// OpenAI's optional participant `name`.
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![Part::Text { text: text.into() }],
            name: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    /// A call the assistant made. `arguments` is JSON text (an object).
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of a tool call, sent back by the user side.
    ToolResult {
        tool_call_id: String,
        /// Text and image parts of the result.
        content: Vec<Part>,
        is_error: bool,
    },
    /// Model reasoning (Anthropic `thinking`); dropped when the target cannot take it.
    Thinking {
        text: String,
        signature: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// An http(s) URL.
    Url { url: String },
    /// Inline data: `media_type` like `image/png`, `data` base64 without the `data:` prefix.
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the parameters (an object schema).
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (OpenAI `auto`, Anthropic `auto`).
    Auto,
    /// No tool may be called (OpenAI `none`, Anthropic `none`).
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Required,
    /// This tool must be called.
    Tool { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    /// OpenAI `json_object`.
    JsonObject,
    /// OpenAI `json_schema`: `{name, schema, strict}` as sent.
    JsonSchema {
        json_schema: Value,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end (OpenAI `stop`, Anthropic `end_turn`).
    Stop,
    /// A stop sequence matched (OpenAI `stop`, Anthropic `stop_sequence`).
    StopSequence,
    /// Token limit (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    /// The model called tools (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolCalls,
    /// Filtered (OpenAI `content_filter`, Anthropic `refusal`).
    ContentFilter,
    /// Anthropic `pause_turn` and anything else unknown.
    Other,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt tokens read from a provider cache, when reported.
    pub cache_read_tokens: Option<u64>,
    /// Prompt tokens written to a provider cache, when reported (Anthropic).
    pub cache_write_tokens: Option<u64>,
}

/// A complete (non-streaming) answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The provider's response id.
    pub id: String,
    /// The model id the provider reported (else the upstream model requested).
    pub model: String,
    /// Assistant content: text, tool calls, thinking.
    pub content: Vec<Part>,
    pub finish_reason: Option<FinishReason>,
    /// For `FinishReason::StopSequence`, which sequence matched (Anthropic reports it).
    pub stop_sequence: Option<String>,
    pub usage: Usage,
    /// Creation time, unix seconds.
    pub created: u64,
}

/// One event of a streamed answer, independent of wire format.
///
/// A well-formed stream is: `Start`, then any number of content events
/// (`TextDelta`, `ThinkingDelta`, `ToolCallStart` followed by its
/// `ToolCallDelta`s), then `Usage`/`Finish` in either order, then `Done`.
/// Tool calls are numbered by `index` from 0 in the order they start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The answer begins. `model` is what the provider reported.
    Start {
        id: String,
        model: String,
        /// Prompt tokens, when the provider reports them up front (Anthropic).
        input_tokens: Option<u64>,
    },
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        text: String,
    },
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: u32,
        /// A fragment of the arguments' JSON text.
        arguments: String,
    },
    /// Token counts so far (the last one wins).
    Usage {
        usage: Usage,
    },
    Finish {
        reason: FinishReason,
        stop_sequence: Option<String>,
    },
    /// The provider reported an error inside the stream.
    Error {
        error: UpstreamErrorBody,
    },
    /// The stream's terminator (OpenAI `[DONE]`, Anthropic `message_stop`).
    Done,
}

impl StreamEvent {
    /// Content is what the client must not lose: text, reasoning or a tool call.
    /// The stream commit point and time-to-first-token are measured to the first one.
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            StreamEvent::TextDelta { .. }
                | StreamEvent::ThinkingDelta { .. }
                | StreamEvent::ToolCallStart { .. }
                | StreamEvent::ToolCallDelta { .. }
        )
    }
}

/// The events of one upstream chunk. Nearly every chunk of a streamed answer is one
/// text delta, kept inline (no vector to allocate and free per chunk); any other
/// number of events is a vector. Reads as a slice of events.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkEvents {
    One(StreamEvent),
    Many(Vec<StreamEvent>),
}

impl ChunkEvents {
    /// The events of a chunk that carries only `text`: one delta, or none for empty
    /// text (as the decoders give none).
    pub fn text(text: String) -> Self {
        if text.is_empty() {
            ChunkEvents::Many(Vec::new())
        } else {
            ChunkEvents::One(StreamEvent::TextDelta { text })
        }
    }
}

impl Default for ChunkEvents {
    fn default() -> Self {
        ChunkEvents::Many(Vec::new())
    }
}

impl From<Vec<StreamEvent>> for ChunkEvents {
    fn from(events: Vec<StreamEvent>) -> Self {
        ChunkEvents::Many(events)
    }
}

impl From<ChunkEvents> for Vec<StreamEvent> {
    fn from(events: ChunkEvents) -> Self {
        match events {
            ChunkEvents::One(e) => vec![e],
            ChunkEvents::Many(v) => v,
        }
    }
}

impl std::ops::Deref for ChunkEvents {
    type Target = [StreamEvent];
    fn deref(&self) -> &[StreamEvent] {
        match self {
            ChunkEvents::One(e) => std::slice::from_ref(e),
            ChunkEvents::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a ChunkEvents {
    type Item = &'a StreamEvent;
    type IntoIter = std::slice::Iter<'a, StreamEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for ChunkEvents {
    type Item = StreamEvent;
    type IntoIter = ChunkEventsIter;
    fn into_iter(self) -> ChunkEventsIter {
        match self {
            ChunkEvents::One(e) => ChunkEventsIter::One(Some(e)),
            ChunkEvents::Many(v) => ChunkEventsIter::Many(v.into_iter()),
        }
    }
}

/// The events of a [`ChunkEvents`], by value.
pub enum ChunkEventsIter {
    One(Option<StreamEvent>),
    Many(std::vec::IntoIter<StreamEvent>),
}

impl Iterator for ChunkEventsIter {
    type Item = StreamEvent;
    fn next(&mut self) -> Option<StreamEvent> {
        match self {
            ChunkEventsIter::One(e) => e.take(),
            ChunkEventsIter::Many(v) => v.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            ChunkEventsIter::One(e) => (usize::from(e.is_some()), Some(usize::from(e.is_some()))),
            ChunkEventsIter::Many(v) => v.size_hint(),
        }
    }
}

/// An error as a provider described it (from an error body or an in-band stream error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamErrorBody {
    /// OpenAI `error.type` / Anthropic `error.type` / Gemini `error.status`.
    pub kind: Option<String>,
    /// OpenAI `error.code` / Gemini `error.code` as text.
    pub code: Option<String>,
    pub message: String,
    /// When the provider said to retry, in a structured field of the error (Gemini's
    /// `RetryInfo` detail); a "retry in 7s" in the message is read by the classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<std::time::Duration>,
}

/// What a client is told went wrong; each wire format renders it in its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    /// The offending request field, when known (OpenAI `param`).
    pub param: Option<String>,
    /// A machine-readable code (OpenAI `code`), e.g. `model_not_found`.
    pub code: Option<String>,
}

/// The error categories both SDKs understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimit,
    Api,
    Overloaded,
    Timeout,
}

impl ErrorKind {
    /// The HTTP status that goes with this kind by default.
    pub fn default_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimit => 429,
            ErrorKind::Api => 500,
            ErrorKind::Overloaded => 529,
            ErrorKind::Timeout => 504,
        }
    }

    /// The kind a bare HTTP status maps to.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 | 422 => ErrorKind::InvalidRequest,
            401 => ErrorKind::Authentication,
            403 => ErrorKind::Permission,
            404 => ErrorKind::NotFound,
            413 => ErrorKind::RequestTooLarge,
            429 => ErrorKind::RateLimit,
            408 | 504 => ErrorKind::Timeout,
            503 | 529 => ErrorKind::Overloaded,
            _ if status < 500 => ErrorKind::InvalidRequest,
            _ => ErrorKind::Api,
        }
    }
}

impl ClientError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClientError {
            status: kind.default_status(),
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
}

/// Whatever went wrong turning a client's bytes into a [`Request`], or a
/// provider's bytes into a [`Response`]/[`StreamEvent`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// The JSON path of the offending field, e.g. `messages[2].content[0].type`.
    pub path: Option<String>,
    pub message: String,
}

impl WireError {
    pub fn new(message: impl Into<String>) -> Self {
        WireError {
            path: None,
            message: message.into(),
        }
    }

    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        let message = format!("{path}: {}", message.into());
        WireError {
            path: Some(path),
            message,
        }
    }

    /// As a 400 for the client.
    pub fn to_client_error(&self) -> ClientError {
        let mut e = ClientError::invalid(self.message.clone());
        e.param = self.path.clone();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_events_read_as_their_vector() {
        let text = |t: &str| StreamEvent::TextDelta { text: t.into() };
        let cases = [
            (ChunkEvents::text("hi".into()), vec![text("hi")]),
            (ChunkEvents::text(String::new()), vec![]),
            (ChunkEvents::default(), vec![]),
            (
                ChunkEvents::from(vec![text("a"), StreamEvent::Done]),
                vec![text("a"), StreamEvent::Done],
            ),
        ];
        for (events, want) in cases {
            assert_eq!(&events[..], &want[..]);
            assert_eq!((&events).into_iter().count(), want.len());
            let by_value = events.clone().into_iter();
            assert_eq!(by_value.size_hint(), (want.len(), Some(want.len())));
            assert_eq!(by_value.collect::<Vec<_>>(), want);
            assert_eq!(Vec::from(events), want);
        }
    }
}
