//! Shared set-up for the failover integration tests: a real gateway on port 0
//! serving an engine on a [`ManualClock`] and a [`MemoryStore`], scripted fake
//! providers, and readers for what the client and each fake saw.
//!
//! Every test binary includes this module and uses a different part of it; the
//! operations tests add their status readers and a Chromium driver on top
//! (`ops_common`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use backstop::clock::ManualClock;
use backstop::config::{ConfigOrigin, Format, MapEnv};
use backstop::failover::Engine;
use backstop::state::MemoryStore;
use backstop_fake::{ErrorStep, FakeHandle, FakeProvider, Recorded, Step};
use backstop_server::AppState;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where the manual clock starts (epoch ms, 2027-01-15): far from zero so that
/// "until" times are realistic.
pub const CLOCK_START_MS: u64 = 1_800_000_000_000;

/// What the fake's default `Echo` step answers to [`openai_request`]'s prompt.
pub const ECHO: &str = "echo: Tell me about foxes";

/// An OpenAI 429 that gives no hint of when to come back (no header, no "try again in").
pub fn bare_429() -> Step {
    Step::Error(ErrorStep {
        status: 429,
        body: Some(json!({"error": {
            "message": "Rate limit reached for requests",
            "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
        ..ErrorStep::default()
    })
}

/// A fake provider.
pub fn fake() -> FakeHandle {
    FakeProvider::start().expect("start fake provider")
}

/// The key a profile is given: key-shaped (`sk-test-<profile>-0123456789abcdef`), so the
/// redaction tests can look for it.
pub fn key_of(profile: &str) -> String {
    format!("sk-test-{profile}-0123456789abcdef")
}

/// The profile a key of [`key_of`] belongs to (the key itself when it is not one).
pub fn profile_of_key(key: &str) -> String {
    key.strip_prefix("sk-test-")
        .and_then(|k| k.strip_suffix("-0123456789abcdef"))
        .unwrap_or(key)
        .to_string()
}

/// An OpenAI-API provider on `fake` with these profiles (keys from [`key_of`]) and catalogue.
pub fn openai_provider(fake: &FakeHandle, profiles: &[&str], models: Value) -> Value {
    provider("openai", fake.openai_base_url(), profiles, models)
}

/// An Anthropic-API provider on `fake`.
pub fn anthropic_provider(fake: &FakeHandle, profiles: &[&str], models: Value) -> Value {
    provider("anthropic", fake.anthropic_base_url(), profiles, models)
}

fn provider(api: &str, base_url: String, profiles: &[&str], models: Value) -> Value {
    let auth: Vec<Value> = profiles
        .iter()
        .map(|p| json!({"profile": p, "key": key_of(p)}))
        .collect();
    json!({"api": api, "base_url": base_url, "auth": auth, "models": models})
}

/// A config: these providers, a default chain, small backoff and timeouts that a test
/// can wait for, deep-merged with `overrides`.
pub fn config(providers: Value, primary: &str, fallbacks: &[&str], overrides: Value) -> Value {
    let mut base = json!({
        "providers": providers,
        "agents": {"defaults": {"model": {"primary": primary, "fallbacks": fallbacks}}},
        "retry": {"max_attempts": 2, "backoff_ms": 5},
        "timeouts": {"connect_ms": 2000, "first_token_ms": 3000, "idle_ms": 3000, "request_ms": 10000},
    });
    merge(&mut base, overrides);
    base
}

/// Deep-merge `over` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut Value, over: Value) {
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
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn attempts(&self) -> Option<u32> {
        self.header("x-backstop-attempts")
            .and_then(|v| v.parse().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The text of an OpenAI non-streaming answer.
    pub fn openai_text(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no message content in {}", self.body))
            .to_string()
    }
}

impl Gateway {
    /// Start a gateway on `config` (JSON, as a config file would say it).
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

    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.post(format!("{}{path}", self.url)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::send(req).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::send(req).await
    }

    async fn send(req: reqwest::RequestBuilder) -> Reply {
        let started = Instant::now();
        let resp = req.send().await.expect("gateway answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("gateway body");
        Reply {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    /// `POST /v1/chat/completions`.
    pub async fn chat(&self, body: &Value) -> Reply {
        self.post("/v1/chat/completions", body, &[]).await
    }

    /// `POST /v1/chat/completions` with this body and these headers.
    pub async fn chat_body(&self, body: &Value, headers: &[(&str, &str)]) -> Reply {
        self.post("/v1/chat/completions", body, headers).await
    }

    /// `POST /v1/chat/completions` of [`chat_request`] (not streamed) with these headers.
    pub async fn chat_with(&self, headers: &[(&str, &str)]) -> Reply {
        self.chat_body(&chat_request(false), headers).await
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

    /// `POST /v1/messages`.
    pub async fn messages(&self, body: &Value) -> Reply {
        self.post("/v1/messages", body, &[]).await
    }

    /// `GET /v1/cooldowns` → its `cooldowns` array.
    pub async fn cooldowns(&self) -> Vec<Value> {
        let resp = self
            .client
            .get(format!("{}/v1/cooldowns", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.unwrap();
        v["cooldowns"].as_array().cloned().unwrap_or_default()
    }

    /// The cooldown listed for `scope`, if any.
    pub async fn cooldown(&self, scope: &str) -> Option<Value> {
        self.cooldowns()
            .await
            .into_iter()
            .find(|c| c["scope"] == scope)
    }

    /// Move the manual clock on (cooldowns, budgets); never real time.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// An OpenAI Chat Completions request.
pub fn openai_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about foxes"}],
        "stream": stream,
    })
}

/// An OpenAI Chat Completions request on the default chain.
pub fn chat_request(stream: bool) -> Value {
    openai_request("default", stream)
}

/// An Anthropic Messages request.
pub fn anthropic_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Tell me about foxes"}],
        "stream": stream,
    })
}

/// The `model` of every request a fake received, in order.
pub fn models_seen(fake: &FakeHandle) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The profile of every request a fake received, by its key (`Authorization: Bearer` or
/// `x-api-key`), in order.
pub fn keys_seen(fake: &FakeHandle) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| profile_of_key(&key_of_request(r)))
        .collect()
}

pub fn key_of_request(r: &Recorded) -> String {
    r.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| r.header("x-api-key"))
        .unwrap_or("")
        .to_string()
}

/// The data payloads of an SSE body, with their event names.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let normalized = body.replace("\r\n", "\n");
    let mut out = Vec::new();
    for block in normalized.split("\n\n") {
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}

/// What an OpenAI SSE stream said.
#[derive(Debug, Default)]
pub struct OpenAiStream {
    /// Every content delta, concatenated.
    pub text: String,
    /// `data: [DONE]` arrived.
    pub done: bool,
    /// An in-band `{"error": …}` event.
    pub error: Option<Value>,
    pub finish_reason: Option<String>,
    /// The `model` of every chunk.
    pub models: Vec<String>,
    /// The last `usage` object.
    pub usage: Option<Value>,
    /// Anything after `[DONE]` or an error event (should be nothing).
    pub trailing: usize,
}

pub fn parse_openai_stream(body: &str) -> OpenAiStream {
    let mut s = OpenAiStream::default();
    for (_, data) in sse_events(body) {
        if s.done || s.error.is_some() {
            s.trailing += 1;
            continue;
        }
        if data == "[DONE]" {
            s.done = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("client got a malformed chunk ({e}): {data}"));
        if v.get("error").is_some() {
            s.error = Some(v["error"].clone());
            continue;
        }
        if let Some(m) = v["model"].as_str() {
            s.models.push(m.to_string());
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            s.text.push_str(t);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            s.finish_reason = Some(f.to_string());
        }
        if v.get("usage").is_some_and(|u| !u.is_null()) {
            s.usage = Some(v["usage"].clone());
        }
    }
    s
}

/// What an Anthropic SSE stream said.
#[derive(Debug, Default)]
pub struct AnthropicStream {
    pub text: String,
    /// `message_stop` arrived.
    pub stopped: bool,
    /// An in-band `error` event's payload.
    pub error: Option<Value>,
    pub stop_reason: Option<String>,
    pub trailing: usize,
}

pub fn parse_anthropic_stream(body: &str) -> AnthropicStream {
    let mut s = AnthropicStream::default();
    for (event, data) in sse_events(body) {
        if s.stopped || s.error.is_some() {
            s.trailing += 1;
            continue;
        }
        let v: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("client got a malformed event ({e}): {data}"));
        let kind = event.unwrap_or_else(|| v["type"].as_str().unwrap_or("").to_string());
        match kind.as_str() {
            "content_block_delta" => {
                if let Some(t) = v["delta"]["text"].as_str() {
                    s.text.push_str(t);
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    s.stop_reason = Some(r.to_string());
                }
            }
            "message_stop" => s.stopped = true,
            "error" => s.error = Some(v["error"].clone()),
            _ => {}
        }
    }
    s
}

/// The text of a message's content in either format (a string, or text parts/blocks).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}
