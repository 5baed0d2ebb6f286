//! A working config from well-known environment variables, used when no file exists.

use super::env::Env;
use super::error::ConfigErrors;
use super::load::{DEFAULT_FILE, candidates};
use super::providers::well_known;
use super::validate::{Ctx, default_state_dir};
use super::*;
use crate::secret::{Secret, SecretSource};

/// (provider id, key variables in preference order, base-URL variable, default model).
const ENV_PROVIDERS: &[(&str, &[&str], &str, &str)] = &[
    (
        "anthropic",
        &["ANTHROPIC_API_KEY"],
        "ANTHROPIC_BASE_URL",
        "claude-sonnet-4-5",
    ),
    ("openai", &["OPENAI_API_KEY"], "OPENAI_BASE_URL", "gpt-4o"),
    (
        "gemini",
        &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        "GEMINI_BASE_URL",
        "gemini-2.5-flash",
    ),
    (
        "openrouter",
        &["OPENROUTER_API_KEY"],
        "OPENROUTER_BASE_URL",
        "anthropic/claude-sonnet-4.5",
    ),
];

fn set(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Build a config from `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `GEMINI_API_KEY` (or
/// `GOOGLE_API_KEY`) and `OPENROUTER_API_KEY` (base URLs from `*_BASE_URL`), with a default
/// chain in that order; `BACKSTOP_API_KEY` sets the client key and `BACKSTOP_LISTEN` the
/// listen address.
///
/// ```
/// use backstop::config::{from_env, MapEnv};
/// let env = MapEnv::new()
///     .with("ANTHROPIC_API_KEY", "sk-ant-test-123456")
///     .with("OPENAI_API_KEY", "sk-test-123456");
/// let c = from_env(&env).unwrap();
/// assert_eq!(c.default_chain.primary.to_string(), "anthropic/claude-sonnet-4-5");
/// assert_eq!(c.default_chain.fallbacks[0].to_string(), "openai/gpt-4o");
/// ```
pub fn from_env(env: &dyn Env) -> Result<Config, ConfigErrors> {
    const FILE: &str = "environment";
    let mut cx = Ctx {
        env,
        base: None,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut providers = Vec::new();
    for (id, key_vars, url_var, model) in ENV_PROVIDERS {
        let Some((var, key)) = key_vars.iter().find_map(|v| set(env, v).map(|k| (*v, k))) else {
            continue;
        };
        let Some((api, default_url)) = well_known(id) else {
            continue;
        };
        let base_url = match set(env, url_var) {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                cx.err(
                    format!("${url_var}"),
                    format!("\"{u}\" must start with http:// or https://"),
                );
                continue;
            }
            None => default_url.to_string(),
        };
        providers.push(ProviderConfig {
            id: id.to_string(),
            api,
            base_url,
            profiles: vec![AuthProfile {
                name: "default".into(),
                key: Some(Secret::new(key, SecretSource::Env(var.to_string()))),
            }],
            models: vec![ModelEntry {
                id: model.to_string(),
                context_window: None,
                prefill: None,
                max_output_tokens: None,
            }],
            headers: Vec::new(),
        });
    }
    if providers.is_empty() && cx.errors.is_empty() {
        let mut looked: Vec<String> = vec!["$BACKSTOP_CONFIG (unset)".into()];
        looked.extend(candidates(env).iter().map(|p| p.display().to_string()));
        if env.current_dir().is_none() {
            looked.push(format!("./{DEFAULT_FILE}"));
        }
        let vars: Vec<&str> = ENV_PROVIDERS
            .iter()
            .flat_map(|(_, v, _, _)| v.iter().copied())
            .collect();
        return Err(ConfigErrors::single(
            FILE,
            "",
            format!(
                "no config file found (looked for {}) and no provider key is set; set one of {} or write a config file (see examples/backstop.json5)",
                looked.join(", "),
                vars.join(", ")
            ),
        ));
    }

    let mut server = super::validate::default_server();
    if let Some(k) = set(env, "BACKSTOP_API_KEY") {
        server
            .api_keys
            .push(Secret::new(k, SecretSource::Env("BACKSTOP_API_KEY".into())));
    }
    if let Some(l) = set(env, "BACKSTOP_LISTEN") {
        match l.parse() {
            Ok(a) => server.listen = a,
            Err(_) => cx.err(
                "$BACKSTOP_LISTEN",
                format!("\"{l}\" is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8787\""),
            ),
        }
    }
    let dir = default_state_dir(&mut cx);
    super::profiles_file::add_file_profiles(&dir, &mut providers, &mut [], &mut cx);
    if !cx.errors.is_empty() {
        let mut errors = cx.errors;
        for e in &mut errors {
            e.file = FILE.to_string();
        }
        return Err(ConfigErrors(errors));
    }
    let mut refs = providers.iter().map(|p| ModelRef {
        provider: p.id.clone(),
        model: p.models[0].id.clone(),
    });
    let primary = refs.next();
    let fallbacks: Vec<ModelRef> = refs.collect();
    let Some(primary) = primary else {
        return Err(ConfigErrors::single(
            FILE,
            "",
            "no provider could be built from the environment",
        ));
    };
    Ok(Config {
        server,
        providers,
        auth: AuthConfig::default(),
        default_chain: Chain { primary, fallbacks },
        agents: Vec::new(),
        retry: RetryConfig::default(),
        timeouts: Timeouts::default(),
        stream: StreamConfig::default(),
        health: crate::health::HealthConfig::default(),
        state: StateConfig {
            dir,
            redis_url: None,
            max_bytes: None,
            session_ttl_ms: StateConfig::DEFAULT_SESSION_TTL_MS,
        },
        origin: ConfigOrigin::Environment,
        warnings: cx.warnings,
    })
}
