//! `providers.<id>`: wire api, base URL, auth profiles, model catalogue, headers.

use super::expand;
use super::raw::{RawModel, RawProvider, section};
use super::suggest::hint;
use super::validate::{Ctx, strict_secret};
use super::{AuthProfile, ModelEntry, ProviderConfig};
use crate::chat::WireFormat;
use crate::secret::SecretSource;
use serde_json::Value;

/// Provider ids whose `api` and `base_url` may be omitted.
pub const WELL_KNOWN: &[(&str, WireFormat, &str)] = &[
    ("openai", WireFormat::OpenAi, "https://api.openai.com/v1"),
    (
        "anthropic",
        WireFormat::Anthropic,
        "https://api.anthropic.com",
    ),
    (
        "openrouter",
        WireFormat::OpenAi,
        "https://openrouter.ai/api/v1",
    ),
    (
        "gemini",
        WireFormat::Gemini,
        "https://generativelanguage.googleapis.com",
    ),
    (
        "google",
        WireFormat::Gemini,
        "https://generativelanguage.googleapis.com",
    ),
    ("groq", WireFormat::OpenAi, "https://api.groq.com/openai/v1"),
    ("mistral", WireFormat::OpenAi, "https://api.mistral.ai/v1"),
    (
        "deepseek",
        WireFormat::OpenAi,
        "https://api.deepseek.com/v1",
    ),
    ("xai", WireFormat::OpenAi, "https://api.x.ai/v1"),
    (
        "together",
        WireFormat::OpenAi,
        "https://api.together.xyz/v1",
    ),
    ("ollama", WireFormat::OpenAi, "http://127.0.0.1:11434/v1"),
    ("lmstudio", WireFormat::OpenAi, "http://127.0.0.1:1234/v1"),
];

/// The wire api and default base URL of a well-known provider id.
pub fn well_known(id: &str) -> Option<(WireFormat, &'static str)> {
    WELL_KNOWN
        .iter()
        .find(|(k, _, _)| *k == id)
        .map(|(_, api, url)| (*api, *url))
}

const APIS: [&str; 3] = ["openai", "anthropic", "gemini"];

/// What a provider id declared, even when the provider itself was invalid, so that
/// references to it do not add "not configured" noise to the real error.
pub(crate) struct Declared {
    pub id: String,
    /// Every profile name written in `auth`.
    pub profiles: Vec<String>,
    /// The profiles that made it into the config (keys that could be read).
    pub usable: Vec<String>,
}

pub(crate) struct Providers {
    pub valid: Vec<ProviderConfig>,
    pub declared: Vec<Declared>,
}

impl Providers {
    pub fn ids(&self) -> Vec<&str> {
        self.declared.iter().map(|d| d.id.as_str()).collect()
    }
}

pub(crate) fn providers(v: Option<&Value>, cx: &mut Ctx<'_>) -> Providers {
    let mut out = Providers {
        valid: Vec::new(),
        declared: Vec::new(),
    };
    let map = match v {
        None | Some(Value::Null) => return out,
        Some(Value::Object(m)) => m,
        Some(_) => {
            cx.err(
                "providers",
                "must be a map of provider id to provider settings",
            );
            return out;
        }
    };
    for (id, value) in map {
        if id == "fallback" || id == "retry" {
            continue; // seed keys, handled with the chains and retry
        }
        let path = format!("providers.{id}");
        let mut declared = Declared {
            id: id.clone(),
            profiles: Vec::new(),
            usable: Vec::new(),
        };
        if let Some(p) = provider(id, value, &path, cx, &mut declared) {
            out.valid.push(p);
        }
        out.declared.push(declared);
    }
    out
}

