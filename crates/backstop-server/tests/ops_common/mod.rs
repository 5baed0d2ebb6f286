//! Shared set-up for the operations tests (`/status`, `/metrics`, the dashboard): the
//! failover tests' gateway harness (`failover_common`: a real gateway on port 0 serving
//! an engine on a [`ManualClock`](backstop::clock::ManualClock) and a
//! [`MemoryStore`](backstop::state::MemoryStore), scripted fake providers), plus readers
//! for status documents and metrics, and a headless Chromium driver.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../failover_common/mod.rs"]
mod base;
pub use base::*;

use backstop_fake::FakeHandle;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `openai/gpt-4o` (profile `a`) first, `anthropic/claude-sonnet-4-5` (profile `t`) as
/// the fallback; one attempt per target, so one request is one probe.
pub fn two_model_config(primary: &FakeHandle, fallback: &FakeHandle, overrides: Value) -> Value {
    let mut over = json!({"retry": {"max_attempts": 1}});
    merge(&mut over, overrides);
    config(
        json!({
            "openai": openai_provider(primary, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        over,
    )
}

/// The provider `id` of a status document.
pub fn provider_of<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("no provider {id} in {status:#}"))
}

fn find<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .and_then(|xs| xs.iter().find(|x| x["id"] == id))
        .unwrap_or_else(|| panic!("no {id} in {list:#}"))
}

/// A profile of a provider in a status document.
pub fn profile_of<'a>(status: &'a Value, provider: &str, profile: &str) -> &'a Value {
    find(&provider_of(status, provider)["profiles"], profile)
}

/// A model of a provider in a status document.
pub fn model_of<'a>(status: &'a Value, provider: &str, model: &str) -> &'a Value {
    find(&provider_of(status, provider)["models"], model)
}

/// The chain of `agent` in a status document.
pub fn chain_of<'a>(status: &'a Value, agent: &str) -> &'a Value {
    status["chains"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["agent"] == agent))
        .unwrap_or_else(|| panic!("no chain {agent} in {status:#}"))
}

/// The sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// The value of a Prometheus sample line `name{labels} value` (labels exactly as written).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Headless Chromium, or `None` when the developer opted out with
/// `BACKSTOP_SKIP_BROWSER_TESTS=1`. Fails the test when it is missing otherwise.
pub fn chromium() -> Option<PathBuf> {
    if std::env::var("BACKSTOP_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("BACKSTOP_SKIP_BROWSER_TESTS=1: skipping the browser test");
        return None;
    }
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(p) => Some(p),
        None => panic!(
            "headless Chromium is needed for the dashboard tests but `chromium` is not on PATH: \
             install it (Debian: apt-get install chromium; .ci/run does this), or set \
             BACKSTOP_SKIP_BROWSER_TESTS=1 to skip browser tests on a developer machine"
        ),
    }
}

/// What a headless Chromium run produced.
#[derive(Debug)]
pub struct BrowserRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run headless Chromium on `url` with these extra arguments (`--dump-dom`,
/// `--screenshot=…`), a throwaway profile in `dir`, no network beyond the URL, and a
/// watchdog (coreutils `timeout`) so a wedged browser cannot hang the test.
pub async fn run_chromium(chromium: &Path, dir: &Path, url: &str, extra: &[String]) -> BrowserRun {
    let profile = dir.join(format!("profile-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&profile).unwrap();
    let mut args: Vec<String> = vec![
        "--kill-after=10".into(),
        "120".into(),
        chromium.display().to_string(),
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-extensions".into(),
        "--disable-dev-shm-usage".into(),
        "--no-proxy-server".into(),
        "--hide-scrollbars".into(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=3000".into(),
    ];
    args.extend(extra.iter().cloned());
    args.push(url.to_string());
    let out = tokio::task::spawn_blocking(move || Command::new("timeout").args(&args).output())
        .await
        .unwrap()
        .expect("run chromium (through coreutils `timeout`)");
    BrowserRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A scratch directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "backstop-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
