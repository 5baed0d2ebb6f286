//! Stage two: raw sections → the validated [`Config`], collecting every error in one pass.

use super::env::Env;
use super::error::{ConfigError, ConfigErrors};
use super::expand;
use super::load::origin_name;
use super::raw::{self, RawLadder, RawLadders, RawRetry, section};
use super::suggest::hint;
use super::*;
use crate::secret::{Secret, SecretSource};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Collected findings while validating.
pub(crate) struct Ctx<'a> {
    pub env: &'a dyn Env,
    /// Directory relative `file:` paths and `state.dir` are taken from.
    pub base: Option<PathBuf>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

impl Ctx<'_> {
    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    pub fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }
}

pub(crate) fn validate(
    root: &Value,
    origin: ConfigOrigin,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let file = origin_name(&origin);
    let base = match &origin {
        ConfigOrigin::File(p) => p.parent().map(|d| d.to_path_buf()),
        ConfigOrigin::Environment => None,
    };
    let mut cx = Ctx {
        env,
        base,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let built = build(root, &mut cx);
    match built {
        Some(parts) if cx.errors.is_empty() => {
            let (
                server,
                providers,
                auth,
                default_chain,
                agents,
                retry,
                timeouts,
                stream,
                state,
                health,
            ) = parts;
            Ok(Config {
                server,
                providers,
                auth,
                default_chain,
                agents,
                retry,
                timeouts,
                stream,
                state,
                health,
                origin,
                warnings: cx.warnings,
            })
        }
        _ => {
            let mut errors = cx.errors;
            if errors.is_empty() {
                errors.push(ConfigError::new("", "invalid configuration"));
            }
            for e in &mut errors {
                e.file = file.clone();
            }
            Err(ConfigErrors(errors))
        }
    }
}

type Parts = (
    ServerConfig,
    Vec<ProviderConfig>,
    AuthConfig,
    Chain,
    Vec<Agent>,
    RetryConfig,
    Timeouts,
    StreamConfig,
    StateConfig,
    crate::health::HealthConfig,
);

fn build(root: &Value, cx: &mut Ctx<'_>) -> Option<Parts> {
    if !root.is_object() {
        cx.err(
            "",
            "the top level must be an object of sections (server, providers, agents, …)",
        );
        return None;
    }
    raw::check_keys(root, &mut cx.errors);

    let server = server(root.get("server"), cx);
    // The state dir first: `auth-profiles.json` there adds profiles before `auth.order`
    // and the chains are checked.
    let (e0, w0) = (cx.errors.len(), cx.warnings.len());
    let state = state(root.get("state"), cx);
    // …but its findings are reported in section order, after the others.
    let state_errors: Vec<_> = cx.errors.drain(e0..).collect();
    let state_warnings: Vec<_> = cx.warnings.drain(w0..).collect();
    let mut providers = super::providers::providers(root.get("providers"), cx);
    if let Some(s) = &state {
        super::profiles_file::add_file_profiles(
            &s.dir,
            &mut providers.valid,
            &mut providers.declared,
            cx,
        );
    }
    let retry = retry_section(root, cx);
    let auth = auth(root.get("auth"), &providers, cx);
    let (default_chain, agents) = super::chains::chains(root, &providers, cx);
    let timeouts = timeouts(root.get("timeouts"), cx);
    let stream = stream(root.get("stream"), cx);
    let health = health(root.get("health"), cx);
    cx.errors.extend(state_errors);
    cx.warnings.extend(state_warnings);
    Some((
        server?,
        providers.valid,
        auth?,
        default_chain?,
        agents?,
        retry?,
        timeouts?,
        stream?,
        state?,
        health?,
    ))
}

fn server(v: Option<&Value>, cx: &mut Ctx<'_>) -> Option<ServerConfig> {
    let raw: raw::RawServer = section(v, "server", &mut cx.errors)?;
    let mut out = default_server();
    if let Some(listen) = raw.listen {
        match listen.parse() {
            Ok(a) => out.listen = a,
            Err(_) => cx.err(
                "server.listen",
                format!("\"{listen}\" is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8787\" or \"0.0.0.0:8787\""),
            ),
        }
    }
    for (i, k) in raw.api_keys.unwrap_or_default().iter().enumerate() {
        let path = format!("server.api_keys[{i}]");
        if k.trim().is_empty() {
            cx.err(path, "empty key; write $VAR, file:PATH or remove the entry");
            continue;
        }
        match expand::secret(k, cx.env, cx.base.as_deref()) {
            Ok(s) => {
                if *s.source() == SecretSource::Literal {
                    cx.warn(
                        &path,
                        "a literal key is written in the config; use $VAR or file:PATH",
                    );
                }
                out.api_keys.push(s);
            }
            Err(p) => cx.err(path, format!("{p}; clients could not authenticate")),
        }
    }
    if let Some(b) = raw.allow_unauthenticated {
        out.allow_unauthenticated = b;
    }
    if let Some(b) = raw.security_headers {
        out.security_headers = b;
    }
    if let Some(n) = raw.max_body_bytes {
        positive(cx, "server.max_body_bytes", n as u64);
        out.max_body_bytes = n;
    }
    if let Some(n) = raw.max_json_depth {
        positive(cx, "server.max_json_depth", n as u64);
        out.max_json_depth = n;
    }
    Some(out)
}

/// The documented server defaults (see [`ServerConfig`]).
pub(crate) fn default_server() -> ServerConfig {
    ServerConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8787)),
        api_keys: Vec::new(),
        allow_unauthenticated: false,
        max_body_bytes: 32 * 1024 * 1024,
        max_json_depth: 64,
        security_headers: false,
    }
}

