//! Configuration: the validated [`Config`] every other module reads.
//!
//! Loading happens in two stages: the file (JSON5, YAML or TOML by extension) is
//! parsed into raw serde types that reject unknown keys (`raw.rs`), then
//! validated into these types (`load.rs`), with every error naming its key path,
//! the bad value and what would be valid. Chains are resolved per request by
//! `resolve.rs`.

mod chains;
mod env;
mod error;
mod expand;
mod from_env;
mod load;
mod profiles_file;
mod providers;
mod raw;
mod redact;
mod resolve;
mod suggest;
mod validate;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use env::{Env, MapEnv, ProcessEnv};
pub use error::{ConfigError, ConfigErrors};
pub use from_env::from_env;
pub use load::{DEFAULT_FILE, Format, from_str, load, load_file, parse_value};
pub use profiles_file::AUTH_PROFILES_FILE;
pub use providers::{WELL_KNOWN, well_known};
pub use redact::describe_secret;
pub use resolve::{FALLBACKS_HEADER, ResolveError, Route};
pub use suggest::{did_you_mean, levenshtein};

use crate::chat::WireFormat;
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole validated configuration. Cheap to share behind an `Arc`; a reload replaces it whole.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// Providers in config order.
    pub providers: Vec<ProviderConfig>,
    pub auth: AuthConfig,
    /// The default chain (`agents.defaults.model`), served for model `"default"`.
    pub default_chain: Chain,
    /// Named agents (`agents.list`), in config order.
    pub agents: Vec<Agent>,
    pub retry: RetryConfig,
    pub timeouts: Timeouts,
    pub stream: StreamConfig,
    pub state: StateConfig,
    /// Degradation detection (`health`).
    pub health: crate::health::HealthConfig,
    /// Where this config came from: a file, or the environment.
    pub origin: ConfigOrigin,
    /// Non-fatal findings (literal keys, unset variables…), each naming its key path.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    File(PathBuf),
    /// Built from well-known environment variables because no file was found.
    Environment,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Default `127.0.0.1:8787`.
    pub listen: SocketAddr,
    /// Client keys; empty = no client authentication.
    pub api_keys: Vec<Secret>,
    /// Allow listening beyond loopback without `api_keys`. Default false.
    pub allow_unauthenticated: bool,
    /// Request body limit. Default 32 MiB.
    pub max_body_bytes: usize,
    /// JSON nesting limit for request bodies. Default 64.
    pub max_json_depth: usize,
    /// Send strict security headers (nosniff, no-store, frame-deny, CSP). Default false.
    pub security_headers: bool,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The id used in `"<id>/<model>"`.
    pub id: String,
    pub api: WireFormat,
    /// Without trailing slash. For `openai` it includes the version (`…/v1`).
    pub base_url: String,
    /// Auth profiles in config order. May be empty (e.g. a local server without keys
    /// gets one profile named `default` with `key: None`).
    pub profiles: Vec<AuthProfile>,
    /// The model catalogue (`models`), in config order.
    pub models: Vec<ModelEntry>,
    /// Extra headers sent upstream (values already expanded; may hold secrets).
    pub headers: Vec<(String, Secret)>,
}

impl ProviderConfig {
    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }
}

#[derive(Debug, Clone)]
pub struct AuthProfile {
    /// Profile name: as configured, else `default` for a lone unnamed one, else `key<N>` (1-based).
    pub name: String,
    /// `None` for providers that need no key. A key whose variable is unset
    /// is not a profile at all (a warning is recorded instead).
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    /// Context window in tokens, when known.
    pub context_window: Option<u64>,
    /// Whether this model accepts an assistant prefill (a trailing assistant message).
    pub prefill: Option<bool>,
    /// Maximum output tokens, used as `max_tokens` when a request names none and the
    /// target requires one (Anthropic).
    pub max_output_tokens: Option<u32>,
}

/// A `provider/model` reference. The provider is split at the first `/`, so
/// `openrouter/anthropic/claude-3.5-sonnet` is provider `openrouter`, model
/// `anthropic/claude-3.5-sonnet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// A primary model and its fallbacks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub primary: ModelRef,
    pub fallbacks: Vec<ModelRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub chain: Chain,
}

#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Explicit profile preference per provider id (`auth.order`).
    pub order: BTreeMap<String, Vec<String>>,
    pub cooldowns: CooldownConfig,
}

/// A cooldown ladder: `base_ms`, doubling per consecutive failure, capped at `cap_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladder {
    pub base_ms: u64,
    pub cap_ms: u64,
}

