//! Error kinds, named in either provider's words, shared by every format's
//! error-body generator.

/// What went wrong, independent of the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrKind {
    RateLimit,
    /// Credit or quota exhausted (OpenAI `insufficient_quota`, Anthropic credit balance).
    Quota,
    Auth,
    Permission,
    ContextLength,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    Server,
    Overloaded,
    /// A plain 503.
    Unavailable,
    /// A kind the table does not know: used verbatim as the type/code.
    Other(String),
}

impl ErrKind {
    /// The kind a step names, else the one its status implies.
    pub(crate) fn resolve(kind: Option<&str>, status: u16) -> ErrKind {
        match kind {
            Some(k) => Self::from_name(k),
            None => Self::from_status(status),
        }
    }

    fn from_name(name: &str) -> ErrKind {
        match name {
            "rate_limit" | "rate_limit_exceeded" | "rate_limit_error" => ErrKind::RateLimit,
            "quota" | "insufficient_quota" | "billing" | "billing_error" => ErrKind::Quota,
            "auth" | "invalid_api_key" | "authentication_error" => ErrKind::Auth,
            "permission" | "permission_error" => ErrKind::Permission,
            "context_overflow" | "context_length" | "context_length_exceeded" => {
                ErrKind::ContextLength
            }
            "bad_request" | "invalid_request" | "invalid_request_error" => ErrKind::InvalidRequest,
            "not_found" | "not_found_error" | "model_not_found" => ErrKind::NotFound,
            "request_too_large" => ErrKind::RequestTooLarge,
            "server" | "server_error" | "api_error" => ErrKind::Server,
            "overloaded" | "overloaded_error" => ErrKind::Overloaded,
            "unavailable" | "service_unavailable" => ErrKind::Unavailable,
            other => ErrKind::Other(other.to_string()),
        }
    }

    fn from_status(status: u16) -> ErrKind {
        match status {
            401 => ErrKind::Auth,
            402 => ErrKind::Quota,
            403 => ErrKind::Permission,
            404 => ErrKind::NotFound,
            413 => ErrKind::RequestTooLarge,
            429 => ErrKind::RateLimit,
            503 => ErrKind::Unavailable,
            529 => ErrKind::Overloaded,
            500..=599 => ErrKind::Server,
            _ => ErrKind::InvalidRequest,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_in_either_vocabulary() {
        assert_eq!(
            ErrKind::resolve(Some("rate_limit_error"), 0),
            ErrKind::RateLimit
        );
        assert_eq!(
            ErrKind::resolve(Some("rate_limit_exceeded"), 0),
            ErrKind::RateLimit
        );
        assert_eq!(
            ErrKind::resolve(Some("insufficient_quota"), 429),
            ErrKind::Quota
        );
        assert_eq!(
            ErrKind::resolve(Some("overloaded_error"), 0),
            ErrKind::Overloaded
        );
        assert_eq!(
            ErrKind::resolve(Some("weird_error"), 418),
            ErrKind::Other("weird_error".into())
        );
    }

    #[test]
    fn status_defaults() {
        assert_eq!(ErrKind::resolve(None, 429), ErrKind::RateLimit);
        assert_eq!(ErrKind::resolve(None, 529), ErrKind::Overloaded);
        assert_eq!(ErrKind::resolve(None, 503), ErrKind::Unavailable);
        assert_eq!(ErrKind::resolve(None, 502), ErrKind::Server);
        assert_eq!(ErrKind::resolve(None, 400), ErrKind::InvalidRequest);
        assert_eq!(ErrKind::resolve(None, 401), ErrKind::Auth);
    }
}
