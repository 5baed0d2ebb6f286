//! `GET /status` (JSON health of every provider, profile, model and chain; PRODUCT §5, §8)
//! and `GET /metrics` (Prometheus text).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use backstop::clock::rfc3339;
use backstop::config::{Config, Route};
use backstop::failover::Reason;
use backstop::failover::cooldown::Scope;
use backstop::health::LastError;
use backstop::metrics::BreakerGauge;
use backstop::state::{BreakerSnapshot, BreakerState};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A breaker's state as `/status` spells it.
fn state_name(s: &BreakerSnapshot) -> &'static str {
    match s.state {
        BreakerState::Closed => "ok",
        BreakerState::HalfOpen => "half_open",
        BreakerState::Open => match s.reason {
            Some(Reason::Billing | Reason::AuthPermanent) => "disabled",
            _ => "cooldown",
        },
    }
}

fn breaker_json(s: Option<&BreakerSnapshot>) -> (Value, Value, Value) {
    match s {
        Some(s) if s.state != BreakerState::Closed => (
            json!(state_name(s)),
            json!(s.reason.map(|r| r.as_str())),
            json!(s.until_ms.map(rfc3339)),
        ),
        _ => (json!("ok"), Value::Null, Value::Null),
    }
}

/// The longest error message `/status` shows (the classifier already keeps it to one
/// scrubbed line of at most 1000 characters).
const MAX_ERROR_CHARS: usize = 300;

/// A profile's or model's last failure: `{"at","reason","status","message"}`, or null.
fn last_error_json(e: Option<LastError>) -> Value {
    match e {
        None => Value::Null,
        Some(e) => {
            let message = match e.message.char_indices().nth(MAX_ERROR_CHARS) {
                Some((cut, _)) => format!("{}…", &e.message[..cut]),
                None => e.message,
            };
            json!({"at": rfc3339(e.at_ms), "reason": e.reason, "status": e.status, "message": message})
        }
    }
}

/// Every model worth showing for a provider: its catalogue, then chain targets, in order.
fn models_of(config: &Config, provider: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |m: &str| {
        if !out.iter().any(|x| x == m) {
            out.push(m.to_string());
        }
    };
    if let Some(p) = config.provider(provider) {
        p.models.iter().for_each(|m| add(&m.id));
    }
    let chains =
        std::iter::once(&config.default_chain).chain(config.agents.iter().map(|a| &a.chain));
    for c in chains {
        for m in std::iter::once(&c.primary).chain(c.fallbacks.iter()) {
            if m.provider == provider {
                add(&m.model);
            }
        }
    }
    out
}