fn positive(cx: &mut Ctx<'_>, path: &str, n: u64) -> bool {
    if n == 0 {
        cx.err(path, "must be greater than 0; got 0");
        return false;
    }
    true
}

/// `retry`, or the seed's `providers.retry` (not both).
fn retry_section(root: &Value, cx: &mut Ctx<'_>) -> Option<RetryConfig> {
    let top = root.get("retry").filter(|v| !v.is_null());
    let seed = root
        .get("providers")
        .and_then(|p| p.get("retry"))
        .filter(|v| !v.is_null());
    let (v, prefix) = match (top, seed) {
        (Some(_), Some(_)) => {
            cx.err(
                "providers.retry",
                "both `retry` and `providers.retry` are given; keep one (the top-level `retry` is preferred)",
            );
            return None;
        }
        (Some(v), None) => (Some(v), "retry"),
        (None, Some(v)) => (Some(v), "providers.retry"),
        (None, None) => (None, "retry"),
    };
    let raw: RawRetry = section(v, prefix, &mut cx.errors)?;
    let mut out = RetryConfig::default();
    if let Some(n) = raw.max_attempts {
        if n == 0 {
            cx.err(
                format!("{prefix}.max_attempts"),
                "must be at least 1 (the first attempt counts); got 0",
            );
        }
        out.max_attempts = n;
    }
    if let Some(n) = raw.backoff_ms {
        out.backoff_ms = n;
    }
    if let Some(codes) = raw.trigger_codes {
        out.trigger_codes.clear();
        for (i, c) in codes.into_iter().enumerate() {
            match u16::try_from(c) {
                Ok(c) if (100..=599).contains(&c) => {
                    if !out.trigger_codes.contains(&c) {
                        out.trigger_codes.push(c);
                    }
                }
                _ => cx.err(
                    format!("{prefix}.trigger_codes[{i}]"),
                    format!("{c} is not an HTTP status; valid: 100..=599"),
                ),
            }
        }
    }
    if let Some(b) = raw.trigger_on_auth_failure {
        out.trigger_on_auth_failure = b;
    }
    if let Some(b) = raw.trigger_on_timeout {
        out.trigger_on_timeout = b;
    }
    if let Some(n) = raw.max_retry_after_ms {
        out.max_retry_after_ms = n;
    }
    if let Some(r) = raw.budget_ratio {
        if !(0.0..=1.0).contains(&r) {
            cx.err(
                format!("{prefix}.budget_ratio"),
                format!("{r} is out of range; valid: 0..=1 (a fraction of recent requests)"),
            );
        }
        out.budget_ratio = r;
    }
    if let Some(n) = raw.budget_min_per_sec {
        out.budget_min_per_sec = n;
    }
    Some(out)
}

