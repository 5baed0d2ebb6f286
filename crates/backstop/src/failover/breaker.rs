//! One scope's circuit breaker: closed → open until T → half-open, where one
//! caller at a time holds the probe (PRODUCT §3.3).
//!
//! A [`Breaker`] is plain data with pure transitions on an explicit `now_ms`;
//! stores ([`crate::state`]) keep one per scope and apply these transitions
//! inside their own critical section. A closed breaker with no counters is the
//! default, so a store needs no entry for a healthy scope.
//!
//! Rules:
//! - a failure while **closed** opens it on the first rung; while **half-open**
//!   (the probe, or any failure after the window ended) it reopens one rung up;
//!   while **open** (a request that was already in flight when it opened) it
//!   counts the error but does not climb, and it never shortens the window
//!   (`until = max(old, new)`), so one burst of concurrent failures is one rung;
//! - a success, probe or not, closes it and resets every counter;
//! - the half-open probe is a lease: if its holder never reports (the request
//!   was cancelled), the lease expires and the next caller probes;
//! - failures stop counting once the scope has been good for the failure window:
//!   the window runs from the later of the last failure and the end of its
//!   cooldown, so a ladder whose rungs are as long as the window still climbs.

use super::cooldown::Penalty;
use super::failure::Reason;
use crate::clock::duration_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a breaker stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a caller may send a request to a scope now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open and this caller holds the probe: go ahead, and report the outcome
    /// (success, failure, or abandon) so the breaker closes, climbs or frees the probe.
    Probe,
    /// Open (or another caller holds the probe) until `until_ms` (epoch ms).
    Denied { until_ms: u64, reason: Reason },
}

impl Admission {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Admission::Denied { .. })
    }
}

/// A breaker as the status page, the CLI and the state files see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    /// Why it is (or last was) cooling down: the reason behind `until_ms`.
    pub reason: Option<Reason>,
    /// End of the cooldown window (epoch ms); in the past when half-open, `None` when closed.
    pub until_ms: Option<u64>,
    /// The ladder rung: cooldowns opened in a row without a success.
    pub consecutive: u32,
    /// Every failure recorded since the last success (stragglers while open included).
    pub error_count: u32,
    pub failure_counts: BTreeMap<Reason, u32>,
    pub last_failure_ms: Option<u64>,
    /// When the current probe's lease expires, while one is out.
    pub probe_until_ms: Option<u64>,
}

/// One scope's breaker. See the module docs for the rules.
///
/// ```
/// use backstop::config::Ladder;
/// use backstop::failover::breaker::{Admission, Breaker};
/// use backstop::failover::{Reason, cooldown::Penalty};
/// use std::time::Duration;
/// let penalty = Penalty {
///     reason: Reason::RateLimit,
///     ladder: Ladder { base_ms: 1_000, cap_ms: 8_000 },
///     retry_after: None,
///     max_retry_after: Duration::from_secs(10),
///     jitter: 0.0,
///     failure_window_ms: 86_400_000,
///     probe_interval_ms: 0,
/// };
/// let mut b = Breaker::default();
/// b.on_failure(&penalty, 0);
/// assert_eq!(b.try_acquire(500, 60_000), Admission::Denied { until_ms: 1_000, reason: Reason::RateLimit });
/// assert_eq!(b.try_acquire(1_000, 60_000), Admission::Probe);
/// b.on_success();
/// assert_eq!(b.try_acquire(1_001, 60_000), Admission::Allowed);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breaker {
    reason: Option<Reason>,
    /// `None` = closed.
    until_ms: Option<u64>,
    consecutive: u32,
    error_count: u32,
    failure_counts: BTreeMap<Reason, u32>,
    last_failure_ms: Option<u64>,
    probe_until_ms: Option<u64>,
}

