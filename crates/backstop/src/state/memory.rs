//! The in-process [`StateStore`]: one short `Mutex` per map, no I/O.
//!
//! Healthy traffic takes a lock-free fast path: while no breaker exists at all
//! (the normal case), `admit`, `usable_at` and `record_success` answer from an
//! atomic counter without locking.

use super::{Admission, BreakerSnapshot, Penalty, Scope, StateStore};
use crate::failover::breaker::Breaker;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Breakers and usage times in memory.
///
/// ```
/// use backstop::state::{Admission, MemoryStore, Scope, StateStore};
/// let store = MemoryStore::new();
/// assert_eq!(store.admit(&Scope::profile("openai", "work"), 0, 60_000), Admission::Allowed);
/// store.mark_used("openai", "work", 42);
/// assert_eq!(store.last_used("openai", "work"), Some(42));
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    breakers: Mutex<HashMap<Scope, Breaker>>,
    /// `breakers.len()`, readable without the lock.
    len: AtomicUsize,
    /// provider → profile → last use (nested so lookups by `&str` need no allocation).
    used: Mutex<HashMap<String, HashMap<String, u64, NameHash>, NameHash>>,
}

/// FNV-1a over provider and profile names: a planner looking for the least recently
/// used of 100 keys hashes 100 names, which SipHash made most of its cost. The names come
/// from the configuration and the deployment's own state, not from clients.
type NameHash = std::hash::BuildHasherDefault<Fnv>;

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Load a breaker from persisted state (file or Redis), replacing any in memory.
    pub fn restore(&self, scope: Scope, snapshot: &BreakerSnapshot) {
        let breaker = Breaker::from_snapshot(snapshot);
        self.with_breakers(|map| {
            if breaker.is_pristine() {
                map.remove(&scope);
            } else {
                map.insert(scope, breaker);
            }
        });
    }

    /// Load a usage time from persisted state (kept only if later than what is known).
    pub fn restore_last_used(&self, provider: &str, profile: &str, at_ms: u64) {
        self.mark_used(provider, profile, at_ms);
    }

    /// Every known usage time, as `(provider, profile, last_used_ms)`, sorted.
    pub fn usage(&self) -> Vec<(String, String, u64)> {
        let used = lock(&self.used);
        let mut out: Vec<_> = used
            .iter()
            .flat_map(|(prov, profiles)| {
                profiles
                    .iter()
                    .map(move |(prof, &t)| (prov.clone(), prof.clone(), t))
            })
            .collect();
        out.sort();
        out
    }

    fn empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn with_breakers<T>(&self, f: impl FnOnce(&mut HashMap<Scope, Breaker>) -> T) -> T {
        let mut map = lock(&self.breakers);
        let out = f(&mut map);
        self.len.store(map.len(), Ordering::Release);
        out
    }
}

impl StateStore for MemoryStore {
    fn admit(&self, scope: &Scope, now_ms: u64, probe_lease_ms: u64) -> Admission {
        if self.empty() {
            return Admission::Allowed;
        }
        let mut map = lock(&self.breakers);
        match map.get_mut(scope) {
            Some(b) => b.try_acquire(now_ms, probe_lease_ms),
            None => Admission::Allowed,
        }
    }

    fn release_probe(&self, scope: &Scope) -> bool {
        if self.empty() {
            return false;
        }
        lock(&self.breakers)
            .get_mut(scope)
            .is_some_and(Breaker::release_probe)
    }

    fn record_failure(&self, scope: &Scope, penalty: &Penalty, now_ms: u64) -> BreakerSnapshot {
        self.with_breakers(|map| {
            let b = match map.get_mut(scope) {
                Some(b) => b,
                None => map.entry(scope.clone()).or_default(),
            };
            b.on_failure(penalty, now_ms);
            b.snapshot(now_ms)
        })
    }

    fn record_success(&self, scope: &Scope, _now_ms: u64) -> bool {
        if self.empty() {
            return false;
        }
        self.with_breakers(|map| map.remove(scope).is_some())
    }

    fn has_breakers(&self) -> bool {
        !self.empty()
    }

