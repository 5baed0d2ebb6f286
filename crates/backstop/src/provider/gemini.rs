//! Google Gemini (the Generative Language API, `generateContent`).
//!
//! Wire types and conversions: [`crate::wire::gemini`].

use super::{TransportError, secret_header};
use crate::config::AuthProfile;
use http::HeaderMap;

/// The default base URL; without the API version, which [`endpoint`] appends.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The API version in the path.
pub const API_VERSION: &str = "v1beta";

/// `{base_url}/v1beta/models/{model}:generateContent`, or
/// `:streamGenerateContent?alt=sse` for a stream (server-sent events rather than
/// one long JSON array).
///
/// ```
/// use backstop::provider::gemini::{endpoint, DEFAULT_BASE_URL};
/// assert_eq!(
///     endpoint(DEFAULT_BASE_URL, "gemini-2.5-flash", true),
///     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
/// );
/// ```
pub fn endpoint(base_url: &str, model: &str, stream: bool) -> String {
    let base = base_url.trim_end_matches('/');
    // A catalogue may name models the way the API lists them (`models/gemini-…`).
    let model = model.strip_prefix("models/").unwrap_or(model);
    if stream {
        format!("{base}/{API_VERSION}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/{API_VERSION}/models/{model}:generateContent")
    }
}

/// Gemini takes the key in `x-goog-api-key` (never in the URL, where it would leak
/// into logs).
pub fn authorize(headers: &mut HeaderMap, profile: &AuthProfile) -> Result<(), TransportError> {
    if let Some(k) = &profile.key {
        headers.insert("x-goog-api-key", secret_header(k.expose())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_versioned_model_path() {
        assert_eq!(
            endpoint(DEFAULT_BASE_URL, "gemini-2.5-pro", false),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9/", "models/gemini-2.0-flash", true),
            "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
    }
}
