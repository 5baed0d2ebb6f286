//! Fetching half-open scopes' probe keys for this instance (see the module docs of
//! [`super`]): on demand when `admit` asks, ahead of time for scopes it has traffic for.

use super::task::Writer;
use super::{Grant, Op, lock, scripts};
use crate::state::{BreakerState, Scope, StateStore};
use redis::RedisResult;
use std::time::{Duration, Instant};

/// A scope wanted (denied while open) this long ago no longer gets its probe fetched ahead.
const WANTED_FOR: Duration = Duration::from_secs(600);
/// Margin kept on a held probe key so it is never used as it lapses in Redis.
const GRANT_MARGIN: Duration = Duration::from_millis(500);

impl Writer {
    /// Take the probe key of a half-open scope; remember who holds it.
    pub(super) async fn take_probe(&mut self, scope: &Scope) -> RedisResult<()> {
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

    pub(super) async fn probe_op(&mut self, op: &Op) -> RedisResult<()> {
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
    pub(super) async fn fetch_wanted_probes(&mut self) -> RedisResult<()> {
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
}