    /// A scan of the breakers (few: one per scope that failed recently) under one lock.
    fn has_breakers_for(&self, provider: &str) -> bool {
        !self.empty()
            && lock(&self.breakers)
                .keys()
                .any(|scope| scope.provider() == provider)
    }

    fn usable_at(&self, scope: &Scope, now_ms: u64) -> Option<u64> {
        if self.empty() {
            return None;
        }
        lock(&self.breakers).get(scope)?.usable_at(now_ms)
    }

    fn get(&self, scope: &Scope, now_ms: u64) -> Option<BreakerSnapshot> {
        if self.empty() {
            return None;
        }
        lock(&self.breakers).get(scope).map(|b| b.snapshot(now_ms))
    }

    fn mark_used(&self, provider: &str, profile: &str, now_ms: u64) {
        let mut used = lock(&self.used);
        let profiles = match used.get_mut(provider) {
            Some(p) => p,
            None => used.entry(provider.to_owned()).or_default(),
        };
        match profiles.get_mut(profile) {
            Some(t) => *t = (*t).max(now_ms),
            None => {
                profiles.insert(profile.to_owned(), now_ms);
            }
        }
    }

    fn last_used(&self, provider: &str, profile: &str) -> Option<u64> {
        lock(&self.used).get(provider)?.get(profile).copied()
    }

    /// One lock and one lookup of the provider for all of `profiles`.
    fn least_recently_used(
        &self,
        provider: &str,
        profiles: &mut dyn Iterator<Item = &str>,
    ) -> Option<usize> {
        let used = lock(&self.used);
        match used.get(provider) {
            Some(times) => super::least_recently_used(profiles, |p| times.get(p).copied()),
            None => profiles.next().map(|_| 0),
        }
    }

