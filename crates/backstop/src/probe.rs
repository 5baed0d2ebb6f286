//! Probing: a tiny real request to every target and profile of every chain, so a
//! dead fallback is found before the outage that needs it (PRODUCT §5).
//!
//! Probes go straight to each (provider, model, profile) — no retries, no
//! fallback, no cooldowns recorded — through the same provider code the gateway
//! uses, with a per-probe timeout and bounded concurrency.

use crate::chat::{Message, Request, Role, WireFormat};
use crate::config::{Config, ModelRef, Route};
use crate::failover::{Call, Engine, Failure, Reason, Target};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// `provider/model`.
    pub target: String,
    pub profile: String,
    pub ok: bool,
    /// The failure reason (`rate_limit`, `auth`, …) when it failed.
    pub reason: Option<String>,
    /// The upstream status, when there was one.
    pub status: Option<u16>,
    /// A one-line description of the failure (already free of secrets).
    pub message: Option<String>,
    pub latency_ms: u64,
}

/// Every chain and whether any of its targets answered.
#[derive(Debug, Clone, Serialize)]
pub struct ChainResult {
    pub agent: String,
    pub targets: Vec<String>,
    /// The targets (`provider/model`) that answered on at least one profile.
    pub working: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub results: Vec<ProbeResult>,
    pub chains: Vec<ChainResult>,
}

impl ProbeReport {
    /// 0 when every target and profile answered; 1 when some failed but every chain still
    /// has a working target; 2 when a chain has none.
    pub fn exit_code(&self) -> u8 {
        if self.chains.iter().any(|c| c.working.is_empty()) {
            2
        } else if self.results.iter().any(|r| !r.ok) {
            1
        } else {
            0
        }
    }
}

/// Every chain of the config: `default` first, then the agents.
pub fn chains(config: &Config) -> Vec<(String, Vec<ModelRef>)> {
    let mut out = vec![(
        "default".to_string(),
        std::iter::once(config.default_chain.primary.clone())
            .chain(config.default_chain.fallbacks.iter().cloned())
            .collect(),
    )];
    for a in &config.agents {
        out.push((
            a.id.clone(),
            std::iter::once(a.chain.primary.clone())
                .chain(a.chain.fallbacks.iter().cloned())
                .collect(),
        ));
    }
    out
}

/// The smallest useful request: one word in, one token out.
fn probe_request(model: &ModelRef) -> Request {
    Request {
        model: model.to_string(),
        messages: vec![Message::text(Role::User, "ping")],
        max_tokens: Some(1),
        ..Request::default()
    }
}

/// Probe every distinct (target, profile) of every chain. `on_done` is called after each
/// probe with (done, total), for a progress display.
pub async fn probe_all(
    engine: Arc<Engine>,
    concurrency: usize,
    timeout: Duration,
    on_done: impl Fn(usize, usize) + Send + Sync + 'static,
) -> ProbeReport {
    let config = engine.config.clone();
    let chains = chains(&config);
    // Distinct targets in chain order.
    let mut targets: Vec<ModelRef> = Vec::new();
    for (_, ts) in &chains {
        for t in ts {
            if !targets.contains(t) {
                targets.push(t.clone());
            }
        }
    }
    let mut jobs: Vec<(ModelRef, String)> = Vec::new();
    for t in &targets {
        if let Some(p) = config.provider(&t.provider) {
            for a in &p.profiles {
                jobs.push((t.clone(), a.name.clone()));
            }
        }
    }
    let total = jobs.len();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let on_done = Arc::new(on_done);
    let mut handles = Vec::with_capacity(total);
    for (model, profile) in jobs {
        let engine = engine.clone();
        let gate = gate.clone();
        let done = done.clone();
        let on_done = on_done.clone();
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            let result = probe_one(&engine, &model, &profile, timeout).await;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            on_done(n, total);
            result
        }));
    }
    let mut results = Vec::with_capacity(total);
    for h in handles {
        if let Ok(r) = h.await {
            results.push(r);
        }
    }
    let mut ok_targets: BTreeMap<String, bool> = BTreeMap::new();
    for r in &results {
        *ok_targets.entry(r.target.clone()).or_insert(false) |= r.ok;
    }
    let chains = chains
        .into_iter()
        .map(|(agent, ts)| {
            let names: Vec<String> = ts.iter().map(ToString::to_string).collect();
            let working = names
                .iter()
                .filter(|n| ok_targets.get(*n).copied().unwrap_or(false))
                .cloned()
                .collect();
            ChainResult {
                agent,
                targets: names,
                working,
            }
        })
        .collect();
    ProbeReport { results, chains }
}

async fn probe_one(
    engine: &Engine,
    model: &ModelRef,
    profile: &str,
    timeout: Duration,
) -> ProbeResult {
    let request = probe_request(model);
    let call = Call {
        request_id: format!("probe_{:016x}", fastrand::u64(..)),
        ingress: WireFormat::OpenAi,
        raw: Arc::new(serde_json::Value::Null.into()),
        request: Arc::new(request),
        route: Route {
            agent: None,
            targets: vec![model.clone()],
        },
        session: None,
        translate: true,
        anthropic_beta: None,
    };
    let target = Target {
        model_index: 0,
        model: model.clone(),
        profile: profile.to_string(),
        usable_at: None,
    };
    let started = Instant::now();
    let result = engine
        .attempt_target(&call, &target, started + timeout)
        .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (ok, failure): (bool, Option<Failure>) = match result {
        Ok(_) => (true, None),
        Err(f) => (false, Some(f)),
    };
    ProbeResult {
        target: model.to_string(),
        profile: profile.to_string(),
        ok,
        reason: failure.as_ref().map(|f| f.reason.as_str().to_string()),
        status: failure.as_ref().and_then(|f| f.status),
        message: failure.as_ref().map(describe),
        latency_ms,
    }
}

fn describe(f: &Failure) -> String {
    let mut m = f.message.clone();
    if m.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|i| m.is_char_boundary(*i))
            .unwrap_or(0);
        m.truncate(cut);
        m.push('…');
    }
    if f.reason == Reason::Unknown {
        m
    } else {
        format!("{}: {m}", f.reason)
    }
}
