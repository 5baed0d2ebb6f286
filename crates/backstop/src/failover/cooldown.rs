//! Cooldown rules (PRODUCT §3.2, §3.3): which scope a failure cools down
//! ([`scope_for`]), on which ladder ([`ladder_for`]), and for how long
//! ([`cooldown_for`]). All pure; the state machine that applies them is
//! [`super::breaker::Breaker`], and the engine's entry point is
//! [`super::cooldowns::Cooldowns`].

use super::failure::Reason;
use crate::clock::duration_ms;
use crate::config::{Ladder, Ladders};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a cooldown covers.
///
/// Written `openai:work/gpt-4o` (profile × model), `openai:work` (profile) and
/// `openai/gpt-4o` (provider × model): the form `DELETE /v1/cooldowns/{scope}`
/// and `backstop cooldowns clear` take. Provider ids and profile names never
/// contain `/` or `:`; a model may contain both (`openrouter/anthropic/claude-3.5-sonnet`,
/// `ollama/llama3:8b`).
///
/// ```
/// use backstop::failover::cooldown::Scope;
/// let s: Scope = "openrouter:team/anthropic/claude-3.5-sonnet".parse().unwrap();
/// assert_eq!(s.model(), Some("anthropic/claude-3.5-sonnet"));
/// assert_eq!(s.to_string(), "openrouter:team/anthropic/claude-3.5-sonnet");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    ProfileModel {
        provider: String,
        profile: String,
        model: String,
    },
    Profile {
        provider: String,
        profile: String,
    },
    ProviderModel {
        provider: String,
        model: String,
    },
}

impl Scope {
    pub fn profile_model(provider: &str, profile: &str, model: &str) -> Self {
        Scope::ProfileModel {
            provider: provider.to_owned(),
            profile: profile.to_owned(),
            model: model.to_owned(),
        }
    }

    pub fn profile(provider: &str, profile: &str) -> Self {
        Scope::Profile {
            provider: provider.to_owned(),
            profile: profile.to_owned(),
        }
    }

    pub fn provider_model(provider: &str, model: &str) -> Self {
        Scope::ProviderModel {
            provider: provider.to_owned(),
            model: model.to_owned(),
        }
    }

    pub fn provider(&self) -> &str {
        match self {
            Scope::ProfileModel { provider, .. }
            | Scope::Profile { provider, .. }
            | Scope::ProviderModel { provider, .. } => provider,
        }
    }

    /// The auth profile, for profile-scoped cooldowns.
    pub fn profile_name(&self) -> Option<&str> {
        match self {
            Scope::ProfileModel { profile, .. } | Scope::Profile { profile, .. } => Some(profile),
            Scope::ProviderModel { .. } => None,
        }
    }

    /// The model, for model-scoped cooldowns (`cooldownModel` in `auth-state.json`).
    pub fn model(&self) -> Option<&str> {
        match self {
            Scope::ProfileModel { model, .. } | Scope::ProviderModel { model, .. } => Some(model),
            Scope::Profile { .. } => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::ProfileModel {
                provider,
                profile,
                model,
            } => write!(f, "{provider}:{profile}/{model}"),
            Scope::Profile { provider, profile } => write!(f, "{provider}:{profile}"),
            Scope::ProviderModel { provider, model } => write!(f, "{provider}/{model}"),
        }
    }
}

/// Why a scope string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cooldown scope {input:?}: {why}; expected provider:profile/model, provider:profile or provider/model"
)]
pub struct ScopeParseError {
    pub input: String,
    pub why: &'static str,
}

impl FromStr for Scope {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ScopeParseError {
            input: s.to_owned(),
            why,
        };
        let colon = s.find(':');
        let slash = s.find('/');
        // A profile is present when a ':' comes before any '/': the provider holds neither,
        // so the first separator decides (a model may hold ':' after its '/').
        let scope = match (colon, slash) {
            (Some(c), _) if slash.is_none_or(|sl| c < sl) => {
                let provider = &s[..c];
                let rest = &s[c + 1..];
                match rest.split_once('/') {
                    Some((profile, model)) => {
                        check_name(profile).map_err(|why| err(why.profile()))?;
                        Scope::profile_model(provider, profile, nonempty(model).map_err(err)?)
                    }
                    None => {
                        check_name(rest).map_err(|why| err(why.profile()))?;
                        Scope::profile(provider, rest)
                    }
                }
            }
            (_, Some(sl)) => Scope::provider_model(&s[..sl], nonempty(&s[sl + 1..]).map_err(err)?),
            (None, None) => return Err(err("no ':' or '/' separator")),
            // Unreachable by the guard above, kept for exhaustiveness.
            (Some(_), None) => return Err(err("no ':' or '/' separator")),
        };
        if scope.provider().is_empty() {
            return Err(err("the provider is empty"));
        }
        Ok(scope)
    }
}

