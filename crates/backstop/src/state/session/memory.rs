//! The in-process [`SessionStore`]: one short `Mutex` over a map, no I/O.
//! The file store keeps its sessions in one of these.

use super::{PruneReport, Session, SessionLimits, SessionStore};
use crate::clock::Clock;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Sessions in memory.
///
/// ```
/// use backstop::clock::ManualClock;
/// use backstop::state::session::{MemorySessionStore, ResetOutcome, PinSource, PinWrite, SessionStore};
/// use std::sync::Arc;
/// let store = MemorySessionStore::new(Arc::new(ManualClock::new(0)), Default::default());
/// store.write_pins("s1", &PinWrite::new().profile("work", PinSource::Auto));
/// assert!(store.get("s1").is_some());
/// assert_eq!(store.reset("s1"), ResetOutcome::Removed); // only an auto pin: gone
/// assert!(store.get("s1").is_none());
/// ```
#[derive(Debug)]
pub struct MemorySessionStore {
    clock: Arc<dyn Clock>,
    limits: SessionLimits,
    sessions: Mutex<HashMap<String, Session>>,
    evictions: AtomicU64,
}

impl MemorySessionStore {
    pub fn new(clock: Arc<dyn Clock>, limits: SessionLimits) -> Self {
        MemorySessionStore {
            clock,
            limits,
            sessions: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Put sessions read from disk back, as they were (no stamping); expired
    /// ones are skipped. Returns how many were skipped.
    pub(crate) fn load(&self, sessions: Vec<Session>) -> usize {
        let now = self.now_ms();
        let mut map = lock(&self.sessions);
        let mut expired = 0;
        for s in sessions {
            if s.expired(now, self.limits.ttl_ms) {
                expired += 1;
            } else {
                map.insert(s.id.clone(), s);
            }
        }
        expired
    }

    /// Put one session as it is (no stamping), replacing any with its id.
    pub(crate) fn put(&self, s: Session) {
        lock(&self.sessions).insert(s.id.clone(), s);
    }

    /// Drop one session without a trace (no stamping, no eviction count).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// Every session held (expired ones too, until pruned).
    pub(crate) fn all(&self) -> Vec<Session> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// Drop expired sessions, evict the least recently used beyond the budget,
    /// and return the serialized store (the text of `sessions.json`).
    pub(super) fn prune_encode(&self) -> (String, PruneReport) {
        let (text, report, _) = self.prune_evict();
        (text, report)
    }

    /// [`MemorySessionStore::prune_encode`], also returning the evicted sessions as
    /// they were (a shared store evicts them there too, unless used meanwhile).
    pub(crate) fn prune_evict(&self) -> (String, PruneReport, Vec<Session>) {
        let now = self.now_ms();
        let ttl = self.limits.ttl_ms;
        let (sessions, expired) = {
            let mut map = lock(&self.sessions);
            let before = map.len();
            map.retain(|_, s| !s.expired(now, ttl));
            let expired = before - map.len();
            (map.values().cloned().collect::<Vec<_>>(), expired)
        };
        // Serialize outside the lock; then evict what did not fit, unless it
        // was used or changed meanwhile (the next write decides again).
        let (text, victims) = encode(sessions, self.limits.max_bytes);
        let mut evicted = Vec::new();
        if !victims.is_empty() {
            let mut map = lock(&self.sessions);
            for v in victims {
                let unchanged = map.get(&v.id).is_some_and(|s| {
                    s.last_used_ms == v.last_used_ms && s.updated_at_ms == v.updated_at_ms
                });
                if unchanged {
                    map.remove(&v.id);
                    evicted.push(v);
                }
            }
        }
        if !evicted.is_empty() {
            self.evictions
                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            tracing::info!(
                evicted = evicted.len(),
                max_bytes = self.limits.max_bytes,
                "sessions: evicted {} least recently used to fit state.max_bytes",
                evicted.len()
            );
            let ids: Vec<&str> = evicted.iter().map(|s| s.id.as_str()).collect();
            tracing::debug!(?ids, "sessions evicted");
        }
        if expired > 0 {
            tracing::debug!(expired, "sessions: dropped idle sessions past the TTL");
        }
        let report = PruneReport {
            expired,
            evicted: evicted.len(),
        };
        (text, report, evicted)
    }
}

/// Serialize sessions as a JSON object keyed by id, most recently used first,
/// one session per line, keeping as many as fit in `max_bytes` (the whole
/// text). Returns the text and the sessions that did not fit: once one does
/// not fit, every less recently used one is out too.
pub(super) fn encode(mut sessions: Vec<Session>, max_bytes: u64) -> (String, Vec<Session>) {
    sessions.sort_by(|a, b| {
        b.last_used_ms
            .cmp(&a.last_used_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    const END: usize = 3; // "\n}\n", or "}\n" plus the "\n" an entry would have added
    let mut text = String::from("{");
    let mut kept = 0usize;
    let mut left_out = Vec::new();
    for s in sessions {
        if !left_out.is_empty() {
            left_out.push(s);
            continue;
        }
        let (Ok(key), Ok(value)) = (serde_json::to_string(&s.id), serde_json::to_string(&s)) else {
            // Plain strings and numbers always serialize; nothing to keep if not.
            continue;
        };
        let start = text.len();
        text.push_str(if kept == 0 { "\n  " } else { ",\n  " });
        text.push_str(&key);
        text.push_str(": ");
        text.push_str(&value);
        if (text.len() + END) as u64 > max_bytes {
            text.truncate(start);
            left_out.push(s);
        } else {
            kept += 1;
        }
    }
    text.push_str(if kept == 0 { "}\n" } else { "\n}\n" });
    (text, left_out)
}

impl SessionStore for MemorySessionStore {
    fn get(&self, id: &str) -> Option<Session> {
        let now = self.now_ms();
        lock(&self.sessions)
            .get(id)
            .filter(|s| !s.expired(now, self.limits.ttl_ms))
            .cloned()
    }

    fn touch(&self, id: &str) -> Option<Session> {
        let now = self.now_ms();
        let mut map = lock(&self.sessions);
        let s = map.get_mut(id)?;
        if s.expired(now, self.limits.ttl_ms) {
            return None;
        }
        s.last_used_ms = s.last_used_ms.max(now);
        Some(s.clone())
    }

    fn modify(&self, id: &str, f: &mut dyn FnMut(&mut Option<Session>)) -> Option<Session> {
        let now = self.now_ms();
        let mut map = lock(&self.sessions);
        let current = map
            .get(id)
            .filter(|s| !s.expired(now, self.limits.ttl_ms))
            .cloned();
        let mut next = current.clone();
        f(&mut next);
        match next {
            None => {
                map.remove(id);
                None
            }
            Some(s) if current.as_ref() == Some(&s) => Some(s),
            Some(mut s) => {
                s.id = id.to_string();
                if current.is_none() {
                    s.created_at_ms = now;
                }
                s.updated_at_ms = now;
                s.last_used_ms = now;
                map.insert(id.to_string(), s.clone());
                Some(s)
            }
        }
    }

    fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn bytes(&self) -> u64 {
        let now = self.now_ms();
        let sessions: Vec<Session> = lock(&self.sessions)
            .values()
            .filter(|s| !s.expired(now, self.limits.ttl_ms))
            .cloned()
            .collect();
        encode(sessions, u64::MAX).0.len() as u64
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn prune(&self) -> PruneReport {
        self.prune_encode().1
    }
}
