//! The background side of [`super::RedisStore`]: one writer task that owns the
//! Redis connection (every write, refresh, resync and reconnect goes through it,
//! in order), and one subscriber task on a dedicated pub/sub connection that
//! turns events from other instances into refreshes for the writer.

use super::{Grant, Op, Shared, lock, parse_breaker, scripts};
use crate::state::{BreakerSnapshot, BreakerState, Scope, StateStore};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation, ServerErrorKind,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The writer's housekeeping period (usage flush, probe acquisition, retries).
const TICK: Duration = Duration::from_millis(50);
/// A scope wanted (denied while open) this long ago no longer gets its probe fetched ahead.
const WANTED_FOR: Duration = Duration::from_secs(600);
/// Margin kept on a held probe key so it is never used as it lapses in Redis.
const GRANT_MARGIN: Duration = Duration::from_millis(500);
/// The failure window assumed for the TTL of a breaker merged at reconcile time (the
/// default `auth.cooldowns.failure_window_ms`; later failures set their own).
const RECONCILE_WINDOW_MS: u64 = 86_400_000;
/// Keys per SCAN batch.
const SCAN_COUNT: u32 = 500;

pub(super) struct Writer {
    shared: Arc<Shared>,
    client: redis::Client,
    conn: Option<ConnectionManager>,
    rx: mpsc::Receiver<Op>,
    /// Breaker writes waiting for Redis to come back.
    queue: VecDeque<Op>,
    /// Usage times not yet sent (coalesced: one script call per tick).
    used: HashMap<(String, String), u64>,
    next_retry: Instant,
    next_resync: Instant,
    /// Whether the current outage has been logged (and the queue overflow, once per outage).
    down_logged: bool,
    overflow_logged: bool,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, client: redis::Client, rx: mpsc::Receiver<Op>) -> Self {
        let now = Instant::now();
        Writer {
            shared,
            client,
            conn: None,
            rx,
            queue: VecDeque::new(),
            used: HashMap::new(),
            next_retry: now,
            next_resync: now,
            down_logged: false,
            overflow_logged: false,
        }
    }

    pub(super) async fn run(mut self) {
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
        // From now on the store is local only (probes included).
        self.shared.connected.store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    fn up(&self) -> bool {
        self.conn.is_some()
    }

    fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    async fn handle(&mut self, op: Op) {
        match op {
            Op::Used {
                provider,
                profile,
                at_ms,
            } => {
                let t = self.used.entry((provider, profile)).or_insert(0);
                *t = (*t).max(at_ms);
            }
            Op::Flush(reply) => {
                if self.up() {
                    self.flush_used().await;
                }
                let _ = reply.send(());
            }
            Op::Shutdown(reply) => {
                let _ = reply.send(());
            }
            Op::Refresh(scope) => {
                if self.up() {
                    let result = match &scope {
                        Some(scope) => self.refresh(scope).await,
                        None => self.full_sync().await,
                    };
                    if let Err(e) = result {
                        self.failed(e, None);
                    }
                }
            }
            Op::TakeProbe { scope } => {
                if !self.up() {
                    lock(&self.shared.probes).remove(&scope);
                } else if let Err(e) = self.take_probe(&scope).await {
                    lock(&self.shared.probes).remove(&scope);
                    self.failed(e, None);
                }
            }
            Op::ExtendProbe { .. } | Op::ReleaseProbe { .. } => {
                if self.up()
                    && let Err(e) = self.probe_op(&op).await
                {
                    self.failed(e, None);
                }
            }
            Op::Failure { .. } | Op::Close { .. } | Op::ClearAll { .. } => {
                if self.up() {
                    if let Err(e) = self.apply(&op).await {
                        self.failed(e, Some(op));
                    }
                } else {
                    self.enqueue(op);
                }
            }
        }
    }

    /// Handle what is left in the channel, then flush, before ending.
    async fn drain(&mut self) {
        while let Ok(op) = self.rx.try_recv() {
            match op {
                Op::Flush(reply) | Op::Shutdown(reply) => {
                    let _ = reply.send(());
                }
                op => self.handle(op).await,
            }
        }
        if self.up() {
            self.flush_used().await;
        }
    }

    async fn on_tick(&mut self) {
        if !self.up() {
            if Instant::now() >= self.next_retry {
                self.reconnect().await;
            }
            return;
        }
        self.flush_used().await;
        if let Err(e) = self.fetch_wanted_probes().await {
            self.failed(e, None);
            return;
        }
        if Instant::now() >= self.next_resync
            && let Err(e) = self.full_sync().await
        {
            self.failed(e, None);
        }
    }

    /// Connect; on success replay the queue, push the local view and pull Redis's.
    async fn reconnect(&mut self) {
        let timeout = self.shared.options.command_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let attempt = async {
            let mut conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return self.go_down(&e),
            Err(_) => return self.go_down(&timed_out()),
        };
        self.conn = Some(conn);
        if let Err(e) = self.reconcile().await {
            return self.failed(e, None);
        }
        if self.down_logged {
            tracing::info!(
                redis = %self.shared.url,
                "Redis is reachable again: local changes pushed, shared state pulled"
            );
        } else {
            tracing::debug!(redis = %self.shared.url, "Redis store connected");
        }
        self.down_logged = false;
        self.overflow_logged = false;
        self.shared.connected.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    /// After (re)connecting: replay the queued writes, merge every local breaker, pull all.
    async fn reconcile(&mut self) -> RedisResult<()> {
        while let Some(op) = self.queue.pop_front() {
            if let Err(e) = self.apply(&op).await {
                if is_outage(&e) {
                    self.queue.push_front(op);
                    return Err(e);
                }
                self.finish(&op);
                tracing::warn!(redis = %self.shared.url, error = %e, "Redis store: a queued change was refused");
            }
        }
        self.push_local().await?;
        self.full_sync().await
    }

    /// Merge every locally known breaker and usage time into Redis (a join: it never
    /// shortens a window or lowers a count there).
    async fn push_local(&mut self) -> RedisResult<()> {
        let now = self.now_ms();
        let window = RECONCILE_WINDOW_MS;
        for (scope, snap) in self.shared.cache.snapshot(now) {
            let Some(until) = snap.until_ms else { continue };
            let message = self.message(&scope.to_string());
            let mut inv = scripts::MERGE.key(self.shared.keys.breaker(&scope));
            inv.key(self.shared.keys.closed(&scope))
                .key(self.shared.keys.cleared())
                .arg(now)
                .arg(window)
                .arg(self.shared.keys.events())
                .arg(message)
                .arg(until)
                .arg(snap.reason.map_or("unknown", |r| r.as_str()))
                .arg(snap.consecutive)
                .arg(snap.error_count)
                .arg(snap.last_failure_ms.unwrap_or(0));
            for (reason, n) in &snap.failure_counts {
                inv.arg(format!("c:{}", reason.as_str())).arg(*n);
            }
            let fields: Vec<String> = self.invoke(&inv).await?;
            self.apply_result(&scope, &fields, false);
        }
        for (provider, profile, at) in self.shared.cache.usage() {
            let t = self.used.entry((provider, profile)).or_insert(0);
            *t = (*t).max(at);
        }
        self.flush_used().await;
        Ok(())
    }

    /// Apply one breaker write in Redis and bring its result back into the cache.
    async fn apply(&mut self, op: &Op) -> RedisResult<()> {
        let keys = &self.shared.keys;
        match op {
            Op::Failure {
                scope,
                reason,
                rungs,
                window_ms,
                probe_interval_ms,
                now_ms,
            } => {
                let mut inv = scripts::FAILURE.key(keys.breaker(scope));
                inv.key(keys.probe(scope))
                    .arg(*now_ms)
                    .arg(reason.as_str())
                    .arg(*window_ms)
                    .arg(*probe_interval_ms)
                    .arg(keys.events())
                    .arg(self.message(&scope.to_string()));
                for ms in rungs {
                    inv.arg(*ms);
                }
                let fields: Vec<String> = self.invoke(&inv).await?;
                self.apply_result(scope, &fields, true);
            }
            Op::Close { scope, now_ms } => {
                let mut inv = scripts::CLOSE.key(keys.breaker(scope));
                inv.key(keys.probe(scope))
                    .key(keys.closed(scope))
                    .arg(keys.events())
                    .arg(self.message(&scope.to_string()))
                    .arg(*now_ms)
                    .arg(RECONCILE_WINDOW_MS);
                let _: i64 = self.invoke(&inv).await?;
                lock(&self.shared.pending).done(scope);
            }
            Op::ClearAll { now_ms } => {
                let stamp = redis::cmd("SET")
                    .arg(keys.cleared())
                    .arg(*now_ms)
                    .arg("PX")
                    .arg(RECONCILE_WINDOW_MS)
                    .to_owned();
                let _: () = query(&mut self.conn()?, &stamp, self.timeout()).await?;
                let mut deleted = self.scan(&format!("{}breaker:*", keys.prefix)).await?;
                deleted.extend(self.scan(&format!("{}probe:*", keys.prefix)).await?);
                let mut conn = self.conn()?;
                for batch in deleted.chunks(SCAN_COUNT as usize) {
                    let _: i64 =
                        query(&mut conn, redis::cmd("DEL").arg(batch), self.timeout()).await?;
                }
                let publish = redis::cmd("PUBLISH")
                    .arg(keys.events())
                    .arg(self.message("*"))
                    .to_owned();
                let _: i64 = query(&mut conn, &publish, self.timeout()).await?;
                let mut pending = lock(&self.shared.pending);
                pending.all = pending.all.saturating_sub(1);
            }
            _ => {}
        }
        Ok(())
    }

    /// A write's result: the authoritative breaker, loaded unless more local writes
    /// on the scope are still on their way.
    fn apply_result(&self, scope: &Scope, fields: &[String], was_pending: bool) {
        let now = self.now_ms();
        let mut pending = lock(&self.shared.pending);
        if was_pending {
            pending.done(scope);
        }
        if pending.is_quiet(scope) {
            load(&self.shared, scope, parse_breaker(fields, now), now);
        }
    }

    /// The write will never reach Redis: let refreshes touch its scope again.
    fn finish(&self, op: &Op) {
        let mut pending = lock(&self.shared.pending);
        match op {
            Op::ClearAll { .. } => pending.all = pending.all.saturating_sub(1),
            op => {
                if let Some(scope) = op.pending_scope() {
                    pending.done(scope);
                }
            }
        }
    }

    fn enqueue(&mut self, op: Op) {
        if self.queue.len() >= self.shared.options.queue_limit.max(1)
            && let Some(oldest) = self.queue.pop_front()
        {
            self.finish(&oldest);
            if !self.overflow_logged {
                self.overflow_logged = true;
                tracing::warn!(
                    redis = %self.shared.url,
                    limit = self.shared.options.queue_limit,
                    "Redis store: too many changes queued while Redis is down; dropping the oldest (open scopes are still pushed when it returns)"
                );
            }
        }
        self.queue.push_back(op);
    }

    /// A command failed: an outage takes the store down (the write is queued); anything
    /// else is a refused command (logged, dropped).
    fn failed(&mut self, e: RedisError, op: Option<Op>) {
        if is_outage(&e) {
            self.go_down(&e);
            if let Some(op) = op {
                self.enqueue(op);
            }
        } else {
            tracing::warn!(redis = %self.shared.url, error = %e, "Redis store: a command was refused");
            if let Some(op) = op {
                self.finish(&op);
            }
        }
    }

    fn go_down(&mut self, e: &RedisError) {
        self.conn = None;
        self.next_retry = Instant::now() + self.shared.options.retry_interval;
        self.shared.connected.store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
        lock(&self.shared.probes).clear();
        if !self.down_logged {
            self.down_logged = true;
            tracing::warn!(
                redis = %self.shared.url,
                error = %e,
                "Redis is unreachable: serving on this instance's local view (cooldowns are not shared, probes are decided locally) until it returns"
            );
        }
    }

    /// Reload one scope from Redis (another instance changed it).
    async fn refresh(&mut self, scope: &Scope) -> RedisResult<()> {
        let mut conn = self.conn()?;
        let cmd = redis::cmd("HGETALL")
            .arg(self.shared.keys.breaker(scope))
            .to_owned();
        let fields: Vec<String> = query(&mut conn, &cmd, self.timeout()).await?;
        let now = self.now_ms();
        {
            let mut probes = lock(&self.shared.probes);
            if let Some(Grant::Asking(_) | Grant::Theirs { .. }) = probes.get(scope) {
                probes.remove(scope);
            }
        }
        let pending = lock(&self.shared.pending);
        if pending.is_quiet(scope) {
            load(&self.shared, scope, parse_breaker(&fields, now), now);
        }
        Ok(())
    }

    /// Pull every breaker and usage time; drop local breakers Redis no longer has. First
    /// check this instance's marker: if Redis forgot it, push the local view before pulling.
    async fn full_sync(&mut self) -> RedisResult<()> {
        self.next_resync = Instant::now() + self.shared.options.resync_interval;
        let mut conn = self.conn()?;
        let marker = self.shared.keys.instance(&self.shared.instance);
        let ttl = self.shared.options.resync_interval * 3;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let known: i64 = query(
            &mut conn,
            redis::cmd("PEXPIRE").arg(&marker).arg(ttl_ms),
            self.timeout(),
        )
        .await?;
        if known == 0 {
            if self.shared.syncs.load(Ordering::Acquire) > 0 {
                tracing::info!(redis = %self.shared.url, "Redis lost this instance's state: pushing the local view");
            }
            self.push_local().await?;
            let _: () = query(
                &mut conn,
                redis::cmd("SET").arg(&marker).arg(1).arg("PX").arg(ttl_ms),
                self.timeout(),
            )
            .await?;
        }
        let keys = self
            .scan(&format!("{}breaker:*", self.shared.keys.prefix))
            .await?;
        let mut remote: Vec<(Scope, Vec<String>)> = Vec::with_capacity(keys.len());
        for batch in keys.chunks(64) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("HGETALL").arg(key);
            }
            let rows: Vec<Vec<String>> = query_pipe(&mut conn, &pipe, self.timeout()).await?;
            for (key, fields) in batch.iter().zip(rows) {
                if let Some(scope) = self.shared.keys.scope_of(key) {
                    remote.push((scope, fields));
                }
            }
        }
        let used: Vec<String> = query(
            &mut conn,
            redis::cmd("HGETALL").arg(self.shared.keys.used()),
            self.timeout(),
        )
        .await?;

        let now = self.now_ms();
        {
            let pending = lock(&self.shared.pending);
            let mut seen = HashSet::with_capacity(remote.len());
            for (scope, fields) in remote {
                if pending.is_quiet(&scope) {
                    load(&self.shared, &scope, parse_breaker(&fields, now), now);
                }
                seen.insert(scope);
            }
            for (scope, _) in self.shared.cache.snapshot(now) {
                if !seen.contains(&scope) && pending.is_quiet(&scope) {
                    self.shared.cache.clear(&scope);
                }
            }
        }
        lock(&self.shared.probes).retain(|_, g| matches!(g, Grant::Mine(_)));
        for pair in used.chunks_exact(2) {
            if let (Some((provider, profile)), Ok(at)) =
                (pair[0].split_once(':'), pair[1].parse::<u64>())
            {
                self.shared.cache.restore_last_used(provider, profile, at);
            }
        }
        self.shared.syncs.fetch_add(1, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut conn = self.conn()?;
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = query(&mut conn, &cmd, self.timeout()).await?;
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn flush_used(&mut self) {
        if self.used.is_empty() {
            return;
        }
        let used = std::mem::take(&mut self.used);
        let mut inv = scripts::MARK_USED.key(self.shared.keys.used());
        for ((provider, profile), at) in &used {
            inv.arg(format!("{provider}:{profile}")).arg(*at);
        }
        let result: RedisResult<i64> = self.invoke(&inv).await;
        if let Err(e) = result {
            // Usage is in the cache: the reconcile after the outage pushes it.
            self.failed(e, None);
        }
    }

    /// Take the probe key of a half-open scope; remember who holds it.
    async fn take_probe(&mut self, scope: &Scope) -> RedisResult<()> {
        let reservation = self.shared.options.probe_reservation;
        let started = Instant::now();
        let mut inv = scripts::TAKE_PROBE.key(self.shared.keys.probe(scope));
        inv.arg(&self.shared.instance)
            .arg(u64::try_from(reservation.as_millis()).unwrap_or(u64::MAX));
        let (status, ttl): (i64, i64) = self.invoke(&inv).await?;
        let ttl = u64::try_from(ttl).unwrap_or(0);
        let theirs = Grant::Theirs {
            until_ms: self.now_ms().saturating_add(ttl),
            expires: Instant::now() + Duration::from_millis(ttl),
        };
        let mut probes = lock(&self.shared.probes);
        match status {
            1 => {
                probes.insert(
                    scope.clone(),
                    Grant::Mine(started + reservation.saturating_sub(GRANT_MARGIN)),
                );
            }
            // Already ours (an ask that crossed a fetch ahead): keep an unused grant; else
            // it was handed out and the key is in use, so wait like anyone else.
            2 if matches!(probes.get(scope), Some(Grant::Mine(_))) => {}
            _ => {
                probes.insert(scope.clone(), theirs);
            }
        }
        Ok(())
    }

    async fn probe_op(&mut self, op: &Op) -> RedisResult<()> {
        let keys = &self.shared.keys;
        match op {
            Op::ExtendProbe { scope, lease_ms } => {
                let mut inv = scripts::EXTEND_PROBE.key(keys.probe(scope));
                inv.arg(&self.shared.instance).arg(*lease_ms);
                let ours: i64 = self.invoke(&inv).await?;
                if ours == 0 {
                    tracing::debug!(scope = %scope, "probe key lapsed before use");
                }
            }
            Op::ReleaseProbe { scope } => {
                let mut inv = scripts::RELEASE_PROBE.key(keys.probe(scope));
                inv.arg(&self.shared.instance)
                    .arg(keys.events())
                    .arg(self.message(&scope.to_string()));
                let _: i64 = self.invoke(&inv).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Fetch ahead the probe of scopes this instance has traffic for, as they go half-open.
    async fn fetch_wanted_probes(&mut self) -> RedisResult<()> {
        let now = self.now_ms();
        let at = Instant::now();
        let due: Vec<Scope> = {
            let mut wanted = lock(&self.shared.wanted);
            wanted.retain(|scope, since| {
                at.duration_since(*since) < WANTED_FOR
                    && self.shared.cache.get(scope, now).is_some()
            });
            let probes = lock(&self.shared.probes);
            wanted
                .keys()
                .filter(|scope| {
                    let half_open = self.shared.cache.get(scope, now).is_some_and(|s| {
                        s.state == BreakerState::HalfOpen
                            && s.probe_until_ms.is_none_or(|t| t <= now)
                    });
                    let known = match probes.get(*scope) {
                        Some(Grant::Mine(exp)) | Some(Grant::Theirs { expires: exp, .. }) => {
                            at < *exp
                        }
                        Some(Grant::Asking(_)) => true,
                        None => false,
                    };
                    half_open && !known
                })
                .cloned()
                .collect()
        };
        for scope in due {
            self.take_probe(&scope).await?;
        }
        Ok(())
    }

    fn message(&self, body: &str) -> String {
        format!("{} {body}", self.shared.instance)
    }

    fn timeout(&self) -> Duration {
        self.shared.options.command_timeout
    }

    fn conn(&self) -> RedisResult<ConnectionManager> {
        self.conn
            .clone()
            .ok_or_else(|| RedisError::from(std::io::Error::from(std::io::ErrorKind::NotConnected)))
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> RedisResult<T> {
        let mut conn = self.conn()?;
        tokio::time::timeout(self.timeout(), inv.invoke_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

/// Load a breaker read from Redis into the cache, keeping a local probe lease that is
/// still out on the same window (Redis keeps probe leases in their own key).
fn load(shared: &Shared, scope: &Scope, remote: Option<BreakerSnapshot>, now_ms: u64) {
    match remote {
        None => {
            shared.cache.clear(scope);
        }
        Some(mut snap) => {
            if let Some(local) = shared.cache.get(scope, now_ms)
                && local.until_ms == snap.until_ms
            {
                snap.probe_until_ms = local.probe_until_ms;
            }
            shared.cache.restore(scope.clone(), &snap);
        }
    }
}

async fn query<T: FromRedisValue>(
    conn: &mut ConnectionManager,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, cmd.query_async(conn))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

async fn query_pipe<T: FromRedisValue>(
    conn: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    timeout: Duration,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, pipe.query_async(conn))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

pub(super) fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

/// Whether an error means Redis cannot be reached (as opposed to a refused command).
pub(super) fn is_outage(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::ExecAbort | ServerErrorKind::NoScript
        ) | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType
    )
}

/// Listen to `<prefix>events` on a dedicated connection and ask the writer to reload
/// what other instances changed; after every (re)subscription, a full resync.
pub(super) async fn subscribe(
    shared: Arc<Shared>,
    client: redis::Client,
    tx: mpsc::Sender<Op>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    let channel = shared.keys.events();
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(shared.options.command_timeout, connect) => r,
        };
        if let Ok(Ok(mut pubsub)) = attempt {
            delay = Duration::from_millis(50);
            shared.subscribed.store(true, Ordering::Release);
            // Messages may have been missed while unsubscribed.
            let _ = tx.try_send(Op::Refresh(None));
            let mut messages = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let Some((from, body)) = payload.split_once(' ') else {
                    continue;
                };
                if from == shared.instance {
                    continue;
                }
                let refresh = if body == "*" {
                    Some(None)
                } else {
                    body.parse::<Scope>().ok().map(Some)
                };
                if let Some(scope) = refresh {
                    // Full: the periodic resync heals it.
                    let _ = tx.try_send(Op::Refresh(scope));
                }
            }
            shared.subscribed.store(false, Ordering::Release);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(shared.options.retry_interval);
    }
}
