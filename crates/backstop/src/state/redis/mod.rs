//! [`RedisStore`]: breakers, probes and usage times shared by several gateway
//! instances through one Redis (`state.redis_url`, PRODUCT §4).
//!
//! The engine calls [`StateStore`] synchronously on its hot path, so a
//! `RedisStore` answers every call from a local [`MemoryStore`] (its cache) and
//! never waits on Redis. Changes are applied locally at once and sent to a
//! background task over a bounded channel; the task applies them to Redis with
//! Lua scripts ([`scripts`]) that repeat the local breaker's rules atomically
//! and publish the scope on `<prefix>events`. Every instance subscribes on a
//! dedicated connection and reloads a changed scope into its cache; a full
//! resync every few seconds (SCAN) heals missed messages.
//!
//! Key layout (prefix `backstop:` by default):
//! - `backstop:breaker:<scope>`: hash `until`, `reason`, `consecutive`, `errors`,
//!   `last_failure`, `c:<reason>`; PX TTL = rest of the cooldown + failure window;
//! - `backstop:probe:<scope>`: the instance holding a half-open scope's probe
//!   (`SET NX PX`), so exactly one instance probes;
//! - `backstop:closed:<scope>`: when the scope was last closed (a success or by hand),
//!   and `backstop:cleared`: when every scope was; a reconciling instance does not bring
//!   back a breaker whose last failure is older (24 h TTL);
//! - `backstop:used`: hash `provider:profile` → last use (epoch ms), only raised;
//! - `backstop:instance:<id>`: this instance's liveness marker (a missing marker
//!   means Redis lost its data or forgot us: push our view before pulling);
//! - channel `backstop:events`: `<instance> <scope>` (or `<instance> *`).
//!
//! Probes: a half-open scope's probe goes to the instance that holds the Redis
//! probe key. Because `admit` cannot wait, an instance acquires the key in the
//! background, ahead of time for scopes it has traffic for (it saw them denied
//! while open) and on demand otherwise (that one caller is denied for a moment);
//! the local breaker hands out the probe only with such a grant, and the grant
//! is used once. See [`RedisStore`].
//!
//! Redis down: every call keeps answering from the cache; the outage is logged
//! once (a warning when it starts, an info line when it ends); breaker writes
//! queue up to a bound (the oldest are dropped past it) and probes are decided
//! locally (one per instance). When Redis is back the queue is replayed, every
//! locally open scope is merged into Redis and the others are pulled.

mod events;
mod layout;
mod probes;
mod scripts;
mod sessions;
mod sync;
mod task;

pub use layout::redact_url;
pub use sessions::RedisSessionStore;

use layout::{Keys, parse_breaker, rungs};

use super::{Admission, BreakerSnapshot, MemoryStore, Penalty, Scope, StateStore};
use crate::clock::{Clock, SystemClock};
use crate::failover::Reason;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How a [`RedisStore`] talks to Redis. The defaults suit a gateway.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key and of the events channel. Default `backstop:`.
    pub prefix: String,
    /// Full resync (SCAN of every breaker) period. Default 5 s.
    pub resync_interval: Duration,
    /// While Redis is down, how often to try again. Default 1 s.
    pub retry_interval: Duration,
    /// Breaker writes kept while Redis is down (oldest dropped past it). Default 10 000.
    pub queue_limit: usize,
    /// How long a probe key taken ahead of use is held before it lapses. Default 5 s.
    pub probe_reservation: Duration,
    /// Bound on one Redis command or connection attempt. Default 2 s.
    pub command_timeout: Duration,
    /// Full resync of the session replica ([`RedisSessionStore`]; events carry every
    /// change, this heals missed ones and brings usage times). Default 30 s.
    pub session_resync_interval: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "backstop:".into(),
            resync_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            queue_limit: 10_000,
            probe_reservation: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            session_resync_interval: Duration::from_secs(30),
        }
    }
}

/// Why a Redis store could not be built (a bad URL; an unreachable Redis is not an error).
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("state.redis_url {url}: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("state.redis_url: the Redis store runs background tasks and needs a tokio runtime")]
    NoRuntime,
}