/// The `/status` document.
pub fn status_json(state: &AppState) -> Value {
    let engine = &state.engine();
    let config = &engine.config;
    let now = engine.cooldowns.now_ms();
    let breakers: BTreeMap<Scope, BreakerSnapshot> =
        engine.cooldowns.snapshot().into_iter().collect();
    let providers: Vec<Value> = config
        .providers
        .iter()
        .map(|p| {
            let provider_models = models_of(config, &p.id);
            let profiles: Vec<Value> = p
                .profiles
                .iter()
                .map(|a| {
                    let scope = Scope::profile(&p.id, &a.name);
                    let snap = breakers.get(&scope);
                    let (mut st, mut reason, mut until) = breaker_json(snap);
                    // The key's per-model breakers count too, as `auth-state.json` counts
                    // them under `provider:profile` (a 429 cools the key × model only).
                    let per_model: Vec<&BreakerSnapshot> = breakers
                        .iter()
                        .filter(|(s, _)| {
                            matches!(s, Scope::ProfileModel { provider, profile, .. }
                                if *provider == p.id && *profile == a.name)
                        })
                        .map(|(_, b)| b)
                        .collect();
                    let error_count = per_model
                        .iter()
                        .fold(snap.map_or(0, |s| s.error_count), |n, b| {
                            n.saturating_add(b.error_count)
                        });
                    if st == "ok" {
                        let blocked: Vec<&BreakerSnapshot> = provider_models
                            .iter()
                            .filter_map(|m| breakers.get(&Scope::profile_model(&p.id, &a.name, m)))
                            .filter(|s| s.state != BreakerState::Closed)
                            .collect();
                        if !blocked.is_empty() && blocked.len() == provider_models.len() {
                            // No model can use this key now: cooling (or half-open) like them.
                            let shown = blocked
                                .iter()
                                .find(|s| s.state == BreakerState::HalfOpen)
                                .or_else(|| blocked.iter().min_by_key(|s| s.until_ms));
                            (st, reason, until) = breaker_json(shown.copied());
                        } else if let Some(b) = blocked.first() {
                            // Some of its models cannot use it: degraded, and why.
                            st = json!("degraded");
                            reason = json!(b.reason.map(|r| r.as_str()));
                        }
                    }
                    json!({
                        "id": a.name,
                        "state": st,
                        "reason": reason,
                        "until": until,
                        "error_count": error_count,
                        "last_used": engine.cooldowns.last_used(&p.id, &a.name).map(rfc3339),
                        "key": a.key.as_ref().map(|k| k.redacted()),
                        "last_error": last_error_json(engine.health.last_error(&p.id, Some(&a.name), None)),
                    })
                })
                .collect();
            let models: Vec<Value> = provider_models
                .into_iter()
                .map(|m| {
                    let health = engine.health.view(&p.id, &m, now);
                    let model_scope = breakers.get(&Scope::provider_model(&p.id, &m));
                    let per_profile: Vec<(String, Option<&BreakerSnapshot>)> = p
                        .profiles
                        .iter()
                        .map(|a| (a.name.clone(), breakers.get(&Scope::profile_model(&p.id, &a.name, &m))))
                        .collect();
                    let (mut st, mut reason, mut until) = breaker_json(model_scope);
                    if st == "ok" {
                        // What keeps each key from this model: its profile × model breaker,
                        // else the whole profile's (an auth or billing cooldown).
                        let blocked: Vec<Option<&BreakerSnapshot>> = per_profile
                            .iter()
                            .map(|(name, s)| {
                                s.filter(|s| s.state != BreakerState::Closed).or_else(|| {
                                    breakers
                                        .get(&Scope::profile(&p.id, name))
                                        .filter(|s| s.state != BreakerState::Closed)
                                })
                            })
                            .collect();
                        let cooling: Vec<&BreakerSnapshot> = blocked.iter().flatten().copied().collect();
                        if !blocked.is_empty() && cooling.len() == blocked.len() {
                            // No key can serve it freely: it is half-open while some key
                            // may probe, else cooling down until the soonest key returns.
                            let shown = cooling
                                .iter()
                                .find(|s| s.state == BreakerState::HalfOpen)
                                .or_else(|| cooling.iter().min_by_key(|s| s.until_ms));
                            (st, reason, until) = breaker_json(shown.copied());
                        } else if !cooling.is_empty() || health.degraded {
                            st = json!("degraded");
                            reason = if health.degraded { json!("degraded") } else { json!(cooling[0].reason.map(|r| r.as_str())) };
                            until = Value::Null;
                        }
                    }
                    let profiles: Vec<Value> = per_profile
                        .iter()
                        .map(|(name, s)| {
                            let (st, reason, until) = breaker_json(*s);
                            json!({"id": name, "state": st, "reason": reason, "until": until})
                        })
                        .collect();
                    json!({
                        "id": m,
                        "state": st,
                        "reason": reason,
                        "until": until,
                        "latency_ms": health.latency_ms,
                        "ttft_ms": health.ttft_ms,
                        "error_rate": health.error_rate,
                        "errors_by_reason": health.errors_by_reason,
                        "in_flight": health.in_flight,
                        "requests": {"ok": health.ok, "failed": health.failed},
                        "profiles": profiles,
                        "last_error": last_error_json(engine.health.last_error(&p.id, None, Some(&m))),
                    })
                })
                .collect();
            json!({"id": p.id, "api": p.api.as_str(), "base_url": backstop::state::redis::redact_url(&p.base_url), "profiles": profiles, "models": models})
        })
        .collect();
    let mut chains = vec![("default".to_string(), config.default_chain.clone())];
    chains.extend(
        config
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.chain.clone())),
    );
    let chains: Vec<Value> = chains
        .into_iter()
        .map(|(agent, chain)| {
            let targets: Vec<_> = std::iter::once(chain.primary.clone())
                .chain(chain.fallbacks.iter().cloned())
                .collect();
            let plan = engine.plan(&Route {
                agent: Some(agent.clone()),
                targets: targets.clone(),
            });
            let active = plan.targets.iter().find(|t| t.usable_at.is_none());
            json!({
                "agent": agent,
                "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "active": active.map(|t| t.model.to_string()),
                "active_profile": active.map(|t| t.profile.clone()),
            })
        })
        .collect();
    let events: Vec<Value> = engine
        .health
        .events()
        .into_iter()
        .rev()
        .map(|e| {
            json!({"at": rfc3339(e.at_ms), "request_id": e.request_id, "from": e.from, "to": e.to, "reason": e.reason})
        })
        .collect();
    let sessions = &state.sessions;
    let mut session_store = sessions.info().to_json();
    session_store["count"] = json!(sessions.len());
    session_store["bytes"] = json!(sessions.bytes());
    session_store["evictions"] = json!(sessions.evictions());
    json!({
        "now": rfc3339(now),
        "state": {
            "cooldowns": engine.cooldowns.store().info().to_json(),
            "sessions": session_store,
        },
        "providers": providers,
        "chains": chains,
        "events": events,
    })
}

