//! Upstream garbage and silence before the commit point: every one is a classified
//! failure that moves on to the next target invisibly, never a success; with no
//! target left the client gets one error listing every attempt.
#![allow(clippy::unwrap_used)]

mod common;

use backstop_fake::Step;
use common::*;
use std::time::Duration;

async fn setup() -> (Fakes, Gateway) {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    (fakes, gw)
}

fn raw(status: u16, content_type: &str, body: &str) -> Step {
    Step::Raw {
        status,
        headers: vec![("content-type".into(), content_type.into())],
        body: body.into(),
    }
}

#[tokio::test]
async fn a_200_with_invalid_json_falls_over() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(raw(
        200,
        "application/json",
        r#"{"id": "chatcmpl-1", "choices": [{"#,
    ));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(openai_answer_text(&got.json()), "echo: hi");
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("server_error"));
    // Valid JSON that is no completion is garbage too; and for an Anthropic client.
    let (fakes, gw) = setup().await;
    fakes
        .oa
        .push(raw(200, "application/json", r#"{"hello": "world"}"#));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(anthropic_answer_text(&got.json()), "echo: hi");
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    // A fresh gateway: oa/gpt-4o is cooling down after its garbage answer above.
    let (fakes, gw) = setup().await;
    fakes
        .an
        .push(raw(200, "application/json", "<html>oops</html>"));
    let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(anthropic_answer_text(&got.json()), "echo: hi");
}

#[tokio::test]
async fn a_200_html_page_for_a_stream_falls_over() {
    let (fakes, gw) = setup().await;
    let page = "<html><body>502 Bad Gateway</body></html>";
    fakes.oa.push(raw(200, "text/html", page));
    let got = send(gw.openai(&openai_body("default", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("text/event-stream"));
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("server_error"));
    assert_eq!(got.openai_stream_text(), "echo: hi");
    assert!(!got.text().contains("html"), "{}", got.text());
    // An Anthropic upstream doing the same, for an Anthropic client (a fresh gateway:
    // oa/gpt-4o is cooling down after its garbage answer above).
    let (fakes, gw) = setup().await;
    fakes.an.push(raw(200, "text/html; charset=utf-8", page));
    let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.anthropic_stream_text(), "echo: hi");
    assert!(!got.text().contains("html"), "{}", got.text());
}

#[tokio::test]
async fn a_reset_before_headers_falls_over() {
    for stream in [false, true] {
        let (fakes, gw) = setup().await;
        fakes.oa.push(Step::Reset);
        let got = send(gw.openai(&openai_body("default", "hi", stream))).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
        assert_eq!(got.header("x-backstop-fallback"), Some("timeout"));
        assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    }
    let (fakes, gw) = setup().await;
    fakes.an.push(Step::Reset);
    let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.anthropic_stream_text(), "echo: hi");
}

#[tokio::test]
async fn a_hung_stream_falls_over_after_first_token_ms() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::Hang);
    let got = send(gw.openai(&openai_body("default", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("timeout"));
    assert_eq!(got.openai_stream_text(), "echo: hi");
    // first_token_ms is 300; the request deadline 5000.
    assert!(
        got.elapsed >= Duration::from_millis(300),
        "{:?}",
        got.elapsed
    );
    assert!(
        got.elapsed < Duration::from_millis(2500),
        "{:?}",
        got.elapsed
    );
}

#[tokio::test]
async fn a_stream_silent_after_its_preamble_falls_over_after_first_token_ms() {
    let (fakes, gw) = setup().await;
    // Headers and the role chunk arrive, then nothing: no first token.
    fakes.oa.push(Step::StreamThenStall {
        text: "never sent".into(),
        after_chunks: 0,
    });
    let got = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("timeout"));
    assert_eq!(got.anthropic_stream_text(), "echo: hi");
    assert!(
        got.elapsed >= Duration::from_millis(300),
        "{:?}",
        got.elapsed
    );
    assert!(
        got.elapsed < Duration::from_millis(2500),
        "{:?}",
        got.elapsed
    );
}

#[tokio::test]
async fn a_hung_non_stream_falls_over_after_first_token_ms() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::Hang);
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("timeout"));
    assert!(
        got.elapsed < Duration::from_millis(2500),
        "{:?}",
        got.elapsed
    );
}

#[tokio::test]
async fn a_hung_non_stream_with_nothing_left_fails_after_first_token_ms() {
    let fakes = Fakes::start();
    let text = fakes
        .config_with("")
        .replace("request_ms: 5000", "request_ms: 3000");
    let gw = Gateway::start(&text).await;
    fakes.oa.push(Step::Hang);
    let got = send(gw.openai(&openai_body("solo", "hi", false))).await;
    got.openai_error(
        503,
        "server_error",
        &["all targets failed", "oa/gpt-4o-mini (main): timeout"],
    );
    // first_token_ms (300) ends the attempt, not the request deadline (3000); a silent
    // upstream is not retried.
    assert!(
        got.elapsed < Duration::from_millis(2000),
        "{:?}",
        got.elapsed
    );
    assert_eq!(fakes.oa.requests().len(), 1);
}

