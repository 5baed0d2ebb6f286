//! Sessions (PRODUCT §3.5): what a client's `x-backstop-session: <id>` keys.
//!
//! A session holds exactly the failover fields the engine owns — the provider,
//! model and profile it is pinned to, where each pin came from ([`PinSource`]:
//! the engine after a fallback, or the user), and the active fallback notice —
//! plus timestamps for the idle TTL and least-recently-used eviction.
//!
//! Like [`crate::state::StateStore`], a [`SessionStore`] is synchronous and
//! answers from memory: the engine calls it on the hot path. Unlike the
//! breaker store it reads its own clock, because every write stamps
//! `updated_at` and every read checks the TTL.
//!
//! Stores: [`MemorySessionStore`] (in process) and [`FileSessionStore`]
//! (`<state.dir>/sessions.json`, written in the background). A Redis store
//! implements the same trait; see [`SessionStore::modify`] for the one
//! primitive a backend must make atomic.

mod file;
mod memory;
mod pins;

pub use file::FileSessionStore;
pub use memory::MemorySessionStore;
pub use pins::{PinUndo, PinWrite, UserPins, user_pins};

use crate::clock::Clock;
use crate::config::{Config, ModelRef, StateConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The request header that names a session.
pub const SESSION_HEADER: &str = "x-backstop-session";
/// The request header that sets a user profile pin on the session.
pub const PROFILE_HEADER: &str = "x-backstop-profile";
/// The longest session id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Who set a pin: the engine (after a fallback, or to keep a healthy profile
/// warm) or the user (`x-backstop-profile`, `PUT /v1/sessions/{id}`).
/// User pins survive resets; auto pins do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinSource {
    Auto,
    User,
}

impl PinSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PinSource::Auto => "auto",
            PinSource::User => "user",
        }
    }
}

/// One session record.
///
/// On disk (`sessions.json`, keyed by id) the fields are spelled as OpenClaw's
/// session store spells them (`providerOverride`, `modelOverride`,
/// `authProfileOverride`, `…Source`, `updatedAt`, epoch ms); fields Backstop
/// does not know are kept in [`Session::extra`] and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The session id (the key in the file, not a field of the record).
    #[serde(skip)]
    pub id: String,
    /// Provider id of the model pin (`openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_override: Option<String>,
    /// Model id of the model pin, within `provider_override` (`gpt-4o`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override: Option<String>,
    /// Auth profile name pinned for the session (`work`).
    #[serde(
        default,
        rename = "authProfileOverride",
        skip_serializing_if = "Option::is_none"
    )]
    pub profile_override: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override_source: Option<PinSource>,
    #[serde(
        default,
        rename = "authProfileOverrideSource",
        skip_serializing_if = "Option::is_none"
    )]
    pub profile_override_source: Option<PinSource>,
    /// The one-line notice of the fallback now in effect
    /// (`switched to openai/gpt-4o (anthropic/claude-opus-4-5 rate limited)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_notice: Option<String>,
    #[serde(default, rename = "createdAt")]
    pub created_at_ms: u64,
    #[serde(default, rename = "updatedAt")]
    pub updated_at_ms: u64,
    #[serde(default, rename = "lastUsedAt")]
    pub last_used_ms: u64,
    /// Fields of the file record that Backstop does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Session {
    /// An empty session (no pins, zero times: the store stamps them when it is written).
    pub fn new(id: impl Into<String>) -> Self {
        Session {
            id: id.into(),
            provider_override: None,
            model_override: None,
            profile_override: None,
            model_override_source: None,
            profile_override_source: None,
            fallback_notice: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            last_used_ms: 0,
            extra: Map::new(),
        }
    }

    /// The pinned model as `provider/model`, when both halves are set.
    ///
    /// ```
    /// use backstop::state::session::Session;
    /// let mut s = Session::new("s1");
    /// s.provider_override = Some("openai".into());
    /// s.model_override = Some("gpt-4o".into());
    /// assert_eq!(s.model_ref().unwrap().to_string(), "openai/gpt-4o");
    /// ```
    pub fn model_ref(&self) -> Option<ModelRef> {
        Some(ModelRef {
            provider: self.provider_override.clone()?,
            model: self.model_override.clone()?,
        })
    }

    /// The model pin is the user's.
    pub fn user_model_pin(&self) -> bool {
        self.model_override_source == Some(PinSource::User)
    }

    /// The profile pin is the user's.
    pub fn user_profile_pin(&self) -> bool {
        self.profile_override_source == Some(PinSource::User)
    }

    pub fn has_user_pins(&self) -> bool {
        self.user_model_pin() || self.user_profile_pin()
    }

    /// Drop every pin that is not the user's and the fallback notice (a pin
    /// without a source counts as automatic). What a reset does.
    pub fn drop_auto_pins(&mut self) {
        if !self.user_model_pin() {
            self.provider_override = None;
            self.model_override = None;
            self.model_override_source = None;
        }
        if !self.user_profile_pin() {
            self.profile_override = None;
            self.profile_override_source = None;
        }
        self.fallback_notice = None;
    }

    /// Idle for longer than `ttl_ms` at `now_ms`.
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_used_ms) > ttl_ms
    }
}

