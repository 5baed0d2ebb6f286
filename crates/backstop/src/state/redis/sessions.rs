//! [`RedisSessionStore`]: sessions (PRODUCT §3.5) shared by every gateway instance
//! through one Redis (`state.redis_url`, PRODUCT §4).
//!
//! The engine calls [`SessionStore`] synchronously on its hot path, so, like the
//! breaker store ([`super::RedisStore`]), this store answers every call from a local
//! replica (a [`MemorySessionStore`]) and never waits on Redis. Every instance holds
//! every live session (the set is bounded by `state.max_bytes`), so a local miss is
//! a real miss, not a cache miss.
//!
//! - **Writes** ([`SessionStore::modify`]) apply locally at once; the field-level
//!   difference (what the write saw → what it left) goes to a background task, which
//!   applies it in Redis with one Lua script ([`scripts::SESSION_WRITE`]) that sets each
//!   field only if it still holds what the writer saw. Two instances writing different
//!   fields of one session both land; a write made on a stale view never overwrites a
//!   change it had not seen (a user pin set on B is not replaced by an automatic pin
//!   A computed before B's pin reached it), and a narrow rollback restores a field only
//!   where nobody changed it since — across instances too. The script's result (the
//!   whole record) is loaded back, so a refused field shows the winner's value.
//! - **Reads** come from the replica. Each write publishes `<instance> <id>` on
//!   `<prefix>session-events`; the other instances reload that session. A full resync
//!   (SCAN) every `session_resync_interval` heals missed messages and brings usage times.
//! - **Idle TTL**: the Redis key's PEXPIRE is `state.session_ttl_ms`, renewed by every
//!   write and by use (uses are batched: one script call per 50 ms).
//! - **Budget**: at each resync the replica is pruned (`state.max_bytes`, least
//!   recently used first) and the evicted sessions are deleted in Redis too, unless
//!   another instance used or changed them meanwhile.
//! - **Redis down**: reads and writes keep working on the local replica; the outage is
//!   logged once; writes queue (bounded, oldest dropped) and are replayed, field by
//!   field with the same compare-and-set, when Redis returns; then everything is
//!   pulled. If Redis comes back empty (restarted without persistence) each instance
//!   puts back the sessions it holds.
//!
//! Layout (prefix `backstop:` by default): `backstop:session:<id>` a hash, one field per
//! key of the `sessions.json` record (`providerOverride`, `authProfileOverrideSource`,
//! `updatedAt`, …), each value that key's JSON text; `backstop:sessions-instance:<id>`
//! this instance's liveness marker; channel `backstop:session-events`.

use super::events::{Heard, Listener, listen};
use super::sync::SCAN_COUNT;
use super::task::{
    Link, invoke, is_outage, push_bounded, query, query_pipe, renew_marker, scan, set_marker,
};
use super::{RedisOptions, RedisStoreError, open_client, scripts, wait_ready};
use crate::clock::Clock;
use crate::state::session::{
    MemorySessionStore, PruneReport, Session, SessionLimits, SessionStore,
};
use crate::sync::lock;
use redis::{RedisError, RedisResult};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The record's timestamps: merged by maximum, never compared.
const TIMES: [&str; 3] = ["createdAt", "updatedAt", "lastUsedAt"];
/// Capacity of the hot path → writer channel.
const CHANNEL: usize = 16_384;
/// The writer's housekeeping period (usage flush, reconnect).
const TICK: Duration = Duration::from_millis(50);

/// Sessions shared through Redis, answered from a local replica. See the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), backstop::state::redis::RedisStoreError> {
/// use backstop::clock::SystemClock;
/// use backstop::state::redis::{RedisOptions, RedisSessionStore};
/// use backstop::state::session::{PinSource, PinWrite, SessionStore};
/// use std::sync::Arc;
/// let a = RedisSessionStore::connect_with(
///     "redis://127.0.0.1:6379", Arc::new(SystemClock), Default::default(), RedisOptions::default(),
/// ).await?;
/// a.write_pins("chat-1", &PinWrite::new().profile("work", PinSource::User));
/// a.flush().await; // in Redis now; other instances reload it on the event
/// # Ok(()) }
/// ```
pub struct RedisSessionStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    stop: CancellationToken,
    /// Stops the subscriber when the store is dropped; the writer then drains and ends.
    _stop: DropGuard,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("url", &self.shared.url)
            .field("instance", &self.shared.instance)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

