use super::*;
use crate::clock::ManualClock;
use crate::config::Ladder;
use crate::failover::Reason;
use crate::state::BreakerState;
use serde_json::{Value, json};
use std::sync::atomic::AtomicUsize;

const T0: u64 = 1_800_000_000_000;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "backstop-filestore-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    fn file(&self) -> PathBuf {
        self.0.join(STATE_FILE)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.file()).unwrap()).unwrap()
    }

    fn write(&self, v: &Value) {
        std::fs::create_dir_all(&self.0).unwrap();
        std::fs::write(self.file(), serde_json::to_string_pretty(v).unwrap()).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn penalty(reason: Reason, base_ms: u64) -> Penalty {
    Penalty {
        reason,
        ladder: Ladder {
            base_ms,
            cap_ms: base_ms * 8,
        },
        retry_after: None,
        max_retry_after: Duration::from_secs(3_600),
        jitter: 0.0,
        failure_window_ms: 86_400_000,
        probe_interval_ms: 0,
    }
}

fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> FileStore {
    FileStore::open_with_clock(&dir.0, clock.clone()).unwrap()
}

#[test]
fn restart_keeps_cooldowns() {
    let dir = TempDir::new("restart");
    let clock = Arc::new(ManualClock::new(T0));
    let scope = Scope::profile_model("openai", "work", "gpt-4o");
    let billing = Scope::profile("openai", "home");
    {
        let store = open(&dir, &clock);
        store.record_failure(&scope, &penalty(Reason::RateLimit, 30_000), T0);
        store.record_failure(&billing, &penalty(Reason::Billing, 5 * 3_600_000), T0);
        store.mark_used("openai", "work", T0 - 5);
        // Dropped without an explicit flush: drop flushes.
    }
    let store = open(&dir, &clock);
    assert_eq!(
        store.admit(&scope, T0 + 29_999, 1_000),
        Admission::Denied {
            until_ms: T0 + 30_000,
            reason: Reason::RateLimit
        }
    );
    assert!(!store.admit(&billing, T0 + 3_600_000, 1_000).is_allowed());
    assert_eq!(store.last_used("openai", "work"), Some(T0 - 5));
    // Once the window has passed (on the manual clock): one probe.
    assert_eq!(store.admit(&scope, T0 + 30_000, 1_000), Admission::Probe);
    assert!(store.warnings().is_empty());
}

#[test]
fn the_file_has_the_openclaw_shape() {
    let dir = TempDir::new("shape");
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let rl = penalty(Reason::RateLimit, 30_000);
    store.record_failure(&Scope::profile_model("openai", "work", "gpt-4o"), &rl, T0);
    store.record_failure(
        &Scope::profile_model("openai", "work", "gpt-4o"),
        &rl,
        T0 + 1,
    );
    store.record_failure(
        &Scope::profile_model("openai", "work", "o3"),
        &penalty(Reason::Timeout, 60_000),
        T0 + 2,
    );
    store.record_failure(
        &Scope::profile("openai", "home"),
        &penalty(Reason::Billing, 5 * 3_600_000),
        T0,
    );
    store.record_failure(
        &Scope::profile("anthropic", "team"),
        &penalty(Reason::Auth, 300_000),
        T0,
    );
    store.record_failure(
        &Scope::provider_model("openai", "gpt-x"),
        &penalty(Reason::ModelNotFound, 3_600_000),
        T0,
    );
    store.mark_used("openai", "work", T0 - 100);
    store.mark_used("openai", "home", T0 - 200);
    store.flush_now().unwrap();

    let v = dir.json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["lastGood"]["openai"], "work");
    let work = &v["usageStats"]["openai:work"];
    assert_eq!(work["lastUsed"], T0 - 100);
    // The later of the two model cooldowns.
    assert_eq!(work["cooldownUntil"], T0 + 2 + 60_000);
    assert_eq!(work["cooldownReason"], "timeout");
    assert_eq!(work["cooldownModel"], "o3");
    assert_eq!(work["errorCount"], 3);
    assert_eq!(
        work["failureCounts"],
        json!({"rate_limit": 2, "timeout": 1})
    );
    assert_eq!(work["lastFailureAt"], T0 + 2);
    assert!(work.get("disabledUntil").is_none());
    let home = &v["usageStats"]["openai:home"];
    assert_eq!(home["disabledUntil"], T0 + 5 * 3_600_000);
    assert_eq!(home["disabledReason"], "billing");
    assert!(home.get("cooldownUntil").is_none());
    let team = &v["usageStats"]["anthropic:team"];
    assert_eq!(team["cooldownUntil"], T0 + 300_000);
    assert_eq!(team["cooldownReason"], "auth");
    assert!(team.get("cooldownModel").is_none());
    // Backstop's own section holds every scope exactly, provider × model included.
    let scopes = &v["backstop"]["scopes"];
    assert_eq!(scopes.as_object().unwrap().len(), 5);
    let s = &scopes["openai:work/gpt-4o"];
    assert_eq!(s["state"], "open");
    assert_eq!(s["reason"], "rate_limit");
    assert_eq!(s["until_ms"], T0 + 1 + 30_000);
    assert_eq!(s["error_count"], 2);
    assert_eq!(s["consecutive"], 1);
    assert_eq!(scopes["openai/gpt-x"]["reason"], "model_not_found");

    // A success closes the scope: the OpenClaw fields go with it.
    store.record_success(&Scope::profile("anthropic", "team"), T0 + 10);
    store.flush_now().unwrap();
    let v = dir.json();
    assert!(v["usageStats"].get("anthropic:team").is_none());
    assert_eq!(v["backstop"]["scopes"]["anthropic:team"]["state"], "closed");
}

