use super::memory::encode;
use super::*;
use crate::clock::ManualClock;
use crate::config::{ConfigOrigin, Format, MapEnv, from_str};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn limits(max_bytes: u64, ttl_ms: u64) -> SessionLimits {
    SessionLimits { max_bytes, ttl_ms }
}

fn mem(clock: &Arc<ManualClock>) -> MemorySessionStore {
    MemorySessionStore::new(clock.clone(), SessionLimits::default())
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "backstop-sessions-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn user_profile(s: &mut Session, name: &str) {
    s.profile_override = Some(name.into());
    s.profile_override_source = Some(PinSource::User);
}

// ---- the store ----

#[test]
fn crud_stamps_times_from_the_clock() {
    let clock = Arc::new(ManualClock::new(1_000));
    let store = mem(&clock);
    assert_eq!(store.get("s1"), None);
    assert_eq!(store.touch("s1"), None, "touch does not create");
    assert_eq!(store.len(), 0);

    let s = store.update("s1", &mut |s| user_profile(s, "work"));
    assert_eq!(s.id, "s1");
    assert_eq!(
        (s.created_at_ms, s.updated_at_ms, s.last_used_ms),
        (1_000, 1_000, 1_000)
    );
    assert_eq!(store.get("s1"), Some(s.clone()));
    assert_eq!(store.len(), 1);

    clock.advance(Duration::from_millis(500));
    let t = store.touch("s1").unwrap();
    assert_eq!((t.updated_at_ms, t.last_used_ms), (1_000, 1_500));

    clock.advance(Duration::from_millis(500));
    // An update that changes nothing is not a write.
    let same = store.update("s1", &mut |s| user_profile(s, "work"));
    assert_eq!(same.updated_at_ms, 1_000);
    let changed = store.update("s1", &mut |s| s.fallback_notice = Some("n".into()));
    assert_eq!(
        (
            changed.created_at_ms,
            changed.updated_at_ms,
            changed.last_used_ms
        ),
        (1_000, 2_000, 2_000)
    );

    assert!(store.delete("s1"));
    assert!(!store.delete("s1"));
    assert_eq!(store.get("s1"), None);
    assert!(store.is_empty());
}

#[test]
fn reset_drops_auto_pins_and_keeps_user_pins() {
    let clock = Arc::new(ManualClock::new(0));
    let store = mem(&clock);
    assert_eq!(store.reset("nope"), ResetOutcome::NotFound);

    // Auto model pin + user profile pin + notice: the user pin stays.
    store.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::User)
            .notice("switched to openai/gpt-4o (anthropic/claude rate limited)"),
    );
    let ResetOutcome::Kept(s) = store.reset("s1") else {
        panic!("the user pin should keep the session");
    };
    assert_eq!(s.model_ref(), None);
    assert_eq!(s.model_override_source, None);
    assert_eq!(s.fallback_notice, None);
    assert_eq!(s.profile_override.as_deref(), Some("work"));
    assert_eq!(s.profile_override_source, Some(PinSource::User));
    assert_eq!(store.get("s1"), Some(*s));

    // Only auto pins: the session is gone.
    store.write_pins(
        "s2",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::Auto),
    );
    assert_eq!(store.reset("s2"), ResetOutcome::Removed);
    assert_eq!(store.get("s2"), None);

    // A pin with no source counts as automatic.
    store.update("s3", &mut |s| s.profile_override = Some("work".into()));
    assert_eq!(store.reset("s3"), ResetOutcome::Removed);
}

#[test]
fn engine_writes_never_replace_user_pins() {
    let clock = Arc::new(ManualClock::new(0));
    let store = mem(&clock);
    store.update("s1", &mut |s| {
        user_profile(s, "work");
        s.provider_override = Some("anthropic".into());
        s.model_override = Some("claude".into());
        s.model_override_source = Some(PinSource::User);
    });
    let undo = store.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("home", PinSource::Auto)
            .notice("switched"),
    );
    // Only the notice was written, and the undo says so.
    assert_eq!(undo.wrote, PinWrite::new().notice("switched"));
    assert_eq!(undo.previous.fallback_notice, Some(None));
    let s = store.get("s1").unwrap();
    assert_eq!(s.model_ref().unwrap().to_string(), "anthropic/claude");
    assert_eq!(s.profile_override.as_deref(), Some("work"));
    assert_eq!(s.fallback_notice.as_deref(), Some("switched"));
    // A user write may replace a user pin.
    store.write_pins("s1", &PinWrite::new().profile("home", PinSource::User));
    assert_eq!(
        store.get("s1").unwrap().profile_override.as_deref(),
        Some("home")
    );
}

