//! `backstop cooldowns` and `backstop status` against a state dir and a running gateway,
//! and the gateway's own use of the state dir.
#![allow(clippy::unwrap_used)]

use backstop::clock::ManualClock;
use backstop::config::Ladder;
use backstop::failover::Reason;
use backstop::state::{FileStore, Penalty, Scope, StateStore};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_backstop");
/// Nothing listens on port 1: the commands fall back to the state dir.
const DEAD: &str = "http://127.0.0.1:1";
const FAR: u64 = 4_102_444_800_000; // 2100-01-01

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "backstop-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn state(&self) -> PathBuf {
        self.0.join("state")
    }

    /// A config with one keyless provider, this state dir, and `server.api_keys` when given.
    fn config(&self, api_key: Option<&str>) -> PathBuf {
        let keys = api_key.map_or(String::new(), |k| format!("api_keys: [\"{k}\"],"));
        let text = format!(
            r#"{{ server: {{ listen: "127.0.0.1:1", {keys} }},
                 providers: {{ ollama: {{ models: ["llama3.2"] }} }},
                 state: {{ dir: "{}" }} }}"#,
            self.state().display()
        );
        let p = self.0.join("backstop.json5");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn penalty(reason: Reason) -> Penalty {
    Penalty {
        reason,
        ladder: Ladder {
            base_ms: 60_000,
            cap_ms: 60_000,
        },
        retry_after: None,
        max_retry_after: Duration::from_secs(60),
        jitter: 0.0,
        failure_window_ms: 86_400_000,
        probe_interval_ms: 0,
    }
}