#[test]
fn unknown_fields_are_kept_on_rewrite() {
    let dir = TempDir::new("unknown");
    dir.write(&json!({
        "version": 1,
        "order": {"openai": ["home", "work"]},
        "lastGood": {"gemini": "x"},
        "futureTopLevel": {"a": [1, 2]},
        "usageStats": {
            "openai:work": {"lastUsed": T0, "someOpenClawField": "keep me"},
            "gemini:x": {"lastUsed": 5, "other": true}
        },
        "backstop": {
            "futureSection": 7,
            "scopes": {"openai:work/gpt-4o": {"state": "closed", "error_count": 1, "changed_at": T0, "note": "hi"}}
        }
    }));
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    store.record_failure(
        &Scope::profile("openai", "work"),
        &penalty(Reason::Auth, 1_000),
        T0 + 1,
    );
    store.flush_now().unwrap();
    let v = dir.json();
    assert_eq!(v["order"], json!({"openai": ["home", "work"]}));
    assert_eq!(v["futureTopLevel"], json!({"a": [1, 2]}));
    assert_eq!(v["lastGood"]["gemini"], "x");
    assert_eq!(v["lastGood"]["openai"], "work");
    assert_eq!(
        v["usageStats"]["openai:work"]["someOpenClawField"],
        "keep me"
    );
    assert_eq!(v["usageStats"]["openai:work"]["cooldownReason"], "auth");
    assert_eq!(v["usageStats"]["gemini:x"]["other"], true);
    assert_eq!(v["backstop"]["futureSection"], 7);
    assert_eq!(v["backstop"]["scopes"]["openai:work/gpt-4o"]["note"], "hi");
    assert_eq!(
        v["backstop"]["scopes"]["openai:work/gpt-4o"]["error_count"],
        1
    );
}

