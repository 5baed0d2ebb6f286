//! Scenarios: what the fake providers do, when.
//!
//! A scenario is a timeline of phases; in each phase some providers misbehave
//! (a weighted mix of outcomes, a latency), every other provider answers
//! normally. Built-in scenarios ([`builtin`]) and scenario files ([`parse`]) share
//! one shape, [`ScenarioSpec`]; [`ScenarioSpec::bind`] ties one to a config (which
//! provider is "primary", which key is "first") and fixes every phase's time span.

use backstop::config::{Config, Route};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The default length of a run.
pub const DEFAULT_DURATION_MS: u64 = 60 * 60 * 1000;
/// The default number of requests in a run (one every 10 s over an hour).
pub const DEFAULT_REQUESTS: u64 = 360;
/// The default share of streamed requests.
pub const DEFAULT_STREAM_SHARE: f64 = 0.5;
/// A healthy provider's latency.
pub const DEFAULT_LATENCY: Latency = Latency {
    first_token_ms: 500,
    chunk_ms: 60,
};

/// The names of the built-in scenarios, with a line about each.
pub const BUILTINS: [(&str, &str); 7] = [
    (
        "outage",
        "the primary's provider is down (503s and resets) for the middle third of the run, then back",
    ),
    (
        "rate-limit-storm",
        "429s on the primary's keys, with and without Retry-After, for the middle half of the run",
    ),
    (
        "flapping",
        "the primary's provider alternates between healthy and failing, then settles",
    ),
    (
        "slow-first-token",
        "the primary's first token comes 5 s after timeouts.first_token_ms, for the middle third",
    ),
    (
        "stream-cuts",
        "30 % of the primary's streams are cut after partial content, for the middle third",
    ),
    (
        "billing-exhausted",
        "the primary's first key runs out of credit a quarter into the run, for good",
    ),
    (
        "brownout",
        "the primary answers 5 times slower for the middle third of the run",
    ),
];

// ---- the file format ----

/// A scenario as written (JSON5). See the README's "Fire drill" section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Length of the run ("1h", "90m", or milliseconds). Default: the phases' fixed
    /// durations added up, else 1 h.
    #[serde(default)]
    pub duration: Option<DurationSpec>,
    /// Requests over the run, evenly spaced. Default 360.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Share of streamed requests, 0 to 1. Default 0.5.
    #[serde(default)]
    pub stream_share: Option<f64>,
    /// Every provider's healthy latency. Default 500 ms to the first token, 60 ms a chunk.
    #[serde(default)]
    pub latency: Option<LatencySpec>,
    pub phases: Vec<PhaseSpec>,
}

/// One phase of the timeline.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    /// A fixed length.
    #[serde(default)]
    pub duration: Option<DurationSpec>,
    /// A share of what the fixed lengths leave of the run (default 1 when no duration).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Misbehaving providers: a provider id, `primary` (the chain's first model's
    /// provider), `fallbacks` (every other provider of the chain) or `all`.
    #[serde(default)]
    pub providers: BTreeMap<String, FaultSpec>,
}

/// What one provider does during a phase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Which keys misbehave: `all` (default), `first`, or a list of profile names.
    #[serde(default)]
    pub keys: Option<KeysSpec>,
    /// Only these models misbehave (default: every model).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Latency of answers in this phase (replaces the healthy one).
    #[serde(default)]
    pub latency: Option<LatencySpec>,
    /// Multiplies the latency (5 = five times slower).
    #[serde(default)]
    pub latency_factor: Option<f64>,
    /// Weighted outcomes; empty = always answer (with this phase's latency).
    #[serde(default)]
    pub mix: Vec<MixSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeysSpec {
    /// `all` or `first`.
    Named(String),
    /// Profile names.
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    #[serde(default)]
    pub first_token_ms: Option<u64>,
    #[serde(default)]
    pub chunk_ms: Option<u64>,
}

/// One weighted outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    pub step: Outcome,
}

fn one() -> f64 {
    1.0
}

