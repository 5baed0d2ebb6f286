//! What Backstop knows about models beyond the config: context windows of
//! well-known models, and which targets accept an assistant prefill.
//!
//! The catalogue (`providers.<id>.models`) always wins; these figures fill gaps.

use crate::chat::WireFormat;
use crate::config::Config;

/// Built-in context windows, matched by prefix of the model id (longest prefix
/// first; a provider prefix like `anthropic/` in OpenRouter ids is ignored).
const CONTEXT_WINDOWS: &[(&str, u64)] = &[
    ("claude-3-5-haiku", 200_000),
    ("claude-3-5-sonnet", 200_000),
    ("claude-3-7-sonnet", 200_000),
    ("claude-3.5-sonnet", 200_000),
    ("claude-3.7-sonnet", 200_000),
    ("claude-haiku-4", 200_000),
    ("claude-opus-4", 200_000),
    ("claude-sonnet-4", 200_000),
    ("claude-3", 200_000),
    ("gemini-1.5-pro", 2_097_152),
    ("gemini-1.5-flash", 1_048_576),
    ("gemini-2.0-flash", 1_048_576),
    ("gemini-2.5-pro", 1_048_576),
    ("gemini-2.5-flash", 1_048_576),
    ("gpt-3.5-turbo", 16_385),
    ("gpt-4-turbo", 128_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("gpt-4", 8_192),
    ("gpt-5", 400_000),
    ("o1-mini", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
];

/// The context window of a built-in model id, when known.
pub fn builtin_context_window(model: &str) -> Option<u64> {
    let bare = model.rsplit('/').next().unwrap_or(model);
    CONTEXT_WINDOWS
        .iter()
        .filter(|(prefix, _)| bare.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, w)| *w)
}

/// The context window of `provider/model`: catalogue first, then built-in figures.
pub fn context_window(config: &Config, provider: &str, model: &str) -> Option<u64> {
    config
        .provider(provider)
        .and_then(|p| p.model(model))
        .and_then(|m| m.context_window)
        .or_else(|| builtin_context_window(model))
}

/// Whether `provider/model` accepts an assistant prefill (a trailing assistant
/// message that the answer continues): the catalogue's `prefill`, else the
/// provider's default — Anthropic's Messages API does; OpenAI's Chat Completions
/// does not (it answers a trailing assistant message with a new turn).
pub fn accepts_prefill(config: &Config, provider: &str, model: &str) -> bool {
    let Some(p) = config.provider(provider) else {
        return false;
    };
    p.model(model)
        .and_then(|m| m.prefill)
        .unwrap_or(p.api == WireFormat::Anthropic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(builtin_context_window("gpt-4o-mini"), Some(128_000));
        assert_eq!(builtin_context_window("gpt-4"), Some(8_192));
        assert_eq!(builtin_context_window("gpt-4.1-mini"), Some(1_047_576));
        assert_eq!(
            builtin_context_window("anthropic/claude-3.5-sonnet"),
            Some(200_000)
        );
        assert_eq!(builtin_context_window("llama-3-70b"), None);
    }
}
