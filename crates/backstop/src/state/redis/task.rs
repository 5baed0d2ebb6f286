//! The background writer of [`super::RedisStore`]: one task that owns the Redis
//! connection, so every write, refresh, resync and reconnect goes through it, in
//! order. Outage handling lives here; syncing in [`super::sync`], probe keys in
//! [`super::probes`], the events subscriber in [`super::events`].

use super::sync::{RECONCILE_WINDOW_MS, SCAN_COUNT, load};
use super::{Op, RedisOptions, Shared, lock, parse_breaker, scripts};
use crate::state::Scope;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation, ServerErrorKind,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The writer's housekeeping period (usage flush, probe acquisition, retries).
const TICK: Duration = Duration::from_millis(50);

/// A writer's connection to Redis and its outage bookkeeping (shared by the breaker and
/// session writers): connected or not, when to try again, and whether the current
/// outage, and its queue overflow, have been logged.
pub(super) struct Link {
    client: redis::Client,
    conn: Option<ConnectionManager>,
    timeout: Duration,
    retry_interval: Duration,
    next_retry: Instant,
    /// When an idle link next checks that Redis still answers.
    next_ping: Instant,
    down_logged: bool,
    overflow_logged: bool,
}

impl Link {
    pub(super) fn new(client: redis::Client, options: &RedisOptions) -> Self {
        Link {
            client,
            conn: None,
            timeout: options.command_timeout,
            retry_interval: options.retry_interval,
            next_retry: Instant::now(),
            next_ping: Instant::now(),
            down_logged: false,
            overflow_logged: false,
        }
    }

    pub(super) fn up(&self) -> bool {
        self.conn.is_some()
    }

    /// Down, and the retry interval since losing it has passed.
    pub(super) fn retry_due(&self) -> bool {
        !self.up() && Instant::now() >= self.next_retry
    }

    /// The bound on one command.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn conn(&self) -> RedisResult<ConnectionManager> {
        self.conn
            .clone()
            .ok_or_else(|| RedisError::from(std::io::Error::from(std::io::ErrorKind::NotConnected)))
    }

    /// Once per retry interval, PING: an outage then shows (on `/status`) within that
    /// interval even when nothing is being written.
    pub(super) async fn ping_when_due(&mut self) -> RedisResult<()> {
        let now = Instant::now();
        if now < self.next_ping {
            return Ok(());
        }
        self.next_ping = now + self.retry_interval;
        let _: String = query(&mut self.conn()?, &redis::cmd("PING"), self.timeout).await?;
        Ok(())
    }

    /// Connect (the caller reconciles, then calls [`Link::recovered`]).
    pub(super) async fn connect(&mut self) -> RedisResult<()> {
        self.conn = Some(connect(&self.client, self.timeout).await?);
        Ok(())
    }

    /// The connection is lost: drop it and wait the retry interval. True when this starts
    /// an outage (the caller logs it once).
    pub(super) fn lose(&mut self) -> bool {
        self.conn = None;
        self.next_retry = Instant::now() + self.retry_interval;
        !std::mem::replace(&mut self.down_logged, true)
    }

    /// Reconciled after connecting. True when an outage had been reported (log the end).
    pub(super) fn recovered(&mut self) -> bool {
        self.overflow_logged = false;
        std::mem::replace(&mut self.down_logged, false)
    }

    /// The outage queue overflowed. True the first time in this outage (log it once).
    pub(super) fn overflowed(&mut self) -> bool {
        !std::mem::replace(&mut self.overflow_logged, true)
    }
}