struct Shared {
    replica: MemorySessionStore,
    instance: String,
    /// The URL with its password masked, for logs.
    url: String,
    options: RedisOptions,
    ttl_ms: u64,
    connected: AtomicBool,
    subscribed: AtomicBool,
    syncs: AtomicU64,
    changed: Notify,
    /// Local writes per session not yet applied in Redis: a reload must not undo them.
    pending: Mutex<HashMap<String, u32>>,
    /// Held from a write's local change until it is queued for the writer, so writes
    /// reach Redis in the order they were made locally (each one's compare-and-set
    /// expects what the one before it left).
    write_order: Mutex<()>,
    /// Serialized size of the replica at the last prune.
    bytes: AtomicU64,
    /// Messages the full channel refused (the hot path never waits).
    dropped: AtomicU64,
    dropped_warned: AtomicBool,
}

impl Shared {
    fn key(&self, id: &str) -> String {
        format!("{}session:{id}", self.options.prefix)
    }
    fn events(&self) -> String {
        format!("{}session-events", self.options.prefix)
    }
    fn marker(&self) -> String {
        format!("{}sessions-instance:{}", self.options.prefix, self.instance)
    }
    fn message(&self, id: &str) -> String {
        format!("{} {id}", self.instance)
    }
    fn done(&self, id: &str) {
        let mut pending = lock(&self.pending);
        if let Some(n) = pending.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                pending.remove(id);
            }
        }
    }
    /// A session as Redis has it (`HGETALL` pairs), into the replica — unless local
    /// writes on it are still on their way (their result will bring it).
    fn load(&self, id: &str, fields: &[String]) {
        let pending = lock(&self.pending);
        if pending.contains_key(id) {
            return;
        }
        match decode(id, fields) {
            Some(s) => self.replica.put(s),
            None => self.replica.forget(id),
        }
    }
}

/// One field of a write: set `field` from `expected` to `new` (`None` = absent).
#[derive(Debug, Clone, PartialEq)]
struct Change {
    field: String,
    expected: Option<String>,
    new: Option<String>,
}

#[derive(Debug)]
enum Op {
    Write {
        id: String,
        changes: Vec<Change>,
        delete: bool,
        created_ms: u64,
        now_ms: u64,
    },
    Used {
        id: String,
        at_ms: u64,
    },
    /// Reload one session, or all (`None`).
    Refresh(Option<String>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A session's record as field → JSON text (the `sessions.json` record, one key per field).
fn encode(s: &Session) -> Vec<(String, String)> {
    match serde_json::to_value(s) {
        Ok(Value::Object(map)) => map.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        // A struct of strings and numbers always serializes to an object.
        _ => Vec::new(),
    }
}

/// A session from its hash; `None` when the hash is empty (or unreadable: logged).
fn decode(id: &str, fields: &[String]) -> Option<Session> {
    if fields.is_empty() {
        return None;
    }
    let mut map = Map::new();
    for pair in fields.chunks_exact(2) {
        if let Ok(v) = serde_json::from_str::<Value>(&pair[1]) {
            map.insert(pair[0].clone(), v);
        }
    }
    match serde_json::from_value::<Session>(Value::Object(map)) {
        Ok(mut s) => {
            s.id = id.to_owned();
            Some(s)
        }
        Err(e) => {
            tracing::warn!(session = id, error = %e, "Redis session store: a stored session is unreadable; ignoring it");
            None
        }
    }
}

/// What a write changed, field by field (timestamps left out: the script merges them).
fn diff(before: Option<&Session>, after: Option<&Session>) -> Vec<Change> {
    let content = |s: Option<&Session>| -> HashMap<String, String> {
        s.map(encode)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !TIMES.contains(&k.as_str()))
            .collect()
    };
    let (before, after) = (content(before), content(after));
    let mut fields: Vec<&String> = before.keys().chain(after.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| before.get(*f) != after.get(*f))
        .map(|f| Change {
            field: f.clone(),
            expected: before.get(f).cloned(),
            new: after.get(f).cloned(),
        })
        .collect()
}

impl RedisSessionStore {
    /// Start the store, and wait (up to the command timeout) for the first sync. An
    /// unreachable Redis is not an error: the store starts on its local replica with a
    /// warning and joins when Redis comes up. Only a malformed URL (or no tokio runtime) fails.
    pub async fn connect_with(
        url: &str,
        clock: Arc<dyn Clock>,
        limits: SessionLimits,
        options: RedisOptions,
    ) -> Result<RedisSessionStore, RedisStoreError> {
        let wait = options.command_timeout;
        let store = Self::start(url, clock, limits, options)?;
        wait_ready(&store.shared.changed, wait, || store.is_ready()).await;
        Ok(store)
    }