#[test]
fn wrong_types_are_read_as_far_as_valid_and_reported_by_path() {
    let dir = TempDir::new("types");
    dir.write(&json!({
        "version": "one",
        "usageStats": {
            "openai:work": {"lastUsed": "yesterday", "cooldownUntil": "soon", "errorCount": 2},
            "openai:home": {"lastUsed": T0, "disabledUntil": T0 + 60_000, "disabledReason": "billing"},
            "anthropic:team": {"cooldownUntil": T0 + 60_000, "cooldownReason": 42,
                               "failureCounts": {"rate_limit": "x", "nonsense": 1, "auth": 2}},
            "not-a-profile": {},
            "gemini:x": []
        }
    }));
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let w = store.warnings();
    for expected in [
        "version: expected a number",
        "usageStats[\"openai:work\"].lastUsed: expected a number",
        "usageStats[\"openai:work\"].cooldownUntil: expected a number",
        "usageStats[\"anthropic:team\"].cooldownReason: expected a string",
        "usageStats[\"anthropic:team\"].failureCounts.rate_limit: expected a number",
        "usageStats[\"anthropic:team\"].failureCounts[\"nonsense\"]: unknown reason",
        "usageStats[\"not-a-profile\"]: expected a \"provider:profile\" key",
        "usageStats[\"gemini:x\"]: expected an object",
    ] {
        assert!(
            w.iter().any(|l| l == expected),
            "missing {expected:?} in {w:#?}"
        );
    }
    // The valid parts were read.
    assert_eq!(store.last_used("openai", "home"), Some(T0));
    assert!(
        !store
            .admit(&Scope::profile("openai", "home"), T0, 1)
            .is_allowed()
    );
    let team = store.get(&Scope::profile("anthropic", "team"), T0).unwrap();
    assert_eq!(team.until_ms, Some(T0 + 60_000));
    assert_eq!(
        team.reason,
        Some(Reason::RateLimit),
        "a missing reason defaults"
    );
    assert_eq!(team.failure_counts.get(&Reason::Auth), Some(&2));
    let work = store.get(&Scope::profile("openai", "work"), T0).unwrap();
    assert_eq!((work.error_count, work.until_ms), (2, None));
}

#[test]
fn a_newer_version_is_read_as_far_as_known() {
    let dir = TempDir::new("newer");
    dir.write(&json!({
        "version": 7,
        "usageStats": {"openai:work": {"lastUsed": T0, "newField": {"x": 1}}},
        "backstop": {"scopes": {
            "openai:work/gpt-4o": {"reason": "rate_limit", "until_ms": T0 + 1_000, "consecutive": 1,
                                   "error_count": 1, "changed_at": T0, "shiny": true},
            "weird scope": {}
        }}
    }));
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let w = store.warnings();
    assert!(
        w.iter().any(|l| l.starts_with("version: 7 is newer")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|l| l.starts_with("backstop.scopes[\"weird scope\"]: invalid cooldown scope")),
        "{w:?}"
    );
    let scope = Scope::profile_model("openai", "work", "gpt-4o");
    assert_eq!(store.usable_at(&scope, T0), Some(T0 + 1_000));
    // Rewritten without losing what it did not understand, and still version 7.
    store.record_failure(
        &Scope::profile("openai", "x"),
        &penalty(Reason::Auth, 1_000),
        T0,
    );
    store.flush_now().unwrap();
    let v = dir.json();
    assert_eq!(v["version"], 7);
    assert_eq!(v["usageStats"]["openai:work"]["newField"], json!({"x": 1}));
    assert_eq!(v["backstop"]["scopes"]["openai:work/gpt-4o"]["shiny"], true);
}

#[test]
fn a_file_written_by_openclaw_is_understood() {
    let dir = TempDir::new("openclaw");
    dir.write(&json!({
        "usageStats": {
            "openai:work": {"lastUsed": T0 - 1, "cooldownUntil": T0 + 600_000, "errorCount": 2},
            "openai:home": {"disabledUntil": T0 + 18_000_000, "disabledReason": "billing"},
            "anthropic:team": {"cooldownUntil": T0 + 5_000, "cooldownReason": "overloaded",
                               "cooldownModel": "claude-opus-4-5"}
        }
    }));
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let work = store.get(&Scope::profile("openai", "work"), T0).unwrap();
    assert_eq!(
        (work.state, work.until_ms, work.error_count),
        (BreakerState::Open, Some(T0 + 600_000), 2)
    );
    let home = store.get(&Scope::profile("openai", "home"), T0).unwrap();
    assert_eq!(home.reason, Some(Reason::Billing));
    let team = Scope::profile_model("anthropic", "team", "claude-opus-4-5");
    assert_eq!(store.usable_at(&team, T0), Some(T0 + 5_000));
    assert_eq!(store.last_used("openai", "work"), Some(T0 - 1));
}