#[test]
fn narrow_rollback_keeps_a_concurrent_manual_change() {
    let clock = Arc::new(ManualClock::new(0));
    let store = mem(&clock);
    // Before: an auto profile pin on anthropic's "team".
    store.write_pins(
        "s1",
        &PinWrite::new()
            .model("anthropic", "claude", PinSource::Auto)
            .profile("team", PinSource::Auto),
    );
    // The engine tries openai/gpt-4o on profile "work" and pins it.
    let undo = store.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::Auto)
            .notice("switched to openai/gpt-4o"),
    );
    assert_eq!(
        undo.previous.provider_override,
        Some(Some("anthropic".into()))
    );
    // Meanwhile the user pins a profile by hand.
    store.update("s1", &mut |s| user_profile(s, "personal"));
    // The attempt fails: the model pin and notice go back, the manual profile stays.
    let restored = store.rollback("s1", &undo);
    assert_eq!(
        restored,
        [
            "provider_override",
            "model_override",
            "model_override_source",
            "fallback_notice"
        ]
    );
    let s = store.get("s1").unwrap();
    assert_eq!(s.model_ref().unwrap().to_string(), "anthropic/claude");
    assert_eq!(s.model_override_source, Some(PinSource::Auto));
    assert_eq!(s.profile_override.as_deref(), Some("personal"));
    assert_eq!(s.profile_override_source, Some(PinSource::User));
    assert_eq!(s.fallback_notice, None);

    // A second rollback finds nothing of the engine's left.
    assert!(store.rollback("s1", &undo).is_empty());
}

#[test]
fn rollback_moves_a_pin_as_one_unit() {
    let clock = Arc::new(ManualClock::new(0));
    let store = mem(&clock);
    store.write_pins(
        "s1",
        &PinWrite::new().model("anthropic", "claude", PinSource::Auto),
    );
    let undo = store.write_pins(
        "s1",
        &PinWrite::new().model("openai", "gpt-4o", PinSource::Auto),
    );
    // Another request moved the model within the same provider: the provider
    // still matches, but putting back "anthropic" would pair it with "gpt-4o-mini".
    store.write_pins(
        "s1",
        &PinWrite::new().model("openai", "gpt-4o-mini", PinSource::Auto),
    );
    assert!(store.rollback("s1", &undo).is_empty());
    assert_eq!(
        store.get("s1").unwrap().model_ref().unwrap().to_string(),
        "openai/gpt-4o-mini"
    );
}

#[test]
fn rollback_never_recreates_a_reset_session() {
    let clock = Arc::new(ManualClock::new(0));
    let store = mem(&clock);
    store.write_pins("s1", &PinWrite::new().profile("team", PinSource::Auto));
    let undo = store.write_pins("s1", &PinWrite::new().clear_profile());
    assert_eq!(store.reset("s1"), ResetOutcome::Removed);
    assert!(store.rollback("s1", &undo).is_empty());
    assert_eq!(store.get("s1"), None);
}

#[test]
fn idle_sessions_expire_after_the_ttl() {
    let clock = Arc::new(ManualClock::new(0));
    let store = MemorySessionStore::new(clock.clone(), limits(u64::MAX, 1_000));
    store.update("old", &mut |s| user_profile(s, "work"));
    store.update("busy", &mut |s| user_profile(s, "work"));
    clock.set(900);
    assert!(store.touch("busy").is_some());
    clock.set(1_000);
    assert!(store.get("old").is_some(), "exactly the TTL is not past it");
    clock.set(1_001);
    assert_eq!(store.get("old"), None);
    assert_eq!(store.touch("old"), None);
    assert!(store.get("busy").is_some());
    // A write to an expired session starts a new one.
    let fresh = store.update("old", &mut |s| s.fallback_notice = Some("n".into()));
    assert_eq!(fresh.created_at_ms, 1_001);
    assert_eq!(fresh.profile_override, None);
    store.delete("old");
    clock.set(2_000);
    assert_eq!(
        store.prune(),
        PruneReport {
            expired: 1,
            evicted: 0
        }
    );
    assert_eq!(store.len(), 0);
}

/// Sessions s01..=s10, each with a user pin, written at t = 1..=10.
fn ten_sessions(store: &dyn SessionStore, clock: &ManualClock) {
    for i in 1..=10u64 {
        clock.set(i);
        store.update(&format!("s{i:02}"), &mut |s| user_profile(s, "work"));
    }
}

