//! Execution: try the plan's targets until one answers.
//!
//! For a streaming request an attempt succeeds only once the upstream has
//! produced its first content (the commit point): every failure before that
//! moves on invisibly to the client.

use super::budget::RetryBudget;
use super::classify;
use super::cooldowns::Cooldowns;
use super::decide::{Action, Situation, decide};
use super::failure::{Failure, Phase, Reason};
use super::plan::{AttemptPlan, LazyPlan, Target};
use super::session::SessionCtx;
use super::stream::{Assembler, StreamItem, UpstreamDecoder, UpstreamStream};
use crate::chat::{self, ChunkEvents, StreamEvent, WireFormat};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ModelRef, Route, StreamCommit};
use crate::health::{FailoverEvent, Health};
use crate::metrics::Metrics;
use crate::provider::{Upstream, Upstreams, anthropic::DEFAULT_MAX_TOKENS};
use crate::sse::SseEvent;
use crate::state::{Admission, MemoryStore, StateStore};
use crate::sync::lock;
use crate::wire;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Upper bound on an upstream error or answer body we are willing to buffer.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// One client request, decoded.
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: String,
    /// The format the client speaks.
    pub ingress: WireFormat,
    /// The client's body as sent (for same-format passthrough).
    pub raw: Arc<RawBody>,
    /// The client's request in the neutral model (for cross-format translation).
    pub request: Arc<chat::Request>,
    pub route: Route,
    /// The session the call belongs to (`x-backstop-session`), if any.
    pub session: Option<SessionCtx>,
    /// Always translate from `request`, even to a same-format upstream (rescue attempts
    /// send a request the client never wrote).
    pub translate: bool,
    /// The client's `anthropic-beta` header, sent on to Anthropic upstreams (never to others).
    pub anthropic_beta: Option<http::HeaderValue>,
}

/// A client's body as sent: its JSON value, or the bytes it is read from (the value is
/// then parsed only if a same-format body must be rebuilt), and the few fields the
/// engine reads of it.
#[derive(Debug)]
pub struct RawBody {
    value: std::sync::OnceLock<serde_json::Value>,
    /// The bytes, when the caller has them: the same-format body is then these bytes
    /// with `model` (and `stream`) spliced in, not the value re-serialized.
    bytes: Option<Bytes>,
    facts: wire::openai::RequestFacts,
}

impl From<serde_json::Value> for RawBody {
    fn from(value: serde_json::Value) -> Self {
        RawBody {
            facts: wire::openai::RequestFacts::of(&value),
            value: value.into(),
            bytes: None,
        }
    }
}

impl RawBody {
    /// A body parsed into `value` from `bytes`.
    pub fn parsed(bytes: Bytes, value: serde_json::Value) -> Self {
        RawBody {
            bytes: Some(bytes),
            ..value.into()
        }
    }

    /// A body read straight from `bytes` ([`wire::openai::decode_request_fast`]), whose
    /// value is parsed from them if it is ever needed: the bytes must be a JSON object.
    pub fn scanned(bytes: Bytes, facts: wire::openai::RequestFacts) -> Self {
        RawBody {
            value: std::sync::OnceLock::new(),
            bytes: Some(bytes),
            facts,
        }
    }

    /// The body as a JSON value.
    pub fn value(&self) -> &serde_json::Value {
        self.value.get_or_init(|| {
            self.bytes
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default()
        })
    }

    pub fn bytes(&self) -> Option<&Bytes> {
        self.bytes.as_ref()
    }

    /// `n`, `logprobs`, `stream_options` (read by the engine for an OpenAI client).
    pub fn facts(&self) -> &wire::openai::RequestFacts {
        &self.facts
    }
}

/// An answer that reached the commit point.
pub enum Answer {
    /// A complete answer: the upstream's bytes and what they mean. When it was assembled
    /// from a stream for a client of another format (or from Gemini), `body` is empty:
    /// that client's body is encoded from `response`.
    Complete {
        body: Bytes,
        response: chat::Response,
    },
    /// A stream whose first content has arrived. `head` holds every event read so far.
    Stream {
        head: Vec<(SseEvent, ChunkEvents)>,
        rest: Box<UpstreamStream>,
    },
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub target: Target,
    pub failure: Failure,
}

/// The request was answered.
pub struct Success {
    pub target: Target,
    /// The format the answering upstream speaks.
    pub upstream_format: WireFormat,
    /// The chain's first model (to tell whether a fallback served).
    pub first_model: Option<ModelRef>,
    /// Attempts that failed before this one.
    pub failed: Vec<Attempt>,
    /// Targets skipped because they were cooling down, with the cooldown's reason.
    pub skipped: Vec<(Target, Reason)>,
    pub answer: Answer,
    /// Time spent on upstream attempts and retry waits (the rest of the request's time
    /// is the gateway's own overhead).
    pub upstream_time: Duration,
    /// `fallback cleared: back on …` when this answer returned the chain (or session) to
    /// its first model after a fallback — said once.
    pub fallback_cleared: Option<String>,
}

impl Success {
    /// Every upstream attempt, this one included.
    pub fn attempts(&self) -> usize {
        self.failed.len() + 1
    }

    /// Whether a model other than the chain's first answered.
    pub fn is_fallback(&self) -> bool {
        self.first_model
            .as_ref()
            .is_some_and(|first| first != &self.target.model)
    }

    /// `(reason, one-line notice)` when a fallback answered.
    pub fn fallback_notice(&self) -> Option<(&'static str, String)> {
        if !self.is_fallback() {
            return None;
        }
        let first = self.first_model.as_ref()?;
        // Why the chain's first model did not answer: it failed, it was cooling down and
        // skipped, or it was degraded and put after healthier ones.
        let (reason, describe, model) =
            if let Some(a) = self.failed.iter().rev().find(|a| &a.target.model == first) {
                (
                    a.failure.reason.as_str(),
                    a.failure.reason.describe(),
                    first,
                )
            } else if let Some((t, r)) = self.skipped.iter().find(|(t, _)| &t.model == first) {
                // A skip for a bad request: the model cannot serve what was asked (`n`).
                let why = if *r == Reason::BadRequest {
                    "cannot serve this request"
                } else {
                    "cooling down"
                };
                (r.as_str(), why, &t.model)
            } else if let Some(a) = self.failed.last() {
                (
                    a.failure.reason.as_str(),
                    a.failure.reason.describe(),
                    &a.target.model,
                )
            } else {
                ("degraded", "degraded", first)
            };
        Some((
            reason,
            format!("switched to {} ({model} {describe})", self.target.model),
        ))
    }
}