fn provider(
    id: &str,
    v: &Value,
    path: &str,
    cx: &mut Ctx<'_>,
    declared: &mut Declared,
) -> Option<ProviderConfig> {
    let errors_before = cx.errors.len();
    if id.is_empty() || id.contains('/') || id.contains(':') || id.chars().any(char::is_whitespace)
    {
        cx.err(
            path,
            format!("provider id \"{id}\" must be non-empty without '/', ':' or spaces (it is used in \"<id>/<model>\")"),
        );
    }
    if id == "bedrock" || id == "vertex" {
        cx.err(
            path,
            format!(
                "provider \"{id}\" is not supported yet; reach it through an OpenAI-compatible gateway (api: \"openai\" with its base_url) or use openrouter"
            ),
        );
        return None;
    }
    let raw: RawProvider = section(Some(v), path, &mut cx.errors)?;
    let known = well_known(id);

    let api = match raw.api.as_deref() {
        Some(a) => match a {
            "openai" => Some(WireFormat::OpenAi),
            "anthropic" => Some(WireFormat::Anthropic),
            "gemini" => Some(WireFormat::Gemini),
            "bedrock" | "vertex" => {
                cx.err(
                    format!("{path}.api"),
                    format!("api \"{a}\" is not supported yet; valid: openai, anthropic, gemini"),
                );
                None
            }
            _ => {
                cx.err(
                    format!("{path}.api"),
                    format!(
                        "\"{a}\" is not a supported api; valid: openai, anthropic, gemini{}",
                        hint(a, APIS)
                    ),
                );
                None
            }
        },
        None => match known {
            Some((api, _)) => Some(api),
            None => {
                cx.err(
                    format!("{path}.api"),
                    format!(
                        "required: \"{id}\" is not a well-known provider id; set api to one of openai, anthropic, gemini{}",
                        hint(id, WELL_KNOWN.iter().map(|(k, _, _)| *k))
                    ),
                );
                None
            }
        },
    };

    let base_url = match raw.base_url.as_deref() {
        Some(u) => match expand::interpolate(u, cx.env) {
            Ok(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_string())
            }
            Ok(u) => {
                cx.err(
                    format!("{path}.base_url"),
                    format!(
                        "\"{}\" must start with http:// or https://",
                        super::redact::redact_url(&u)
                    ),
                );
                None
            }
            Err(m) => {
                cx.err(format!("{path}.base_url"), m);
                None
            }
        },
        None => match (known, api) {
            (Some((k_api, url)), Some(api)) if k_api == api => Some(url.to_string()),
            (Some((k_api, _)), Some(api)) => {
                cx.err(
                    format!("{path}.base_url"),
                    format!("required: provider \"{id}\" uses api \"{api}\", not its usual \"{k_api}\", so its default URL does not apply"),
                );
                None
            }
            (None, _) => {
                cx.err(
                    format!("{path}.base_url"),
                    format!("required: \"{id}\" is not a well-known provider id, so there is no default URL"),
                );
                None
            }
            (Some(_), None) => None,
        },
    };

    let profiles = profiles(raw.auth.unwrap_or_default(), path, cx, declared);
    let models = models(raw.models.unwrap_or_default(), path, cx);

    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        let hpath = format!("{path}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            cx.err(
                &*hpath,
                format!("\"{name}\" is not a valid HTTP header name"),
            );
            continue;
        }
        let Value::String(raw_value) = value else {
            // Not the value itself: a header value may be a key.
            let kind = match value {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "a list",
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
            };
            cx.err(hpath, format!("must be a string; got {kind}"));
            continue;
        };
        if let Some(s) = strict_secret(cx, &hpath, &raw_value) {
            if http::HeaderValue::from_str(s.expose()).is_err() {
                cx.err(
                    hpath,
                    "the value holds characters not allowed in an HTTP header (e.g. a newline)",
                );
            } else {
                headers.push((name, s));
            }
        }
    }

    if cx.errors.len() > errors_before {
        return None;
    }
    Some(ProviderConfig {
        id: id.to_string(),
        api: api?,
        base_url: base_url?,
        profiles,
        models,
        headers,
    })
}

