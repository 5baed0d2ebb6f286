//! Sending the simulated traffic: one request every `interval` of simulated time,
//! each through the real engine (and, when streamed, the real stream relay with its
//! rescues), each recorded as the client saw it.

use super::progress::Progress;
use super::vtime::SimClock;
use super::world::{World, prompt};
use backstop::failover::relay::{Committed, relay};
use backstop::failover::{Answer, Call, Engine, Reason};
use backstop::{WireFormat, render};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One request, as its client saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Simulated arrival time, ms from the start.
    pub at_ms: u64,
    pub stream: bool,
    /// The client got a whole answer (a stream ended with its terminator, no in-band error).
    pub ok: bool,
    /// The status the client got when it did not (an in-band stream error counts as none).
    pub status: Option<u16>,
    /// `provider/model` that answered (the committed target for streams).
    pub served_by: Option<String>,
    pub profile: Option<String>,
    /// The answering model's place in the chain (0 = primary).
    pub model_index: Option<usize>,
    /// Why a fallback served, when one did.
    pub fallback_reason: Option<String>,
    /// Failed attempts' reasons (retries, key rotations and fallbacks before the answer).
    pub failed: Vec<Reason>,
    /// Answered by the model of a failed attempt, on another key: a key rotation helped.
    pub rotated: bool,
    /// Upstream attempts, rescues of a cut stream included.
    pub attempts: usize,
    /// Attempts after the stream had been committed to the client (rescues).
    pub rescue_attempts: usize,
    /// Simulated time until the client had the whole answer (or the error).
    pub latency_ms: u64,
    /// What a direct client of the primary would have got: `Some(latency)` = an answer.
    pub direct: Option<u64>,
}

/// Progress counters shared with the request tasks.
#[derive(Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub ok: AtomicU64,
}

/// Send every request of the scenario; records in arrival order.
pub async fn run(
    engine: Arc<Engine>,
    world: Arc<World>,
    model: String,
    progress: &mut Progress,
) -> Vec<RequestRecord> {
    let clock = world.clock;
    let scenario = &world.scenario;
    let counters = Arc::new(Counters::default());
    let interval = scenario.interval_ms();
    let mut tasks = Vec::with_capacity(scenario.requests as usize);
    for id in 0..scenario.requests {
        let at_ms = (id as f64 * interval).round() as u64;
        tokio::time::sleep_until(clock.at(at_ms)).await;
        progress.tick(at_ms, scenario.duration_ms, id, &counters);
        let stream = super::world::unit(super::world::draw(world.seed, &[id, u64::MAX]))
            < scenario.stream_share;
        tasks.push(tokio::spawn(one(
            engine.clone(),
            world.clone(),
            model.clone(),
            id,
            at_ms,
            stream,
            counters.clone(),
        )));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            records.push(r);
        }
        progress.tick(
            clock.elapsed_ms().min(scenario.duration_ms),
            scenario.duration_ms,
            scenario.requests,
            &counters,
        );
    }
    records
}

async fn one(
    engine: Arc<Engine>,
    world: Arc<World>,
    model: String,
    id: u64,
    at_ms: u64,
    stream: bool,
    counters: Arc<Counters>,
) -> RequestRecord {
    let clock: SimClock = world.clock;
    let mut rec = RequestRecord {
        at_ms,
        stream,
        ok: false,
        status: None,
        served_by: None,
        profile: None,
        model_index: None,
        fallback_reason: None,
        failed: Vec::new(),
        rotated: false,
        attempts: 0,
        rescue_attempts: 0,
        latency_ms: 0,
        direct: None,
    };
    let raw = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt(id)}],
        "stream": stream,
    });
    let result = match (
        backstop::wire::openai::decode_request(&raw),
        engine.config.resolve(&model, None),
    ) {
        (Ok(request), Ok(route)) => {
            if let Some(primary) = route.targets.first() {
                rec.direct = world.direct(id, at_ms, &primary.provider, &primary.model);
            }
            let call = Call {
                request_id: format!("sim-{id}"),
                ingress: WireFormat::OpenAi,
                raw: Arc::new(raw.into()),
                request: Arc::new(request),
                route,
                session: None,
                translate: false,
                anthropic_beta: None,
            };
            Some((engine.execute(&call).await, call))
        }
        _ => None,
    };
    let mut committed_attempts = 0;
    match result {
        None => rec.status = Some(400),
        Some((Ok(success), call)) => {
            committed_attempts = success.attempts();
            rec.served_by = Some(success.target.model.to_string());
            rec.profile = Some(success.target.profile.clone());
            rec.model_index = Some(success.target.model_index);
            rec.fallback_reason = success.fallback_notice().map(|(r, _)| r.to_string());
            rec.failed = success.failed.iter().map(|a| a.failure.reason).collect();
            rec.rotated = success.failed.iter().any(|a| {
                a.target.model == success.target.model && a.target.profile != success.target.profile
            });
            match success.answer {
                Answer::Complete { .. } => rec.ok = true,
                Answer::Stream { head, rest } => {
                    let committed = Committed {
                        target: success.target,
                        upstream_format: success.upstream_format,
                        head,
                        rest,
                    };
                    let mut relayed = relay(engine.clone(), call, committed, false);
                    let mut body = Vec::new();
                    while let Some(bytes) = relayed.next().await {
                        body.extend_from_slice(&bytes);
                    }
                    rec.ok = contains(&body, b"data: [DONE]") && !contains(&body, b"{\"error\"");
                }
            }
        }
        Some((Err(failure), _)) => {
            rec.failed = failure.failed.iter().map(|a| a.failure.reason).collect();
            let e = render::chain_error(
                WireFormat::OpenAi,
                |p| engine.config.provider(p).map(|p| p.api),
                &failure,
            );
            rec.status = Some(e.error.status);
        }
    }
    rec.latency_ms = clock.elapsed_ms().saturating_sub(at_ms);
    rec.attempts = world
        .attempts(id)
        .len()
        .max(rec.failed.len() + usize::from(rec.served_by.is_some()));
    rec.rescue_attempts = rec
        .attempts
        .saturating_sub(committed_attempts.max(rec.failed.len()));
    if rec.served_by.is_none() {
        rec.rescue_attempts = 0;
    }
    counters.done.fetch_add(1, Ordering::Relaxed);
    if rec.ok {
        counters.ok.fetch_add(1, Ordering::Relaxed);
    }
    rec
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
