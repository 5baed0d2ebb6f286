//! Shared failover state: every scope's breaker and every profile's last use.
//!
//! The engine talks only to [`StateStore`]. It is synchronous and cheap on
//! purpose: it is called on the hot path (admit before every attempt, record
//! after it), so a store answers from memory and persists behind the scenes (a
//! [`FileStore`] writes `auth-state.json` in the background; a Redis store keeps a
//! local cache and publishes changes). [`MemoryStore`] is the in-process one,
//! and the cache the others are expected to build on.
//!
//! Times are epoch milliseconds passed in by the caller (from a
//! [`crate::clock::Clock`]), so stores never read the clock themselves.
//!
//! Sessions (§3.5) have their own store, [`session::SessionStore`].

pub mod file;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod session;

pub use crate::failover::breaker::{Admission, BreakerSnapshot, BreakerState};
pub use crate::failover::cooldown::{Penalty, Scope};
pub use file::FileStore;
pub use memory::MemoryStore;
pub use session::{FileSessionStore, MemorySessionStore, Session, SessionStore};

use crate::clock::Clock;
use crate::config::Config;
use std::sync::Arc;

/// The state store `config.state` asks for: a [`redis::RedisStore`] when
/// `state.redis_url` is set (started in the background: a gateway starts even while
/// Redis is down), else the [`FileStore`] on `state.dir` (`auth-state.json`), or a
/// [`MemoryStore`] with a warning when that dir cannot be used.
///
/// The one place a store is chosen: the gateway and the CLI call it.
///
/// With `redis_url` set it needs a tokio runtime; an error names the bad setting.
///
/// ```
/// use backstop::clock::SystemClock;
/// use backstop::config::{ConfigOrigin, Format, MapEnv, from_str};
/// use backstop::state::{Scope, StateStore, open_store};
/// use std::sync::Arc;
/// let dir = std::env::temp_dir().join(format!("backstop-doc-{}", std::process::id()));
/// let text = format!(r#"{{ providers: {{ ollama: {{ models: ["llama3.2"] }} }}, state: {{ dir: {:?} }} }}"#, dir);
/// let config = from_str(&text, Format::Json5, ConfigOrigin::Environment, &MapEnv::new()).unwrap();
/// let store = open_store(&config, Arc::new(SystemClock)).unwrap();
/// assert_eq!(store.get(&Scope::profile("openai", "work"), 0), None);
/// ```
pub fn open_store(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<dyn StateStore>, String> {
    match &config.state.redis_url {
        #[cfg(feature = "redis")]
        Some(url) => {
            let store = redis::RedisStore::start(url, clock, redis::RedisOptions::default())
                .map_err(|e| e.to_string())?;
            tracing::info!(redis = %store.redacted_url(), instance = store.instance_id(), "state shared through Redis");
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            let _ = clock;
            Err("state.redis_url is set, but this build has no Redis support (cargo feature \"redis\")".into())
        }
        None => {
            let _ = clock;
            Ok(file::open_or_memory(&config.state.dir))
        }
    }
}

/// Where a store keeps its state and whether it reaches it now (`/status`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// `memory`, `file` or `redis`.
    pub kind: &'static str,
    /// Memory and files: always. Redis: connected now (else serving the local view).
    pub connected: bool,
    /// The state dir, or the Redis URL with its password masked.
    pub location: Option<String>,
}

impl StoreInfo {
    /// An in-process store.
    pub fn memory() -> Self {
        StoreInfo {
            kind: "memory",
            connected: true,
            location: None,
        }
    }

    /// For `/status`: `{"kind", "connected", "location"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kind": self.kind, "connected": self.connected, "location": self.location})
    }
}

