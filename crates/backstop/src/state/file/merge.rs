//! How two views of one scope become one, when a process writes `auth-state.json`
//! over what another process wrote since it last read it.
//!
//! Each persisted scope is a [`Record`]: the breaker (or `None`, a *tombstone*: closed by
//! a success or by hand), when it last changed (`changed_at`) and when it was last reset
//! (`reset_at`). Each process also keeps a [`Delta`] per scope: what it did to the scope
//! since its last write (failures counted, or a reset).
//!
//! The rule, per scope ([`merge_scope`]):
//! 1. **A reset wins over everything older.** If our reset is at least as new as the
//!    file's last change, ours wins whole (our breaker after the reset, or a tombstone).
//!    If the file's reset is newer than our last change, the file wins whole (our
//!    failures happened before it).
//! 2. **Otherwise both are kept:** the counters are the file's plus the failures we
//!    recorded since our last write (so nothing is lost and nothing counted twice); the
//!    cooldown window is the later of the two (a merge never shortens a cooldown) and
//!    its reason goes with it; the ladder rung and the last failure are the larger.
//!    When our reset wins, the same happens from an empty base: our breaker's window
//!    and rung, and the failures we counted after the reset.
//!
//! Probe leases are never persisted: they are this process's business.
//!
//! Usage times (`lastUsed`) merge by taking the later one. Tombstones stay in the file
//! for [`TOMBSTONE_TTL_MS`] so every running process sees the reset before they go.

use crate::failover::Reason;
use crate::state::BreakerSnapshot;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How long a reset is remembered in the file (other processes re-read every 2 s).
pub const TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;

/// One scope as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// `None`: closed with no history (a tombstone).
    pub breaker: Option<BreakerSnapshot>,
    /// Epoch ms of the last change.
    pub changed_at: u64,
    /// Epoch ms of the last reset (success or manual clear), if any.
    pub reset_at: Option<u64>,
    /// Fields of the record this version does not know, kept on rewrite.
    pub extra: Map<String, Value>,
}

impl Record {
    pub fn new(breaker: Option<BreakerSnapshot>, changed_at: u64) -> Self {
        Record {
            breaker,
            changed_at,
            reset_at: None,
            extra: Map::new(),
        }
    }

    pub fn tombstone(at: u64) -> Self {
        Record {
            breaker: None,
            changed_at: at,
            reset_at: Some(at),
            extra: Map::new(),
        }
    }
}

/// What this process did to one scope since its last write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// The scope was reset here (success, manual clear, or its failures aged out of the
    /// window) at this time; the counters below are what came after.
    pub reset_at: Option<u64>,
    /// Failures recorded (after `reset_at`, when set).
    pub errors: u32,
    pub counts: BTreeMap<Reason, u32>,
    /// Epoch ms of the last change.
    pub changed_at: u64,
}

impl Delta {
    pub fn reset(at: u64) -> Self {
        Delta {
            reset_at: Some(at),
            errors: 0,
            counts: BTreeMap::new(),
            changed_at: at,
        }
    }

    pub fn failure(&mut self, reason: Reason, at: u64) {
        self.errors = self.errors.saturating_add(1);
        let n = self.counts.entry(reason).or_insert(0);
        *n = n.saturating_add(1);
        self.changed_at = self.changed_at.max(at);
    }

    /// `self` followed by `newer` (to put back the changes of a write that failed).
    pub fn then(self, newer: Delta) -> Delta {
        if newer.reset_at.is_some() {
            return newer;
        }
        let mut out = self;
        out.errors = out.errors.saturating_add(newer.errors);
        add_counts(&mut out.counts, &newer.counts);
        out.changed_at = out.changed_at.max(newer.changed_at);
        out
    }
}

fn add_counts(into: &mut BTreeMap<Reason, u32>, from: &BTreeMap<Reason, u32>) {
    for (r, n) in from {
        let c = into.entry(*r).or_insert(0);
        *c = c.saturating_add(*n);
    }
}