#[test]
fn a_corrupt_file_is_moved_aside_and_the_store_serves() {
    let dir = TempDir::new("corrupt");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.file(), "{\"version\": 1, \"usageStats\": {\"openai:wo").unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let aside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("auth-state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(store.snapshot(T0).is_empty());
    let scope = Scope::profile("openai", "work");
    store.record_failure(&scope, &penalty(Reason::Auth, 1_000), T0);
    assert!(!store.admit(&scope, T0, 1).is_allowed());
    store.flush_now().unwrap();
    assert_eq!(
        dir.json()["usageStats"]["openai:work"]["cooldownReason"],
        "auth"
    );
    // Not an object at all is corrupt too.
    drop(store);
    std::fs::write(dir.file(), "[1, 2]").unwrap();
    let store = open(&dir, &clock);
    assert!(store.snapshot(T0).is_empty());
    assert!(!dir.file().exists() || dir.json().is_object());
}

#[test]
fn two_stores_on_one_dir_lose_no_update() {
    let dir = TempDir::new("hammer");
    let clock = Arc::new(ManualClock::new(T0));
    let stores = [Arc::new(open(&dir, &clock)), Arc::new(open(&dir, &clock))];
    const THREADS: usize = 3;
    const N: u32 = 200;
    let shared = Scope::profile_model("openai", "shared", "gpt-4o");
    let mut handles = Vec::new();
    for (si, store) in stores.iter().enumerate() {
        for t in 0..THREADS {
            let (store, shared) = (store.clone(), shared.clone());
            handles.push(std::thread::spawn(move || {
                let own = Scope::profile_model("openai", &format!("p{si}-{t}"), "gpt-4o");
                let p = penalty(Reason::RateLimit, 30_000);
                for i in 0..N {
                    let now = T0 + u64::from(i);
                    store.record_failure(&own, &p, now);
                    store.record_failure(&shared, &p, now);
                    store.mark_used("openai", &format!("p{si}-{t}"), now);
                    if i % 50 == 0 {
                        store.flush_now().unwrap();
                    }
                }
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    for s in &stores {
        s.flush_now().unwrap();
    }
    let v = dir.json();
    let scopes = &v["backstop"]["scopes"];
    for si in 0..2 {
        for t in 0..THREADS {
            let key = format!("openai:p{si}-{t}/gpt-4o");
            assert_eq!(scopes[&key]["error_count"], N, "{key}");
            assert_eq!(
                v["usageStats"][format!("openai:p{si}-{t}")]["lastUsed"],
                T0 + u64::from(N) - 1
            );
        }
    }
    let total = 2 * THREADS as u32 * N;
    assert_eq!(scopes["openai:shared/gpt-4o"]["error_count"], total);
    assert_eq!(
        v["usageStats"]["openai:shared"]["failureCounts"]["rate_limit"],
        total
    );
    // Both stores converged on the file's view.
    stores[0].flush_now().unwrap();
    for s in &stores {
        assert_eq!(s.get(&shared, T0).unwrap().error_count, total);
    }
}

#[test]
fn another_process_cooldowns_and_clears_are_learned() {
    let dir = TempDir::new("learn");
    let clock = Arc::new(ManualClock::new(T0));
    let a = open(&dir, &clock);
    let b = open(&dir, &clock);
    let scope = Scope::profile_model("openai", "work", "gpt-4o");
    a.record_failure(&scope, &penalty(Reason::RateLimit, 30_000), T0);
    a.flush_now().unwrap();
    assert_eq!(b.admit(&scope, T0, 1), Admission::Allowed, "not read yet");
    b.flush_now().unwrap();
    assert!(!b.admit(&scope, T0 + 1, 1).is_allowed());
    // A clear by hand in b reaches a.
    clock.set(T0 + 5);
    assert!(b.clear(&scope));
    b.flush_now().unwrap();
    a.flush_now().unwrap();
    assert_eq!(a.admit(&scope, T0 + 6, 1), Admission::Allowed);
    // clear_all too.
    a.record_failure(&scope, &penalty(Reason::RateLimit, 30_000), T0 + 7);
    a.flush_now().unwrap();
    clock.set(T0 + 8);
    b.clear_all();
    b.flush_now().unwrap();
    a.flush_now().unwrap();
    assert!(a.snapshot(T0 + 8).is_empty());
}

#[test]
fn the_flusher_writes_a_cooldown_within_a_second() {
    let dir = TempDir::new("flusher");
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    store.record_failure(
        &Scope::profile("openai", "work"),
        &penalty(Reason::Auth, 300_000),
        T0,
    );
    let start = Instant::now();
    let on_disk = loop {
        let seen = std::fs::read_to_string(dir.file())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["usageStats"]["openai:work"]["cooldownUntil"] == T0 + 300_000);
        if seen || start.elapsed() > Duration::from_secs(1) {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(on_disk, "not on disk after {:?}", start.elapsed());
}

#[test]
fn read_state_reads_without_touching_anything() {
    let dir = TempDir::new("read");
    assert!(read_state(&dir.0, T0).unwrap().scopes.is_empty());
    assert!(!dir.0.exists());
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store = open(&dir, &clock);
        store.record_failure(
            &Scope::profile("openai", "work"),
            &penalty(Reason::Auth, 1_000),
            T0,
        );
        store.mark_used("openai", "work", T0);
    }
    let view = read_state(&dir.0, T0 + 2_000).unwrap();
    assert_eq!(view.scopes.len(), 1);
    assert_eq!(view.scopes[0].1.state, BreakerState::HalfOpen);
    assert_eq!(view.usage, vec![("openai".into(), "work".into(), T0)]);
    std::fs::write(dir.file(), "nope").unwrap();
    assert!(read_state(&dir.0, T0).is_err());
    assert!(dir.file().exists(), "read_state never moves a file");
}

#[cfg(unix)]
#[test]
fn open_or_memory_falls_back_when_the_dir_is_unusable() {
    let dir = TempDir::new("fallback");
    std::fs::create_dir_all(&dir.0).unwrap();
    // A regular file where the dir should be.
    let not_a_dir = dir.0.join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let store = open_or_memory(&not_a_dir.join("state"));
    assert!(format!("{store:?}").starts_with("MemoryStore"));
    let store = open_or_memory(&dir.0.join("state"));
    assert!(format!("{store:?}").starts_with("FileStore"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.0.join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Env var that turns this test's process into the writer that gets killed.
const CRASH_WRITER: &str = "BACKSTOP_TEST_CRASH_WRITER_DIR";

#[cfg(unix)]
#[test]
fn sigkill_mid_write_always_leaves_a_readable_file() {
    if let Some(dir) = std::env::var_os(CRASH_WRITER) {
        crash_writer(Path::new(&dir));
        return;
    }
    let dir = TempDir::new("crash");
    std::fs::create_dir_all(&dir.0).unwrap();
    let exe = std::env::current_exe().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut kills = 0;
    let mut seen_versions = std::collections::HashSet::new();
    while kills < 20 && Instant::now() < deadline {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "state::file::tests::sigkill_mid_write_always_leaves_a_readable_file",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_WRITER, &dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write at least once, then kill it at a random instant.
        let last = |dir: &TempDir| {
            std::fs::read_to_string(dir.file())
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["usageStats"]["crash:w"]["lastUsed"].as_u64())
        };
        let before = last(&dir);
        let start = Instant::now();
        while last(&dir) == before && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(1..60)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let text = std::fs::read_to_string(dir.file()).unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kill {kills}: the file does not parse ({e})"));
        assert_eq!(v["version"], 1);
        seen_versions.insert(v["usageStats"]["crash:w"]["lastUsed"].as_u64());
        // No corrupt file was ever moved aside.
        assert!(
            std::fs::read_dir(&dir.0)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().contains("corrupt"))
        );
    }
    assert_eq!(kills, 20);
    assert_eq!(
        seen_versions.len(),
        20,
        "the writer made progress before each kill"
    );
    let temps = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    eprintln!("{temps} temp file(s) left by writes cut short");
    // And a store opens on what was left.
    let store = FileStore::open(&dir.0).unwrap();
    assert!(store.warnings().is_empty());
    assert!(!store.snapshot(T0).is_empty());
}

/// The child: rewrite a sizeable file as fast as possible until killed (at most 30 s).
fn crash_writer(dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = FileStore::open_with_clock(dir, clock.clone()).unwrap();
    let p = penalty(Reason::RateLimit, 30_000);
    let start = Instant::now();
    let mut i = store.last_used("crash", "w").unwrap_or(T0);
    while start.elapsed() < Duration::from_secs(30) {
        i += 1;
        for n in 0..300 {
            store.record_failure(&Scope::profile_model("crash", &format!("p{n}"), "m"), &p, i);
        }
        store.mark_used("crash", "w", i);
        store.flush_now().unwrap();
    }
}
