//! The harness shared by the gateway's integration tests: scripted fake providers,
//! a real gateway on port 0 in-process, and helpers to read what the client got.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use backstop::Config;
use backstop::config::{ConfigOrigin, Format, MapEnv};
use backstop::sse::{SseEvent, SseParser};
use backstop_fake::{FakeHandle, FakeProvider, Recorded};
use serde_json::{Value, json};

/// The key clients present to the gateway (`server.api_keys`).
pub const CLIENT_KEY: &str = "sk-client-itest-0123456789abcdef";
/// The keys the gateway holds for its upstreams.
pub const OA_KEY: &str = "sk-upstream-oa-0123456789abcdef";
pub const OA2_KEY: &str = "sk-upstream-oa2-0123456789abcdef";
pub const AN_KEY: &str = "sk-ant-upstream-an-0123456789abcdef";
/// Two keys of one provider, for key rotation.
pub const ROT_FIRST_KEY: &str = "sk-upstream-rot-first-0123456789";
pub const ROT_SECOND_KEY: &str = "sk-upstream-rot-second-012345678";

/// Timeouts short enough that timeout tests finish fast, and one attempt per target
/// (so attempt counts do not depend on same-target retries).
pub const TIMEOUTS: &str =
    "timeouts: { connect_ms: 1000, first_token_ms: 300, idle_ms: 300, request_ms: 5000 },
  retry: { max_attempts: 1 }";

/// Upper bound on any one exchange with the gateway, so a bug hangs no test forever.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(15);

/// The environment the configs' `$VAR` keys come from, with a fresh state directory
/// (`$BACKSTOP_STATE_DIR`) under the system temp dir, so no test shares cooldowns or
/// touches the user's `~/.backstop`.
pub fn env() -> MapEnv {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // A random part too: a process id comes back in a later run, and a directory an
    // earlier test binary left behind under it would hand this test its cooldowns.
    let state = std::env::temp_dir().join(format!(
        "backstop-itest-{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u64(..)
    ));
    MapEnv::default()
        .with("BACKSTOP_STATE_DIR", &state.display().to_string())
        .with("CLIENT_KEY", CLIENT_KEY)
        .with("OA_KEY", OA_KEY)
        .with("OA2_KEY", OA2_KEY)
        .with("AN_KEY", AN_KEY)
        .with("ROT_FIRST_KEY", ROT_FIRST_KEY)
        .with("ROT_SECOND_KEY", ROT_SECOND_KEY)
}

/// Parse a JSON5 config with keys from [`env`].
pub fn config(text: &str) -> Config {
    backstop::config::from_str(text, Format::Json5, ConfigOrigin::Environment, &env())
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
}

/// One fake per provider of the standard config, so each one's requests can be asserted.
pub struct Fakes {
    /// Provider `oa` (OpenAI API): models gpt-4o, gpt-4o-mini.
    pub oa: FakeHandle,
    /// Provider `oa2` (OpenAI API): model gpt-4.1.
    pub oa2: FakeHandle,
    /// Provider `an` (Anthropic API): model claude-sonnet-4-5.
    pub an: FakeHandle,
    /// Provider `rot` (OpenAI API) with two profiles, `first` then `second`: model rot-model.
    pub rot: FakeHandle,
}

impl Fakes {
    pub fn start() -> Fakes {
        Fakes {
            oa: FakeProvider::start().unwrap(),
            oa2: FakeProvider::start().unwrap(),
            an: FakeProvider::start().unwrap(),
            rot: FakeProvider::start().unwrap(),
        }
    }

    /// Every request any fake received.
    pub fn all_requests(&self) -> Vec<Recorded> {
        let mut out = self.oa.requests();
        out.extend(self.oa2.requests());
        out.extend(self.an.requests());
        out.extend(self.rot.requests());
        out
    }