/// Queue `op`, dropping (and returning) the oldest when `limit` is reached.
pub(super) fn push_bounded<T>(queue: &mut VecDeque<T>, op: T, limit: usize) -> Option<T> {
    let dropped = if queue.len() >= limit.max(1) {
        queue.pop_front()
    } else {
        None
    };
    queue.push_back(op);
    dropped
}

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Link,
    pub(super) rx: mpsc::Receiver<Op>,
    /// Breaker writes waiting for Redis to come back.
    pub(super) queue: VecDeque<Op>,
    /// Usage times not yet sent (coalesced: one script call per tick).
    pub(super) used: HashMap<(String, String), u64>,
    pub(super) next_resync: Instant,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, client: redis::Client, rx: mpsc::Receiver<Op>) -> Self {
        Writer {
            link: Link::new(client, &shared.options),
            shared,
            rx,
            queue: VecDeque::new(),
            used: HashMap::new(),
            next_resync: Instant::now(),
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

    pub(super) fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    pub(super) async fn handle(&mut self, op: Op) {
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
                if self.link.up() {
                    self.flush_used().await;
                }
                let _ = reply.send(());
            }
            Op::Shutdown(reply) => {
                let _ = reply.send(());
            }
            Op::Refresh(scope) => {
                if self.link.up() {
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
                if !self.link.up() {
                    lock(&self.shared.probes).remove(&scope);
                } else if let Err(e) = self.take_probe(&scope).await {
                    lock(&self.shared.probes).remove(&scope);
                    self.failed(e, None);
                }
            }
            Op::ExtendProbe { .. } | Op::ReleaseProbe { .. } => {
                if self.link.up()
                    && let Err(e) = self.probe_op(&op).await
                {
                    self.failed(e, None);
                }
            }
            Op::Failure { .. } | Op::Close { .. } | Op::ClearAll { .. } => {
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

    /// Handle what is left in the channel, then flush, before ending.
    pub(super) async fn drain(&mut self) {
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

    pub(super) async fn on_tick(&mut self) {
        if !self.link.up() {
            if self.link.retry_due() {
                self.reconnect().await;
            }
            return;
        }
        self.flush_used().await;
        if let Err(e) = self.fetch_wanted_probes().await {
            self.failed(e, None);
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

    /// Connect; on success replay the queue, push the local view and pull Redis's.
    pub(super) async fn reconnect(&mut self) {
        if let Err(e) = self.link.connect().await {
            return self.go_down(&e);
        }
        if let Err(e) = self.reconcile().await {
            return self.failed(e, None);
        }
        if self.link.recovered() {
            tracing::info!(
                redis = %self.shared.url,
                "Redis is reachable again: local changes pushed, shared state pulled"
            );
        } else {
            tracing::debug!(redis = %self.shared.url, "Redis store connected");
        }
        self.shared.connected.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    /// Apply one breaker write in Redis and bring its result back into the cache.
    pub(super) async fn apply(&mut self, op: &Op) -> RedisResult<()> {
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
                let _: () = query(&mut self.link.conn()?, &stamp, self.link.timeout()).await?;
                let mut conn = self.link.conn()?;
                let mut deleted = scan(
                    &mut conn,
                    &format!("{}breaker:*", keys.prefix),
                    self.link.timeout(),
                )
                .await?;
                deleted.extend(
                    scan(
                        &mut conn,
                        &format!("{}probe:*", keys.prefix),
                        self.link.timeout(),
                    )
                    .await?,
                );
                for batch in deleted.chunks(SCAN_COUNT as usize) {
                    let _: i64 =
                        query(&mut conn, redis::cmd("DEL").arg(batch), self.link.timeout()).await?;
                }
                let publish = redis::cmd("PUBLISH")
                    .arg(keys.events())
                    .arg(self.message("*"))
                    .to_owned();
                let _: i64 = query(&mut conn, &publish, self.link.timeout()).await?;
                let mut pending = lock(&self.shared.pending);
                pending.all = pending.all.saturating_sub(1);
            }
            _ => {}
        }
        Ok(())
    }

    /// A write's result: the authoritative breaker, loaded unless more local writes
    /// on the scope are still on their way.
    pub(super) fn apply_result(&self, scope: &Scope, fields: &[String], was_pending: bool) {
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
    pub(super) fn finish(&self, op: &Op) {
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

    pub(super) fn enqueue(&mut self, op: Op) {
        if let Some(oldest) = push_bounded(&mut self.queue, op, self.shared.options.queue_limit) {
            self.finish(&oldest);
            if self.link.overflowed() {
                tracing::warn!(
                    redis = %self.shared.url,
                    limit = self.shared.options.queue_limit,
                    "Redis store: too many changes queued while Redis is down; dropping the oldest (open scopes are still pushed when it returns)"
                );
            }
        }
    }

    /// A command failed: an outage takes the store down (the write is queued); anything
    /// else is a refused command (logged, dropped).
    pub(super) fn failed(&mut self, e: RedisError, op: Option<Op>) {
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

    pub(super) fn go_down(&mut self, e: &RedisError) {
        let new_outage = self.link.lose();
        self.shared.connected.store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
        lock(&self.shared.probes).clear();
        if new_outage {
            tracing::warn!(
                redis = %self.shared.url,
                error = %e,
                "Redis is unreachable: serving on this instance's local view (cooldowns are not shared, probes are decided locally) until it returns"
            );
        }
    }

    pub(super) async fn flush_used(&mut self) {
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

    pub(super) fn message(&self, body: &str) -> String {
        format!("{} {body}", self.shared.instance)
    }

    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        invoke(&mut self.link.conn()?, inv, self.link.timeout()).await
    }
}

/// A connection to Redis that answered PING, within `timeout`.
pub(super) async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let attempt = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Every key matching `pattern` (SCAN, in batches).
pub(super) async fn scan(
    conn: &mut ConnectionManager,
    pattern: &str,
    timeout: Duration,
) -> RedisResult<Vec<String>> {
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
        let (next, keys): (u64, Vec<String>) = query(conn, &cmd, timeout).await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

pub(super) async fn query<T: FromRedisValue>(
    conn: &mut ConnectionManager,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, cmd.query_async(conn))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// An instance's marker key, renewed at each full resync for three resync intervals.
/// `Ok(false)`: Redis no longer had it (restarted empty, or evicted it), so what this
/// instance holds must be put back — then [`set_marker`].
pub(super) async fn renew_marker(
    conn: &mut ConnectionManager,
    marker: &str,
    resync: Duration,
    timeout: Duration,
) -> RedisResult<bool> {
    let known: i64 = query(
        conn,
        redis::cmd("PEXPIRE").arg(marker).arg(marker_ttl_ms(resync)),
        timeout,
    )
    .await?;
    Ok(known != 0)
}

/// Set the marker again once the local view has been put back.
pub(super) async fn set_marker(
    conn: &mut ConnectionManager,
    marker: &str,
    resync: Duration,
    timeout: Duration,
) -> RedisResult<()> {
    let cmd = redis::cmd("SET")
        .arg(marker)
        .arg(1)
        .arg("PX")
        .arg(marker_ttl_ms(resync))
        .to_owned();
    query(conn, &cmd, timeout).await
}

fn marker_ttl_ms(resync: Duration) -> u64 {
    u64::try_from((resync * 3).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Run a Lua script, bounded by `timeout`.
pub(super) async fn invoke<T: FromRedisValue>(
    conn: &mut ConnectionManager,
    inv: &ScriptInvocation<'_>,
    timeout: Duration,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, inv.invoke_async(conn))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

pub(super) async fn query_pipe<T: FromRedisValue>(
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

#[cfg(test)]
mod tests {
    use super::push_bounded;
    use std::collections::VecDeque;

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let mut q = VecDeque::new();
        assert_eq!(push_bounded(&mut q, 1, 2), None);
        assert_eq!(push_bounded(&mut q, 2, 2), None);
        assert_eq!(push_bounded(&mut q, 3, 2), Some(1));
        assert_eq!(q, [2, 3]);
        // A limit of 0 still keeps the newest.
        assert_eq!(push_bounded(&mut q, 4, 0), Some(2));
        assert_eq!(q, [3, 4]);
    }
}
