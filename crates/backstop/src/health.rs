//! Health tracking per provider × model: latency (EWMA, p50/p95 over recent
//! attempts), time to first token, error rate over a window, in-flight count —
//! and degradation detection, which the planner uses to prefer healthy targets.
//!
//! Kept apart from selection: the planner asks whether a model is degraded; this
//! module knows nothing of plans. Time comes in as epoch milliseconds from the
//! engine's clock, so tests drive it on a manual clock.

use crate::NameHasher;
use crate::failover::Reason;
use crate::sync::lock;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How many recent latencies are kept for percentiles.
const SAMPLES: usize = 256;
/// How many recent outcomes are kept for the error rate (also bounded by the window).
const OUTCOMES: usize = 1024;
/// How many failover events `/status` can show.
const EVENTS: usize = 100;
/// Smoothing of the fast latency average (recent behaviour).
const FAST_ALPHA: f64 = 0.2;
/// Smoothing of the baseline (a target's normal latency; moves slowly).
const BASELINE_ALPHA: f64 = 0.02;

/// Degradation detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Off: nothing is ever marked degraded and plans keep the chain's order.
    pub enabled: bool,
    /// Degraded when the recent latency exceeds this multiple of the baseline. Default 3.
    pub latency_multiple: f64,
    /// Degraded when the error rate over the window exceeds this. Default 0.5.
    pub error_rate: f64,
    /// Samples needed before either rule applies. Default 10.
    pub min_samples: usize,
    /// The error-rate window. Default 5 min.
    pub window_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            latency_multiple: 3.0,
            error_rate: 0.5,
            min_samples: 10,
            window_ms: 5 * 60 * 1000,
        }
    }
}

#[derive(Debug, Default)]
struct ModelHealth {
    fast_ms: Option<f64>,
    baseline_ms: Option<f64>,
    latencies: VecDeque<f64>,
    ttft_ms: VecDeque<f64>,
    ttft_ewma: Option<f64>,
    /// (epoch ms, failure reason or None for success)
    outcomes: VecDeque<(u64, Option<Reason>)>,
    /// How many of `outcomes` are failures.
    outcomes_bad: usize,
    /// Whether `outcomes` is in time order (always, unless the clock went back): the
    /// ones outside the window are then a prefix, and counting needs no full scan.
    outcomes_sorted: bool,
    in_flight: i64,
    ok: u64,
    failed: u64,
    /// When this model was last attempted (a degraded one is still tried once per
    /// probe interval, or it could never show that it recovered).
    last_attempt_ms: Option<u64>,
}

/// Whether an outcome counts against a model's health: a failure that is not the
/// request's own fault (a refusal, a bad or too long request, a client that went
/// away say nothing of the model, and must not steer traffic away from it).
fn counts_against(outcome: Option<Reason>) -> bool {
    outcome.is_some_and(|r| !r.is_request_fault())
}

fn ewma(prev: Option<f64>, x: f64, alpha: f64) -> f64 {
    prev.map_or(x, |p| p + alpha * (x - p))
}

fn push_bounded<T>(q: &mut VecDeque<T>, x: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(x);
}

