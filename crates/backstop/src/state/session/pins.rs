//! Pin writes: the engine's field-wise writes with their undo, and user pins
//! checked against the config.

use super::{PinSource, Session};
use crate::config::{Config, ModelRef, did_you_mean};

/// A write to the session fields the engine owns. Each field is `None` (leave
/// it alone) or `Some(value)`, where `Some(None)` clears it.
///
/// The model pin (`provider_override`, `model_override`,
/// `model_override_source`) and the profile pin (`profile_override`,
/// `profile_override_source`) each move as one unit: a write leaves out the
/// fields of a user-pinned unit unless it sets that unit's source to
/// [`PinSource::User`], and a rollback restores a unit only when every field
/// of it that was written still holds the written value.
///
/// ```
/// use backstop::state::session::{PinSource, PinWrite};
/// let w = PinWrite::new().model("openai", "gpt-4o", PinSource::Auto).notice("switched to openai/gpt-4o");
/// assert_eq!(w.provider_override, Some(Some("openai".to_string())));
/// assert_eq!(w.profile_override, None); // left alone
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinWrite {
    pub provider_override: Option<Option<String>>,
    pub model_override: Option<Option<String>>,
    pub profile_override: Option<Option<String>>,
    pub model_override_source: Option<Option<PinSource>>,
    pub profile_override_source: Option<Option<PinSource>>,
    pub fallback_notice: Option<Option<String>>,
}

/// What [`super::SessionStore::write_pins`] wrote and what the fields held
/// before: pass both to [`super::SessionStore::restore_if_unchanged`] (or the
/// whole to [`super::SessionStore::rollback`]) when the attempt fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinUndo {
    /// The fields really written (a user-pinned unit may have been left out).
    pub wrote: PinWrite,
    /// The same fields' values before the write.
    pub previous: PinWrite,
}

impl PinWrite {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pin `provider/model`, with its source.
    pub fn model(
        mut self,
        provider: impl Into<String>,
        model: impl Into<String>,
        source: PinSource,
    ) -> Self {
        self.provider_override = Some(Some(provider.into()));
        self.model_override = Some(Some(model.into()));
        self.model_override_source = Some(Some(source));
        self
    }

    /// Pin a [`ModelRef`], with its source.
    pub fn model_ref(self, r: &ModelRef, source: PinSource) -> Self {
        self.model(r.provider.clone(), r.model.clone(), source)
    }

    /// Clear the model pin (an automatic one: a user pin is left alone).
    pub fn clear_model(mut self) -> Self {
        self.provider_override = Some(None);
        self.model_override = Some(None);
        self.model_override_source = Some(None);
        self
    }

    /// Pin an auth profile, with its source.
    pub fn profile(mut self, name: impl Into<String>, source: PinSource) -> Self {
        self.profile_override = Some(Some(name.into()));
        self.profile_override_source = Some(Some(source));
        self
    }

    /// Clear the profile pin (an automatic one: a user pin is left alone).
    pub fn clear_profile(mut self) -> Self {
        self.profile_override = Some(None);
        self.profile_override_source = Some(None);
        self
    }

    /// Set the fallback notice.
    pub fn notice(mut self, text: impl Into<String>) -> Self {
        self.fallback_notice = Some(Some(text.into()));
        self
    }

    /// Clear the fallback notice.
    pub fn clear_notice(mut self) -> Self {
        self.fallback_notice = Some(None);
        self
    }

    /// Writes nothing.
    pub fn is_empty(&self) -> bool {
        *self == PinWrite::default()
    }

    /// Apply to `s` (see the type docs for user pins); returns what was written and the undo.
    pub(super) fn apply(&self, s: &mut Session) -> PinUndo {
        let mut undo = PinUndo::default();
        let model_ok =
            !s.user_model_pin() || self.model_override_source == Some(Some(PinSource::User));
        if model_ok {
            set(
                &mut s.provider_override,
                &self.provider_override,
                &mut undo.wrote.provider_override,
                &mut undo.previous.provider_override,
            );
            set(
                &mut s.model_override,
                &self.model_override,
                &mut undo.wrote.model_override,
                &mut undo.previous.model_override,
            );
            set(
                &mut s.model_override_source,
                &self.model_override_source,
                &mut undo.wrote.model_override_source,
                &mut undo.previous.model_override_source,
            );
        }
        let profile_ok =
            !s.user_profile_pin() || self.profile_override_source == Some(Some(PinSource::User));
        if profile_ok {
            set(
                &mut s.profile_override,
                &self.profile_override,
                &mut undo.wrote.profile_override,
                &mut undo.previous.profile_override,
            );
            set(
                &mut s.profile_override_source,
                &self.profile_override_source,
                &mut undo.wrote.profile_override_source,
                &mut undo.previous.profile_override_source,
            );
        }
        set(
            &mut s.fallback_notice,
            &self.fallback_notice,
            &mut undo.wrote.fallback_notice,
            &mut undo.previous.fallback_notice,
        );
        undo
    }
}

