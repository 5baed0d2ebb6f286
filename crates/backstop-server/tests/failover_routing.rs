//! Where a failure sends the request: key rotation (and the cooldown it leaves),
//! larger context windows, client errors passed through; and how a fallback's
//! answer is reported (body `model` and `usage`, headers).
#![allow(clippy::unwrap_used)]

mod failover_common;

use backstop::clock::Clock;
use backstop_fake::{ErrorStep, FakeHandle, Reply as FakeReply, Step, Usage};
use failover_common::*;
use serde_json::{Value, json};

/// Two keys on `openai/gpt-4o`; `backup/gpt-4o-mini` as the fallback.
fn two_keys(primary: &FakeHandle, backup: &FakeHandle) -> Value {
    config(
        json!({
            "openai": openai_provider(primary, &["a", "b"], json!(["gpt-4o"])),
            "backup": openai_provider(backup, &["x"], json!(["gpt-4o-mini"])),
        }),
        "openai/gpt-4o",
        &["backup/gpt-4o-mini"],
        json!({}),
    )
}

/// The first key fails with `step`; the second answers; `scope` cools with `reason`.
async fn rotation(step: Step, reason: &str, scope: &str, not_scope: &str) {
    let (primary, backup) = (fake(), fake());
    primary.push(step);
    let gw = Gateway::start(two_keys(&primary, &backup)).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(
        r.header("x-backstop-fallback"),
        None,
        "a key rotation is not a fallback"
    );
    assert_eq!(keys_seen(&primary), ["a", "b"]);
    assert!(backup.requests().is_empty());

    let listed = gw.cooldowns().await;
    let c = gw
        .cooldown(scope)
        .await
        .unwrap_or_else(|| panic!("{scope} not in {listed:?}"));
    assert_eq!(c["reason"], reason, "{c}");
    assert_eq!(c["provider"], "openai");
    assert_eq!(c["profile"], "a");
    assert!(c["until_ms"].as_u64().unwrap() > gw.clock.now_ms(), "{c}");
    assert!(gw.cooldown(not_scope).await.is_none(), "{listed:?}");
    assert!(
        listed.iter().all(|c| c["profile"] != "b"),
        "the key that answered is not cooling: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_on_rate_limit_cools_the_profile_for_that_model() {
    rotation(bare_429(), "rate_limit", "openai:a/gpt-4o", "openai:a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_on_401_cools_the_whole_profile() {
    rotation(Step::error(401), "auth", "openai:a", "openai:a/gpt-4o").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_on_insufficient_quota_disables_the_whole_profile() {
    rotation(
        Step::error_kind(429, "insufficient_quota"),
        "billing",
        "openai:a",
        "openai:a/gpt-4o",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotated_away_key_is_skipped_by_the_next_request() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::error(401));
    let gw = Gateway::start(two_keys(&primary, &backup)).await;
    assert_eq!(gw.chat(&openai_request("default", false)).await.status, 200);

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.attempts(), Some(1));
    assert_eq!(keys_seen(&primary), ["a", "b", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_moves_only_to_a_model_with_a_larger_window() {
    let upstream = fake();
    upstream.push(Step::error_kind(400, "context_length_exceeded"));
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a", "b"], json!([
            {"id": "gpt-small", "context_window": 8000},
            {"id": "gpt-smaller", "context_window": 4000},
            {"id": "gpt-same", "context_window": 8000},
            {"id": "gpt-big", "context_window": 200000},
        ]))}),
        "openai/gpt-small",
        &["openai/gpt-smaller", "openai/gpt-same", "openai/gpt-big"],
        json!({"retry": {"max_attempts": 3}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    // Same model never retried (not even on the other key); smaller and equal windows skipped.
    assert_eq!(models_seen(&upstream), ["gpt-small", "gpt-big"]);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-big"));
    assert_eq!(r.header("x-backstop-fallback"), Some("context_overflow"));
    assert_eq!(r.attempts(), Some(2));
    // A context overflow is the request's fault: nothing cools down.
    assert!(gw.cooldowns().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_with_no_larger_window_goes_back_to_the_client() {
    let upstream = fake();
    upstream.push(Step::error_kind(400, "context_length_exceeded"));
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!([
            {"id": "gpt-small", "context_window": 8000},
            {"id": "gpt-smaller", "context_window": 4000},
        ]))}),
        "openai/gpt-small",
        &["openai/gpt-smaller"],
        json!({}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    // The provider's type and code, so agents that compact on overflow still see it.
    assert_eq!(e["code"], "context_length_exceeded", "{}", r.body);
    assert_eq!(e["type"], "invalid_request_error", "{}", r.body);
    // PRODUCT §8: the provider's words, then every attempt.
    let message = e["message"].as_str().unwrap();
    assert!(
        message.ends_with(" — attempts: openai/gpt-small (a): context_overflow [400]"),
        "{message}"
    );
    assert!(
        message.len() > 60,
        "the provider's message is kept: {message}"
    );
    assert_eq!(r.header("x-backstop-model"), None, "no model answered");
    assert_eq!(models_seen(&upstream), ["gpt-small"]);
}

/// PRODUCT §8: every model of the chain not found is the deciding failure's status
/// (404), its code, and a message listing every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_not_found_lists_each_attempt_with_the_providers_code() {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::error_kind(404, "model_not_found"));
    backup.set_default(Step::error_kind(404, "model_not_found"));
    let gw = Gateway::start(two_keys(&primary, &backup)).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 404, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "model_not_found", "{}", r.body);
    let message = e["message"].as_str().unwrap();
    // The provider's words first, then each attempt (and the key left cooling with the
    // model's not-found cooldown, never tried).
    assert!(
        message.starts_with("The model `gpt-4o-mini` does not exist"),
        "{message}"
    );
    assert!(
        message.contains(
            " — attempts: openai/gpt-4o (a): model_not_found [404]; \
             backup/gpt-4o-mini (x): model_not_found [404]"
        ),
        "{message}"
    );
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-model"), None, "no model answered");
}

