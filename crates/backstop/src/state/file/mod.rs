//! [`FileStore`]: the embedded default store. Breakers and usage live in a
//! [`MemoryStore`] (the hot path never touches the disk) and are persisted to
//! `<state.dir>/auth-state.json` in the background.
//!
//! - **Shape**: OpenClaw's `auth-state.json`, plus a `backstop.scopes` section holding
//!   every breaker exactly; see [`doc`](self::doc) for the shape and how it is read.
//! - **Writes**: a mutation marks the store dirty; a flusher thread writes within
//!   [`FLUSH_DELAY`] of the first mark, batching whatever else happened meanwhile. Each
//!   write takes the sidecar lock `auth-state.json.lock` (std `File::lock`, blocking;
//!   never an unlocked write), re-reads the file, merges ([`merge`](self::merge) has the
//!   rule), writes a temp file, fsyncs, renames it over and fsyncs the dir. Memory then
//!   learns what the other processes wrote, so gateways sharing a dir converge.
//! - **Reads**: every [`POLL_INTERVAL`] the flusher checks whether the file changed
//!   (mtime, length, inode) and, if so, merges it in.
//! - **Bad files**: a corrupt or unreadable file is moved aside to
//!   `auth-state.json.corrupt-<epoch ms>` with a warning and the store starts clean; a
//!   file with wrong-typed or unknown-version fields is read as far as it is valid (see
//!   [`FileStore::warnings`]) and its unknown fields are kept.
//! - **`lastGood`** is derived from [`StateStore::mark_used`], which the engine calls on
//!   success only: per provider, the profile with the latest `lastUsed`.
//! - **Probe leases** stay in memory: two processes may each send one probe.

pub mod doc;
mod io;
pub mod merge;

pub use io::STATE_FILE;

use self::doc::{Doc, Usage};
use self::io::{Locked, Paths, Read, Stamp};
use self::merge::{Delta, Record, TOMBSTONE_TTL_MS, merge_scope};
use super::{Admission, BreakerSnapshot, MemoryStore, Penalty, Scope, StateStore};
use crate::clock::{Clock, SystemClock};
use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait between the first change and its write.
pub const FLUSH_DELAY: Duration = Duration::from_millis(200);
/// How often the file is checked for other processes' writes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Wait after a failed write before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The file-backed [`StateStore`]. See the module docs.
///
/// ```
/// use backstop::state::{FileStore, Scope, StateStore};
/// let dir = std::env::temp_dir().join(format!("backstop-doc-{}", std::process::id()));
/// let store = FileStore::open(&dir).unwrap();
/// store.mark_used("openai", "work", 1_000);
/// store.flush_now().unwrap();
/// let text = std::fs::read_to_string(dir.join("auth-state.json")).unwrap();
/// assert!(text.contains("\"lastGood\""));
/// # drop(store); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct FileStore {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    inner: MemoryStore,
    paths: Paths,
    clock: Arc<dyn Clock>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Serialises syncs in this process; holds the stamp of the file as we last saw it.
    io: Mutex<Option<Stamp>>,
    /// Set by `mark_used` without taking `pending` when already set.
    usage_dirty: AtomicBool,
    warnings: Mutex<Vec<String>>,
}

/// Changes not yet written.
#[derive(Debug, Default)]
struct Pending {
    scopes: HashMap<Scope, Delta>,
    clear_all_at: Option<u64>,
    /// When the oldest unwritten change was made.
    since: Option<Instant>,
    shutdown: bool,
}

/// What a sync does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Read the file and merge it in; write only if we have changes.
    Merge,
    /// Startup: read the file into memory, never write.
    Load,
}

impl FileStore {
    /// Open (creating the dir, mode 0700, if missing) the store in `dir`, on the system clock.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_with_clock(dir, Arc::new(SystemClock))
    }

    /// Open on a given clock: it times manual clears and tombstone expiry (the engine passes
    /// its own times for everything else).
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        io::create_dir(dir)?;
        let paths = Paths::new(dir);
        // Fails early when the dir is not writable.
        drop(Locked::take(&paths)?);
        io::remove_stale_temps(&paths);
        let shared = Arc::new(Shared {
            inner: MemoryStore::new(),
            paths,
            clock,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            io: Mutex::new(None),
            usage_dirty: AtomicBool::new(false),
            warnings: Mutex::new(Vec::new()),
        });
        shared.sync(Sync::Load)?;
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("backstop-state".into())
                .spawn(move || shared.run())?
        };
        Ok(FileStore {
            shared,
            flusher: Some(flusher),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.shared.paths.file
    }

    /// Write every pending change now (merging with the file, under the lock), and learn
    /// what other processes wrote.
    pub fn flush_now(&self) -> std::io::Result<()> {
        self.shared.sync(Sync::Merge)
    }

    /// What could not be read from the file so far, each naming its key path.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.shared.warnings).clone()
    }

    /// The in-memory store behind this one.
    pub fn memory(&self) -> &MemoryStore {
        &self.shared.inner
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        lock(&self.shared.pending).shutdown = true;
        self.shared.wake.notify_all();
        match self.flusher.take() {
            Some(h) => {
                let _ = h.join();
            }
            None => {
                let _ = self.shared.sync(Sync::Merge);
            }
        }
    }
}

