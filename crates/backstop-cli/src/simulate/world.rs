//! The simulated world: the user's config with every provider pointed at its own
//! local fake, and the fakes answering as the scenario says.
//!
//! Nothing here ever reaches a real provider: base URLs are rewritten before the
//! engine is built, and every key is replaced by a dummy (`sim-<provider>-<n>`) that
//! also tells the fake which key profile an attempt used.

use super::scenario::{Fault, Latency, Outcome, Scenario};
use super::vtime::SimClock;
use backstop::WireFormat;
use backstop::config::{self, Config, Env, ProcessEnv};
use backstop::secret::{Secret, SecretSource};
use backstop_fake::{ErrorStep, FakeHandle, FakeProvider, Recorded, Reply, Step};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The text every fake answers: twelve words, streamed in [`CHUNKS`] chunks.
pub const ANSWER: &str =
    "All systems nominal: this answer came through the simulated provider just fine.";
/// Stream chunks per answer (few: each is a timer event of the simulation).
pub const CHUNKS: u64 = 6;

/// What marks a request's body with its number, so the fakes can tell requests apart.
const MARK: &str = "[backstop-simulate #";

/// The body text of simulated request `id`.
pub fn prompt(id: u64) -> String {
    format!("{MARK}{id}] Say something reassuring.")
}

fn request_id(body: &Value) -> Option<u64> {
    let text = body.to_string();
    let at = text.find(MARK)? + MARK.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// ---- loading the config ----

/// The environment the config is loaded in: real variables where set; an unset one
/// reads as a placeholder (the key is replaced by a dummy anyway), so a config
/// whose keys live only on the production host still simulates whole.
#[derive(Default)]
struct SimEnv {
    unset: Mutex<BTreeSet<String>>,
}

impl Env for SimEnv {
    fn var(&self, name: &str) -> Option<String> {
        match ProcessEnv.var(name) {
            Some(v) if !v.is_empty() => Some(v),
            // Where Backstop looks for files keeps its meaning: unset is unset.
            _ if matches!(name, "BACKSTOP_CONFIG" | "BACKSTOP_STATE_DIR") => None,
            _ => {
                self.unset
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string());
                Some("simulated".into())
            }
        }
    }

    fn home(&self) -> Option<PathBuf> {
        ProcessEnv.home()
    }
}

/// Load the user's config the way `serve` finds it. Returns the config and notes
/// for the report (unset variables).
pub fn load_config(path: Option<&Path>) -> Result<(Config, Vec<String>), String> {
    let env = SimEnv::default();
    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None => match ProcessEnv
            .var("BACKSTOP_CONFIG")
            .filter(|p| !p.trim().is_empty())
        {
            Some(p) => Some(PathBuf::from(p.trim())),
            None => {
                let mut candidates = Vec::new();
                if let Ok(cwd) = std::env::current_dir() {
                    candidates.push(cwd.join(config::DEFAULT_FILE));
                }
                if let Some(home) = ProcessEnv.home() {
                    candidates.push(home.join(".backstop").join(config::DEFAULT_FILE));
                }
                candidates.into_iter().find(|c| c.is_file())
            }
        },
    };
    let config = match file {
        Some(f) => config::load_file(&f, &env),
        // No file: the config built from the well-known variables that are really set.
        None => config::from_env(&ProcessEnv),
    }
    .map_err(|e| format!("invalid config:\n{e}"))?;
    let unset = env.unset.lock().unwrap_or_else(PoisonError::into_inner);
    let notes = unset
        .iter()
        .map(|v| format!("${v} is not set here; simulated with a dummy key"))
        .collect();
    Ok((config, notes))
}

// ---- the fakes ----

/// One attempt as a fake saw it.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    pub at_ms: u64,
    pub provider: String,
    pub profile: String,
    /// What the scenario made of it (`ok`, `503`, `reset`, …).
    pub outcome: String,
}

/// The fakes and what they have seen.
pub struct World {
    pub scenario: Scenario,
    pub seed: u64,
    pub clock: SimClock,
    /// Dummy key → (provider, profile).
    keys: HashMap<String, (String, String)>,
    /// Provider → its first profile (for keyless providers, and the direct client).
    first_profile: HashMap<String, String>,
    apis: HashMap<String, WireFormat>,
    log: Mutex<HashMap<u64, Vec<AttemptLog>>>,
    fakes: Mutex<Vec<FakeHandle>>,
}