/// The same for an Anthropic client on Anthropic upstreams (the provider's body, its
/// message extended), and for an OpenAI client on them (OpenAI's own code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_context_overflow_keeps_the_provider_error_in_each_format() {
    let upstream = fake();
    upstream.set_default(Step::error_kind(400, "context_length_exceeded"));
    let gw = Gateway::start(config(
        json!({"an": anthropic_provider(&upstream, &["k"], json!([
            {"id": "claude-small", "context_window": 8000},
            {"id": "claude-smaller", "context_window": 4000},
        ]))}),
        "an/claude-small",
        &["an/claude-smaller"],
        json!({}),
    ))
    .await;

    let r = gw.messages(&anthropic_request("default", false)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "error", "{}", r.body);
    assert_eq!(v["error"]["type"], "invalid_request_error", "{}", r.body);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("prompt is too long"), "{message}");
    assert!(
        message.ends_with(" — attempts: an/claude-small (k): context_overflow [400]"),
        "{message}"
    );

    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "context_length_exceeded", "{}", r.body);
    assert_eq!(e["type"], "invalid_request_error", "{}", r.body);
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("prompt is too long"), "{message}");
    assert!(
        message.ends_with(" — attempts: an/claude-small (k): context_overflow [400]"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_policy_is_passed_through_and_never_retried() {
    let (primary, backup) = (fake(), fake());
    let refusal = json!({"error": {
        "message": "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
        "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}});
    primary.push(Step::Error(ErrorStep {
        status: 400,
        body: Some(refusal.clone()),
        ..ErrorStep::default()
    }));
    let gw = Gateway::start(two_keys(&primary, &backup)).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json(), refusal, "the provider's own body, untouched");
    assert_eq!(keys_seen(&primary), ["a"], "tried once, no other key");
    assert!(backup.requests().is_empty(), "the fallback is never tried");
    assert_eq!(r.attempts(), Some(1));
}

/// Refusals, bad requests and context overflows are the request's fault (§3.2: no
/// cooldown): however many there are, they never steer later requests away from the
/// model, which would also let a refused request be answered by another model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_never_mark_a_model_degraded() {
    let (primary, backup) = (fake(), fake());
    let gw = Gateway::start(two_keys(&primary, &backup)).await;
    for kind in [
        "content_policy_violation",
        "invalid_request_error",
        "context_length_exceeded",
    ] {
        primary.set_default(Step::error_kind(400, kind));
        for _ in 0..12 {
            let r = gw.chat(&openai_request("default", false)).await;
            assert_eq!(r.status, 400, "{kind}: {}", r.body);
            assert_eq!(r.attempts(), Some(1), "{kind}");
        }
    }
    assert!(backup.requests().is_empty(), "the fallback is never tried");
    primary.set_default(Step::Echo);
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.header("x-backstop-fallback"), None);
    assert!(backup.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallbacks_answer_reports_its_own_model_and_usage() {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::error(503));
    backup.push(Step::Reply(FakeReply {
        text: "from the fallback".into(),
        model: Some("gpt-4o-mini-2024-07-18".into()),
        usage: Some(Usage {
            input_tokens: 21,
            output_tokens: 4,
        }),
        ..FakeReply::default()
    }));
    let gw = Gateway::start(two_keys(&primary, &backup)).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(body["usage"]["prompt_tokens"], 21);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 25);
    assert_eq!(r.header("x-backstop-model"), Some("backup/gpt-4o-mini"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_format_fallbacks_answer_reports_its_own_model_and_usage() {
    let (primary, fallback) = (fake(), fake());
    primary.set_default(Step::error(503));
    let answer = FakeReply {
        text: "from claude".into(),
        model: Some("claude-sonnet-4-5-20250929".into()),
        usage: Some(Usage {
            input_tokens: 33,
            output_tokens: 6,
        }),
        ..FakeReply::default()
    };
    fallback.push_many([Step::Reply(answer.clone()), Step::Reply(answer)]);
    let gw = Gateway::start(config(
        json!({
            "openai": openai_provider(&primary, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(&fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        json!({}),
    ))
    .await;

    // Not streaming.
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(body["choices"][0]["message"]["content"], "from claude");
    assert_eq!(body["usage"]["prompt_tokens"], 33);
    assert_eq!(body["usage"]["completion_tokens"], 6);

    // Streaming, with usage requested.
    let mut req = openai_request("default", true);
    req["stream_options"] = json!({"include_usage": true});
    let r = gw.chat(&req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.text, "from claude");
    assert!(s.done);
    assert!(!s.models.is_empty());
    assert!(
        s.models.iter().all(|m| m == "claude-sonnet-4-5-20250929"),
        "{:?}",
        s.models
    );
    let usage = s.usage.expect("usage chunk");
    assert_eq!(usage["prompt_tokens"], 33, "{usage}");
    assert_eq!(usage["completion_tokens"], 6, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_answer_carries_the_fallback_headers() {
    let (primary, fallback) = (fake(), fake());
    primary.push(bare_429());
    let gw = Gateway::start(config(
        json!({
            "openai": openai_provider(&primary, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(&fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        json!({}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));
    assert_eq!(
        r.header("x-backstop-fallback-notice"),
        Some("switched to anthropic/claude-sonnet-4-5 (openai/gpt-4o rate limited)")
    );
    assert!(r.header("x-backstop-request-id").is_some());
    assert_eq!(fallback.requests()[0].path, "/v1/messages");
    assert_eq!(keys_seen(&fallback), ["t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_answer_carries_no_fallback_headers() {
    let (primary, backup) = (fake(), fake());
    let gw = Gateway::start(two_keys(&primary, &backup)).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.attempts(), Some(1));
    assert_eq!(r.header("x-backstop-fallback"), None);
    assert_eq!(r.header("x-backstop-fallback-notice"), None);
}

#[tokio::test]
async fn a_redirect_never_carries_a_key_to_another_host() {
    let an = fake();
    let elsewhere = fake();
    let gw = Gateway::start(config(
        json!({"an": anthropic_provider(&an, &["x"], json!(["m"]))}),
        "an/m",
        &[],
        json!({}),
    ))
    .await;
    an.push(Step::Raw {
        status: 307,
        headers: vec![(
            "location".into(),
            format!("{}/v1/messages", elsewhere.anthropic_base_url()),
        )],
        body: String::new(),
    });
    let r = gw.chat(&openai_request("default", false)).await;
    assert_ne!(r.status, 200, "{}", r.body);
    assert_eq!(an.requests().len(), 1);
    assert!(
        elsewhere.requests().is_empty(),
        "the key followed a redirect to another host"
    );
}

/// What Azure OpenAI (older API versions) answers to a field it does not know.
fn refuses_stream_options() -> Step {
    Step::Error(ErrorStep {
        status: 400,
        body: Some(json!({"error": {
            "message": "Unrecognized request argument supplied: stream_options",
            "type": "invalid_request_error", "param": null, "code": null}})),
        ..ErrorStep::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rejects_stream_options_is_asked_again_without_it_and_remembered() {
    let (oa, an) = (fake(), fake());
    let gw = Gateway::start(config(
        json!({
            "openai": openai_provider(&oa, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(&an, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        json!({}),
    ))
    .await;
    // A non-streamed request is streamed from the upstream with `stream_options` added by
    // Backstop; the server refuses the field: asked again at once without it, same target.
    oa.push(refuses_stream_options());
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-fallback"), None);
    let sent: Vec<bool> = oa
        .requests()
        .iter()
        .map(|q| q.body.get("stream_options").is_some())
        .collect();
    assert_eq!(sent, [true, false]);
    assert!(
        gw.cooldown("openai:a/gpt-4o").await.is_none(),
        "no cooldown for it"
    );
    // Remembered: the next requests (non-streamed, and translated from Anthropic) go
    // without it the first time.
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.attempts(), Some(1), "{}", r.body);
    let r = gw.messages(&anthropic_request("openai/gpt-4o", true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        oa.requests()
            .iter()
            .skip(2)
            .all(|q| q.body.get("stream_options").is_none())
    );

    // A client's own `stream_options` that a server refuses is the client's: returned as
    // the provider sent it, not retried.
    let (oa2, an2) = (fake(), fake());
    let gw = Gateway::start(config(
        json!({
            "openai": openai_provider(&oa2, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(&an2, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &[],
        json!({}),
    ))
    .await;
    oa2.push(refuses_stream_options());
    let mut own = openai_request("default", true);
    own["stream_options"] = json!({"include_usage": true});
    let r = gw.chat(&own).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("Unrecognized request argument supplied: stream_options")
    );
    assert_eq!(oa2.requests().len(), 1);
}
