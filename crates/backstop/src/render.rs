//! Rendering engine results for a client, in the client's own format: complete
//! answers, streams (with the in-band error when one fails after its commit
//! point), and errors.

use crate::chat::{self, ClientError, ErrorKind, WireFormat};
use crate::failover::{ChainFailure, Failure, Reason};
use crate::wire;
use bytes::Bytes;

/// An error body in the client's format.
pub fn error_body(ingress: WireFormat, err: &ClientError) -> Bytes {
    let v = match ingress {
        WireFormat::Anthropic => wire::anthropic::encode_error(err),
        _ => wire::openai::encode_error(err),
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// What the client gets when a chain failed.
pub struct ChainError {
    pub error: ClientError,
    /// The upstream's own error body, when it is already in the client's format and
    /// was returned on purpose (a client-side error like a bad request).
    pub passthrough: Option<Bytes>,
    /// The `provider/model` whose error the client gets as its answer (a client-side
    /// error returned as is), for `x-backstop-model`; `None` when every target failed.
    pub answered_by: Option<String>,
}

/// Turn a chain failure into one client error (PRODUCT §8 "When every target fails").
pub fn chain_error(
    ingress: WireFormat,
    upstream_of: impl Fn(&str) -> Option<WireFormat>,
    f: &ChainFailure,
) -> ChainError {
    // The deciding failure goes back as the provider put it when it is the client's
    // problem (a bad or too-long request, a policy refusal): agents act on its exact
    // code (`context_length_exceeded` → compact the history). Failures of Backstop's own
    // keys (auth, billing) are never shown as the client's 401/402.
    let client_side = |a: &crate::failover::Attempt| {
        matches!(
            a.failure.reason,
            Reason::ContextOverflow
                | Reason::BadRequest
                | Reason::ContentPolicy
                | Reason::ModelNotFound
                | Reason::Unknown
        ) && a
            .failure
            .status
            .is_some_and(|s| (400..500).contains(&s) && s != 429)
    };
    if let Some((param, message)) = &f.unservable {
        // No model of the chain can serve the request as asked: the client's to change.
        return ChainError {
            error: ClientError::invalid(message.clone()).with_param(param.clone()),
            passthrough: None,
            answered_by: None,
        };
    }
    if let Some(last) = f.failed.last()
        && f.returned
    {
        // Returned as is after this one attempt (§3.2): the provider's own error.
        let status = last.failure.status.unwrap_or(400);
        let kind = ErrorKind::from_status(status);
        let mut error = ClientError::new(kind, last.failure.message.clone()).with_status(status);
        if let Some(code) = last.failure.upstream.as_ref().and_then(|u| u.code.clone()) {
            error = error.with_code(code);
        }
        let passthrough = same_format_body(ingress, &upstream_of, last).cloned();
        return ChainError {
            error,
            passthrough,
            answered_by: Some(last.target.model.to_string()),
        };
    }
    let lines = attempt_lines(f);
    if let Some(last) = f.failed.last()
        && client_side(last)
    {
        // Every target was tried and the deciding failure is the client's (every model
        // not found, a context overflow with no larger window left): its status, its
        // error type and code in the client's format (agents act on the exact code:
        // `context_length_exceeded` → compact the history), and a message that keeps
        // the provider's words and lists every attempt (PRODUCT §8).
        let status = last.failure.status.unwrap_or(400);
        let message = format!("{} — attempts: {}", last.failure.message, lines.join("; "));
        let passthrough = same_format_body(ingress, &upstream_of, last)
            .and_then(|body| with_message(body, &message));
        let mut error =
            ClientError::new(ErrorKind::from_status(status), message).with_status(status);
        if let Some(code) = client_code(last) {
            error = error.with_code(code);
        }
        return ChainError {
            error,
            passthrough,
            answered_by: None,
        };
    }
    let all_rate_limited = !f.failed.is_empty()
        && f.failed
            .iter()
            .all(|a| a.failure.reason == Reason::RateLimit);
    let (status, kind) = if all_rate_limited {
        (429, ErrorKind::RateLimit)
    } else {
        // The client's own errors went back above; what is left (Backstop's keys refused,
        // out of credit, servers down) is the gateway's trouble, not the client's.
        (503, ErrorKind::Overloaded)
    };
    let message = if lines.is_empty() {
        "no target could be tried".to_string()
    } else {
        format!("all targets failed: {}", lines.join("; "))
    };
    ChainError {
        error: ClientError::new(kind, message).with_status(status),
        passthrough: None,
        answered_by: None,
    }
}

/// Each attempt as `provider/model (profile): reason [status]`, then the targets that
/// were cooling down, the models that could not be tried and a spent retry budget.
fn attempt_lines(f: &ChainFailure) -> Vec<String> {
    let mut lines: Vec<String> = f
        .failed
        .iter()
        .map(|a| {
            let status = a
                .failure
                .status
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default();
            format!("{}: {}{status}", a.target, a.failure.reason)
        })
        .collect();
    for (t, until) in &f.cooling {
        lines.push(format!(
            "{t}: cooling down until {}",
            crate::clock::rfc3339(*until)
        ));
    }
    for (m, why) in &f.unusable {
        lines.push(format!("{m}: {why}"));
    }
    if f.budget_spent {
        lines.push("retry budget exhausted (too many retries in the last seconds)".to_string());
    }
    lines
}

/// The provider's raw error body, when it is in the client's own format.
fn same_format_body<'a>(
    ingress: WireFormat,
    upstream_of: &impl Fn(&str) -> Option<WireFormat>,
    last: &'a crate::failover::Attempt,
) -> Option<&'a Bytes> {
    let body = last.failure.raw_body.as_ref()?;
    if body.is_empty() || upstream_of(&last.target.model.provider) != Some(ingress) {
        return None;
    }
    // Only pass bytes through when they parse as an error of the client's format.
    let ok = match ingress {
        WireFormat::Anthropic => wire::anthropic::decode_error(body).is_some(),
        _ => wire::openai::decode_error(body).is_some(),
    };
    ok.then_some(body)
}