impl World {
    /// Start one fake per provider and point `config` at them (base URLs, keys, headers).
    pub fn start(
        scenario: Scenario,
        seed: u64,
        clock: SimClock,
        config: &mut Config,
    ) -> std::io::Result<Arc<World>> {
        let mut keys = HashMap::new();
        let mut first_profile = HashMap::new();
        let mut apis = HashMap::new();
        for p in &mut config.providers {
            for (n, profile) in p.profiles.iter_mut().enumerate() {
                if profile.key.is_some() {
                    let dummy = format!("sim-{}-{}", p.id, n + 1);
                    keys.insert(dummy.clone(), (p.id.clone(), profile.name.clone()));
                    profile.key = Some(Secret::new(dummy, SecretSource::Literal));
                }
            }
            for (_, value) in &mut p.headers {
                *value = Secret::new("simulated", SecretSource::Literal);
            }
            if let Some(first) = p.profiles.first() {
                first_profile.insert(p.id.clone(), first.name.clone());
            }
            apis.insert(p.id.clone(), p.api);
        }
        let world = Arc::new(World {
            scenario,
            seed,
            clock,
            keys,
            first_profile,
            apis,
            log: Mutex::new(HashMap::new()),
            fakes: Mutex::new(Vec::new()),
        });
        for p in &mut config.providers {
            let fake = FakeProvider::start()?;
            fake.set_recording(false);
            let w = Arc::downgrade(&world);
            let provider = p.id.clone();
            fake.set_responder(Some(Arc::new(move |req: &Recorded| {
                w.upgrade()?.respond(&provider, req)
            })));
            p.base_url = match p.api {
                WireFormat::Anthropic => fake.anthropic_base_url(),
                WireFormat::Gemini => fake.gemini_base_url(),
                WireFormat::OpenAi => fake.openai_base_url(),
            };
            world
                .fakes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(fake);
        }
        Ok(world)
    }

    /// Stop the fakes (hung and stalled answers end).
    pub fn stop(&self) {
        self.fakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Every attempt the fakes saw for request `id`, in order.
    pub fn attempts(&self, id: u64) -> Vec<AttemptLog> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every attempt the fakes saw, by request.
    pub fn all_attempts(&self) -> Vec<AttemptLog> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<&u64> = log.keys().collect();
        ids.sort();
        ids.into_iter()
            .flat_map(|id| log[id].iter().cloned())
            .collect()
    }