fn percentile(samples: &VecDeque<f64>, p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

impl ModelHealth {
    fn prune(&mut self, now_ms: u64, window_ms: u64) {
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > window_ms)
        {
            self.pop_outcome();
        }
    }

    fn pop_outcome(&mut self) {
        if let Some((_, r)) = self.outcomes.pop_front() {
            self.outcomes_bad -= usize::from(counts_against(r));
        }
        if self.outcomes.is_empty() {
            self.outcomes_sorted = true;
        }
    }

    fn push_outcome(&mut self, at_ms: u64, failure: Option<Reason>) {
        if self.outcomes.len() == OUTCOMES {
            self.pop_outcome();
        }
        if self.outcomes.is_empty() {
            self.outcomes_sorted = true;
        } else if self.outcomes.back().is_some_and(|(t, _)| *t > at_ms) {
            self.outcomes_sorted = false;
        }
        self.outcomes_bad += usize::from(counts_against(failure));
        self.outcomes.push_back((at_ms, failure));
    }

    /// (outcomes within the window at `now_ms`, failures among them).
    fn window_counts(&self, now_ms: u64, window_ms: u64) -> (usize, usize) {
        let in_window = |t: u64| now_ms.saturating_sub(t) <= window_ms;
        if !self.outcomes_sorted {
            let (mut total, mut bad) = (0usize, 0usize);
            for (t, r) in &self.outcomes {
                if in_window(*t) {
                    total += 1;
                    bad += usize::from(counts_against(*r));
                }
            }
            return (total, bad);
        }
        // In time order: the outcomes outside the window are the oldest ones, at the front.
        let (mut stale, mut stale_bad) = (0usize, 0usize);
        for (t, r) in &self.outcomes {
            if in_window(*t) {
                break;
            }
            stale += 1;
            stale_bad += usize::from(counts_against(*r));
        }
        (self.outcomes.len() - stale, self.outcomes_bad - stale_bad)
    }

    fn error_rate(&self) -> Option<f64> {
        if self.outcomes.is_empty() {
            return None;
        }
        Some(self.outcomes_bad as f64 / self.outcomes.len() as f64)
    }

    /// Degraded at `now_ms`: outcomes older than the window are left out without being
    /// removed (this runs in the planner on every request; it must not allocate).
    fn degraded(&self, cfg: &HealthConfig, now_ms: u64) -> bool {
        if !cfg.enabled {
            return false;
        }
        let slow = self.latencies.len() >= cfg.min_samples
            && matches!((self.fast_ms, self.baseline_ms), (Some(f), Some(b)) if b > 0.0 && f > cfg.latency_multiple * b);
        let (total, bad) = self.window_counts(now_ms, cfg.window_ms);
        let failing =
            total >= cfg.min_samples && total > 0 && bad as f64 / total as f64 > cfg.error_rate;
        slow || failing
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyView {
    pub ewma: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

/// What `/status` shows of one provider × model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelView {
    pub latency_ms: LatencyView,
    pub ttft_ms: LatencyView,
    /// Failures over the window, 0..1 (`None` with no recent attempts).
    pub error_rate: Option<f64>,
    pub errors_by_reason: std::collections::BTreeMap<String, u64>,
    pub in_flight: i64,
    pub ok: u64,
    pub failed: u64,
    pub degraded: bool,
}

/// One failover, for `/status` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailoverEvent {
    pub at_ms: u64,
    pub request_id: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// The last failure seen on one provider × profile × model, for `/status` and the
/// dashboard. The message is the classifier's one-line, scrubbed, bounded text; it
/// came from outside and is shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub at_ms: u64,
    pub reason: String,
    pub status: Option<u16>,
    pub message: String,
}

/// Health of every provider × model the engine has used.
#[derive(Debug, Default)]
pub struct Health {
    config: std::sync::RwLock<HealthConfig>,
    /// provider → model → figures (nested, so a lookup by `&str` allocates nothing).
    models: Mutex<HashMap<String, HashMap<String, ModelHealth, NameHasher>, NameHasher>>,
    events: Mutex<VecDeque<FailoverEvent>>,
    /// Keyed (provider, profile, model): bounded by the configuration's size.
    last_errors: Mutex<HashMap<(String, String, String), LastError>>,
}

/// Counts one in-flight attempt until dropped.
pub struct InFlight<'a> {
    health: &'a Health,
    provider: &'a str,
    model: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.health
            .with(self.provider, self.model, |m| m.in_flight -= 1);
    }
}

impl Health {
    pub fn new(config: HealthConfig) -> Self {
        Health {
            config: std::sync::RwLock::new(config),
            ..Health::default()
        }
    }