/// Cool two scopes down until far in the future.
fn seed(state: &Path) {
    let clock = Arc::new(ManualClock::new(FAR - 60_000));
    let store = FileStore::open_with_clock(state, clock).unwrap();
    let now = FAR - 60_000;
    store.record_failure(
        &Scope::profile_model("ollama", "default", "llama3.2"),
        &penalty(Reason::RateLimit),
        now,
    );
    store.record_failure(
        &Scope::profile_model("ollama", "default", "llama3.2"),
        &penalty(Reason::RateLimit),
        now,
    );
    store.record_failure(
        &Scope::profile("ollama", "spare"),
        &penalty(Reason::Billing),
        now,
    );
    store.flush_now().unwrap();
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_STATE_DIR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn list_and_clear_in_the_state_dir() {
    let dir = Dir::new("list");
    let config = dir.config(None);
    let cfg = config.to_str().unwrap();
    seed(&dir.state());

    let o = run(&["cooldowns", "list", "--config", cfg, "--url", DEAD]);
    assert!(o.status.success(), "{o:?}");
    let table = stdout(&o);
    let header = table.lines().next().unwrap();
    for col in ["SCOPE", "STATE", "REASON", "UNTIL", "IN", "ERRORS"] {
        assert!(header.contains(col), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("ollama:default/llama3.2"))
        .unwrap();
    assert!(row.contains("open") && row.contains("rate_limit"), "{row}");
    assert!(
        row.contains("2100-01-01T00:00:00.000Z") && row.trim_end().ends_with('2'),
        "{row}"
    );
    assert!(
        table.contains("ollama:spare") && table.contains("billing"),
        "{table}"
    );

    let o = run(&[
        "cooldowns",
        "list",
        "--json",
        "--config",
        cfg,
        "--url",
        DEAD,
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let items = v["cooldowns"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(v["source"].as_str().unwrap().starts_with("state dir"));
    let first = items
        .iter()
        .find(|i| i["scope"] == "ollama:default/llama3.2")
        .unwrap();
    assert_eq!(first["until_ms"], FAR);
    assert_eq!(first["error_count"], 2);

    // Clear one: gone from the list and from the file's OpenClaw fields.
    let o = run(&[
        "cooldowns",
        "clear",
        "ollama:default/llama3.2",
        "--config",
        cfg,
        "--url",
        DEAD,
    ]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&[
        "cooldowns",
        "list",
        "--json",
        "--config",
        cfg,
        "--url",
        DEAD,
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cooldowns"].as_array().unwrap().len(), 1);
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.state().join("auth-state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        file["usageStats"]["ollama:default"]
            .get("cooldownUntil")
            .is_none()
    );
    assert_eq!(
        file["usageStats"]["ollama:spare"]["disabledReason"],
        "billing"
    );

    // Clearing it again: nothing to clear.
    let o = run(&[
        "cooldowns",
        "clear",
        "ollama:default/llama3.2",
        "--config",
        cfg,
        "--url",
        DEAD,
    ]);
    assert_eq!(o.status.code(), Some(1));

    // status groups by provider, profile, model.
    let o = run(&["status", "--json", "--config", cfg, "--url", DEAD]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["providers"][0];
    assert_eq!(p["id"], "ollama");
    let spare = p["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "spare")
        .unwrap();
    assert_eq!(spare["state"], "disabled");
    assert_eq!(spare["reason"], "billing");
    let default = p["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "default")
        .unwrap();
    assert_eq!(default["state"], "ok");
    let o = run(&["status", "--config", cfg, "--url", DEAD]);
    assert!(stdout(&o).contains("profile spare"), "{}", stdout(&o));

    // --all.
    let o = run(&[
        "cooldowns",
        "clear",
        "--all",
        "--config",
        cfg,
        "--url",
        DEAD,
    ]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&["cooldowns", "list", "--config", cfg, "--url", DEAD]);
    assert_eq!(stdout(&o).trim(), "no cooldowns");
}

/// Run with stdout a pipe whose reading end is already closed (`| head` having exited).
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_STATE_DIR")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = Dir::new("epipe");
    let config = dir.config(None);
    let cfg = config.to_str().unwrap();
    seed(&dir.state());
    for args in [
        &["status", "--json", "--config", cfg, "--url", DEAD][..],
        &["status", "--config", cfg, "--url", DEAD],
        &["cooldowns", "list", "--config", cfg, "--url", DEAD],
        &["check", "--config", cfg],
    ] {
        let o = run_into_closed_pipe(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {o:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        run(&["cooldowns", "clear", "nonsense"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["cooldowns", "clear"]).status.code(), Some(2));
    assert_eq!(
        run(&["cooldowns", "clear", "a:b", "--all"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["cooldowns", "frobnicate"]).status.code(), Some(2));
}

#[test]
fn a_corrupt_state_file_is_an_error_for_list() {
    let dir = Dir::new("corruptlist");
    let config = dir.config(None);
    std::fs::create_dir_all(dir.state()).unwrap();
    std::fs::write(dir.state().join("auth-state.json"), "{oops").unwrap();
    let o = run(&[
        "cooldowns",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--url",
        DEAD,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not valid JSON"),
        "{o:?}"
    );
}

/// A running gateway, killed on drop.
struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(config: &Path) -> Gateway {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("BACKSTOP_STATE_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let url = line.strip_prefix("listening on ").unwrap().to_owned();
        Gateway { child, url }
    }

    /// A plain HTTP/1.1 GET, returning the status code.
    fn get_status(&self, path: &str) -> u16 {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_corrupt_state_file_is_moved_aside_and_the_gateway_serves() {
    let dir = Dir::new("corruptserve");
    let config = dir.config(None);
    std::fs::create_dir_all(dir.state()).unwrap();
    std::fs::write(dir.state().join("auth-state.json"), "\u{0}garbage").unwrap();
    let gw = Gateway::start(&config);
    assert_eq!(gw.get_status("/health"), 200);
    let names: Vec<String> = std::fs::read_dir(dir.state())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("auth-state.json.corrupt-")),
        "{names:?}"
    );
}

#[test]
fn the_commands_use_a_running_gateway() {
    let dir = Dir::new("gateway");
    let config = dir.config(Some("client-key-123"));
    let cfg = config.to_str().unwrap();
    seed(&dir.state());
    let gw = Gateway::start(&config);
    // The gateway loaded the seeded cooldowns; the CLI reaches it with the client key.
    let o = run(&[
        "cooldowns",
        "list",
        "--json",
        "--config",
        cfg,
        "--url",
        &gw.url,
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["source"].as_str().unwrap().starts_with("gateway"), "{v}");
    assert_eq!(v["cooldowns"].as_array().unwrap().len(), 2, "{v}");

    // `status` shows the running gateway's /status: as JSON, and as readable tables.
    let o = run(&["status", "--json", "--config", cfg, "--url", &gw.url]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["providers"].is_array() && v["chains"].is_array(), "{v}");
    let o = run(&["status", "--config", cfg, "--url", &gw.url]);
    assert!(o.status.success(), "{o:?}");
    let table = stdout(&o);
    assert!(table.contains("KEY") && table.contains("CHAIN"), "{table}");
    let store = table
        .lines()
        .find(|l| l.starts_with("cooldowns "))
        .unwrap_or_default();
    assert!(
        store.contains("reachable") && (store.contains("file") || store.contains("memory")),
        "{table}"
    );
    assert!(
        table.contains("ollama/llama3.2  cooldown  rate_limit"),
        "{table}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("from the gateway"),
        "{o:?}"
    );

    let o = run(&[
        "cooldowns",
        "clear",
        "ollama:spare",
        "--config",
        cfg,
        "--url",
        &gw.url,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("gateway"), "{}", stdout(&o));
    let o = run(&[
        "cooldowns",
        "clear",
        "ollama:spare",
        "--config",
        cfg,
        "--url",
        &gw.url,
    ]);
    assert_eq!(o.status.code(), Some(1));

    // The gateway writes the clear to disk within a second.
    let state_file = dir.state().join("auth-state.json");
    let start = Instant::now();
    let cleared = loop {
        let text = std::fs::read_to_string(&state_file).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["usageStats"].get("ollama:spare").is_none() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(1) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        cleared,
        "the clear was not on disk within a second: {}",
        std::fs::read_to_string(&state_file).unwrap()
    );

    // A wrong key is an error, not a silent fallback.
    let bad = dir.config(Some("wrong-key"));
    let o = run(&[
        "cooldowns",
        "list",
        "--config",
        bad.to_str().unwrap(),
        "--url",
        &gw.url,
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

/// With `state.redis_url` and no gateway running, `cooldowns` and `status` read and clear
/// the shared Redis that the gateway instances use, not the state dir.
#[tokio::test(flavor = "multi_thread")]
async fn redis_cooldowns_and_status_use_redis_when_no_gateway_runs() {
    use backstop::state::redis::{RedisOptions, RedisStore};
    let redis = backstop_fake::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    // A gateway instance cooled a key in the shared Redis (its window ends in 2100).
    let clock = Arc::new(ManualClock::new(FAR - 60_000));
    let instance = RedisStore::connect_with(&redis.url(), clock, RedisOptions::default())
        .await
        .unwrap();
    let scope = Scope::profile_model("ollama", "default", "llama3.2");
    instance.record_failure(&scope, &penalty(Reason::RateLimit), FAR - 60_000);
    instance.flush().await;

    let dir = Dir::new("redis");
    let config = dir.0.join("backstop.json5");
    std::fs::write(
        &config,
        format!(
            r#"{{ server: {{ listen: "127.0.0.1:1" }},
                 providers: {{ ollama: {{ models: ["llama3.2"] }} }},
                 state: {{ dir: "{}", redis_url: "{}" }} }}"#,
            dir.state().display(),
            redis.url()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let source = format!("redis {}", redis.url());

    let o = run(&["cooldowns", "list", "--json", "--config", cfg]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source"], source.as_str(), "{v}");
    let items = v["cooldowns"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["scope"], "ollama:default/llama3.2");
    assert_eq!(items[0]["until_ms"], FAR);

    let o = run(&["status", "--json", "--config", cfg]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source"], source.as_str(), "{v}");
    assert!(v.to_string().contains("rate_limit"), "{v}");

    let o = run(&[
        "cooldowns",
        "clear",
        "ollama:default/llama3.2",
        "--config",
        cfg,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains(&format!("cleared ollama:default/llama3.2 ({source})")),
        "{o:?}"
    );
    let o = run(&["cooldowns", "list", "--json", "--config", cfg]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cooldowns"].as_array().unwrap().len(), 0, "{v}");
    // The running instance hears of it.
    let start = Instant::now();
    while instance.get(&scope, FAR - 60_000).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the instance kept the cooldown"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing was written to the state dir.
    assert!(!dir.state().join("auth-state.json").exists());
    instance.shutdown().await;

    // Redis gone and no gateway: a clear error, not the state dir.
    drop(redis);
    let o = run(&["cooldowns", "list", "--config", cfg]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be reached"),
        "{o:?}"
    );
}