/// What an attempt gets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// A normal answer, with the phase's latency.
    Ok,
    /// An HTTP error. `kind` as the fake provider knows them (`server_error`,
    /// `overloaded`, `insufficient_quota`, …); `retry_after` in seconds.
    Error {
        status: u16,
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// A 429 rate limit, with or without `Retry-After` (seconds).
    RateLimit {
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Credit or quota exhausted, in the provider's own words (OpenAI
    /// `insufficient_quota` 429, Anthropic "credit balance is too low" 400).
    Billing,
    /// The connection is reset before any response.
    Reset,
    /// No response at all.
    Hang,
    /// The stream is cut after `after_chunks` content chunks.
    Cut {
        #[serde(default = "three")]
        after_chunks: usize,
    },
    /// The stream stalls after `after_chunks` content chunks.
    Stall {
        #[serde(default = "three")]
        after_chunks: usize,
    },
    /// An in-band error event after `after_chunks` content chunks.
    StreamError {
        #[serde(default = "three")]
        after_chunks: usize,
    },
    /// A malformed chunk after `after_chunks` content chunks, then the rest.
    Malformed {
        #[serde(default = "three")]
        after_chunks: usize,
    },
    /// A complete stream without its terminator.
    NoDone,
}

fn three() -> usize {
    3
}

impl Outcome {
    /// A short name for reports.
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Error { status, kind, .. } => match kind {
                Some(k) => format!("{status} {k}"),
                None => format!("{status}"),
            },
            Outcome::RateLimit {
                retry_after: Some(s),
            } => format!("429 retry-after {s}s"),
            Outcome::RateLimit { retry_after: None } => "429".into(),
            Outcome::Billing => "billing".into(),
            Outcome::Reset => "reset".into(),
            Outcome::Hang => "hang".into(),
            Outcome::Cut { .. } => "cut".into(),
            Outcome::Stall { .. } => "stall".into(),
            Outcome::StreamError { .. } => "stream error".into(),
            Outcome::Malformed { .. } => "malformed".into(),
            Outcome::NoDone => "no [DONE]".into(),
        }
    }
}

/// `"1h30m"`, `"90s"`, `"500ms"`, or a number of milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Ms(u64),
    Text(String),
}

impl DurationSpec {
    pub fn ms(&self) -> Result<u64, String> {
        match self {
            DurationSpec::Ms(ms) => Ok(*ms),
            DurationSpec::Text(t) => parse_duration(t),
        }
    }
}

/// Parse `1h`, `30m`, `90s`, `500ms`, `1h30m`, `2.5m` into milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "\"{text}\" is not a duration; write e.g. \"1h\", \"30m\", \"90s\", \"500ms\" or \"1h30m\""
        )
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match rest[..unit_len].trim() {
            "ms" => 1.0,
            "s" | "sec" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * factor;
    }
    if !(0.0..=1e15).contains(&total) {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

/// Parse a scenario file (JSON5). Errors name the key path.
pub fn parse(text: &str) -> Result<ScenarioSpec, String> {
    let value: serde_json::Value =
        json5::from_str(text).map_err(|e| format!("not valid JSON5: {e}"))?;
    let spec: ScenarioSpec = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    // Values serde cannot check, with their paths.
    spec.check()?;
    Ok(spec)
}

impl ScenarioSpec {
    fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.duration {
            d.ms().map_err(|e| format!("duration: {e}"))?;
        }
        if let Some(s) = self.stream_share
            && !(0.0..=1.0).contains(&s)
        {
            return Err(format!("stream_share: {s} is not between 0 and 1"));
        }
        if self.requests == Some(0) {
            return Err("requests: must be at least 1".into());
        }
        if self.phases.is_empty() {
            return Err("phases: at least one phase is needed".into());
        }
        for (i, p) in self.phases.iter().enumerate() {
            let at = format!("phases[{i}]");
            if let Some(d) = &p.duration {
                d.ms().map_err(|e| format!("{at}.duration: {e}"))?;
            }
            if let Some(w) = p.weight
                && !(w.is_finite() && w > 0.0)
            {
                return Err(format!("{at}.weight: {w} must be above 0"));
            }
            if p.duration.is_some() && p.weight.is_some() {
                return Err(format!("{at}: give either duration or weight, not both"));
            }
            for (sel, f) in &p.providers {
                let at = format!("{at}.providers.{sel}");
                if let Some(x) = f.latency_factor
                    && !(x.is_finite() && x > 0.0)
                {
                    return Err(format!("{at}.latency_factor: {x} must be above 0"));
                }
                if let Some(KeysSpec::Named(n)) = &f.keys
                    && n != "all"
                    && n != "first"
                {
                    return Err(format!(
                        "{at}.keys: \"{n}\" is not valid; use \"all\", \"first\" or a list of profile names"
                    ));
                }
                for (j, m) in f.mix.iter().enumerate() {
                    if !(m.weight.is_finite() && m.weight >= 0.0) {
                        return Err(format!(
                            "{at}.mix[{j}].weight: {} must be 0 or more",
                            m.weight
                        ));
                    }
                }
                if !f.mix.is_empty() && f.mix.iter().all(|m| m.weight == 0.0) {
                    return Err(format!("{at}.mix: every weight is 0"));
                }
            }
        }
        Ok(())
    }
}