fn ladder(cx: &mut Ctx<'_>, path: &str, over: Option<RawLadder>, base: Ladder) -> Ladder {
    let Some(over) = over else { return base };
    let l = Ladder {
        base_ms: over.base_ms.unwrap_or(base.base_ms),
        cap_ms: over.cap_ms.unwrap_or(base.cap_ms),
    };
    let ok = positive(cx, &format!("{path}.base_ms"), l.base_ms)
        & positive(cx, &format!("{path}.cap_ms"), l.cap_ms);
    if ok && l.cap_ms < l.base_ms {
        cx.err(
            format!("{path}.cap_ms"),
            format!(
                "cap_ms ({}) must be at least base_ms ({})",
                l.cap_ms, l.base_ms
            ),
        );
    }
    l
}

fn ladders(cx: &mut Ctx<'_>, path: &str, raw: RawLadders, base: Ladders) -> Ladders {
    let p = |k: &str| raw::join_path(path, k);
    Ladders {
        transient: ladder(cx, &p("transient"), raw.transient, base.transient),
        auth: ladder(cx, &p("auth"), raw.auth, base.auth),
        billing: ladder(cx, &p("billing"), raw.billing, base.billing),
        auth_permanent: ladder(
            cx,
            &p("auth_permanent"),
            raw.auth_permanent,
            base.auth_permanent,
        ),
        model_not_found: ladder(
            cx,
            &p("model_not_found"),
            raw.model_not_found,
            base.model_not_found,
        ),
    }
}

fn auth(
    v: Option<&Value>,
    providers: &super::providers::Providers,
    cx: &mut Ctx<'_>,
) -> Option<AuthConfig> {
    let raw: raw::RawAuth = section(v, "auth", &mut cx.errors)?;
    let mut out = AuthConfig::default();
    for (pid, list) in raw.order.unwrap_or_default() {
        let path = format!("auth.order.{pid}");
        let Some(declared) = providers.declared.iter().find(|d| d.id == pid) else {
            let ids = providers.ids();
            cx.err(
                path,
                format!(
                    "provider \"{pid}\" is not configured; configured: {}{}",
                    list_or_none(&ids),
                    hint(&pid, ids.iter().copied())
                ),
            );
            continue;
        };
        let Some(names) = section::<Vec<String>>(Some(&list), &path, &mut cx.errors) else {
            continue;
        };
        let mut kept = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if !declared.profiles.iter().any(|p| p == name) {
                let all: Vec<&str> = declared.profiles.iter().map(String::as_str).collect();
                cx.err(
                    format!("{path}[{i}]"),
                    format!(
                        "profile \"{name}\" is not configured for provider \"{pid}\"; configured: {}{}",
                        list_or_none(&all),
                        hint(name, all.iter().copied())
                    ),
                );
            } else if declared.usable.contains(name) && !kept.contains(name) {
                kept.push(name.clone());
            }
        }
        out.order.insert(pid, kept);
    }
    if let Some(c) = raw.cooldowns {
        let global = ladders(cx, "auth.cooldowns", c.ladders, Ladders::default());
        out.cooldowns.ladders = global;
        let mut per = BTreeMap::new();
        for (pid, v) in c.per_provider.unwrap_or_default() {
            let path = format!("auth.cooldowns.per_provider.{pid}");
            if !providers.declared.iter().any(|d| d.id == pid) {
                let ids = providers.ids();
                cx.err(
                    path.clone(),
                    format!(
                        "provider \"{pid}\" is not configured; configured: {}{}",
                        list_or_none(&ids),
                        hint(&pid, ids.iter().copied())
                    ),
                );
                continue;
            }
            if let Some(r) = section::<RawLadders>(Some(&v), &path, &mut cx.errors) {
                per.insert(pid, ladders(cx, &path, r, global));
            }
        }
        out.cooldowns.per_provider = per;
        if let Some(n) = c.failure_window_ms {
            positive(cx, "auth.cooldowns.failure_window_ms", n);
            out.cooldowns.failure_window_ms = n;
        }
        if let Some(n) = c.probe_interval_ms {
            positive(cx, "auth.cooldowns.probe_interval_ms", n);
            out.cooldowns.probe_interval_ms = n;
        }
    }
    Some(out)
}

