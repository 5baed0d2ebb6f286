//! Where the state commands read and write when no gateway answers: the state dir
//! (`auth-state.json`, under its lock), or — when the config sets `state.redis_url` —
//! the shared Redis every gateway instance uses.

use crate::gateway::Target;
use anyhow::{Context, Result, anyhow};
use backstop::clock::{Clock, SystemClock};
use backstop::state::file::{self, StateView};
use backstop::state::{FileStore, StateStore};
use std::sync::Arc;

/// The config's `state.redis_url`, if any.
fn redis_url(target: &Target) -> Option<&str> {
    target.config.as_ref()?.state.redis_url.as_deref()
}

/// Every breaker and usage time, and where they came from.
pub fn read(target: &Target) -> Result<(StateView, String)> {
    if let Some(url) = redis_url(target) {
        return with_redis(url, |store| {
            let view = StateView {
                scopes: store.snapshot(SystemClock.now_ms()),
                usage: store.usage(),
                warnings: Vec::new(),
            };
            (view, format!("redis {}", store.redacted_url()))
        });
    }
    let view = file::read_state(&target.state_dir, SystemClock.now_ms())?;
    for w in &view.warnings {
        eprintln!(
            "warning: {}: {w}",
            file::state_file(&target.state_dir).display()
        );
    }
    Ok((view, format!("state dir {}", target.state_dir.display())))
}

/// Change the state with `f` (on Redis, or on the state dir under its lock, written
/// before returning); `f` also gets where the state lives, for its messages.
pub fn change<T>(target: &Target, f: impl FnOnce(&dyn StateStore, &str) -> T) -> Result<T> {
    if let Some(url) = redis_url(target) {
        return with_redis(url, |store| {
            let source = format!("redis {}", store.redacted_url());
            f(store, &source)
        });
    }
    let store = FileStore::open(&target.state_dir).map_err(|e| {
        anyhow!(
            "cannot open the state dir {}: {e}",
            target.state_dir.display()
        )
    })?;
    let out = f(&store, &format!("state dir {}", target.state_dir.display()));
    store.flush_now().map_err(|e| {
        anyhow!(
            "cannot write {}: {e}",
            file::state_file(&target.state_dir).display()
        )
    })?;
    Ok(out)
}

fn with_redis<T>(url: &str, f: impl FnOnce(&backstop::state::redis::RedisStore) -> T) -> Result<T> {
    use backstop::state::redis::{RedisOptions, RedisStore};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = RedisStore::connect_with(url, Arc::new(SystemClock), RedisOptions::default())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        if !store.is_ready() {
            let where_ = store.redacted_url().to_owned();
            store.shutdown().await;
            return Err(anyhow!(
                "no gateway answers, and Redis at {where_} (state.redis_url) cannot be reached"
            ));
        }
        let out = f(&store);
        // Every change reaches Redis before we return.
        store.shutdown().await;
        Ok(out)
    })
}
