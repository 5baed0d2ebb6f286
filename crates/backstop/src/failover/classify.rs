//! Classification: every failed attempt becomes a [`Failure`] here, and only here
//! (PRODUCT §3.1).
//!
//! One pure, table-driven function, `reason_for`, reads what the provider said —
//! its error code, type/status and detail reason, its message, the HTTP status — and
//! walks `RULES` top to bottom; the first row that matches names the reason. The
//! rows are grouped from the most to the least specific:
//!
//! 1. exact codes (`insufficient_quota`, `context_length_exceeded`, Gemini's
//!    `API_KEY_INVALID` detail, …): they say exactly what happened;
//! 2. message phrases ("credit balance is too low", "prompt is too long", …): they
//!    beat the status, since providers reuse 400/403/429 for many things;
//! 3. the HTTP status (for an in-band error, a numeric error code);
//! 4. generic error types (`invalid_request_error`, `RESOURCE_EXHAUSTED`, …), which
//!    only decide when there is no status, as inside a stream.
//!
//! Nothing matched means [`Reason::Unknown`]: returned to the client, never retried.
//! Messages pass through [`crate::failover::scrub`], since a provider may echo a key.

use super::failure::{Failure, Phase, Reason};
use crate::chat::{UpstreamErrorBody, WireFormat};
use crate::provider::TransportError;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The longest `Retry-After` taken from a provider; the engine caps it further.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest message kept in a [`Failure`] (upstream bodies can be long).
const MAX_MESSAGE_CHARS: usize = 1000;

