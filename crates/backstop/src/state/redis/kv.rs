//! [`RedisKv`]: a small async key-value helper over Redis for state that is not
//! on the hot path (sessions): JSON values with a TTL, and an atomic
//! compare-and-set (a Lua script) so concurrent writers never clobber each other.

use super::task::timed_out;
use super::{RedisStoreError, redact_url, scripts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a [`RedisKv`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored value is not valid JSON for this type: {0}")]
    Json(#[from] serde_json::Error),
    #[error("key {key:?} kept changing: gave up after {tries} tries")]
    Contended { key: String, tries: u32 },
}

/// How many compare-and-set rounds [`RedisKv::update_json`] tries before giving up.
const UPDATE_TRIES: u32 = 64;

/// Async get/set/compare-and-set of JSON values under a key prefix. Cheap to clone
/// (one multiplexed connection that reconnects itself); every call is bounded by a timeout.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use backstop::state::redis::RedisKv;
/// use std::time::Duration;
/// let kv = RedisKv::open("redis://127.0.0.1:6379", "backstop:session:")?;
/// let ttl = Some(Duration::from_secs(3_600));
/// kv.set_json("abc", &serde_json::json!({"profile_override": "work"}), ttl).await?;
/// // Atomic read-modify-write (retried if another instance changed it meanwhile).
/// let after = kv
///     .update_json("abc", ttl, |v: Option<serde_json::Value>| {
///         let mut v = v.unwrap_or_default();
///         v["model_override"] = "gpt-4o".into();
///         Some(v)
///     })
///     .await?;
/// assert_eq!(after.unwrap()["profile_override"], "work");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    prefix: String,
    url: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisKv {
    /// A helper for `url` whose keys all start with `prefix`. Connects lazily (Redis may be
    /// down now); needs a tokio runtime. Only a malformed URL fails.
    pub fn open(url: &str, prefix: &str) -> Result<RedisKv, RedisStoreError> {
        let redacted = redact_url(url);
        let bad = |source| RedisStoreError::Url {
            url: redacted.clone(),
            source,
        };
        crate::provider::install_crypto_provider();
        let client = redis::Client::open(url).map_err(bad)?;
        tokio::runtime::Handle::try_current().map_err(|_| RedisStoreError::NoRuntime)?;
        let timeout = Duration::from_secs(2);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?;
        Ok(RedisKv {
            conn,
            prefix: prefix.to_owned(),
            url: redacted,
            timeout,
        })
    }

    /// The full Redis key of `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The raw stored string, if any.
    pub async fn get_raw(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.run(redis::cmd("GET").arg(self.key(key))).await?)
    }

    /// Store `value`, with a TTL (`None` = keep until deleted).
    pub async fn set_raw(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        let _: () = self.run(&cmd).await?;
        Ok(())
    }

    /// Delete `key`. True if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = self.run(redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(n > 0)
    }

    /// Atomically: if the stored string is `expected` (`None` = absent), replace it with
    /// `new` (`None` = delete) and set its TTL. True if it swapped; false if the value had
    /// changed (read it again and retry).
    pub async fn compare_and_set_raw(
        &self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let mut inv = scripts::COMPARE_AND_SET.key(self.key(key));
        inv.arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or(""))
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or(""))
            .arg(ttl.map_or(0, ttl_ms));
        let mut conn = self.conn.clone();
        let swapped: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))?;
        Ok(swapped == 1)
    }

    /// The stored JSON value, if any.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        match self.get_raw(key).await? {
            Some(raw) => Ok(Some(serde_json::from_str(&raw)?)),
            None => Ok(None),
        }
    }

    /// Store `value` as JSON, with a TTL (`None` = keep until deleted).
    pub async fn set_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.set_raw(key, &serde_json::to_string(value)?, ttl).await
    }

    /// Read-modify-write with compare-and-set: `f` gets the current value (`None` if absent)
    /// and returns the new one (`None` deletes). If another writer changed the key in
    /// between, `f` runs again on the fresh value. Returns what was stored.
    pub async fn update_json<T, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        mut f: F,
    ) -> Result<Option<T>, KvError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        for attempt in 0..UPDATE_TRIES {
            if attempt > 0 {
                // Lost a race: back off a little (jittered) so contenders spread out.
                let cap = 1u64 << attempt.min(5);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
            }
            let raw = self.get_raw(key).await?;
            let current = raw.as_deref().map(serde_json::from_str).transpose()?;
            let next = f(current);
            let encoded = next.as_ref().map(serde_json::to_string).transpose()?;
            if self
                .compare_and_set_raw(key, raw.as_deref(), encoded.as_deref(), ttl)
                .await?
            {
                return Ok(next);
            }
        }
        Err(KvError::Contended {
            key: key.to_owned(),
            tries: UPDATE_TRIES,
        })
    }

    async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
