//! The failover engine: plan → execute → classify → decide.
//!
//! - [`plan`]: which (provider, model, profile) targets a request tries, in order;
//! - [`execute`]: tries them, holding streams back until their first content;
//! - [`classify`]: turns whatever came back into one [`Failure`];
//! - [`decide`]: what a failure means for the rest of the plan.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod cooldown;
pub mod cooldowns;
pub mod decide;
pub mod execute;
pub mod failure;
pub mod plan;
pub mod relay;
pub mod session;
pub mod stream;

pub use execute::{Answer, Attempt, Call, ChainFailure, Engine, RawBody, Success};
pub use failure::{Failure, Phase, Reason};
pub use plan::{AttemptPlan, Target};

/// Remove anything key-shaped from a text that came from outside (an upstream error
/// message may echo a key back): `sk-…`, `sk_…`, `AIza…`, `xai-…`, `gsk_…`, `AKIA…`.
pub fn scrub(text: &str) -> String {
    const PREFIXES: [&str; 7] = ["sk-", "sk_", "AIza", "xai-", "gsk_", "AKIA", "pk-"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for p in PREFIXES {
            if rest.starts_with(p) && at_word_start(text, rest) {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(rest.len());
                if len >= 16 {
                    out.push_str(&crate::secret::redact(&rest[..len]));
                    rest = &rest[len..];
                    continue 'outer;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

fn at_word_start(full: &str, rest: &str) -> bool {
    let start = full.len() - rest.len();
    full[..start]
        .chars()
        .next_back()
        .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrub_hides_key_shaped_words() {
        let s = super::scrub(
            "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz1234. See docs",
        );
        assert_eq!(s, "Incorrect API key provided: sk-…1234. See docs");
        assert_eq!(super::scrub("task-manager ok"), "task-manager ok");
        assert_eq!(super::scrub("short sk-abc"), "short sk-abc");
        assert!(!super::scrub("key=AIzaSyDaaaaaaaaaaaaaaaaaaaaaaaaa").contains("aaaaaaaa"));
    }
}
