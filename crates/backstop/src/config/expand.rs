//! Secret and variable expansion: `$VAR`, `${VAR}`, `file:PATH`, `~`.

use super::env::Env;
use crate::secret::{Secret, SecretSource};
use std::path::{Path, PathBuf};

/// Why a secret reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretProblem {
    /// `$VAR` whose variable is unset or empty.
    Unset(String),
    /// `file:PATH` that could not be read (or is empty).
    File { path: String, reason: String },
}

impl std::fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretProblem::Unset(v) => write!(f, "environment variable {v} is not set"),
            SecretProblem::File { path, reason } => {
                write!(f, "cannot read key file {path}: {reason}")
            }
        }
    }
}

/// If `s` is exactly `$NAME` or `${NAME}`, the name.
pub(crate) fn var_ref(s: &str) -> Option<&str> {
    let name = if let Some(inner) = s.strip_prefix("${") {
        inner.strip_suffix('}')?
    } else {
        s.strip_prefix('$')?
    };
    is_var_name(name).then_some(name)
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Expand `~` and `~/…` with the home directory; relative paths are taken from `base`.
pub(crate) fn expand_path(
    raw: &str,
    env: &dyn Env,
    base: Option<&Path>,
) -> Result<PathBuf, String> {
    let path = if raw == "~" || raw.starts_with("~/") {
        let home = env
            .home()
            .ok_or_else(|| format!("cannot expand \"{raw}\": no home directory is known"))?;
        if raw == "~" {
            home
        } else {
            home.join(&raw[2..])
        }
    } else {
        PathBuf::from(raw)
    };
    Ok(match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path,
    })
}

/// Read a secret written as `$VAR`, `${VAR}`, `file:PATH` or a literal.
pub(crate) fn secret(
    raw: &str,
    env: &dyn Env,
    base: Option<&Path>,
) -> Result<Secret, SecretProblem> {
    if let Some(name) = var_ref(raw) {
        return match env.var(name) {
            Some(v) if !v.trim().is_empty() => {
                Ok(Secret::new(v.trim(), SecretSource::Env(name.to_string())))
            }
            _ => Err(SecretProblem::Unset(name.to_string())),
        };
    }
    if let Some(p) = raw.strip_prefix("file:") {
        let path = expand_path(p, env, base).map_err(|reason| SecretProblem::File {
            path: p.to_string(),
            reason,
        })?;
        let shown = path.display().to_string();
        return match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                Ok(Secret::new(text.trim(), SecretSource::File(shown)))
            }
            Ok(_) => Err(SecretProblem::File {
                path: shown,
                reason: "the file is empty".into(),
            }),
            Err(e) => Err(SecretProblem::File {
                path: shown,
                reason: e.to_string(),
            }),
        };
    }
    Ok(Secret::new(raw, SecretSource::Literal))
}

/// Expand every `${VAR}` in `s` (and a whole-string `$VAR`). Unset variables are an error.
pub(crate) fn interpolate(s: &str, env: &dyn Env) -> Result<String, String> {
    if let Some(name) = var_ref(s).filter(|_| !s.starts_with("${")) {
        return env
            .var(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("environment variable {name} is not set"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed \"${{\" in \"{s}\""));
        };
        let name = &after[..end];
        if !is_var_name(name) {
            return Err(format!("\"${{{name}}}\" is not a variable name"));
        }
        match env.var(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::env::MapEnv;

    #[test]
    fn var_refs() {
        assert_eq!(var_ref("$OPENAI_API_KEY"), Some("OPENAI_API_KEY"));
        assert_eq!(var_ref("${OPENAI_API_KEY}"), Some("OPENAI_API_KEY"));
        assert_eq!(var_ref("$1abc"), None);
        assert_eq!(var_ref("sk-$abc-def"), None);
        assert_eq!(var_ref("${A"), None);
    }

    #[test]
    fn secrets_from_env_literal_and_unset() {
        let env = MapEnv::new().with("K", "sk-value\n");
        let s = secret("$K", &env, None).unwrap();
        assert_eq!(s.expose(), "sk-value");
        assert_eq!(s.source(), &SecretSource::Env("K".into()));
        let s = secret("${K}", &env, None).unwrap();
        assert_eq!(s.expose(), "sk-value");
        let s = secret("sk-literal", &env, None).unwrap();
        assert_eq!(s.source(), &SecretSource::Literal);
        assert_eq!(
            secret("$NOPE", &env, None).unwrap_err(),
            SecretProblem::Unset("NOPE".into())
        );
        let env = env.with("EMPTY", "");
        assert_eq!(
            secret("$EMPTY", &env, None).unwrap_err(),
            SecretProblem::Unset("EMPTY".into())
        );
    }

    #[test]
    fn secrets_from_files_with_tilde() {
        let dir = std::env::temp_dir().join(format!("backstop-expand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.txt"), "  sk-from-file-1234\n").unwrap();
        let env = MapEnv::new().with_home(&dir);
        let s = secret("file:~/key.txt", &env, None).unwrap();
        assert_eq!(s.expose(), "sk-from-file-1234");
        assert_eq!(
            s.source(),
            &SecretSource::File(dir.join("key.txt").display().to_string())
        );
        let s = secret("file:key.txt", &MapEnv::new(), Some(&dir)).unwrap();
        assert_eq!(s.expose(), "sk-from-file-1234");
        let e = secret("file:~/missing.txt", &env, None).unwrap_err();
        assert!(matches!(e, SecretProblem::File { .. }), "{e:?}");
        let e = secret("file:~/key.txt", &MapEnv::new(), None).unwrap_err();
        assert!(e.to_string().contains("no home directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interpolation() {
        let env = MapEnv::new()
            .with("HOST", "gw.example")
            .with("PORT", "8080");
        assert_eq!(
            interpolate("https://${HOST}:${PORT}/v1", &env).unwrap(),
            "https://gw.example:8080/v1"
        );
        assert_eq!(interpolate("$HOST", &env).unwrap(), "gw.example");
        assert_eq!(interpolate("plain$text", &env).unwrap(), "plain$text");
        assert_eq!(
            interpolate("https://${NOPE}/v1", &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(interpolate("https://${HOST", &env).is_err());
    }
}