/// Every target failed (or one failure must go back to the client as is).
#[derive(Debug, Clone)]
pub struct ChainFailure {
    pub failed: Vec<Attempt>,
    /// Models that could not be tried at all, with why.
    pub unusable: Vec<(ModelRef, String)>,
    /// Targets never tried because they were cooling down, with when they recover (epoch ms).
    pub cooling: Vec<(Target, u64)>,
    /// True when the last failure was returned on purpose (a client-side error).
    pub returned: bool,
    /// True when retries stopped because the retry budget was spent.
    pub budget_spent: bool,
    /// How long until the soonest target becomes usable again, when one is cooling.
    pub retry_after: Option<Duration>,
    /// Time spent on upstream attempts and retry waits.
    pub upstream_time: Duration,
    /// No model of the chain can serve the request (an OpenAI client's `n` > 1 or
    /// `logprobs` with only Anthropic and Gemini models): the request field
    /// (`param`) and why. Nothing was tried.
    pub unservable: Option<(String, String)>,
}

/// Something in an OpenAI client's request that only an OpenAI-compatible upstream
/// can honour: several choices (`n`) or log probabilities (`logprobs: true`).
struct OpenAiOnly {
    /// The request field, as OpenAI's `param` names it.
    param: &'static str,
    /// What the client asked for, e.g. `n: 3 choices`.
    what: String,
    /// What the other formats' APIs do instead.
    lacks: &'static str,
}

impl OpenAiOnly {
    fn of(call: &Call) -> Option<Self> {
        if call.ingress != WireFormat::OpenAi {
            return None;
        }
        let choices = requested_choices(call);
        if choices > 1 {
            return Some(OpenAiOnly {
                param: "n",
                what: format!("n: {choices} choices"),
                lacks: "returns one answer",
            });
        }
        wants_logprobs(call).then(|| OpenAiOnly {
            param: "logprobs",
            what: "logprobs: true".to_string(),
            lacks: "returns no log probabilities",
        })
    }
}

/// The engine: configuration, one pooled client per provider, and the shared
/// failover state (cooldowns, retry budget).
pub struct Engine {
    pub config: Arc<Config>,
    upstreams: Upstreams,
    pub cooldowns: Cooldowns,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    budget: RetryBudget,
    rng: Mutex<fastrand::Rng>,
    /// The model that last answered each chain (agent id, or the first model), to tell
    /// when traffic returns to the primary.
    active: Mutex<std::collections::HashMap<String, ModelRef, crate::NameHasher>>,
}

/// How one target ended.
enum TargetEnd {
    Answered(Answer),
    /// Move on, as the decision said.
    Next(Action),
    /// The retry budget is spent: stop retrying and failing over.
    BudgetSpent,
}

/// Book-keeping for one request.
struct Run {
    deadline: Instant,
    attempts: usize,
    failed: Vec<Attempt>,
    /// Time spent waiting on upstreams and between retries (the rest is gateway overhead).
    upstream_time: Duration,
    skipped: Vec<(Target, Reason)>,
    /// The last failover decision, logged once the next attempt's target (`to`) is known,
    /// or with `to = "none"` when the request ends there (dropped with the run).
    pending: Option<Decision>,
}

/// One failover decision as its structured log event says it (PRODUCT §5): request id,
/// `from` (`provider/model`, and `from_profile`), `to` (the next attempt's
/// `provider/model` and `to_profile`, or `none`), reason, attempt. Logged when dropped.
struct Decision {
    request_id: String,
    from: Target,
    to: Option<Target>,
    attempt: usize,
    reason: Reason,
    status: Option<u16>,
    action: Action,
    cooldown: Option<String>,
    error: String,
}

impl Drop for Decision {
    fn drop(&mut self) {
        let to = self.to.as_ref();
        tracing::info!(
            request_id = %self.request_id,
            from = %self.from.model,
            from_profile = %self.from.profile,
            to = %to.map_or_else(|| "none".to_string(), |t| t.model.to_string()),
            to_profile = to.map(|t| t.profile.as_str()),
            attempt = self.attempt,
            reason = %self.reason,
            status = self.status,
            action = ?self.action,
            cooldown = self.cooldown.as_deref(),
            error = %self.error,
            "failover decision"
        );
    }
}