    fn snapshot(&self, now_ms: u64) -> Vec<(Scope, BreakerSnapshot)> {
        let mut out: Vec<_> = lock(&self.breakers)
            .iter()
            .map(|(s, b)| (s.clone(), b.snapshot(now_ms)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn clear(&self, scope: &Scope) -> bool {
        self.with_breakers(|map| map.remove(scope).is_some())
    }

    fn clear_all(&self) {
        self.with_breakers(HashMap::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ladder;
    use crate::failover::Reason;
    use crate::state::BreakerState;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn penalty(reason: Reason) -> Penalty {
        Penalty {
            reason,
            ladder: Ladder {
                base_ms: 1_000,
                cap_ms: 8_000,
            },
            retry_after: None,
            max_retry_after: Duration::from_secs(60),
            jitter: 0.0,
            failure_window_ms: 86_400_000,
            probe_interval_ms: 0,
        }
    }

    #[test]
    fn failure_opens_success_closes() {
        let store = MemoryStore::new();
        let scope = Scope::profile_model("openai", "work", "gpt-4o");
        let other = Scope::profile_model("openai", "home", "gpt-4o");
        let snap = store.record_failure(&scope, &penalty(Reason::RateLimit), 10);
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.until_ms, Some(1_010));
        assert_eq!(store.usable_at(&scope, 500), Some(1_010));
        assert_eq!(store.usable_at(&other, 500), None);
        assert_eq!(store.admit(&other, 500, 1_000), Admission::Allowed);
        assert!(!store.admit(&scope, 500, 1_000).is_allowed());
        assert_eq!(store.get(&scope, 500).map(|s| s.error_count), Some(1));
        assert!(store.record_success(&scope, 600));
        assert!(!store.record_success(&scope, 600));
        assert_eq!(store.admit(&scope, 600, 1_000), Admission::Allowed);
        assert!(store.snapshot(600).is_empty());
    }

    #[test]
    fn exactly_one_concurrent_caller_gets_the_probe() {
        let store = Arc::new(MemoryStore::new());
        let scope = Scope::profile_model("anthropic", "team", "claude-opus-4-5");
        store.record_failure(&scope, &penalty(Reason::Overloaded), 0);
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (store, scope, barrier) = (store.clone(), scope.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..50)
                        .map(|_| store.admit(&scope, 1_000, 30_000))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Admission> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            results.iter().filter(|a| **a == Admission::Probe).count(),
            1
        );
        assert_eq!(results.iter().filter(|a| a.is_allowed()).count(), 1);
        assert_eq!(store.usable_at(&scope, 1_000), Some(31_000));
    }

    #[test]
    fn released_probe_can_be_taken_again() {
        let store = MemoryStore::new();
        let scope = Scope::profile("openai", "work");
        assert!(!store.release_probe(&scope));
        store.record_failure(&scope, &penalty(Reason::Auth), 0);
        assert_eq!(store.admit(&scope, 1_000, 30_000), Admission::Probe);
        assert!(!store.admit(&scope, 1_000, 30_000).is_allowed());
        assert!(store.release_probe(&scope));
        assert_eq!(store.admit(&scope, 1_000, 30_000), Admission::Probe);
    }

    #[test]
    fn snapshot_lists_breakers_in_scope_order_and_clear_closes_them() {
        let store = MemoryStore::new();
        let a = Scope::profile("openai", "work");
        let b = Scope::provider_model("anthropic", "claude-x");
        store.record_failure(&a, &penalty(Reason::Billing), 0);
        store.record_failure(&b, &penalty(Reason::ModelNotFound), 0);
        let snap = store.snapshot(0);
        assert_eq!(snap.len(), 2);
        assert!(snap.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(store.clear(&a));
        assert!(!store.clear(&a));
        assert_eq!(store.snapshot(0).len(), 1);
        store.clear_all();
        assert!(store.snapshot(0).is_empty());
        assert_eq!(store.admit(&b, 0, 1), Admission::Allowed);
    }

    #[test]
    fn restore_brings_back_a_persisted_breaker() {
        let store = MemoryStore::new();
        let scope = Scope::profile_model("openai", "work", "gpt-4o");
        let snap = store.record_failure(&scope, &penalty(Reason::RateLimit), 0);
        let other = MemoryStore::new();
        other.restore(scope.clone(), &snap);
        assert_eq!(other.get(&scope, 0), Some(snap));
        assert_eq!(other.usable_at(&scope, 0), Some(1_000));
        other.restore(scope.clone(), &BreakerSnapshot::default());
        assert!(other.snapshot(0).is_empty());
    }

    #[test]
    fn breakers_are_told_per_provider() {
        let store = MemoryStore::new();
        assert!(!store.has_breakers_for("openai"));
        let scope = Scope::provider_model("openai", "gpt-4o");
        store.record_failure(&scope, &penalty(Reason::RateLimit), 0);
        assert!(store.has_breakers_for("openai"));
        assert!(!store.has_breakers_for("anthropic"));
        assert!(!store.has_breakers_for("openai2"));
        store.record_success(&scope, 0);
        assert!(!store.has_breakers_for("openai"));
    }

    proptest::proptest! {
        /// The one-lock scan picks what sorting the profiles by last use (stable, never
        /// used first) puts first.
        #[test]
        fn the_least_recently_used_is_the_first_by_last_use(
            uses in proptest::collection::vec((0..2usize, 0..8usize, 0..4u64), 0..16),
            n in 0..8usize,
        ) {
            let store = MemoryStore::new();
            for (p, a, t) in uses {
                store.mark_used(&format!("p{p}"), &format!("k{a}"), t);
            }
            let names: Vec<String> = (0..n).map(|k| format!("k{k}")).collect();
            let mut sorted: Vec<usize> = (0..n).collect();
            sorted.sort_by_key(|&i| store.last_used("p0", &names[i]));
            let got = store.least_recently_used("p0", &mut names.iter().map(String::as_str));
            proptest::prop_assert_eq!(got, sorted.first().copied());
        }
    }

    #[test]
    fn last_used_only_moves_forward() {
        let store = MemoryStore::new();
        assert_eq!(store.last_used("openai", "work"), None);
        store.mark_used("openai", "work", 100);
        store.mark_used("openai", "work", 50);
        store.restore_last_used("openai", "home", 70);
        assert_eq!(store.last_used("openai", "work"), Some(100));
        assert_eq!(store.last_used("openai", "home"), Some(70));
        assert_eq!(store.last_used("anthropic", "work"), None);
        assert_eq!(
            store.usage(),
            vec![
                ("openai".into(), "home".into(), 70),
                ("openai".into(), "work".into(), 100)
            ]
        );
    }
}
