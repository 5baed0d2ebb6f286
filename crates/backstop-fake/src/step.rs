//! The script: what the fake does with each request it receives.
//!
//! Steps are plain serde data so that non-Rust tests can send them over HTTP
//! (`POST /_fake/script`). On the wire a step is an object tagged by `type`:
//! `{"type":"reply","text":"hi"}`, `{"type":"error","status":429}`,
//! `{"type":"reset"}`, `{"type":"stream_then_cut","text":"a b c","after_chunks":2}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One scripted answer. Each request takes the next step from the queue (shared by
/// every route), or the default step when the queue is empty.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// A successful answer, in the format of the route and streamed or not as the
    /// request's `stream` field says.
    Reply(Reply),
    /// Reply with the text `echo: <text of the last user message>` (the default).
    #[default]
    Echo,
    /// An HTTP error with a realistic body for the route's format.
    Error(ErrorStep),
    /// Read the request, then drop the connection without a response (a TCP reset).
    Reset,
    /// Never respond (until the client gives up or the fake shuts down).
    Hang,
    /// Stream `after_chunks` content chunks, then cut the connection mid-body
    /// (no SSE terminator, no end of the HTTP body).
    StreamThenCut { text: String, after_chunks: usize },
    /// Stream `after_chunks` content chunks, then keep the connection open and silent.
    StreamThenStall { text: String, after_chunks: usize },
    /// Stream `after_chunks` content chunks, then an in-band error event in the
    /// route's format, then end the body. `error` is a full event payload (an
    /// object with an `error` key), an error object to wrap, a kind name such as
    /// `"overloaded"`, or null for the format's usual server error.
    StreamThenError {
        text: String,
        after_chunks: usize,
        #[serde(default)]
        error: Value,
    },
    /// Stream `after_chunks` content chunks, then a `data: {not json` chunk, then
    /// the rest of the stream as normal.
    StreamMalformed { text: String, after_chunks: usize },
    /// A complete stream minus its terminator (`data: [DONE]` / `message_stop`),
    /// then a clean end of the body.
    StreamNoDone { text: String },
    /// Any status, headers and body (e.g. an HTML error page, a wrong content type).
    Raw {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: String,
    },
}

/// A successful answer. Every field is optional on the wire except that an empty
/// reply is a reply with no text.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// The `model` of the answer; defaults to the request's `model` field.
    pub model: Option<String>,
    /// Token counts; estimated from the request and reply sizes when absent.
    pub usage: Option<Usage>,
    /// Finish/stop reason in either vocabulary (`stop`, `length`, `tool_calls`,
    /// `end_turn`, `max_tokens`, `tool_use`, …): mapped to the route's format;
    /// unknown values are sent as they are. Defaults to a normal stop, or the
    /// tool-call reason when there are tool calls.
    pub finish_reason: Option<String>,
    /// Split the text into this many stream chunks (default: one chunk per word).
    pub chunks: Option<usize>,
    /// Delay between consecutive content chunks (streaming), or per chunk of
    /// generation time (non-streaming).
    pub chunk_delay_ms: Option<u64>,
    /// Delay before the first content (streaming: after the headers and the
    /// role/message_start preamble; non-streaming: before the response).
    pub first_token_delay_ms: Option<u64>,
    /// Streaming: send this many content chunks (text pieces and tool-call
    /// fragments alike), then cut the connection mid-body, as `stream_then_cut`
    /// does for text — e.g. in the middle of a tool call's arguments.
    pub cut_after_chunks: Option<usize>,
}

/// A tool call in a scripted reply.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Defaults to a fresh `call_…` (OpenAI) or `toolu_…` (Anthropic) id.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// The arguments as JSON text (sent as is, even when not valid JSON).
    #[serde(default)]
    pub arguments: String,
}

/// Token counts of a scripted reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorStep {
    pub status: u16,
    /// The exact body; when absent a realistic one is generated from `kind`/`status`.
    #[serde(default)]
    pub body: Option<Value>,
    /// The `retry-after` header value, if any. On the Gemini route a generated body
    /// carries it instead, as Google does: a `RetryInfo` detail (`"retryDelay":"7s"`)
    /// and "Please retry in 7s." in the message, with no header.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// What kind of error to generate, in either provider's words
    /// (`rate_limit_exceeded`, `insufficient_quota`, `invalid_api_key`,
    /// `context_length_exceeded`, `model_not_found`, `server_error`,
    /// `rate_limit_error`, `overloaded_error`, `authentication_error`,
    /// `permission_error`, `invalid_request_error`, `not_found_error`,
    /// `billing_error`, `api_error`) or plainly (`rate_limit`, `quota`, `auth`,
    /// `permission`, `context_overflow`, `bad_request`, `not_found`, `server`,
    /// `overloaded`, `unavailable`). Default: from the status. An unknown kind is
    /// used verbatim as the error type/code.
    #[serde(default)]
    pub kind: Option<String>,
}

