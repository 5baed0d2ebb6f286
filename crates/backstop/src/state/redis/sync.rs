//! Bringing the cache and Redis together: the per-scope refresh after an event,
//! the periodic full resync (SCAN), and the reconcile after an outage (replay the
//! queue, merge the local view into Redis, pull everything).

use super::task::{Writer, is_outage, query, query_pipe, renew_marker, scan, set_marker};
use super::{Grant, Shared, lock, parse_breaker, scripts};
use crate::state::{BreakerSnapshot, Scope, StateStore};
use redis::RedisResult;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The failure window assumed for the TTL of a breaker merged at reconcile time (the
/// default `auth.cooldowns.failure_window_ms`; later failures set their own).
pub(super) const RECONCILE_WINDOW_MS: u64 = 86_400_000;
/// Keys per SCAN batch.
pub(super) const SCAN_COUNT: u32 = 500;

impl Writer {
    /// After (re)connecting: replay the queued writes, merge every local breaker, pull all.
    pub(super) async fn reconcile(&mut self) -> RedisResult<()> {
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
    pub(super) async fn push_local(&mut self) -> RedisResult<()> {
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

    /// Reload one scope from Redis (another instance changed it).
    pub(super) async fn refresh(&mut self, scope: &Scope) -> RedisResult<()> {
        let mut conn = self.link.conn()?;
        let cmd = redis::cmd("HGETALL")
            .arg(self.shared.keys.breaker(scope))
            .to_owned();
        let fields: Vec<String> = query(&mut conn, &cmd, self.link.timeout()).await?;
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
    pub(super) async fn full_sync(&mut self) -> RedisResult<()> {
        self.next_resync = Instant::now() + self.shared.options.resync_interval;
        let mut conn = self.link.conn()?;
        let marker = self.shared.keys.instance(&self.shared.instance);
        let (resync, timeout) = (self.shared.options.resync_interval, self.link.timeout());
        if !renew_marker(&mut conn, &marker, resync, timeout).await? {
            if self.shared.syncs.load(Ordering::Acquire) > 0 {
                tracing::info!(redis = %self.shared.url, "Redis lost this instance's state: pushing the local view");
            }
            self.push_local().await?;
            set_marker(&mut conn, &marker, resync, timeout).await?;
        }
        let pattern = format!("{}breaker:*", self.shared.keys.prefix);
        let keys = scan(&mut conn, &pattern, self.link.timeout()).await?;
        let mut remote: Vec<(Scope, Vec<String>)> = Vec::with_capacity(keys.len());
        for batch in keys.chunks(64) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("HGETALL").arg(key);
            }
            let rows: Vec<Vec<String>> = query_pipe(&mut conn, &pipe, self.link.timeout()).await?;
            for (key, fields) in batch.iter().zip(rows) {
                if let Some(scope) = self.shared.keys.scope_of(key) {
                    remote.push((scope, fields));
                }
            }
        }
        let used: Vec<String> = query(
            &mut conn,
            redis::cmd("HGETALL").arg(self.shared.keys.used()),
            self.link.timeout(),
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
}

/// Load a breaker read from Redis into the cache, keeping a local probe lease that is
/// still out on the same window (Redis keeps probe leases in their own key).
pub(super) fn load(shared: &Shared, scope: &Scope, remote: Option<BreakerSnapshot>, now_ms: u64) {
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
