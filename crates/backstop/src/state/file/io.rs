//! The disk side: the sidecar lock, atomic replacement, moving a corrupt file aside.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The state file's name inside `state.dir`.
pub const STATE_FILE: &str = "auth-state.json";

/// Where a store's files live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub lock: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
            file: dir.join(STATE_FILE),
            lock: dir.join(format!("{STATE_FILE}.lock")),
        }
    }
}

/// Identity of the file's current version: a change in any of these means someone wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }

    /// The stamp of the file at `path` now, `None` when it does not exist.
    pub fn read(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }
}

/// The cross-process lock, held until dropped. Blocks until it is ours: there is never a
/// write without it.
#[derive(Debug)]
pub struct Locked(File);

impl Locked {
    pub fn take(paths: &Paths) -> io::Result<Locked> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let f = opts.open(&paths.lock)?;
        f.lock()?;
        Ok(Locked(f))
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first is explicit.
        let _ = self.0.unlock();
    }
}

/// What reading the state file gave.
pub enum Read {
    Missing,
    Text(String),
    /// Could not be read (permissions, not UTF-8, an I/O error).
    Unreadable(String),
}

pub fn read(paths: &Paths) -> Read {
    match fs::read(&paths.file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Read::Text(s),
            Err(_) => Read::Unreadable("not UTF-8".into()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Unreadable(e.to_string()),
    }
}

/// Replace the state file with `bytes`: temp file in the same dir, fsync, rename over,
/// fsync the dir. Call with the lock held. Returns the new file's stamp.
pub fn write_atomic(paths: &Paths, bytes: &[u8]) -> io::Result<Stamp> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = paths.dir.join(format!(
        ".{STATE_FILE}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let stamp = Stamp::of(&f.metadata()?);
        drop(f);
        fs::rename(&tmp, &paths.file)?;
        sync_dir(&paths.dir)?;
        Ok(stamp)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Move a corrupt state file aside as `auth-state.json.corrupt-<epoch ms>`. Returns where.
pub fn move_aside(paths: &Paths) -> io::Result<PathBuf> {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut target = paths.dir.join(format!("{STATE_FILE}.corrupt-{ms}"));
    let mut n = 1;
    while target.exists() {
        target = paths.dir.join(format!("{STATE_FILE}.corrupt-{ms}-{n}"));
        n += 1;
    }
    fs::rename(&paths.file, &target)?;
    Ok(target)
}

/// Remove temp files a killed writer left behind (older than a minute, so a live
/// writer's file is never touched).
pub fn remove_stale_temps(paths: &Paths) {
    let Ok(entries) = fs::read_dir(&paths.dir) else {
        return;
    };
    let prefix = format!(".{STATE_FILE}.");
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Create the state dir (mode 0700 on unix) if it is missing.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