impl Breaker {
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.until_ms {
            None => BreakerState::Closed,
            Some(until) if now_ms < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Closed with no counters: a store may drop it.
    pub fn is_pristine(&self) -> bool {
        *self == Breaker::default()
    }

    /// Admit a caller. Half-open hands out one probe lease of `probe_lease_ms` at a time.
    pub fn try_acquire(&mut self, now_ms: u64, probe_lease_ms: u64) -> Admission {
        let reason = self.reason.unwrap_or(Reason::Unknown);
        match (self.state(now_ms), self.until_ms) {
            (BreakerState::Closed, _) => Admission::Allowed,
            (BreakerState::Open, Some(until_ms)) => Admission::Denied { until_ms, reason },
            _ => match self.probe_until_ms {
                Some(lease) if now_ms < lease => Admission::Denied {
                    until_ms: lease,
                    reason,
                },
                _ => {
                    self.probe_until_ms = Some(now_ms.saturating_add(probe_lease_ms.max(1)));
                    Admission::Probe
                }
            },
        }
    }

    /// Give the probe back without a verdict (the request was cancelled). True if one was out.
    pub fn release_probe(&mut self) -> bool {
        self.probe_until_ms.take().is_some()
    }

    /// A request on this scope succeeded: close and forget.
    pub fn on_success(&mut self) {
        *self = Breaker::default();
    }

    /// A request on this scope failed with `penalty.reason`.
    pub fn on_failure(&mut self, penalty: &Penalty, now_ms: u64) {
        let last_bad = self.last_failure_ms.max(self.until_ms);
        if last_bad.is_some_and(|t| now_ms.saturating_sub(t) >= penalty.failure_window_ms) {
            self.consecutive = 0;
            self.error_count = 0;
            self.failure_counts.clear();
        }
        self.error_count = self.error_count.saturating_add(1);
        let count = self.failure_counts.entry(penalty.reason).or_insert(0);
        *count = count.saturating_add(1);
        self.last_failure_ms = Some(self.last_failure_ms.map_or(now_ms, |t| t.max(now_ms)));

        let state = self.state(now_ms);
        let open = state == BreakerState::Open;
        if !open || self.consecutive == 0 {
            self.consecutive = self.consecutive.saturating_add(1);
        }
        let mut until = now_ms.saturating_add(duration_ms(penalty.cooldown(self.consecutive)));
        if state == BreakerState::HalfOpen {
            // A failed probe: the next one waits at least the probe interval.
            until = until.max(now_ms.saturating_add(penalty.probe_interval_ms));
        }
        match self.until_ms {
            Some(old) if open && old >= until => {}
            _ => {
                self.until_ms = Some(until);
                self.reason = Some(penalty.reason);
            }
        }
        // A failure ends any probe: the breaker is open again.
        self.probe_until_ms = None;
    }

    /// When a caller could next be admitted: `None` = now (closed, or half-open with the
    /// probe free); else the end of the window or of the current probe's lease.
    pub fn usable_at(&self, now_ms: u64) -> Option<u64> {
        match self.state(now_ms) {
            BreakerState::Closed => None,
            BreakerState::Open => self.until_ms,
            BreakerState::HalfOpen => self.probe_until_ms.filter(|&lease| now_ms < lease),
        }
    }

    pub fn snapshot(&self, now_ms: u64) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state(now_ms),
            reason: self.reason,
            until_ms: self.until_ms,
            consecutive: self.consecutive,
            error_count: self.error_count,
            failure_counts: self.failure_counts.clone(),
            last_failure_ms: self.last_failure_ms,
            probe_until_ms: self.probe_until_ms,
        }
    }

    /// Rebuild a breaker from a stored snapshot (its `state` is derived again from the times).
    pub fn from_snapshot(s: &BreakerSnapshot) -> Self {
        Breaker {
            reason: s.reason,
            until_ms: s.until_ms,
            consecutive: s.consecutive,
            error_count: s.error_count,
            failure_counts: s.failure_counts.clone(),
            last_failure_ms: s.last_failure_ms,
            probe_until_ms: s.probe_until_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ladder;
    use std::time::Duration;

    const S: u64 = 1_000;
    const DAY: u64 = 86_400 * S;
    const LEASE: u64 = 60 * S;

    fn penalty(reason: Reason) -> Penalty {
        Penalty {
            reason,
            ladder: Ladder {
                base_ms: 30 * S,
                cap_ms: 300 * S,
            },
            retry_after: None,
            max_retry_after: Duration::from_secs(3_600),
            jitter: 0.0,
            failure_window_ms: DAY,
            probe_interval_ms: 0,
        }
    }

    fn until(b: &Breaker) -> u64 {
        b.snapshot(0).until_ms.unwrap_or(0)
    }

    #[test]
    fn closed_allows_and_open_denies_until_the_window_ends() {
        let mut b = Breaker::default();
        assert_eq!(b.try_acquire(0, LEASE), Admission::Allowed);
        b.on_failure(&penalty(Reason::RateLimit), 100);
        assert_eq!(b.state(100), BreakerState::Open);
        let denied = Admission::Denied {
            until_ms: 30_100,
            reason: Reason::RateLimit,
        };
        assert_eq!(b.try_acquire(30_099, LEASE), denied);
        assert_eq!(b.usable_at(30_099), Some(30_100));
        assert_eq!(b.state(30_100), BreakerState::HalfOpen);
        assert_eq!(b.usable_at(30_100), None);
    }

    #[test]
    fn half_open_gives_out_exactly_one_probe() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(Reason::Timeout), 0);
        assert_eq!(b.try_acquire(30 * S, LEASE), Admission::Probe);
        assert_eq!(
            b.try_acquire(30 * S + 1, LEASE),
            Admission::Denied {
                until_ms: 90 * S,
                reason: Reason::Timeout
            }
        );
        assert_eq!(b.usable_at(31 * S), Some(90 * S));
    }

    #[test]
    fn probe_success_closes_and_resets() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(Reason::Overloaded), 0);
        assert_eq!(b.try_acquire(30 * S, LEASE), Admission::Probe);
        b.on_success();
        assert!(b.is_pristine());
        assert_eq!(b.snapshot(30 * S), BreakerSnapshot::default());
        assert_eq!(b.try_acquire(30 * S, LEASE), Admission::Allowed);
    }

    #[test]
    fn probe_failure_climbs_one_rung_at_a_time() {
        let mut b = Breaker::default();
        let p = penalty(Reason::RateLimit);
        let mut now = 0;
        let mut windows = Vec::new();
        for _ in 0..6 {
            b.on_failure(&p, now);
            windows.push((until(&b) - now) / S);
            now = until(&b);
            assert_eq!(b.try_acquire(now, LEASE), Admission::Probe);
        }
        assert_eq!(windows, [30, 60, 120, 240, 300, 300]);
        assert_eq!(b.snapshot(now).consecutive, 6);
    }

    #[test]
    fn failures_while_open_count_but_neither_climb_nor_shorten() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(Reason::RateLimit), 0);
        for t in 1..20 {
            b.on_failure(&penalty(Reason::RateLimit), t);
        }
        let s = b.snapshot(20);
        assert_eq!((s.consecutive, s.error_count), (1, 20));
        // Same rung, later start: extends to t + 30 s, never earlier.
        assert_eq!(s.until_ms, Some(30 * S + 19));

        // A short Retry-After while a long window is open does not shorten it.
        let mut short = penalty(Reason::ServerError);
        short.retry_after = Some(Duration::from_secs(1));
        b.on_failure(&short, 25);
        let s = b.snapshot(25);
        assert_eq!(s.until_ms, Some(30 * S + 19));
        assert_eq!(
            s.reason,
            Some(Reason::RateLimit),
            "the reason of the window that holds"
        );
        assert_eq!(s.failure_counts.get(&Reason::ServerError), Some(&1));
        assert_eq!(s.failure_counts.get(&Reason::RateLimit), Some(&20));

        // A longer one extends it and becomes the reason.
        let mut auth = penalty(Reason::Auth);
        auth.ladder = Ladder {
            base_ms: 300 * S,
            cap_ms: 3_600 * S,
        };
        b.on_failure(&auth, 30);
        assert_eq!(b.snapshot(30).until_ms, Some(300 * S + 30));
        assert_eq!(b.snapshot(30).reason, Some(Reason::Auth));
    }

    #[test]
    fn a_failed_probe_waits_the_probe_interval() {
        let mut p = penalty(Reason::RateLimit);
        p.retry_after = Some(Duration::from_secs(1));
        p.probe_interval_ms = 30_000;
        let mut b = Breaker::default();
        // The first failure honours Retry-After: usable again after 1 s.
        b.on_failure(&p, 0);
        assert_eq!(b.usable_at(0), Some(1_000));
        assert_eq!(b.try_acquire(1_000, 60_000), Admission::Probe);
        // The probe fails: no new probe for the whole interval, whatever Retry-After says.
        b.on_failure(&p, 1_000);
        assert_eq!(b.usable_at(1_000), Some(31_000));
        assert!(matches!(
            b.try_acquire(30_999, 60_000),
            Admission::Denied { .. }
        ));
        assert_eq!(b.try_acquire(31_000, 60_000), Admission::Probe);
    }

    #[test]
    fn abandoned_probe_lease_expires() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(Reason::Timeout), 0);
        assert_eq!(b.try_acquire(30 * S, LEASE), Admission::Probe);
        // The holder vanished: nobody else may probe during the lease …
        assert!(!b.try_acquire(30 * S + LEASE - 1, LEASE).is_allowed());
        // … and the next caller probes once it has passed.
        assert_eq!(b.try_acquire(30 * S + LEASE, LEASE), Admission::Probe);
        // An explicit release frees it at once.
        assert!(b.release_probe());
        assert!(!b.release_probe());
        assert_eq!(b.try_acquire(30 * S + LEASE + 1, LEASE), Admission::Probe);
    }

    #[test]
    fn failures_older_than_the_window_stop_counting() {
        let mut b = Breaker::default();
        let p = penalty(Reason::RateLimit);
        b.on_failure(&p, 0);
        b.on_failure(&p, 30 * S); // half-open failure: rung 2, open until 90 s
        assert_eq!(b.snapshot(30 * S).consecutive, 2);
        // Just inside the window (counted from the end of the cooldown): rung 3.
        let mut c = b.clone();
        c.on_failure(&p, 90 * S + DAY - 1);
        assert_eq!(c.snapshot(0).consecutive, 3);
        // A day after the scope was last bad: the old failures no longer count.
        b.on_failure(&p, 90 * S + DAY);
        let s = b.snapshot(90 * S + DAY);
        assert_eq!((s.consecutive, s.error_count), (1, 1));
        assert_eq!(s.until_ms, Some(90 * S + DAY + 30 * S));
    }

    #[test]
    fn long_rungs_still_climb_across_the_window() {
        // billing: 5 h → 24 h with a 24 h window; a probe failing after a 24 h cooldown climbs.
        let mut p = penalty(Reason::Billing);
        p.ladder = Ladder {
            base_ms: 5 * 3_600 * S,
            cap_ms: DAY,
        };
        let mut b = Breaker::default();
        let mut now = 0;
        for _ in 0..5 {
            b.on_failure(&p, now);
            now = until(&b);
        }
        let s = b.snapshot(now);
        assert_eq!(s.consecutive, 5);
        assert_eq!(
            s.until_ms.map(|u| u - s.last_failure_ms.unwrap_or(0)),
            Some(DAY)
        );
    }

    #[test]
    fn snapshots_round_trip() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(Reason::Billing), 5);
        let _ = b.try_acquire(30 * S + 5, LEASE);
        let snap = b.snapshot(30 * S + 6);
        assert_eq!(snap.state, BreakerState::HalfOpen);
        assert_eq!(Breaker::from_snapshot(&snap), b);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["state"], "half_open");
        assert_eq!(json["reason"], "billing");
        assert_eq!(json["failure_counts"]["billing"], 1);
        let back: BreakerSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snap);
    }
}