/// `GET /status`: the JSON document, or the dashboard when a browser asks for HTML.
pub async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let doc = status_json(&state);
    if crate::dashboard::wants_html(&headers) {
        return crate::dashboard::page(&doc);
    }
    let mut resp = Json(doc).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let engine = &state.engine();
    let snapshot = engine.cooldowns.snapshot();
    let config = &engine.config;
    // One gauge series set per configured profile × model (closed when no breaker exists).
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    for p in &config.providers {
        for m in models_of(config, &p.id) {
            for a in &p.profiles {
                let state = snapshot
                    .iter()
                    .filter(|(scope, _)| {
                        scope.provider() == p.id
                            && scope.profile_name().is_none_or(|x| x == a.name)
                            && scope.model().is_none_or(|x| x == m)
                    })
                    .map(|(_, s)| s.state)
                    .max_by_key(|s| match s {
                        BreakerState::Closed => 0,
                        BreakerState::HalfOpen => 1,
                        BreakerState::Open => 2,
                    })
                    .unwrap_or(BreakerState::Closed);
                rows.push((p.id.clone(), a.name.clone(), m.clone(), state.as_str()));
            }
        }
    }
    let gauges: Vec<BreakerGauge<'_>> = rows
        .iter()
        .map(|(provider, profile, model, state)| BreakerGauge {
            provider,
            profile,
            model,
            state,
        })
        .collect();
    let mut body = engine.metrics.render(&gauges);
    // Whether each store reaches its backend (a Redis outage shows as 0).
    body.push_str(
        "# HELP backstop_state_store_up Whether a state store reaches its backend (Redis: connected).\n# TYPE backstop_state_store_up gauge\n",
    );
    for (name, info) in [
        ("cooldowns", engine.cooldowns.store().info()),
        ("sessions", state.sessions.info()),
    ] {
        body.push_str(&format!(
            "backstop_state_store_up{{store=\"{name}\",kind=\"{}\"}} {}\n",
            info.kind,
            u8::from(info.connected)
        ));
    }
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
