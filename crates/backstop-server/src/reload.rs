//! Hot reload: on SIGHUP and when the config file changes, load the config again and
//! swap it in atomically. A bad new config is rejected whole — its path-precise errors
//! logged — and the old one keeps serving; breaker state carries over
//! ([`crate::AppState::reload`]).
//!
//! The file is polled (mtime, length and a content hash every `interval`), which also
//! survives editors that save by rename and Kubernetes ConfigMap symlink swaps.

use crate::AppState;
use backstop::Config;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How a reload finds the config again.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What identifies a version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

fn fingerprint(path: &PathBuf) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        hash: h.finish(),
    })
}

/// Load and swap in; log the outcome. Returns whether the new config is live.
pub fn reload_now(state: &AppState, load: &Loader, why: &str) -> bool {
    match load() {
        Ok(config) => {
            let listen_changed = config.server.listen != state.config().server.listen;
            let warnings = config.warnings.clone();
            match state.reload(config) {
                Ok(()) => {
                    for w in warnings {
                        tracing::warn!("{w}");
                    }
                    if listen_changed {
                        tracing::warn!("server.listen changed: it takes effect on restart");
                    }
                    tracing::info!(trigger = why, "config reloaded");
                    true
                }
                Err(e) => {
                    tracing::error!(
                        trigger = why,
                        "config reload rejected, the old config keeps serving: {e}"
                    );
                    false
                }
            }
        }
        Err(e) => {
            tracing::error!(
                trigger = why,
                "config reload rejected, the old config keeps serving:\n{e}"
            );
            false
        }
    }
}

/// Reload on SIGHUP, and when `watch` changes (checked every `interval`).
pub fn spawn(
    state: Arc<AppState>,
    load: Loader,
    watch: Option<PathBuf>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last = watch.as_ref().and_then(fingerprint);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_fired = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fired = std::future::pending::<bool>();
            tokio::select! {
                fired = hup_fired => {
                    if fired {
                        reload_now(&state, &load, "SIGHUP");
                        last = watch.as_ref().and_then(fingerprint);
                    }
                }
                _ = tick.tick() => {
                    if let Some(path) = &watch {
                        let now = fingerprint(path);
                        // A file being replaced may be missing for a moment: wait for it.
                        if now.is_some() && now != last {
                            last = now;
                            reload_now(&state, &load, "file change");
                        }
                    }
                }
            }
        }
    })
}