impl Shared {
    /// Note a change to be written (called with `pending` held).
    fn mark(&self, p: &mut Pending) {
        if p.since.is_none() {
            p.since = Some(Instant::now());
            self.wake.notify_all();
        }
    }

    /// The flusher thread.
    fn run(&self) {
        let mut next_poll = Instant::now() + POLL_INTERVAL;
        let mut not_before = Instant::now();
        let mut last_error: Option<String> = None;
        loop {
            let mut p = lock(&self.pending);
            let (flush, shutdown) = loop {
                if p.shutdown {
                    break (true, true);
                }
                let now = Instant::now();
                let due = p.since.map(|s| (s + FLUSH_DELAY).max(not_before));
                if due.is_some_and(|d| d <= now) {
                    break (true, false);
                }
                if next_poll <= now {
                    break (false, false);
                }
                let until = due.map_or(next_poll, |d| d.min(next_poll));
                p = self
                    .wake
                    .wait_timeout(p, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            };
            drop(p);
            let result = if flush {
                self.sync(Sync::Merge)
            } else {
                next_poll = Instant::now() + POLL_INTERVAL;
                if self.changed_on_disk() {
                    self.sync(Sync::Merge)
                } else {
                    Ok(())
                }
            };
            match result {
                Ok(()) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(
                            file = %self.paths.file.display(),
                            "cannot write the state file (will retry): {msg}"
                        );
                    }
                    last_error = Some(msg);
                    not_before = Instant::now() + RETRY_DELAY;
                }
            }
            if shutdown {
                return;
            }
        }
    }

    fn changed_on_disk(&self) -> bool {
        *lock(&self.io) != Stamp::read(&self.paths.file)
    }

    /// Read the file, corrupt files moved aside (call with the lock held).
    fn read_file(&self) -> Doc {
        let text = match io::read(&self.paths) {
            Read::Missing => return Doc::default(),
            Read::Text(t) => Ok(t),
            Read::Unreadable(why) => Err(format!("unreadable: {why}")),
        };
        match text.and_then(|t| doc::parse(&t)) {
            Ok(d) => d,
            Err(why) => {
                match io::move_aside(&self.paths) {
                    Ok(to) => tracing::warn!(
                        file = %self.paths.file.display(),
                        moved_to = %to.display(),
                        "the state file is {why}; moved it aside and starting with clean state"
                    ),
                    Err(e) => tracing::warn!(
                        file = %self.paths.file.display(),
                        "the state file is {why} and could not be moved aside ({e}); starting with clean state"
                    ),
                }
                Doc::default()
            }
        }
    }

    fn sync(&self, mode: Sync) -> std::io::Result<()> {
        let mut seen = lock(&self.io);
        let (taken, clear_all_at) = {
            let mut p = lock(&self.pending);
            p.since = None;
            self.usage_dirty.store(false, Ordering::Release);
            (std::mem::take(&mut p.scopes), p.clear_all_at.take())
        };
        let result = self.sync_locked(mode, &taken, clear_all_at, &mut seen);
        if result.is_err() {
            // Put the changes back in front of whatever happened meanwhile.
            let mut p = lock(&self.pending);
            for (scope, older) in taken {
                let merged = match p.scopes.remove(&scope) {
                    Some(newer) => older.then(newer),
                    None => older,
                };
                p.scopes.insert(scope, merged);
            }
            p.clear_all_at = p.clear_all_at.max(clear_all_at);
            self.usage_dirty.store(true, Ordering::Release);
            self.mark(&mut p);
        }
        result
    }

    fn sync_locked(
        &self,
        mode: Sync,
        taken: &HashMap<Scope, Delta>,
        clear_all_at: Option<u64>,
        seen: &mut Option<Stamp>,
    ) -> std::io::Result<()> {
        let file_lock = Locked::take(&self.paths)?;
        let file = self.read_file();
        if !file.warnings.is_empty() {
            let mut w = lock(&self.warnings);
            for line in &file.warnings {
                if !w.contains(line) {
                    tracing::warn!(file = %self.paths.file.display(), "state file: {line}");
                    w.push(line.clone());
                }
            }
        }
        let now = self.clock.now_ms();
        let mut scopes = file.scopes.clone();
        if let Some(t) = clear_all_at {
            for rec in scopes.values_mut() {
                if rec.changed_at <= t {
                    *rec = Record::tombstone(t);
                }
            }
        }
        for (scope, delta) in taken {
            let local = self.inner.get(scope, now);
            let merged = merge_scope(scopes.get(scope), local.as_ref(), delta);
            scopes.insert(scope.clone(), merged);
        }
        scopes.retain(|_, r| {
            r.breaker.is_some() || r.changed_at.saturating_add(TOMBSTONE_TTL_MS) > now
        });
        let mut usage: Usage = file.usage.clone();
        for (provider, profile, t) in self.inner.usage() {
            let e = usage.entry((provider, profile)).or_insert(t);
            *e = (*e).max(t);
        }
        let changed = !taken.is_empty() || clear_all_at.is_some() || usage != file.usage;
        if mode == Sync::Merge && changed {
            let out = doc::render(&file.raw, &scopes, &usage, now);
            let bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(out))
                .map_err(std::io::Error::other)?;
            *seen = Some(io::write_atomic(&self.paths, &bytes)?);
        } else {
            *seen = Stamp::read(&self.paths.file);
        }
        drop(file_lock);
        self.learn(&scopes, &usage);
        Ok(())
    }

    /// Bring memory up to the merged state, except scopes changed here since the sync
    /// began (the next sync merges those).
    fn learn(&self, scopes: &BTreeMap<Scope, Record>, usage: &Usage) {
        let now = self.clock.now_ms();
        {
            let p = lock(&self.pending);
            if p.clear_all_at.is_none() {
                for (scope, rec) in scopes {
                    if p.scopes.contains_key(scope) {
                        continue;
                    }
                    match &rec.breaker {
                        Some(b) => {
                            let mut b = b.clone();
                            let local = self.inner.get(scope, now);
                            if local.as_ref().is_some_and(|l| same_breaker(l, &b)) {
                                continue;
                            }
                            b.probe_until_ms = local.and_then(|l| l.probe_until_ms);
                            self.inner.restore(scope.clone(), &b);
                        }
                        None => {
                            self.inner.clear(scope);
                        }
                    }
                }
                for (scope, _) in self.inner.snapshot(now) {
                    if !scopes.contains_key(&scope) && !p.scopes.contains_key(&scope) {
                        self.inner.clear(&scope);
                    }
                }
            }
        }
        for ((provider, profile), t) in usage {
            if self.inner.last_used(provider, profile) < Some(*t) {
                self.inner.restore_last_used(provider, profile, *t);
            }
        }
    }
}

