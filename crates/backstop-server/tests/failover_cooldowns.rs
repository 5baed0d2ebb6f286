//! Cooldowns across requests, on the injected manual clock: a primary that is down
//! for a while, providers whose every key cools, chains whose every target cools,
//! and the `Retry-After` of an all-failed error.
#![allow(clippy::unwrap_used)]

mod failover_common;

use backstop::clock::Clock;
use backstop_fake::{FakeHandle, Step};
use failover_common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `openai/gpt-4o` (these profiles) first, `anthropic/claude-sonnet-4-5` as the fallback.
fn openai_then_anthropic(
    primary: &FakeHandle,
    profiles: &[&str],
    fallback: &FakeHandle,
    overrides: Value,
) -> Value {
    config(
        json!({
            "openai": openai_provider(primary, profiles, json!(["gpt-4o"])),
            "anthropic": anthropic_provider(fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        overrides,
    )
}

/// The end of `scope`'s cooldown (epoch ms), checking it lies `min..=max` ahead.
async fn cooling_until(gw: &Gateway, scope: &str, min: Duration, max: Duration) -> u64 {
    let c = gw
        .cooldown(scope)
        .await
        .unwrap_or_else(|| panic!("{scope} is not cooling"));
    let until = c["until_ms"].as_u64().unwrap();
    let ahead = Duration::from_millis(until.saturating_sub(gw.clock.now_ms()));
    assert!(
        (min..=max).contains(&ahead),
        "{scope} cools for {ahead:?}, expected {min:?}..={max:?}: {c}"
    );
    until
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_for_a_while_then_healthy() {
    let (primary, fallback) = (fake(), fake());
    primary.set_default(Step::error(503));
    // One attempt per target, so one probe is one request.
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({"retry": {"max_attempts": 1}}),
    ))
    .await;
    let served_by = |r: &Reply| r.header("x-backstop-model").unwrap_or("").to_string();

    // Down: the first request finds out and the fallback serves.
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(served_by(&r), "anthropic/claude-sonnet-4-5");
    assert_eq!(r.header("x-backstop-fallback"), Some("overloaded"));
    assert_eq!(primary.requests().len(), 1);
    let until = cooling_until(
        &gw,
        "openai:a/gpt-4o",
        Duration::from_secs(30),
        Duration::from_secs(33),
    )
    .await;

    // Meanwhile the fallback serves without the primary being asked.
    for _ in 0..4 {
        let r = gw.chat(&openai_request("default", false)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(served_by(&r), "anthropic/claude-sonnet-4-5");
        assert_eq!(r.attempts(), Some(1));
        assert_eq!(r.header("x-backstop-fallback"), Some("overloaded"));
    }
    assert_eq!(primary.requests().len(), 1, "no probe inside the window");

    // The window ends: one request probes the primary (still down), then the
    // cooldown is longer (the next rung), and nobody else probes in it.
    gw.clock.set(until + 1);
    for _ in 0..3 {
        let r = gw.chat(&openai_request("default", false)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(served_by(&r), "anthropic/claude-sonnet-4-5");
    }
    assert_eq!(primary.requests().len(), 2, "exactly one probe per window");
    let until = cooling_until(
        &gw,
        "openai:a/gpt-4o",
        Duration::from_secs(60),
        Duration::from_secs(66),
    )
    .await;
    gw.advance(Duration::from_secs(30));
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(served_by(&r), "anthropic/claude-sonnet-4-5");
    assert_eq!(primary.requests().len(), 2);

    // Recovered: the next probe succeeds and traffic returns to the primary at once.
    primary.set_default(Step::Echo);
    gw.clock.set(until + 1);
    for i in 0..3 {
        let r = gw.chat(&openai_request("default", false)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(served_by(&r), "openai/gpt-4o", "request {i}");
        assert_eq!(r.header("x-backstop-fallback"), None);
        assert_eq!(r.openai_text(), ECHO);
    }
    assert_eq!(primary.requests().len(), 5);
    assert_eq!(fallback.requests().len(), 9);
    assert!(
        gw.cooldown("openai:a/gpt-4o").await.is_none(),
        "a success closes the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_request_that_finds_a_target_failing_retries_it() {
    let (primary, fallback) = (fake(), fake());
    // A blip: one 503 on a healthy target is retried (retry.max_attempts 2); the target
    // cooled at the failure, so concurrent requests went elsewhere meanwhile, and the
    // retry's success closes it again at once.
    primary.push(Step::error(503));
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({}),
    ))
    .await;
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.attempts(), Some(2));
    assert!(
        gw.cooldown("openai:a/gpt-4o").await.is_none(),
        "closed again"
    );

    // Down for good: the request that finds out retries it once, then falls back.
    primary.clear();
    primary.set_default(Step::error(503));
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );
    assert_eq!(r.attempts(), Some(3));
    assert_eq!(primary.requests().len(), 2);
    let until = cooling_until(
        &gw,
        "openai:a/gpt-4o",
        Duration::from_secs(30),
        Duration::from_secs(33),
    )
    .await;
    // When its window ends, the probe finds it still failing: a target known to be
    // failing is not retried, the request falls back at once.
    gw.clock.set(until + 1);
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(primary.requests().len(), 3, "one probe, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_target_that_is_cooling_is_still_retried() {
    // Nowhere else to go: a request that finds the only target cooling probes it (the
    // soonest usable) and, when that fails, retries it per retry.max_attempts.
    let primary = fake();
    primary.push(Step::error(503));
    primary.push(Step::error(503));
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&primary, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({}),
    ))
    .await;
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert!(gw.cooldown("openai:a/gpt-4o").await.is_some());
    // Cooling now; the next request probes it, the probe fails, the retry answers.
    primary.push(Step::error(503));
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(primary.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_whose_every_key_cools_is_skipped_for_the_next_model() {
    let (primary, fallback) = (fake(), fake());
    primary.push_many([bare_429(), bare_429()]);
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a", "b"],
        &fallback,
        json!({}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(keys_seen(&primary), ["a", "b"]);
    assert_eq!(r.attempts(), Some(3));
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );

    // Both keys cool: the next request goes straight to the next model.
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );
    assert_eq!(r.attempts(), Some(1));
    assert_eq!(primary.requests().len(), 2, "cooling keys are not tried");
    assert_eq!(fallback.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_serves_because_the_primary_is_cooling_says_so() {
    let (primary, fallback) = (fake(), fake());
    primary.push(bare_429());
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({}),
    ))
    .await;
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));

    // The primary is skipped (cooling), so no attempt failed in this request; a fallback
    // still answered (PRODUCT §2, §8: the header appears when a model other than the
    // chain's first answered).
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-backstop-model"),
        Some("anthropic/claude-sonnet-4-5")
    );
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));
    assert!(r.header("x-backstop-fallback-notice").is_some());
}

