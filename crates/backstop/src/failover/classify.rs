//! Classification: every failed attempt becomes a [`Failure`] here, and only here.
//!
//! A pure function of what the provider sent: status, error type/code, message,
//! `Retry-After`. Unknown shapes become [`Reason::Unknown`], which is returned to
//! the client rather than retried.

use super::failure::{Failure, Phase, Reason};
use crate::chat::{UpstreamErrorBody, WireFormat};
use crate::provider::TransportError;
use bytes::Bytes;
use std::time::Duration;

/// Classify an HTTP error response.
pub fn classify_status(
    format: WireFormat,
    status: u16,
    retry_after: Option<&str>,
    body: Bytes,
) -> Failure {
    let upstream = decode_error(format, &body);
    let reason = reason_for(status, upstream.as_ref());
    let message = match &upstream {
        Some(u) if !u.message.is_empty() => u.message.clone(),
        _ => format!("HTTP {status}"),
    };
    Failure {
        reason,
        phase: Phase::Status,
        status: Some(status),
        message: crate::failover::scrub(&message),
        retry_after: retry_after.and_then(parse_retry_after),
        upstream,
        raw_body: Some(body),
    }
}

/// Classify a transport failure (no response head).
pub fn classify_transport(err: &TransportError) -> Failure {
    Failure::new(Reason::Timeout, Phase::Transport, err.to_string())
}

/// Classify an error event inside a stream.
pub fn classify_stream_error(err: &UpstreamErrorBody, committed: bool) -> Failure {
    let status = match err.kind.as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        _ => 500,
    };
    let mut f = Failure::new(
        reason_for(status, Some(err)),
        if committed {
            Phase::StreamAfterCommit
        } else {
            Phase::StreamBeforeCommit
        },
        crate::failover::scrub(&err.message),
    );
    f.upstream = Some(err.clone());
    f
}

fn decode_error(format: WireFormat, body: &[u8]) -> Option<UpstreamErrorBody> {
    match format {
        WireFormat::Anthropic => crate::wire::anthropic::decode_error(body),
        _ => crate::wire::openai::decode_error(body),
    }
    .or_else(|| crate::wire::openai::decode_error(body))
}

/// The reason for a status and error body (a first cut; the full table comes with the failover engine).
fn reason_for(status: u16, err: Option<&UpstreamErrorBody>) -> Reason {
    let kind = err.and_then(|e| e.kind.as_deref()).unwrap_or("");
    let code = err.and_then(|e| e.code.as_deref()).unwrap_or("");
    let msg = err
        .map(|e| e.message.to_ascii_lowercase())
        .unwrap_or_default();
    if code == "insufficient_quota"
        || kind == "insufficient_quota"
        || msg.contains("credit balance")
    {
        return Reason::Billing;
    }
    if code == "context_length_exceeded" || msg.contains("prompt is too long") {
        return Reason::ContextOverflow;
    }
    if code == "content_policy_violation" || code == "content_filter" {
        return Reason::ContentPolicy;
    }
    if kind == "overloaded_error" {
        return Reason::Overloaded;
    }
    match status {
        429 => Reason::RateLimit,
        401 => Reason::Auth,
        402 => Reason::Billing,
        403 => Reason::Auth,
        404 => Reason::ModelNotFound,
        408 | 504 => Reason::Timeout,
        413 => Reason::BadRequest,
        529 | 503 => Reason::Overloaded,
        400 | 422 => Reason::BadRequest,
        500..=599 => Reason::ServerError,
        _ => Reason::Unknown,
    }
}

/// `Retry-After` as seconds or an HTTP date (relative to now).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
        return None;
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn statuses_map_to_reasons() {
        assert_eq!(reason_for(429, None), Reason::RateLimit);
        assert_eq!(reason_for(503, None), Reason::Overloaded);
        assert_eq!(reason_for(500, None), Reason::ServerError);
        assert_eq!(reason_for(401, None), Reason::Auth);
        assert_eq!(reason_for(400, None), Reason::BadRequest);
        assert_eq!(reason_for(302, None), Reason::Unknown);
        let quota = UpstreamErrorBody {
            kind: Some("insufficient_quota".into()),
            code: Some("insufficient_quota".into()),
            message: "You exceeded your current quota".into(),
        };
        assert_eq!(reason_for(429, Some(&quota)), Reason::Billing);
    }
}
