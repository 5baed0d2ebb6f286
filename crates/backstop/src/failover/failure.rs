//! What went wrong in one attempt, classified once ([`super::classify`]).

use crate::chat::UpstreamErrorBody;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The reasons of PRODUCT §3.1, spelled as in `auth-state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    RateLimit,
    Overloaded,
    Timeout,
    ServerError,
    Auth,
    AuthPermanent,
    Billing,
    ModelNotFound,
    ContextOverflow,
    ContentPolicy,
    BadRequest,
    Aborted,
    /// Not recognised: returned to the client as is, never retried.
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate_limit",
            Reason::Overloaded => "overloaded",
            Reason::Timeout => "timeout",
            Reason::ServerError => "server_error",
            Reason::Auth => "auth",
            Reason::AuthPermanent => "auth_permanent",
            Reason::Billing => "billing",
            Reason::ModelNotFound => "model_not_found",
            Reason::ContextOverflow => "context_overflow",
            Reason::ContentPolicy => "content_policy",
            Reason::BadRequest => "bad_request",
            Reason::Aborted => "aborted",
            Reason::Unknown => "unknown",
        }
    }

    /// A few words for the one-line fallback notice: "rate limited", "overloaded", …
    pub fn describe(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate limited",
            Reason::Overloaded => "overloaded",
            Reason::Timeout => "timed out",
            Reason::ServerError => "server error",
            Reason::Auth => "key rejected",
            Reason::AuthPermanent => "key revoked",
            Reason::Billing => "out of credit",
            Reason::ModelNotFound => "model not found",
            Reason::ContextOverflow => "context too long",
            Reason::ContentPolicy => "content policy",
            Reason::BadRequest => "bad request",
            Reason::Aborted => "aborted",
            Reason::Unknown => "failed",
        }
    }

    /// The request's own fault, not the target's: a refusal, a bad or too long request,
    /// or the client going away. Such a failure says nothing of the target's health.
    pub fn is_request_fault(self) -> bool {
        matches!(
            self,
            Reason::ContextOverflow | Reason::ContentPolicy | Reason::BadRequest | Reason::Aborted
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the failure was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any response head (connect, reset, no answer).
    Transport,
    /// An HTTP error status with a body.
    Status,
    /// A 2xx whose body was not a valid answer (garbage, wrong content type).
    Body,
    /// Inside a stream, before anything reached the client.
    StreamBeforeCommit,
    /// Inside a stream, after content reached the client.
    StreamAfterCommit,
}

/// One classified failure.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub phase: Phase,
    /// The upstream HTTP status, when there was one.
    pub status: Option<u16>,
    /// A one-line description (already free of secrets).
    pub message: String,
    /// The provider's `Retry-After`, when given.
    pub retry_after: Option<Duration>,
    /// The provider's error, as it described it.
    pub upstream: Option<UpstreamErrorBody>,
    /// The provider's raw error body, for same-format passthrough to the client.
    pub raw_body: Option<Bytes>,
    /// The upstream said nothing in time (no response, no first token, a stall): such a
    /// route is not retried, only failed over. Refused or reset connections are not silent.
    pub silent: bool,
}

impl Failure {
    pub fn new(reason: Reason, phase: Phase, message: impl Into<String>) -> Self {
        Failure {
            reason,
            phase,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream: None,
            raw_body: None,
            silent: false,
        }
    }

    /// A timeout in which the upstream said nothing.
    pub fn silence(phase: Phase, message: impl Into<String>) -> Self {
        let mut f = Failure::new(Reason::Timeout, phase, message);
        f.silent = true;
        f
    }
}