    fn profile_of(&self, provider: &str, req: &Recorded) -> String {
        let key = req
            .header("x-api-key")
            .or_else(|| {
                req.header("authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
            })
            .unwrap_or("");
        match self.keys.get(key) {
            Some((_, profile)) => profile.clone(),
            None => self
                .first_profile
                .get(provider)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The fault that applies to an attempt at `at_ms`, if any.
    fn fault(&self, provider: &str, profile: &str, model: &str, at_ms: u64) -> Option<&Fault> {
        self.scenario
            .phase_at(at_ms)?
            .faults
            .get(provider)?
            .iter()
            .find(|f| f.applies(profile, model))
    }

    /// The outcome and latency of the `n`-th attempt of request `id` on `provider`.
    pub fn outcome(
        &self,
        id: u64,
        n: usize,
        provider: &str,
        profile: &str,
        model: &str,
        at_ms: u64,
    ) -> (Outcome, Latency) {
        match self.fault(provider, profile, model, at_ms) {
            None => (Outcome::Ok, self.scenario.latency),
            Some(f) if f.mix.is_empty() => (Outcome::Ok, f.latency),
            Some(f) => {
                let u = unit(draw(self.seed, &[id, n as u64, hash_str(provider)]));
                (f.pick(u).clone(), f.latency)
            }
        }
    }

    /// What a client calling the chain's primary directly — its first key, no retries,
    /// no timeouts of its own — would have got for request `id` at `at_ms`: the same
    /// draw as Backstop's first attempt there. `Some(latency)` when it got an answer.
    pub fn direct(&self, id: u64, at_ms: u64, provider: &str, model: &str) -> Option<u64> {
        let profile = self
            .first_profile
            .get(provider)
            .cloned()
            .unwrap_or_default();
        let (outcome, latency) = self.outcome(id, 0, provider, &profile, model, at_ms);
        match outcome {
            Outcome::Ok | Outcome::NoDone => Some(answer_ms(latency)),
            _ => None,
        }
    }

    fn respond(&self, provider: &str, req: &Recorded) -> Option<Step> {
        let id = request_id(&req.body)?;
        let profile = self.profile_of(provider, req);
        let model = req
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let at_ms = self.clock.elapsed_ms();
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = log.entry(id).or_default();
        let n = entries.iter().filter(|a| a.provider == provider).count();
        let (outcome, latency) = self.outcome(id, n, provider, &profile, &model, at_ms);
        entries.push(AttemptLog {
            at_ms,
            provider: provider.to_string(),
            profile,
            outcome: outcome.label(),
        });
        let api = self
            .apis
            .get(provider)
            .copied()
            .unwrap_or(WireFormat::OpenAi);
        Some(step(&outcome, latency, api))
    }
}

/// Simulated time from the first token to the end of [`ANSWER`].
pub fn answer_ms(latency: Latency) -> u64 {
    latency.first_token_ms + latency.chunk_ms * (CHUNKS - 1)
}

/// The fake's step for an outcome.
fn step(outcome: &Outcome, latency: Latency, api: WireFormat) -> Step {
    let text = ANSWER.to_string();
    let error = |status: u16, kind: Option<&str>, retry_after: Option<u64>| {
        Step::Error(ErrorStep {
            status,
            body: None,
            retry_after: retry_after.map(|s| s.to_string()),
            kind: kind.map(str::to_string),
        })
    };
    match outcome {
        Outcome::Ok => Step::Reply(Reply {
            text,
            chunks: Some(CHUNKS as usize),
            first_token_delay_ms: Some(latency.first_token_ms),
            chunk_delay_ms: Some(latency.chunk_ms),
            ..Reply::default()
        }),
        Outcome::Error {
            status,
            kind,
            retry_after,
        } => error(*status, kind.as_deref(), *retry_after),
        Outcome::RateLimit { retry_after } => error(429, Some("rate_limit"), *retry_after),
        Outcome::Billing => match api {
            WireFormat::Anthropic => error(400, Some("billing"), None),
            _ => error(429, Some("insufficient_quota"), None),
        },
        Outcome::Reset => Step::Reset,
        Outcome::Hang => Step::Hang,
        Outcome::Cut { after_chunks } => Step::StreamThenCut {
            text,
            after_chunks: *after_chunks,
        },
        Outcome::Stall { after_chunks } => Step::StreamThenStall {
            text,
            after_chunks: *after_chunks,
        },
        Outcome::StreamError { after_chunks } => Step::StreamThenError {
            text,
            after_chunks: *after_chunks,
            error: Value::Null,
        },
        Outcome::Malformed { after_chunks } => Step::StreamMalformed {
            text,
            after_chunks: *after_chunks,
        },
        Outcome::NoDone => Step::StreamNoDone { text },
    }
}

// ---- deterministic draws ----

/// SplitMix64: a well-mixed 64-bit hash step.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw that depends only on the seed and `parts`, never on the order of calls:
/// concurrent requests cannot change each other's luck.
pub fn draw(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix64(seed), |h, p| mix64(h ^ p))
}

/// A draw as a number in `[0, 1)`.
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a, for folding a name into a draw.
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the fakes did with one key.
#[derive(Debug, Default)]
pub struct KeyTally {
    pub attempts: u64,
    /// Outcome label → attempts.
    pub outcomes: BTreeMap<String, u64>,
    pub last_attempt_ms: Option<u64>,
}

/// Per-key tallies from the attempt logs, by (provider, profile).
pub fn tally_by_key<'a>(
    logs: impl IntoIterator<Item = &'a AttemptLog>,
) -> BTreeMap<(String, String), KeyTally> {
    let mut out: BTreeMap<(String, String), KeyTally> = BTreeMap::new();
    for a in logs {
        let t = out
            .entry((a.provider.clone(), a.profile.clone()))
            .or_default();
        t.attempts += 1;
        *t.outcomes.entry(a.outcome.clone()).or_insert(0) += 1;
        t.last_attempt_ms = Some(t.last_attempt_ms.map_or(a.at_ms, |m| m.max(a.at_ms)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_ids_survive_translation() {
        let openai = json!({"messages": [{"role": "user", "content": prompt(17)}]});
        assert_eq!(request_id(&openai), Some(17));
        let anthropic = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": prompt(4)}]}]});
        assert_eq!(request_id(&anthropic), Some(4));
        assert_eq!(request_id(&json!({"messages": []})), None);
    }

    #[test]
    fn unset_variables_read_as_placeholders_except_file_locations() {
        let env = SimEnv::default();
        assert_eq!(
            env.var("BACKSTOP_SIMTEST_SURELY_UNSET").as_deref(),
            Some("simulated")
        );
        assert_eq!(
            env.var("BACKSTOP_CONFIG").filter(|v| v == "simulated"),
            None
        );
        assert_eq!(
            env.var("BACKSTOP_STATE_DIR").filter(|v| v == "simulated"),
            None
        );
        let unset = env.unset.lock().unwrap();
        assert!(unset.contains("BACKSTOP_SIMTEST_SURELY_UNSET"));
        assert!(!unset.contains("BACKSTOP_CONFIG"));
    }

    #[test]
    fn draws_are_stable_and_spread() {
        assert_eq!(draw(1, &[2, 3]), draw(1, &[2, 3]));
        assert_ne!(draw(1, &[2, 3]), draw(2, &[2, 3]));
        assert_ne!(draw(1, &[2, 3]), draw(1, &[3, 2]));
        let n = 10_000;
        let below: usize = (0..n).filter(|i| unit(draw(9, &[*i])) < 0.25).count();
        assert!((2_200..2_800).contains(&below), "{below}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&unit(draw(3, &[i])))));
    }

    #[test]
    fn billing_speaks_each_providers_words() {
        let l = super::super::scenario::DEFAULT_LATENCY;
        let Step::Error(e) = step(&Outcome::Billing, l, WireFormat::OpenAi) else {
            panic!()
        };
        assert_eq!(
            (e.status, e.kind.as_deref()),
            (429, Some("insufficient_quota"))
        );
        let Step::Error(e) = step(&Outcome::Billing, l, WireFormat::Anthropic) else {
            panic!()
        };
        assert_eq!(e.status, 400);
        assert_eq!(answer_ms(l), 500 + 60 * 5);
    }
}