/// The size of the file holding only the `n` most recently used sessions of `store`.
fn budget_for(store: &dyn SessionStore, n: usize) -> u64 {
    let mut all: Vec<Session> = (1..=10)
        .filter_map(|i| store.get(&format!("s{i:02}")))
        .collect();
    all.sort_by_key(|s| std::cmp::Reverse(s.last_used_ms));
    all.truncate(n);
    encode(all, u64::MAX).0.len() as u64
}

#[test]
fn least_recently_used_sessions_are_evicted_to_fit_the_budget() {
    let clock = Arc::new(ManualClock::new(0));
    let probe = MemorySessionStore::new(clock.clone(), SessionLimits::default());
    ten_sessions(&probe, &clock);
    clock.set(11);
    probe.touch("s01");
    let max = budget_for(&probe, 3);
    let store = MemorySessionStore::new(clock.clone(), limits(max, DAY_MS));
    ten_sessions(&store, &clock);
    // Using s01 makes it the most recent: it survives, s08 does not.
    clock.set(11);
    store.touch("s01");
    let report = store.prune();
    assert_eq!(
        report,
        PruneReport {
            expired: 0,
            evicted: 7
        }
    );
    assert_eq!(store.evictions(), 7);
    let mut left: Vec<String> = (1..=10)
        .map(|i| format!("s{i:02}"))
        .filter(|id| store.get(id).is_some())
        .collect();
    left.sort();
    assert_eq!(left, ["s01", "s09", "s10"]);
    assert!(store.bytes() <= max, "{} > {max}", store.bytes());
    assert_eq!(store.prune(), PruneReport::default());
    assert_eq!(store.evictions(), 7);
}

#[test]
fn encode_is_json_keyed_by_id_and_fits_exactly() {
    let clock = Arc::new(ManualClock::new(0));
    let probe = MemorySessionStore::new(clock.clone(), SessionLimits::default());
    ten_sessions(&probe, &clock);
    let all: Vec<Session> = (1..=10)
        .map(|i| probe.get(&format!("s{i:02}")).unwrap())
        .collect();
    let (full, out) = encode(all.clone(), u64::MAX);
    assert!(out.is_empty());
    let v: serde_json::Value = serde_json::from_str(&full).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 10);
    assert_eq!(v["s03"]["authProfileOverride"], "work");
    assert_eq!(v["s03"]["authProfileOverrideSource"], "user");
    assert_eq!(v["s03"]["updatedAt"], 3);
    // Most recent first.
    assert!(full.find("\"s10\"").unwrap() < full.find("\"s01\"").unwrap());
    // A budget of exactly the full size keeps everything; one byte less does not.
    let n = full.len() as u64;
    assert!(encode(all.clone(), n).1.is_empty());
    let (text, out) = encode(all.clone(), n - 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, "s01");
    assert!((text.len() as u64) < n);
    serde_json::from_str::<serde_json::Value>(&text).unwrap();
    // Nothing fits: an empty object.
    let (text, out) = encode(all, 10);
    assert_eq!(text, "{}\n");
    assert_eq!(out.len(), 10);
}

// ---- the file store ----

fn open(dir: &Path, clock: &Arc<ManualClock>, l: SessionLimits) -> FileSessionStore {
    FileSessionStore::open(dir, l, clock.clone()).unwrap()
}

#[test]
fn sessions_survive_a_reopen() {
    let dir = TempDir::new();
    let clock = Arc::new(ManualClock::new(5_000));
    let store = open(dir.path(), &clock, SessionLimits::default());
    store.write_pins(
        "chat:1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::User)
            .notice("switched to openai/gpt-4o"),
    );
    let before = store.get("chat:1").unwrap();
    store.flush_now().unwrap();
    let len = std::fs::metadata(store.path()).unwrap().len();
    assert_eq!(store.bytes(), len);
    drop(store);

    let again = open(dir.path(), &clock, SessionLimits::default());
    assert_eq!(again.get("chat:1"), Some(before));
    assert_eq!(again.bytes(), len);
    assert_eq!(again.len(), 1);
}