/// The ladders of §3.3, with per-provider overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct CooldownConfig {
    pub ladders: Ladders,
    /// `auth.cooldowns.per_provider.<id>`: ladders that replace the global ones for that provider
    /// (unset ladders inherit the global ones).
    pub per_provider: BTreeMap<String, Ladders>,
    /// Failures older than this no longer count. Default 24 h.
    pub failure_window_ms: u64,
    /// After a fallback, how often the primary may be probed. Default 30 s.
    pub probe_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladders {
    /// rate_limit, overloaded, server_error, timeout. Default 30 s → 5 min.
    pub transient: Ladder,
    /// auth. Default 5 min → 1 h.
    pub auth: Ladder,
    /// billing. Default 5 h → 24 h.
    pub billing: Ladder,
    /// auth_permanent. Default 24 h → 24 h.
    pub auth_permanent: Ladder,
    /// model_not_found (provider × model). Default 1 h → 24 h.
    pub model_not_found: Ladder,
}

impl Default for Ladders {
    fn default() -> Self {
        const MIN: u64 = 60_000;
        const HOUR: u64 = 60 * MIN;
        Ladders {
            transient: Ladder {
                base_ms: 30_000,
                cap_ms: 5 * MIN,
            },
            auth: Ladder {
                base_ms: 5 * MIN,
                cap_ms: HOUR,
            },
            billing: Ladder {
                base_ms: 5 * HOUR,
                cap_ms: 24 * HOUR,
            },
            auth_permanent: Ladder {
                base_ms: 24 * HOUR,
                cap_ms: 24 * HOUR,
            },
            model_not_found: Ladder {
                base_ms: HOUR,
                cap_ms: 24 * HOUR,
            },
        }
    }
}

impl Default for CooldownConfig {
    fn default() -> Self {
        CooldownConfig {
            ladders: Ladders::default(),
            per_provider: BTreeMap::new(),
            failure_window_ms: 24 * 60 * 60 * 1000,
            probe_interval_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per target, the first included. Default 2, at least 1.
    pub max_attempts: u32,
    /// Base of the full-jitter exponential backoff. Default 1000.
    pub backoff_ms: u64,
    /// HTTP statuses that may trigger a retry/failover. Default [429, 500, 502, 503, 504].
    pub trigger_codes: Vec<u16>,
    pub trigger_on_auth_failure: bool,
    pub trigger_on_timeout: bool,
    /// Longest `Retry-After` worth waiting for on the same target. Default 10 000.
    pub max_retry_after_ms: u64,
    /// Retry budget: fraction of recent requests that may be retries. Default 0.2.
    pub budget_ratio: f64,
    /// Retry budget floor, retries per second always allowed. Default 10.
    pub budget_min_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 2,
            backoff_ms: 1000,
            trigger_codes: vec![429, 500, 502, 503, 504],
            trigger_on_auth_failure: true,
            trigger_on_timeout: true,
            max_retry_after_ms: 10_000,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub first_token_ms: u64,
    pub idle_ms: u64,
    pub request_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            first_token_ms: 15_000,
            idle_ms: 20_000,
            request_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamCommit {
    /// Start sending once the upstream has produced its first content (default).
    #[default]
    FirstContent,
    /// Hold the stream back until it has finished.
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescueMode {
    Prefill,
    Splice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub commit: StreamCommit,
    /// Rescue strategies in order. Default `[Prefill, Splice]`.
    pub rescue: Vec<RescueMode>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            commit: StreamCommit::FirstContent,
            rescue: vec![RescueMode::Prefill, RescueMode::Splice],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Default `~/.backstop`; `$BACKSTOP_STATE_DIR` overrides.
    pub dir: PathBuf,
    pub redis_url: Option<String>,
    /// Session store disk budget (unset: [`StateConfig::DEFAULT_MAX_BYTES`]).
    pub max_bytes: Option<u64>,
    /// Sessions unused for longer than this are dropped. Default 7 days.
    pub session_ttl_ms: u64,
}

impl StateConfig {
    /// The session store's disk budget when `state.max_bytes` is unset: 8 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
    /// `state.session_ttl_ms` when unset: 7 days.
    pub const DEFAULT_SESSION_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

    /// The session store's disk budget in bytes.
    pub fn session_max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(Self::DEFAULT_MAX_BYTES)
    }
}

impl Config {
    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.id == id)
    }
}