    fn cfg(&self) -> HealthConfig {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the detection settings (a config reload), keeping every figure.
    pub fn set_config(&self, config: HealthConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn with<R>(&self, provider: &str, model: &str, f: impl FnOnce(&mut ModelHealth) -> R) -> R {
        let mut map = lock(&self.models);
        // One lookup each when the entries exist (every attempt but a model's first).
        let models = match map.get_mut(provider) {
            Some(models) => models,
            None => map.entry(provider.to_string()).or_default(),
        };
        match models.get_mut(model) {
            Some(m) => f(m),
            None => f(models.entry(model.to_string()).or_default()),
        }
    }

    /// Read one model's figures, if it has any.
    fn get<R>(&self, provider: &str, model: &str, f: impl FnOnce(&ModelHealth) -> R) -> Option<R> {
        let map = lock(&self.models);
        map.get(provider).and_then(|m| m.get(model)).map(f)
    }

    /// An attempt starts; it counts as in flight until the guard drops.
    pub fn start<'a>(&'a self, provider: &'a str, model: &'a str) -> InFlight<'a> {
        self.with(provider, model, |m| m.in_flight += 1);
        InFlight {
            health: self,
            provider,
            model,
        }
    }

    /// An attempt ended: `failure` is `None` on success. `latency` is to the full answer,
    /// or to the commit point of a stream.
    pub fn record(
        &self,
        provider: &str,
        model: &str,
        now_ms: u64,
        latency: Duration,
        failure: Option<Reason>,
    ) {
        let cfg = self.cfg();
        let window = cfg.window_ms;
        let multiple = cfg.latency_multiple;
        self.with(provider, model, |m| {
            m.prune(now_ms, window);
            m.last_attempt_ms = Some(now_ms);
            m.push_outcome(now_ms, failure);
            match failure {
                None => {
                    m.ok += 1;
                    let ms = latency.as_secs_f64() * 1000.0;
                    let normal = m.baseline_ms.map(|b| multiple * b);
                    m.fast_ms = match (m.fast_ms, normal) {
                        // Slow until now, normal again: snap back at once, so one good probe
                        // of a degraded target is enough to trust it again.
                        (Some(f), Some(n)) if f > n && ms <= n => Some(ms),
                        (prev, _) => Some(ewma(prev, ms, FAST_ALPHA)),
                    };
                    // The baseline is what is normal for this target: outliers move it ten
                    // times slower, so a brownout shows against it yet a lasting change is
                    // eventually learnt.
                    let outlier = m.baseline_ms.is_some_and(|b| ms > multiple * b);
                    let alpha = if outlier {
                        BASELINE_ALPHA / 10.0
                    } else {
                        BASELINE_ALPHA
                    };
                    m.baseline_ms = Some(ewma(m.baseline_ms, ms, alpha));
                    push_bounded(&mut m.latencies, ms, SAMPLES);
                }
                Some(_) => m.failed += 1,
            }
        });
    }

    /// Time to the first content of a stream.
    pub fn record_ttft(&self, provider: &str, model: &str, ttft: Duration) {
        let ms = ttft.as_secs_f64() * 1000.0;
        self.with(provider, model, |m| {
            m.ttft_ewma = Some(ewma(m.ttft_ewma, ms, FAST_ALPHA));
            push_bounded(&mut m.ttft_ms, ms, SAMPLES);
        });
    }

    /// Whether a model's recent latency or error rate marks it degraded.
    pub fn degraded(&self, provider: &str, model: &str, now_ms: u64) -> bool {
        let cfg = self.cfg();
        if !cfg.enabled {
            return false;
        }
        self.get(provider, model, |m| m.degraded(&cfg, now_ms))
            .unwrap_or(false)
    }

