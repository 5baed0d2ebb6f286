//! OpenAI and every OpenAI-compatible server (OpenRouter, vLLM, Ollama, LM Studio, …).
//!
//! Wire types and conversions: [`crate::wire::openai`].

use crate::config::AuthProfile;

/// The default base URL; it includes the API version, as the OpenAI SDKs expect.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// `{base_url}/chat/completions`.
pub fn endpoint(base_url: &str) -> String {
    format!("{base_url}/chat/completions")
}

/// OpenAI-style providers take the key as a bearer token.
pub fn authorize(rb: reqwest::RequestBuilder, profile: &AuthProfile) -> reqwest::RequestBuilder {
    match &profile.key {
        Some(k) => rb.bearer_auth(k.expose()),
        None => rb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