    /// The standard providers block.
    pub fn providers(&self) -> String {
        format!(
            r#"providers: {{
    oa: {{ api: "openai", base_url: "{oa}", auth: [{{ profile: "main", key: "$OA_KEY" }}], models: ["gpt-4o", "gpt-4o-mini"] }},
    oa2: {{ api: "openai", base_url: "{oa2}", auth: [{{ profile: "main", key: "$OA2_KEY" }}], models: ["gpt-4.1"] }},
    an: {{ api: "anthropic", base_url: "{an}", auth: [{{ profile: "main", key: "$AN_KEY" }}], models: ["claude-sonnet-4-5"] }},
    rot: {{ api: "openai", base_url: "{rot}", auth: [{{ profile: "first", key: "$ROT_FIRST_KEY" }}, {{ profile: "second", key: "$ROT_SECOND_KEY" }}], models: ["rot-model"] }},
  }}"#,
            oa = self.oa.openai_base_url(),
            oa2 = self.oa2.openai_base_url(),
            an = self.an.anthropic_base_url(),
            rot = self.rot.openai_base_url(),
        )
    }

    /// The standard config: client keys, four providers, a default chain
    /// `oa/gpt-4o → oa2/gpt-4.1 → an/claude-sonnet-4-5`, and agents:
    /// - `claude-first`: `an/claude-sonnet-4-5 → oa/gpt-4o`
    /// - `solo`: `oa/gpt-4o-mini`, no fallbacks
    /// - `solo-claude`: `an/claude-sonnet-4-5`, no fallbacks
    /// - `rotating`: `rot/rot-model → oa/gpt-4o`
    /// - `openai-pair`: `oa/gpt-4o → oa2/gpt-4.1`
    /// - `claude-then-openai`: `an/claude-sonnet-4-5 → oa/gpt-4o` (same as claude-first)
    pub fn standard_config(&self) -> String {
        self.config_with("")
    }

    /// The standard config with `extra` JSON5 entries added at the top level.
    /// (Tests that fail a target start a fresh gateway before relying on that target
    /// again, so they stay valid once failures put targets into cooldown.)
    pub fn config_with(&self, extra: &str) -> String {
        self.config_custom("", extra)
    }

    /// The standard config with `server_extra` entries added to `server` and `extra` at the top level.
    pub fn config_custom(&self, server_extra: &str, extra: &str) -> String {
        format!(
            r#"{{
  server: {{ api_keys: ["$CLIENT_KEY"], max_body_bytes: 65536, max_json_depth: 16, {server_extra} }},
  {providers},
  agents: {{
    defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["oa2/gpt-4.1", "an/claude-sonnet-4-5"] }} }},
    list: [
      {{ id: "claude-first", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: ["oa/gpt-4o"] }} }},
      {{ id: "solo", model: {{ primary: "oa/gpt-4o-mini", fallbacks: [] }} }},
      {{ id: "solo-claude", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: [] }} }},
      {{ id: "rotating", model: {{ primary: "rot/rot-model", fallbacks: ["oa/gpt-4o"] }} }},
      {{ id: "openai-pair", model: {{ primary: "oa/gpt-4o", fallbacks: ["oa2/gpt-4.1"] }} }},
    ],
  }},
  {TIMEOUTS},
  {extra}
}}"#,
            providers = self.providers(),
        )
    }
}

/// A gateway serving in a task of the test's runtime (it stops with the runtime).
pub struct Gateway {
    pub base: String,
    client: reqwest::Client,
}

impl Gateway {
    /// Start the real gateway on `127.0.0.1:0` with this JSON5 config.
    pub async fn start(config_text: &str) -> Gateway {
        Gateway::start_config(config(config_text)).await
    }

    pub async fn start_config(config: Config) -> Gateway {
        let listener = backstop_server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(backstop_server::serve(
            Arc::new(config),
            listener,
            std::future::pending::<()>(),
        ));
        Gateway {
            base: format!("http://{addr}"),
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A bare request, no key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// `POST /v1/chat/completions` with the client key as Bearer.
    pub fn openai(&self, body: &Value) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, "/v1/chat/completions")
            .bearer_auth(CLIENT_KEY)
            .json(body)
    }

