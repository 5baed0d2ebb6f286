#![allow(clippy::unwrap_used)]
//! Sessions in the engine (PRODUCT §3.5): stickiness, user pins, reset, the fallback
//! notice and its clearing, and the narrow rollback that never clobbers a concurrent
//! manual change. Cooldowns run on the gateway's manual clock.

mod failover_common;

use backstop_fake::Step;
use failover_common::*;
use serde_json::{Value, json};
use std::time::Duration;

const SESSION: &str = "x-backstop-session";

async fn chat_in(gw: &Gateway, session: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![(SESSION, session)];
    headers.extend_from_slice(extra);
    gw.post(
        "/v1/chat/completions",
        &openai_request("default", false),
        &headers,
    )
    .await
}

async fn session(gw: &Gateway, id: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{id}", gw.url))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn put_session(gw: &Gateway, id: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .put(format!("{}/v1/sessions/{id}", gw.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn delete_session(gw: &Gateway, id: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("{}/v1/sessions/{id}", gw.url))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_session_keeps_its_key_while_it_is_healthy() {
    let oa = fake();
    let gw = Gateway::start(config(
        json!({"oa": openai_provider(&oa, &["a", "b"], json!(["m1"]))}),
        "oa/m1",
        &[],
        json!({}),
    ))
    .await;
    // Without a session, least-recently-used rotation spreads the keys.
    for _ in 0..2 {
        assert_eq!(gw.chat(&openai_request("default", false)).await.status, 200);
    }
    assert_eq!(keys_seen(&oa), ["a", "b"]);
    oa.clear();
    // A session sticks to the key it got, so the provider's prompt cache stays warm.
    for _ in 0..3 {
        gw.advance(Duration::from_secs(1));
        assert_eq!(chat_in(&gw, "s1", &[]).await.status, 200);
    }
    let seen = keys_seen(&oa);
    assert!(seen.iter().all(|k| k == &seen[0]), "{seen:?}");
    let (status, s) = session(&gw, "s1").await;
    assert_eq!(status, 200);
    assert_eq!(s["profile_override"], seen[0].as_str());
    assert_eq!(s["profile_override_source"], "auto");
    assert_eq!(
        s["model_override"],
        Value::Null,
        "no model pin while the primary answers"
    );
}

#[tokio::test]
async fn a_fallback_pins_the_session_until_the_primary_recovers() {
    let oa = fake();
    let an = fake();
    let gw = Gateway::start(config(
        json!({
            "oa": openai_provider(&oa, &["a"], json!(["m1"])),
            "an": anthropic_provider(&an, &["x"], json!(["m2"])),
        }),
        "oa/m1",
        &["an/m2"],
        json!({}),
    ))
    .await;
    oa.push_many([Step::error(503), Step::error(503)]);
    let r = chat_in(&gw, "s2", &[]).await;
    assert_eq!(r.header("x-backstop-model"), Some("an/m2"));
    let (_, s) = session(&gw, "s2").await;
    assert_eq!(s["provider_override"], "an");
    assert_eq!(s["model_override"], "m2");
    assert_eq!(s["model_override_source"], "auto");
    assert!(
        s["fallback_notice"]
            .as_str()
            .unwrap()
            .starts_with("switched to an/m2"),
        "{s}"
    );
    // While the primary cools down the session goes straight to its pinned fallback.
    oa.clear();
    let r = chat_in(&gw, "s2", &[]).await;
    assert_eq!(r.header("x-backstop-model"), Some("an/m2"));
    assert_eq!(r.header("x-backstop-fallback"), Some("overloaded"));
    assert!(oa.requests().is_empty());
    // Past the cooldown the primary is usable again: the session returns to it, once told.
    gw.advance(Duration::from_secs(400));
    let r = chat_in(&gw, "s2", &[]).await;
    assert_eq!(r.header("x-backstop-model"), Some("oa/m1"));
    assert!(r.header("x-backstop-fallback").is_none());
    assert_eq!(
        r.header("x-backstop-fallback-notice"),
        Some("fallback cleared: back on oa/m1")
    );
    let (_, s) = session(&gw, "s2").await;
    assert_eq!(s["model_override"], Value::Null, "{s}");
    assert_eq!(s["fallback_notice"], Value::Null, "{s}");
    // Said once.
    let r = chat_in(&gw, "s2", &[]).await;
    assert!(r.header("x-backstop-fallback-notice").is_none());
}