/// Every pre-commit stream failure, each moved on from invisibly.
fn dies_before_content() -> Vec<(&'static str, Step)> {
    vec![
        (
            "cut",
            Step::StreamThenCut {
                text: "lost words".into(),
                after_chunks: 0,
            },
        ),
        (
            "in-band error",
            Step::StreamThenError {
                text: "lost words".into(),
                after_chunks: 0,
                error: serde_json::json!("overloaded"),
            },
        ),
        (
            "malformed",
            Step::StreamMalformed {
                text: "lost words".into(),
                after_chunks: 0,
            },
        ),
    ]
}

#[tokio::test]
async fn a_stream_that_dies_before_content_falls_over_invisibly_same_format() {
    for (what, step) in dies_before_content() {
        let (fakes, gw) = setup().await;
        fakes.oa.push(step);
        let got = send(gw.openai(&openai_body("openai-pair", "hi", true))).await;
        assert_eq!(got.status, 200, "{what}: {}", got.text());
        assert!(got.clean_end, "{what}");
        assert_eq!(
            got.header("x-backstop-model"),
            Some("oa2/gpt-4.1"),
            "{what}"
        );
        assert!(got.header("x-backstop-fallback").is_some(), "{what}");
        let chunks = got.json_events();
        assert_eq!(got.openai_stream_text(), "echo: hi", "{what}");
        assert!(
            chunks.iter().all(|c| c.get("error").is_none()),
            "{what}: {}",
            got.text()
        );
        // One answer only: every chunk carries the fallback's id and model, one role chunk.
        let ids: std::collections::HashSet<_> = chunks.iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids.len(), 1, "{what}: {}", got.text());
        assert!(
            chunks.iter().all(|c| c["model"] == "gpt-4.1"),
            "{what}: {}",
            got.text()
        );
        let roles = chunks
            .iter()
            .filter(|c| c.pointer("/choices/0/delta/role").is_some())
            .count();
        assert_eq!(roles, 1, "{what}: {}", got.text());
        assert_eq!(got.events().last().unwrap().data, "[DONE]", "{what}");
        assert!(
            !got.text().contains("lost") && !got.text().contains("not json"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_stream_that_dies_before_content_falls_over_invisibly_cross_format() {
    for (what, step) in dies_before_content() {
        let (fakes, gw) = setup().await;
        // Anthropic upstream dies, an OpenAI upstream answers an Anthropic client.
        fakes.an.push(step);
        let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", true))).await;
        assert_eq!(got.status, 200, "{what}: {}", got.text());
        assert!(got.clean_end, "{what}");
        assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"), "{what}");
        assert_eq!(got.anthropic_stream_text(), "echo: hi", "{what}");
        let events = got.events();
        let names: Vec<_> = events
            .iter()
            .map(|e| e.event.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == "message_start").count(),
            1,
            "{what}: {names:?}"
        );
        assert!(
            !names.contains(&"error".to_string()),
            "{what}: {}",
            got.text()
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("message_stop"),
            "{what}"
        );
        assert!(!got.text().contains("lost"), "{what}");
    }
}

#[tokio::test]
async fn with_no_target_left_the_error_lists_every_attempt() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    fakes.oa2.push(Step::Reset);
    fakes.an.push(Step::error_kind(529, "overloaded_error"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    got.openai_error(
        503,
        "server_error",
        &[
            "all targets failed",
            "oa/gpt-4o (main): server_error [500]",
            "oa2/gpt-4.1 (main): timeout",
            "an/claude-sonnet-4-5 (main): overloaded [529]",
        ],
    );
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
    // A stream request that never committed gets the same plain JSON error.
    let (fakes, gw) = setup().await;
    fakes.oa.push(raw(200, "text/html", "<html></html>"));
    fakes.oa2.push(Step::StreamThenCut {
        text: "x".into(),
        after_chunks: 0,
    });
    fakes.an.push(Step::error(500));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    got.anthropic_error(
        503,
        "overloaded_error",
        &[
            "oa/gpt-4o (main): server_error",
            "oa2/gpt-4.1 (main): timeout",
            "an/claude-sonnet-4-5 (main): server_error [500]",
        ],
    );
}

#[tokio::test]
async fn when_every_attempt_was_rate_limited_the_status_is_429() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    fakes.oa2.push(Step::error_kind(429, "rate_limit_exceeded"));
    fakes.an.push(Step::error_kind(429, "rate_limit_error"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    // As OpenAI says it: type `requests` (or `tokens`), code `rate_limit_exceeded`.
    got.openai_error(
        429,
        "requests",
        &[
            "oa/gpt-4o (main): rate_limit [429]",
            "oa2/gpt-4.1 (main): rate_limit [429]",
            "an/claude-sonnet-4-5 (main): rate_limit [429]",
        ],
    );
    assert_eq!(got.json()["error"]["code"], "rate_limit_exceeded");
    let (fakes, gw) = setup().await;
    fakes.an.push(Step::error_kind(429, "rate_limit_error"));
    fakes.oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", true))).await;
    got.anthropic_error(
        429,
        "rate_limit_error",
        &["an/claude-sonnet-4-5 (main): rate_limit [429]"],
    );
    // Out of quota is billing, not a rate limit, although it comes as a 429.
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    fakes.oa2.push(Step::error_kind(429, "insufficient_quota"));
    fakes.an.push(Step::error_kind(429, "rate_limit_error"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    got.openai_error(503, "server_error", &["oa2/gpt-4.1 (main): billing [429]"]);
}

#[tokio::test]
async fn a_client_side_upstream_error_is_returned_as_is_without_failover() {
    let (fakes, gw) = setup().await;
    // Same format: the provider's own error body, its status, one attempt, no fallback tried.
    fakes
        .oa
        .push(Step::error_kind(400, "invalid_request_error"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 400, "{}", got.text());
    let upstream = fakes.oa.requests();
    assert_eq!(upstream.len(), 1);
    assert_eq!(
        got.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        got.text()
    );
    assert_eq!(got.header("x-backstop-attempts"), Some("1"));
    got.request_id();
    assert!(fakes.oa2.requests().is_empty() && fakes.an.requests().is_empty());
    // Across formats: the same failure in the client's format.
    let (fakes, gw) = setup().await;
    fakes
        .oa
        .push(Step::error_kind(400, "invalid_request_error"));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    got.anthropic_error(400, "invalid_request_error", &[]);
    assert!(fakes.oa2.requests().is_empty() && fakes.an.requests().is_empty());
}

#[tokio::test]
async fn a_rejected_upstream_key_is_never_the_clients_401() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(401, "invalid_api_key"));
    let got = send(gw.openai(&openai_body("solo", "hi", false))).await;
    got.openai_error(503, "server_error", &["oa/gpt-4o-mini (main): auth [401]"]);
    let (fakes, gw) = setup().await;
    fakes.an.push(Step::error_kind(401, "authentication_error"));
    let got = send(gw.anthropic(&anthropic_body("solo-claude", "hi", false))).await;
    got.anthropic_error(
        503,
        "overloaded_error",
        &["an/claude-sonnet-4-5 (main): auth [401]"],
    );
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(403, "permission"));
    let got = send(gw.openai(&openai_body("solo", "hi", false))).await;
    assert_eq!(got.status, 503, "{}", got.text());
}

/// The standard config with same-target retries on (two attempts per target, 1 ms backoff base).
fn with_retries(fakes: &Fakes, extra: &str) -> String {
    let text = fakes.config_with(extra);
    let one = "retry: { max_attempts: 1 }";
    assert!(text.contains(one));
    text.replace(one, "retry: { max_attempts: 2, backoff_ms: 1 }")
}

#[tokio::test]
async fn a_server_error_is_retried_on_the_same_target_up_to_max_attempts() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&with_retries(&fakes, "")).await;
    fakes.oa.push(Step::error(500));
    let got = send(gw.openai(&openai_body("openai-pair", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    assert_eq!(got.header("x-backstop-fallback"), None);
    assert_eq!(fakes.oa.requests().len(), 2);
    assert!(fakes.oa2.requests().is_empty());
    // Two failures use up the target; the next model answers after three attempts in all.
    let fakes = Fakes::start();
    let gw = Gateway::start(&with_retries(&fakes, "")).await;
    fakes
        .oa
        .push_many([Step::error(502), Step::error_kind(529, "overloaded")]);
    let got = send(gw.openai(&openai_body("openai-pair", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
    assert!(got.header("x-backstop-fallback").is_some());
}

#[tokio::test]
async fn a_silent_target_is_not_retried() {
    // Holds with or without same-target retries (PRODUCT §3.2: "a silent (timed-out) route is not retried").
    let fakes = Fakes::start();
    let gw = Gateway::start(&with_retries(&fakes, "")).await;
    fakes.oa.push(Step::Hang);
    let got = send(gw.openai(&openai_body("openai-pair", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    assert_eq!(fakes.oa.requests().len(), 1);
}

#[tokio::test]
async fn with_commit_complete_a_cut_stream_fails_over_invisibly() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.config_with(r#"stream: { commit: "complete" },"#)).await;
    fakes.oa.push(Step::StreamThenCut {
        text: "partial words here".into(),
        after_chunks: 2,
    });
    let got = send(gw.openai(&openai_body("openai-pair", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.clean_end);
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.openai_stream_text(), "echo: hi");
    assert!(!got.text().contains("partial"), "{}", got.text());
    assert!(!got.text().contains("\"error\""), "{}", got.text());
    assert_eq!(got.events().last().unwrap().data, "[DONE]");
}