/// Merge the file's record for a scope with ours (`local`: our breaker now, `delta`: what
/// we did since our last write). See the module docs for the rule.
pub fn merge_scope(
    file: Option<&Record>,
    local: Option<&BreakerSnapshot>,
    delta: &Delta,
) -> Record {
    // Counters always come from the base plus our delta, never from `local`: it may
    // already hold failures recorded after this write took its deltas (they are written
    // next time). `local` contributes only what merges idempotently (windows, rungs, times).
    let base = match file {
        Some(f) if f.reset_at.is_some_and(|r| r > delta.changed_at) => return f.clone(),
        Some(f) if delta.reset_at.is_none_or(|r| r < f.changed_at) => f.breaker.clone(),
        // Our reset is newer than anything in the file: start from nothing.
        _ => None,
    }
    .unwrap_or_default();
    let loc = local.cloned().unwrap_or_default();
    let (until_ms, reason) = if loc.until_ms >= base.until_ms {
        (loc.until_ms, loc.reason.or(base.reason))
    } else {
        (base.until_ms, base.reason)
    };
    let mut failure_counts = base.failure_counts.clone();
    add_counts(&mut failure_counts, &delta.counts);
    let merged = BreakerSnapshot {
        state: base.state,
        reason,
        until_ms,
        consecutive: base.consecutive.max(loc.consecutive),
        error_count: base.error_count.saturating_add(delta.errors),
        failure_counts,
        last_failure_ms: base.last_failure_ms.max(loc.last_failure_ms),
        probe_until_ms: None,
    };
    Record {
        breaker: Some(merged).filter(|b| !super::doc::is_pristine(b)),
        changed_at: file.map_or(0, |f| f.changed_at).max(delta.changed_at),
        reset_at: file.and_then(|f| f.reset_at).max(delta.reset_at),
        extra: file.map(|f| f.extra.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(until: Option<u64>, errors: u32, consecutive: u32) -> BreakerSnapshot {
        BreakerSnapshot {
            reason: until.map(|_| Reason::RateLimit),
            until_ms: until,
            consecutive,
            error_count: errors,
            failure_counts: [(Reason::RateLimit, errors)].into_iter().collect(),
            last_failure_ms: Some(1),
            ..BreakerSnapshot::default()
        }
    }

    fn failures(n: u32, at: u64) -> Delta {
        let mut d = Delta::default();
        for _ in 0..n {
            d.failure(Reason::RateLimit, at);
        }
        d
    }

    #[test]
    fn counters_add_up_and_windows_never_shrink() {
        // The file has 3 failures (another process's 2 on top of the 1 we both saw).
        let file = Record::new(Some(snap(Some(9_000), 3, 1)), 100);
        // We saw 1, recorded 2 more, with a shorter window.
        let local = snap(Some(5_000), 3, 2);
        let m = merge_scope(Some(&file), Some(&local), &failures(2, 120));
        let b = m.breaker.unwrap();
        assert_eq!(b.error_count, 5);
        assert_eq!(b.failure_counts[&Reason::RateLimit], 5);
        assert_eq!(b.until_ms, Some(9_000));
        assert_eq!(b.consecutive, 2);
        assert_eq!(m.changed_at, 120);
    }

    #[test]
    fn our_later_reset_wins_and_an_older_one_loses() {
        let file = Record::new(Some(snap(Some(9_000), 3, 1)), 100);
        let m = merge_scope(Some(&file), None, &Delta::reset(150));
        assert_eq!((m.breaker, m.reset_at), (None, Some(150)));
        // The other process failed after our reset: its failures stay.
        let m = merge_scope(Some(&file), None, &Delta::reset(50));
        assert_eq!(m.breaker.unwrap().until_ms, Some(9_000));
    }

    #[test]
    fn their_later_reset_wins_over_our_older_failures() {
        let file = Record::tombstone(200);
        let local = snap(Some(5_000), 1, 1);
        assert_eq!(
            merge_scope(Some(&file), Some(&local), &failures(1, 150)),
            file
        );
        // A failure after their reset is kept.
        let m = merge_scope(Some(&file), Some(&local), &failures(1, 250));
        assert_eq!(m.breaker.unwrap().error_count, 1);
    }

    #[test]
    fn a_delta_then_a_reset_is_the_reset() {
        let d = failures(2, 10).then(failures(1, 20));
        assert_eq!((d.errors, d.changed_at), (3, 20));
        assert_eq!(failures(2, 10).then(Delta::reset(30)), Delta::reset(30));
    }
}
