//! Sessions in the engine (PRODUCT §3.5): pins steer the plan, attempts write the
//! engine's own fields, and a failed attempt rolls back only what still holds what
//! it wrote — so a concurrent manual change is never clobbered.
//!
//! Rules:
//! - pins apply when the client asked for a chain (`default` or an agent id), not
//!   when it named a `provider/model` itself;
//! - a user model pin leads the route; an automatic one (left by a fallback) leads it
//!   only while the chain's first model is unusable, so the session returns to the
//!   primary as soon as it recovers ("fallback cleared");
//! - the pinned profile (user or automatic) goes first among the usable keys of its
//!   provider; while it cools down the other keys serve, and the pin stays.

use super::cooldowns::Cooldowns;
use crate::config::{ModelRef, Route};
use crate::state::session::{PinSource, PinUndo, PinWrite, Session, SessionStore};
use std::sync::Arc;

/// The session a call belongs to.
#[derive(Clone, Debug)]
pub struct SessionCtx {
    pub id: String,
    pub store: Arc<dyn SessionStore>,
}

/// What the session changes in a call's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// The route to plan (the chain, possibly led by the session's model).
    pub route: Option<Route>,
    /// The profile to put first for its provider.
    pub profile: Option<String>,
    /// The automatic model pin was dropped because the primary is usable again.
    pub fallback_cleared: bool,
}

/// Work out how a session steers `route`.
pub fn steer(
    session: Option<&Session>,
    route: &Route,
    cooldowns: &Cooldowns,
    profiles_of: impl Fn(&str) -> Vec<String>,
) -> Steering {
    let Some(s) = session else {
        return Steering::default();
    };
    let mut out = Steering {
        profile: s.profile_override.clone(),
        ..Steering::default()
    };
    if route.agent.is_none() {
        return out;
    }
    let Some(pinned) = s.model_ref() else {
        return out;
    };
    let lead = match s.model_override_source {
        Some(PinSource::User) => true,
        _ => {
            // Automatic pin: only while no key of the chain's first model is usable.
            let primary_usable = route.targets.first().is_some_and(|first| {
                profiles_of(&first.provider).iter().any(|p| {
                    cooldowns
                        .usable_at(&first.provider, p, &first.model)
                        .is_none()
                })
            });
            if primary_usable && route.targets.first() != Some(&pinned) {
                out.fallback_cleared = true;
                false
            } else {
                true
            }
        }
    };
    if lead {
        let mut targets = vec![pinned.clone()];
        targets.extend(route.targets.iter().filter(|t| **t != pinned).cloned());
        out.route = Some(Route {
            agent: route.agent.clone(),
            targets,
        });
    }
    out
}

/// Before an attempt on `model` with `profile`: write the engine's pins (a model pin only
/// for a fallback; the profile always), remembering what they replaced.
pub fn before_attempt(
    ctx: &SessionCtx,
    model: &ModelRef,
    is_fallback: bool,
    profile: &str,
) -> PinUndo {
    let mut w = PinWrite::new().profile(profile, PinSource::Auto);
    w = if is_fallback {
        w.model_ref(model, PinSource::Auto)
    } else {
        w.clear_model()
    };
    ctx.store.write_pins(&ctx.id, &w)
}

/// After a failed attempt: restore only the fields that still hold what was written.
pub fn after_failure(ctx: &SessionCtx, undo: &PinUndo) {
    let restored = ctx.store.rollback(&ctx.id, undo);
    tracing::debug!(session = %ctx.id, ?restored, "session pins rolled back");
}

/// After a success: the notice of the fallback in effect, or none.
pub fn after_success(ctx: &SessionCtx, notice: Option<&str>) {
    let w = match notice {
        Some(n) => PinWrite::new().notice(n),
        None => PinWrite::new().clear_notice(),
    };
    ctx.store.write_pins(&ctx.id, &w);
}