fn set<T: Clone>(
    field: &mut Option<T>,
    write: &Option<Option<T>>,
    wrote: &mut Option<Option<T>>,
    previous: &mut Option<Option<T>>,
) {
    if let Some(v) = write {
        *previous = Some(field.clone());
        *wrote = Some(v.clone());
        field.clone_from(v);
    }
}

/// Does `field` still hold what was written (or was it not written at all)?
fn holds<T: PartialEq>(field: &Option<T>, wrote: &Option<Option<T>>) -> bool {
    wrote.as_ref().is_none_or(|w| field == w)
}

/// Put back `previous` where written. Returns whether anything was written to this field.
fn put_back<T: Clone>(
    field: &mut Option<T>,
    wrote: &Option<Option<T>>,
    previous: &Option<Option<T>>,
) -> bool {
    match (wrote, previous) {
        (Some(_), Some(p)) => {
            field.clone_from(p);
            true
        }
        _ => false,
    }
}

/// The narrow rollback, unit by unit (see [`PinWrite`]).
pub(super) fn restore(s: &mut Session, wrote: &PinWrite, previous: &PinWrite) -> Vec<&'static str> {
    let mut out = Vec::new();
    if holds(&s.provider_override, &wrote.provider_override)
        && holds(&s.model_override, &wrote.model_override)
        && holds(&s.model_override_source, &wrote.model_override_source)
    {
        if put_back(
            &mut s.provider_override,
            &wrote.provider_override,
            &previous.provider_override,
        ) {
            out.push("provider_override");
        }
        if put_back(
            &mut s.model_override,
            &wrote.model_override,
            &previous.model_override,
        ) {
            out.push("model_override");
        }
        if put_back(
            &mut s.model_override_source,
            &wrote.model_override_source,
            &previous.model_override_source,
        ) {
            out.push("model_override_source");
        }
    }
    if holds(&s.profile_override, &wrote.profile_override)
        && holds(&s.profile_override_source, &wrote.profile_override_source)
    {
        if put_back(
            &mut s.profile_override,
            &wrote.profile_override,
            &previous.profile_override,
        ) {
            out.push("profile_override");
        }
        if put_back(
            &mut s.profile_override_source,
            &wrote.profile_override_source,
            &previous.profile_override_source,
        ) {
            out.push("profile_override_source");
        }
    }
    if holds(&s.fallback_notice, &wrote.fallback_notice)
        && put_back(
            &mut s.fallback_notice,
            &wrote.fallback_notice,
            &previous.fallback_notice,
        )
    {
        out.push("fallback_notice");
    }
    out
}

/// User pins, checked against the config: from `PUT /v1/sessions/{id}` or
/// the `x-backstop-profile` header. Each is `None` (leave it), `Some(None)`
/// (clear the user pin) or `Some(Some(..))` (pin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPins {
    pub model: Option<Option<ModelRef>>,
    pub profile: Option<Option<String>>,
}

impl UserPins {
    /// Apply to a session (under the store's lock, via [`super::SessionStore::update`]).
    /// Clearing removes only a user pin; an automatic pin stays the engine's.
    pub fn apply(&self, s: &mut Session) {
        match &self.model {
            Some(Some(r)) => {
                s.provider_override = Some(r.provider.clone());
                s.model_override = Some(r.model.clone());
                s.model_override_source = Some(PinSource::User);
            }
            Some(None) if s.user_model_pin() => {
                s.provider_override = None;
                s.model_override = None;
                s.model_override_source = None;
            }
            _ => {}
        }
        match &self.profile {
            Some(Some(p)) => {
                s.profile_override = Some(p.clone());
                s.profile_override_source = Some(PinSource::User);
            }
            Some(None) if s.user_profile_pin() => {
                s.profile_override = None;
                s.profile_override_source = None;
            }
            _ => {}
        }
    }
}