/// Capacity of the hot path → background task channel.
const CHANNEL: usize = 16_384;
/// How long a caller denied while this instance asks Redis for a probe should wait.
const ASKING_MS: u64 = 1_000;

/// Breakers shared through Redis, answered from a local cache. See the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), backstop::state::redis::RedisStoreError> {
/// use backstop::clock::SystemClock;
/// use backstop::state::{Admission, Scope, StateStore, redis::RedisStore};
/// use std::sync::Arc;
/// // Starts (in degraded mode, with a warning) even when Redis is down.
/// let store = RedisStore::connect("redis://127.0.0.1:6379", Arc::new(SystemClock)).await?;
/// assert_eq!(store.admit(&Scope::profile("openai", "work"), 0, 1_000), Admission::Allowed);
/// store.shutdown().await;
/// # Ok(()) }
/// ```
pub struct RedisStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    /// Stops the subscriber when the store is dropped; the writer then drains and ends.
    _stop: DropGuard,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("instance", &self.shared.instance)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// What the hot path and the background tasks share.
struct Shared {
    cache: MemoryStore,
    clock: Arc<dyn Clock>,
    instance: String,
    /// The URL with its password masked, for logs.
    url: String,
    keys: Keys,
    options: RedisOptions,
    connected: AtomicBool,
    subscribed: AtomicBool,
    /// Full syncs done (readiness for `connect`).
    syncs: AtomicU64,
    changed: Notify,
    /// Local writes not yet applied in Redis: a refresh must not overwrite them.
    pending: Mutex<Pending>,
    probes: Mutex<HashMap<Scope, Grant>>,
    /// Scopes this instance was denied while open: it will want their probe.
    wanted: Mutex<HashMap<Scope, Instant>>,
    /// Messages the full channel refused (hot path never waits).
    dropped: AtomicU64,
    dropped_warned: AtomicBool,
}

#[derive(Debug, Default)]
struct Pending {
    scopes: HashMap<Scope, u32>,
    /// `clear_all` calls in flight.
    all: u32,
}

impl Pending {
    fn is_quiet(&self, scope: &Scope) -> bool {
        self.all == 0 && !self.scopes.contains_key(scope)
    }

    fn done(&mut self, scope: &Scope) {
        if let Some(n) = self.scopes.get_mut(scope) {
            *n -= 1;
            if *n == 0 {
                self.scopes.remove(scope);
            }
        }
    }
}

/// This instance's knowledge of a half-open scope's Redis probe key.
#[derive(Debug, Clone, Copy)]
enum Grant {
    /// A `TakeProbe` is in flight since then.
    Asking(Instant),
    /// We hold the key until then (with a margin): the next local probe may go.
    Mine(Instant),
    /// Another instance holds it until `until_ms` (epoch ms), `expires` locally.
    Theirs { until_ms: u64, expires: Instant },
}

/// Work for the background writer.
#[derive(Debug)]
enum Op {
    Failure {
        scope: Scope,
        reason: Reason,
        rungs: Vec<u64>,
        window_ms: u64,
        probe_interval_ms: u64,
        now_ms: u64,
    },
    Close {
        scope: Scope,
        now_ms: u64,
    },
    ClearAll {
        now_ms: u64,
    },
    TakeProbe {
        scope: Scope,
    },
    ExtendProbe {
        scope: Scope,
        lease_ms: u64,
    },
    ReleaseProbe {
        scope: Scope,
    },
    Used {
        provider: String,
        profile: String,
        at_ms: u64,
    },
    /// Reload one scope from Redis, or everything (`None`).
    Refresh(Option<Scope>),
    /// Reply once every earlier message has been handled (and usage flushed).
    Flush(oneshot::Sender<()>),
    /// Flush, reply, and end.
    Shutdown(oneshot::Sender<()>),
}

impl Op {
    /// The scope whose pending count this write holds, if it is a breaker write.
    fn pending_scope(&self) -> Option<&Scope> {
        match self {
            Op::Failure { scope, .. } | Op::Close { scope, .. } => Some(scope),
            _ => None,
        }
    }
}

