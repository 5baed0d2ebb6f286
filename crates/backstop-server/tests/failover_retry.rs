//! Failover through the gateway: retries, rotation and fallback on HTTP errors,
//! resets, silence and slow first tokens; the request deadline; the retry budget.
#![allow(clippy::unwrap_used)]

mod failover_common;

use backstop_fake::{Reply as FakeReply, Step};
use failover_common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `openai` (profiles as given, model gpt-4o) first, `backup/gpt-4o-mini` as the fallback.
fn two_providers(
    primary: &backstop_fake::FakeHandle,
    profiles: &[&str],
    backup: &backstop_fake::FakeHandle,
    overrides: Value,
) -> Value {
    config(
        json!({
            "openai": openai_provider(primary, profiles, json!(["gpt-4o"])),
            "backup": openai_provider(backup, &["x"], json!(["gpt-4o-mini"])),
        }),
        "openai/gpt-4o",
        &["backup/gpt-4o-mini"],
        overrides,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_is_waited_out_when_there_is_no_other_key() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::rate_limited(1));
    let gw = Gateway::start(two_providers(&primary, &["a"], &backup, json!({}))).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-fallback"), None);
    assert!(
        r.elapsed >= Duration::from_millis(950),
        "Retry-After: 1 was not waited out: {:?}",
        r.elapsed
    );
    assert_eq!(keys_seen(&primary), ["a", "a"]);
    assert!(backup.requests().is_empty(), "the fallback was not needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_tries_another_key_first() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::rate_limited(1));
    let gw = Gateway::start(two_providers(&primary, &["a", "b"], &backup, json!({}))).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-fallback"), None);
    assert_eq!(keys_seen(&primary), ["a", "b"]);
    assert!(
        r.elapsed < Duration::from_millis(900),
        "waited for Retry-After although another key was free: {:?}",
        r.elapsed
    );
    assert!(backup.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_rate_limit_without_retry_after_is_not_hammered() {
    let upstream = fake();
    upstream.set_default(bare_429());
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o", "gpt-4o-mini"]))}),
        "openai/gpt-4o",
        &["openai/gpt-4o-mini"],
        json!({"retry": {"max_attempts": 3}}),
    ))
    .await;

    // The first request tries each model once: a 429 without Retry-After is never
    // retried on the same target.
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert!(r.header("retry-after").is_some());
    assert_eq!(models_seen(&upstream), ["gpt-4o", "gpt-4o-mini"]);

    // Then both cool down: each further request probes only the soonest, once.
    for i in 0..4 {
        let r = gw.chat(&openai_request("default", false)).await;
        assert_eq!(r.status, 429, "request {i}: {}", r.body);
        assert_eq!(r.attempts(), Some(1), "request {i}");
    }
    assert_eq!(upstream.requests().len(), 6, "{:?}", models_seen(&upstream));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_once_then_healthy_retries_the_same_target() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::error(500));
    let gw = Gateway::start(two_providers(&primary, &["a"], &backup, json!({}))).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.header("x-backstop-fallback"), None);
    assert_eq!(models_seen(&primary), ["gpt-4o", "gpt-4o"]);
    assert!(backup.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_503_fails_over_after_max_attempts() {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::error(503));
    let gw = Gateway::start(two_providers(
        &primary,
        &["a"],
        &backup,
        json!({"retry": {"max_attempts": 3}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(primary.requests().len(), 3, "retry.max_attempts per target");
    assert_eq!(backup.requests().len(), 1);
    assert_eq!(r.attempts(), Some(4));
    assert_eq!(r.header("x-backstop-model"), Some("backup/gpt-4o-mini"));
    assert_eq!(r.header("x-backstop-fallback"), Some("overloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_before_headers_is_retried() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::Reset);
    let gw = Gateway::start(two_providers(&primary, &["a"], &backup, json!({}))).await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    // A reset is an answer of sorts (not silence): the same target is retried.
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(models_seen(&primary), ["gpt-4o", "gpt-4o"]);
    assert!(backup.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_every_time_fails_over() {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::Reset);
    let gw = Gateway::start(two_providers(&primary, &["a"], &backup, json!({}))).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.text, ECHO);
    assert!(s.done);
    assert_eq!(primary.requests().len(), 2);
    assert_eq!(backup.requests().len(), 1);
    assert_eq!(r.header("x-backstop-fallback"), Some("timeout"));
}

/// A hung primary (no response at all): one attempt, then the fallback, well inside the deadline.
async fn hang_fails_over_after_the_first_timeout(stream: bool) {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::Hang);
    let gw = Gateway::start(two_providers(
        &primary,
        &["a"],
        &backup,
        json!({"timeouts": {"first_token_ms": 200, "request_ms": 5000}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", stream)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let text = if stream {
        parse_openai_stream(&r.body).text
    } else {
        r.openai_text()
    };
    assert_eq!(text, ECHO);
    assert_eq!(primary.requests().len(), 1, "a silent route is not retried");
    assert_eq!(backup.requests().len(), 1);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.header("x-backstop-fallback"), Some("timeout"));
    assert!(
        r.elapsed >= Duration::from_millis(190),
        "failed over before the first-token timeout: {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed < Duration::from_millis(2500),
        "not well inside the 5 s deadline: {:?}",
        r.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_fails_over_after_the_first_timeout_streaming() {
    hang_fails_over_after_the_first_timeout(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_fails_over_after_the_first_timeout_non_streaming() {
    hang_fails_over_after_the_first_timeout(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_first_token_falls_back() {
    let (primary, backup) = (fake(), fake());
    primary.push(Step::Reply(FakeReply {
        text: "slow words from the primary".into(),
        first_token_delay_ms: Some(1500),
        ..FakeReply::default()
    }));
    let gw = Gateway::start(two_providers(
        &primary,
        &["a"],
        &backup,
        json!({"timeouts": {"first_token_ms": 200}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(
        s.text, ECHO,
        "only the fallback's answer reaches the client"
    );
    assert!(s.done);
    assert!(!r.body.contains("slow words"));
    assert_eq!(r.header("x-backstop-model"), Some("backup/gpt-4o-mini"));
    assert_eq!(r.header("x-backstop-fallback"), Some("timeout"));
    assert_eq!(primary.requests().len(), 1);
    assert!(r.elapsed < Duration::from_millis(1400), "{:?}", r.elapsed);
}

/// Six targets that never answer: the client hears back in about `request_ms`, not six
/// first-token timeouts.
async fn deadline_bounds_many_hanging_targets(stream: bool) {
    let upstream = fake();
    upstream.set_default(Step::Hang);
    let models: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    let fallbacks: Vec<String> = models[1..].iter().map(|m| format!("openai/{m}")).collect();
    let fallbacks: Vec<&str> = fallbacks.iter().map(String::as_str).collect();
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(models))}),
        "openai/m1",
        &fallbacks,
        json!({"timeouts": {"connect_ms": 300, "first_token_ms": 500, "idle_ms": 500, "request_ms": 600}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", stream)).await;

    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(
        r.elapsed < Duration::from_millis(1800),
        "the 600 ms deadline was not respected: {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed >= Duration::from_millis(450),
        "gave up before anything timed out: {:?}",
        r.elapsed
    );
    let tried = upstream.requests().len();
    assert!((1..=2).contains(&tried), "{tried} attempts in 600 ms");
    let err = r.json();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_many_hanging_targets_streaming() {
    deadline_bounds_many_hanging_targets(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_many_hanging_targets_non_streaming() {
    deadline_bounds_many_hanging_targets(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_a_failure_storm() {
    let (primary, backup) = (fake(), fake());
    primary.set_default(Step::error(503));
    backup.set_default(Step::error(503));
    let gw = Gateway::start(two_providers(
        &primary,
        &["a"],
        &backup,
        json!({"retry": {"max_attempts": 3, "budget_ratio": 0.2, "budget_min_per_sec": 1}}),
    ))
    .await;

    const REQUESTS: usize = 50;
    let body = openai_request("default", false);
    for _ in 0..REQUESTS / 10 {
        let batch = (0..10).map(|_| gw.chat(&body));
        for r in futures_util::future::join_all(batch).await {
            assert_eq!(r.status, 503, "{}", r.body);
        }
    }

    // Every request's first attempt, plus retries of at most 20 % of the requests plus
    // a floor of 1/s over the budget's 10 s window (the manual clock does not move).
    let attempts = primary.requests().len() + backup.requests().len();
    let bound = REQUESTS + REQUESTS / 5 + 10;
    assert!(
        (REQUESTS..=bound).contains(&attempts),
        "{attempts} upstream attempts for {REQUESTS} requests (bound {bound})"
    );
}