pub(crate) fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn timeouts(v: Option<&Value>, cx: &mut Ctx<'_>) -> Option<Timeouts> {
    let raw: raw::RawTimeouts = section(v, "timeouts", &mut cx.errors)?;
    let d = Timeouts::default();
    let t = Timeouts {
        connect_ms: raw.connect_ms.unwrap_or(d.connect_ms),
        first_token_ms: raw.first_token_ms.unwrap_or(d.first_token_ms),
        idle_ms: raw.idle_ms.unwrap_or(d.idle_ms),
        request_ms: raw.request_ms.unwrap_or(d.request_ms),
    };
    for (p, n) in [
        ("timeouts.connect_ms", t.connect_ms),
        ("timeouts.first_token_ms", t.first_token_ms),
        ("timeouts.idle_ms", t.idle_ms),
        ("timeouts.request_ms", t.request_ms),
    ] {
        positive(cx, p, n);
    }
    if t.request_ms > 0 {
        for (p, n) in [
            ("timeouts.first_token_ms", t.first_token_ms),
            ("timeouts.connect_ms", t.connect_ms),
        ] {
            if n > t.request_ms {
                cx.err(
                    p,
                    format!("{n} must not exceed timeouts.request_ms ({}), the whole request's deadline", t.request_ms),
                );
            }
        }
    }
    Some(t)
}

fn health(v: Option<&Value>, cx: &mut Ctx<'_>) -> Option<crate::health::HealthConfig> {
    let raw: raw::RawHealth = section(v, "health", &mut cx.errors)?;
    let mut out = crate::health::HealthConfig::default();
    if let Some(b) = raw.enabled {
        out.enabled = b;
    }
    if let Some(m) = raw.latency_multiple {
        if m.is_finite() && m > 1.0 {
            out.latency_multiple = m;
        } else {
            cx.err(
                "health.latency_multiple",
                format!("{m} is not valid; it must be a number above 1 (e.g. 3)"),
            );
        }
    }
    if let Some(r) = raw.error_rate {
        if r.is_finite() && r > 0.0 && r <= 1.0 {
            out.error_rate = r;
        } else {
            cx.err(
                "health.error_rate",
                format!("{r} is not valid; it must be above 0 and at most 1 (e.g. 0.5)"),
            );
        }
    }
    if let Some(n) = raw.min_samples {
        if n >= 1 {
            out.min_samples = n;
        } else {
            cx.err(
                "health.min_samples",
                "0 is not valid; it must be at least 1",
            );
        }
    }
    if let Some(w) = raw.window_ms {
        if w > 0 {
            out.window_ms = w;
        } else {
            cx.err("health.window_ms", "0 is not valid; it must be above 0");
        }
    }
    Some(out)
}