impl RedisStore {
    /// Connect to `url`, wait (up to the command timeout) for the first sync, and return
    /// the store. An unreachable Redis is not an error: the store starts in degraded mode
    /// (local view only) with a warning and joins when Redis comes up. Only a malformed
    /// URL (or no tokio runtime) fails.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<RedisStore, RedisStoreError> {
        Self::connect_with(url, clock, RedisOptions::default()).await
    }

    /// [`RedisStore::connect`] with explicit options.
    pub async fn connect_with(
        url: &str,
        clock: Arc<dyn Clock>,
        options: RedisOptions,
    ) -> Result<RedisStore, RedisStoreError> {
        let wait = options.command_timeout;
        let store = Self::start(url, clock, options)?;
        wait_ready(&store.shared.changed, wait, || store.is_ready()).await;
        Ok(store)
    }

    /// Start the store without waiting for Redis (the first sync happens in the background).
    /// For callers that are not async; needs a tokio runtime.
    pub fn start(
        url: &str,
        clock: Arc<dyn Clock>,
        options: RedisOptions,
    ) -> Result<RedisStore, RedisStoreError> {
        let (client, runtime, redacted) = open_client(url)?;
        let shared = Arc::new(Shared {
            cache: MemoryStore::new(),
            clock,
            instance: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
            url: redacted,
            keys: Keys {
                prefix: options.prefix.clone(),
            },
            options,
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            changed: Notify::new(),
            pending: Mutex::new(Pending::default()),
            probes: Mutex::new(HashMap::new()),
            wanted: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            dropped_warned: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stop = CancellationToken::new();
        runtime.spawn(task::Writer::new(shared.clone(), client.clone(), rx).run());
        runtime.spawn(events::subscribe(
            shared.clone(),
            client,
            tx.clone(),
            stop.clone(),
        ));
        Ok(RedisStore {
            shared,
            tx,
            _stop: stop.clone().drop_guard(),
            stop,
        })
    }

    /// Start a store for `url` with the system clock (what [`super::open_store`] uses).
    pub fn start_default(url: &str) -> Result<RedisStore, RedisStoreError> {
        Self::start(url, Arc::new(SystemClock), RedisOptions::default())
    }

    /// Flush what is queued (if Redis is up, within the command timeout) and stop the
    /// background tasks. The store keeps answering from its local view afterwards.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = tokio::time::timeout(self.shared.options.command_timeout * 2, done).await;
        }
        self.stop.cancel();
    }

    /// Wait until every change made so far has been handled by the background writer
    /// (applied in Redis, or queued while it is down). For tests and orderly handovers.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Op::Flush(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Whether the store is currently in touch with Redis.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Connected, subscribed to events and synced at least once.
    pub fn is_ready(&self) -> bool {
        self.is_connected()
            && self.shared.subscribed.load(Ordering::Acquire)
            && self.shared.syncs.load(Ordering::Acquire) > 0
    }

    /// This instance's id in Redis (probe holder, event sender).
    pub fn instance_id(&self) -> &str {
        &self.shared.instance
    }

    /// The Redis URL with its password masked.
    pub fn redacted_url(&self) -> &str {
        &self.shared.url
    }

    /// Every profile's last use as this instance knows it: `(provider, profile, ms)`, sorted.
    pub fn usage(&self) -> Vec<(String, String, u64)> {
        self.shared.cache.usage()
    }

    /// Messages the hot path could not hand to the background task (channel full).
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> bool {
        match self.tx.try_send(op) {
            Ok(()) => true,
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.shared.dropped_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        redis = %self.shared.url,
                        "Redis store: the background writer is behind; changes are kept locally and reconciled at the next resync"
                    );
                }
                false
            }
        }
    }

    /// Apply a breaker change locally and queue it for Redis, holding the pending lock
    /// across both so a concurrent refresh cannot overwrite it.
    fn write<T>(&self, scope: &Scope, local: impl FnOnce() -> T, op: impl FnOnce() -> Op) -> T {
        let mut pending = lock(&self.shared.pending);
        let out = local();
        if self.send(op()) {
            *pending.scopes.entry(scope.clone()).or_insert(0) += 1;
        }
        drop(pending);
        lock(&self.shared.probes).remove(scope);
        out
    }

    /// Half-open and the local breaker gave this caller the probe: keep it only with a
    /// Redis grant, else ask for one and deny for now.
    fn arbitrate_probe(&self, scope: &Scope, now_ms: u64, lease_ms: u64) -> Admission {
        let at = Instant::now();
        let mut probes = lock(&self.shared.probes);
        let denied_until = match probes.get(scope) {
            Some(Grant::Mine(expires)) if at < *expires => {
                probes.remove(scope);
                drop(probes);
                self.send(Op::ExtendProbe {
                    scope: scope.clone(),
                    lease_ms,
                });
                return Admission::Probe;
            }
            Some(Grant::Theirs { until_ms, expires }) if at < *expires => *until_ms,
            Some(Grant::Asking(since)) if at < *since + self.shared.options.command_timeout => {
                now_ms.saturating_add(ASKING_MS)
            }
            _ => {
                probes.insert(scope.clone(), Grant::Asking(at));
                self.send(Op::TakeProbe {
                    scope: scope.clone(),
                });
                now_ms.saturating_add(ASKING_MS)
            }
        };
        drop(probes);
        self.shared.cache.release_probe(scope);
        let reason = self
            .shared
            .cache
            .get(scope, now_ms)
            .and_then(|s| s.reason)
            .unwrap_or(Reason::Unknown);
        Admission::Denied {
            until_ms: denied_until,
            reason,
        }
    }
}