/// Where breakers and usage live. See the module docs.
///
/// Every method is one short critical section; none blocks on I/O or is held across an await.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// May a caller use `scope` now? Closed → `Allowed`; open → `Denied` until the window
    /// ends; half-open → `Probe` for exactly one caller, whose lease lasts `probe_lease_ms`
    /// (then the next caller may probe), `Denied` until the lease ends for the others.
    fn admit(&self, scope: &Scope, now_ms: u64, probe_lease_ms: u64) -> Admission;

    /// Give back a probe lease without a verdict (the request was cancelled). True if one was out.
    fn release_probe(&self, scope: &Scope) -> bool;

    /// Apply a failure to `scope`'s breaker: count it, and open (or reopen one rung up, or
    /// extend, never shorten) its cooldown as [`Penalty`] describes. Returns the breaker after.
    ///
    /// The store computes the rung inside its critical section (from the breaker's own
    /// consecutive count), so concurrent failures cannot both read the same count and race.
    fn record_failure(&self, scope: &Scope, penalty: &Penalty, now_ms: u64) -> BreakerSnapshot;

    /// A request on `scope` succeeded: close its breaker and reset its counters.
    /// True if there was anything to close.
    fn record_success(&self, scope: &Scope, now_ms: u64) -> bool;

    /// When `scope` can next be used: `None` = now (closed, or half-open with the probe
    /// free); else the epoch ms its window (or the outstanding probe's lease) ends.
    fn usable_at(&self, scope: &Scope, now_ms: u64) -> Option<u64>;

    /// Whether any breaker may exist. With none, every scope admits, nothing is cooling
    /// and a success has nothing to close: callers skip building scopes (a fast path for
    /// the healthy case). A store that cannot tell cheaply keeps this default.
    fn has_breakers(&self) -> bool {
        true
    }

    /// Whether any breaker of `provider` (a scope of it) may exist: planning skips a
    /// healthy provider's keys, which would otherwise cost three scope lookups each. The
    /// default asks [`has_breakers`](Self::has_breakers).
    fn has_breakers_for(&self, provider: &str) -> bool {
        let _ = provider;
        self.has_breakers()
    }

    /// One scope's breaker, if it has one (closed scopes with no history have none).
    fn get(&self, scope: &Scope, now_ms: u64) -> Option<BreakerSnapshot>;

    /// Note that `provider:profile` was just used (for least-recently-used profile order).
    fn mark_used(&self, provider: &str, profile: &str, now_ms: u64);

    /// When `provider:profile` was last used, if ever.
    fn last_used(&self, provider: &str, profile: &str) -> Option<u64>;

    /// Which of `profiles` (its index) was least recently used: a never-used one first,
    /// then the oldest use; ties go to the earlier. `None` when `profiles` is empty. The
    /// default asks [`last_used`](Self::last_used) for each.
    fn least_recently_used(
        &self,
        provider: &str,
        profiles: &mut dyn Iterator<Item = &str>,
    ) -> Option<usize> {
        least_recently_used(profiles, |p| self.last_used(provider, p))
    }

    /// Every breaker that is not pristine, sorted by scope (for status and the CLI).
    fn snapshot(&self, now_ms: u64) -> Vec<(Scope, BreakerSnapshot)>;

    /// Close one scope's breaker by hand. True if it had one.
    fn clear(&self, scope: &Scope) -> bool;

    /// Close every breaker by hand (usage times are kept).
    fn clear_all(&self);

    /// What kind of store this is and whether it reaches its backend now.
    fn info(&self) -> StoreInfo {
        StoreInfo::memory()
    }
}

/// The index of the first of `profiles` with the least `last_used` (never used first).
pub(crate) fn least_recently_used(
    profiles: &mut dyn Iterator<Item = &str>,
    last_used: impl Fn(&str) -> Option<u64>,
) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, p) in profiles.enumerate() {
        match last_used(p) {
            // Nothing comes before a profile never used.
            None => return Some(i),
            Some(t) if best.is_none_or(|(_, b)| t < b) => best = Some((i, t)),
            Some(_) => {}
        }
    }
    best.map(|(i, _)| i)
}

/// Clear a scope by hand, with what it covers: `provider:profile` also clears every
/// `provider:profile/model` scope of that key (the model-scoped cooldowns that
/// `auth-state.json` shows under `provider:profile`), and `provider/model` every key's
/// scope on that model. True if anything had a breaker.
pub fn clear_covered(store: &dyn StateStore, scope: &Scope, now_ms: u64) -> bool {
    let mut cleared = store.clear(scope);
    for (s, _) in store.snapshot(now_ms) {
        let covered = match (scope, &s) {
            (
                Scope::Profile { provider, profile },
                Scope::ProfileModel {
                    provider: p,
                    profile: a,
                    ..
                },
            ) => provider == p && profile == a,
            (
                Scope::ProviderModel { provider, model },
                Scope::ProfileModel {
                    provider: p,
                    model: m,
                    ..
                },
            ) => provider == p && model == m,
            _ => false,
        };
        if covered {
            cleared |= store.clear(&s);
        }
    }
    cleared
}

/// One cooldown as `GET /v1/cooldowns` and `backstop cooldowns list --json` show it.
pub fn cooldown_json(scope: &Scope, s: &BreakerSnapshot) -> serde_json::Value {
    use crate::clock::rfc3339;
    serde_json::json!({
        "scope": scope.to_string(),
        "provider": scope.provider(),
        "profile": scope.profile_name(),
        "model": scope.model(),
        "state": s.state.as_str(),
        "reason": s.reason.map(|r| r.as_str()),
        "until": s.until_ms.map(rfc3339),
        "until_ms": s.until_ms,
        "consecutive": s.consecutive,
        "error_count": s.error_count,
        "last_failure_at": s.last_failure_ms.map(rfc3339),
    })
}