// ---- built-in scenarios ----

fn weighted(name: &str, weight: f64, providers: Vec<(&str, FaultSpec)>) -> PhaseSpec {
    PhaseSpec {
        name: name.into(),
        duration: None,
        weight: Some(weight),
        providers: providers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn mix(entries: Vec<(f64, Outcome)>) -> Vec<MixSpec> {
    entries
        .into_iter()
        .map(|(weight, step)| MixSpec { weight, step })
        .collect()
}

fn on_primary(fault: FaultSpec) -> Vec<(&'static str, FaultSpec)> {
    vec![("primary", fault)]
}

/// A built-in scenario by name. `first_token_ms` is the config's
/// `timeouts.first_token_ms` (for `slow-first-token`).
pub fn builtin(name: &str, first_token_ms: u64) -> Option<ScenarioSpec> {
    let description = BUILTINS.iter().find(|(n, _)| *n == name)?.1;
    let healthy = |n: &str, w: f64| weighted(n, w, vec![]);
    let (phases, stream_share) = match name {
        "outage" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "outage",
                    1.0,
                    on_primary(FaultSpec {
                        mix: mix(vec![
                            (
                                3.0,
                                Outcome::Error {
                                    status: 503,
                                    kind: None,
                                    retry_after: None,
                                },
                            ),
                            (1.0, Outcome::Reset),
                        ]),
                        ..FaultSpec::default()
                    }),
                ),
                healthy("after", 1.0),
            ],
            None,
        ),
        "rate-limit-storm" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "storm",
                    2.0,
                    on_primary(FaultSpec {
                        mix: mix(vec![
                            (
                                2.0,
                                Outcome::RateLimit {
                                    retry_after: Some(5),
                                },
                            ),
                            (1.0, Outcome::RateLimit { retry_after: None }),
                            (2.0, Outcome::Ok),
                        ]),
                        ..FaultSpec::default()
                    }),
                ),
                healthy("after", 1.0),
            ],
            None,
        ),
        "flapping" => {
            let down = || {
                on_primary(FaultSpec {
                    mix: mix(vec![(
                        1.0,
                        Outcome::Error {
                            status: 503,
                            kind: None,
                            retry_after: None,
                        },
                    )]),
                    ..FaultSpec::default()
                })
            };
            let mut phases = Vec::new();
            for i in 1..=5 {
                phases.push(healthy(&format!("up {i}"), 1.0));
                phases.push(weighted(&format!("down {i}"), 1.0, down()));
            }
            phases.push(healthy("settled", 2.0));
            (phases, None)
        }
        "slow-first-token" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "slow",
                    1.0,
                    on_primary(FaultSpec {
                        latency: Some(LatencySpec {
                            first_token_ms: Some(first_token_ms.saturating_add(5_000)),
                            chunk_ms: None,
                        }),
                        ..FaultSpec::default()
                    }),
                ),
                healthy("after", 1.0),
            ],
            None,
        ),
        "stream-cuts" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "cuts",
                    1.0,
                    on_primary(FaultSpec {
                        mix: mix(vec![
                            (3.0, Outcome::Cut { after_chunks: 3 }),
                            (7.0, Outcome::Ok),
                        ]),
                        ..FaultSpec::default()
                    }),
                ),
                healthy("after", 1.0),
            ],
            Some(0.8),
        ),
        "billing-exhausted" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "exhausted",
                    3.0,
                    on_primary(FaultSpec {
                        keys: Some(KeysSpec::Named("first".into())),
                        mix: mix(vec![(1.0, Outcome::Billing)]),
                        ..FaultSpec::default()
                    }),
                ),
            ],
            None,
        ),
        "brownout" => (
            vec![
                healthy("before", 1.0),
                weighted(
                    "brownout",
                    1.0,
                    on_primary(FaultSpec {
                        latency_factor: Some(5.0),
                        ..FaultSpec::default()
                    }),
                ),
                healthy("after", 1.0),
            ],
            None,
        ),
        _ => return None,
    };
    Some(ScenarioSpec {
        name: Some(name.into()),
        description: Some(description.into()),
        duration: None,
        requests: None,
        stream_share,
        latency: None,
        phases,
    })
}