/// The primary's key 503s (a transient cooldown, ~30 s), the fallback's key is
/// rejected (an auth cooldown, ~5 min).
async fn both_cooling() -> (FakeHandle, FakeHandle, Gateway, Reply) {
    let (primary, fallback) = (fake(), fake());
    primary.set_default(Step::error(503));
    fallback.set_default(Step::error(401));
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({}),
    ))
    .await;
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(primary.requests().len(), 2);
    assert_eq!(fallback.requests().len(), 1);
    (primary, fallback, gw, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_target_cools_the_soonest_is_probed() {
    let (primary, fallback, gw, _) = both_cooling().await;
    primary.push(Step::Echo);

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.openai_text(), ECHO);
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(r.attempts(), Some(1), "one attempt, not zero");
    assert_eq!(primary.requests().len(), 3);
    assert_eq!(
        fallback.requests().len(),
        1,
        "the later-recovering one waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_failed_error_lists_attempts_and_carries_retry_after_of_the_soonest() {
    let (_primary, _fallback, gw, r) = both_cooling().await;

    assert_eq!(r.status, 503, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("openai/gpt-4o (a): overloaded [503]"),
        "{message}"
    );
    assert!(
        message.contains("anthropic/claude-sonnet-4-5 (t): auth [401]"),
        "{message}"
    );
    assert_eq!(r.attempts(), Some(3));

    let now = gw.clock.now_ms();
    let soonest = gw
        .cooldowns()
        .await
        .iter()
        .filter_map(|c| c["until_ms"].as_u64())
        .min()
        .unwrap();
    let expected = (soonest - now).div_ceil(1000);
    assert!((30..=34).contains(&expected), "{expected}");
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, expected);

    // Still the soonest a moment later, when the next request fails too.
    gw.advance(Duration::from_secs(10));
    let r = gw.chat(&openai_request("default", false)).await;
    assert!(r.status >= 500, "{}", r.body);
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after > 0, "{retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rate_limited_is_a_429_with_retry_after() {
    let upstream = fake();
    upstream.set_default(Step::rate_limited(20));
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", false)).await;

    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        upstream.requests().len(),
        1,
        "20 s is over max_retry_after_ms"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((20..=22).contains(&retry_after), "{retry_after}");
}

/// `DELETE /v1/cooldowns/openai:a` (PRODUCT §8) clears the key, including its
/// model-scoped cooldowns: a 429 cools `openai:a/gpt-4o`, which `auth-state.json`
/// shows as `openai:a`'s `cooldownUntil`, and clearing the key by name brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_key_clears_its_model_scoped_cooldowns() {
    let (primary, fallback) = (fake(), fake());
    primary.push(bare_429());
    primary.push(bare_429());
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({}),
    ))
    .await;
    gw.chat(&openai_request("default", false)).await;
    assert!(gw.cooldown("openai:a/gpt-4o").await.is_some());

    let client = reqwest::Client::new();
    let resp = client
        .delete(format!("{}/v1/cooldowns/openai:a", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(gw.cooldowns().await.is_empty());
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));
    assert_eq!(primary.requests().len(), 2, "the key was tried again");

    // `provider/model` clears every key's cooldown on that model.
    assert!(gw.cooldown("openai:a/gpt-4o").await.is_some());
    let resp = client
        .delete(format!("{}/v1/cooldowns/openai/gpt-4o", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(gw.cooldowns().await.is_empty());
    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));

    // Nothing left to clear: 404.
    let resp = client
        .delete(format!("{}/v1/cooldowns/openai:a", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_cooldown_by_hand_brings_the_target_back() {
    let (primary, fallback) = (fake(), fake());
    primary.push(bare_429());
    let gw = Gateway::start(openai_then_anthropic(
        &primary,
        &["a"],
        &fallback,
        json!({}),
    ))
    .await;
    gw.chat(&openai_request("default", false)).await;
    assert!(gw.cooldown("openai:a/gpt-4o").await.is_some());

    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/cooldowns/openai:a/gpt-4o", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    let r = gw.chat(&openai_request("default", false)).await;
    assert_eq!(r.header("x-backstop-model"), Some("openai/gpt-4o"));
    assert_eq!(primary.requests().len(), 2);
}