/// What a row of [`RULES`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// The error's code, type/status or detail reason is exactly this (ASCII case-insensitive).
    Id(&'static str),
    /// The message contains this (matched lowercased, so written lowercase).
    Says(&'static str),
    /// The HTTP status — or, without an error status, a numeric error code — is in this range.
    Status(u16, u16),
    /// The error's generic type/status is this; the last resort, for in-band errors.
    Kind(&'static str),
}

use Reason as R;
use When::{Id, Kind, Says, Status};

/// The classification table, read top to bottom; the first matching row wins.
const RULES: &[(When, Reason)] = &[
    // 1. Exact codes.
    (Id("insufficient_quota"), R::Billing), // OpenAI, arrives as a 429
    (Id("billing_hard_limit_reached"), R::Billing),
    (Id("billing_not_active"), R::Billing),
    (Id("billing_error"), R::Billing), // Anthropic 402
    (Id("insufficient_credits"), R::Billing),
    (Id("account_deactivated"), R::AuthPermanent), // OpenAI
    (Id("unsupported_country_region_territory"), R::AuthPermanent),
    (Id("consumer_suspended"), R::AuthPermanent), // Gemini detail reason
    (Id("api_key_service_blocked"), R::AuthPermanent),
    (Id("service_disabled"), R::AuthPermanent),
    (Id("invalid_api_key"), R::Auth),          // OpenAI
    (Id("api_key_invalid"), R::Auth),          // Gemini detail reason, arrives as a 400
    (Id("model_not_found"), R::ModelNotFound), // OpenAI 404, and 403 "no access to model"
    (Id("context_length_exceeded"), R::ContextOverflow),
    (Id("content_policy_violation"), R::ContentPolicy),
    (Id("content_filter"), R::ContentPolicy), // Azure OpenAI
    (Id("rate_limit_exceeded"), R::RateLimit),
    (Id("rate_limit_error"), R::RateLimit),  // Anthropic
    (Id("overloaded_error"), R::Overloaded), // Anthropic 529, also in streams
    (Id("engine_overloaded_error"), R::Overloaded),
    // 2. Message phrases. Billing first: some billing messages mention limits.
    (Says("insufficient_quota"), R::Billing), // inside OpenRouter's `metadata.raw`
    (Says("credit balance is too low"), R::Billing), // Anthropic 400
    (Says("insufficient credits"), R::Billing), // OpenRouter 402
    (Says("requires more credits"), R::Billing),
    (Says("credits are depleted"), R::Billing), // Gemini prepayment
    (Says("insufficient balance"), R::Billing),
    (Says("reached your specified api usage limits"), R::Billing), // Anthropic spend limit
    (Says("billing hard limit"), R::Billing),
    (Says("enable billing"), R::Billing), // Gemini free tier unavailable
    (Says("deactivated account"), R::AuthPermanent),
    (Says("has been deactivated"), R::AuthPermanent),
    (Says("organization has been disabled"), R::AuthPermanent), // Anthropic
    (Says("account has been disabled"), R::AuthPermanent),
    (Says("key has been disabled"), R::AuthPermanent),
    (Says("key has been revoked"), R::AuthPermanent),
    (Says("organization has been restricted"), R::AuthPermanent),
    (Says("has been suspended"), R::AuthPermanent), // Gemini consumer
    (Says("reported as leaked"), R::AuthPermanent), // Gemini
    (Says("user location is not supported"), R::AuthPermanent), // Gemini region
    (Says("model_not_found"), R::ModelNotFound),
    (
        Says("does not exist or you do not have access to it"),
        R::ModelNotFound,
    ),
    (Says("does not have access to model"), R::ModelNotFound), // OpenAI 403
    (Says("does not have access to the model"), R::ModelNotFound),
    (Says("do not have access to the model"), R::ModelNotFound),
    (Says("not allowed to access model"), R::ModelNotFound),
    (Says("is not found for api version"), R::ModelNotFound), // Gemini 404
    (Says("is not a valid model"), R::ModelNotFound),         // OpenRouter
    (Says("no endpoints found"), R::ModelNotFound),           // OpenRouter
    (Says("context_length_exceeded"), R::ContextOverflow),
    (Says("prompt is too long"), R::ContextOverflow), // Anthropic
    (Says("maximum context length"), R::ContextOverflow), // OpenAI, vLLM, Mistral
    (
        Says("exceeds the maximum number of tokens"),
        R::ContextOverflow,
    ), // Gemini
    (Says("exceeds the context window"), R::ContextOverflow),
    (
        Says("exceeds the available context size"),
        R::ContextOverflow,
    ), // llama.cpp
    (Says("input is too long"), R::ContextOverflow),
    (Says("content_policy_violation"), R::ContentPolicy),
    (
        Says("rejected as a result of our safety system"),
        R::ContentPolicy,
    ), // OpenAI
    (Says("rejected by the safety system"), R::ContentPolicy),
    (Says("flagged as potentially violating"), R::ContentPolicy), // OpenAI invalid_prompt
    (Says("content management policy"), R::ContentPolicy),        // Azure
    (Says("content filtering policy"), R::ContentPolicy),         // Anthropic
    (Says("input was flagged"), R::ContentPolicy),                // OpenRouter moderation 403
    (Says("violates usage guidelines"), R::ContentPolicy),
    (Says("api key not valid"), R::Auth), // Gemini, arrives as a 400
    (Says("api key expired"), R::Auth),
    (Says("invalid api key"), R::Auth),
    (Says("incorrect api key"), R::Auth),
    (Says("invalid x-api-key"), R::Auth), // Anthropic
    (Says("rate limit"), R::RateLimit),
    (Says("rate-limited"), R::RateLimit), // OpenRouter upstream pool
    (Says("too many requests"), R::RateLimit),
    (Says("overloaded"), R::Overloaded), // OpenAI 503, Gemini 503
    (Says("at capacity"), R::Overloaded),
    // 3. The status.
    (Status(400, 400), R::BadRequest),
    (Status(401, 401), R::Auth),
    (Status(402, 402), R::Billing),
    (Status(403, 403), R::Auth), // PRODUCT §8: unless the body said otherwise above
    (Status(404, 404), R::ModelNotFound),
    (Status(408, 408), R::Timeout),
    (Status(413, 413), R::BadRequest),
    (Status(422, 422), R::BadRequest),
    (Status(429, 429), R::RateLimit),
    (Status(503, 503), R::Overloaded),
    (Status(529, 529), R::Overloaded), // Anthropic
    (Status(504, 504), R::Timeout),
    (Status(500, 599), R::ServerError), // 500, 502 and the rest
    // 4. Generic types: Anthropic `type`, OpenAI `type`, Gemini `status`.
    (Kind("invalid_request_error"), R::BadRequest),
    (Kind("authentication_error"), R::Auth),
    (Kind("permission_error"), R::Auth),
    (Kind("not_found_error"), R::ModelNotFound),
    (Kind("timeout_error"), R::Timeout),
    (Kind("api_error"), R::ServerError),
    (Kind("server_error"), R::ServerError),
    (Kind("requests"), R::RateLimit), // OpenAI rate-limit types
    (Kind("tokens"), R::RateLimit),
    (Kind("RESOURCE_EXHAUSTED"), R::RateLimit),
    (Kind("UNAVAILABLE"), R::Overloaded),
    (Kind("DEADLINE_EXCEEDED"), R::Timeout),
    (Kind("INTERNAL"), R::ServerError),
    (Kind("INVALID_ARGUMENT"), R::BadRequest),
    (Kind("FAILED_PRECONDITION"), R::BadRequest),
    (Kind("OUT_OF_RANGE"), R::BadRequest),
    (Kind("UNAUTHENTICATED"), R::Auth),
    (Kind("PERMISSION_DENIED"), R::Auth),
    (Kind("NOT_FOUND"), R::ModelNotFound),
];

/// What the classifier reads from one failure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Evidence {
    /// The HTTP status when it is an error status, else a numeric error code.
    status: Option<u16>,
    code: String,
    kind: String,
    /// A detail reason (Gemini `details[].reason`).
    detail: String,
    /// The message, lowercased.
    message: String,
}

impl Evidence {
    fn new(http_status: Option<u16>, err: Option<&UpstreamErrorBody>, detail: &str) -> Self {
        let code = err.and_then(|e| e.code.clone()).unwrap_or_default();
        let numeric = code.parse::<u16>().ok().filter(|c| is_error_status(*c));
        Evidence {
            status: http_status
                .filter(|s| is_error_status(*s))
                .or(numeric)
                .or(http_status),
            kind: err.and_then(|e| e.kind.clone()).unwrap_or_default(),
            message: err.map(|e| e.message.to_lowercase()).unwrap_or_default(),
            detail: detail.to_string(),
            code,
        }
    }

    fn matches(&self, when: When) -> bool {
        match when {
            Id(id) => [&self.code, &self.kind, &self.detail]
                .iter()
                .any(|f| f.eq_ignore_ascii_case(id)),
            Says(text) => self.message.contains(text),
            Status(lo, hi) => self.status.is_some_and(|s| (lo..=hi).contains(&s)),
            Kind(kind) => self.kind.eq_ignore_ascii_case(kind),
        }
    }
}

fn is_error_status(s: u16) -> bool {
    (400..=599).contains(&s)
}

/// The reason the table gives, if any row matches.
fn reason_for(e: &Evidence) -> Option<Reason> {
    RULES
        .iter()
        .find(|(when, _)| e.matches(*when))
        .map(|(_, reason)| *reason)
}

/// Classify an HTTP error response, given its `Retry-After` header value.
///
/// ```
/// use backstop::failover::{classify::classify_status, Reason};
/// use backstop::WireFormat;
/// let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// let f = classify_status(WireFormat::Anthropic, 529, Some("3"), body.as_slice().into());
/// assert_eq!(f.reason, Reason::Overloaded);
/// assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(3)));
/// ```
pub fn classify_status(
    format: WireFormat,
    status: u16,
    retry_after: Option<&str>,
    body: Bytes,
) -> Failure {
    let mut headers = HeaderMap::new();
    if let Some(v) = retry_after.and_then(|v| http::HeaderValue::from_str(v).ok()) {
        headers.insert(http::header::RETRY_AFTER, v);
    }
    classify_status_with(format, status, &headers, body)
}

/// Classify an HTTP error response with all its headers (`retry-after-ms`, `retry-after`).
pub fn classify_status_with(
    format: WireFormat,
    status: u16,
    headers: &HeaderMap,
    body: Bytes,
) -> Failure {
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let upstream = json.as_ref().and_then(|v| decode_error(format, v, &body));
    let (detail, retry_delay) = json.as_ref().map(google_details).unwrap_or_default();
    // A plain-text body (a proxy's "upstream connect error") is read as a bare message.
    let said = upstream.clone().or_else(|| {
        plain_text(&body).map(|message| UpstreamErrorBody {
            message,
            ..UpstreamErrorBody::default()
        })
    });
    let evidence = Evidence::new(Some(status), said.as_ref(), &detail);
    let reason = reason_for(&evidence).unwrap_or(R::Unknown);
    let message = match said.as_ref().map(|e| e.message.trim()) {
        Some(m) if !m.is_empty() => one_line(m),
        _ => match http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            Some(why) => format!("HTTP {status} {why}"),
            None => format!("HTTP {status}"),
        },
    };
    let retry_after = header_retry_after(headers)
        .or(retry_delay)
        .or_else(|| retry_in_message(&evidence.message));
    Failure {
        reason,
        phase: Phase::Status,
        status: Some(status),
        message,
        retry_after,
        upstream: upstream.map(scrub_body_error),
        raw_body: Some(scrub_bytes(body)),
        silent: false,
    }
}

