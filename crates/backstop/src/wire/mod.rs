//! Wire formats: one file per format, each with its serde types and its
//! conversions to and from [`crate::chat`].
//!
//! Every format module offers the same functions:
//! - `decode_request(&Value) -> Result<chat::Request, WireError>`: a client's body (ingress);
//! - `encode_request(&chat::Request, upstream_model) -> Value`: a provider's body (egress);
//! - `decode_response(&[u8]) -> Result<chat::Response, WireError>`: a provider's answer;
//! - `encode_response(&chat::Response) -> Value`: the client's answer;
//! - `decode_error(&[u8]) -> Option<UpstreamErrorBody>` and `encode_error(&ClientError) -> Value`;
//! - `StreamDecoder` (provider SSE → `StreamEvent`s) and `StreamEncoder` (`StreamEvent`s → client SSE bytes).
//!
//! `gemini` is egress only (no client speaks it): it has `encode_request`,
//! `decode_response`, `decode_error` and `StreamDecoder`.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use serde_json::Value;

/// Replace the `model` field of a same-format body, leaving everything else as the client sent it.
pub fn with_model(body: &Value, model: &str) -> Value {
    let mut body = body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), Value::String(model.to_string()));
    }
    body
}