/// The list of built-ins, for error messages.
pub fn builtin_names() -> String {
    BUILTINS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- bound to a config ----

/// A latency: time to the first content, then per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub first_token_ms: u64,
    pub chunk_ms: u64,
}

/// A scenario tied to one config and chain, with absolute times.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub duration_ms: u64,
    pub requests: u64,
    pub stream_share: f64,
    pub latency: Latency,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Faults by provider id, in file order.
    pub faults: BTreeMap<String, Vec<Fault>>,
}

impl Phase {
    pub fn is_incident(&self) -> bool {
        !self.faults.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// `None` = every key.
    pub keys: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub latency: Latency,
    /// Weighted outcomes; empty = always `Ok`.
    pub mix: Vec<(f64, Outcome)>,
}

impl Fault {
    pub fn applies(&self, profile: &str, model: &str) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|k| k.iter().any(|p| p == profile))
            && self
                .models
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// The outcome for a uniform draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> &Outcome {
        static OK: Outcome = Outcome::Ok;
        let total: f64 = self.mix.iter().map(|(w, _)| w).sum();
        let mut x = u * total;
        for (w, o) in &self.mix {
            if x < *w {
                return o;
            }
            x -= w;
        }
        self.mix.last().map_or(&OK, |(_, o)| o)
    }
}

/// Run-wide overrides from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    pub duration_ms: Option<u64>,
    pub requests: Option<u64>,
}

impl ScenarioSpec {
    /// Tie the scenario to `config` and the chain `route`: resolve provider
    /// selectors and key names, and give every phase its time span.
    pub fn bind(
        &self,
        config: &Config,
        route: &Route,
        overrides: Overrides,
    ) -> Result<Scenario, String> {
        let base = self.latency.unwrap_or_default();
        let latency = Latency {
            first_token_ms: base
                .first_token_ms
                .unwrap_or(DEFAULT_LATENCY.first_token_ms),
            chunk_ms: base.chunk_ms.unwrap_or(DEFAULT_LATENCY.chunk_ms),
        };
        // Phase spans: fixed durations first, weights share the rest.
        let fixed: Vec<Option<u64>> = self
            .phases
            .iter()
            .map(|p| p.duration.as_ref().map(DurationSpec::ms).transpose())
            .collect::<Result<_, _>>()?;
        let fixed_sum: u64 = fixed.iter().flatten().sum();
        let any_weighted = fixed.iter().any(Option::is_none);
        let duration_ms = match (overrides.duration_ms, &self.duration) {
            (Some(d), _) => d,
            (None, Some(d)) => d.ms()?,
            (None, None) if !any_weighted => fixed_sum,
            (None, None) => DEFAULT_DURATION_MS.max(fixed_sum),
        };
        if duration_ms == 0 {
            return Err("the run's duration is 0".into());
        }
        if fixed_sum > duration_ms {
            return Err(format!(
                "the phases' fixed durations add up to {} but the run lasts {}",
                fmt_ms(fixed_sum),
                fmt_ms(duration_ms)
            ));
        }
        let weight_sum: f64 = self
            .phases
            .iter()
            .zip(&fixed)
            .filter(|(_, f)| f.is_none())
            .map(|(p, _)| p.weight.unwrap_or(1.0))
            .sum();
        let spare = duration_ms - fixed_sum;
        let primary = route
            .targets
            .first()
            .map(|t| t.provider.clone())
            .unwrap_or_default();
        let mut fallbacks: Vec<String> = Vec::new();
        for t in route.targets.iter().skip(1) {
            if t.provider != primary && !fallbacks.contains(&t.provider) {
                fallbacks.push(t.provider.clone());
            }
        }
        let mut phases = Vec::new();
        let mut start = 0u64;
        let mut weight_done = 0f64;
        let last = self.phases.len().saturating_sub(1);
        for (i, (p, f)) in self.phases.iter().zip(&fixed).enumerate() {
            let len = match f {
                Some(ms) => *ms,
                None => {
                    // Cumulative rounding, so the weighted phases fill the spare time exactly.
                    let before = (spare as f64 * weight_done / weight_sum).round() as u64;
                    weight_done += p.weight.unwrap_or(1.0);
                    let after = (spare as f64 * weight_done / weight_sum).round() as u64;
                    after - before
                }
            };
            let end = if i == last {
                duration_ms
            } else {
                (start + len).min(duration_ms)
            };
            let mut faults: BTreeMap<String, Vec<Fault>> = BTreeMap::new();
            for (sel, spec) in &p.providers {
                let at = format!("phases[{i}].providers.{sel}");
                let ids: Vec<String> = match sel.as_str() {
                    "primary" => vec![primary.clone()],
                    "fallbacks" => fallbacks.clone(),
                    "all" | "*" => config.providers.iter().map(|p| p.id.clone()).collect(),
                    id if config.provider(id).is_some() => vec![id.to_string()],
                    other => {
                        let configured: Vec<&str> =
                            config.providers.iter().map(|p| p.id.as_str()).collect();
                        let mut msg = format!(
                            "{at}: provider \"{other}\" is not configured; use primary, fallbacks, all or one of: {}",
                            configured.join(", ")
                        );
                        if let Some(s) =
                            backstop::config::did_you_mean(other, configured.iter().copied())
                        {
                            let _ = write!(msg, " (did you mean \"{s}\"?)");
                        }
                        return Err(msg);
                    }
                };
                for id in ids {
                    let fault = bind_fault(spec, config, &id, latency, &at)?;
                    faults.entry(id).or_default().push(fault);
                }
            }
            phases.push(Phase {
                name: p.name.clone(),
                start_ms: start,
                end_ms: end,
                faults,
            });
            start = end;
        }
        Ok(Scenario {
            name: self.name.clone().unwrap_or_else(|| "custom".into()),
            description: self.description.clone().unwrap_or_default(),
            duration_ms,
            requests: overrides
                .requests
                .or(self.requests)
                .unwrap_or(DEFAULT_REQUESTS)
                .max(1),
            stream_share: self.stream_share.unwrap_or(DEFAULT_STREAM_SHARE),
            latency,
            phases,
        })
    }
}