impl StateStore for RedisStore {
    fn admit(&self, scope: &Scope, now_ms: u64, probe_lease_ms: u64) -> Admission {
        let admission = self.shared.cache.admit(scope, now_ms, probe_lease_ms);
        if !self.is_connected() {
            return admission;
        }
        match admission {
            Admission::Allowed => admission,
            Admission::Probe => self.arbitrate_probe(scope, now_ms, probe_lease_ms),
            Admission::Denied { .. } => {
                let mut wanted = lock(&self.shared.wanted);
                match wanted.get_mut(scope) {
                    Some(at) => *at = Instant::now(),
                    None => {
                        wanted.insert(scope.clone(), Instant::now());
                    }
                }
                admission
            }
        }
    }

    fn release_probe(&self, scope: &Scope) -> bool {
        let had = self.shared.cache.release_probe(scope);
        if had && self.is_connected() {
            self.send(Op::ReleaseProbe {
                scope: scope.clone(),
            });
        }
        had
    }

    fn record_failure(&self, scope: &Scope, penalty: &Penalty, now_ms: u64) -> BreakerSnapshot {
        self.write(
            scope,
            || self.shared.cache.record_failure(scope, penalty, now_ms),
            || Op::Failure {
                scope: scope.clone(),
                reason: penalty.reason,
                rungs: rungs(penalty),
                window_ms: penalty.failure_window_ms,
                probe_interval_ms: penalty.probe_interval_ms,
                now_ms,
            },
        )
    }

    fn record_success(&self, scope: &Scope, now_ms: u64) -> bool {
        // Healthy scopes (the common case) stay local: nothing to close.
        if self.shared.cache.get(scope, now_ms).is_none() {
            return false;
        }
        self.close(scope, now_ms)
    }

    fn usable_at(&self, scope: &Scope, now_ms: u64) -> Option<u64> {
        self.shared.cache.usable_at(scope, now_ms)
    }

    fn get(&self, scope: &Scope, now_ms: u64) -> Option<BreakerSnapshot> {
        self.shared.cache.get(scope, now_ms)
    }

    fn mark_used(&self, provider: &str, profile: &str, now_ms: u64) {
        self.shared.cache.mark_used(provider, profile, now_ms);
        // Usage is a hint (LRU order): under pressure it is resent at the next reconcile.
        let _ = self.tx.try_send(Op::Used {
            provider: provider.to_owned(),
            profile: profile.to_owned(),
            at_ms: now_ms,
        });
    }

