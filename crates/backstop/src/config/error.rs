//! Configuration errors: each names its file, key path and what would be valid.

use std::fmt;

/// One problem in a config, at a key path such as `providers.openai.auth[0].key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in (or `environment` for a config built from variables).
    pub file: String,
    /// The key path; empty for whole-file problems (not found, syntax errors).
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: String::new(),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one pass over a config. `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = ConfigError::new(path, message);
        e.file = file.to_string();
        ConfigErrors(vec![e])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_one_per_line() {
        let mut a = ConfigError::new("retry.max_attempts", "must be at least 1; got 0");
        a.file = "backstop.json5".into();
        let mut b = ConfigError::new("", "syntax error");
        b.file = "backstop.json5".into();
        let errs = ConfigErrors(vec![a, b]);
        assert_eq!(
            errs.to_string(),
            "backstop.json5: retry.max_attempts: must be at least 1; got 0\nbackstop.json5: syntax error"
        );
        assert_eq!(errs.len(), 2);
    }
}
