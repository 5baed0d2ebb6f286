//! Shared set-up for the operations tests (`/status`, `/metrics`, the dashboard): a real
//! gateway on port 0 serving an engine on a [`ManualClock`] and a [`MemoryStore`],
//! scripted fake providers, and a headless Chromium driver.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use backstop::clock::ManualClock;
use backstop::config::{ConfigOrigin, Format, MapEnv};
use backstop::failover::Engine;
use backstop::state::MemoryStore;
use backstop_fake::{FakeHandle, FakeProvider};
use backstop_server::AppState;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Where the manual clock starts (epoch ms, 2027-01-15T08:00:00Z).
pub const CLOCK_START_MS: u64 = 1_800_000_000_000;

pub fn fake() -> FakeHandle {
    FakeProvider::start().expect("start fake provider")
}

/// The key a profile is given.
pub fn key_of(profile: &str) -> String {
    format!("sk-test-{profile}-0123456789abcdef")
}

fn provider(api: &str, base_url: String, profiles: &[&str], models: Value) -> Value {
    let auth: Vec<Value> = profiles
        .iter()
        .map(|p| json!({"profile": p, "key": key_of(p)}))
        .collect();
    json!({"api": api, "base_url": base_url, "auth": auth, "models": models})
}

pub fn openai_provider(fake: &FakeHandle, profiles: &[&str], models: Value) -> Value {
    provider("openai", fake.openai_base_url(), profiles, models)
}

pub fn anthropic_provider(fake: &FakeHandle, profiles: &[&str], models: Value) -> Value {
    provider("anthropic", fake.anthropic_base_url(), profiles, models)
}

/// `openai/gpt-4o` (profile `a`) first, `anthropic/claude-sonnet-4-5` (profile `t`) as
/// the fallback; one attempt per target, so one request is one probe.
pub fn two_model_config(primary: &FakeHandle, fallback: &FakeHandle, overrides: Value) -> Value {
    let mut base = json!({
        "providers": {
            "openai": openai_provider(primary, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(fallback, &["t"], json!(["claude-sonnet-4-5"])),
        },
        "agents": {"defaults": {"model": {
            "primary": "openai/gpt-4o", "fallbacks": ["anthropic/claude-sonnet-4-5"]}}},
        "retry": {"max_attempts": 1, "backoff_ms": 5},
        "timeouts": {"connect_ms": 2000, "first_token_ms": 3000, "idle_ms": 3000, "request_ms": 10000},
    });
    merge(&mut base, overrides);
    base
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A running gateway.
pub struct Gateway {
    pub url: String,
    pub port: u16,
    pub clock: Arc<ManualClock>,
    pub engine: Arc<Engine>,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

/// What the client got.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl Gateway {
    pub async fn start(config: Value) -> Gateway {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = backstop::config::from_str(
            &config.to_string(),
            Format::Json5,
            ConfigOrigin::Environment,
            &MapEnv::new(),
        )
        .unwrap_or_else(|e| panic!("bad test config: {e}"));
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let engine = Arc::new(
            Engine::with_state(
                Arc::new(config),
                Arc::new(MemoryStore::new()),
                clock.clone(),
            )
            .expect("engine"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let state = Arc::new(AppState::with_engine(engine.clone()));
        tokio::spawn(async move {
            let _ = backstop_server::serve_state(state, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap();
        Gateway {
            url: format!("http://{addr}"),
            port: addr.port(),
            clock,
            engine,
            client,
            _shutdown: tx,
        }
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("gateway body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `POST /v1/chat/completions` (OpenAI, not streamed) with these headers.
    pub async fn chat_with(&self, headers: &[(&str, &str)]) -> Reply {
        self.chat_body(&chat_request(false), headers).await
    }

    /// `POST /v1/chat/completions` with this body and these headers.
    pub async fn chat_body(&self, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.send().await.expect("gateway answers")).await
    }

    pub async fn chat(&self) -> Reply {
        self.chat_with(&[]).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.send().await.expect("gateway answers")).await
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Value {
        let r = self.get("/status", &[("accept", "application/json")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Move the manual clock to `ms` (epoch); never real time.
    pub fn set_clock(&self, ms: u64) {
        self.clock.set(ms);
    }
}

/// An OpenAI Chat Completions request on the default chain.
pub fn chat_request(stream: bool) -> Value {
    json!({
        "model": "default",
        "messages": [{"role": "user", "content": "Tell me about foxes"}],
        "stream": stream,
    })
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