/// What [`SessionStore::reset`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ResetOutcome {
    /// There was no such session.
    NotFound,
    /// Auto pins dropped and no user pin was left: the session is gone.
    Removed,
    /// Auto pins dropped; the user pins remain in this session.
    Kept(Box<Session>),
}

/// What one pass of [`SessionStore::prune`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Idle for longer than the TTL.
    pub expired: usize,
    /// Least recently used, dropped to fit the disk budget.
    pub evicted: usize,
}

/// A store's budget and idle TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Budget for the serialized store (`sessions.json`), in bytes.
    pub max_bytes: u64,
    /// Sessions unused for longer than this are dropped.
    pub ttl_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_bytes: StateConfig::DEFAULT_MAX_BYTES,
            ttl_ms: StateConfig::DEFAULT_SESSION_TTL_MS,
        }
    }
}

impl SessionLimits {
    /// `state.max_bytes` (default 8 MiB) and `state.session_ttl_ms` (default 7 days).
    pub fn from_config(state: &StateConfig) -> Self {
        SessionLimits {
            max_bytes: state.session_max_bytes(),
            ttl_ms: state.session_ttl_ms,
        }
    }
}

/// The gateway's session store: shared through Redis when `state.redis_url` is set
/// ([`crate::state::redis::RedisSessionStore`], started in the background; needs a tokio
/// runtime), else `<state.dir>/sessions.json` ([`FileSessionStore`]).
pub fn open_store(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<dyn SessionStore>, String> {
    let limits = SessionLimits::from_config(&config.state);
    match &config.state.redis_url {
        #[cfg(feature = "redis")]
        Some(url) => {
            use crate::state::redis::{RedisOptions, RedisSessionStore};
            let store = RedisSessionStore::start(url, clock, limits, RedisOptions::default())
                .map_err(|e| e.to_string())?;
            tracing::info!(redis = %store.redacted_url(), "sessions shared through Redis");
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            let _ = (clock, limits);
            Err("state.redis_url is set, but this build has no Redis support (cargo feature \"redis\")".into())
        }
        None => {
            let store = FileSessionStore::open(config.state.dir.clone(), limits, clock)
                .map_err(|e| format!("state.dir: session store: {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// Is `id` a valid session id: 1..=128 characters of `[A-Za-z0-9._:-]`?
/// The message says what is wrong.
///
/// ```
/// use backstop::state::session::check_id;
/// assert!(check_id("chat-42:main").is_ok());
/// assert!(check_id("no spaces").is_err());
/// ```
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("session id is empty; use 1 to 128 characters of A-Z a-z 0-9 . _ : -".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "session id is {} characters long; the limit is {MAX_ID_LEN}",
            id.chars().count()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "session id {id:?} contains {c:?}; use only A-Z a-z 0-9 . _ : -"
        ));
    }
    Ok(())
}

/// Where sessions live. See the module docs.
///
/// Every method is one short critical section; none blocks on I/O or is held
/// across an await. A session idle for longer than the store's TTL reads as
/// missing. Only [`SessionStore::get`], [`SessionStore::touch`],
/// [`SessionStore::modify`] and the bookkeeping methods are required; the rest
/// are built on `modify`.
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The session, if it exists and has not expired.
    fn get(&self, id: &str) -> Option<Session>;

    /// Mark the session used now (for the TTL and LRU eviction) and return it.
    /// Does not create one, and does not change `updated_at`.
    fn touch(&self, id: &str) -> Option<Session>;

    /// The one primitive: atomically read-modify-write session `id`.
    ///
    /// `f` sees the current session (`None` if missing or expired) and may
    /// change it, create it (`Some(Session::new(id))`) or remove it (`None`).
    /// If the result differs from what `f` saw, the store writes it, stamping
    /// `updated_at` and `last_used` (and `created_at` for a new one). Returns
    /// the session after. `f` may run more than once (an optimistic backend,
    /// e.g. Redis `WATCH`/`MULTI`, retries on conflict), so it must compute
    /// its result from what it is given.
    fn modify(&self, id: &str, f: &mut dyn FnMut(&mut Option<Session>)) -> Option<Session>;

    /// Sessions held now (expired ones included until the next prune).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the serialized store in bytes (for a file store: the last file written; for
    /// the Redis store: its replica at the last resync).
    fn bytes(&self) -> u64;

    /// Sessions evicted to fit the disk budget since the store was opened.
    fn evictions(&self) -> u64;

    /// Drop expired sessions, and evict the least recently used until the
    /// serialized store fits the budget. The file store runs this before every
    /// write; with a memory store, call it now and then.
    fn prune(&self) -> PruneReport;

    /// What kind of store this is and whether it reaches its backend now.
    fn info(&self) -> crate::state::StoreInfo {
        crate::state::StoreInfo::memory()
    }

    /// Change a session under the store's lock, creating it if missing.
    /// Returns the session after.
    ///
    /// ```
    /// use backstop::clock::ManualClock;
    /// use backstop::state::session::{MemorySessionStore, PinSource, SessionStore};
    /// use std::sync::Arc;
    /// let store = MemorySessionStore::new(Arc::new(ManualClock::new(1_000)), Default::default());
    /// let s = store.update("s1", &mut |s| {
    ///     s.profile_override = Some("work".into());
    ///     s.profile_override_source = Some(PinSource::User);
    /// });
    /// assert_eq!(s.updated_at_ms, 1_000);
    /// assert_eq!(store.get("s1").unwrap().profile_override.as_deref(), Some("work"));
    /// ```
    fn update(&self, id: &str, f: &mut dyn FnMut(&mut Session)) -> Session {
        self.modify(id, &mut |slot| {
            f(slot.get_or_insert_with(|| Session::new(id)))
        })
        // `modify` returns what the closure left: always a session here.
        .unwrap_or_else(|| Session::new(id))
    }

    /// Reset: drop the auto pins and the fallback notice, keep the user pins.
    /// A session with no user pin left is removed.
    fn reset(&self, id: &str) -> ResetOutcome {
        let mut outcome = ResetOutcome::NotFound;
        let after = self.modify(id, &mut |slot| {
            outcome = ResetOutcome::NotFound;
            let Some(s) = slot else { return };
            s.drop_auto_pins();
            if s.has_user_pins() {
                outcome = ResetOutcome::Kept(Box::new(s.clone()));
            } else {
                *slot = None;
                outcome = ResetOutcome::Removed;
            }
        });
        match (outcome, after) {
            // Report the stamped session, not the one before stamping.
            (ResetOutcome::Kept(_), Some(s)) => ResetOutcome::Kept(Box::new(s)),
            (o, _) => o,
        }
    }

    /// Remove the session whatever its pins. True if it existed.
    fn delete(&self, id: &str) -> bool {
        let mut existed = false;
        self.modify(id, &mut |slot| {
            existed = slot.take().is_some();
        });
        existed
    }

    /// Apply the engine's write to the fields it names, creating the session if
    /// needed, and return what to undo it with. A user pin is never replaced by
    /// an automatic one: fields of a user-pinned group are left out of the
    /// write unless it sets that group's source to [`PinSource::User`].
    /// [`PinUndo::wrote`] holds what was really written.
    fn write_pins(&self, id: &str, write: &PinWrite) -> PinUndo {
        let mut undo = PinUndo::default();
        self.modify(id, &mut |slot| {
            let s = slot.get_or_insert_with(|| Session::new(id));
            undo = write.apply(s);
        });
        undo
    }

    /// Narrow rollback: for each field in `wrote`, put back its value from
    /// `previous` — but only if the field still holds what was written. A field
    /// someone changed in between (a user pin, another request's fallback) is
    /// left alone. A session that is gone (reset, deleted, expired) is not
    /// recreated. Returns the names of the restored fields.
    ///
    /// ```
    /// use backstop::clock::ManualClock;
    /// use backstop::state::session::{MemorySessionStore, PinSource, PinWrite, SessionStore};
    /// use std::sync::Arc;
    /// let store = MemorySessionStore::new(Arc::new(ManualClock::new(0)), Default::default());
    /// // The engine fails over to openai/gpt-4o and pins it, with a notice …
    /// let undo = store.write_pins(
    ///     "s1",
    ///     &PinWrite::new().model("openai", "gpt-4o", PinSource::Auto).notice("switched to openai/gpt-4o"),
    /// );
    /// // … meanwhile the user pins a profile and clears the notice by hand …
    /// store.update("s1", &mut |s| {
    ///     s.fallback_notice = None;
    ///     s.profile_override = Some("work".into());
    ///     s.profile_override_source = Some(PinSource::User);
    /// });
    /// // … and the attempt fails: only the fields still holding the engine's values go back.
    /// let restored = store.restore_if_unchanged("s1", &undo.wrote, &undo.previous);
    /// assert_eq!(restored, ["provider_override", "model_override", "model_override_source"]);
    /// let s = store.get("s1").unwrap();
    /// assert_eq!(s.model_ref(), None);
    /// assert_eq!(s.profile_override.as_deref(), Some("work"));
    /// ```
    fn restore_if_unchanged(
        &self,
        id: &str,
        wrote: &PinWrite,
        previous: &PinWrite,
    ) -> Vec<&'static str> {
        let mut restored = Vec::new();
        self.modify(id, &mut |slot| {
            restored = match slot {
                Some(s) => pins::restore(s, wrote, previous),
                None => Vec::new(),
            };
        });
        restored
    }

    /// [`SessionStore::restore_if_unchanged`] with a [`PinUndo`].
    fn rollback(&self, id: &str, undo: &PinUndo) -> Vec<&'static str> {
        self.restore_if_unchanged(id, &undo.wrote, &undo.previous)
    }
}

#[cfg(test)]
mod tests;
