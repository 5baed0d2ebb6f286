//! A responder chooses each request's step from the request itself (key, body),
//! after the queue and before the default.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backstop_fake::{FakeProvider, Recorded, Step};
use common::*;
use serde_json::{Value, json};

async fn send(url: &str, key: &str, text: &str) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_responder_sees_the_request_and_picks_its_step() {
    let fake = FakeProvider::start().unwrap();
    fake.set_recording(false);
    let url = format!("{}/chat/completions", fake.openai_base_url());
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    fake.set_responder(Some(Arc::new(move |req: &Recorded| {
        seen.fetch_add(1, Ordering::SeqCst);
        assert!(req.path.ends_with("/chat/completions"));
        match req.header("authorization") {
            Some("Bearer sk-bad") => Some(Step::error_kind(401, "invalid_api_key")),
            _ if req.body["messages"][0]["content"] == "quota?" => {
                Some(Step::error_kind(429, "insufficient_quota"))
            }
            _ => None,
        }
    })));
    fake.set_default(Step::text("default answer"));

    assert_eq!(send(&url, "sk-bad", "hi").await.status(), 401);
    let resp = send(&url, "sk-good", "quota?").await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    // `None` falls through to the default step.
    let body: Value = send(&url, "sk-good", "hi").await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "default answer");
    // A queued step comes first, without asking the responder.
    fake.push(Step::text("queued"));
    let body: Value = send(&url, "sk-bad", "hi").await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "queued");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Recording off: the responder still works, nothing is kept.
    assert!(fake.requests().is_empty());
    // Removed, the default answers again.
    fake.set_responder(None);
    assert_eq!(send(&url, "sk-bad", "hi").await.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
