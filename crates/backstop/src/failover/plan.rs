//! Planning: which targets a request tries, in which order.
//!
//! A target is one (provider, model, profile). The plan walks the route's models
//! in order and, within a model, the provider's profiles in preference order
//! (`auth.order`, then config order): key rotation before model fallback.

use crate::config::{Config, ModelRef, Route};

/// One thing to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the model in the route (0 = the chain's first model).
    pub model_index: usize,
    pub model: ModelRef,
    /// The auth profile's name.
    pub profile: String,
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

/// Expand a route into targets.
pub fn plan(config: &Config, route: &Route) -> AttemptPlan {
    let mut out = AttemptPlan::default();
    for (model_index, model) in route.targets.iter().enumerate() {
        let Some(provider) = config.provider(&model.provider) else {
            out.unusable
                .push((model.clone(), "provider is not configured".to_string()));
            continue;
        };
        let profiles = profile_order(config, &model.provider);
        if profiles.is_empty() {
            let _ = provider;
            out.unusable.push((
                model.clone(),
                "no usable key (every key's variable is unset)".into(),
            ));
        }
        for profile in profiles {
            out.targets.push(Target {
                model_index,
                model: model.clone(),
                profile,
            });
        }
    }
    out
}

/// A provider's profile names in preference order: `auth.order` first, then the rest in config order.
pub fn profile_order(config: &Config, provider_id: &str) -> Vec<String> {
    let Some(provider) = config.provider(provider_id) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::with_capacity(provider.profiles.len());
    if let Some(order) = config.auth.order.get(provider_id) {
        for n in order {
            if provider.profiles.iter().any(|p| &p.name == n) && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    for p in &provider.profiles {
        if !names.contains(&p.name) {
            names.push(p.name.clone());
        }
    }
    names
}
