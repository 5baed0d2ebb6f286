//! OpenAI and every OpenAI-compatible server (OpenRouter, vLLM, Ollama, LM Studio, …).
//!
//! Wire types and conversions: [`crate::wire::openai`].

use super::{TransportError, secret_header};
use crate::config::AuthProfile;
use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The default base URL; it includes the API version, as the OpenAI SDKs expect.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// `{base_url}/chat/completions`.
pub fn endpoint(base_url: &str) -> String {
    format!("{base_url}/chat/completions")
}

/// Whether this OpenAI-compatible server accepts `stream_options` (asking for usage in a
/// stream). Most do; a few strict APIs reject unknown request fields, and send usage in
/// their last chunk anyway.
pub fn accepts_stream_options(base_url: &str) -> bool {
    const STRICT: [&str; 1] = ["api.mistral.ai"];
    let host = base_url
        .split("://")
        .nth(1)
        .unwrap_or(base_url)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    !STRICT.contains(&host)
}

/// OpenAI-style providers take the key as a bearer token.
pub fn authorize(headers: &mut HeaderMap, profile: &AuthProfile) -> Result<(), TransportError> {
    if let Some(k) = &profile.key {
        // `format!` costs more than the copy (this runs on every request).
        let key = k.expose();
        let mut value = String::with_capacity(7 + key.len());
        value.push_str("Bearer ");
        value.push_str(key);
        headers.insert(AUTHORIZATION, secret_header(&value)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_everywhere_but_strict_apis() {
        assert!(accepts_stream_options(DEFAULT_BASE_URL));
        assert!(accepts_stream_options("http://127.0.0.1:11434/v1"));
        assert!(!accepts_stream_options("https://api.mistral.ai/v1"));
    }

    #[test]
    fn endpoint_appends_path_to_versioned_base() {
        assert_eq!(
            endpoint("https://openrouter.ai/api/v1"),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(
            endpoint(DEFAULT_BASE_URL),
            "https://api.openai.com/v1/chat/completions"
        );
    }
}