#[test]
fn dropping_the_store_writes_pending_changes() {
    let dir = TempDir::new();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock, SessionLimits::default());
    store.update("s1", &mut |s| user_profile(s, "work"));
    drop(store); // no flush_now: the writer flushes on shutdown
    let text = std::fs::read_to_string(dir.path().join("sessions.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["s1"]["authProfileOverride"], "work");
    assert!(dir.path().join("sessions.json.lock").exists());
}

#[test]
fn a_corrupt_file_is_moved_aside() {
    let dir = TempDir::new();
    let path = dir.path().join("sessions.json");
    std::fs::write(&path, b"{\"s1\": {\"modelOverride\": ").unwrap();
    let clock = Arc::new(ManualClock::new(77));
    let store = open(dir.path(), &clock, SessionLimits::default());
    assert_eq!(store.len(), 0);
    let aside = dir.path().join("sessions.json.corrupt-77");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"{\"s1\": {\"modelOverride\": "
    );
    assert!(!path.exists());
    // And the store works on.
    store.update("s2", &mut |s| user_profile(s, "work"));
    store.flush_now().unwrap();
    assert!(path.exists());
}

#[test]
fn bad_entries_are_skipped_and_the_original_kept() {
    let dir = TempDir::new();
    let path = dir.path().join("sessions.json");
    let original = r#"{"good": {"authProfileOverride": "work", "authProfileOverrideSource": "user", "lastUsedAt": 50},
                       "bad": {"authProfileOverrideSource": "someone"}}"#;
    std::fs::write(&path, original).unwrap();
    let clock = Arc::new(ManualClock::new(100));
    let store = open(dir.path(), &clock, SessionLimits::default());
    assert_eq!(store.len(), 1);
    assert!(store.get("good").is_some());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sessions.json.corrupt-100")).unwrap(),
        original
    );
}

#[test]
fn unknown_fields_are_kept() {
    let dir = TempDir::new();
    let path = dir.path().join("sessions.json");
    std::fs::write(
        &path,
        r#"{"s1": {"sessionId": "08ef1", "providerOverride": "openai", "modelOverride": "gpt-4o",
                  "modelOverrideSource": "auto", "compactionCount": 3, "updatedAt": 10, "lastUsedAt": 10}}"#,
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(20));
    let store = open(dir.path(), &clock, SessionLimits::default());
    let s = store.get("s1").unwrap();
    assert_eq!(s.model_ref().unwrap().to_string(), "openai/gpt-4o");
    assert_eq!(s.extra["sessionId"], "08ef1");
    store.write_pins("s1", &PinWrite::new().notice("switched"));
    store.flush_now().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["s1"]["sessionId"], "08ef1");
    assert_eq!(v["s1"]["compactionCount"], 3);
    assert_eq!(v["s1"]["fallbackNotice"], "switched");
    assert_eq!(v["s1"]["updatedAt"], 20);
}

#[test]
fn the_file_stays_within_the_budget() {
    let dir = TempDir::new();
    let clock = Arc::new(ManualClock::new(0));
    let probe = MemorySessionStore::new(clock.clone(), SessionLimits::default());
    ten_sessions(&probe, &clock);
    let max = budget_for(&probe, 4);
    let store = open(dir.path(), &clock, limits(max, DAY_MS));
    ten_sessions(&store, &clock);
    let report = store.flush_now().unwrap();
    assert_eq!(report.evicted, 6);
    assert_eq!(store.evictions(), 6);
    assert_eq!(store.len(), 4);
    let len = std::fs::metadata(store.path()).unwrap().len();
    assert!(len <= max, "{len} > {max}");
    drop(store);
    let again = open(dir.path(), &clock, limits(max, DAY_MS));
    assert_eq!(again.len(), 4);
    assert!(again.get("s10").is_some());
    assert_eq!(again.get("s06"), None);
}

#[test]
fn expired_sessions_are_not_loaded_or_written() {
    let dir = TempDir::new();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock, limits(u64::MAX, 1_000));
    store.update("a", &mut |s| user_profile(s, "work"));
    clock.set(600);
    store.update("b", &mut |s| user_profile(s, "work"));
    store.flush_now().unwrap();
    drop(store);
    clock.set(1_500);
    let again = open(dir.path(), &clock, limits(u64::MAX, 1_000));
    assert_eq!(again.len(), 1);
    assert!(again.get("b").is_some());
    clock.set(1_601);
    assert_eq!(again.flush_now().unwrap().expired, 1);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.path()).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({}));
}

// ---- ids and user pins ----

#[test]
fn session_ids() {
    assert!(check_id("a").is_ok());
    assert!(check_id("Chat_1.2:x-y").is_ok());
    assert!(check_id(&"x".repeat(128)).is_ok());
    assert_eq!(
        check_id(&"x".repeat(129)).unwrap_err(),
        "session id is 129 characters long; the limit is 128"
    );
    assert!(check_id("").unwrap_err().contains("empty"));
    assert_eq!(
        check_id("a/b").unwrap_err(),
        "session id \"a/b\" contains '/'; use only A-Z a-z 0-9 . _ : -"
    );
    assert!(check_id("é").is_err());
}