/// Classify a transport failure (no response head). Connect errors, connect timeouts
/// and resets are all `timeout` (PRODUCT §3.1).
pub fn classify_transport(err: &TransportError) -> Failure {
    let reason = match err {
        TransportError::Connect(_)
        | TransportError::ConnectTimeout
        | TransportError::Reset(_)
        | TransportError::Other(_) => R::Timeout,
    };
    let mut f = Failure::new(reason, Phase::Transport, one_line(&err.to_string()));
    // A connect that timed out is silence; a refusal or a reset is an answer of sorts.
    f.silent = matches!(err, TransportError::ConnectTimeout);
    f
}

/// Classify an error event inside a stream. Without other evidence an in-band error
/// is a `server_error`: the provider accepted the request and then failed it.
pub fn classify_stream_error(err: &UpstreamErrorBody, committed: bool) -> Failure {
    let evidence = Evidence::new(None, Some(err), "");
    let phase = if committed {
        Phase::StreamAfterCommit
    } else {
        Phase::StreamBeforeCommit
    };
    let message = if err.message.trim().is_empty() {
        "the upstream stream reported an error".to_string()
    } else {
        one_line(&err.message)
    };
    let mut f = Failure::new(
        reason_for(&evidence).unwrap_or(R::ServerError),
        phase,
        message,
    );
    f.retry_after = err
        .retry_after
        .or_else(|| retry_in_message(&evidence.message));
    f.upstream = Some(scrub_body_error(err.clone()));
    f
}

