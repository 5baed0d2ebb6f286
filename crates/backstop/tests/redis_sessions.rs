//! Sessions shared by several instances through one real Redis
//! ([`RedisSessionStore`]): pins made on one instance are seen on the others,
//! writes are compare-and-set field by field, the idle TTL is Redis's expiry,
//! and an outage (even one that empties Redis) loses nothing.
//!
//! Every test starts its own `redis-server` on a free loopback port; without it
//! on PATH they FAIL saying so (CI installs it). Skip them with `--skip redis_`.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod redis_common;

use backstop::clock::ManualClock;
use backstop::state::redis::{RedisOptions, RedisSessionStore};
use backstop::state::session::{
    PinSource, PinWrite, ResetOutcome, Session, SessionLimits, SessionStore,
};
use redis_common::{RedisServer, within};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const TTL_MS: u64 = 600_000;

fn options() -> RedisOptions {
    RedisOptions {
        resync_interval: Duration::from_millis(500),
        session_resync_interval: Duration::from_millis(500),
        retry_interval: Duration::from_millis(200),
        command_timeout: Duration::from_secs(1),
        ..RedisOptions::default()
    }
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_bytes: 1 << 20,
        ttl_ms: TTL_MS,
    }
}

async fn instance(server: &RedisServer, clock: &Arc<ManualClock>) -> RedisSessionStore {
    instance_with(server, clock, limits()).await
}

async fn instance_with(
    server: &RedisServer,
    clock: &Arc<ManualClock>,
    limits: SessionLimits,
) -> RedisSessionStore {
    let store = RedisSessionStore::connect_with(&server.url(), clock.clone(), limits, options())
        .await
        .unwrap();
    assert!(store.is_ready(), "{store:?} did not connect");
    store
}

/// A fresh Redis, a manual clock at `T0`, and two instances sharing both.
async fn two_instances() -> (
    RedisServer,
    Arc<ManualClock>,
    RedisSessionStore,
    RedisSessionStore,
) {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let a = instance(&server, &clock).await;
    let b = instance(&server, &clock).await;
    (server, clock, a, b)
}