enum NameError {
    Empty,
    Colon,
}

impl NameError {
    fn profile(self) -> &'static str {
        match self {
            NameError::Empty => "the profile is empty",
            NameError::Colon => "a profile cannot contain ':'",
        }
    }
}

fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.contains(':') {
        Err(NameError::Colon)
    } else {
        Ok(())
    }
}

fn nonempty(model: &str) -> Result<&str, &'static str> {
    if model.is_empty() {
        Err("the model is empty")
    } else {
        Ok(model)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The scope a failure cools down (PRODUCT §3.2); `None` for reasons that cool nothing.
///
/// ```
/// use backstop::failover::{Reason, cooldown::{scope_for, Scope}};
/// assert_eq!(
///     scope_for(Reason::Billing, "openai", "work", "gpt-4o"),
///     Some(Scope::profile("openai", "work"))
/// );
/// assert_eq!(scope_for(Reason::BadRequest, "openai", "work", "gpt-4o"), None);
/// ```
pub fn scope_for(reason: Reason, provider: &str, profile: &str, model: &str) -> Option<Scope> {
    match reason {
        Reason::RateLimit | Reason::Overloaded | Reason::ServerError | Reason::Timeout => {
            Some(Scope::profile_model(provider, profile, model))
        }
        Reason::Auth | Reason::AuthPermanent | Reason::Billing => {
            Some(Scope::profile(provider, profile))
        }
        Reason::ModelNotFound => Some(Scope::provider_model(provider, model)),
        Reason::ContextOverflow
        | Reason::ContentPolicy
        | Reason::BadRequest
        | Reason::Aborted
        | Reason::Unknown => None,
    }
}

/// Whether a reason is transient (its cooldown honours `Retry-After`).
pub fn is_transient(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::RateLimit | Reason::Overloaded | Reason::ServerError | Reason::Timeout
    )
}

/// The ladder a reason climbs (PRODUCT §3.3); `None` for reasons that cool nothing.
pub fn ladder_for(reason: Reason, ladders: &Ladders) -> Option<Ladder> {
    match reason {
        Reason::RateLimit | Reason::Overloaded | Reason::ServerError | Reason::Timeout => {
            Some(ladders.transient)
        }
        Reason::Auth => Some(ladders.auth),
        Reason::Billing => Some(ladders.billing),
        Reason::AuthPermanent => Some(ladders.auth_permanent),
        Reason::ModelNotFound => Some(ladders.model_not_found),
        Reason::ContextOverflow
        | Reason::ContentPolicy
        | Reason::BadRequest
        | Reason::Aborted
        | Reason::Unknown => None,
    }
}

/// The most jitter adds: +10 % of the cooldown.
pub const MAX_JITTER: f64 = 0.10;

/// How long a scope cools down after its `consecutive`-th failure in a row.
///
/// - With `retry_after`, that (the provider said so), capped at the ladder's cap and at
///   `max_retry_after`. Callers pass `retry_after` only for transient reasons.
/// - Else `base × 2^(consecutive − 1)` (the first failure gets `base`; 0 counts as 1),
///   capped at the ladder's cap.
/// - `jitter` (a draw in `0..1`; clamped, NaN = 0) then adds up to +10 %, so that
///   instances and scopes that failed together do not all probe at the same instant.
///   **The cap is a hard ceiling**: jitter never takes a cooldown above it, so at the top
///   rung there is no jitter. A ladder whose cap is below its base is treated as flat at base.
///
/// For a fixed `jitter` the result is monotone non-decreasing in `consecutive`.
///
/// ```
/// use backstop::config::Ladder;
/// use backstop::failover::cooldown::cooldown_for;
/// use std::time::Duration;
/// let transient = Ladder { base_ms: 30_000, cap_ms: 300_000 };
/// let max = Duration::from_secs(10);
/// assert_eq!(cooldown_for(transient, 1, None, max, 0.0), Duration::from_secs(30));
/// assert_eq!(cooldown_for(transient, 3, None, max, 0.0), Duration::from_secs(120));
/// assert_eq!(cooldown_for(transient, 9, None, max, 1.0), Duration::from_secs(300));
/// let ra = Some(Duration::from_secs(60));
/// assert_eq!(cooldown_for(transient, 1, ra, max, 0.0), Duration::from_secs(10));
/// ```
pub fn cooldown_for(
    ladder: Ladder,
    consecutive_failures: u32,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
    jitter: f64,
) -> Duration {
    let (base, cap) = (ladder.base_ms, ladder.cap_ms.max(ladder.base_ms));
    let (plain, ceiling) = match retry_after {
        Some(ra) => {
            let ceiling = cap.min(duration_ms(max_retry_after));
            (duration_ms(ra).min(ceiling), ceiling)
        }
        None => {
            let doublings = consecutive_failures.max(1) - 1;
            let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
            (base.saturating_mul(factor).min(cap), cap)
        }
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let extra = (plain as f64 * MAX_JITTER * jitter) as u64;
    Duration::from_millis(plain.saturating_add(extra).min(ceiling))
}

/// Everything a store needs to apply one failure to a scope's breaker. Plain data, so a
/// shared store (Redis) can apply it atomically on its side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalty {
    pub reason: Reason,
    pub ladder: Ladder,
    /// The provider's `Retry-After`; `None` for non-transient reasons.
    pub retry_after: Option<Duration>,
    pub max_retry_after: Duration,
    /// A draw in `0..1` for [`cooldown_for`]'s jitter.
    pub jitter: f64,
    /// Failures this much older than the scope was last known bad no longer count.
    pub failure_window_ms: u64,
    /// A failed half-open probe keeps the scope closed to probes at least this long
    /// (`auth.cooldowns.probe_interval_ms`): after a fallback, the primary is probed at
    /// most once per interval.
    pub probe_interval_ms: u64,
}

