//! Finding the config file and parsing it (JSON5, YAML or TOML, by extension) into a
//! `serde_json::Value`, which `validate.rs` turns into a [`Config`].

use super::env::Env;
use super::error::ConfigErrors;
use super::{Config, ConfigOrigin};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A config file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.json5` and `.json` (JSON is JSON5).
    Json5,
    /// `.yaml` and `.yml`.
    Yaml,
    /// `.toml`.
    Toml,
}

impl Format {
    /// The format for a file name, `None` for an unknown extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json5" | "json" => Some(Format::Json5),
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// The file name looked for in the working directory and in `~/.backstop/`.
pub const DEFAULT_FILE: &str = "backstop.json5";

/// Load the configuration.
///
/// Discovery: `path`, else `$BACKSTOP_CONFIG`, else `./backstop.json5`, else
/// `~/.backstop/backstop.json5`; an explicit or `$BACKSTOP_CONFIG` path that does not
/// exist is an error. With no file at all, the config is built from the well-known
/// environment variables ([`from_env`](super::from_env)).
///
/// ```
/// use backstop::config::{load, MapEnv};
/// // No file anywhere and one provider key in the environment: a working config.
/// let env = MapEnv::new().with("OPENAI_API_KEY", "sk-test-1234567890");
/// let config = load(None, &env).unwrap();
/// assert_eq!(config.default_chain.primary.to_string(), "openai/gpt-4o");
/// ```
pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigErrors> {
    if let Some(p) = path {
        return load_file(p, env);
    }
    if let Some(p) = env.var("BACKSTOP_CONFIG").filter(|p| !p.trim().is_empty()) {
        let p = super::expand::expand_path(p.trim(), env, env.current_dir().as_deref())
            .map_err(|m| ConfigErrors::single("$BACKSTOP_CONFIG", "", m))?;
        return load_file(&p, env);
    }
    for candidate in candidates(env) {
        if candidate.is_file() {
            return load_file(&candidate, env);
        }
    }
    super::from_env(env)
}

/// The implicit places a config file is looked for, in order.
pub(crate) fn candidates(env: &dyn Env) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(cwd) = env.current_dir() {
        out.push(cwd.join(DEFAULT_FILE));
    }
    if let Some(home) = env.home() {
        out.push(home.join(".backstop").join(DEFAULT_FILE));
    }
    out
}

/// Load one file; its extension picks the format.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let format = Format::from_path(path).ok_or_else(|| {
        ConfigErrors::single(
            &shown,
            "",
            "unsupported file extension; use .json5, .json, .yaml, .yml or .toml",
        )
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "config file not found".to_string()
        } else {
            format!("cannot read config file: {e}")
        };
        ConfigErrors::single(&shown, "", why)
    })?;
    from_str(&text, format, ConfigOrigin::File(path.to_path_buf()), env)
}

/// Parse and validate config text. `origin` names the file in errors and anchors
/// relative `file:` paths; use [`ConfigOrigin::Environment`] for text with no file.
///
/// ```
/// use backstop::config::{from_str, ConfigOrigin, Format, MapEnv};
/// let text = r#"{
///   providers: { ollama: { models: ["llama3.2"] } }, // well-known: no api or base_url needed
/// }"#;
/// let config = from_str(text, Format::Json5, ConfigOrigin::Environment, &MapEnv::new()).unwrap();
/// assert_eq!(config.default_chain.primary.to_string(), "ollama/llama3.2");
/// ```
pub fn from_str(
    text: &str,
    format: Format,
    origin: ConfigOrigin,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let file = origin_name(&origin);
    let value = parse_value(text, format).map_err(|m| ConfigErrors::single(&file, "", m))?;
    super::validate::validate(&value, origin, env)
}

pub(crate) fn origin_name(origin: &ConfigOrigin) -> String {
    match origin {
        ConfigOrigin::File(p) => p.display().to_string(),
        ConfigOrigin::Environment => "environment".to_string(),
    }
}

/// Parse text into a JSON value. An empty document is an empty object.
pub fn parse_value(text: &str, format: Format) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    let value = match format {
        Format::Json5 => {
            json5::from_str::<Value>(text).map_err(|e| format!("JSON5 syntax error: {e}"))?
        }
        Format::Yaml => {
            serde_saphyr::from_str::<Value>(text).map_err(|e| format!("YAML syntax error: {e}"))?
        }
        Format::Toml => {
            let mut v =
                toml::from_str::<Value>(text).map_err(|e| format!("TOML syntax error: {e}"))?;
            restore_toml_provider_order(text, &mut v);
            v
        }
    };
    Ok(match value {
        Value::Null => Value::Object(serde_json::Map::new()),
        v => v,
    })
}

/// `toml` (without its `preserve_order` feature) sorts table keys, but provider order
/// matters (the implicit default chain, bare-name lookup). Put `providers` back in the
/// order the document first names each id, read from the parser's key spans.
fn restore_toml_provider_order(text: &str, value: &mut Value) {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return;
    };
    let Some(toml::de::DeValue::Table(table)) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == "providers")
        .map(|(_, v)| v.get_ref())
    else {
        return;
    };
    let mut order: Vec<(usize, String)> = table
        .iter()
        .map(|(k, _)| (k.span().start, k.get_ref().to_string()))
        .collect();
    order.sort();
    let Some(Value::Object(providers)) = value.get_mut("providers") else {
        return;
    };
    let mut old = std::mem::take(providers);
    for (_, id) in order {
        if let Some(v) = old.remove(&id) {
            providers.insert(id, v);
        }
    }
    providers.append(&mut old);
}