fn config() -> crate::Config {
    from_str(
        r#"{ providers: {
              anthropic: { auth: [{ profile: "team", key: "k1" }, { profile: "personal", key: "k2" }],
                           models: ["claude"] },
              openai: { auth: [{ profile: "work", key: "k3" }], models: ["gpt-4o"] } } }"#,
        Format::Json5,
        ConfigOrigin::File("backstop.json5".into()),
        &MapEnv::new().with_home("/h"),
    )
    .unwrap()
}

#[test]
fn user_pins_are_checked_against_the_config() {
    let c = config();
    let p = user_pins(
        &c,
        Some(Some("openai/gpt-4o-mini")),
        Some(Some("work")),
        None,
    )
    .unwrap();
    assert_eq!(p.model.unwrap().unwrap().to_string(), "openai/gpt-4o-mini");
    assert_eq!(p.profile, Some(Some("work".into())));

    assert_eq!(
        user_pins(&c, Some(Some("openai/gpt-4o")), Some(Some("team")), None).unwrap_err(),
        "profile \"team\" is not configured for provider \"openai\"; valid: work"
    );
    assert_eq!(
        user_pins(&c, Some(Some("opnai/gpt-4o")), None, None).unwrap_err(),
        "model \"opnai/gpt-4o\": provider \"opnai\" is not configured (did you mean \"openai\"?); configured: anthropic, openai"
    );
    assert_eq!(
        user_pins(&c, Some(Some("gpt-4o")), None, None).unwrap_err(),
        "model \"gpt-4o\" is not provider/model; configured providers: anthropic, openai"
    );
    assert_eq!(
        user_pins(&c, None, Some(Some("home")), None).unwrap_err(),
        "profile \"home\" is not configured for any provider; valid: anthropic:team, anthropic:personal, openai:work"
    );
    // Without a model in the request, the session's user model pin names the provider.
    let mut s = Session::new("s");
    UserPins {
        model: Some(Some(crate::config::ModelRef {
            provider: "anthropic".into(),
            model: "claude".into(),
        })),
        profile: None,
    }
    .apply(&mut s);
    assert!(user_pins(&c, None, Some(Some("personal")), Some(&s)).is_ok());
    assert!(
        user_pins(&c, None, Some(Some("work")), Some(&s))
            .unwrap_err()
            .contains("for provider \"anthropic\"; valid: team, personal")
    );
    // `provider:profile`, as the errors list them, pins the bare profile.
    assert_eq!(
        user_pins(&c, None, Some(Some("openai:work")), None)
            .unwrap()
            .profile,
        Some(Some("work".into()))
    );
    assert_eq!(
        user_pins(
            &c,
            Some(Some("anthropic/claude")),
            Some(Some("anthropic:personal")),
            None
        )
        .unwrap()
        .profile,
        Some(Some("personal".into()))
    );
    assert_eq!(
        user_pins(&c, None, Some(Some("anthropic:personal")), Some(&s))
            .unwrap()
            .profile,
        Some(Some("personal".into()))
    );
    assert_eq!(
        user_pins(&c, None, Some(Some("openai:work")), Some(&s)).unwrap_err(),
        "profile \"openai:work\" is for provider \"openai\", but the model is pinned to provider \"anthropic\"; valid: team, personal"
    );
    assert!(
        user_pins(&c, None, Some(Some("openai:team")), None)
            .unwrap_err()
            .contains("is not configured for any provider")
    );
    // Clearing needs no check.
    assert_eq!(
        user_pins(&c, Some(None), Some(None), None).unwrap(),
        UserPins {
            model: Some(None),
            profile: Some(None)
        }
    );
}

#[test]
fn clearing_a_user_pin_leaves_an_auto_pin_alone() {
    let mut s = Session::new("s");
    s.provider_override = Some("openai".into());
    s.model_override = Some("gpt-4o".into());
    s.model_override_source = Some(PinSource::Auto);
    user_profile(&mut s, "work");
    UserPins {
        model: Some(None),
        profile: Some(None),
    }
    .apply(&mut s);
    assert_eq!(s.model_ref().unwrap().to_string(), "openai/gpt-4o");
    assert_eq!(s.profile_override, None);
    assert_eq!(s.profile_override_source, None);
}