fn bind_fault(
    spec: &FaultSpec,
    config: &Config,
    provider: &str,
    healthy: Latency,
    at: &str,
) -> Result<Fault, String> {
    let profiles: Vec<&str> = config
        .provider(provider)
        .map(|p| p.profiles.iter().map(|a| a.name.as_str()).collect())
        .unwrap_or_default();
    let keys = match &spec.keys {
        None => None,
        Some(KeysSpec::Named(n)) if n == "all" => None,
        Some(KeysSpec::Named(_)) => Some(
            profiles
                .first()
                .map(|p| vec![p.to_string()])
                .unwrap_or_default(),
        ),
        Some(KeysSpec::List(names)) => {
            for (j, n) in names.iter().enumerate() {
                if !profiles.contains(&n.as_str()) {
                    return Err(format!(
                        "{at}.keys[{j}]: provider \"{provider}\" has no key profile \"{n}\"; its profiles: {}",
                        profiles.join(", ")
                    ));
                }
            }
            Some(names.clone())
        }
    };
    let base = spec.latency.unwrap_or_default();
    let factor = spec.latency_factor.unwrap_or(1.0);
    let scale = |ms: u64| (ms as f64 * factor).round() as u64;
    Ok(Fault {
        keys,
        models: spec.models.clone(),
        latency: Latency {
            first_token_ms: scale(base.first_token_ms.unwrap_or(healthy.first_token_ms)),
            chunk_ms: scale(base.chunk_ms.unwrap_or(healthy.chunk_ms)),
        },
        mix: spec
            .mix
            .iter()
            .map(|m| (m.weight, m.step.clone()))
            .collect(),
    })
}

impl Scenario {
    /// The phase in effect at `ms` (the last one after the end).
    pub fn phase_at(&self, ms: u64) -> Option<&Phase> {
        self.phases
            .iter()
            .find(|p| ms < p.end_ms)
            .or(self.phases.last())
    }

