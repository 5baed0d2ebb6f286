//! The effective config as JSON for `backstop check`, with every secret redacted.

use super::{Config, Ladders, RescueMode, StreamCommit};
use crate::secret::{Secret, SecretSource};
use serde_json::{Value, json};

/// `sk-…abcd (from $OPENAI_API_KEY)`, `sk-…abcd (literal)`, `…ab (from file:/path)`.
pub fn describe_secret(s: &Secret) -> String {
    let from = match s.source() {
        SecretSource::Env(v) => format!("from ${v}"),
        SecretSource::File(p) => format!("from file:{p}"),
        SecretSource::Literal => "literal".to_string(),
    };
    format!("{} ({from})", s.redacted())
}

/// Hide the password in `redis://user:pass@host` or `https://user:pass@host/v1`
/// (the user name stays). Only the authority (before the first `/`, `?` or `#`)
/// is looked at, so an `@` in a path is left alone.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((auth, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = auth.split_once(':').map_or("", |(u, _)| u);
    format!("{scheme}://{user}:…@{host}{tail}")
}

fn ladders(l: &Ladders) -> Value {
    let one = |x: &super::Ladder| json!({"base_ms": x.base_ms, "cap_ms": x.cap_ms});
    json!({
        "transient": one(&l.transient),
        "auth": one(&l.auth),
        "billing": one(&l.billing),
        "auth_permanent": one(&l.auth_permanent),
        "model_not_found": one(&l.model_not_found),
    })
}

fn chain(c: &super::Chain) -> Value {
    json!({
        "primary": c.primary.to_string(),
        "fallbacks": c.fallbacks.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

impl Config {
    /// The effective configuration, defaults filled in, secrets shown only redacted with
    /// their source. Warnings are not included.
    pub fn redacted_json(&self) -> Value {
        let providers: serde_json::Map<String, Value> = self
            .providers
            .iter()
            .map(|p| {
                let models: Vec<Value> = p
                    .models
                    .iter()
                    .map(|m| {
                        json!({"id": m.id, "context_window": m.context_window, "prefill": m.prefill,
                               "max_output_tokens": m.max_output_tokens})
                    })
                    .collect();
                let auth: Vec<Value> = p
                    .profiles
                    .iter()
                    .map(|a| json!({"profile": a.name, "key": a.key.as_ref().map(describe_secret)}))
                    .collect();
                let headers: serde_json::Map<String, Value> = p
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(describe_secret(v))))
                    .collect();
                let v = json!({"api": p.api.as_str(), "base_url": redact_url(&p.base_url), "auth": auth,
                               "models": models, "headers": headers});
                (p.id.clone(), v)
            })
            .collect();
        let per_provider: serde_json::Map<String, Value> = self
            .auth
            .cooldowns
            .per_provider
            .iter()
            .map(|(k, l)| (k.clone(), ladders(l)))
            .collect();
        let mut cooldowns = ladders(&self.auth.cooldowns.ladders);
        if let Value::Object(m) = &mut cooldowns {
            m.insert("per_provider".into(), Value::Object(per_provider));
            m.insert(
                "failure_window_ms".into(),
                json!(self.auth.cooldowns.failure_window_ms),
            );
            m.insert(
                "probe_interval_ms".into(),
                json!(self.auth.cooldowns.probe_interval_ms),
            );
        }
        let origin = match &self.origin {
            super::ConfigOrigin::File(p) => Value::String(p.display().to_string()),
            super::ConfigOrigin::Environment => Value::String("environment".into()),
        };
        json!({
            "origin": origin,
            "server": {
                "listen": self.server.listen.to_string(),
                "api_keys": self.server.api_keys.iter().map(describe_secret).collect::<Vec<_>>(),
                "allow_unauthenticated": self.server.allow_unauthenticated,
                "max_body_bytes": self.server.max_body_bytes,
                "max_json_depth": self.server.max_json_depth,
                "security_headers": self.server.security_headers,
            },
            "providers": providers,
            "auth": { "order": self.auth.order, "cooldowns": cooldowns },
            "agents": {
                "defaults": { "model": chain(&self.default_chain) },
                "list": self.agents.iter().map(|a| json!({"id": a.id, "model": chain(&a.chain)})).collect::<Vec<_>>(),
            },
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "backoff_ms": self.retry.backoff_ms,
                "trigger_codes": self.retry.trigger_codes,
                "trigger_on_auth_failure": self.retry.trigger_on_auth_failure,
                "trigger_on_timeout": self.retry.trigger_on_timeout,
                "max_retry_after_ms": self.retry.max_retry_after_ms,
                "budget_ratio": self.retry.budget_ratio,
                "budget_min_per_sec": self.retry.budget_min_per_sec,
            },
            "timeouts": {
                "connect_ms": self.timeouts.connect_ms,
                "first_token_ms": self.timeouts.first_token_ms,
                "idle_ms": self.timeouts.idle_ms,
                "request_ms": self.timeouts.request_ms,
            },
            "health": {
                "enabled": self.health.enabled,
                "latency_multiple": self.health.latency_multiple,
                "error_rate": self.health.error_rate,
                "min_samples": self.health.min_samples,
                "window_ms": self.health.window_ms,
            },
            "stream": {
                "commit": match self.stream.commit {
                    StreamCommit::FirstContent => "first_content",
                    StreamCommit::Complete => "complete",
                },
                "rescue": self.stream.rescue.iter().map(|r| match r {
                    RescueMode::Prefill => "prefill",
                    RescueMode::Splice => "splice",
                }).collect::<Vec<_>>(),
            },
            "state": {
                "dir": self.state.dir.display().to_string(),
                "redis_url": self.state.redis_url.as_deref().map(redact_url),
                "max_bytes": self.state.max_bytes,
                "session_ttl_ms": self.state.session_ttl_ms,
            },
        })
    }
}