impl Step {
    /// A plain text reply.
    ///
    /// ```
    /// use backstop_fake::Step;
    /// let step = Step::text("Hello there");
    /// assert_eq!(serde_json::to_value(&step).unwrap()["type"], "reply");
    /// ```
    pub fn text(text: impl Into<String>) -> Step {
        Step::Reply(Reply {
            text: text.into(),
            ..Reply::default()
        })
    }

    /// A reply with one tool call (`arguments` is JSON text).
    pub fn tool_call(name: impl Into<String>, arguments: impl Into<String>) -> Step {
        Step::Reply(Reply {
            tool_calls: vec![ToolCall {
                id: None,
                name: name.into(),
                arguments: arguments.into(),
            }],
            ..Reply::default()
        })
    }

    /// An error with a generated body for the route's format.
    pub fn error(status: u16) -> Step {
        Step::Error(ErrorStep {
            status,
            ..ErrorStep::default()
        })
    }

    /// An error of a given kind (see [`ErrorStep::kind`]) with a generated body.
    ///
    /// ```
    /// use backstop_fake::Step;
    /// let step = Step::error_kind(429, "insufficient_quota");
    /// assert_eq!(
    ///     serde_json::to_string(&step).unwrap(),
    ///     r#"{"type":"error","status":429,"body":null,"retry_after":null,"kind":"insufficient_quota"}"#
    /// );
    /// ```
    pub fn error_kind(status: u16, kind: impl Into<String>) -> Step {
        Step::Error(ErrorStep {
            status,
            kind: Some(kind.into()),
            ..ErrorStep::default()
        })
    }

    /// A rate-limit error (429) with a `retry-after` header in seconds.
    pub fn rate_limited(retry_after_secs: u64) -> Step {
        Step::Error(ErrorStep {
            status: 429,
            retry_after: Some(retry_after_secs.to_string()),
            kind: Some("rate_limit".into()),
            body: None,
        })
    }
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub path: String,
    /// The query string without its `?` (Gemini streams ask for `alt=sse`), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Header names in lower case, values as text (lossy), in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body; a string when the body was not JSON, null when empty.
    pub body: Value,
}

impl Recorded {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            Step::text("hi"),
            Step::Echo,
            Step::error_kind(529, "overloaded_error"),
            Step::Reset,
            Step::Hang,
            Step::StreamThenCut {
                text: "a b".into(),
                after_chunks: 1,
            },
            Step::StreamThenStall {
                text: "a b".into(),
                after_chunks: 1,
            },
            Step::StreamThenError {
                text: "a".into(),
                after_chunks: 0,
                error: json!("overloaded"),
            },
            Step::StreamMalformed {
                text: "a".into(),
                after_chunks: 0,
            },
            Step::StreamNoDone { text: "a".into() },
            Step::Raw {
                status: 502,
                headers: vec![("content-type".into(), "text/html".into())],
                body: "<html>".into(),
            },
        ];
        let text = serde_json::to_string(&steps).unwrap();
        let back: Vec<Step> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn short_forms_deserialize() {
        let steps: Vec<Step> = serde_json::from_value(json!([
            {"type": "reply", "text": "hi", "tool_calls": [{"name": "f", "arguments": "{}"}]},
            {"type": "echo"},
            {"type": "error", "status": 429, "retry_after": "3"},
            {"type": "stream_then_error", "text": "x", "after_chunks": 1},
            {"type": "raw", "status": 200},
        ]))
        .unwrap();
        let Step::Reply(reply) = &steps[0] else {
            panic!("not a reply: {:?}", steps[0]);
        };
        assert_eq!(reply.tool_calls[0].name, "f");
        assert_eq!(reply.chunks, None);
        assert_eq!(steps[1], Step::Echo);
        assert!(matches!(&steps[2], Step::Error(e) if e.retry_after.as_deref() == Some("3")));
        assert!(matches!(
            &steps[3],
            Step::StreamThenError {
                error: Value::Null,
                ..
            }
        ));
        assert!(
            matches!(&steps[4], Step::Raw { headers, body, .. } if headers.is_empty() && body.is_empty())
        );
    }

    #[test]
    fn typos_are_rejected() {
        let err = serde_json::from_value::<Step>(json!({"type": "reply", "txt": "hi"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("txt"), "{err}");
        let err = serde_json::from_value::<Step>(json!({"type": "rest"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rest"), "{err}");
    }
}