    /// Whether the planner should put this model after healthier ones now: it is degraded
    /// and was attempted less than `probe_interval_ms` ago (once per interval it is tried
    /// in its place, so it can show that it recovered).
    pub fn avoid(&self, provider: &str, model: &str, now_ms: u64, probe_interval_ms: u64) -> bool {
        let cfg = self.cfg();
        if !cfg.enabled {
            return false;
        }
        self.get(provider, model, |m| {
            m.degraded(&cfg, now_ms)
                && m.last_attempt_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < probe_interval_ms)
        })
        .unwrap_or(false)
    }

    /// The figures of one provider × model.
    pub fn view(&self, provider: &str, model: &str, now_ms: u64) -> ModelView {
        let cfg = self.cfg();
        let window = cfg.window_ms;
        self.with(provider, model, |m| {
            m.prune(now_ms, window);
            let mut errors_by_reason = std::collections::BTreeMap::new();
            for (_, r) in &m.outcomes {
                if let Some(r) = r {
                    *errors_by_reason.entry(r.as_str().to_string()).or_insert(0) += 1;
                }
            }
            ModelView {
                latency_ms: LatencyView {
                    ewma: m.fast_ms,
                    p50: percentile(&m.latencies, 0.5),
                    p95: percentile(&m.latencies, 0.95),
                },
                ttft_ms: LatencyView {
                    ewma: m.ttft_ewma,
                    p50: percentile(&m.ttft_ms, 0.5),
                    p95: percentile(&m.ttft_ms, 0.95),
                },
                error_rate: m.error_rate(),
                errors_by_reason,
                in_flight: m.in_flight,
                ok: m.ok,
                failed: m.failed,
                degraded: m.degraded(&cfg, now_ms),
            }
        })
    }

    /// Remember the last failure of a provider × profile × model.
    pub fn record_error(&self, provider: &str, profile: &str, model: &str, error: LastError) {
        let mut map = lock(&self.last_errors);
        map.insert(
            (provider.to_string(), profile.to_string(), model.to_string()),
            error,
        );
    }

    /// The latest failure matching `provider` and, when given, `profile` and `model`.
    pub fn last_error(
        &self,
        provider: &str,
        profile: Option<&str>,
        model: Option<&str>,
    ) -> Option<LastError> {
        let map = lock(&self.last_errors);
        map.iter()
            .filter(|((p, a, m), _)| {
                p == provider && profile.is_none_or(|x| x == a) && model.is_none_or(|x| x == m)
            })
            .map(|(_, e)| e)
            .max_by_key(|e| e.at_ms)
            .cloned()
    }

    pub fn push_event(&self, event: FailoverEvent) {
        let mut q = lock(&self.events);
        push_bounded(&mut q, event, EVENTS);
    }

    /// The most recent failover events, newest last.
    pub fn events(&self) -> Vec<FailoverEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn window_counts_match_a_full_scan_even_when_the_clock_goes_back() {
        let mut rng = fastrand::Rng::with_seed(7);
        for backwards in [false, true] {
            let mut m = ModelHealth::default();
            let mut now = 1_000_000u64;
            for i in 0..3000 {
                now += rng.u64(0..400);
                if backwards && i % 97 == 0 {
                    now -= rng.u64(0..5000);
                }
                let failure = rng.bool().then_some(Reason::ServerError);
                if i % 5 == 0 {
                    m.prune(now, 60_000);
                }
                m.push_outcome(now, failure);
                let at = now + rng.u64(0..2000);
                let naive = m.outcomes.iter().fold((0, 0), |(t, b), (ts, r)| {
                    if at.saturating_sub(*ts) <= 60_000 {
                        (t + 1, b + usize::from(r.is_some()))
                    } else {
                        (t, b)
                    }
                });
                assert_eq!(m.window_counts(at, 60_000), naive, "step {i}");
                assert_eq!(
                    m.outcomes_bad,
                    m.outcomes.iter().filter(|(_, r)| r.is_some()).count()
                );
            }
            assert!(m.outcomes.len() <= OUTCOMES);
        }
    }

    #[test]
    fn latency_jump_marks_degraded_and_recovery_clears_it() {
        let h = Health::new(HealthConfig::default());
        for i in 0..50 {
            h.record("p", "m", i * 1000, ms(100), None);
        }
        assert!(!h.degraded("p", "m", 50_000));
        // Latency ×5: the fast average passes 3× the slow baseline within a few samples.
        for i in 50..60 {
            h.record("p", "m", i * 1000, ms(500), None);
        }
        assert!(h.degraded("p", "m", 60_000));
        let v = h.view("p", "m", 60_000);
        assert!(v.degraded);
        assert_eq!(v.latency_ms.p95, Some(500.0));
        // Back to normal.
        for i in 60..90 {
            h.record("p", "m", i * 1000, ms(100), None);
        }
        assert!(!h.degraded("p", "m", 90_000));
    }

    #[test]
    fn a_degraded_model_is_retried_once_per_probe_interval_and_recovers_on_one_good_probe() {
        let h = Health::new(HealthConfig::default());
        for i in 0..50 {
            h.record("p", "m", i * 1000, ms(100), None);
        }
        for i in 50..60 {
            h.record("p", "m", i * 1000, ms(500), None);
        }
        let last = 59_000;
        assert!(h.avoid("p", "m", last + 1_000, 30_000));
        assert!(!h.avoid("p", "m", last + 30_000, 30_000), "probe due");
        h.record("p", "m", last + 30_000, ms(100), None);
        assert!(!h.degraded("p", "m", last + 30_000));
        assert!(!h.avoid("p", "m", last + 31_000, 30_000));
    }

    #[test]
    fn error_rate_over_the_window() {
        let h = Health::new(HealthConfig::default());
        for i in 0..10 {
            h.record("p", "m", i, ms(10), Some(Reason::ServerError));
        }
        assert!(h.degraded("p", "m", 10));
        assert_eq!(
            h.view("p", "m", 10).errors_by_reason.get("server_error"),
            Some(&10)
        );
        // Out of the window, the failures no longer count.
        assert!(!h.degraded("p", "m", 10 + 5 * 60 * 1000 + 1));
    }

    #[test]
    fn off_switch() {
        let h = Health::new(HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        });
        for i in 0..20 {
            h.record("p", "m", i, ms(10), Some(Reason::Timeout));
        }
        assert!(!h.degraded("p", "m", 20));
    }

    #[test]
    fn in_flight_guard() {
        let h = Health::default();
        let g = h.start("p", "m");
        assert_eq!(h.view("p", "m", 0).in_flight, 1);
        drop(g);
        assert_eq!(h.view("p", "m", 0).in_flight, 0);
    }

    #[test]
    fn last_error_is_the_latest_matching_one() {
        let h = Health::default();
        let err = |at_ms, message: &str| LastError {
            at_ms,
            reason: "rate_limit".into(),
            status: Some(429),
            message: message.into(),
        };
        h.record_error("p", "a", "m1", err(10, "first"));
        h.record_error("p", "b", "m1", err(20, "second"));
        h.record_error("p", "a", "m2", err(30, "third"));
        h.record_error("q", "a", "m1", err(40, "other provider"));
        let msg = |p, a, m| h.last_error(p, a, m).map(|e| e.message);
        assert_eq!(msg("p", Some("a"), None).as_deref(), Some("third"));
        assert_eq!(msg("p", None, Some("m1")).as_deref(), Some("second"));
        assert_eq!(msg("p", Some("b"), Some("m2")), None);
        // A newer failure of the same scope replaces the old one.
        h.record_error("p", "a", "m1", err(50, "newest"));
        assert_eq!(msg("p", None, Some("m1")).as_deref(), Some("newest"));
    }

    #[test]
    fn percentiles() {
        let q: VecDeque<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&q, 0.5), Some(50.0));
        assert_eq!(percentile(&q, 0.95), Some(95.0));
        assert_eq!(percentile(&VecDeque::new(), 0.5), None);
    }
}