/// Check user pins against the config. `model` is `provider/model` of a
/// configured provider (a model outside its catalogue is allowed); `profile`
/// must be an auth profile of that provider — else of the provider of the
/// session's current user model pin, else of any provider. `profile` may be
/// written `provider:profile` (as the errors list them); the provider must be
/// that same one, and the pin is the bare profile name. The error says what
/// is valid.
///
/// ```
/// use backstop::config::{Format, ConfigOrigin, MapEnv, from_str};
/// use backstop::state::session::user_pins;
/// let config = from_str(
///     r#"{ providers: { openai: { auth: [{ profile: "work", key: "sk-1" }], models: ["gpt-4o"] } } }"#,
///     Format::Json5, ConfigOrigin::File("backstop.json5".into()), &MapEnv::new(),
/// ).unwrap();
/// let pins = user_pins(&config, Some(Some("openai/gpt-4o")), Some(Some("work")), None).unwrap();
/// assert_eq!(pins.model.unwrap().unwrap().to_string(), "openai/gpt-4o");
/// let err = user_pins(&config, None, Some(Some("home")), None).unwrap_err();
/// assert!(err.contains("valid: openai:work"), "{err}");
/// let pins = user_pins(&config, None, Some(Some("openai:work")), None).unwrap();
/// assert_eq!(pins.profile, Some(Some("work".to_string())));
/// ```
pub fn user_pins(
    config: &Config,
    model: Option<Option<&str>>,
    profile: Option<Option<&str>>,
    current: Option<&Session>,
) -> Result<UserPins, String> {
    let providers: Vec<&str> = config.providers.iter().map(|p| p.id.as_str()).collect();
    let model = match model {
        None => None,
        Some(None) => Some(None),
        Some(Some(m)) => Some(Some(parse_model(config, m, &providers)?)),
    };
    let provider_for_profile = match &model {
        Some(Some(r)) => Some(r.provider.clone()),
        _ => current
            .filter(|s| s.user_model_pin())
            .and_then(|s| s.provider_override.clone()),
    };
    let profile = match profile {
        None => None,
        Some(None) => Some(None),
        Some(Some(p)) => Some(Some(check_profile(
            config,
            p,
            provider_for_profile.as_deref(),
        )?)),
    };
    Ok(UserPins { model, profile })
}

fn parse_model(config: &Config, m: &str, providers: &[&str]) -> Result<ModelRef, String> {
    let list = providers.join(", ");
    let Some((p, id)) = m
        .split_once('/')
        .filter(|(p, id)| !p.is_empty() && !id.is_empty())
    else {
        return Err(format!(
            "model {m:?} is not provider/model; configured providers: {list}"
        ));
    };
    if config.provider(p).is_none() {
        let hint = did_you_mean(p, providers.iter().copied())
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        return Err(format!(
            "model {m:?}: provider {p:?} is not configured{hint}; configured: {list}"
        ));
    }
    Ok(ModelRef {
        provider: p.to_string(),
        model: id.to_string(),
    })
}

/// The profile name to pin: `name` itself, or the profile of a
/// `provider:profile` (the form the errors list), whose provider must be
/// `provider` when that is given. Profile names never contain ':'.
fn check_profile(config: &Config, name: &str, provider: Option<&str>) -> Result<String, String> {
    if let Some((named, bare)) = name.split_once(':') {
        if let Some(pinned) = provider.filter(|p| *p != named) {
            let valid = config
                .provider(pinned)
                .map(|p| {
                    p.profiles
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            return Err(format!(
                "profile {name:?} is for provider {named:?}, but the model is pinned to provider {pinned:?}; valid: {valid}"
            ));
        }
        if config
            .provider(named)
            .is_some_and(|p| p.profiles.iter().any(|a| a.name == bare))
        {
            return Ok(bare.to_string());
        }
    }
    match provider.and_then(|p| config.provider(p)) {
        Some(p) => {
            let names: Vec<&str> = p.profiles.iter().map(|a| a.name.as_str()).collect();
            if names.contains(&name) {
                return Ok(name.to_string());
            }
            let hint = did_you_mean(name, names.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            Err(format!(
                "profile {name:?} is not configured for provider {:?}{hint}; valid: {}",
                p.id,
                names.join(", ")
            ))
        }
        None => {
            let all: Vec<String> = config
                .providers
                .iter()
                .flat_map(|p| {
                    p.profiles
                        .iter()
                        .map(move |a| format!("{}:{}", p.id, a.name))
                })
                .collect();
            if config
                .providers
                .iter()
                .any(|p| p.profiles.iter().any(|a| a.name == name))
            {
                return Ok(name.to_string());
            }
            let hint = did_you_mean(
                name,
                config
                    .providers
                    .iter()
                    .flat_map(|p| p.profiles.iter().map(|a| a.name.as_str())),
            )
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
            Err(format!(
                "profile {name:?} is not configured for any provider{hint}; valid: {}",
                all.join(", ")
            ))
        }
    }
}
