//! Stage one: the file as written. Raw serde types (everything optional, strings for
//! enums so validation can name the valid values) and a key walk that reports every
//! unknown key with a "did you mean".

use super::error::ConfigError;
use super::suggest::hint;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub allow_unauthenticated: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub max_json_depth: Option<usize>,
    pub security_headers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawProvider {
    pub api: Option<String>,
    pub base_url: Option<String>,
    pub auth: Option<Vec<RawAuthEntry>>,
    /// Each entry a model id or a [`RawModel`]; split by hand for clearer errors.
    pub models: Option<Vec<Value>>,
    pub headers: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAuthEntry {
    pub profile: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawModel {
    pub id: Option<String>,
    pub context_window: Option<u64>,
    pub prefill: Option<bool>,
    pub max_output_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAuth {
    /// Kept as a JSON map so config order survives.
    pub order: Option<Map<String, Value>>,
    pub cooldowns: Option<RawCooldowns>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLadders {
    pub transient: Option<RawLadder>,
    pub auth: Option<RawLadder>,
    pub billing: Option<RawLadder>,
    pub auth_permanent: Option<RawLadder>,
    pub model_not_found: Option<RawLadder>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCooldowns {
    #[serde(flatten)]
    pub ladders: RawLadders,
    pub per_provider: Option<Map<String, Value>>,
    pub failure_window_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(crate) struct RawLadder {
    pub base_ms: Option<u64>,
    pub cap_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAgents {
    pub defaults: Option<RawAgentDefaults>,
    pub list: Option<Vec<RawAgent>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAgentDefaults {
    pub model: Option<RawModelSpec>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAgent {
    pub id: Option<String>,
    pub model: Option<RawModelSpec>,
}

/// `{primary, fallbacks}` or the seed shape `{primary, fallback, fallback2, fallback3}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawModelSpec {
    pub primary: Option<String>,
    pub fallbacks: Option<Vec<String>>,
    pub fallback: Option<String>,
    pub fallback2: Option<String>,
    pub fallback3: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRetry {
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub trigger_codes: Option<Vec<u32>>,
    pub trigger_on_auth_failure: Option<bool>,
    pub trigger_on_timeout: Option<bool>,
    pub max_retry_after_ms: Option<u64>,
    pub budget_ratio: Option<f64>,
    pub budget_min_per_sec: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTimeouts {
    pub connect_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub request_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawStream {
    pub commit: Option<String>,
    pub rescue: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHealth {
    pub enabled: Option<bool>,
    pub latency_multiple: Option<f64>,
    pub error_rate: Option<f64>,
    pub min_samples: Option<usize>,
    pub window_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawState {
    pub dir: Option<String>,
    pub redis_url: Option<String>,
    pub max_bytes: Option<u64>,
    pub session_ttl_ms: Option<u64>,
}

/// Deserialize one section, prefixing serde's key path with `prefix`. `null` counts as absent.
pub(crate) fn section<T: DeserializeOwned + Default>(
    value: Option<&Value>,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = match value {
        None | Some(Value::Null) => return Some(T::default()),
        Some(v) => v,
    };
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let path = join_path(prefix, if inner == "." { "" } else { &inner });
            let mut message = e.into_inner().to_string();
            if holds_secret(&path) {
                message = redact_quoted(&message);
            }
            errors.push(ConfigError::new(path, message));
            None
        }
    }
}

/// Whether a key path may hold a secret (a key, a client key, a header value, a Redis URL),
/// so that a value quoted in an error there must be redacted.
pub(crate) fn holds_secret(path: &str) -> bool {
    let segments: Vec<&str> = path
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .collect();
    segments
        .iter()
        .any(|s| matches!(*s, "api_keys" | "redis_url" | "headers" | "key" | "token"))
        || (segments.first() == Some(&"providers") && segments.contains(&"auth"))
}

/// Replace every `string "…"` that serde quotes in an error message by its redacted form
/// (`string "sk-…abcd"`), so a key written in the wrong shape never reaches a log line.
pub(crate) fn redact_quoted(message: &str) -> String {
    const OPEN: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(at + OPEN.len());
        out.push_str(head);
        // The value is Debug-escaped: it ends at the first quote not preceded by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in tail.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else {
            out.push('…');
            return out;
        };
        out.push_str(&crate::secret::redact(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `a` + `b.c` → `a.b.c`; `a` + `[1].c` → `a[1].c`.
pub(crate) fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

// ---- the key walk ----

/// The known keys of the config, as a tree.
enum Shape {
    /// A value whose keys are not checked here.
    Leaf,
    /// An object with exactly these keys.
    Obj(&'static [(&'static str, Shape)]),
    /// An object whose keys are free (ids, header names), each value of this shape.
    Map(&'static Shape),
    /// A list whose object elements have this shape (other elements are left to serde).
    List(&'static Shape),
}

use Shape::{Leaf, List, Map as AnyKey, Obj};

const LADDER: Shape = Obj(&[("base_ms", Leaf), ("cap_ms", Leaf)]);
const LADDER_KEYS: [(&str, Shape); 5] = [
    ("auth", LADDER),
    ("auth_permanent", LADDER),
    ("billing", LADDER),
    ("model_not_found", LADDER),
    ("transient", LADDER),
];
const LADDERS: Shape = Obj(&LADDER_KEYS);
const MODEL_SPEC: Shape = Obj(&[
    ("fallback", Leaf),
    ("fallback2", Leaf),
    ("fallback3", Leaf),
    ("fallbacks", Leaf),
    ("primary", Leaf),
]);
const RETRY_KEYS: &[(&str, Shape)] = &[
    ("backoff_ms", Leaf),
    ("budget_min_per_sec", Leaf),
    ("budget_ratio", Leaf),
    ("max_attempts", Leaf),
    ("max_retry_after_ms", Leaf),
    ("trigger_codes", Leaf),
    ("trigger_on_auth_failure", Leaf),
    ("trigger_on_timeout", Leaf),
];
const PROVIDER: Shape = Obj(&[
    ("api", Leaf),
    ("auth", List(&Obj(&[("key", Leaf), ("profile", Leaf)]))),
    ("base_url", Leaf),
    ("headers", Leaf),
    (
        "models",
        List(&Obj(&[
            ("context_window", Leaf),
            ("id", Leaf),
            ("max_output_tokens", Leaf),
            ("prefill", Leaf),
        ])),
    ),
]);
const TOP: Shape = Obj(&[
    (
        "agents",
        Obj(&[
            ("defaults", Obj(&[("model", MODEL_SPEC)])),
            ("list", List(&Obj(&[("id", Leaf), ("model", MODEL_SPEC)]))),
        ]),
    ),
    (
        "auth",
        Obj(&[
            (
                "cooldowns",
                Obj(&[
                    ("auth", LADDER),
                    ("auth_permanent", LADDER),
                    ("billing", LADDER),
                    ("failure_window_ms", Leaf),
                    ("model_not_found", LADDER),
                    ("per_provider", AnyKey(&LADDERS)),
                    ("probe_interval_ms", Leaf),
                    ("transient", LADDER),
                ]),
            ),
            ("order", Leaf),
        ]),
    ),
    // `providers` is walked by hand: its keys are provider ids plus the seed keys.
    (
        "health",
        Obj(&[
            ("enabled", Leaf),
            ("error_rate", Leaf),
            ("latency_multiple", Leaf),
            ("min_samples", Leaf),
            ("window_ms", Leaf),
        ]),
    ),
    ("providers", Leaf),
    ("retry", Obj(RETRY_KEYS)),
    (
        "server",
        Obj(&[
            ("allow_unauthenticated", Leaf),
            ("api_keys", Leaf),
            ("listen", Leaf),
            ("max_body_bytes", Leaf),
            ("max_json_depth", Leaf),
            ("security_headers", Leaf),
        ]),
    ),
    (
        "state",
        Obj(&[
            ("dir", Leaf),
            ("max_bytes", Leaf),
            ("redis_url", Leaf),
            ("session_ttl_ms", Leaf),
        ]),
    ),
    ("stream", Obj(&[("commit", Leaf), ("rescue", Leaf)])),
    (
        "timeouts",
        Obj(&[
            ("connect_ms", Leaf),
            ("first_token_ms", Leaf),
            ("idle_ms", Leaf),
            ("request_ms", Leaf),
        ]),
    ),
]);

/// Report every unknown key in the document (values of the wrong type are left to serde).
pub(crate) fn check_keys(root: &Value, errors: &mut Vec<ConfigError>) {
    walk(root, &TOP, "", errors);
    if let Some(Value::Object(providers)) = root.get("providers") {
        for (id, v) in providers {
            let path = format!("providers.{id}");
            match id.as_str() {
                "fallback" => {}
                "retry" => walk(v, &Obj(RETRY_KEYS), &path, errors),
                _ => walk(v, &PROVIDER, &path, errors),
            }
        }
    }
}

fn walk(value: &Value, shape: &Shape, path: &str, errors: &mut Vec<ConfigError>) {
    match (shape, value) {
        (Obj(keys), Value::Object(map)) => {
            for (k, v) in map {
                let key_path = join_path(path, k);
                match keys.iter().find(|(name, _)| name == k) {
                    Some((_, sub)) => walk(v, sub, &key_path, errors),
                    None => {
                        let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
                        errors.push(ConfigError::new(
                            key_path,
                            format!(
                                "unknown key{}; valid keys: {}",
                                hint(k, names.iter().copied()),
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        (AnyKey(sub), Value::Object(map)) => {
            for (k, v) in map {
                walk(v, sub, &join_path(path, k), errors);
            }
        }
        (List(sub), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, sub, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: Value) -> Vec<String> {
        let mut errors = Vec::new();
        check_keys(&v, &mut errors);
        errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn unknown_keys_everywhere_are_reported() {
        let errs = keys(json!({
            "servr": {},
            "providers": {"openai": {"bse_url": "x", "auth": [{"kye": "y"}], "models": ["a", {"id": "b", "ctx": 1}]},
                          "retry": {"max_attempt": 1}},
            "auth": {"cooldowns": {"per_provider": {"openai": {"transiet": {}}}}},
            "agents": {"list": [{"id": "x", "model": {"primary": "a/b", "fallback4": "c/d"}}]},
        }));
        assert_eq!(
            errs,
            vec![
                "servr: unknown key (did you mean \"server\"?); valid keys: agents, auth, health, providers, retry, server, state, stream, timeouts",
                "auth.cooldowns.per_provider.openai.transiet: unknown key (did you mean \"transient\"?); valid keys: auth, auth_permanent, billing, model_not_found, transient",
                "agents.list[0].model.fallback4: unknown key (did you mean \"fallback\"?); valid keys: fallback, fallback2, fallback3, fallbacks, primary",
                "providers.openai.bse_url: unknown key (did you mean \"base_url\"?); valid keys: api, auth, base_url, headers, models",
                "providers.openai.auth[0].kye: unknown key (did you mean \"key\"?); valid keys: key, profile",
                "providers.openai.models[1].ctx: unknown key; valid keys: context_window, id, max_output_tokens, prefill",
                "providers.retry.max_attempt: unknown key (did you mean \"max_attempts\"?); valid keys: backoff_ms, budget_min_per_sec, budget_ratio, max_attempts, max_retry_after_ms, trigger_codes, trigger_on_auth_failure, trigger_on_timeout",
            ]
        );
    }

    #[test]
    fn section_errors_carry_the_path() {
        let mut errors = Vec::new();
        let v = json!({"max_attempts": "two"});
        let r: Option<RawRetry> = section(Some(&v), "retry", &mut errors);
        assert!(r.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "retry.max_attempts");
        assert!(
            errors[0].message.contains("invalid type"),
            "{}",
            errors[0].message
        );
        let v = json!([{"key": 5}]);
        let r: Option<Vec<RawAuthEntry>> = section(Some(&v), "providers.x.auth", &mut errors);
        assert!(r.is_none());
        assert_eq!(errors[1].path, "providers.x.auth[0].key");
    }

    #[test]
    fn a_key_in_the_wrong_shape_is_redacted_in_the_error() {
        let mut errors = Vec::new();
        let v = json!(["sk-proj-secretsecret-1234"]);
        let r: Option<Vec<RawAuthEntry>> = section(Some(&v), "providers.x.auth", &mut errors);
        assert!(r.is_none());
        assert_eq!(errors[0].path, "providers.x.auth[0]");
        assert_eq!(
            errors[0].message,
            "invalid type: string \"sk-…1234\", expected struct RawAuthEntry"
        );
        // Elsewhere the bad value is shown as written.
        let v = json!({"max_attempts": "two"});
        let _: Option<RawRetry> = section(Some(&v), "retry", &mut errors);
        assert!(
            errors[1].message.contains("\"two\""),
            "{}",
            errors[1].message
        );
        assert_eq!(
            redact_quoted(r#"a string "sk-x\"y-abcdefgh-9876" and string "unterminated"#),
            "a string \"sk-…9876\" and string \"…"
        );
        assert!(holds_secret("server.api_keys"));
        assert!(holds_secret("state.redis_url"));
        assert!(holds_secret("providers.oa.headers.X-Key"));
        assert!(!holds_secret("auth.order.oa[0]"));
        assert!(!holds_secret("retry.max_attempts"));
    }
}
