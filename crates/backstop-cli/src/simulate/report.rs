//! The report: what clients saw, against what a direct client would have seen.
//! [`Report`] is the `--json` output; [`Report::render`] the text one.

use super::drive::RequestRecord;
use super::scenario::{Outcome, Scenario, fmt_clock, fmt_ms};
use super::world::{AttemptLog, tally_by_key};
use backstop::config::{Config, Route};
use backstop::failover::breaker::BreakerState;
use backstop::failover::cooldown::Scope;
use backstop::failover::{Engine, Reason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: ScenarioInfo,
    pub chain: ChainInfo,
    /// Real time the run took.
    pub real_time_ms: u64,
    pub availability: Availability,
    pub attempts: AttemptStats,
    pub latency_ms: LatencyPair,
    pub recovery: Option<Recovery>,
    /// Fixed-width buckets of simulated time.
    pub timeline: Vec<Slice>,
    /// The same figures per scenario phase.
    pub phases: Vec<Slice>,
    /// Requests a fallback model answered, by the reason the primary did not.
    pub fallbacks: Tally,
    /// Failed upstream attempts (retries, key rotations, fallbacks), by reason.
    pub failed_attempts: Tally,
    /// Requests answered on another key of a model whose key had just failed.
    pub key_rotations: u64,
    /// Streamed answers rescued after a failure mid-stream.
    pub stream_rescues: u64,
    pub keys: Vec<KeyInfo>,
    /// Things to know about this run (unset variables simulated with dummy keys…).
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioInfo {
    pub name: String,
    pub description: String,
    pub duration_ms: u64,
    pub requests: u64,
    pub interval_ms: u64,
    pub stream_share: f64,
    pub seed: u64,
    pub phases: Vec<PhaseInfo>,
}

#[derive(Debug, Serialize)]
pub struct PhaseInfo {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Provider id → a one-line description of what it does.
    pub faults: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct ChainInfo {
    /// `default` or the agent id.
    pub agent: String,
    pub targets: Vec<String>,
    pub config: String,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Share {
    pub ok: u64,
    pub total: u64,
    /// `ok / total` (1 when there were no requests).
    pub ratio: f64,
}

impl Share {
    fn new(ok: u64, total: u64) -> Self {
        Share {
            ok,
            total,
            ratio: if total == 0 {
                1.0
            } else {
                ok as f64 / total as f64
            },
        }
    }

    fn pct(&self) -> String {
        pct(self.ratio)
    }
}

#[derive(Debug, Serialize)]
pub struct Availability {
    /// Clients of Backstop.
    pub backstop: Share,
    /// A client calling the chain's primary directly: its first key, no retries.
    pub direct: Share,
    /// Backstop's clients that asked for a stream (a stream counts only if it ended whole).
    pub streamed: Share,
}

#[derive(Debug, Serialize)]
pub struct AttemptStats {
    pub total: u64,
    pub mean: f64,
    pub p95: u64,
    pub max: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

#[derive(Debug, Serialize)]
pub struct LatencyPair {
    /// Time until Backstop's clients had their whole answer (answered requests).
    pub backstop: Percentiles,
    /// The direct client's, for the requests it got answered.
    pub direct: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Recovery {
    /// When the last incident phase ended.
    pub incident_end_ms: u64,
    /// Whether a fallback served at all during the incident.
    pub primary_displaced: bool,
    /// The first request at or after the end that the primary model answered.
    pub primary_back_at_ms: Option<u64>,
    /// `primary_back_at_ms - incident_end_ms`.
    pub after_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Slice {
    pub start_ms: u64,
    pub end_ms: u64,
    /// The phase in effect at the start.
    pub phase: String,
    pub requests: u64,
    pub availability: Share,
    pub direct: Share,
    /// `provider/model` → requests it answered.
    pub served: BTreeMap<String, u64>,
    pub failed: u64,
    pub attempts_mean: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Tally {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, reason: &str) {
        self.total += 1;
        *self.by_reason.entry(reason.to_string()).or_insert(0) += 1;
    }

    fn line(&self) -> String {
        if self.total == 0 {
            return "none".into();
        }
        let mut v: Vec<(&String, &u64)> = self.by_reason.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub provider: String,
    pub profile: String,
    /// Upstream attempts the fake saw with this key.
    pub attempts: u64,
    /// What the fake did with them (`ok`, `503`, `429 retry-after 5s`, `billing`, …).
    pub outcomes: BTreeMap<String, u64>,
    pub last_attempt_ms: Option<u64>,
    /// Requests answered through it.
    pub served: u64,
    pub last_served_ms: Option<u64>,
    /// `ok`, `cooldown`, `disabled` or `half_open` when the run ended.
    pub state_at_end: String,
    pub reason_at_end: Option<String>,
    /// How long after the run's end it becomes usable again.
    pub usable_in_ms: Option<u64>,
}

/// What the report needs besides the records.
pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub seed: u64,
    pub config: &'a Config,
    pub route: &'a Route,
    pub engine: &'a Engine,
    pub attempts: Vec<AttemptLog>,
    pub real_time_ms: u64,
    pub notes: Vec<String>,
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn pct(r: f64) -> String {
    format!("{:.1} %", 100.0 * r)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    v.sort_unstable();
    Percentiles {
        p50: percentile(&v, 0.50),
        p95: percentile(&v, 0.95),
        max: v.last().copied().unwrap_or(0),
    }
}

fn slice(start_ms: u64, end_ms: u64, phase: String, records: &[&RequestRecord]) -> Slice {
    let n = records.len() as u64;
    let ok = records.iter().filter(|r| r.ok).count() as u64;
    let direct = records.iter().filter(|r| r.direct.is_some()).count() as u64;
    let mut served = BTreeMap::new();
    for r in records.iter().filter(|r| r.ok) {
        if let Some(s) = &r.served_by {
            *served.entry(s.clone()).or_insert(0) += 1;
        }
    }
    let attempts: usize = records.iter().map(|r| r.attempts).sum();
    Slice {
        start_ms,
        end_ms,
        phase,
        requests: n,
        availability: Share::new(ok, n),
        direct: Share::new(direct, n),
        served,
        failed: n - ok,
        attempts_mean: if n == 0 {
            0.0
        } else {
            attempts as f64 / n as f64
        },
    }
}

/// A bucket width that gives about a dozen rows: 1, 2, 5, 10, 15, 30 s; 1, 2, 5, 10, 15, 30 min; 1, 2, 4, 6, 12 h.
fn bucket_ms(duration_ms: u64) -> u64 {
    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    let steps = [
        S,
        2 * S,
        5 * S,
        10 * S,
        15 * S,
        30 * S,
        M,
        2 * M,
        5 * M,
        10 * M,
        15 * M,
        30 * M,
        H,
        2 * H,
        4 * H,
        6 * H,
        12 * H,
        24 * H,
    ];
    let target = duration_ms.div_ceil(12);
    steps
        .iter()
        .copied()
        .find(|s| *s >= target)
        .unwrap_or(24 * H)
}

fn describe_fault(f: &super::scenario::Fault, healthy: super::scenario::Latency) -> String {
    let mut parts = Vec::new();
    if f.mix.is_empty() {
        parts.push("answers".to_string());
    } else {
        let total: f64 = f.mix.iter().map(|(w, _)| w).sum();
        for (w, o) in &f.mix {
            let share = if total > 0.0 { w / total } else { 0.0 };
            let label = if *o == Outcome::Ok {
                "answers".into()
            } else {
                o.label()
            };
            parts.push(format!("{label} {:.0} %", 100.0 * share));
        }
    }
    let mut s = parts.join(", ");
    if f.latency != healthy {
        let _ = write!(
            s,
            "; first token after {}, {} a chunk",
            fmt_ms(f.latency.first_token_ms),
            fmt_ms(f.latency.chunk_ms)
        );
    }
    if let Some(k) = &f.keys {
        let _ = write!(s, "; keys {}", k.join(", "));
    }
    if let Some(m) = &f.models {
        let _ = write!(s, "; models {}", m.join(", "));
    }
    s
}

impl Report {
    pub fn build(records: &[RequestRecord], inp: Inputs<'_>) -> Report {
        let sc = inp.scenario;
        let n = records.len() as u64;
        let ok = records.iter().filter(|r| r.ok).count() as u64;
        let direct_ok = records.iter().filter(|r| r.direct.is_some()).count() as u64;
        let mut attempts: Vec<u64> = records.iter().map(|r| r.attempts as u64).collect();
        attempts.sort_unstable();
        let total_attempts: u64 = attempts.iter().sum();
        let mut fallbacks = Tally::default();
        let mut failed_attempts = Tally::default();
        for r in records {
            if r.ok && r.model_index.is_some_and(|i| i > 0) {
                fallbacks.add(r.fallback_reason.as_deref().unwrap_or("degraded"));
            }
            for reason in &r.failed {
                failed_attempts.add(reason.as_str());
            }
        }
        let recovery = sc.incident_end_ms().map(|end| {
            let incident_start = sc
                .phases
                .iter()
                .find(|p| p.is_incident())
                .map_or(0, |p| p.start_ms);
            let back = records
                .iter()
                .find(|r| r.at_ms >= end && r.ok && r.model_index == Some(0))
                .map(|r| r.at_ms);
            Recovery {
                incident_end_ms: end,
                primary_displaced: records.iter().any(|r| {
                    r.at_ms >= incident_start && r.at_ms < end && r.model_index != Some(0)
                }),
                primary_back_at_ms: back,
                after_ms: back.map(|b| b - end),
            }
        });
        let width = bucket_ms(sc.duration_ms);
        let mut timeline = Vec::new();
        let mut start = 0;
        while start < sc.duration_ms {
            let end = (start + width).min(sc.duration_ms);
            let rs: Vec<&RequestRecord> = records
                .iter()
                .filter(|r| r.at_ms >= start && r.at_ms < end)
                .collect();
            let phase = sc
                .phase_at(start)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            timeline.push(slice(start, end, phase, &rs));
            start = end;
        }
        let phases = sc
            .phases
            .iter()
            .map(|p| {
                let rs: Vec<&RequestRecord> = records
                    .iter()
                    .filter(|r| r.at_ms >= p.start_ms && r.at_ms < p.end_ms)
                    .collect();
                slice(p.start_ms, p.end_ms, p.name.clone(), &rs)
            })
            .collect();
        let keys = key_infos(records, &inp);
        Report {
            scenario: ScenarioInfo {
                name: sc.name.clone(),
                description: sc.description.clone(),
                duration_ms: sc.duration_ms,
                requests: sc.requests,
                interval_ms: sc.interval_ms().round() as u64,
                stream_share: sc.stream_share,
                seed: inp.seed,
                phases: sc
                    .phases
                    .iter()
                    .map(|p| PhaseInfo {
                        name: p.name.clone(),
                        start_ms: p.start_ms,
                        end_ms: p.end_ms,
                        faults: p
                            .faults
                            .iter()
                            .map(|(id, fs)| {
                                let d: Vec<String> =
                                    fs.iter().map(|f| describe_fault(f, sc.latency)).collect();
                                (id.clone(), d.join(" | "))
                            })
                            .collect(),
                    })
                    .collect(),
            },
            chain: ChainInfo {
                agent: inp.route.agent.clone().unwrap_or_else(|| "default".into()),
                targets: inp.route.targets.iter().map(ToString::to_string).collect(),
                config: match &inp.config.origin {
                    backstop::config::ConfigOrigin::File(p) => p.display().to_string(),
                    backstop::config::ConfigOrigin::Environment => "environment".into(),
                },
            },
            real_time_ms: inp.real_time_ms,
            availability: Availability {
                backstop: Share::new(ok, n),
                direct: Share::new(direct_ok, n),
                streamed: Share::new(
                    records.iter().filter(|r| r.stream && r.ok).count() as u64,
                    records.iter().filter(|r| r.stream).count() as u64,
                ),
            },
            attempts: AttemptStats {
                total: total_attempts,
                mean: if n == 0 {
                    0.0
                } else {
                    total_attempts as f64 / n as f64
                },
                p95: percentile(&attempts, 0.95),
                max: attempts.last().copied().unwrap_or(0),
            },
            latency_ms: LatencyPair {
                backstop: percentiles(
                    records
                        .iter()
                        .filter(|r| r.ok)
                        .map(|r| r.latency_ms)
                        .collect(),
                ),
                direct: percentiles(records.iter().filter_map(|r| r.direct).collect()),
            },
            recovery,
            timeline,
            phases,
            fallbacks,
            failed_attempts,
            key_rotations: records.iter().filter(|r| r.ok && r.rotated).count() as u64,
            stream_rescues: records
                .iter()
                .filter(|r| r.ok && r.rescue_attempts > 0)
                .count() as u64,
            keys,
            notes: inp.notes,
        }
    }
}

fn key_infos(records: &[RequestRecord], inp: &Inputs<'_>) -> Vec<KeyInfo> {
    let mut by_key = tally_by_key(&inp.attempts);
    let now = inp.engine.cooldowns.now_ms();
    let snapshot = inp.engine.cooldowns.snapshot();
    let mut providers: Vec<&str> = Vec::new();
    for t in &inp.route.targets {
        if !providers.contains(&t.provider.as_str()) {
            providers.push(&t.provider);
        }
    }
    let mut out = Vec::new();
    for pid in providers {
        let Some(p) = inp.config.provider(pid) else {
            continue;
        };
        for profile in &p.profiles {
            let mine = |r: &&RequestRecord| {
                r.ok && r.profile.as_deref() == Some(profile.name.as_str())
                    && r.served_by
                        .as_deref()
                        .is_some_and(|s| s.split_once('/').is_some_and(|(p, _)| p == pid))
            };
            let served = records.iter().filter(mine).count() as u64;
            let last_served_ms = records.iter().filter(mine).map(|r| r.at_ms).max();
            // The profile's own breaker, else the worst of its per-model ones.
            let mut state = ("ok".to_string(), None, None);
            let mut worst_until = 0u64;
            for (scope, snap) in &snapshot {
                let covers = match scope {
                    Scope::Profile {
                        provider,
                        profile: pr,
                    }
                    | Scope::ProfileModel {
                        provider,
                        profile: pr,
                        ..
                    } => provider == pid && pr == &profile.name,
                    Scope::ProviderModel { .. } => false,
                };
                if !covers || snap.state == BreakerState::Closed {
                    continue;
                }
                let until = snap.until_ms.unwrap_or(0);
                if until < worst_until {
                    continue;
                }
                worst_until = until;
                let name = match (snap.state, snap.reason) {
                    (BreakerState::HalfOpen, _) => "half_open",
                    (_, Some(Reason::Billing | Reason::AuthPermanent)) => "disabled",
                    _ => "cooldown",
                };
                state = (
                    name.to_string(),
                    snap.reason.map(|r| r.as_str().to_string()),
                    snap.until_ms.map(|u| u.saturating_sub(now)),
                );
            }
            let tally = by_key
                .remove(&(pid.to_string(), profile.name.clone()))
                .unwrap_or_default();
            out.push(KeyInfo {
                provider: pid.to_string(),
                profile: profile.name.clone(),
                attempts: tally.attempts,
                outcomes: tally.outcomes,
                last_attempt_ms: tally.last_attempt_ms,
                served,
                last_served_ms,
                state_at_end: state.0,
                reason_at_end: state.1,
                usable_in_ms: state.2,
            });
        }
    }
    out
}

// ---- text ----

impl Report {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let sc = &self.scenario;
        let _ = writeln!(o, "Fire drill: {} — {}", sc.name, sc.description);
        let _ = writeln!(
            o,
            "Chain {}: {}   (config: {})",
            self.chain.agent,
            self.chain.targets.join(" → "),
            self.chain.config
        );
        let _ = writeln!(
            o,
            "Simulated {} of traffic: {} requests, one every {}, {:.0} % streamed · seed {} · {} real time",
            fmt_ms(sc.duration_ms),
            sc.requests,
            fmt_ms(sc.interval_ms),
            100.0 * sc.stream_share,
            sc.seed,
            fmt_ms(self.real_time_ms)
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<22}{:<24}direct client (primary, first key, no retries)",
            "", "with Backstop"
        );
        let a = &self.availability;
        let with = format!(
            "{} ({}/{})",
            a.backstop.pct(),
            a.backstop.ok,
            a.backstop.total
        );
        let direct = format!("{} ({}/{})", a.direct.pct(), a.direct.ok, a.direct.total);
        let _ = writeln!(o, "{:<22}{with:<24}{direct}", "Availability");
        let l = &self.latency_ms;
        let with = format!("{} / {}", fmt_ms(l.backstop.p50), fmt_ms(l.backstop.p95));
        let direct = format!("{} / {}", fmt_ms(l.direct.p50), fmt_ms(l.direct.p95));
        let _ = writeln!(o, "{:<22}{with:<24}{direct}", "Latency p50 / p95");
        let at = &self.attempts;
        let _ = writeln!(
            o,
            "{:<22}mean {:.2} · p95 {} · max {}",
            "Attempts per request", at.mean, at.p95, at.max
        );
        let recovery = match &self.recovery {
            None => "no incident ends within the run".to_string(),
            Some(r) if !r.primary_displaced => format!(
                "the primary kept serving through the incident (ended {})",
                fmt_clock(r.incident_end_ms)
            ),
            Some(Recovery {
                after_ms: Some(after),
                primary_back_at_ms: Some(back),
                incident_end_ms,
                ..
            }) => format!(
                "traffic back on {} {} after the incident ended (ended {}, back {})",
                self.chain
                    .targets
                    .first()
                    .map_or("the primary", String::as_str),
                fmt_ms(*after),
                fmt_clock(*incident_end_ms),
                fmt_clock(*back)
            ),
            Some(r) => format!(
                "the primary did not serve again before the run ended (incident ended {})",
                fmt_clock(r.incident_end_ms)
            ),
        };
        let _ = writeln!(o, "{:<22}{recovery}", "Recovery");
        let _ = writeln!(o, "{:<22}{}", "Fallbacks by reason", self.fallbacks.line());
        let _ = writeln!(
            o,
            "{:<22}{}",
            "Failed attempts",
            self.failed_attempts.line()
        );
        if self.key_rotations > 0 {
            let _ = writeln!(
                o,
                "{:<22}{} answered on another key of the same model",
                "Key rotations",
                plural(self.key_rotations, "request")
            );
        }
        if self.stream_rescues > 0 {
            let _ = writeln!(
                o,
                "{:<22}{} cut mid-answer completed on another target",
                "Stream rescues",
                plural(self.stream_rescues, "stream")
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "Phases");
        for p in &sc.phases {
            let what = if p.faults.is_empty() {
                "every provider healthy".to_string()
            } else {
                p.faults
                    .iter()
                    .map(|(id, d)| format!("{id}: {d}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let _ = writeln!(
                o,
                "  {:<15} {:<12} {what}",
                format!("{}–{}", fmt_clock(p.start_ms), fmt_clock(p.end_ms)),
                p.name
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<17}{:<12}{:>5}  {:>8}  {:>8}  served by",
            "Timeline", "phase", "reqs", "backstop", "direct"
        );
        for s in &self.timeline {
            let served = if s.served.is_empty() {
                "—".to_string()
            } else {
                let mut v: Vec<(&String, &u64)> = s.served.iter().collect();
                v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                v.iter()
                    .map(|(t, n)| {
                        format!("{t} {:.0} %", 100.0 * **n as f64 / s.requests.max(1) as f64)
                    })
                    .collect::<Vec<_>>()
                    .join(" · ")
            };
            let failed = if s.failed > 0 {
                format!(
                    " · failed {:.0} %",
                    100.0 * s.failed as f64 / s.requests.max(1) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "{:<17}{:<12}{:>5}  {:>8}  {:>8}  {served}{failed}",
                format!("{}–{}", fmt_clock(s.start_ms), fmt_clock(s.end_ms)),
                s.phase,
                s.requests,
                s.availability.pct(),
                s.direct.pct()
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<24}{:>9}{:>8}  {:<34}at the end of the run",
            "Keys", "attempts", "served", "the provider's answers"
        );
        for k in &self.keys {
            let end = match (&k.reason_at_end, k.usable_in_ms) {
                (Some(r), Some(ms)) if k.state_at_end != "half_open" => {
                    format!("{} ({r}) for another {}", k.state_at_end, fmt_ms(ms))
                }
                (Some(r), _) => format!("{} ({r})", k.state_at_end),
                _ => k.state_at_end.clone(),
            };
            let mut outcomes: Vec<(&String, &u64)> = k.outcomes.iter().collect();
            outcomes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let outcomes = outcomes
                .iter()
                .map(|(w, n)| format!("{w} {n}"))
                .collect::<Vec<_>>()
                .join(" · ");
            let _ = writeln!(
                o,
                "  {:<22}{:>9}{:>8}  {:<34}{end}",
                format!("{}:{}", k.provider, k.profile),
                k.attempts,
                k.served,
                if outcomes.is_empty() {
                    "—".into()
                } else {
                    outcomes
                }
            );
        }
        for n in &self.notes {
            let _ = writeln!(o, "note: {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&[7], 0.95), 7);
        assert_eq!(percentile(&[], 0.95), 0);
    }

    #[test]
    fn about_a_dozen_buckets() {
        assert_eq!(bucket_ms(3_600_000), 300_000);
        assert_eq!(bucket_ms(600_000), 60_000);
        assert_eq!(bucket_ms(24 * 3_600_000), 2 * 3_600_000);
        assert_eq!(bucket_ms(10_000), 1_000);
    }

    #[test]
    fn tallies_list_the_biggest_first() {
        let mut t = Tally::default();
        for r in ["timeout", "server_error", "server_error"] {
            t.add(r);
        }
        assert_eq!(t.line(), "server_error 2 · timeout 1");
        assert_eq!(Tally::default().line(), "none");
    }
}