fn stream(v: Option<&Value>, cx: &mut Ctx<'_>) -> Option<StreamConfig> {
    let raw: raw::RawStream = section(v, "stream", &mut cx.errors)?;
    let mut out = StreamConfig::default();
    if let Some(c) = raw.commit {
        match c.as_str() {
            "first_content" => out.commit = StreamCommit::FirstContent,
            "complete" => out.commit = StreamCommit::Complete,
            _ => cx.err(
                "stream.commit",
                format!(
                    "\"{c}\" is not valid; valid: first_content, complete{}",
                    hint(&c, ["first_content", "complete"])
                ),
            ),
        }
    }
    if let Some(list) = raw.rescue {
        out.rescue.clear();
        for (i, r) in list.iter().enumerate() {
            let mode = match r.as_str() {
                "prefill" => RescueMode::Prefill,
                "splice" => RescueMode::Splice,
                _ => {
                    cx.err(
                        format!("stream.rescue[{i}]"),
                        format!(
                            "\"{r}\" is not valid; valid: prefill, splice{}",
                            hint(r, ["prefill", "splice"])
                        ),
                    );
                    continue;
                }
            };
            if !out.rescue.contains(&mode) {
                out.rescue.push(mode);
            }
        }
    }
    Some(out)
}

fn state(v: Option<&Value>, cx: &mut Ctx<'_>) -> Option<StateConfig> {
    let raw: raw::RawState = section(v, "state", &mut cx.errors)?;
    let env_set = cx
        .env
        .var("BACKSTOP_STATE_DIR")
        .is_some_and(|d| !d.trim().is_empty());
    let dir = if env_set {
        default_state_dir(cx)
    } else if let Some(d) = raw.dir.as_deref() {
        if d.trim().is_empty() {
            cx.err(
                "state.dir",
                "empty path; remove the key for the default ~/.backstop",
            );
            PathBuf::new()
        } else {
            match expand::expand_path(d, cx.env, cx.base.as_deref()) {
                Ok(p) => p,
                Err(m) => {
                    cx.err(
                        "state.dir",
                        format!("{m}; set state.dir to an absolute path or $BACKSTOP_STATE_DIR"),
                    );
                    PathBuf::new()
                }
            }
        }
    } else {
        default_state_dir(cx)
    };
    let redis_url = match raw.redis_url {
        None => None,
        Some(u) => match expand::interpolate(&u, cx.env) {
            Ok(u) => {
                const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
                if !SCHEMES.iter().any(|s| u.starts_with(s)) {
                    cx.err(
                        "state.redis_url",
                        format!(
                            "\"{}\" is not a Redis URL; it must start with redis://, rediss://, redis+unix:// or unix://",
                            super::redact::redact_url(&u)
                        ),
                    );
                }
                Some(u)
            }
            Err(m) => {
                cx.err("state.redis_url", m);
                None
            }
        },
    };
    if let Some(n) = raw.max_bytes {
        positive(cx, "state.max_bytes", n);
    }
    if let Some(n) = raw.session_ttl_ms {
        positive(cx, "state.session_ttl_ms", n);
    }
    Some(StateConfig {
        dir,
        redis_url,
        max_bytes: raw.max_bytes,
        session_ttl_ms: raw
            .session_ttl_ms
            .unwrap_or(StateConfig::DEFAULT_SESSION_TTL_MS),
    })
}

/// `$BACKSTOP_STATE_DIR`, else `~/.backstop`.
pub(crate) fn default_state_dir(cx: &mut Ctx<'_>) -> PathBuf {
    let env_dir = cx.env.var("BACKSTOP_STATE_DIR");
    if let Some(d) = env_dir.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        return match expand::expand_path(d, cx.env, None) {
            Ok(p) => p,
            Err(m) => {
                cx.err("state.dir", format!("$BACKSTOP_STATE_DIR: {m}"));
                PathBuf::new()
            }
        };
    }
    match cx.env.home() {
        Some(h) => h.join(".backstop"),
        None => {
            cx.warn(
                "state.dir",
                "no home directory is known; using ./.backstop (set state.dir or $BACKSTOP_STATE_DIR)",
            );
            PathBuf::from(".backstop")
        }
    }
}

/// Build a secret, for header values: unset variables and unreadable files are errors.
pub(crate) fn strict_secret(cx: &mut Ctx<'_>, path: &str, raw: &str) -> Option<Secret> {
    match expand::secret(raw, cx.env, cx.base.as_deref()) {
        Ok(s) => Some(s),
        Err(p) => {
            cx.err(path, p.to_string());
            None
        }
    }
}