#[tokio::test]
async fn a_user_profile_pin_is_honoured_survives_reset_and_cooldowns() {
    let oa = fake();
    let gw = Gateway::start(config(
        json!({"oa": openai_provider(&oa, &["a", "b"], json!(["m1"]))}),
        "oa/m1",
        &[],
        json!({}),
    ))
    .await;
    let r = chat_in(&gw, "s3", &[("x-backstop-profile", "b")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(keys_seen(&oa), ["b"]);
    let (_, s) = session(&gw, "s3").await;
    assert_eq!(s["profile_override"], "b");
    assert_eq!(s["profile_override_source"], "user");
    // A reset drops automatic pins only.
    assert_eq!(delete_session(&gw, "s3").await, 204);
    let (status, s) = session(&gw, "s3").await;
    assert_eq!(status, 200);
    assert_eq!(s["profile_override"], "b");
    // While the pinned key cools down another serves, and the pin stays.
    oa.clear();
    oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    let r = chat_in(&gw, "s3", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(keys_seen(&oa), ["b", "a"]);
    let (_, s) = session(&gw, "s3").await;
    assert_eq!(s["profile_override"], "b");
    assert_eq!(s["profile_override_source"], "user");
    // An unknown profile is a clear 400.
    let r = chat_in(&gw, "s3", &[("x-backstop-profile", "zzz")]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("x-backstop-profile"), "{}", r.body);
    assert!(r.body.contains("valid: oa:a, oa:b"), "{}", r.body);
    // The `provider:profile` form the error lists is accepted and pins the profile.
    oa.clear();
    let r = chat_in(&gw, "s3", &[("x-backstop-profile", "oa:a")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(keys_seen(&oa), ["a"]);
    let (_, s) = session(&gw, "s3").await;
    assert_eq!(s["profile_override"], "a");
    assert_eq!(s["profile_override_source"], "user");
    let r = chat_in(&gw, "s3", &[("x-backstop-profile", "an:a")]).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn a_failed_attempt_never_clobbers_a_concurrent_manual_change() {
    let oa = fake();
    let an = fake();
    let gw = Gateway::start(config(
        json!({
            "oa": openai_provider(&oa, &["a"], json!(["m1"])),
            "an": anthropic_provider(&an, &["x"], json!(["m2"])),
        }),
        "oa/m1",
        &["an/m2"],
        json!({"timeouts": {"first_token_ms": 600}, "retry": {"max_attempts": 1}}),
    ))
    .await;
    // The primary fails at once; the fallback hangs until first_token_ms, and while it
    // does the user pins the session by hand.
    oa.push(Step::error(503));
    an.push(Step::Hang);
    let gw_ref = &gw;
    let request = async move { chat_in(gw_ref, "s4", &[]).await };
    let manual = async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Mid-attempt, the engine's own pins for the fallback are in place.
        let (_, during) = session(gw_ref, "s4").await;
        let status = put_session(gw_ref, "s4", json!({"model": "oa/m1", "profile": "a"})).await;
        (during, status)
    };
    let (reply, (during, put_status)) = tokio::join!(request, manual);
    assert_eq!(put_status, 200);
    assert_eq!(during["model_override"], "m2", "{during}");
    assert_eq!(during["model_override_source"], "auto", "{during}");
    assert_eq!(reply.status, 503, "{}", reply.body);
    // The failed attempt rolled back only what still held what it wrote: nothing.
    let (_, s) = session(&gw, "s4").await;
    assert_eq!(s["provider_override"], "oa", "{s}");
    assert_eq!(s["model_override"], "m1", "{s}");
    assert_eq!(s["model_override_source"], "user", "{s}");
    assert_eq!(s["profile_override"], "a", "{s}");
    assert_eq!(s["profile_override_source"], "user", "{s}");
}

#[tokio::test]
async fn a_failed_attempt_rolls_its_own_pins_back() {
    let oa = fake();
    let an = fake();
    let gw = Gateway::start(config(
        json!({
            "oa": openai_provider(&oa, &["a"], json!(["m1"])),
            "an": anthropic_provider(&an, &["x"], json!(["m2"])),
        }),
        "oa/m1",
        &["an/m2"],
        json!({"retry": {"max_attempts": 1}}),
    ))
    .await;
    // A first good answer pins the primary's key.
    assert_eq!(chat_in(&gw, "s5", &[]).await.status, 200);
    // Then everything fails: the fallback's pins written for its attempt are undone.
    oa.push(Step::error(503));
    an.push(Step::error(500));
    assert_eq!(chat_in(&gw, "s5", &[]).await.status, 503);
    let (_, s) = session(&gw, "s5").await;
    assert_eq!(s["model_override"], Value::Null, "{s}");
    assert_eq!(s["profile_override"], "a", "{s}");
    assert_eq!(s["fallback_notice"], Value::Null, "{s}");
}