    /// The end of the last incident phase that a healthy phase follows: where
    /// recovery is measured from.
    pub fn incident_end_ms(&self) -> Option<u64> {
        let last_incident = self.phases.iter().rposition(Phase::is_incident)?;
        let after = self.phases.get(last_incident + 1)?;
        (!after.is_incident() && after.end_ms > after.start_ms)
            .then_some(self.phases[last_incident].end_ms)
    }

    /// Milliseconds between two requests.
    pub fn interval_ms(&self) -> f64 {
        self.duration_ms as f64 / self.requests as f64
    }
}

/// A time on the run's clock: `0:00`, `4:30`, `1:05:00`.
pub fn fmt_clock(ms: u64) -> String {
    let s = ms / 1_000;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{sec:02}")
    } else {
        format!("{m}:{sec:02}")
    }
}

/// `1h05m`, `4m30s`, `12s`, `850ms`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = ms / 1_000;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m, sec) {
        (0, 0, s) => {
            let tenths = (ms % 1_000) / 100;
            if tenths == 0 {
                format!("{s}s")
            } else {
                format!("{s}.{tenths}s")
            }
        }
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m:02}m"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use backstop::config::{ConfigOrigin, Format, MapEnv, from_str};

    fn config() -> Config {
        from_str(
            r#"{
              providers: {
                openai: { auth: [{ profile: "a", key: "sk-test-aaaaaaaaaaaaaaaa" },
                                 { profile: "b", key: "sk-test-bbbbbbbbbbbbbbbb" }] },
                anthropic: { auth: [{ key: "sk-ant-test-cccccccccccccc" }] },
              },
              agents: { defaults: { model: { primary: "openai/gpt-4o",
                                             fallbacks: ["anthropic/claude-sonnet-4-5"] } } },
            }"#,
            Format::Json5,
            ConfigOrigin::Environment,
            &MapEnv::new(),
        )
        .unwrap()
    }

    fn bind(spec: &ScenarioSpec) -> Result<Scenario, String> {
        let c = config();
        let route = c.resolve("default", None).unwrap();
        spec.bind(&c, &route, Overrides::default())
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1h").unwrap(), 3_600_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("90s").unwrap(), 90_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500);
        assert_eq!(parse_duration("2.5m").unwrap(), 150_000);
        assert!(parse_duration("soon").unwrap_err().contains("\"soon\""));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_builtin_binds_and_covers_the_run() {
        for (name, _) in BUILTINS {
            let s = bind(&builtin(name, 15_000).unwrap()).unwrap();
            assert_eq!(s.phases.first().unwrap().start_ms, 0, "{name}");
            assert_eq!(
                s.phases.last().unwrap().end_ms,
                DEFAULT_DURATION_MS,
                "{name}"
            );
            for w in s.phases.windows(2) {
                assert_eq!(w[0].end_ms, w[1].start_ms, "{name}");
            }
            assert!(s.phases.iter().any(Phase::is_incident), "{name}");
            assert!(
                s.phases
                    .iter()
                    .all(|p| p.faults.keys().all(|k| k == "openai")),
                "{name}"
            );
        }
        assert!(builtin("nope", 1).is_none());
    }

    #[test]
    fn outage_is_the_middle_third() {
        let s = bind(&builtin("outage", 15_000).unwrap()).unwrap();
        assert_eq!(s.phases[1].start_ms, 1_200_000);
        assert_eq!(s.phases[1].end_ms, 2_400_000);
        assert_eq!(s.incident_end_ms(), Some(2_400_000));
    }

    #[test]
    fn billing_hits_the_first_key_only() {
        let s = bind(&builtin("billing-exhausted", 15_000).unwrap()).unwrap();
        let f = &s.phases[1].faults["openai"][0];
        assert!(f.applies("a", "gpt-4o"));
        assert!(!f.applies("b", "gpt-4o"));
        assert_eq!(s.incident_end_ms(), None, "it never ends");
    }

    #[test]
    fn slow_first_token_exceeds_the_timeout_and_brownout_multiplies() {
        let s = bind(&builtin("slow-first-token", 15_000).unwrap()).unwrap();
        assert_eq!(
            s.phases[1].faults["openai"][0].latency.first_token_ms,
            20_000
        );
        let s = bind(&builtin("brownout", 15_000).unwrap()).unwrap();
        assert_eq!(
            s.phases[1].faults["openai"][0].latency,
            Latency {
                first_token_ms: 2_500,
                chunk_ms: 300
            }
        );
    }

    #[test]
    fn picks_follow_the_weights() {
        let f = Fault {
            keys: None,
            models: None,
            latency: DEFAULT_LATENCY,
            mix: vec![(3.0, Outcome::Reset), (1.0, Outcome::Hang)],
        };
        assert_eq!(f.pick(0.0), &Outcome::Reset);
        assert_eq!(f.pick(0.74), &Outcome::Reset);
        assert_eq!(f.pick(0.76), &Outcome::Hang);
        assert_eq!(f.pick(0.999), &Outcome::Hang);
    }

    const FILE: &str = r#"{
      name: "my drill",
      duration: "30m",
      requests: 90,
      stream_share: 0.25,
      latency: { first_token_ms: 300, chunk_ms: 10 },
      phases: [
        { name: "calm", duration: "10m" },
        { name: "storm", weight: 1, providers: {
            primary: { keys: ["b"], mix: [ { weight: 2, step: { type: "rate_limit", retry_after: 3 } },
                                           { step: { type: "ok" } } ] },
            anthropic: { latency_factor: 3 },
        } },
        { name: "calm again", weight: 1 },
      ],
    }"#;

    #[test]
    fn a_scenario_file_parses_and_binds() {
        let s = bind(&parse(FILE).unwrap()).unwrap();
        assert_eq!(s.name, "my drill");
        assert_eq!((s.duration_ms, s.requests), (1_800_000, 90));
        assert_eq!(s.stream_share, 0.25);
        let spans: Vec<(u64, u64)> = s.phases.iter().map(|p| (p.start_ms, p.end_ms)).collect();
        assert_eq!(
            spans,
            [(0, 600_000), (600_000, 1_200_000), (1_200_000, 1_800_000)]
        );
        let storm = &s.phases[1];
        assert_eq!(storm.faults["openai"][0].keys, Some(vec!["b".to_string()]));
        assert_eq!(storm.faults["openai"][0].mix.len(), 2);
        assert_eq!(storm.faults["anthropic"][0].latency.first_token_ms, 900);
        assert_eq!(s.incident_end_ms(), Some(1_200_000));
    }

    #[test]
    fn bad_files_name_the_key_path() {
        let err = parse(&FILE.replace("\"rate_limit\"", "\"rate_limt\"")).unwrap_err();
        assert!(
            err.starts_with("phases[1].providers.primary.mix[0].step"),
            "{err}"
        );
        assert!(err.contains("rate_limt"), "{err}");
        let err = parse(&FILE.replace("latency_factor", "latency_facter")).unwrap_err();
        assert!(err.starts_with("phases[1].providers.anthropic"), "{err}");
        assert!(err.contains("latency_facter"), "{err}");
        let err = parse(&FILE.replace("\"30m\"", "\"half an hour\"")).unwrap_err();
        assert!(err.starts_with("duration:"), "{err}");
        let err = parse("{ phases: [] }").unwrap_err();
        assert!(err.contains("phases"), "{err}");
        let err = parse("{ phases: [ {name: 1} ] }").unwrap_err();
        assert!(err.starts_with("phases[0].name"), "{err}");
        assert!(parse("{ phases: ").unwrap_err().contains("JSON5"));
        let err = bind(&parse(&FILE.replace("anthropic: {", "anthropc: {")).unwrap()).unwrap_err();
        assert!(err.starts_with("phases[1].providers.anthropc"), "{err}");
        assert!(err.contains("did you mean \"anthropic\""), "{err}");
        let err = bind(&parse(&FILE.replace("[\"b\"]", "[\"c\"]")).unwrap()).unwrap_err();
        assert!(
            err.starts_with("phases[1].providers.primary.keys[0]"),
            "{err}"
        );
        let err = bind(&parse(&FILE.replace("\"10m\"", "\"40m\"")).unwrap()).unwrap_err();
        assert!(err.contains("add up to 40m"), "{err}");
    }

    #[test]
    fn fmt_ms_is_compact() {
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_300), "12.3s");
        assert_eq!(fmt_ms(270_000), "4m30s");
        assert_eq!(fmt_ms(3_600_000), "1h");
        assert_eq!(fmt_ms(3_900_000), "1h05m");
        assert_eq!(fmt_clock(0), "0:00");
        assert_eq!(fmt_clock(270_000), "4:30");
        assert_eq!(fmt_clock(3_900_000), "1:05:00");
    }
}
