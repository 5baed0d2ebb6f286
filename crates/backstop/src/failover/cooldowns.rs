//! The engine's entry point to cooldowns: given what happened to a
//! (provider, profile, model) attempt, pick the scope, the ladder (the
//! provider's own first) and a jitter, and apply it to the [`StateStore`];
//! before an attempt, check every scope that covers the target.
//!
//! A target is covered by three scopes: its profile × model, its whole profile,
//! and its provider × model. It is usable only when all three admit it.

use super::breaker::Admission;
use super::cooldown::{Penalty, Scope, is_transient, ladder_for, scope_for};
use super::failure::Reason;
use crate::clock::{Clock, duration_ms};
use crate::config::CooldownConfig;
use crate::state::{BreakerSnapshot, StateStore};
use crate::sync::lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a half-open probe is reserved for its caller by default before another
/// may probe. The engine should set it to the request deadline (`timeouts.request_ms`).
pub const DEFAULT_PROBE_LEASE: Duration = Duration::from_secs(120);

/// Cooldown decisions over a shared [`StateStore`]. Cheap to share behind an `Arc`.
///
/// ```
/// use backstop::clock::ManualClock;
/// use backstop::config::CooldownConfig;
/// use backstop::failover::{Reason, breaker::Admission, cooldowns::Cooldowns};
/// use backstop::state::MemoryStore;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let clock = Arc::new(ManualClock::new(0));
/// let cd = Cooldowns::new(
///     Arc::new(MemoryStore::new()),
///     clock.clone(),
///     CooldownConfig::default(),
///     Duration::from_secs(10),
/// );
/// let (scope, until) = cd
///     .on_failure("openai", "work", "gpt-4o", Reason::RateLimit, Some(Duration::from_secs(5)))
///     .unwrap();
/// assert_eq!(scope.to_string(), "openai:work/gpt-4o");
/// assert!((5_000..=5_500).contains(&until));
/// assert!(!cd.admit("openai", "work", "gpt-4o").is_allowed());
/// assert_eq!(cd.admit("openai", "home", "gpt-4o"), Admission::Allowed);
/// clock.set(until);
/// assert_eq!(cd.admit("openai", "work", "gpt-4o"), Admission::Probe);
/// cd.on_success("openai", "work", "gpt-4o");
/// assert_eq!(cd.admit("openai", "work", "gpt-4o"), Admission::Allowed);
/// ```
#[derive(Debug)]
pub struct Cooldowns {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    config: CooldownConfig,
    max_retry_after: Duration,
    probe_lease_ms: u64,
    rng: Mutex<fastrand::Rng>,
}