fn profiles(
    entries: Vec<super::raw::RawAuthEntry>,
    path: &str,
    cx: &mut Ctx<'_>,
    declared: &mut Declared,
) -> Vec<AuthProfile> {
    if entries.is_empty() {
        declared.profiles.push("default".into());
        declared.usable.push("default".into());
        return vec![AuthProfile {
            name: "default".into(),
            key: None,
        }];
    }
    let lone = entries.len() == 1;
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let epath = format!("{path}.auth[{i}]");
        let name = match e.profile {
            Some(p) => {
                if p.trim().is_empty() || p.contains('/') || p.contains(':') {
                    cx.err(
                        format!("{epath}.profile"),
                        format!("profile name \"{p}\" must be non-empty without '/' or ':'"),
                    );
                    continue;
                }
                p
            }
            None if lone => "default".to_string(),
            None => format!("key{}", i + 1),
        };
        if declared.profiles.contains(&name) {
            cx.err(
                format!("{epath}.profile"),
                format!("duplicate profile name \"{name}\"; each profile of a provider needs its own name"),
            );
            continue;
        }
        declared.profiles.push(name.clone());
        let Some(raw_key) = e.key else {
            cx.err(
                format!("{epath}.key"),
                "required: write $VAR, ${VAR} or file:PATH (omit `auth` for a server that needs no key)",
            );
            continue;
        };
        let kpath = format!("{epath}.key");
        if raw_key.trim().is_empty() {
            cx.err(kpath, "empty key; write $VAR, ${VAR} or file:PATH");
            continue;
        }
        match expand::secret(&raw_key, cx.env, cx.base.as_deref()) {
            Ok(s) => {
                if *s.source() == SecretSource::Literal {
                    cx.warn(
                        &kpath,
                        "a literal key is written in the config; use $VAR or file:PATH",
                    );
                }
                declared.usable.push(name.clone());
                out.push(AuthProfile { name, key: Some(s) });
            }
            Err(p) => cx.warn(&kpath, format!("{p}; profile \"{name}\" is skipped")),
        }
    }
    out
}

fn models(entries: Vec<Value>, path: &str, cx: &mut Ctx<'_>) -> Vec<ModelEntry> {
    let mut out: Vec<ModelEntry> = Vec::new();
    for (i, v) in entries.iter().enumerate() {
        let mpath = format!("{path}.models[{i}]");
        let entry = match v {
            Value::String(id) => ModelEntry {
                id: id.clone(),
                context_window: None,
                prefill: None,
                max_output_tokens: None,
            },
            Value::Object(_) => {
                let Some(m) = section::<RawModel>(Some(v), &mpath, &mut cx.errors) else {
                    continue;
                };
                let Some(id) = m.id else {
                    cx.err(
                        format!("{mpath}.id"),
                        "required: the model id as the provider names it",
                    );
                    continue;
                };
                if m.context_window == Some(0) {
                    cx.err(
                        format!("{mpath}.context_window"),
                        "must be greater than 0; got 0",
                    );
                }
                if m.max_output_tokens == Some(0) {
                    cx.err(
                        format!("{mpath}.max_output_tokens"),
                        "must be greater than 0; got 0",
                    );
                }
                ModelEntry {
                    id,
                    context_window: m.context_window,
                    prefill: m.prefill,
                    max_output_tokens: m.max_output_tokens,
                }
            }
            other => {
                cx.err(
                    mpath,
                    format!("must be a model id or {{id, context_window, prefill, max_output_tokens}}; got {other}"),
                );
                continue;
            }
        };
        if entry.id.trim().is_empty() {
            cx.err(mpath, "empty model id");
            continue;
        }
        if out.iter().any(|m| m.id == entry.id) {
            cx.err(
                mpath,
                format!("duplicate model \"{}\" in the catalogue", entry.id),
            );
            continue;
        }
        out.push(entry);
    }
    out
}
