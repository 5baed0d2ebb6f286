//! The default chain (`agents.defaults.model` or the seed's `providers.fallback`) and the
//! agents of `agents.list`.

use super::providers::Providers;
use super::raw::{RawAgents, RawModelSpec, section};
use super::suggest::hint;
use super::validate::{Ctx, list_or_none};
use super::{Agent, Chain, ModelRef};
use serde_json::Value;

pub(crate) fn chains(
    root: &Value,
    providers: &Providers,
    cx: &mut Ctx<'_>,
) -> (Option<Chain>, Option<Vec<Agent>>) {
    let agents: Option<RawAgents> = section(root.get("agents"), "agents", &mut cx.errors);
    let seed = root
        .get("providers")
        .and_then(|p| p.get("fallback"))
        .filter(|v| !v.is_null());
    let Some(agents) = agents else {
        return (None, None);
    };
    let spec = agents.defaults.and_then(|d| d.model);

    let default = match (spec, seed) {
        (Some(_), Some(_)) => {
            cx.err(
                "providers.fallback",
                "both agents.defaults.model and providers.fallback define the default chain; keep one",
            );
            None
        }
        (Some(spec), None) => chain(&spec, "agents.defaults.model", &[], providers, cx),
        (None, Some(list)) => seed_list(list, providers, cx),
        (None, None) => implicit_default(providers, cx),
    };
    let inherited = default
        .as_ref()
        .map(|c| c.fallbacks.clone())
        .unwrap_or_default();

    let mut list = Vec::new();
    for (i, a) in agents.list.unwrap_or_default().into_iter().enumerate() {
        let path = format!("agents.list[{i}]");
        let id = a.id.unwrap_or_default();
        if id.trim().is_empty() {
            cx.err(
                format!("{path}.id"),
                "required: a non-empty agent id (what clients send as `model`)",
            );
            continue;
        }
        if id == "default" || id.contains('/') {
            cx.err(
                format!("{path}.id"),
                format!("\"{id}\" cannot be an agent id: \"default\" names the default chain and '/' marks provider/model"),
            );
            continue;
        }
        if list.iter().any(|x: &Agent| x.id == id) {
            cx.err(format!("{path}.id"), format!("duplicate agent id \"{id}\""));
            continue;
        }
        let Some(spec) = a.model else {
            cx.err(
                format!("{path}.model.primary"),
                "required: the agent's first model, as provider/model",
            );
            continue;
        };
        if let Some(c) = chain(&spec, &format!("{path}.model"), &inherited, providers, cx) {
            list.push(Agent { id, chain: c });
        }
    }
    (default, Some(list))
}

/// A chain from `{primary, fallbacks}` or `{primary, fallback, fallback2, fallback3}`;
/// with neither, the fallbacks are `inherit`.
fn chain(
    spec: &RawModelSpec,
    path: &str,
    inherit: &[ModelRef],
    providers: &Providers,
    cx: &mut Ctx<'_>,
) -> Option<Chain> {
    let Some(p) = spec.primary.as_deref() else {
        cx.err(
            format!("{path}.primary"),
            "required: the chain's first model, as provider/model",
        );
        return None;
    };
    let primary = model_ref(p, &format!("{path}.primary"), providers, cx);
    let seed: Vec<(&str, &str)> = [
        ("fallback", spec.fallback.as_deref()),
        ("fallback2", spec.fallback2.as_deref()),
        ("fallback3", spec.fallback3.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let mut ok = primary.is_some();
    let fallbacks = match (&spec.fallbacks, seed.is_empty()) {
        (Some(_), false) => {
            cx.err(
                format!("{path}.fallbacks"),
                "give either `fallbacks` or `fallback`/`fallback2`/`fallback3`, not both",
            );
            return None;
        }
        (Some(list), true) => {
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                match model_ref(s, &format!("{path}.fallbacks[{i}]"), providers, cx) {
                    Some(r) => out.push(r),
                    None => ok = false,
                }
            }
            out
        }
        (None, false) => {
            let mut out = Vec::new();
            for (k, s) in seed {
                match model_ref(s, &format!("{path}.{k}"), providers, cx) {
                    Some(r) => out.push(r),
                    None => ok = false,
                }
            }
            out
        }
        (None, true) => inherit.to_vec(),
    };
    if !ok {
        return None;
    }
    Some(Chain {
        primary: primary?,
        fallbacks,
    })
}

/// The seed's `providers.fallback: [primary, fallback…]`.
fn seed_list(list: &Value, providers: &Providers, cx: &mut Ctx<'_>) -> Option<Chain> {
    let items: Vec<String> = section(Some(list), "providers.fallback", &mut cx.errors)?;
    if items.is_empty() {
        cx.err(
            "providers.fallback",
            "must list at least one provider/model (the first is the primary)",
        );
        return None;
    }
    let mut refs = Vec::new();
    let mut ok = true;
    for (i, s) in items.iter().enumerate() {
        match model_ref(s, &format!("providers.fallback[{i}]"), providers, cx) {
            Some(r) => refs.push(r),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let primary = refs.remove(0);
    Some(Chain {
        primary,
        fallbacks: refs,
    })
}

/// No chain written: the first provider's first catalogue model.
fn implicit_default(providers: &Providers, cx: &mut Ctx<'_>) -> Option<Chain> {
    let path = "agents.defaults.model.primary";
    let Some(first) = providers.declared.first() else {
        cx.err(
            path,
            "required (no default chain): no providers are configured; add one under `providers`",
        );
        return None;
    };
    // An invalid first provider already has its own errors.
    let p = providers.valid.iter().find(|p| p.id == first.id)?;
    match p.models.first() {
        Some(m) => Some(Chain {
            primary: ModelRef {
                provider: p.id.clone(),
                model: m.id.clone(),
            },
            fallbacks: Vec::new(),
        }),
        None => {
            cx.err(
                path,
                format!(
                    "required (no default chain): write agents.defaults.model.primary, or give provider \"{}\" a `models` catalogue to take the first model from",
                    p.id
                ),
            );
            None
        }
    }
}

/// Parse `provider/model` against the configured providers.
fn model_ref(s: &str, path: &str, providers: &Providers, cx: &mut Ctx<'_>) -> Option<ModelRef> {
    let ids = providers.ids();
    let Some((provider, model)) = s.split_once('/') else {
        let found = providers
            .valid
            .iter()
            .find(|p| p.model(s).is_some())
            .map(|p| format!(" (did you mean \"{}/{s}\"?)", p.id))
            .unwrap_or_default();
        cx.err(
            path,
            format!("\"{s}\" must be written provider/model, e.g. \"openai/gpt-4o\"; configured providers: {}{found}", list_or_none(&ids)),
        );
        return None;
    };
    if model.trim().is_empty() {
        cx.err(path, format!("\"{s}\" names no model after '/'"));
        return None;
    }
    if !ids.contains(&provider) {
        let extra = if provider == "bedrock" || provider == "vertex" {
            format!(" (provider \"{provider}\" is not supported yet)")
        } else {
            hint(provider, ids.iter().copied())
        };
        cx.err(
            path,
            format!(
                "provider \"{provider}\" is not configured; configured: {}{extra}",
                list_or_none(&ids)
            ),
        );
        return None;
    }
    if !providers.valid.iter().any(|p| p.id == provider) {
        return None; // declared but invalid: its own errors say why
    }
    Some(ModelRef {
        provider: provider.to_string(),
        model: model.to_string(),
    })
}
