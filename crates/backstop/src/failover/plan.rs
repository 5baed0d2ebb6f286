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

/// Decides whether a model goes after the healthy ones (`degraded(provider, model)`).
pub type Degraded<'a> = &'a (dyn Fn(&str, &str) -> bool + Sync);

/// The plan of [`plan`] (with [`pin_profile`] for a session's pinned profile), found a
/// target at a time as the executor asks for the next: a request whose first target
/// answers pays for that one only. A model's first target is found without ordering its
/// keys (the least recently used by one scan, when no key of its provider may be
/// cooling); its other keys are ordered, as [`plan`] does, only when one is asked for.
///
/// Every value is read as of `now`, the moment the plan was made, so the targets are
/// those of the eager plan as long as nothing this request does changes the state they
/// are read from before the plan is [completed](Self::complete): the executor completes
/// it before it records a failure, and before it admits a target of a provider that may
/// be cooling (an admission may take a half-open scope's probe).
pub struct LazyPlan<'a> {
    config: &'a Config,
    route: &'a Route,
    cooldowns: &'a Cooldowns,
    degraded: Degraded<'a>,
    pin: Option<&'a str>,
    now: u64,
    /// The targets found so far (a prefix of the whole plan), and the models that cannot
    /// be tried among those looked at.
    plan: AttemptPlan,
    /// The next model of the route to look at.
    next_model: usize,
    /// Degraded models, in route order, for after the healthy ones; and the next of them.
    slow: Vec<usize>,
    next_slow: usize,
    /// The model whose targets are being handed out.
    current: Option<Cursor>,
    /// A model of a provider that may be cooling was reached: admitting one of its
    /// targets may change what later targets read.
    may_cool: bool,
    done: bool,
}

/// Where a [`LazyPlan`] is within one model.
enum Cursor {
    /// Only the model's first target has been handed out (of a provider with no breaker).
    First { model_index: usize, profile: usize },
    /// The model's other targets, in order.
    Rest(std::vec::IntoIter<Target>),
}

impl<'a> LazyPlan<'a> {
    /// A plan of `route` as of `now` (epoch ms), with `pin` first among each model's
    /// usable keys.
    pub fn new(
        config: &'a Config,
        route: &'a Route,
        cooldowns: &'a Cooldowns,
        degraded: Degraded<'a>,
        pin: Option<&'a str>,
        now: u64,
    ) -> Self {
        LazyPlan {
            config,
            route,
            cooldowns,
            degraded,
            pin,
            now,
            plan: AttemptPlan::default(),
            next_model: 0,
            slow: Vec::new(),
            next_slow: 0,
            current: None,
            may_cool: false,
            done: false,
        }
    }

    /// The plan's `idx`th target, found if not yet; `None` past its end.
    pub fn get(&mut self, idx: usize) -> Option<&Target> {
        while self.plan.targets.len() <= idx {
            let t = self.next_target()?;
            self.plan.targets.push(t);
        }
        self.plan.targets.get(idx)
    }

    /// The targets found so far.
    pub fn found(&self) -> &[Target] {
        &self.plan.targets
    }

    /// Every target (and every model that cannot be tried): the whole plan.
    pub fn complete(&mut self) -> &mut AttemptPlan {
        while let Some(t) = self.next_target() {
            self.plan.targets.push(t);
        }
        &mut self.plan
    }

    /// The `idx`th target found, taken out of the plan (which ends there).
    ///
    /// # Panics
    /// Never for an `idx` that [`get`](Self::get) answered.
    pub fn into_target(mut self, idx: usize) -> Target {
        self.plan.targets.swap_remove(idx)
    }

    /// Whether the plan is [completed](Self::complete).
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Before admitting a target: a plan that reached a provider that may be cooling is
    /// completed first, as of when it was made (the admission may take a probe, which
    /// changes when other keys of that provider are usable).
    pub fn before_admit(&mut self) {
        if self.may_cool && !self.done {
            self.complete();
        }
    }