    /// Start the store without waiting for Redis (the first sync happens in the
    /// background). Needs a tokio runtime.
    pub fn start(
        url: &str,
        clock: Arc<dyn Clock>,
        limits: SessionLimits,
        options: RedisOptions,
    ) -> Result<RedisSessionStore, RedisStoreError> {
        let (client, runtime, redacted) = open_client(url)?;
        let shared = Arc::new(Shared {
            replica: MemorySessionStore::new(clock, limits),
            instance: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
            url: redacted,
            options,
            ttl_ms: limits.ttl_ms.max(1),
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            changed: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            write_order: Mutex::new(()),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_warned: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stop = CancellationToken::new();
        runtime.spawn(Writer::new(shared.clone(), client.clone(), rx).run());
        runtime.spawn(subscribe(shared.clone(), client, tx.clone(), stop.clone()));
        Ok(RedisSessionStore {
            shared,
            tx,
            _stop: stop.clone().drop_guard(),
            stop,
        })
    }

    /// Wait until every change made so far has been handled by the writer (applied in
    /// Redis, or queued while it is down). For tests and orderly handovers.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Op::Flush(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Flush, then stop the background tasks.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = tokio::time::timeout(self.shared.options.command_timeout * 2, done).await;
        }
        self.stop.cancel();
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

    /// The Redis URL with its password masked.
    pub fn redacted_url(&self) -> &str {
        &self.shared.url
    }

    /// Messages the hot path could not hand to the writer (channel full).
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> bool {
        match self.tx.try_send(op) {
            Ok(()) => true,
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.shared.dropped_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(redis = %self.shared.url, "Redis session store: the writer is behind; a change stays local until the next resync");
                }
                false
            }
        }
    }
}

impl SessionStore for RedisSessionStore {
    fn get(&self, id: &str) -> Option<Session> {
        self.shared.replica.get(id)
    }

    fn touch(&self, id: &str) -> Option<Session> {
        let s = self.shared.replica.touch(id)?;
        self.send(Op::Used {
            id: id.to_owned(),
            at_ms: s.last_used_ms,
        });
        Some(s)
    }

    fn modify(&self, id: &str, f: &mut dyn FnMut(&mut Option<Session>)) -> Option<Session> {
        let mut before = None;
        let mut after = None;
        // One write at a time from its local change to the queue (never waits on Redis:
        // the send does not block).
        let _order = lock(&self.shared.write_order);
        // Count the write as pending before it lands locally, so a reload racing it
        // cannot put the older Redis value back over it.
        *lock(&self.shared.pending).entry(id.to_owned()).or_insert(0) += 1;
        let result = self.shared.replica.modify(id, &mut |slot| {
            before = slot.clone();
            f(slot);
            after = slot.clone();
        });
        let changes = diff(before.as_ref(), after.as_ref());
        let created = before.is_none() && after.is_some();
        if changes.is_empty() && !created {
            self.shared.done(id);
            return result;
        }
        let sent = self.send(Op::Write {
            id: id.to_owned(),
            changes,
            delete: after.is_none(),
            created_ms: result.as_ref().map_or(0, |s| s.created_at_ms),
            now_ms: result
                .as_ref()
                .map_or_else(|| self.shared.replica.now_ms(), |s| s.updated_at_ms),
        });
        if !sent {
            self.shared.done(id);
        }
        result
    }

    fn len(&self) -> usize {
        self.shared.replica.len()
    }

    /// The size of the replica, serialized, at the last resync's prune (serializing every
    /// session on each `/status` would cost more than the figure is worth).
    fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    fn evictions(&self) -> u64 {
        self.shared.replica.evictions()
    }

    /// Prune the replica now (expired and over-budget sessions). The writer does this at
    /// every resync and deletes the evicted sessions in Redis too.
    fn prune(&self) -> PruneReport {
        self.shared.replica.prune()
    }

