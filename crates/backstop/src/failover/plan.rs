//! Planning: which targets a request tries, in which order.
//!
//! A target is one (provider, model, profile). The plan walks the route's models
//! in order and, within a model, the provider's profiles in preference order:
//! key rotation before model fallback (PRODUCT §3.5). Profile order is
//! `auth.order` when given, else least-recently-used first (ties in config
//! order); profiles that are cooling down go last, soonest-usable first.

use super::cooldowns::Cooldowns;
use crate::config::{Config, ModelRef, Route};

/// One thing to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the model in the route (0 = the chain's first model).
    pub model_index: usize,
    pub model: ModelRef,
    /// The auth profile's name.
    pub profile: String,
    /// When this target becomes usable (epoch ms); `None` = usable at planning time.
    pub usable_at: Option<u64>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.model, self.profile)
    }
}

/// The ordered targets for one request.
#[derive(Debug, Clone, Default)]
pub struct AttemptPlan {
    pub targets: Vec<Target>,
    /// Models of the route that have no usable profile (e.g. every key unset), for the error report.
    pub unusable: Vec<(ModelRef, String)>,
}

/// Expand a route into targets, ordered with what the cooldowns know. Models that
/// `degraded(provider, model)` reports go after the healthy ones (their order kept).
pub fn plan(
    config: &Config,
    route: &Route,
    cooldowns: &Cooldowns,
    degraded: impl Fn(&str, &str) -> bool,
) -> AttemptPlan {
    let mut out = AttemptPlan::default();
    let mut slow: Vec<Target> = Vec::new();
    for (model_index, model) in route.targets.iter().enumerate() {
        if config.provider(&model.provider).is_none() {
            out.unusable
                .push((model.clone(), "provider is not configured".to_string()));
            continue;
        }
        let names = profile_order(config, &model.provider, |p| {
            cooldowns.last_used(&model.provider, p)
        });
        if names.is_empty() {
            out.unusable.push((
                model.clone(),
                "no usable key (every key's variable is unset)".into(),
            ));
            continue;
        }
        // A provider with no breaker has every key usable: no lookups key by key (with
        // 100 keys they were most of a request's planning).
        let may_cool = cooldowns.may_cool(&model.provider);
        let mut targets: Vec<Target> = names
            .into_iter()
            .map(|profile| Target {
                model_index,
                usable_at: if may_cool {
                    cooldowns.usable_at(&model.provider, &profile, &model.model)
                } else {
                    None
                },
                model: model.clone(),
                profile,
            })
            .collect();
        // Usable first (keeping their order), then cooling ones by when they recover.
        targets.sort_by_key(|t| t.usable_at.map_or((0, 0), |u| (1, u)));
        if degraded(&model.provider, &model.model) {
            slow.extend(targets);
        } else {
            out.targets.extend(targets);
        }
    }
    out.targets.extend(slow);
    out
}

/// Put `profile` first among the usable targets of each model whose provider has it
/// (a session's pin). A cooling pinned profile stays where the cooldown put it.
pub fn pin_profile(plan: &mut AttemptPlan, profile: &str) {
    let mut i = 0;
    while i < plan.targets.len() {
        let model_index = plan.targets[i].model_index;
        let end = plan.targets[i..]
            .iter()
            .position(|t| t.model_index != model_index)
            .map_or(plan.targets.len(), |n| i + n);
        if let Some(pos) = plan.targets[i..end]
            .iter()
            .position(|t| t.profile == profile && t.usable_at.is_none())
        {
            let pinned = plan.targets.remove(i + pos);
            plan.targets.insert(i, pinned);
        }
        i = end;
    }
}