    fn next_target(&mut self) -> Option<Target> {
        loop {
            match self.current.take() {
                Some(Cursor::Rest(mut rest)) => {
                    if let Some(t) = rest.next() {
                        self.current = Some(Cursor::Rest(rest));
                        return Some(t);
                    }
                }
                Some(Cursor::First {
                    model_index,
                    profile,
                }) => {
                    // A second key of this model: order them all, less the one handed out
                    // (which, as of `now`, heads that order).
                    let first = self
                        .profiles(model_index)
                        .get(profile)
                        .map(|p| p.name.as_str());
                    let mut rest = self.model_targets(model_index, false);
                    if let Some(pos) = rest.iter().position(|t| Some(t.profile.as_str()) == first) {
                        rest.remove(pos);
                    }
                    self.current = Some(Cursor::Rest(rest.into_iter()));
                }
                None => {
                    let model_index = self.next_model_index()?;
                    let model = &self.route.targets[model_index];
                    if self.cooldowns.may_cool(&model.provider) {
                        self.may_cool = true;
                        let targets = self.model_targets(model_index, true);
                        self.current = Some(Cursor::Rest(targets.into_iter()));
                    } else {
                        let Some(profile) = self.first_profile(model_index) else {
                            continue;
                        };
                        let Some(name) = self.profiles(model_index).get(profile) else {
                            continue;
                        };
                        let name = name.name.clone();
                        self.current = Some(Cursor::First {
                            model_index,
                            profile,
                        });
                        return Some(Target {
                            model_index,
                            model: model.clone(),
                            profile: name,
                            usable_at: None,
                        });
                    }
                }
            }
        }
    }

    /// The next model to hand targets out of: the route's healthy ones in order, then the
    /// degraded ones; models that cannot be tried go to `unusable` on the way.
    fn next_model_index(&mut self) -> Option<usize> {
        while let Some(model) = self.route.targets.get(self.next_model) {
            let model_index = self.next_model;
            self.next_model += 1;
            let Some(provider) = self.config.provider(&model.provider) else {
                self.plan
                    .unusable
                    .push((model.clone(), "provider is not configured".to_string()));
                continue;
            };
            if provider.profiles.is_empty() {
                self.plan.unusable.push((
                    model.clone(),
                    "no usable key (every key's variable is unset)".into(),
                ));
                continue;
            }
            if (self.degraded)(&model.provider, &model.model) {
                self.slow.push(model_index);
                continue;
            }
            return Some(model_index);
        }
        if let Some(&model_index) = self.slow.get(self.next_slow) {
            self.next_slow += 1;
            return Some(model_index);
        }
        self.done = true;
        None
    }

