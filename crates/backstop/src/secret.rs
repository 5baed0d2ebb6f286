//! Secrets: API keys held so they never print.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// Where a secret came from, for `backstop check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `$VAR` / `${VAR}`.
    Env(String),
    /// `file:PATH`.
    File(String),
    /// Written into the config file as is (`check` warns).
    Literal,
}

/// An API key. `Debug` and `Display` show only the redacted form (`sk-…abcd`).
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    source: SecretSource,
}

impl Secret {
    pub fn new(value: impl Into<String>, source: SecretSource) -> Self {
        Secret {
            value: SecretString::from(value.into()),
            source,
        }
    }

    /// The key itself. Call only where the upstream header is built.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// `sk-…abcd`: the key's prefix up to its first dash (if short) and its last four characters.
    pub fn redacted(&self) -> String {
        redact(self.expose())
    }

    /// Constant-time comparison with a candidate key (for client authentication).
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        ct_eq(self.expose().as_bytes(), candidate)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Redact a key for display: `sk-…abcd`. Keys shorter than 12 characters show only `…`
/// plus at most their last two characters, so a short key is never mostly revealed.
pub fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        return format!("…{tail}");
    }
    let prefix: String = match key.find('-') {
        Some(i) if i <= 6 => key[..=i].to_string(),
        _ => String::new(),
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// Compare two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_middle() {
        assert_eq!(redact("sk-proj-abcdefghijklmnop1234"), "sk-…1234");
        assert_eq!(redact("sk-ant-api03-xxxxxxxxxxxxxxxxWXYZ"), "sk-…WXYZ");
        assert_eq!(redact("AIzaSyD-aaaaaaaaaaaaaaaa9876"), "…9876");
        assert_eq!(redact("short"), "…rt");
        let s = Secret::new("sk-secretsecretsecret-9999", SecretSource::Literal);
        assert!(!format!("{s:?}").contains("secretsecret"));
        assert!(!format!("{s}").contains("secretsecret"));
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }
}
