//! `GET/PUT/DELETE /v1/sessions/{id}` through the real gateway on loopback.
#![allow(clippy::unwrap_used)]

use backstop::config::{ConfigOrigin, Format, MapEnv, from_str};
use backstop::state::session::{PinSource, PinWrite};
use backstop_server::AppState;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "sk-client-test";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "backstop-sessions-api-{}-{:016x}",
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

struct Gateway {
    base: String,
    state: Arc<AppState>,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new();
        let text = format!(
            r#"{{
              server: {{ api_keys: ["{KEY}"] }},
              providers: {{
                anthropic: {{ api: "anthropic", base_url: "http://127.0.0.1:9",
                              auth: [{{ profile: "team", key: "k1" }}, {{ profile: "personal", key: "k2" }}],
                              models: ["claude"] }},
                openai: {{ api: "openai", base_url: "http://127.0.0.1:9/v1",
                           auth: [{{ profile: "work", key: "k3" }}], models: ["gpt-4o"] }},
              }},
              state: {{ dir: {dir:?} }},
            }}"#,
            dir = dir.path().display().to_string()
        );
        let config = from_str(
            &text,
            Format::Json5,
            ConfigOrigin::File(dir.path().join("backstop.json5")),
            &MapEnv::new().with_home(dir.path().to_str().unwrap()),
        )
        .unwrap();
        let state = Arc::new(AppState::new(Arc::new(config)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(backstop_server::serve_state(
            state.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Gateway {
            base,
            state,
            client: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        }
    }

    fn url(&self, id: &str) -> String {
        format!("{}/v1/sessions/{id}", self.base)
    }

    async fn get(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.url(id))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, id: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .put(self.url(id))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn delete(&self, id: &str) -> (StatusCode, String) {
        let r = self
            .client
            .delete(self.url(id))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn unknown_session_is_404_in_openai_shape() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message(&body), "no session \"nope\"");
    assert!(body["error"]["type"].is_string(), "{body}");
    let (status, body) = gw.delete("nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn put_sets_user_pins_and_get_shows_them() {
    let gw = Gateway::start().await;
    let (status, put) = gw
        .put(
            "chat-1",
            json!({"model": "openai/gpt-4o-mini", "profile": "work"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let (status, got) = gw.get("chat-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, put);
    let mut keys: Vec<&str> = got
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "fallback_notice",
            "id",
            "model_override",
            "model_override_source",
            "profile_override",
            "profile_override_source",
            "provider_override",
            "updated_at"
        ]
    );
    assert_eq!(got["id"], "chat-1");
    assert_eq!(got["provider_override"], "openai");
    assert_eq!(got["model_override"], "gpt-4o-mini");
    assert_eq!(got["model_override_source"], "user");
    assert_eq!(got["profile_override"], "work");
    assert_eq!(got["profile_override_source"], "user");
    assert_eq!(got["fallback_notice"], Value::Null);
    let at = got["updated_at"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at}"
    );

    // A key left out is left alone; null clears that user pin.
    let (status, after) = gw.put("chat-1", json!({"profile": null})).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["profile_override"], Value::Null);
    assert_eq!(after["profile_override_source"], Value::Null);
    assert_eq!(after["model_override"], "gpt-4o-mini");
}

#[tokio::test]
async fn put_rejects_what_is_not_configured() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .put("s1", json!({"model": "openai/gpt-4o", "profile": "team"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&body),
        "profile \"team\" is not configured for provider \"openai\"; valid: work"
    );
    let (status, body) = gw.put("s1", json!({"profile": "home"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).ends_with("valid: anthropic:team, anthropic:personal, openai:work"),
        "{body}"
    );
    let (status, body) = gw.put("s1", json!({"model": "mistral/large"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).ends_with("configured: anthropic, openai"),
        "{body}"
    );
    let (status, body) = gw.put("s1", json!({"modle": "openai/gpt-4o"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).starts_with(
            "unknown field \"modle\"; valid: model, profile, provider_override, model_override, profile_override"
        ),
        "{body}"
    );
    let (status, body) = gw.put("s1", json!({"model": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "model");
    // `provider:profile`, the form the error lists, is accepted; its provider must match.
    let (status, put) = gw.put("s2", json!({"profile": "openai:work"})).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["profile_override"], "work");
    let (status, body) = gw
        .put(
            "s3",
            json!({"model": "anthropic/claude", "profile": "openai:work"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&body),
        "profile \"openai:work\" is for provider \"openai\", but the model is pinned to provider \"anthropic\"; valid: team, personal"
    );
    let (status, _) = gw.put("s1", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing was created by the rejected requests.
    assert_eq!(gw.get("s1").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_get_body_can_be_edited_and_put_back() {
    let gw = Gateway::start().await;
    gw.state.sessions.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::Auto)
            .notice("switched to openai/gpt-4o"),
    );
    let (status, got) = gw.get("s1").await;
    assert_eq!(status, StatusCode::OK);

    // Written back unchanged: accepted, read-only fields ignored, auto pins stay auto.
    let (status, put) = gw.put("s1", got.clone()).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["model_override_source"], "auto");
    assert_eq!(put["profile_override_source"], "auto");
    assert_eq!(put["fallback_notice"], "switched to openai/gpt-4o");

    // An edited field becomes a user pin.
    let mut edited = got.clone();
    edited["provider_override"] = json!("anthropic");
    edited["model_override"] = json!("claude");
    edited["profile_override"] = json!("personal");
    let (status, put) = gw.put("s1", edited).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["provider_override"], "anthropic");
    assert_eq!(put["model_override"], "claude");
    assert_eq!(put["model_override_source"], "user");
    assert_eq!(put["profile_override"], "personal");
    assert_eq!(put["profile_override_source"], "user");
    assert_eq!(gw.get("s1").await.1, put);

    // The GET names are checked like the short ones.
    let (status, body) = gw
        .put("s1", json!({"provider_override": "openai", "model_override": "gpt-4o", "profile_override": "team"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&body),
        "profile \"team\" is not configured for provider \"openai\"; valid: work"
    );
}

#[tokio::test]
async fn both_names_of_a_pin_must_agree() {
    let gw = Gateway::start().await;
    let (status, put) = gw
        .put(
            "s1",
            json!({"model": "openai/gpt-4o", "provider_override": "openai", "model_override": "gpt-4o",
                   "profile": "work", "profile_override": "work"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["model_override"], "gpt-4o");
    assert_eq!(put["profile_override"], "work");

    let (status, body) = gw
        .put(
            "s2",
            json!({"model": "openai/gpt-4o", "provider_override": "anthropic", "model_override": "claude"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&body),
        "model (\"openai/gpt-4o\") and provider_override/model_override (\"anthropic/claude\") disagree; send one"
    );
    let (status, body) = gw
        .put("s2", json!({"profile": "work", "profile_override": null}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&body),
        "profile (\"work\") and profile_override (null) disagree; send one"
    );
    let (status, body) = gw.put("s2", json!({"model_override": "gpt-4o"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "provider_override");
    // Read-only fields alone set nothing.
    let (status, _) = gw
        .put(
            "s2",
            json!({"id": "s2", "updated_at": "2026-01-01T00:00:00.000Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.get("s2").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_of_a_session_with_only_auto_pins_removes_it() {
    let gw = Gateway::start().await;
    gw.state.sessions.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .profile("work", PinSource::Auto)
            .notice("switched to openai/gpt-4o (anthropic/claude rate limited)"),
    );
    let (status, got) = gw.get("s1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["model_override_source"], "auto");
    assert_eq!(
        got["fallback_notice"],
        "switched to openai/gpt-4o (anthropic/claude rate limited)"
    );
    let (status, body) = gw.delete("s1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, "");
    assert_eq!(gw.get("s1").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_keeps_user_pins() {
    let gw = Gateway::start().await;
    let (status, _) = gw.put("s1", json!({"profile": "team"})).await;
    assert_eq!(status, StatusCode::OK);
    gw.state.sessions.write_pins(
        "s1",
        &PinWrite::new()
            .model("openai", "gpt-4o", PinSource::Auto)
            .notice("switched to openai/gpt-4o"),
    );
    assert_eq!(gw.delete("s1").await.0, StatusCode::NO_CONTENT);
    let (status, got) = gw.get("s1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["profile_override"], "team");
    assert_eq!(got["profile_override_source"], "user");
    assert_eq!(got["provider_override"], Value::Null);
    assert_eq!(got["model_override"], Value::Null);
    assert_eq!(got["fallback_notice"], Value::Null);
}

#[tokio::test]
async fn bad_ids_are_400() {
    let gw = Gateway::start().await;
    let long = "x".repeat(129);
    for id in ["bad%20id", "semi%3Bcolon", long.as_str()] {
        let (status, body) = gw.get(id).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {body}");
        assert_eq!(body["error"]["param"], "id");
        let (status, _) = gw.put(id, json!({"profile": "work"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}");
        assert_eq!(gw.delete(id).await.0, StatusCode::BAD_REQUEST, "{id}");
    }
    assert_eq!(
        message(&gw.get("bad%20id").await.1),
        "session id \"bad id\" contains ' '; use only A-Z a-z 0-9 . _ : -"
    );
    assert_eq!(gw.get(&"x".repeat(128)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_session_api_needs_a_client_key() {
    let gw = Gateway::start().await;
    let r = gw.client.get(gw.url("s1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = gw
        .client
        .put(gw.url("s1"))
        .bearer_auth("wrong")
        .json(&json!({"profile": "work"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(gw.get("s1").await.0, StatusCode::NOT_FOUND);
}