    fn profiles(&self, model_index: usize) -> &'a [crate::config::AuthProfile] {
        let (config, route): (&'a Config, &'a Route) = (self.config, self.route);
        route
            .targets
            .get(model_index)
            .and_then(|m| config.provider(&m.provider))
            .map_or(&[], |p| p.profiles.as_slice())
    }

    /// The first key (its index in the provider's profiles) of a model whose provider has
    /// no breaker, so every key is usable: the pinned one, else the first of `auth.order`,
    /// else (with an order) the first configured, else the least recently used.
    fn first_profile(&self, model_index: usize) -> Option<usize> {
        let provider = &self.route.targets.get(model_index)?.provider;
        let profiles = self.profiles(model_index);
        if profiles.len() == 1 {
            return Some(0);
        }
        let find = |name: &str| profiles.iter().position(|p| p.name == name);
        if let Some(pos) = self.pin.and_then(find) {
            return Some(pos);
        }
        match self.config.auth.order.get(provider) {
            Some(order) => order.iter().find_map(|n| find(n)).or(Some(0)),
            None => self
                .cooldowns
                .least_recently_used(provider, profiles.iter().map(|p| p.name.as_str())),
        }
    }

    /// A model's targets in the order [`plan`] and [`pin_profile`] give them.
    fn model_targets(&self, model_index: usize, may_cool: bool) -> Vec<Target> {
        let Some(model) = self.route.targets.get(model_index) else {
            return Vec::new();
        };
        let names = profile_order(self.config, &model.provider, |p| {
            self.cooldowns.last_used(&model.provider, p)
        });
        let mut targets: Vec<Target> = names
            .into_iter()
            .map(|profile| Target {
                model_index,
                usable_at: if may_cool {
                    self.cooldowns
                        .usable_at_time(&model.provider, &profile, &model.model, self.now)
                } else {
                    None
                },
                model: model.clone(),
                profile,
            })
            .collect();
        targets.sort_by_key(|t| t.usable_at.map_or((0, 0), |u| (1, u)));
        if let Some(pin) = self.pin
            && let Some(pos) = targets
                .iter()
                .position(|t| t.profile == pin && t.usable_at.is_none())
        {
            let pinned = targets.remove(pos);
            targets.insert(0, pinned);
        }
        targets
    }
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
    use proptest::prelude::{Just, Strategy, prop, prop_oneof};
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

    /// One thing that happened to the state before a request plans.
    #[derive(Debug, Clone)]
    enum Event {
        /// A failure of (provider, profile, model) for a reason, with a `Retry-After` (s).
        Fail(usize, usize, usize, Reason, u64),
        /// An admission (takes a half-open scope's probe).
        Admit(usize, usize, usize),
        /// A success (closes the target's scopes, marks its profile used now).
        Succeed(usize, usize, usize),
        /// A last use at a given time (ms).
        Used(usize, usize, u64),
        /// The clock moves on (s).
        Advance(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        let reason = prop_oneof![
            Just(Reason::RateLimit),
            Just(Reason::Auth),
            Just(Reason::ModelNotFound),
            Just(Reason::Billing),
        ];
        prop_oneof![
            4 => (0..4usize, 0..8usize, 0..4usize, reason, 0..90u64)
                .prop_map(|(p, a, m, r, ra)| Event::Fail(p, a, m, r, ra)),
            2 => (0..4usize, 0..8usize, 0..4usize).prop_map(|(p, a, m)| Event::Admit(p, a, m)),
            1 => (0..4usize, 0..8usize, 0..4usize).prop_map(|(p, a, m)| Event::Succeed(p, a, m)),
            4 => (0..4usize, 0..8usize, 0..5u64).prop_map(|(p, a, t)| Event::Used(p, a, t)),
            2 => (0..400u64).prop_map(Event::Advance),
        ]
    }

    /// A request's situation: providers' key counts (0 = none), `auth.order` per provider,
    /// the chain (provider index per model; one past the last = not configured), the
    /// degraded models, the session's pinned profile, and what happened before.
    #[derive(Debug, Clone)]
    struct Case {
        keys: Vec<usize>,
        order: Vec<Option<Vec<usize>>>,
        chain: Vec<usize>,
        degraded: Vec<bool>,
        pin: Option<usize>,
        events: Vec<Event>,
        /// How many targets to take one by one before completing the plan.
        take: usize,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1..=4usize).prop_flat_map(|n| {
            (
                prop::collection::vec(prop_oneof![1 => Just(0usize), 8 => 1..=8usize], n),
                prop::collection::vec(
                    prop::option::weighted(0.3, prop::collection::vec(0..10usize, 0..4)),
                    n,
                ),
                prop::collection::vec(prop_oneof![12 => 0..n, 1 => Just(n)], 1..=4),
                prop::collection::vec(prop::bool::weighted(0.2), 4),
                prop::option::weighted(0.3, 0..9usize),
                prop::collection::vec(event(), 0..24),
                0..10usize,
            )
                .prop_map(|(keys, order, chain, degraded, pin, events, take)| Case {
                    keys,
                    order,
                    chain,
                    degraded,
                    pin,
                    events,
                    take,
                })
        })
    }

    fn case_config(c: &Case) -> Config {
        let providers: Vec<String> = c
            .keys
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let auth: Vec<String> = (0..n)
                    .map(|k| format!(r#"{{ profile: "k{k}", key: "k-{i}-{k}-aaaaaaaaaaaaaaaa" }}"#))
                    .collect();
                format!(
                    r#"p{i}: {{ api: "openai", base_url: "http://127.0.0.1:1/v1", auth: [{}] }}"#,
                    auth.join(", ")
                )
            })
            .collect();
        let order: Vec<String> = c
            .order
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                // Only configured profiles may be named (the config says so otherwise).
                let n = c.keys[i];
                let names: Vec<String> = o
                    .as_ref()?
                    .iter()
                    .filter(|_| n > 0)
                    .map(|k| format!("\"k{}\"", k % n.max(1)))
                    .collect();
                Some(format!("p{i}: [{}]", names.join(", ")))
            })
            .collect();
        let text = format!(
            r#"{{ providers: {{ {} }}, auth: {{ order: {{ {} }} }},
                 agents: {{ defaults: {{ model: {{ primary: "p0/m0" }} }} }} }}"#,
            providers.join(", "),
            order.join(", ")
        );
        from_str(
            &text,
            Format::Json5,
            ConfigOrigin::Environment,
            &MapEnv::new(),
        )
        .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The lazy plan hands out exactly the eager plan's targets, in its order, and the
        /// same unusable models, however far it went one by one before being completed.
        #[test]
        fn the_lazy_plan_is_the_eager_plan(c in case()) {
            let config = case_config(&c);
            let (cd, clock) = cooldowns(&config);
            let name = |p: usize| format!("p{p}");
            for e in &c.events {
                match *e {
                    Event::Fail(p, a, m, r, ra) => {
                        cd.on_failure(&name(p), &format!("k{a}"), &format!("m{m}"), r,
                            Some(Duration::from_secs(ra)));
                    }
                    Event::Admit(p, a, m) => {
                        cd.admit(&name(p), &format!("k{a}"), &format!("m{m}"));
                    }
                    Event::Succeed(p, a, m) => cd.on_success(&name(p), &format!("k{a}"), &format!("m{m}")),
                    Event::Used(p, a, t) => cd.store().mark_used(&name(p), &format!("k{a}"), 1_000_000 + t),
                    Event::Advance(s) => clock.advance(Duration::from_secs(s)),
                }
            }
            let route = Route {
                agent: None,
                targets: c.chain.iter().enumerate()
                    .map(|(i, &p)| ModelRef { provider: name(p), model: format!("m{i}") })
                    .collect(),
            };
            let degraded_models: Vec<ModelRef> = route.targets.iter().zip(&c.degraded)
                .filter(|(_, d)| **d).map(|(m, _)| m.clone()).collect();
            let degraded = |p: &str, m: &str| {
                degraded_models.iter().any(|d| d.provider == p && d.model == m)
            };
            let pin = c.pin.map(|k| format!("k{k}"));
            let mut eager = plan(&config, &route, &cd, degraded);
            if let Some(pin) = &pin {
                pin_profile(&mut eager, pin);
            }
            let mut lazy = LazyPlan::new(&config, &route, &cd, &degraded, pin.as_deref(), cd.now_ms());
            let mut one_by_one = Vec::new();
            while one_by_one.len() < c.take && let Some(t) = lazy.get(one_by_one.len()) {
                one_by_one.push(t.clone());
            }
            let n = one_by_one.len();
            proptest::prop_assert_eq!(&one_by_one[..], &eager.targets[..n]);
            let whole = lazy.complete();
            proptest::prop_assert_eq!(&whole.targets, &eager.targets);
            proptest::prop_assert_eq!(&whole.unusable, &eager.unusable);
            proptest::prop_assert!(lazy.is_complete());
        }
    }

    #[test]
    fn a_plan_reaching_a_cooling_provider_is_completed_before_an_admission_takes_a_probe() {
        let c = config("");
        let (cd, clock) = cooldowns(&c);
        cd.on_failure("oa", "a", "m1", Reason::Auth, None); // the whole profile `oa:a`
        clock.advance(Duration::from_secs(3600)); // half-open: its probe is free
        let route = Route {
            agent: None,
            targets: vec![
                ModelRef {
                    provider: "oa".into(),
                    model: "m1".into(),
                },
                ModelRef {
                    provider: "oa".into(),
                    model: "m2".into(),
                },
            ],
        };
        let eager = plan(&c, &route, &cd, |_, _| false);
        assert_eq!(order(&eager)[3..], ["oa/m2 (a)", "oa/m2 (b)", "oa/m2 (c)"]);
        let no = |_: &str, _: &str| false;
        let mut lazy = LazyPlan::new(&c, &route, &cd, &no, None, cd.now_ms());
        assert_eq!(lazy.get(0), eager.targets.first());
        lazy.before_admit();
        assert!(lazy.is_complete());
        // The first attempt's admission takes `oa:a`'s probe: a plan made now would put
        // `a` last on m2; this one is still the plan of when the request planned.
        assert_eq!(
            cd.admit("oa", "a", "m1"),
            crate::failover::breaker::Admission::Probe
        );
        let later = plan(&c, &route, &cd, |_, _| false);
        assert_eq!(order(&later)[3..], ["oa/m2 (b)", "oa/m2 (c)", "oa/m2 (a)"]);
        assert_eq!(lazy.complete().targets, eager.targets);
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