impl Engine {
    /// An engine with in-memory state and the system clock.
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        Self::with_state(config, Arc::new(MemoryStore::new()), Arc::new(SystemClock))
    }

    /// An engine on the given state store and clock (tests inject a manual clock).
    pub fn with_state(
        config: Arc<Config>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let upstreams = Upstreams::new(&config)?;
        // A cooldown may honour a provider's Retry-After up to the ladder's own cap;
        // `retry.max_retry_after_ms` only bounds how long one request waits.
        let cooldowns = Cooldowns::new(
            store,
            clock,
            config.auth.cooldowns.clone(),
            Duration::from_secs(24 * 60 * 60),
        )
        .with_probe_lease(Duration::from_millis(config.timeouts.request_ms));
        let budget = RetryBudget::from_config(&config.retry);
        Ok(Engine {
            health: Arc::new(Health::new(config.health)),
            metrics: Arc::new(Metrics::new()),
            config,
            upstreams,
            cooldowns,
            budget,
            rng: Mutex::new(fastrand::Rng::new()),
            active: Mutex::new(std::collections::HashMap::default()),
        })
    }

    /// Seed every random draw of the engine (backoff and cooldown jitter), so a run on a
    /// manual or simulated clock is reproducible (`backstop simulate --seed`).
    ///
    /// ```
    /// use backstop::config::{from_str, ConfigOrigin, Format, MapEnv};
    /// use backstop::failover::Engine;
    /// use std::sync::Arc;
    /// let config = from_str("{ providers: { ollama: { models: [\"llama3.2\"] } } }",
    ///     Format::Json5, ConfigOrigin::Environment, &MapEnv::new()).unwrap();
    /// let engine = Engine::new(Arc::new(config)).unwrap().with_seed(7);
    /// assert_eq!(engine.config.default_chain.primary.to_string(), "ollama/llama3.2");
    /// ```
    /// An engine on a new config that keeps this one's state: the store (cooldowns,
    /// breakers, last use), the clock, health and metrics. Breakers of targets that
    /// still exist carry on; a hot reload swaps this in.
    pub fn reconfigure(&self, config: Arc<Config>) -> Result<Engine, String> {
        let mut next = Engine::with_state(
            config,
            self.cooldowns.store().clone(),
            self.cooldowns.clock().clone(),
        )?;
        self.health.set_config(next.config.health);
        next.health = self.health.clone();
        next.metrics = self.metrics.clone();
        Ok(next)
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(fastrand::Rng::with_seed(seed));
        // A different stream for the cooldowns, so the two draws are not correlated.
        self.cooldowns = self.cooldowns.with_seed(seed ^ 0x9E37_79B9_7F4A_7C15);
        self
    }

    /// The plan this call would follow now.
    pub fn plan(&self, route: &Route) -> AttemptPlan {
        self.plan_with(route, None)
    }

    /// The plan, with `pinned_profile` first among its provider's usable keys.
    pub fn plan_with(&self, route: &Route, pinned_profile: Option<&str>) -> AttemptPlan {
        let now = self.cooldowns.now_ms();
        let degraded = self.degraded(now);
        let mut plan = LazyPlan::new(
            &self.config,
            route,
            &self.cooldowns,
            &degraded,
            pinned_profile,
            now,
        );
        std::mem::take(plan.complete())
    }

    /// Whether the planner puts a model after the healthy ones, as of `now`.
    fn degraded(&self, now: u64) -> impl Fn(&str, &str) -> bool + Sync + '_ {
        let probe_interval = self.config.auth.cooldowns.probe_interval_ms;
        move |p, m| self.health.avoid(p, m, now, probe_interval)
    }

    /// Profile names of a provider, in config order.
    fn profile_names(&self, provider: &str) -> Vec<String> {
        self.config
            .provider(provider)
            .map(|p| p.profiles.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Serve one call: plan, then try targets in order, retrying, rotating and
    /// falling back as the decision says, within one deadline.
    pub async fn execute(&self, call: &Call) -> Result<Success, ChainFailure> {
        self.budget.deposit(self.cooldowns.now_ms());
        let current = call.session.as_ref().and_then(|c| c.store.touch(&c.id));
        let steering = super::session::steer(current.as_ref(), &call.route, &self.cooldowns, |p| {
            self.profile_names(p)
        });
        let route = steering.route.as_ref().unwrap_or(&call.route);
        // Targets are found as they are asked for: most requests need only the first.
        let now = self.cooldowns.now_ms();
        let degraded = self.degraded(now);
        let mut plan = LazyPlan::new(
            &self.config,
            route,
            &self.cooldowns,
            &degraded,
            steering.profile.as_deref(),
            now,
        );
        let mut skipped_first: Vec<(Target, Reason)> = Vec::new();
        if steering.route.is_some()
            && let Some(first) = call.route.targets.first()
        {
            // The session led with its pinned fallback because the chain's first model is
            // cooling down: that cooldown is the reason a fallback answers.
            for (scope, snap) in self.cooldowns.snapshot() {
                let covers = scope.provider() == first.provider
                    && scope.model().is_none_or(|m| m == first.model);
                if covers
                    && snap.state != crate::state::BreakerState::Closed
                    && let Some(reason) = snap.reason
                {
                    skipped_first.push((
                        Target {
                            model_index: 0,
                            model: first.clone(),
                            profile: scope.profile_name().unwrap_or("").to_string(),
                            usable_at: snap.until_ms,
                        },
                        reason,
                    ));
                }
            }
        }
        let mut run = Run {
            deadline: Instant::now() + Duration::from_millis(self.config.timeouts.request_ms),
            attempts: 0,
            failed: Vec::new(),
            upstream_time: Duration::ZERO,
            skipped: skipped_first,
            pending: None,
        };
        if let Some(need) = OpenAiOnly::of(call) {
            let send = if need.param == "n" {
                "n=1"
            } else {
                "no logprobs"
            };
            let message = |models: &str| {
                format!(
                    "{} cannot be served by any model of the chain ({models}): only an \
                     OpenAI-compatible model can; the Anthropic and Gemini APIs {}. Send {send}, \
                     or add an OpenAI-compatible model to the chain",
                    need.what, need.lacks,
                )
            };
            run = self.keep_only_format(
                (plan.complete(), run),
                route,
                WireFormat::OpenAi,
                (&need.what, need.lacks),
                (need.param, message),
            )?;
        }
        if let Some(u) = &call.request.untranslatable {
            // Only a model of the client's own format, sent its body as is, can take it.
            let what = format!("{} ({})", u.what, u.param);
            let message = |models: &str| {
                format!(
                    "{}: {} cannot be translated for any model of the chain ({models}): only a \
                     model of the {} API can take it. Leave it out, or add such a model to the \
                     chain",
                    u.param, u.what, call.ingress,
                )
            };
            run = self.keep_only_format(
                (plan.complete(), run),
                route,
                call.ingress,
                (&what, "cannot take it"),
                (&u.param, message),
            )?;
        }
        let first_model = call.route.targets.first().cloned();
        let mut skip_model: Option<usize> = None;
        // After a context overflow: only models with a larger window than this one.
        let mut need_window_above: Option<u64> = None;
        // Indices of the targets skipped as cooling down.
        let mut cooling: Vec<usize> = Vec::new();
        let mut budget_spent = false;
        let mut idx = 0;
        while let Some(target) = plan.get(idx) {
            let this = idx;
            idx += 1;
            if skip_model == Some(target.model_index) {
                continue;
            }
            if let Some(min) = need_window_above
                && self.window(&target.model).is_some_and(|w| w <= min)
            {
                continue;
            }
            if Instant::now() >= run.deadline {
                break;
            }
            plan.before_admit();
            let target = &plan.found()[this];
            let (p, a, m) = (&target.model.provider, &target.profile, &target.model.model);
            if let Admission::Denied { until_ms, reason } = self.cooldowns.admit(p, a, m) {
                tracing::debug!(request_id = %call.request_id, upstream = %target, %reason, until_ms, "skipped: cooling down");
                cooling.push(this);
                run.skipped.push((target.clone(), reason));
                continue;
            }
            let action = match self.try_target(call, &mut plan, this, &mut run).await {
                TargetEnd::Answered(answer) => {
                    // The plan ends here: its target moves into the answer.
                    let target = plan.into_target(this);
                    return Ok(self.success(call, target, first_model, run, answer));
                }
                TargetEnd::BudgetSpent => {
                    budget_spent = true;
                    break;
                }
                TargetEnd::Next(action) => action,
            };
            let target = &plan.found()[this];
            match action {
                Action::ReturnToClient => {
                    return Err(self.chain_failure(plan.complete(), run, true, false));
                }
                Action::NextModel => skip_model = Some(target.model_index),
                Action::NextLargerModel => {
                    skip_model = Some(target.model_index);
                    // Unknown window: nothing to compare with, every later model may try.
                    if let Some(w) = self.window(&target.model) {
                        need_window_above = Some(need_window_above.map_or(w, |n| n.max(w)));
                    }
                }
                Action::NextProfile | Action::RetrySame { .. } => {}
            }
        }
        // Every target was cooling down: probe the one that recovers soonest rather than
        // failing without trying (PRODUCT §3.3).
        if run.attempts == 0 && !budget_spent && Instant::now() < run.deadline {
            let targets = &plan.complete().targets;
            let soonest = cooling.iter().copied().min_by_key(|&i| {
                let t = &targets[i];
                self.cooldowns
                    .usable_at(&t.model.provider, &t.profile, &t.model.model)
            });
            if let Some(soonest) = soonest {
                let target = &targets[soonest];
                let idx = targets.iter().position(|t| t == target).unwrap_or(0);
                tracing::info!(request_id = %call.request_id, upstream = %target, "every target is cooling down: probing the soonest");
                if let TargetEnd::Answered(answer) =
                    self.try_target(call, &mut plan, idx, &mut run).await
                {
                    let target = plan.into_target(soonest);
                    return Ok(self.success(call, target, first_model, run, answer));
                }
            }
        }
        Err(self.chain_failure(plan.complete(), run, false, budget_spent))
    }

    /// A request only models of `format` can serve: the others leave the plan
    /// ([`Engine::drop_unsuited`]); when the chain has none, a client error naming
    /// `param` (its message built from the chain's models), before any attempt.
    fn keep_only_format(
        &self,
        (plan, mut run): (&mut AttemptPlan, Run),
        route: &Route,
        format: WireFormat,
        (what, lacks): (&str, &str),
        (param, message): (&str, impl FnOnce(&str) -> String),
    ) -> Result<Run, ChainFailure> {
        self.drop_unsuited(plan, &mut run, format, what, lacks);
        if route
            .targets
            .iter()
            .any(|m| self.api_of(&m.provider) == Some(format))
        {
            return Ok(run);
        }
        let models: Vec<String> = route.targets.iter().map(ToString::to_string).collect();
        let mut failure = self.chain_failure(plan, run, false, false);
        failure.unservable = Some((param.to_string(), message(&models.join(", "))));
        Err(failure)
    }

    /// Take the targets whose API cannot honour `need` out of the plan: skipped, like a
    /// model whose context window is too small, never counted as attempts; listed with
    /// the models that could not be tried when every target fails.
    fn drop_unsuited(
        &self,
        plan: &mut AttemptPlan,
        run: &mut Run,
        format: WireFormat,
        what: &str,
        lacks: &str,
    ) {
        let mut unsuited: Vec<(ModelRef, WireFormat)> = Vec::new();
        plan.targets
            .retain(|t| match self.api_of(&t.model.provider) {
                None => true,
                Some(api) if api == format => true,
                Some(api) => {
                    if !unsuited.iter().any(|(m, _)| m == &t.model) {
                        unsuited.push((t.model.clone(), api));
                    }
                    run.skipped.push((t.clone(), Reason::BadRequest));
                    false
                }
            });
        for (model, api) in unsuited {
            plan.unusable.push((
                model,
                format!("skipped: cannot serve {what} (the {api} API {lacks})"),
            ));
        }
    }

    /// The wire format of a provider's API (`None`: not configured).
    pub(crate) fn api_of(&self, provider: &str) -> Option<WireFormat> {
        self.upstreams.get(provider).map(|u| u.api())
    }

    /// Take one unit of retry budget (a retry, failover or rescue attempt).
    pub(crate) fn spend_retry(&self) -> bool {
        self.budget.try_withdraw(self.cooldowns.now_ms())
    }

    /// One attempt on a target, outside the request's plan loop (rescues).
    pub async fn attempt_target(
        &self,
        call: &Call,
        target: &Target,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let upstream = self
            .upstreams
            .get(&target.model.provider)
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Reason::BadRequest,
                    Phase::Transport,
                    "provider is not configured",
                )
            })?;
        self.attempt(call, &upstream, target, deadline).await
    }

    fn window(&self, model: &ModelRef) -> Option<u64> {
        crate::models::context_window(&self.config, &model.provider, &model.model)
    }

    fn success(
        &self,
        call: &Call,
        target: Target,
        first_model: Option<ModelRef>,
        run: Run,
        answer: Answer,
    ) -> Success {
        let upstream_time = run.upstream_time;
        let mut success = Success {
            fallback_cleared: None,
            upstream_time,
            upstream_format: self
                .upstreams
                .get(&target.model.provider)
                .map_or(call.ingress, |u| u.api()),
            target,
            first_model,
            failed: run.failed,
            skipped: run.skipped,
            answer,
        };
        let notice = success.fallback_notice();
        // Back on the chain's first model after a fallback: say so once.
        let first_model_name;
        let agent = match (&call.route.agent, &success.first_model) {
            (Some(agent), _) => agent.as_str(),
            (None, Some(m)) => {
                // What `m.to_string()` writes, without the formatting machinery.
                let mut name = String::with_capacity(m.provider.len() + 1 + m.model.len());
                name.push_str(&m.provider);
                name.push('/');
                name.push_str(&m.model);
                first_model_name = name;
                first_model_name.as_str()
            }
            (None, None) => "",
        };
        // Whether the chain's model before this answer (the map holds this one after)
        // was another than its first: no allocation when this model answered last time.
        let was_elsewhere = {
            let mut active = lock(&self.active);
            let model = &success.target.model;
            match active.get_mut(agent) {
                Some(slot) => {
                    let elsewhere = Some(&*slot) != success.first_model.as_ref();
                    if slot != model {
                        *slot = model.clone();
                    }
                    elsewhere
                }
                None => {
                    active.insert(agent.to_string(), model.clone());
                    false
                }
            }
        };
        let session_had_notice = call
            .session
            .as_ref()
            .and_then(|c| c.store.get(&c.id))
            .is_some_and(|s| s.fallback_notice.is_some());
        if notice.is_none() && (session_had_notice || was_elsewhere) {
            let cleared = format!("fallback cleared: back on {}", success.target.model);
            tracing::info!(request_id = %call.request_id, "{cleared}");
            self.health.push_event(FailoverEvent {
                at_ms: self.cooldowns.now_ms(),
                request_id: call.request_id.clone(),
                from: previous_or(&success, &call.route),
                to: success.target.model.to_string(),
                reason: "fallback_cleared".to_string(),
            });
            success.fallback_cleared = Some(cleared);
        }
        if let Some(ctx) = &call.session {
            super::session::after_success(ctx, notice.as_ref().map(|(_, n)| n.as_str()));
        }
        if let Some((reason, notice)) = notice {
            let from = success
                .first_model
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let to = success.target.model.to_string();
            self.metrics.failover(&from, &to, reason);
            tracing::info!(
                request_id = %call.request_id,
                from = %from,
                to = %to,
                %reason,
                attempt = success.attempts(),
                "{notice}"
            );
            self.health.push_event(FailoverEvent {
                at_ms: self.cooldowns.now_ms(),
                request_id: call.request_id.clone(),
                from,
                to,
                reason: reason.to_string(),
            });
        }
        success
    }

    fn chain_failure(
        &self,
        plan: &AttemptPlan,
        run: Run,
        returned: bool,
        budget_spent: bool,
    ) -> ChainFailure {
        let now = self.cooldowns.now_ms();
        let mut cooling = Vec::new();
        let mut soonest: Option<u64> = None;
        for t in &plan.targets {
            if let Some(until) =
                self.cooldowns
                    .usable_at(&t.model.provider, &t.profile, &t.model.model)
            {
                soonest = Some(soonest.map_or(until, |s: u64| s.min(until)));
                if !run.failed.iter().any(|a| &a.target == t) {
                    cooling.push((t.clone(), until));
                }
            }
        }
        ChainFailure {
            upstream_time: run.upstream_time,
            failed: run.failed,
            unusable: plan.unusable.clone(),
            cooling,
            returned,
            budget_spent,
            retry_after: soonest.map(|u| Duration::from_millis(u.saturating_sub(now))),
            unservable: None,
        }
    }

    /// Whether a later target of the plan is another profile of the same model, usable now.
    fn other_profile_usable(&self, plan: &AttemptPlan, idx: usize) -> bool {
        let here = &plan.targets[idx];
        plan.targets[idx + 1..].iter().any(|t| {
            t.model_index == here.model_index
                && self
                    .cooldowns
                    .usable_at(&t.model.provider, &t.profile, &t.model.model)
                    .is_none()
        })
    }

    /// Whether any later target of the plan can be tried now.
    fn other_target_usable(&self, plan: &AttemptPlan, idx: usize) -> bool {
        plan.targets[idx + 1..].iter().any(|t| {
            self.cooldowns
                .usable_at(&t.model.provider, &t.profile, &t.model.model)
                .is_none()
        })
    }

    /// Try one target, retrying it as the decision says.
    ///
    /// The plan is completed before a failure is recorded: the rest of it is then what
    /// it was when the request planned (a failure cools keys and models down).
    async fn try_target(
        &self,
        call: &Call,
        plan: &mut LazyPlan<'_>,
        idx: usize,
        run: &mut Run,
    ) -> TargetEnd {
        let target = &plan.found()[idx];
        let Some(upstream) = self.upstreams.get(&target.model.provider).cloned() else {
            return TargetEnd::Next(Action::NextModel);
        };
        let mut attempt: u32 = 0;
        // Whether this request's own failure is what cools the target now.
        let mut cooled_by_me = false;
        loop {
            let target = &plan.found()[idx];
            let (p, a, m) = (&target.model.provider, &target.profile, &target.model.model);
            // Every attempt after a request's first is a retry or a failover: it needs budget.
            if run.attempts > 0 && !self.budget.try_withdraw(self.cooldowns.now_ms()) {
                tracing::warn!(request_id = %call.request_id, upstream = %target, "retry budget spent: not retrying");
                self.cooldowns.on_abandon(p, a, m);
                return TargetEnd::BudgetSpent;
            }
            if let Some(mut decision) = run.pending.take() {
                decision.to = Some(target.clone());
            }
            attempt += 1;
            run.attempts += 1;
            let undo = call.session.as_ref().map(|ctx| {
                let is_fallback = call.route.targets.first() != Some(&target.model);
                super::session::before_attempt(ctx, &target.model, is_fallback, a)
            });
            let started = Instant::now();
            let result = {
                let _in_flight = self.health.start(p, m);
                self.attempt(call, &upstream, target, run.deadline).await
            };
            let took = started.elapsed();
            run.upstream_time += took;
            let now_ms = self.cooldowns.now_ms();
            let failure = match result {
                Ok(answer) => {
                    self.health.record(p, m, now_ms, took, None);
                    self.metrics.attempt(p, m, "ok", took);
                    self.cooldowns.on_success(p, a, m);
                    return TargetEnd::Answered(answer);
                }
                Err(f) => f,
            };
            let plan = &*plan.complete();
            let target = &plan.targets[idx];
            let (p, a, m) = (&target.model.provider, &target.profile, &target.model.model);
            if let (Some(ctx), Some(undo)) = (&call.session, &undo) {
                super::session::after_failure(ctx, undo);
            }
            if stream_options_refused(call, &upstream, &failure) {
                tracing::warn!(
                    request_id = %call.request_id,
                    provider = %p,
                    status = failure.status,
                    "provider rejects `stream_options`: no longer sending it (usage in streams then comes only from a final chunk that carries it); retrying without it"
                );
                // An upstream attempt like any other (x-backstop-attempts counts it), but
                // not a sign of ill health: no cooldown, no health or metrics record.
                run.failed.push(Attempt {
                    target: target.clone(),
                    failure,
                });
                continue;
            }
            self.health.record(p, m, now_ms, took, Some(failure.reason));
            self.health.record_error(
                p,
                a,
                m,
                crate::health::LastError {
                    at_ms: now_ms,
                    reason: failure.reason.as_str().to_string(),
                    status: failure.status,
                    message: failure.message.clone(),
                },
            );
            self.metrics.attempt(p, m, failure.reason.as_str(), took);
            let remaining = run.deadline.saturating_duration_since(Instant::now());
            let backoff = {
                let mut rng = lock(&self.rng);
                super::backoff::backoff(self.config.retry.backoff_ms, attempt - 1, &mut rng)
            };
            let situation = Situation {
                attempt,
                other_profile_usable: self.other_profile_usable(plan, idx),
                // Known to be failing and there is somewhere else to go: fail over rather
                // than retry (a lone target is still retried, as PRODUCT §3.2 says).
                target_cooling: !cooled_by_me
                    && self.cooldowns.usable_at(p, a, m).is_some()
                    && self.other_target_usable(plan, idx),
                remaining,
                backoff,
            };
            let action = decide(&failure, &self.config.retry, &situation);
            // A failed target cools down at once, also while this request retries it, so
            // concurrent requests stop hitting it: they fail over (see `target_cooling`)
            // instead of each retrying it. The retry's success closes it again.
            let cooled = match action {
                Action::ReturnToClient => {
                    self.cooldowns.on_abandon(p, a, m);
                    None
                }
                _ => self
                    .cooldowns
                    .on_failure(p, a, m, failure.reason, failure.retry_after),
            };
            // Logged when the next attempt starts (or the request ends).
            run.pending = Some(Decision {
                request_id: call.request_id.clone(),
                from: target.clone(),
                to: None,
                attempt: run.attempts,
                reason: failure.reason,
                status: failure.status,
                action,
                cooldown: cooled
                    .as_ref()
                    .map(|(scope, until)| format!("{scope} until {until}")),
                error: failure.message.clone(),
            });
            run.failed.push(Attempt {
                target: target.clone(),
                failure,
            });
            match action {
                Action::RetrySame { after } => {
                    cooled_by_me = true;
                    if !after.is_zero() {
                        let waited = Instant::now();
                        tokio::time::sleep_until((Instant::now() + after).min(run.deadline)).await;
                        run.upstream_time += waited.elapsed();
                    }
                    if Instant::now() >= run.deadline {
                        return TargetEnd::Next(Action::NextProfile);
                    }
                }
                other => return TargetEnd::Next(other),
            }
        }
    }

    /// The body this upstream gets for this call.
    /// `unstreamed`: the answer is asked for unstreamed ([`unstreamed_upstream`]).
    fn upstream_body(
        &self,
        call: &Call,
        upstream: &Upstream,
        model: &str,
        unstreamed: bool,
    ) -> Result<Bytes, Failure> {
        let same_format = upstream.api() == call.ingress && !call.translate;
        let choices = requested_choices(call);
        if choices > 1 && !same_format {
            // Anthropic and Gemini answer with one message: the client would silently get
            // one choice of the `n` it asked for.
            return Err(Failure::new(
                Reason::BadRequest,
                Phase::Transport,
                format!(
                    "n: {choices} choices cannot be served by {}/{model}: the {} API returns \
                     one answer; send n=1, or use an OpenAI-compatible model",
                    upstream.config.id,
                    upstream.api(),
                ),
            ));
        }
        // A non-streamed answer is read from an upstream stream, whose assembly keeps only
        // choice 0's text: several choices, or log probabilities, are asked for unstreamed
        // instead, so the provider's own body reaches the client.
        let force_stream = !call.request.stream && !unstreamed;
        let stream_options = upstream.sends_stream_options();
        // The splice keeps the client's fields as they are; a client's own
        // `stream_options` for a server that rejects it goes through the `Value` path,
        // which drops it.
        let keeps_refused_field = upstream.api() == WireFormat::OpenAi
            && !stream_options
            && clients_own_stream_options(call, upstream);
        if same_format
            && !keeps_refused_field
            && let Some(bytes) = call.raw.bytes()
            && let Some(body) = splice_same_format(
                (bytes, call.raw.facts().spans.as_ref()),
                model,
                !force_stream,
                upstream.api(),
                stream_options,
            )
        {
            return Ok(body);
        }
        let value = if same_format {
            wire::with_model(call.raw.value(), model)
        } else {
            match upstream.api() {
                WireFormat::OpenAi => wire::openai::encode_request(&call.request, model),
                WireFormat::Anthropic => {
                    let max = upstream
                        .config
                        .model(model)
                        .and_then(|m| m.max_output_tokens)
                        .unwrap_or(DEFAULT_MAX_TOKENS);
                    wire::anthropic::encode_request(&call.request, model, max)
                }
                // The stream is chosen by the URL (`:streamGenerateContent?alt=sse`), not the body.
                WireFormat::Gemini => wire::gemini::encode_request(&call.request, model),
            }
        };
        let mut value = value;
        if force_stream
            && upstream.api() != WireFormat::Gemini
            && let Some(obj) = value.as_object_mut()
        {
            // Stream from the upstream even for a non-streamed answer: time to first token
            // and stalls become visible, and the answer is assembled from the events.
            obj.insert("stream".into(), serde_json::Value::Bool(true));
            if stream_options {
                obj.insert(
                    "stream_options".into(),
                    serde_json::json!({"include_usage": true}),
                );
            }
        }
        // Servers that reject `stream_options` never get it (a translated request adds it).
        if upstream.api() == WireFormat::OpenAi
            && !stream_options
            && let Some(obj) = value.as_object_mut()
        {
            obj.remove("stream_options");
        }
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| Failure::new(Reason::BadRequest, Phase::Transport, e.to_string()))
    }

    pub(crate) async fn attempt(
        &self,
        call: &Call,
        upstream: &Arc<Upstream>,
        target: &Target,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let started = Instant::now();
        let unstreamed = unstreamed_upstream(call);
        let body = self.upstream_body(call, upstream, &target.model.model, unstreamed)?;
        let profile = upstream
            .config
            .profiles
            .iter()
            .find(|p| p.name == target.profile)
            .ok_or_else(|| {
                Failure::new(
                    Reason::Auth,
                    Phase::Transport,
                    "profile is no longer configured",
                )
            })?;
        let timeouts = self.config.timeouts;
        // The response head, and then the first content, must arrive within time-to-first-token;
        // an unstreamed answer's head comes only once the whole answer is written, so
        // only the request's deadline bounds it (a long answer is not a silent upstream).
        let head_deadline = if unstreamed {
            deadline
        } else {
            deadline.min(Instant::now() + Duration::from_millis(timeouts.first_token_ms))
        };
        let response = match tokio::time::timeout_at(
            head_deadline,
            upstream.send_with_beta(
                profile,
                &target.model.model,
                body,
                true,
                call.anthropic_beta.as_ref(),
                || self.spend_retry(),
            ),
        )
        .await
        {
            Err(_) => {
                return Err(Failure::silence(
                    Phase::Transport,
                    "no response from upstream in time",
                ));
            }
            Ok(Err(t)) => return Err(classify::classify_transport(&t)),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let idle = Duration::from_millis(timeouts.idle_ms);
        if !(200..300).contains(&status) {
            let headers = response.headers().clone();
            let body = read_body(response, deadline, idle)
                .await
                .unwrap_or_default();
            return Err(classify::classify_status_with(
                upstream.api(),
                status,
                &headers,
                body,
            ));
        }
        // A non-streamed answer is assembled as its events are read.
        let mut assembler = (!call.request.stream).then(Assembler::new);
        let answer = self
            .commit_stream(
                upstream,
                response,
                (target, started),
                head_deadline,
                deadline,
                assembler.as_mut(),
            )
            .await?;
        let Some(assembler) = assembler else {
            return Ok(answer);
        };
        match answer {
            Answer::Complete { .. } => Ok(answer),
            Answer::Stream { rest, .. } => {
                rest.release();
                let response = assembler.finish().map_err(|e| {
                    Failure::new(
                        Reason::ServerError,
                        Phase::Body,
                        format!("upstream stream could not be assembled: {e}"),
                    )
                })?;
                // The upstream-format body is what a client of the same format gets; any
                // other client's answer is encoded from `response` (`render::complete_body`),
                // so it is not built for nothing. Gemini has no client side.
                let body = match upstream.api() {
                    api if api != call.ingress => Bytes::new(),
                    WireFormat::Anthropic => {
                        encode_body(&wire::anthropic::encode_response(&response))
                    }
                    WireFormat::OpenAi => {
                        Bytes::from(wire::openai::encode_response_bytes(&response))
                    }
                    WireFormat::Gemini => Bytes::new(),
                };
                Ok(Answer::Complete { body, response })
            }
        }
    }

    /// Read a stream up to its first content (or its clean end). The first content's
    /// arrival, since `started`, is the attempt's time to first token: recorded for
    /// every stream, the client's streamed or not (a non-streamed answer is read
    /// whole from an upstream stream, its events going into `assembler`, not into the
    /// answer's `head`).
    async fn commit_stream(
        &self,
        upstream: &Upstream,
        response: crate::provider::Response,
        (target, started): (&Target, Instant),
        first_token_deadline: Instant,
        deadline: Instant,
        mut assembler: Option<&mut Assembler>,
    ) -> Result<Answer, Failure> {
        let hold_all = assembler.is_some();
        let idle = Duration::from_millis(self.config.timeouts.idle_ms);
        // `to_str` of a header value: visible ASCII only, or nothing.
        let visible = |v: &&[u8]| v.iter().all(|&b| (32..127).contains(&b) || b == b'\t');
        let event_stream = response.content_type().filter(visible).is_some_and(|v| {
            v.get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
        });
        if !event_stream {
            let content_type = response
                .content_type()
                .filter(visible)
                .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
                .unwrap_or_default();
            let status = response.status().as_u16();
            let body = read_body(response, deadline, idle)
                .await
                .unwrap_or_default();
            // A server that ignores `stream: true` and answers whole is still an answer,
            // when the client did not ask for a stream.
            if hold_all && content_type.contains("json") {
                let parsed = match upstream.api() {
                    WireFormat::Anthropic => wire::anthropic::decode_response(&body),
                    WireFormat::OpenAi => wire::openai::decode_response(&body),
                    WireFormat::Gemini => wire::gemini::decode_response(&body),
                };
                if let Ok(response) = parsed {
                    return Ok(Answer::Complete { body, response });
                }
            }
            let mut f = classify::classify_status(upstream.api(), status, None, body);
            if f.upstream.is_none() {
                // A 2xx that is not a stream: garbage from a healthy-looking upstream. It has
                // no error status, so `retry.trigger_codes` does not apply to it.
                f.reason = Reason::ServerError;
                f.phase = Phase::Body;
                f.status = None;
                f.message = format!(
                    "upstream answered a stream request with content type {content_type:?}"
                );
            }
            return Err(f);
        }
        let decoder = UpstreamDecoder::new(upstream.api()).ok_or_else(|| {
            Failure::new(
                Reason::BadRequest,
                Phase::Transport,
                "unsupported wire format",
            )
        })?;
        let mut rest = Box::new(UpstreamStream::new(response, decoder, idle, deadline));
        // With `stream.commit: "complete"` the whole stream is held back, so any failure
        // before its end still fails over invisibly.
        let hold_all = hold_all || self.config.stream.commit == StreamCommit::Complete;
        // Room for a short answer's events held whole, without growing the vector (none
        // for an assembled answer's).
        let mut head = Vec::with_capacity(match (&assembler, hold_all) {
            (Some(_), _) => 0,
            (None, true) => 32,
            (None, false) => 4,
        });
        let mut got_content = false;
        loop {
            let until = if got_content {
                deadline
            } else {
                first_token_deadline
            };
            // An answer being assembled, once its first content has come (and been
            // timed as such), takes the text of a chunk read by the decoder's template
            // straight into its text (when its last part is text): the chunk's events
            // would only have appended it there.
            let mut text = match assembler.as_deref_mut() {
                Some(assembler) if got_content => assembler.text_buffer(),
                _ => None,
            };
            // The rest of a read's text chunks go there without an item each.
            if let Some(text) = text.as_deref_mut() {
                rest.absorb_text(text);
            }
            // An item of a read already made comes at once: no timer (nor future) for it.
            let timed = match rest.ready_item(text.as_deref_mut()) {
                Some(item) => Ok(item),
                None => tokio::time::timeout_at(until, rest.next_item(text)).await,
            };
            let item = match timed {
                Err(_) if got_content => {
                    return Err(Failure::silence(
                        Phase::StreamBeforeCommit,
                        "the stream did not finish before the request deadline",
                    ));
                }
                Err(_) => {
                    return Err(Failure::silence(
                        Phase::StreamBeforeCommit,
                        format!(
                            "no first token within {} ms",
                            self.config.timeouts.first_token_ms
                        ),
                    ));
                }
                Ok(item) => item,
            };
            match item {
                StreamItem::Event(raw, events) => {
                    if !got_content && events.iter().any(StreamEvent::is_content) {
                        got_content = true;
                        let (p, m) = (&target.model.provider, &target.model.model);
                        let ttft = started.elapsed();
                        self.health.record_ttft(p, m, ttft);
                        self.metrics.time_to_first_token(p, m, ttft);
                    }
                    let done = rest.done;
                    match assembler.as_deref_mut() {
                        Some(assembler) => assembler.push_all(events),
                        None => head.push((raw, events)),
                    }
                    if (got_content && !hold_all) || done {
                        rest.committed = true;
                        return Ok(Answer::Stream { head, rest });
                    }
                }
                // A complete answer without content (e.g. an empty completion) is still an answer.
                StreamItem::End => {
                    rest.committed = true;
                    return Ok(Answer::Stream { head, rest });
                }
                StreamItem::Failed(f) => return Err(f),
            }
        }
    }
}