    fn last_used(&self, provider: &str, profile: &str) -> Option<u64> {
        self.shared.cache.last_used(provider, profile)
    }

    fn least_recently_used(
        &self,
        provider: &str,
        profiles: &mut dyn Iterator<Item = &str>,
    ) -> Option<usize> {
        self.shared.cache.least_recently_used(provider, profiles)
    }

    fn snapshot(&self, now_ms: u64) -> Vec<(Scope, BreakerSnapshot)> {
        self.shared.cache.snapshot(now_ms)
    }

    fn clear(&self, scope: &Scope) -> bool {
        self.close(scope, self.shared.clock.now_ms())
    }

    fn clear_all(&self) {
        let mut pending = lock(&self.shared.pending);
        self.shared.cache.clear_all();
        if self.send(Op::ClearAll {
            now_ms: self.shared.clock.now_ms(),
        }) {
            pending.all += 1;
        }
        drop(pending);
        lock(&self.shared.probes).clear();
    }

    fn info(&self) -> super::StoreInfo {
        super::StoreInfo {
            kind: "redis",
            connected: self.is_connected(),
            location: Some(self.shared.url.clone()),
        }
    }
}

impl RedisStore {
    fn close(&self, scope: &Scope, now_ms: u64) -> bool {
        let mut closed = false;
        self.write(
            scope,
            || closed = self.shared.cache.clear(scope),
            || Op::Close {
                scope: scope.clone(),
                now_ms,
            },
        );
        closed
    }
}

/// A client for `url` (not connected yet), the runtime to run a store's tasks on, and
/// the URL as logs may show it. Fails on a malformed URL or outside a tokio runtime.
fn open_client(
    url: &str,
) -> Result<(redis::Client, tokio::runtime::Handle, String), RedisStoreError> {
    let redacted = redact_url(url);
    crate::provider::install_crypto_provider();
    let client = redis::Client::open(url).map_err(|source| RedisStoreError::Url {
        url: redacted.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| RedisStoreError::NoRuntime)?;
    Ok((client, runtime, redacted))
}

/// Wait until `ready` holds (re-checked whenever `changed` is notified), at most `wait`.
async fn wait_ready(changed: &Notify, wait: Duration, ready: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = changed.notified();
        if ready() || tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ladder;

    fn penalty(retry_after: Option<Duration>) -> Penalty {
        Penalty {
            reason: Reason::RateLimit,
            ladder: Ladder {
                base_ms: 30_000,
                cap_ms: 300_000,
            },
            retry_after,
            max_retry_after: Duration::from_secs(3_600),
            jitter: 0.0,
            failure_window_ms: 86_400_000,
            probe_interval_ms: 0,
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_still_gives_a_working_store() {
        // Port 1 on loopback: nothing listens there.
        let options = RedisOptions {
            command_timeout: Duration::from_millis(300),
            ..RedisOptions::default()
        };
        let clock = Arc::new(crate::clock::ManualClock::new(0));
        let store = RedisStore::connect_with("redis://:pw@127.0.0.1:1", clock, options)
            .await
            .unwrap();
        assert!(!store.is_connected());
        assert!(!format!("{store:?}").contains("pw@"));
        let scope = Scope::profile("openai", "work");
        store.record_failure(&scope, &penalty(None), 0);
        assert!(!store.admit(&scope, 1, 1_000).is_allowed());
        // Degraded: the local breaker decides the probe.
        assert_eq!(store.admit(&scope, 30_000, 1_000), Admission::Probe);
        assert!(store.record_success(&scope, 30_001));
        assert_eq!(store.admit(&scope, 30_002, 1_000), Admission::Allowed);
        store.shutdown().await;
    }

    #[test]
    fn a_bad_url_is_an_error_naming_the_key() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { RedisStore::start_default("http://:pw@x") })
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("state.redis_url"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}