    /// `POST /v1/messages` with the client key in `x-api-key`, as the Anthropic SDK sends it.
    pub fn anthropic(&self, body: &Value) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, "/v1/messages")
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(body)
    }

    /// `GET path` with the client key as Bearer.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
            .bearer_auth(CLIENT_KEY)
    }
}

pub fn client() -> reqwest::Client {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A Chat Completions request body.
pub fn openai_body(model: &str, text: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    })
}

/// A Messages request body.
pub fn anthropic_body(model: &str, text: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    })
}

/// What the client got.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// False when the body broke off (a reset or cut) instead of ending cleanly.
    pub clean_end: bool,
    /// How long the whole exchange took.
    pub elapsed: Duration,
}

/// Send and read the whole answer (bounded in time).
pub async fn send(rb: reqwest::RequestBuilder) -> Got {
    let started = std::time::Instant::now();
    let exchange = async {
        let mut resp = rb.send().await.expect("the gateway answered");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let clean_end = loop {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        Got {
            status,
            headers,
            body,
            clean_end,
            elapsed: Duration::ZERO,
        }
    };
    let mut got = tokio::time::timeout(EXCHANGE_LIMIT, exchange)
        .await
        .expect("the exchange with the gateway finished in time");
    got.elapsed = started.elapsed();
    got
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn events(&self) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = parser.push(&self.body);
        events.extend(parser.finish());
        events
    }

    /// The JSON data of every event (`[DONE]` and anything not JSON skipped).
    pub fn json_events(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.data).ok())
            .collect()
    }

    /// The request id header, asserted present and non-empty.
    pub fn request_id(&self) -> &str {
        let id = self
            .header("x-backstop-request-id")
            .unwrap_or_else(|| panic!("no x-backstop-request-id: {:?}", self.headers));
        assert!(!id.is_empty());
        id
    }

    /// Assert an OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}`,
    /// the status, the type and that the message contains every needle. Returns the message.
    pub fn openai_error(&self, status: u16, ty: &str, needles: &[&str]) -> String {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "content type of an error"
        );
        self.request_id();
        let v = self.json();
        let err = v
            .get("error")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("not an OpenAI error: {v}"));
        for key in ["message", "type", "param", "code"] {
            assert!(err.contains_key(key), "OpenAI error without {key}: {v}");
        }
        assert_eq!(err["type"], ty, "error type: {v}");
        let message = err["message"]
            .as_str()
            .expect("message is text")
            .to_string();
        for n in needles {
            assert!(message.contains(n), "message {message:?} lacks {n:?}");
        }
        message
    }

    /// Assert an Anthropic-shaped error: `{"type": "error", "error": {"type", "message"}}`.
    pub fn anthropic_error(&self, status: u16, ty: &str, needles: &[&str]) -> String {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "content type of an error"
        );
        self.request_id();
        let v = self.json();
        assert_eq!(v["type"], "error", "not an Anthropic error: {v}");
        assert_eq!(v["error"]["type"], ty, "error type: {v}");
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message: {v}"))
            .to_string();
        for n in needles {
            assert!(message.contains(n), "message {message:?} lacks {n:?}");
        }
        message
    }

    /// Concatenated `delta.content` of an OpenAI stream.
    pub fn openai_stream_text(&self) -> String {
        self.json_events()
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect()
    }

    /// Concatenated `text_delta` text of an Anthropic stream.
    pub fn anthropic_stream_text(&self) -> String {
        self.json_events()
            .iter()
            .filter(|e| e.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta"))
            .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
            .collect()
    }
}

/// The text of a complete OpenAI answer.
pub fn openai_answer_text(v: &Value) -> &str {
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no choices[0].message.content: {v}"))
}

/// The text of a complete Anthropic answer.
pub fn anthropic_answer_text(v: &Value) -> String {
    v["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {v}"))
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect()
}

/// Assert no fake received a request.
pub fn assert_no_upstream_requests(fakes: &Fakes) {
    let seen = fakes.all_requests();
    assert!(seen.is_empty(), "the fakes received requests: {seen:?}");
}

/// The `model` each recorded request asked for.
pub fn models_seen(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.body["model"].as_str().unwrap_or("").to_string())
        .collect()
}