/// The same-format body spliced from the client's bytes: what `upstream_body` builds
/// through a `Value` (`model` replaced; `stream` and OpenAI's `stream_options` forced for
/// a non-streamed answer), without re-serializing the rest. `None`: use the `Value`.
fn splice_same_format(
    (bytes, spans): (&[u8], Option<&wire::openai::Spans>),
    model: &str,
    client_streams: bool,
    api: WireFormat,
    stream_options: bool,
) -> Option<Bytes> {
    // The model as a JSON string (as serde_json writes it), and the fields on the stack.
    let mut quoted = Vec::with_capacity(model.len() + 2);
    wire::push_json_str(&mut quoted, model);
    let model = std::str::from_utf8(&quoted).ok()?;
    let all = [
        ("model", model),
        ("stream", "true"),
        ("stream_options", r#"{"include_usage":true}"#),
    ];
    let fields = match (client_streams, api == WireFormat::OpenAi && stream_options) {
        (true, _) => &all[..1],
        (false, false) => &all[..2],
        (false, true) => &all[..],
    };
    spans
        .and_then(|spans| wire::splice_spans(bytes, spans, fields))
        .or_else(|| wire::splice_fields(bytes, fields))
        .map(Bytes::from)
}

/// The number of choices an OpenAI client asked for (`n`, default 1).
fn requested_choices(call: &Call) -> u64 {
    if call.ingress != WireFormat::OpenAi {
        return 1;
    }
    call.raw.facts().choices
}

/// The upstream is asked for a non-streamed answer: the client's own is not streamed and
/// wants several choices or log probabilities, which the assembly of a stream keeps not.
fn unstreamed_upstream(call: &Call) -> bool {
    !call.request.stream && (requested_choices(call) > 1 || wants_logprobs(call))
}

/// An OpenAI client asked for log probabilities (`logprobs: true`).
fn wants_logprobs(call: &Call) -> bool {
    call.ingress == WireFormat::OpenAi && call.raw.facts().logprobs
}

/// The client sent `stream_options` itself and the upstream gets the client's body
/// (same format): the field is the client's, not Backstop's.
fn clients_own_stream_options(call: &Call, upstream: &Upstream) -> bool {
    upstream.api() == call.ingress && !call.translate && call.raw.facts().stream_options
}

/// A 400/422 that names `stream_options`, sent by Backstop (not the client's own): the
/// server rejects the field. Marks the upstream (first time only: true), so the caller
/// retries at once without it.
fn stream_options_refused(call: &Call, upstream: &Upstream, failure: &Failure) -> bool {
    let names_it = failure.message.contains("stream_options")
        || failure
            .raw_body
            .as_ref()
            .is_some_and(|b| memchr::memmem::find(b, b"stream_options").is_some());
    matches!(failure.status, Some(400 | 422))
        && !clients_own_stream_options(call, upstream)
        && names_it
        && upstream.refuse_stream_options()
}

fn encode_body(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Read a whole body within the deadline, bounded in size; a body that stalls for
/// `idle` between chunks is a stall like a stream's (§3.4), not a wait for the deadline.
async fn read_body(
    mut response: crate::provider::Response,
    deadline: Instant,
    idle: Duration,
) -> Result<Bytes, Failure> {
    let mut buf = Vec::new();
    loop {
        let until = deadline.min(Instant::now() + idle);
        match tokio::time::timeout_at(until, response.chunk()).await {
            Err(_) => {
                return Err(Failure::silence(
                    Phase::Body,
                    "upstream body did not arrive in time",
                ));
            }
            Ok(Err(e)) => {
                return Err(Failure::new(
                    Reason::Timeout,
                    Phase::Body,
                    format!("upstream body broke: {e}"),
                ));
            }
            Ok(Ok(None)) => return Ok(Bytes::from(buf)),
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > MAX_UPSTREAM_BODY {
                    return Err(Failure::new(
                        Reason::ServerError,
                        Phase::Body,
                        "upstream body is too large",
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Where traffic was before it returned to the first model: the fallback it left.
fn previous_or(success: &Success, route: &Route) -> String {
    route
        .targets
        .iter()
        .find(|t| **t != success.target.model)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap_or_default()
    }

    #[test]
    fn the_splice_adds_stream_options_only_where_the_server_takes_it() {
        let client = br#"{"model":"default","messages":[{"role":"user","content":"hi"}]}"#;
        let with = splice_same_format((client, None), "gpt-4o", false, WireFormat::OpenAi, true)
            .map(|b| fields(&b))
            .unwrap_or_default();
        assert_eq!(with["model"], "gpt-4o");
        assert_eq!(with["stream"], true);
        assert_eq!(with["stream_options"]["include_usage"], true);
        // api.mistral.ai, or a server that refused it once: streamed, without the field.
        let without =
            splice_same_format((client, None), "gpt-4o", false, WireFormat::OpenAi, false)
                .map(|b| fields(&b))
                .unwrap_or_default();
        assert_eq!(without["stream"], true);
        assert!(without.get("stream_options").is_none(), "{without}");
        // A streaming client's body keeps its own fields; only `model` changes.
        let streaming = br#"{"model":"default","stream":true,"messages":[]}"#;
        let kept = splice_same_format((streaming, None), "m", true, WireFormat::OpenAi, true)
            .map(|b| fields(&b))
            .unwrap_or_default();
        assert_eq!(
            kept,
            serde_json::json!({"model":"m","stream":true,"messages":[]})
        );
    }
}