/// Record a reset of `scope` at `at`, never dated before a change already pending.
fn reset_pending(p: &mut Pending, scope: &Scope, at: u64) {
    let at = p.scopes.get(scope).map_or(at, |d| at.max(d.changed_at));
    p.scopes.insert(scope.clone(), Delta::reset(at));
}

/// Equal but for the derived state and the probe lease.
fn same_breaker(a: &BreakerSnapshot, b: &BreakerSnapshot) -> bool {
    (
        a.reason,
        a.until_ms,
        a.consecutive,
        a.error_count,
        &a.failure_counts,
        a.last_failure_ms,
    ) == (
        b.reason,
        b.until_ms,
        b.consecutive,
        b.error_count,
        &b.failure_counts,
        b.last_failure_ms,
    )
}

impl StateStore for FileStore {
    fn admit(&self, scope: &Scope, now_ms: u64, probe_lease_ms: u64) -> Admission {
        self.shared.inner.admit(scope, now_ms, probe_lease_ms)
    }

    fn release_probe(&self, scope: &Scope) -> bool {
        self.shared.inner.release_probe(scope)
    }

    fn record_failure(&self, scope: &Scope, penalty: &Penalty, now_ms: u64) -> BreakerSnapshot {
        let s = &self.shared;
        let mut p = lock(&s.pending);
        let before = s.inner.get(scope, now_ms).map_or(0, |b| b.error_count);
        let after = s.inner.record_failure(scope, penalty, now_ms);
        let delta = p.scopes.entry(scope.clone()).or_default();
        if after.error_count == before.saturating_add(1) {
            delta.failure(penalty.reason, now_ms);
        } else {
            // The old failures aged out of the window: a fresh start.
            *delta = Delta {
                errors: after.error_count,
                counts: after.failure_counts.clone(),
                ..Delta::reset(now_ms)
            };
        }
        s.mark(&mut p);
        after
    }

    fn record_success(&self, scope: &Scope, now_ms: u64) -> bool {
        let s = &self.shared;
        if s.inner.get(scope, now_ms).is_none() {
            return false;
        }
        let mut p = lock(&s.pending);
        let closed = s.inner.record_success(scope, now_ms);
        if closed {
            reset_pending(&mut p, scope, now_ms);
            s.mark(&mut p);
        }
        closed
    }