/// A direct connection, to look at (and go behind the back of) the stores.
async fn redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn wait_for(
    what: &str,
    store: &RedisSessionStore,
    id: &str,
    check: impl Fn(Option<&Session>) -> bool,
) {
    let seen = within(Duration::from_secs(3), || check(store.get(id).as_ref())).await;
    assert!(seen.is_some(), "{what}: {:?}", store.get(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_a_pin_on_one_instance_is_seen_on_the_other() {
    let (server, clock, a, b) = two_instances().await;
    a.write_pins(
        "chat-1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::User)
            .notice("switched to openai/gpt-4o (anthropic/claude-opus-4-5 rate limited)"),
    );
    wait_for("B never saw A's pins", &b, "chat-1", |s| {
        s.is_some_and(|s| {
            s.model_ref()
                .is_some_and(|m| m.to_string() == "openai/gpt-4o")
                && s.profile_override.as_deref() == Some("work")
                && s.user_profile_pin()
                && !s.user_model_pin()
                && s.fallback_notice.as_deref()
                    == Some("switched to openai/gpt-4o (anthropic/claude-opus-4-5 rate limited)")
                && s.updated_at_ms == T0
        })
    })
    .await;

    // In Redis: one hash, with the idle TTL as its expiry.
    let mut conn = redis(&server).await;
    let key = "backstop:session:chat-1";
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > (TTL_MS - 60_000) as i64 && pttl <= TTL_MS as i64,
        "PTTL {pttl}"
    );
    let source: String = redis::cmd("HGET")
        .arg(key)
        .arg("authProfileOverrideSource")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(source, "\"user\"");

    // Use on B raises lastUsedAt in Redis and renews the TTL; A picks it up at its resync.
    let _: () = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(1_000_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(b.touch("chat-1").is_some());
    b.flush().await;
    let used: String = redis::cmd("HGET")
        .arg(key)
        .arg("lastUsedAt")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(used, (T0 + 5_000).to_string());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl <= TTL_MS as i64, "touch did not renew the TTL: {pttl}");
    wait_for("A never saw B's use", &a, "chat-1", |s| {
        s.is_some_and(|s| s.last_used_ms == T0 + 5_000)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_writes_to_different_fields_on_two_instances_both_land() {
    let (_server, _clock, a, b) = two_instances().await;
    // Both write at once, neither having seen the other's write.
    a.write_pins(
        "s",
        &PinWrite::new().model("openai", "gpt-4o", PinSource::Auto),
    );
    b.write_pins("s", &PinWrite::new().profile("work", PinSource::User));
    a.flush().await;
    b.flush().await;
    for (name, st) in [("A", &a), ("B", &b)] {
        let both = |s: Option<&Session>| {
            s.is_some_and(|s| s.model_override.is_some() && s.profile_override.is_some())
        };
        wait_for(&format!("{name} lacks a pin"), st, "s", both).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_a_stale_automatic_pin_never_replaces_a_user_pin() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let a = instance(&server, &clock).await;
    a.write_pins("s", &PinWrite::new().notice("n"));
    a.flush().await;
    // Another instance pins a profile; A has not heard of it yet (no event sent).
    let mut conn = redis(&server).await;
    let _: () = redis::cmd("HSET")
        .arg("backstop:session:s")
        .arg("authProfileOverride")
        .arg("\"mine\"")
        .arg("authProfileOverrideSource")
        .arg("\"user\"")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(a.get("s").unwrap().profile_override, None);

    // On its stale view A sees no pin and writes an automatic one.
    let undo = a.write_pins("s", &PinWrite::new().profile("other", PinSource::Auto));
    assert!(undo.wrote.profile_override.is_some(), "locally, A wrote it");
    a.flush().await;
    // Redis refused it field by field, and A now shows the user's pin.
    let s = a.get("s").unwrap();
    assert_eq!(s.profile_override.as_deref(), Some("mine"));
    assert!(s.user_profile_pin());
    assert_eq!(s.fallback_notice.as_deref(), Some("n"));
    let stored: String = redis::cmd("HGET")
        .arg("backstop:session:s")
        .arg("authProfileOverride")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, "\"mine\"");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_narrow_rollback_restores_only_fields_nobody_changed_elsewhere() {
    let (_server, _clock, a, b) = two_instances().await;
    // A's attempt fails over and pins the fallback, with its notice…
    let undo = a.write_pins(
        "s",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .notice("switched to openai/gpt-4o"),
    );
    a.flush().await;
    wait_for("B never saw the pin", &b, "s", |s| {
        s.is_some_and(|s| s.model_override.is_some())
    })
    .await;
    // … meanwhile, through B, the notice changes and the user pins a profile …
    b.update("s", &mut |s| {
        s.fallback_notice = Some("kept by B".into());
        s.profile_override = Some("work".into());
        s.profile_override_source = Some(PinSource::User);
    });
    b.flush().await;
    // … and A's attempt fails, maybe before A heard of that: A rolls back on its view.
    let restored = a.rollback("s", &undo);
    assert!(restored.contains(&"model_override"), "{restored:?}");
    a.flush().await;
    // The model pin is gone everywhere; B's changes stand (A's notice is not rolled
    // back over B's, the profile pin stays).
    for (name, st) in [("A", &a), ("B", &b)] {
        wait_for(&format!("{name} did not settle"), st, "s", |s| {
            s.is_some_and(|s| {
                s.model_ref().is_none()
                    && s.fallback_notice.as_deref() == Some("kept by B")
                    && s.profile_override.as_deref() == Some("work")
                    && s.user_profile_pin()
            })
        })
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_reset_and_delete_reach_every_instance() {
    let (server, _clock, a, b) = two_instances().await;
    a.write_pins(
        "s",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::User),
    );
    a.write_pins(
        "auto-only",
        &PinWrite::new().model("openai", "gpt-4o", PinSource::Auto),
    );
    a.flush().await;
    wait_for("B never saw s", &b, "s", |s| s.is_some()).await;
    wait_for("B never saw auto-only", &b, "auto-only", |s| s.is_some()).await;

    // A reset on B keeps the user pin and drops the automatic one, on A too.
    assert!(matches!(b.reset("s"), ResetOutcome::Kept(_)));
    assert_eq!(b.reset("auto-only"), ResetOutcome::Removed);
    b.flush().await;
    wait_for("A kept the automatic pin", &a, "s", |s| {
        s.is_some_and(|s| s.model_override.is_none() && s.profile_override.is_some())
    })
    .await;
    wait_for("A kept the reset session", &a, "auto-only", |s| s.is_none()).await;
    let mut conn = redis(&server).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("backstop:session:auto-only")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a removed session is deleted in Redis");

    assert!(a.delete("s"));
    a.flush().await;
    wait_for("B kept the deleted session", &b, "s", |s| s.is_none()).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_survive_an_outage_that_empties_redis() {
    let (mut server, _clock, a, b) = two_instances().await;
    a.write_pins("before", &PinWrite::new().profile("work", PinSource::User));
    a.flush().await;
    wait_for("B never saw it", &b, "before", |s| s.is_some()).await;

    server.kill();
    // Both keep answering from their replicas, and A keeps writing.
    a.write_pins(
        "during",
        &PinWrite::new().model("openai", "gpt-4o", PinSource::Auto),
    );
    assert!(a.get("during").is_some());
    assert!(b.get("before").is_some());
    assert!(
        within(Duration::from_secs(3), || !a.is_connected()
            && !b.is_connected())
        .await
        .is_some()
    );

    // Redis returns empty: A replays its queued write, both put back what they held.
    server.restart();
    wait_for(
        "B never saw the session A made during the outage",
        &b,
        "during",
        |s| s.is_some_and(|s| s.model_override.as_deref() == Some("gpt-4o")),
    )
    .await;
    assert!(
        within(Duration::from_secs(3), || a.is_connected()
            && b.is_connected())
        .await
        .is_some()
    );
    for (name, st) in [("A", &a), ("B", &b)] {
        wait_for(
            &format!("{name} lost the older session"),
            st,
            "before",
            |s| s.is_some_and(|s| s.profile_override.as_deref() == Some("work")),
        )
        .await;
    }
    let mut conn = redis(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("backstop:session:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_the_budget_evicts_the_least_recently_used_in_redis_too() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let small = SessionLimits {
        max_bytes: 2_000,
        ttl_ms: TTL_MS,
    };
    let a = instance_with(&server, &clock, small).await;
    for i in 0..40 {
        clock.advance(Duration::from_millis(1));
        a.write_pins(
            &format!("s{i:02}"),
            &PinWrite::new().profile("work", PinSource::User),
        );
    }
    a.flush().await;
    let mut conn = redis(&server).await;
    let settled = within(Duration::from_secs(3), || a.evictions() > 0).await;
    assert!(settled.is_some(), "nothing was evicted");
    // Redis ends up holding what the replica kept. (A write still on its way when the
    // replica is pruned comes back with its result; the next resync evicts it again.)
    let mut keys: Vec<String> = Vec::new();
    let gone = within(Duration::from_secs(5), || {
        keys = session_keys(&mut conn);
        keys.len() == a.len() && a.get("s00").is_none()
    })
    .await;
    assert!(
        gone.is_some(),
        "Redis holds {} sessions, the replica {}",
        keys.len(),
        a.len()
    );
    // The newest survive; the oldest went.
    assert!(a.get("s39").is_some());
    assert!(a.get("s00").is_none());
    assert!(keys.contains(&"backstop:session:s39".to_owned()));
    assert!(!keys.contains(&"backstop:session:s00".to_owned()));
    assert!(
        a.len() < 40 && a.bytes() <= 2_000,
        "{} {}",
        a.len(),
        a.bytes()
    );
    a.shutdown().await;
}

/// `KEYS backstop:session:*` from a synchronous check (the connection is multiplexed).
fn session_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut conn = conn.clone();
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async move {
            redis::cmd("KEYS")
                .arg("backstop:session:*")
                .query_async(&mut conn)
                .await
                .unwrap()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sessions_concurrent_writes_on_one_instance_reach_redis_in_order() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = (
        Arc::new(instance(&server, &clock).await),
        instance(&server, &clock).await,
    );
    // Many requests of one session change the same field at once; each write builds on
    // the one before it (the replica serialises them), and Redis must see them in that
    // order — else a later write, arriving first, fails its compare-and-set.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let a = a.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    a.update("busy", &mut |s| {
                        let n = s.fallback_notice.as_deref().map_or(0, str::len);
                        s.fallback_notice = Some("x".repeat(n + 1));
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    a.flush().await;
    let mut conn = redis(&server).await;
    let stored: String = redis::cmd("HGET")
        .arg("backstop:session:busy")
        .arg("fallbackNotice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        800 + 2,
        "every write landed (a JSON string of 800 x)"
    );
    assert_eq!(a.get("busy").unwrap().fallback_notice.unwrap().len(), 800);
    wait_for("B never saw the last write", &b, "busy", |s| {
        s.and_then(|s| s.fallback_notice.as_ref().map(String::len)) == Some(800)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