impl Penalty {
    /// The cooldown for the `consecutive`-th failure in a row.
    pub fn cooldown(&self, consecutive: u32) -> Duration {
        cooldown_for(
            self.ladder,
            consecutive,
            self.retry_after,
            self.max_retry_after,
            self.jitter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scope_for_follows_the_table() {
        use Reason::*;
        let pm = Some(Scope::profile_model("p", "a", "m"));
        let prof = Some(Scope::profile("p", "a"));
        let model = Some(Scope::provider_model("p", "m"));
        let table = [
            (RateLimit, &pm),
            (Overloaded, &pm),
            (ServerError, &pm),
            (Timeout, &pm),
            (Auth, &prof),
            (AuthPermanent, &prof),
            (Billing, &prof),
            (ModelNotFound, &model),
            (ContextOverflow, &None),
            (ContentPolicy, &None),
            (BadRequest, &None),
            (Aborted, &None),
            (Unknown, &None),
        ];
        for (reason, want) in table {
            assert_eq!(&scope_for(reason, "p", "a", "m"), want, "{reason}");
            assert_eq!(
                ladder_for(reason, &Ladders::default()).is_some(),
                want.is_some(),
                "{reason}"
            );
            assert_eq!(is_transient(reason), want == &pm, "{reason}");
        }
    }

    #[test]
    fn ladders_follow_the_reason() {
        let l = Ladders::default();
        assert_eq!(ladder_for(Reason::RateLimit, &l), Some(l.transient));
        assert_eq!(ladder_for(Reason::Auth, &l), Some(l.auth));
        assert_eq!(ladder_for(Reason::Billing, &l), Some(l.billing));
        assert_eq!(
            ladder_for(Reason::AuthPermanent, &l),
            Some(l.auth_permanent)
        );
        assert_eq!(
            ladder_for(Reason::ModelNotFound, &l),
            Some(l.model_not_found)
        );
    }

    #[test]
    fn scopes_print_and_parse() {
        let cases = [
            (
                "openai:work/gpt-4o",
                Scope::profile_model("openai", "work", "gpt-4o"),
            ),
            ("openai:work", Scope::profile("openai", "work")),
            ("openai/gpt-4o", Scope::provider_model("openai", "gpt-4o")),
            (
                "openrouter/anthropic/claude-3.5-sonnet",
                Scope::provider_model("openrouter", "anthropic/claude-3.5-sonnet"),
            ),
            (
                "ollama/llama3:8b",
                Scope::provider_model("ollama", "llama3:8b"),
            ),
            (
                "ollama:k/llama3:8b",
                Scope::profile_model("ollama", "k", "llama3:8b"),
            ),
        ];
        for (text, scope) in cases {
            assert_eq!(text.parse::<Scope>().as_ref(), Ok(&scope), "{text}");
            assert_eq!(scope.to_string(), text);
        }
        for bad in [
            "openai",
            "",
            ":work",
            "/gpt-4o",
            "openai:",
            "openai:/m",
            "openai/",
            "a:b:c",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} should not parse");
        }
        let e = "openai".parse::<Scope>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("provider:profile/model")));
    }

    #[test]
    fn scopes_serialize_as_strings() {
        let s = Scope::profile_model("openai", "work", "gpt-4o");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#""openai:work/gpt-4o""#);
        assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Scope>(r#""nope""#).is_err());
    }

    const TRANSIENT: Ladder = Ladder {
        base_ms: 30_000,
        cap_ms: 300_000,
    };
    const LONG: Duration = Duration::from_secs(3_600);

    #[test]
    fn ladder_doubles_from_base_to_cap() {
        let secs = |n| cooldown_for(TRANSIENT, n, None, LONG, 0.0).as_secs();
        assert_eq!(
            [secs(0), secs(1), secs(2), secs(3), secs(4), secs(5)],
            [30, 30, 60, 120, 240, 300]
        );
        assert_eq!(secs(u32::MAX), 300);
        let flat = Ladder {
            base_ms: 100,
            cap_ms: 10,
        };
        assert_eq!(
            cooldown_for(flat, 5, None, LONG, 0.0),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let ra = |s| Some(Duration::from_secs(s));
        assert_eq!(
            cooldown_for(TRANSIENT, 4, ra(7), LONG, 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 1, ra(900), LONG, 0.0),
            Duration::from_secs(300)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 1, ra(60), Duration::from_secs(10), 0.0),
            Duration::from_secs(10)
        );
        assert_eq!(cooldown_for(TRANSIENT, 1, ra(0), LONG, 1.0), Duration::ZERO);
        assert_eq!(
            cooldown_for(TRANSIENT, 1, ra(10), LONG, 1.0),
            Duration::from_secs(11),
            "jitter applies to Retry-After too, upwards only"
        );
    }

    #[test]
    fn jitter_adds_at_most_ten_percent_and_never_passes_the_cap() {
        assert_eq!(
            cooldown_for(TRANSIENT, 1, None, LONG, 1.0),
            Duration::from_secs(33)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 1, None, LONG, 0.5),
            Duration::from_millis(31_500)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 1, None, LONG, 7.0),
            Duration::from_secs(33)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 1, None, LONG, f64::NAN),
            Duration::from_secs(30)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 4, None, LONG, 1.0),
            Duration::from_secs(264)
        );
        assert_eq!(
            cooldown_for(TRANSIENT, 5, None, LONG, 1.0),
            Duration::from_secs(300)
        );
    }

    fn ladder() -> impl Strategy<Value = Ladder> {
        (0u64..u64::MAX / 2, 0u64..u64::MAX / 2).prop_map(|(a, b)| Ladder {
            base_ms: a.min(b),
            cap_ms: a.max(b),
        })
    }

    proptest! {
        #[test]
        fn cooldown_stays_within_ladder_bounds(l in ladder(), n in 0u32..200, j in 0.0f64..1.0) {
            let d = cooldown_for(l, n, None, LONG, j).as_millis() as u64;
            prop_assert!(d >= l.base_ms.min(l.cap_ms));
            prop_assert!(d <= l.cap_ms);
        }

        #[test]
        fn cooldown_is_monotone_in_failures(l in ladder(), n in 0u32..200, j in 0.0f64..1.0) {
            let plain = |n| cooldown_for(l, n, None, LONG, 0.0);
            prop_assert!(plain(n) <= plain(n + 1));
            let jittered = |n| cooldown_for(l, n, None, LONG, j);
            prop_assert!(jittered(n) <= jittered(n + 1));
            prop_assert!(plain(n) <= jittered(n));
        }

        #[test]
        fn retry_after_never_exceeds_either_cap(
            l in ladder(), ra in 0u64..u64::MAX / 2, max in 0u64..u64::MAX / 2, j in 0.0f64..1.0
        ) {
            let d = cooldown_for(l, 1, Some(Duration::from_millis(ra)), Duration::from_millis(max), j);
            let d = d.as_millis() as u64;
            prop_assert!(d <= l.cap_ms && d <= max);
            prop_assert!(d >= ra.min(l.cap_ms).min(max));
        }

        #[test]
        fn scope_strings_round_trip(
            provider in "[a-z0-9_.-]{1,12}",
            profile in "[A-Za-z0-9_.@ -]{1,12}",
            model in "[A-Za-z0-9_.:/-]{0,30}[A-Za-z0-9]",
        ) {
            for scope in [
                Scope::profile_model(&provider, &profile, &model),
                Scope::profile(&provider, &profile),
                Scope::provider_model(&provider, &model),
            ] {
                let text = scope.to_string();
                prop_assert_eq!(text.parse::<Scope>(), Ok(scope));
            }
        }
    }
}