/// The provider's error body with `error.message` replaced (type, code, param kept).
fn with_message(body: &Bytes, message: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slot = v.get_mut("error")?.get_mut("message")?;
    if !slot.is_string() {
        return None;
    }
    *slot = serde_json::Value::String(message.to_string());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The OpenAI `code` for a client error translated from another format: the one
/// OpenAI itself uses for this reason, else the provider's own code unless it is a
/// bare number (Gemini's HTTP status).
fn client_code(a: &crate::failover::Attempt) -> Option<String> {
    match a.failure.reason {
        Reason::ContextOverflow => return Some("context_length_exceeded".to_string()),
        Reason::ModelNotFound => return Some("model_not_found".to_string()),
        _ => {}
    }
    a.failure
        .upstream
        .as_ref()
        .and_then(|u| u.code.clone())
        .filter(|c| !c.chars().all(|ch| ch.is_ascii_digit()))
}

/// The body of a complete (non-streaming) answer in the client's format.
pub fn complete_body(
    ingress: WireFormat,
    upstream: WireFormat,
    body: &Bytes,
    response: &chat::Response,
) -> Bytes {
    // Same format: the upstream's bytes as they came. Never for Gemini, which no
    // client speaks (a Gemini answer is always translated).
    if ingress == upstream && upstream != WireFormat::Gemini {
        return body.clone();
    }
    // Translated: the answer's id takes the client's format's shape.
    match ingress {
        WireFormat::Anthropic => {
            let mut v = wire::anthropic::encode_response(response);
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "id".into(),
                    wire::anthropic::message_id(&response.id).into(),
                );
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        _ => {
            let id = wire::openai::completion_id(&response.id);
            Bytes::from(wire::openai::encode_response_bytes_as(response, &id))
        }
    }
}

/// The in-band error a client sees when a stream fails after content reached it.
pub fn stream_failure_error(first_cause: &Failure) -> ClientError {
    let kind = match first_cause.reason {
        Reason::Timeout => ErrorKind::Timeout,
        Reason::Overloaded => ErrorKind::Overloaded,
        Reason::RateLimit => ErrorKind::RateLimit,
        _ => ErrorKind::Api,
    };
    ClientError::new(
        kind,
        format!(
            "the answer is incomplete: the upstream stream failed after partial output ({}: {})",
            first_cause.reason, first_cause.message
        ),
    )
}