impl Cooldowns {
    /// `max_retry_after` caps a cooldown taken from a provider's `Retry-After`
    /// (on top of the ladder's own cap).
    pub fn new(
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        config: CooldownConfig,
        max_retry_after: Duration,
    ) -> Self {
        Cooldowns {
            store,
            clock,
            config,
            max_retry_after,
            probe_lease_ms: duration_ms(DEFAULT_PROBE_LEASE),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// How long a probe is reserved before another caller may probe (default 120 s).
    pub fn with_probe_lease(mut self, lease: Duration) -> Self {
        self.probe_lease_ms = duration_ms(lease).max(1);
        self
    }

    /// Seed the jitter, for reproducible tests and simulations.
    pub fn with_seed(self, seed: u64) -> Self {
        Cooldowns {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            ..self
        }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The three scopes covering a target, broadest first.
    pub fn scopes(provider: &str, profile: &str, model: &str) -> [Scope; 3] {
        [
            Scope::profile(provider, profile),
            Scope::provider_model(provider, model),
            Scope::profile_model(provider, profile, model),
        ]
    }

    /// An attempt failed: cool down the scope its reason names (PRODUCT §3.2). Returns the
    /// scope and the end of its cooldown (epoch ms), or `None` when the reason cools nothing
    /// (`context_overflow`, `bad_request`, `aborted`, …).
    ///
    /// `retry_after` is honoured only for transient reasons; a long `billing` cooldown is
    /// never shortened by a header. Any probe this target held on the other two scopes is
    /// released: the attempt proved nothing about them.
    pub fn on_failure(
        &self,
        provider: &str,
        profile: &str,
        model: &str,
        reason: Reason,
        retry_after: Option<Duration>,
    ) -> Option<(Scope, u64)> {
        let scope = scope_for(reason, provider, profile, model)?;
        let ladders = self
            .config
            .per_provider
            .get(provider)
            .unwrap_or(&self.config.ladders);
        let ladder = ladder_for(reason, ladders)?;
        let penalty = Penalty {
            reason,
            ladder,
            retry_after: retry_after.filter(|_| is_transient(reason)),
            max_retry_after: self.max_retry_after,
            jitter: lock(&self.rng).f64(),
            failure_window_ms: self.config.failure_window_ms,
            probe_interval_ms: self.config.probe_interval_ms,
        };
        let now = self.now_ms();
        let snap = self.store.record_failure(&scope, &penalty, now);
        for other in Self::scopes(provider, profile, model) {
            if other != scope {
                self.store.release_probe(&other);
            }
        }
        tracing::debug!(
            scope = %scope,
            reason = %reason,
            consecutive = snap.consecutive,
            until_ms = snap.until_ms,
            "cooldown recorded"
        );
        Some((scope, snap.until_ms.unwrap_or(now)))
    }

    /// An attempt succeeded: close every scope covering the target and note the profile's use.
    pub fn on_success(&self, provider: &str, profile: &str, model: &str) {
        let now = self.now_ms();
        if self.store.has_breakers() {
            for scope in Self::scopes(provider, profile, model) {
                self.store.record_success(&scope, now);
            }
        }
        self.store.mark_used(provider, profile, now);
    }

    /// An attempt ended without a verdict (the client went away): free any probe it held.
    pub fn on_abandon(&self, provider: &str, profile: &str, model: &str) {
        if !self.store.has_breakers() {
            return;
        }
        for scope in Self::scopes(provider, profile, model) {
            self.store.release_probe(&scope);
        }
    }

    /// May this target be tried now? `Denied` if any covering scope is open (or its probe is
    /// out), with the latest `until_ms` among them; `Probe` if one is half-open and this caller
    /// won its probe (report the outcome with `on_success` / `on_failure` / `on_abandon`);
    /// else `Allowed`. A denied caller keeps no probe.
    pub fn admit(&self, provider: &str, profile: &str, model: &str) -> Admission {
        if !self.store.has_breakers() {
            return Admission::Allowed;
        }
        let now = self.now_ms();
        let scopes = Self::scopes(provider, profile, model);
        let mut probed = [false; 3];
        for (i, scope) in scopes.iter().enumerate() {
            match self.store.admit(scope, now, self.probe_lease_ms) {
                Admission::Allowed => {}
                Admission::Probe => probed[i] = true,
                Admission::Denied { until_ms, reason } => {
                    // Give back the probes this call took on the scopes before this one.
                    for (taken, _) in scopes.iter().zip(probed).filter(|(_, p)| *p) {
                        self.store.release_probe(taken);
                    }
                    let (until_ms, reason) = scopes[i + 1..]
                        .iter()
                        .filter_map(|s| Some((self.store.usable_at(s, now)?, s)))
                        .filter(|(t, _)| *t > until_ms)
                        .max_by_key(|(t, _)| *t)
                        .map_or((until_ms, reason), |(t, s)| {
                            let r = self.store.get(s, now).and_then(|b| b.reason);
                            (t, r.unwrap_or(reason))
                        });
                    return Admission::Denied { until_ms, reason };
                }
            }
        }
        if probed.contains(&true) {
            Admission::Probe
        } else {
            Admission::Allowed
        }
    }

    /// Whether any of `provider`'s scopes may be cooling: when not, [`usable_at`] is
    /// `None` for each of its targets, and planning skips asking it key by key.
    ///
    /// [`usable_at`]: Self::usable_at
    pub fn may_cool(&self, provider: &str) -> bool {
        self.store.has_breakers_for(provider)
    }

    /// When this target can next be tried: `None` = now; else the latest end among its
    /// scopes' windows (for ordering cooling targets and for `Retry-After`).
    pub fn usable_at(&self, provider: &str, profile: &str, model: &str) -> Option<u64> {
        if !self.store.has_breakers() {
            return None;
        }
        self.usable_at_time(provider, profile, model, self.now_ms())
    }

    /// [`usable_at`](Self::usable_at) as of `now` (epoch ms): a plan reads every target
    /// as of the moment it was made.
    pub fn usable_at_time(
        &self,
        provider: &str,
        profile: &str,
        model: &str,
        now: u64,
    ) -> Option<u64> {
        if !self.store.has_breakers() {
            return None;
        }
        Self::scopes(provider, profile, model)
            .iter()
            .filter_map(|s| self.store.usable_at(s, now))
            .max()
    }

    /// Every breaker with history, for status and `backstop cooldowns list`.
    pub fn snapshot(&self) -> Vec<(Scope, BreakerSnapshot)> {
        self.store.snapshot(self.now_ms())
    }

    /// Clear one scope by hand (`DELETE /v1/cooldowns/{scope}`), with the scopes it
    /// covers (see [`crate::state::clear_covered`]). True if anything had a breaker.
    pub fn clear(&self, scope: &Scope) -> bool {
        crate::state::clear_covered(self.store.as_ref(), scope, self.now_ms())
    }

    pub fn clear_all(&self) {
        self.store.clear_all();
    }

    /// When this profile last served a request (for least-recently-used order).
    pub fn last_used(&self, provider: &str, profile: &str) -> Option<u64> {
        self.store.last_used(provider, profile)
    }

    /// Which of `profiles` (its index) was least recently used: never used first, then the
    /// oldest use, ties to the earlier; one store call for them all.
    pub fn least_recently_used<'p>(
        &self,
        provider: &str,
        profiles: impl Iterator<Item = &'p str>,
    ) -> Option<usize> {
        let mut profiles = profiles;
        self.store.least_recently_used(provider, &mut profiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{Ladder, Ladders};
    use crate::state::{BreakerState, MemoryStore};

    const S: u64 = 1_000;
    const MIN: u64 = 60 * S;
    const HOUR: u64 = 60 * MIN;

    fn setup() -> (Arc<ManualClock>, Cooldowns) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cd = Cooldowns::new(
            Arc::new(MemoryStore::new()),
            clock.clone(),
            CooldownConfig::default(),
            Duration::from_secs(10),
        )
        .with_seed(3)
        .with_probe_lease(Duration::from_secs(60));
        (clock, cd)
    }

    /// Milliseconds from now until the target is usable.
    fn wait(clock: &ManualClock, cd: &Cooldowns, target: (&str, &str, &str)) -> u64 {
        cd.usable_at(target.0, target.1, target.2)
            .map_or(0, |t| t - clock.now_ms())
    }

    #[test]
    fn each_reason_cools_its_scope_on_its_ladder() {
        let (clock, cd) = setup();
        let cases = [
            (Reason::RateLimit, "openai:a/m", 30 * S),
            (Reason::Auth, "openai:a", 5 * MIN),
            (Reason::Billing, "openai:a", 5 * HOUR),
            (Reason::AuthPermanent, "openai:a", 24 * HOUR),
            (Reason::ModelNotFound, "openai/m", HOUR),
        ];
        for (reason, scope, base) in cases {
            cd.clear_all();
            let (s, until) = cd.on_failure("openai", "a", "m", reason, None).unwrap();
            assert_eq!(s.to_string(), scope);
            let len = until - clock.now_ms();
            assert!((base..=base + base / 10).contains(&len), "{reason}: {len}");
            assert_eq!(wait(&clock, &cd, ("openai", "a", "m")), len);
        }
        for reason in [Reason::BadRequest, Reason::ContextOverflow, Reason::Aborted] {
            assert_eq!(cd.on_failure("openai", "a", "m", reason, None), None);
        }
    }

    #[test]
    fn retry_after_applies_to_transient_reasons_only() {
        let (clock, cd) = setup();
        let ra = Some(Duration::from_secs(4));
        let (_, until) = cd.on_failure("o", "a", "m", Reason::RateLimit, ra).unwrap();
        assert!((4 * S..=4_400).contains(&(until - clock.now_ms())));
        let (_, until) = cd
            .on_failure(
                "o",
                "b",
                "m",
                Reason::Overloaded,
                Some(Duration::from_secs(600)),
            )
            .unwrap();
        assert_eq!(until - clock.now_ms(), 10 * S, "capped at max_retry_after");
        let (_, until) = cd.on_failure("o", "a", "m", Reason::Billing, ra).unwrap();
        assert!(
            until - clock.now_ms() >= 5 * HOUR,
            "a header never shortens billing"
        );
    }

    #[test]
    fn per_provider_ladders_come_first() {
        let clock = Arc::new(ManualClock::new(0));
        let mut config = CooldownConfig::default();
        let fast = Ladders {
            transient: Ladder {
                base_ms: 1_000,
                cap_ms: 1_000,
            },
            ..Ladders::default()
        };
        config.per_provider.insert("local".into(), fast);
        let cd = Cooldowns::new(
            Arc::new(MemoryStore::new()),
            clock,
            config,
            Duration::from_secs(10),
        );
        let (_, until) = cd
            .on_failure("local", "a", "m", Reason::Timeout, None)
            .unwrap();
        assert_eq!(until, 1_000);
        let (_, until) = cd
            .on_failure("openai", "a", "m", Reason::Timeout, None)
            .unwrap();
        assert!(until >= 30_000);
    }

    #[test]
    fn a_profile_cooldown_covers_every_model_and_a_model_cooldown_every_profile() {
        let (clock, cd) = setup();
        cd.on_failure("openai", "work", "gpt-4o", Reason::Auth, None);
        cd.on_failure("openai", "home", "gpt-x", Reason::ModelNotFound, None);
        assert!(!cd.admit("openai", "work", "gpt-4o-mini").is_allowed());
        assert!(!cd.admit("openai", "home", "gpt-x").is_allowed());
        assert!(!cd.admit("openai", "spare", "gpt-x").is_allowed());
        assert_eq!(cd.admit("openai", "home", "gpt-4o"), Admission::Allowed);
        // Both apply to work × gpt-x: denied until the later one (model_not_found, 1 h).
        match cd.admit("openai", "work", "gpt-x") {
            Admission::Denied { until_ms, reason } => {
                assert_eq!(reason, Reason::ModelNotFound);
                assert!(until_ms - clock.now_ms() >= HOUR);
                assert_eq!(cd.usable_at("openai", "work", "gpt-x"), Some(until_ms));
            }
            other => panic!("expected denied, got {other:?}"),
        }
    }

    #[test]
    fn probe_success_closes_and_failure_climbs_one_rung() {
        let (clock, cd) = setup();
        let t = ("o", "a", "m");
        let mut lens = Vec::new();
        for _ in 0..4 {
            let (_, until) = cd
                .on_failure(t.0, t.1, t.2, Reason::ServerError, None)
                .unwrap();
            lens.push((until - clock.now_ms()) / S);
            clock.set(until);
            assert_eq!(cd.admit(t.0, t.1, t.2), Admission::Probe);
            assert!(!cd.admit(t.0, t.1, t.2).is_allowed(), "one probe at a time");
        }
        // 30, 60, 120, 240 s plus at most 10 % jitter.
        for (len, base) in lens.iter().zip([30, 60, 120, 240]) {
            assert!((base..=base + base / 10).contains(len), "{lens:?}");
        }
        cd.on_success(t.0, t.1, t.2);
        assert_eq!(cd.admit(t.0, t.1, t.2), Admission::Allowed);
        assert!(cd.snapshot().is_empty());
        assert_eq!(cd.last_used("o", "a"), Some(clock.now_ms()));
        // Counters were reset: the next failure is on the first rung again.
        let (_, until) = cd
            .on_failure(t.0, t.1, t.2, Reason::ServerError, None)
            .unwrap();
        assert!(until - clock.now_ms() <= 33 * S);
    }

    #[test]
    fn a_denied_caller_keeps_no_probe() {
        let (clock, cd) = setup();
        // The profile is about to be half-open; its profile×model will still be open then.
        let (_, profile_until) = cd.on_failure("o", "a", "m", Reason::Auth, None).unwrap();
        clock.set(profile_until - 1);
        let (_, model_until) = cd.on_failure("o", "a", "m", Reason::Timeout, None).unwrap();
        clock.set(profile_until);
        // The profile's probe is taken first, then the profile×model denies: it is given back.
        match cd.admit("o", "a", "m") {
            Admission::Denied { until_ms, reason } => {
                assert_eq!((until_ms, reason), (model_until, Reason::Timeout));
            }
            other => panic!("expected denied, got {other:?}"),
        }
        assert_eq!(cd.admit("o", "a", "m2"), Admission::Probe);
    }

    #[test]
    fn abandoned_probe_is_freed_at_once_or_when_its_lease_ends() {
        let (clock, cd) = setup();
        let (_, until) = cd
            .on_failure("o", "a", "m", Reason::RateLimit, None)
            .unwrap();
        clock.set(until);
        assert_eq!(cd.admit("o", "a", "m"), Admission::Probe);
        cd.on_abandon("o", "a", "m");
        assert_eq!(cd.admit("o", "a", "m"), Admission::Probe);
        // This one is never reported: nobody may probe until its lease has run out.
        clock.advance(Duration::from_secs(59));
        assert!(!cd.admit("o", "a", "m").is_allowed());
        assert_eq!(wait(&clock, &cd, ("o", "a", "m")), S);
        clock.advance(Duration::from_secs(1));
        assert_eq!(cd.admit("o", "a", "m"), Admission::Probe);
    }

    #[test]
    fn failure_frees_probes_on_the_other_scopes() {
        let (clock, cd) = setup();
        let (_, until) = cd.on_failure("o", "a", "m", Reason::Auth, None).unwrap();
        clock.set(until);
        // Half-open profile: this caller probes it, and gets rate limited on the model.
        assert_eq!(cd.admit("o", "a", "m"), Admission::Probe);
        cd.on_failure("o", "a", "m", Reason::RateLimit, None);
        // The profile's probe is free again for another model.
        assert_eq!(cd.admit("o", "a", "m2"), Admission::Probe);
    }

    #[test]
    fn snapshot_and_manual_clear() {
        let (_clock, cd) = setup();
        cd.on_failure("o", "a", "m", Reason::RateLimit, None);
        cd.on_failure("o", "a", "m", Reason::RateLimit, None);
        let snap = cd.snapshot();
        assert_eq!(snap.len(), 1);
        let (scope, b) = &snap[0];
        assert_eq!(scope.to_string(), "o:a/m");
        assert_eq!(
            (b.state, b.consecutive, b.error_count),
            (BreakerState::Open, 1, 2)
        );
        assert!(cd.clear(&"o:a/m".parse().unwrap()));
        assert_eq!(cd.admit("o", "a", "m"), Admission::Allowed);
    }
}
