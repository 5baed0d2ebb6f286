//! Anthropic Messages.
//!
//! Wire types and conversions: [`crate::wire::anthropic`].

use super::{TransportError, secret_header};
use crate::config::AuthProfile;
use crate::wire::anthropic::API_VERSION;
use http::{HeaderMap, HeaderValue};

/// The default base URL; without the version, as the Anthropic SDKs expect.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// Used as `max_tokens` when a request names none (Anthropic requires it) and the
/// catalogue gives no `max_output_tokens` for the model.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// `{base_url}/v1/messages`.
pub fn endpoint(base_url: &str) -> String {
    format!("{base_url}/v1/messages")
}

/// Anthropic takes the key in `x-api-key`, with the API version header.
pub fn authorize(headers: &mut HeaderMap, profile: &AuthProfile) -> Result<(), TransportError> {
    headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    if let Some(k) = &profile.key {
        headers.insert("x-api-key", secret_header(k.expose())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_versioned_path() {
        assert_eq!(
            endpoint(DEFAULT_BASE_URL),
            "https://api.anthropic.com/v1/messages"
        );
    }
}