    fn usable_at(&self, scope: &Scope, now_ms: u64) -> Option<u64> {
        self.shared.inner.usable_at(scope, now_ms)
    }

    fn has_breakers(&self) -> bool {
        self.shared.inner.has_breakers()
    }

    fn has_breakers_for(&self, provider: &str) -> bool {
        self.shared.inner.has_breakers_for(provider)
    }

    fn get(&self, scope: &Scope, now_ms: u64) -> Option<BreakerSnapshot> {
        self.shared.inner.get(scope, now_ms)
    }

    fn mark_used(&self, provider: &str, profile: &str, now_ms: u64) {
        let s = &self.shared;
        s.inner.mark_used(provider, profile, now_ms);
        if !s.usage_dirty.swap(true, Ordering::AcqRel) {
            let mut p = lock(&s.pending);
            s.mark(&mut p);
        }
    }

    fn last_used(&self, provider: &str, profile: &str) -> Option<u64> {
        self.shared.inner.last_used(provider, profile)
    }

    fn least_recently_used(
        &self,
        provider: &str,
        profiles: &mut dyn Iterator<Item = &str>,
    ) -> Option<usize> {
        self.shared.inner.least_recently_used(provider, profiles)
    }

    fn snapshot(&self, now_ms: u64) -> Vec<(Scope, BreakerSnapshot)> {
        self.shared.inner.snapshot(now_ms)
    }

    /// Clears the scope here and, on the next write, in the file (even when this process
    /// had not seen it yet). The clear is dated no earlier than just after the last failure
    /// this process knows of, so it supersedes what it cleared even across clock skew.
    fn clear(&self, scope: &Scope) -> bool {
        let s = &self.shared;
        let mut p = lock(&s.pending);
        let now = s.clock.now_ms();
        let seen = s.inner.get(scope, now).and_then(|b| b.last_failure_ms);
        let at = now.max(seen.map_or(0, |t| t.saturating_add(1)));
        let had = s.inner.clear(scope);
        reset_pending(&mut p, scope, at);
        s.mark(&mut p);
        had
    }

    fn clear_all(&self) {
        let s = &self.shared;
        let mut p = lock(&s.pending);
        let now = s.clock.now_ms();
        let seen = s
            .inner
            .snapshot(now)
            .iter()
            .filter_map(|(_, b)| b.last_failure_ms)
            .max();
        let now = now.max(seen.map_or(0, |t| t.saturating_add(1)));
        s.inner.clear_all();
        for d in p.scopes.values_mut() {
            *d = Delta::reset(now);
        }
        p.clear_all_at = Some(now);
        s.mark(&mut p);
    }

    fn info(&self) -> super::StoreInfo {
        super::StoreInfo {
            kind: "file",
            connected: true,
            location: Some(self.shared.paths.dir.display().to_string()),
        }
    }
}

/// The persisted state read without opening a store (nothing is created, locked or moved):
/// for `backstop cooldowns list` and `backstop status` when no gateway runs.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    /// Every breaker with history, sorted, its state as of `now_ms`.
    pub scopes: Vec<(Scope, BreakerSnapshot)>,
    /// `(provider, profile, last used ms)`, sorted.
    pub usage: Vec<(String, String, u64)>,
    pub warnings: Vec<String>,
}

/// Read `<dir>/auth-state.json`. A missing file is empty state; a corrupt one an error.
pub fn read_state(dir: &Path, now_ms: u64) -> std::io::Result<StateView> {
    let paths = Paths::new(dir);
    let text = match io::read(&paths) {
        Read::Missing => return Ok(StateView::default()),
        Read::Text(t) => t,
        Read::Unreadable(why) => {
            return Err(std::io::Error::other(format!(
                "{}: {why}",
                paths.file.display()
            )));
        }
    };
    let doc = doc::parse(&text).map_err(|why| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", paths.file.display()),
        )
    })?;
    let mem = MemoryStore::new();
    for (scope, rec) in doc.scopes {
        if let Some(b) = rec.breaker {
            mem.restore(scope, &b);
        }
    }
    Ok(StateView {
        scopes: mem.snapshot(now_ms),
        usage: doc
            .usage
            .into_iter()
            .map(|((prov, prof), t)| (prov, prof, t))
            .collect(),
        warnings: doc.warnings,
    })
}

/// The gateway's store: a [`FileStore`] in `dir`, or, when the dir cannot be created or
/// written, a [`MemoryStore`] with a warning (the gateway never refuses to start over it).
pub fn open_or_memory(dir: &Path) -> Arc<dyn StateStore> {
    match FileStore::open(dir) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                "cannot use the state dir ({e}); cooldowns are kept in memory only and will not survive a restart"
            );
            Arc::new(MemoryStore::new())
        }
    }
}

/// The state file for a state dir.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
