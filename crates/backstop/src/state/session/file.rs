//! [`FileSessionStore`]: sessions in memory, persisted to `<state.dir>/sessions.json`.
//!
//! The hot path never waits on the disk: a change only flags the store dirty
//! and wakes a writer thread, which waits up to a second to batch further
//! changes, prunes (TTL, then the `state.max_bytes` budget), and writes the
//! whole file atomically — temp file, fsync, rename, fsync of the directory —
//! under an exclusive lock on the sidecar `sessions.json.lock`. A corrupt file
//! is moved aside as `sessions.json.corrupt-<ms>` with a warning and the store
//! starts empty.

use super::memory::MemorySessionStore;
use super::{PruneReport, Session, SessionLimits, SessionStore};
use crate::clock::Clock;
use crate::sync::lock;
use serde_json::{Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The file name inside `state.dir`.
pub const FILE_NAME: &str = "sessions.json";
/// How long the writer waits to batch changes before writing.
const BATCH: Duration = Duration::from_secs(1);
/// How long the writer waits before trying again after a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// Sessions in memory, written to `<dir>/sessions.json` in the background.
///
/// ```
/// use backstop::clock::SystemClock;
/// use backstop::state::session::{FileSessionStore, PinSource, PinWrite, SessionStore};
/// use std::sync::Arc;
/// let dir = std::env::temp_dir().join(format!("backstop-doc-sessions-{}", std::process::id()));
/// let store = FileSessionStore::open(&dir, Default::default(), Arc::new(SystemClock)).unwrap();
/// store.write_pins("s1", &PinWrite::new().profile("work", PinSource::User));
/// store.flush_now().unwrap(); // tests and shutdown; otherwise within a second
/// drop(store);
/// let again = FileSessionStore::open(&dir, Default::default(), Arc::new(SystemClock)).unwrap();
/// assert_eq!(again.get("s1").unwrap().profile_override.as_deref(), Some("work"));
/// # drop(again);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct FileSessionStore {
    shared: Arc<Shared>,
    tx: Sender<Signal>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    mem: MemorySessionStore,
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    /// Size of the file last read or written.
    bytes: AtomicU64,
    /// A change is waiting for the writer (and the writer has been woken).
    pending: AtomicBool,
    /// One write at a time in this process (the lock file covers other processes).
    write_lock: Mutex<()>,
}

#[derive(Debug)]
enum Signal {
    Dirty,
    Shutdown,
}

impl FileSessionStore {
    /// Open (or create) `<dir>/sessions.json` and start the writer.
    ///
    /// Fails only when the directory cannot be created, the lock file cannot be
    /// opened, or the file exists but cannot be read; a corrupt file is moved aside.
    pub fn open(
        dir: impl Into<PathBuf>,
        limits: SessionLimits,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| context(e, "cannot create", &dir))?;
        let path = dir.join(FILE_NAME);
        let lock_path = dir.join(format!("{FILE_NAME}.lock"));
        let mem = MemorySessionStore::new(clock, limits);
        let bytes = {
            let lock = open_lock(&lock_path)?;
            lock.lock()
                .map_err(|e| context(e, "cannot lock", &lock_path))?;
            read(&path, &mem)?
        };
        let shared = Arc::new(Shared {
            mem,
            dir,
            path,
            lock_path,
            bytes: AtomicU64::new(bytes),
            pending: AtomicBool::new(false),
            write_lock: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("backstop-sessions".into())
            .spawn(move || run_writer(&for_writer, &rx))?;
        Ok(FileSessionStore {
            shared,
            tx,
            writer: Some(writer),
        })
    }

    /// Prune and write the file now, without waiting for the writer.
    pub fn flush_now(&self) -> io::Result<PruneReport> {
        self.shared.flush()
    }

    /// `<dir>/sessions.json`.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn dirty(&self) {
        if !self.shared.pending.swap(true, Ordering::AcqRel) {
            // The writer only stops after Drop sends Shutdown, so this cannot fail before.
            let _ = self.tx.send(Signal::Dirty);
        }
    }
}

impl Drop for FileSessionStore {
    fn drop(&mut self) {
        let _ = self.tx.send(Signal::Shutdown);
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("the session writer thread panicked");
        }
    }
}

impl SessionStore for FileSessionStore {
    fn get(&self, id: &str) -> Option<Session> {
        self.shared.mem.get(id)
    }

    fn touch(&self, id: &str) -> Option<Session> {
        let s = self.shared.mem.touch(id);
        if s.is_some() {
            self.dirty();
        }
        s
    }

    fn modify(&self, id: &str, f: &mut dyn FnMut(&mut Option<Session>)) -> Option<Session> {
        let s = self.shared.mem.modify(id, f);
        self.dirty();
        s
    }

    fn len(&self) -> usize {
        self.shared.mem.len()
    }

    fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    fn evictions(&self) -> u64 {
        self.shared.mem.evictions()
    }

    fn prune(&self) -> PruneReport {
        let report = self.shared.mem.prune();
        if report != PruneReport::default() {
            self.dirty();
        }
        report
    }

    fn info(&self) -> crate::state::StoreInfo {
        crate::state::StoreInfo {
            kind: "file",
            connected: true,
            location: Some(self.shared.path.display().to_string()),
        }
    }
}

impl Shared {
    fn flush(&self) -> io::Result<PruneReport> {
        let _one = lock(&self.write_lock);
        // Changes from here on wake the writer again.
        self.pending.store(false, Ordering::Release);
        let (text, report) = self.mem.prune_encode();
        match write_atomic(&self.dir, &self.path, &self.lock_path, text.as_bytes()) {
            Ok(()) => {
                self.bytes.store(text.len() as u64, Ordering::Relaxed);
                Ok(report)
            }
            Err(e) => {
                self.pending.store(true, Ordering::Release);
                Err(e)
            }
        }
    }
}

/// Wait for a change, give more changes up to [`BATCH`] to arrive, write; until shutdown.
fn run_writer(shared: &Shared, rx: &Receiver<Signal>) {
    let mut failed = false;
    loop {
        let first = if failed {
            match rx.recv_timeout(RETRY) {
                Ok(s) => Ok(s),
                Err(RecvTimeoutError::Timeout) => Ok(Signal::Dirty),
                Err(RecvTimeoutError::Disconnected) => Err(()),
            }
        } else {
            rx.recv().map_err(|_| ())
        };
        let mut stop = !matches!(first, Ok(Signal::Dirty));
        if !stop {
            let deadline = Instant::now() + BATCH;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(Signal::Dirty) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Ok(Signal::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
        }
        if !stop || failed || shared.pending.load(Ordering::Acquire) {
            failed = match shared.flush() {
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(
                        path = %shared.path.display(),
                        "cannot write the session store: {e}; retrying in {}s",
                        RETRY.as_secs()
                    );
                    true
                }
            };
        }
        if stop {
            return;
        }
    }
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn open_lock(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).read(true).write(true).truncate(false);
    private(&mut o);
    o.open(path).map_err(|e| context(e, "cannot open", path))
}

/// Session files are readable by their owner only.
#[cfg(unix)]
fn private(o: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o600);
}

#[cfg(not(unix))]
fn private(_: &mut OpenOptions) {}

/// Load `path` into `mem`; returns the file's size. A file that is not a JSON
/// object is moved aside; entries that are not sessions are skipped, with the
/// whole file copied aside first so nothing is lost.
fn read(path: &Path, mem: &MemorySessionStore) -> io::Result<u64> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(context(e, "cannot read", path)),
    };
    let aside = || {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".corrupt-{}", mem.now_ms()));
        PathBuf::from(name)
    };
    let map: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            let to = aside();
            match fs::rename(path, &to) {
                Ok(()) => tracing::warn!(
                    "{} is not a JSON object of sessions ({e}); moved it to {} and starting with no sessions",
                    path.display(),
                    to.display()
                ),
                Err(re) => tracing::warn!(
                    "{} is not a JSON object of sessions ({e}) and could not be moved aside ({re}); starting with no sessions",
                    path.display()
                ),
            }
            return Ok(0);
        }
    };
    let mut sessions = Vec::with_capacity(map.len());
    let mut bad = Vec::new();
    for (id, v) in map {
        match serde_json::from_value::<Session>(v) {
            Ok(mut s) => {
                s.id = id;
                sessions.push(s);
            }
            Err(e) => bad.push(format!("{id:?}: {e}")),
        }
    }
    if !bad.is_empty() {
        let to = aside();
        let copied = fs::copy(path, &to).is_ok();
        tracing::warn!(
            "{}: skipped {} entries that are not sessions ({}){}",
            path.display(),
            bad.len(),
            bad.join("; "),
            if copied {
                format!("; the original is kept as {}", to.display())
            } else {
                String::new()
            }
        );
    }
    let expired = mem.load(sessions);
    if expired > 0 {
        tracing::debug!(expired, "sessions: dropped idle sessions past the TTL");
    }
    Ok(bytes.len() as u64)
}

/// Write `bytes` to `path` so that a crash at any instant leaves either the old
/// or the new file: temp file, fsync, rename, fsync the directory; under the lock.
fn write_atomic(dir: &Path, path: &Path, lock_path: &Path, bytes: &[u8]) -> io::Result<()> {
    let lock = open_lock(lock_path)?;
    lock.lock()
        .map_err(|e| context(e, "cannot lock", lock_path))?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut o = OpenOptions::new();
        o.create(true).write(true).truncate(true);
        private(&mut o);
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| context(e, "cannot write", path))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> io::Result<()> {
    Ok(())
}