/// The client went away: not an upstream failure, never retried.
pub fn aborted(phase: Phase) -> Failure {
    Failure::new(R::Aborted, phase, "the client went away")
}

/// `Retry-After` as delta-seconds or an HTTP date (relative to now), capped at
/// [`MAX_RETRY_AFTER`]; a date in the past is zero.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, SystemTime::now())
}

/// [`parse_retry_after`] with an explicit "now", for tests and replay.
pub fn parse_retry_after_at(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if v.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        return seconds(v.parse::<f64>().ok()?);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// `retry-after-ms` (OpenAI) first, then `retry-after`.
fn header_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    get("retry-after-ms")
        .and_then(|ms| ms.trim().parse::<f64>().ok())
        .and_then(|ms| seconds(ms / 1000.0))
        .or_else(|| get("retry-after").and_then(parse_retry_after))
}

/// "Please try again in 6s." (OpenAI), "Please retry in 53.01s." (Gemini).
fn retry_in_message(lowercase: &str) -> Option<Duration> {
    ["try again in ", "retry in "].iter().find_map(|p| {
        let at = lowercase.find(p)? + p.len();
        let token = lowercase[at..].split_whitespace().next()?;
        parse_duration(token.trim_end_matches(['.', ',', ';', ')']))
    })
}

/// A duration written as number-unit pairs: "17s", "644ms", "1m12.5s", "0.5s".
fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        total += n * match &rest[..u_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u_end..];
    }
    seconds(total)
}

/// The provider's error, read in its own format first, then in the others.
fn decode_error(format: WireFormat, v: &Value, body: &[u8]) -> Option<UpstreamErrorBody> {
    let anthropic = || crate::wire::anthropic::decode_error(body);
    let openai = || crate::wire::openai::decode_error(body);
    match format {
        WireFormat::Anthropic => anthropic().or_else(openai),
        WireFormat::OpenAi => openai().or_else(anthropic),
        WireFormat::Gemini => decode_gemini_error(v).or_else(openai).or_else(anthropic),
    }
}

/// A Gemini error body: `{"error":{"code":429,"message","status":"RESOURCE_EXHAUSTED",
/// "details":[…]}}`, also wrapped in an array (as `streamGenerateContent` answers).
/// A `RetryInfo` detail's `retryDelay` is its `retry_after` (an error status body and
/// an in-band stream error alike).
pub fn decode_gemini_error(v: &Value) -> Option<UpstreamErrorBody> {
    let err = gemini_error_object(v)?;
    let message = err.get("message").and_then(Value::as_str)?.to_string();
    let code = match err.get("code") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Some(UpstreamErrorBody {
        kind: err
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string),
        code,
        message,
        retry_after: google_details(v).1,
    })
}

fn gemini_error_object(v: &Value) -> Option<&serde_json::Map<String, Value>> {
    let v = match v {
        Value::Array(items) => items.first()?,
        other => other,
    };
    v.get("error")?.as_object()
}

/// Google's `details[]`: the `ErrorInfo` reason and the `RetryInfo` delay ("17s").
fn google_details(v: &Value) -> (String, Option<Duration>) {
    let details = gemini_error_object(v)
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array);
    let mut reason = String::new();
    let mut delay = None;
    for d in details.into_iter().flatten() {
        if reason.is_empty()
            && let Some(r) = d.get("reason").and_then(Value::as_str)
        {
            reason = r.to_string();
        }
        if delay.is_none() {
            delay = d
                .get("retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_duration);
        }
    }
    (reason, delay)
}

/// A non-JSON body worth reading (plain text, not an HTML page).
fn plain_text(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    (!text.is_empty() && !text.starts_with('<')).then(|| text.to_string())
}

/// One line, free of secrets, of bounded length.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let clean = crate::failover::scrub(&flat);
    match clean.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

fn scrub_body_error(mut e: UpstreamErrorBody) -> UpstreamErrorBody {
    e.message = crate::failover::scrub(&e.message);
    e
}

/// The raw body with key-shaped words replaced (it may be passed through to the client).
fn scrub_bytes(body: Bytes) -> Bytes {
    match std::str::from_utf8(&body) {
        Ok(text) => {
            let clean = crate::failover::scrub(text);
            if clean == text {
                body
            } else {
                Bytes::from(clean)
            }
        }
        Err(_) => body,
    }
}

#[cfg(test)]
mod tests;
