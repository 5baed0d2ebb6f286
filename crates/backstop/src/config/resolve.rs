//! Which chain serves a request (PRODUCT §1 "Which chain serves a request", §8).

use super::{Config, ModelRef};

/// The targets a request will try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The agent id when the model named one (`"default"` for the default chain).
    pub agent: Option<String>,
    /// First target, then its fallbacks; never empty, no duplicates.
    pub targets: Vec<ModelRef>,
}

/// Why a request's model or fallbacks header could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The model is no agent, no `provider/model` of a configured provider and in no catalogue
    /// (a 404 for the client). `message` lists what is configured.
    #[error("{message}")]
    UnknownModel { requested: String, message: String },
    /// An `x-backstop-fallbacks` entry is not `provider/model` of a configured provider (a 400).
    #[error("{message}")]
    BadFallbacks { message: String },
}

/// The request header that replaces a chain's fallbacks.
pub const FALLBACKS_HEADER: &str = "x-backstop-fallbacks";

impl Config {
    /// Resolve a request's `model` (and optional `x-backstop-fallbacks` header) to targets.
    ///
    /// ```
    /// use backstop::config::{from_str, ConfigOrigin, Format, MapEnv};
    /// let text = r#"{
    ///   providers: { openai: {}, anthropic: { models: ["claude-sonnet-4-5"] } },
    ///   agents: { defaults: { model: { primary: "openai/gpt-4o", fallbacks: ["anthropic/claude-sonnet-4-5"] } } },
    /// }"#;
    /// let config = from_str(text, Format::Json5, ConfigOrigin::Environment, &MapEnv::new()).unwrap();
    /// let route = config.resolve("anthropic/claude-opus-4-5", None).unwrap();
    /// let names: Vec<String> = route.targets.iter().map(|t| t.to_string()).collect();
    /// assert_eq!(names, ["anthropic/claude-opus-4-5", "anthropic/claude-sonnet-4-5"]);
    /// ```
    pub fn resolve(
        &self,
        model: &str,
        fallbacks_header: Option<&str>,
    ) -> Result<Route, ResolveError> {
        let (agent, first, fallbacks) = if model == "default" {
            let c = &self.default_chain;
            (
                Some("default".to_string()),
                c.primary.clone(),
                c.fallbacks.clone(),
            )
        } else if let Some(a) = self.agent(model) {
            (
                Some(a.id.clone()),
                a.chain.primary.clone(),
                a.chain.fallbacks.clone(),
            )
        } else if let Some(r) = self.configured_ref(model) {
            (None, r, self.default_chain.fallbacks.clone())
        } else if let Some(p) = self.providers.iter().find(|p| p.model(model).is_some()) {
            let r = ModelRef {
                provider: p.id.clone(),
                model: model.to_string(),
            };
            (None, r, self.default_chain.fallbacks.clone())
        } else {
            return Err(ResolveError::UnknownModel {
                requested: model.to_string(),
                message: self.unknown_model_message(model),
            });
        };
        let fallbacks = match fallbacks_header {
            Some(h) => self.parse_fallbacks_header(h)?,
            None => fallbacks,
        };
        let mut targets = vec![first];
        for f in fallbacks {
            if !targets.contains(&f) {
                targets.push(f);
            }
        }
        Ok(Route { agent, targets })
    }

    /// `provider/model` with a configured provider.
    fn configured_ref(&self, s: &str) -> Option<ModelRef> {
        let (p, m) = s.split_once('/')?;
        if m.is_empty() || self.provider(p).is_none() {
            return None;
        }
        Some(ModelRef {
            provider: p.to_string(),
            model: m.to_string(),
        })
    }

    fn parse_fallbacks_header(&self, h: &str) -> Result<Vec<ModelRef>, ResolveError> {
        let mut out = Vec::new();
        for entry in h.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match self.configured_ref(entry) {
                Some(r) => out.push(r),
                None => {
                    let ids: Vec<&str> = self.providers.iter().map(|p| p.id.as_str()).collect();
                    return Err(ResolveError::BadFallbacks {
                        message: format!(
                            "{FALLBACKS_HEADER}: \"{entry}\" is not provider/model of a configured provider; configured providers: {}",
                            ids.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    fn unknown_model_message(&self, model: &str) -> String {
        let mut agents = vec!["default".to_string()];
        agents.extend(self.agents.iter().map(|a| a.id.clone()));
        let models = self.catalogue_ids();
        let mut msg = format!(
            "model \"{model}\" is not configured; agents: {}; models: {}",
            agents.join(", "),
            if models.is_empty() {
                "(none)".to_string()
            } else {
                models.join(", ")
            }
        );
        let ids: Vec<&str> = self.providers.iter().map(|p| p.id.as_str()).collect();
        msg.push_str(&format!(
            "; or write provider/model with a configured provider ({})",
            ids.join(", ")
        ));
        msg
    }

    fn catalogue_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.providers {
            for m in &p.models {
                let id = format!("{}/{}", p.id, m.id);
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// What `GET /v1/models` lists: `default`, every agent id, then `provider/model` for
    /// every catalogue entry.
    pub fn model_ids(&self) -> Vec<String> {
        let mut out = vec!["default".to_string()];
        out.extend(self.agents.iter().map(|a| a.id.clone()));
        for id in self.catalogue_ids() {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}