    fn info(&self) -> crate::state::StoreInfo {
        crate::state::StoreInfo {
            kind: "redis",
            connected: self.is_connected(),
            location: Some(self.shared.url.clone()),
        }
    }
}

/// The background writer: owns the Redis connection; every write, usage flush, reload,
/// resync and reconnect goes through it, in order.
struct Writer {
    shared: Arc<Shared>,
    link: Link,
    rx: mpsc::Receiver<Op>,
    /// Writes waiting for Redis to come back.
    queue: VecDeque<Op>,
    /// Usage times not yet sent (coalesced).
    used: HashMap<String, u64>,
    next_resync: Instant,
}

impl Writer {
    fn new(shared: Arc<Shared>, client: redis::Client, rx: mpsc::Receiver<Op>) -> Self {
        let now = Instant::now();
        Writer {
            link: Link::new(client, &shared.options),
            shared,
            rx,
            queue: VecDeque::new(),
            used: HashMap::new(),
            next_resync: now,
        }
    }

    async fn run(mut self) {
        self.reconnect().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                op = self.rx.recv() => match op {
                    Some(Op::Shutdown(reply)) => {
                        self.drain().await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(op) => self.handle(op).await,
                    None => {
                        self.drain().await;
                        break;
                    }
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.shared.connected.store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    async fn handle(&mut self, op: Op) {
        match op {
            Op::Used { id, at_ms } => {
                let t = self.used.entry(id).or_insert(0);
                *t = (*t).max(at_ms);
            }
            Op::Flush(reply) | Op::Shutdown(reply) => {
                if self.link.up() {
                    self.flush_used().await;
                }
                let _ = reply.send(());
            }
            Op::Refresh(id) => {
                if self.link.up() {
                    let result = match &id {
                        Some(id) => self.refresh(id).await,
                        None => self.full_sync().await,
                    };
                    if let Err(e) = result {
                        self.failed(e, None);
                    }
                }
            }
            op @ Op::Write { .. } => {
                if self.link.up() {
                    if let Err(e) = self.apply(&op).await {
                        self.failed(e, Some(op));
                    }
                } else {
                    self.enqueue(op);
                }
            }
        }
    }

    async fn drain(&mut self) {
        while let Ok(op) = self.rx.try_recv() {
            match op {
                Op::Flush(reply) | Op::Shutdown(reply) => {
                    let _ = reply.send(());
                }
                op => self.handle(op).await,
            }
        }
        if self.link.up() {
            self.flush_used().await;
        }
    }

    async fn on_tick(&mut self) {
        if !self.link.up() {
            if self.link.retry_due() {
                self.reconnect().await;
            }
            return;
        }
        self.flush_used().await;
        if !self.link.up() {
            return;
        }
        let result = if Instant::now() >= self.next_resync {
            self.full_sync().await
        } else {
            self.link.ping_when_due().await
        };
        if let Err(e) = result {
            self.failed(e, None);
        }
    }

    async fn reconnect(&mut self) {
        if let Err(e) = self.link.connect().await {
            return self.go_down(&e);
        }
        if let Err(e) = self.reconcile().await {
            return self.failed(e, None);
        }
        if self.link.recovered() {
            tracing::info!(redis = %self.shared.url, "Redis is reachable again: session changes pushed, shared sessions pulled");
        }
        self.shared.connected.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    /// After (re)connecting: replay the queued writes, then pull everything.
    async fn reconcile(&mut self) -> RedisResult<()> {
        while let Some(op) = self.queue.pop_front() {
            if let Err(e) = self.apply(&op).await {
                if is_outage(&e) {
                    self.queue.push_front(op);
                    return Err(e);
                }
                self.finish(&op);
                tracing::warn!(redis = %self.shared.url, error = %e, "Redis session store: a queued change was refused");
            }
        }
        self.full_sync().await
    }

    /// Apply one write in Redis and load the result into the replica.
    async fn apply(&mut self, op: &Op) -> RedisResult<()> {
        let Op::Write {
            id,
            changes,
            delete,
            created_ms,
            now_ms,
        } = op
        else {
            return Ok(());
        };
        let mut inv = scripts::SESSION_WRITE.key(self.shared.key(id));
        inv.arg(self.shared.ttl_ms)
            .arg(*now_ms)
            .arg(*created_ms)
            .arg(if *delete { "1" } else { "0" })
            .arg(self.shared.events())
            .arg(self.shared.message(id));
        for c in changes {
            inv.arg(&c.field)
                .arg(c.expected.as_deref().unwrap_or(""))
                .arg(c.new.as_deref().unwrap_or(""));
        }
        let fields: Vec<String> = invoke(&mut self.link.conn()?, &inv, self.link.timeout()).await?;
        self.shared.done(id);
        self.shared.load(id, &fields);
        Ok(())
    }

    /// The write will never reach Redis: let reloads touch its session again.
    fn finish(&self, op: &Op) {
        if let Op::Write { id, .. } = op {
            self.shared.done(id);
        }
    }

    fn enqueue(&mut self, op: Op) {
        if let Some(oldest) = push_bounded(&mut self.queue, op, self.shared.options.queue_limit) {
            self.finish(&oldest);
            if self.link.overflowed() {
                tracing::warn!(redis = %self.shared.url, limit = self.shared.options.queue_limit,
                    "Redis session store: too many changes queued while Redis is down; dropping the oldest");
            }
        }
    }

    fn failed(&mut self, e: RedisError, op: Option<Op>) {
        if is_outage(&e) {
            self.go_down(&e);
            if let Some(op) = op {
                self.enqueue(op);
            }
        } else {
            tracing::warn!(redis = %self.shared.url, error = %e, "Redis session store: a command was refused");
            if let Some(op) = op {
                self.finish(&op);
            }
        }
    }

    fn go_down(&mut self, e: &RedisError) {
        let new_outage = self.link.lose();
        self.shared.connected.store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
        if new_outage {
            tracing::warn!(redis = %self.shared.url, error = %e,
                "Redis is unreachable: sessions are served from this instance's replica (changes are queued) until it returns");
        }
    }

    async fn flush_used(&mut self) {
        if self.used.is_empty() {
            return;
        }
        let used = std::mem::take(&mut self.used);
        let mut inv = scripts::SESSION_TOUCH.prepare_invoke();
        inv.arg(self.shared.ttl_ms);
        for (id, at) in &used {
            inv.key(self.shared.key(id)).arg(*at);
        }
        let result: RedisResult<i64> = match self.link.conn() {
            Ok(mut conn) => invoke(&mut conn, &inv, self.link.timeout()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Uses lost with an outage only shorten an idle TTL by the outage's length.
            self.failed(e, None);
        }
    }

    /// Reload one session (another instance changed it).
    async fn refresh(&mut self, id: &str) -> RedisResult<()> {
        let mut conn = self.link.conn()?;
        let cmd = redis::cmd("HGETALL").arg(self.shared.key(id)).to_owned();
        let fields: Vec<String> = query(&mut conn, &cmd, self.link.timeout()).await?;
        self.shared.load(id, &fields);
        Ok(())
    }

    /// Pull every session; drop replica sessions Redis no longer has; prune to the
    /// budget and evict in Redis what the budget pushed out. First check this instance's
    /// marker: if Redis forgot it (restarted empty), put back the sessions held here.
    async fn full_sync(&mut self) -> RedisResult<()> {
        self.next_resync = Instant::now() + self.shared.options.session_resync_interval;
        let mut conn = self.link.conn()?;
        let marker = self.shared.marker();
        let (resync, timeout) = (
            self.shared.options.session_resync_interval,
            self.link.timeout(),
        );
        if !renew_marker(&mut conn, &marker, resync, timeout).await? {
            if self.shared.syncs.load(Ordering::Acquire) > 0 {
                tracing::info!(redis = %self.shared.url, "Redis lost this instance's sessions: putting them back");
            }
            self.restore_all().await?;
            set_marker(&mut conn, &marker, resync, timeout).await?;
        }
        let prefix = format!("{}session:", self.shared.options.prefix);
        let keys = scan(&mut conn, &format!("{prefix}*"), self.link.timeout()).await?;
        let mut seen = HashSet::with_capacity(keys.len());
        for batch in keys.chunks(SCAN_COUNT as usize) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("HGETALL").arg(key);
            }
            let rows: Vec<Vec<String>> = query_pipe(&mut conn, &pipe, self.link.timeout()).await?;
            for (key, fields) in batch.iter().zip(rows) {
                if let Some(id) = key.strip_prefix(&prefix) {
                    self.shared.load(id, &fields);
                    seen.insert(id.to_owned());
                }
            }
        }
        for s in self.shared.replica.all() {
            if !seen.contains(&s.id) {
                let pending = lock(&self.shared.pending);
                if !pending.contains_key(&s.id) {
                    self.shared.replica.forget(&s.id);
                }
            }
        }
        let (text, _, evicted) = self.shared.replica.prune_evict();
        self.shared
            .bytes
            .store(text.len() as u64, Ordering::Relaxed);
        for s in evicted {
            let times = encode(&s)
                .into_iter()
                .filter(|(k, _)| k == "lastUsedAt" || k == "updatedAt")
                .collect::<HashMap<_, _>>();
            let mut inv = scripts::SESSION_EVICT.key(self.shared.key(&s.id));
            inv.arg(times.get("lastUsedAt").map_or("", String::as_str))
                .arg(times.get("updatedAt").map_or("", String::as_str))
                .arg(self.shared.events())
                .arg(self.shared.message(&s.id));
            let _: i64 = invoke(&mut conn, &inv, self.link.timeout()).await?;
        }
        self.shared.syncs.fetch_add(1, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Put every replica session back into Redis where it is missing.
    async fn restore_all(&mut self) -> RedisResult<()> {
        let mut conn = self.link.conn()?;
        for s in self.shared.replica.all() {
            let mut inv = scripts::SESSION_RESTORE.key(self.shared.key(&s.id));
            inv.arg(self.shared.ttl_ms);
            for (field, value) in encode(&s) {
                inv.arg(field).arg(value);
            }
            let _: i64 = invoke(&mut conn, &inv, self.link.timeout()).await?;
        }
        Ok(())
    }
}

/// Listen to `<prefix>session-events` and ask the writer to reload what other
/// instances changed; after every (re)subscription, a full resync.
async fn subscribe(
    shared: Arc<Shared>,
    client: redis::Client,
    tx: mpsc::Sender<Op>,
    stop: CancellationToken,
) {
    let listener = Listener {
        client,
        channel: shared.events(),
        instance: &shared.instance,
        options: &shared.options,
        subscribed: &shared.subscribed,
        changed: &shared.changed,
    };
    listen(listener, stop, |heard| {
        let id = match heard {
            Heard::Subscribed => None,
            Heard::Message(id) => Some(id.to_owned()),
        };
        // Full: the periodic resync heals it.
        let _ = tx.try_send(Op::Refresh(id));
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::session::PinSource;

    fn pinned(profile: &str, source: PinSource) -> Session {
        let mut s = Session::new("s1");
        s.profile_override = Some(profile.into());
        s.profile_override_source = Some(source);
        s.updated_at_ms = 5;
        s
    }

    #[test]
    fn diff_names_only_changed_content_fields_with_what_was_seen() {
        let before = pinned("a", PinSource::Auto);
        let mut after = pinned("b", PinSource::Auto);
        after.updated_at_ms = 9;
        after.fallback_notice = Some("switched".into());
        let changes = diff(Some(&before), Some(&after));
        assert_eq!(
            changes,
            [
                Change {
                    field: "authProfileOverride".into(),
                    expected: Some("\"a\"".into()),
                    new: Some("\"b\"".into()),
                },
                Change {
                    field: "fallbackNotice".into(),
                    expected: None,
                    new: Some("\"switched\"".into()),
                },
            ]
        );
        // A removal expects every content field as it was, and leaves them absent.
        let gone = diff(Some(&before), None);
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|c| c.new.is_none() && c.expected.is_some()));
        assert!(diff(Some(&before), Some(&before)).is_empty());
    }

    #[test]
    fn a_session_round_trips_through_its_hash_keeping_unknown_fields() {
        let mut s = pinned("work", PinSource::User);
        s.created_at_ms = 1_700_000_000_123;
        s.last_used_ms = 1_700_000_000_456;
        s.extra
            .insert("label".into(), serde_json::json!({"x": [1, "two"]}));
        let flat: Vec<String> = encode(&s).into_iter().flat_map(|(k, v)| [k, v]).collect();
        let back = decode("s1", &flat).unwrap();
        assert_eq!(back, s);
        assert_eq!(decode("s1", &[]), None);
    }
}