/// A provider's profile names in preference order, before cooldowns are considered:
/// `auth.order` first, then the rest — least recently used first when there is no
/// explicit order (ties, e.g. no history yet, in config order).
pub fn profile_order(
    config: &Config,
    provider_id: &str,
    last_used: impl Fn(&str) -> Option<u64>,
) -> Vec<String> {
    let Some(provider) = config.provider(provider_id) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::with_capacity(provider.profiles.len());
    let explicit = config.auth.order.get(provider_id);
    if let Some(order) = explicit {
        for n in order {
            if provider.profiles.iter().any(|p| &p.name == n) && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut rest: Vec<&str> = provider
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| !names.iter().any(|m| m == n))
        .collect();
    if explicit.is_none() {
        // Stable sort: never-used (None) first, then oldest use; ties keep config order.
        // Each profile's last use is read once (a store lookup under a lock), not per comparison.
        rest.sort_by_cached_key(|n| last_used(n));
    }
    names.extend(rest.into_iter().map(str::to_owned));
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{ConfigOrigin, Format, MapEnv, from_str};
    use crate::failover::Reason;
    use crate::state::MemoryStore;
    use std::sync::Arc;
    use std::time::Duration;

    fn config(order: &str) -> Config {
        let text = format!(
            r#"{{
              providers: {{
                oa: {{ api: "openai", base_url: "http://127.0.0.1:1/v1",
                      auth: [{{ profile: "a", key: "k-aaaaaaaaaaaaaaaa" }}, {{ profile: "b", key: "k-bbbbbbbbbbbbbbbb" }},
                             {{ profile: "c", key: "k-cccccccccccccccc" }}] }},
                an: {{ api: "anthropic", base_url: "http://127.0.0.1:1", auth: [{{ profile: "x", key: "k-xxxxxxxxxxxxxxxx" }}] }},
              }},
              auth: {{ {order} }},
              agents: {{ defaults: {{ model: {{ primary: "oa/m1", fallbacks: ["an/m2"] }} }} }},
            }}"#
        );
        from_str(
            &text,
            Format::Json5,
            ConfigOrigin::Environment,
            &MapEnv::new(),
        )
        .unwrap()
    }

    fn cooldowns(config: &Config) -> (Cooldowns, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let c = Cooldowns::new(
            Arc::new(MemoryStore::new()),
            clock.clone(),
            config.auth.cooldowns.clone(),
            Duration::from_secs(3600),
        );
        (c, clock)
    }

    fn order(p: &AttemptPlan) -> Vec<String> {
        p.targets.iter().map(ToString::to_string).collect()
    }

    fn route(config: &Config) -> Route {
        config.resolve("default", None).unwrap()
    }

    #[test]
    fn config_order_without_history_then_the_next_model() {
        let c = config("");
        let (cd, _) = cooldowns(&c);
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(
            order(&p),
            ["oa/m1 (a)", "oa/m1 (b)", "oa/m1 (c)", "an/m2 (x)"]
        );
    }

    #[test]
    fn least_recently_used_first_without_an_explicit_order() {
        let c = config("");
        let (cd, clock) = cooldowns(&c);
        cd.on_success("oa", "a", "m1");
        clock.advance(Duration::from_secs(1));
        cd.on_success("oa", "c", "m1");
        // b never used, then a (older), then c (newest).
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(order(&p)[..3], ["oa/m1 (b)", "oa/m1 (a)", "oa/m1 (c)"]);
    }

    #[test]
    fn explicit_order_wins_over_recency() {
        let c = config(r#"order: { oa: ["c", "a"] }"#);
        let (cd, _) = cooldowns(&c);
        cd.on_success("oa", "c", "m1");
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(order(&p)[..3], ["oa/m1 (c)", "oa/m1 (a)", "oa/m1 (b)"]);
    }

    #[test]
    fn cooling_profiles_go_last_soonest_first() {
        let c = config("");
        let (cd, _) = cooldowns(&c);
        cd.on_failure("oa", "a", "m1", Reason::Auth, None); // whole profile, 5 min
        cd.on_failure(
            "oa",
            "b",
            "m1",
            Reason::RateLimit,
            Some(Duration::from_secs(10)),
        );
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(order(&p)[..3], ["oa/m1 (c)", "oa/m1 (b)", "oa/m1 (a)"]);
        assert!(p.targets[0].usable_at.is_none());
        assert!(p.targets[1].usable_at < p.targets[2].usable_at);
    }

    #[test]
    fn a_breaker_of_one_provider_leaves_the_other_providers_keys_usable() {
        let c = config("");
        let (cd, _) = cooldowns(&c);
        cd.on_failure("an", "x", "m2", Reason::Auth, None);
        assert!(cd.may_cool("an"));
        assert!(!cd.may_cool("oa"));
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(
            order(&p),
            ["oa/m1 (a)", "oa/m1 (b)", "oa/m1 (c)", "an/m2 (x)"]
        );
        assert!(p.targets[..3].iter().all(|t| t.usable_at.is_none()));
        assert!(p.targets[3].usable_at.is_some());
        // And back: a failure on `oa` is seen there again.
        cd.on_failure("oa", "a", "m1", Reason::Auth, None);
        let p = plan(&c, &route(&c), &cd, |_, _| false);
        assert_eq!(order(&p)[..3], ["oa/m1 (b)", "oa/m1 (c)", "oa/m1 (a)"]);
    }

    #[test]
    fn degraded_models_go_after_healthy_ones() {
        let c = config("");
        let (cd, _) = cooldowns(&c);
        let p = plan(&c, &route(&c), &cd, |p, m| p == "oa" && m == "m1");
        assert_eq!(
            order(&p),
            ["an/m2 (x)", "oa/m1 (a)", "oa/m1 (b)", "oa/m1 (c)"]
        );
    }
}
