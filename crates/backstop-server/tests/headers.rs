//! Response headers (`x-backstop-*`), the body's `model`, the keys upstreams see,
//! security headers and the exposure check.
#![allow(clippy::unwrap_used)]

mod common;

use backstop_fake::{Reply, Step};
use common::*;
use reqwest::Method;
use std::collections::HashSet;

async fn setup() -> (Fakes, Gateway) {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    (fakes, gw)
}

#[tokio::test]
async fn every_response_has_a_fresh_request_id() {
    let (fakes, gw) = setup().await;
    let mut ids = HashSet::new();
    let ok = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(ok.status, 200);
    ids.insert(ok.request_id().to_string());
    let ok = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    assert_eq!(ok.status, 200);
    ids.insert(ok.request_id().to_string());
    // Client errors, an upstream failure, auth failures, unknown routes, info routes.
    let bad = send(gw.openai(&openai_body("nope", "hi", false))).await;
    assert_eq!(bad.status, 404);
    ids.insert(bad.request_id().to_string());
    fakes.oa.push(Step::error(500));
    let failed = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", ""),
    )
    .await;
    assert_eq!(failed.status, 503);
    ids.insert(failed.request_id().to_string());
    let unauth = send(
        gw.request(Method::POST, "/v1/messages")
            .json(&anthropic_body("default", "hi", false)),
    )
    .await;
    assert_eq!(unauth.status, 401);
    ids.insert(unauth.request_id().to_string());
    for path in ["/nope", "/health", "/ready", "/v1/models"] {
        let got = send(gw.get(path)).await;
        ids.insert(got.request_id().to_string());
    }
    assert_eq!(ids.len(), 9, "request ids are not unique: {ids:?}");
}

#[tokio::test]
async fn a_direct_answer_names_its_model_and_one_attempt() {
    let (fakes, gw) = setup().await;
    for stream in [false, true] {
        let got = send(gw.openai(&openai_body("default", "hi", stream))).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
        assert_eq!(got.header("x-backstop-attempts"), Some("1"));
        assert_eq!(got.header("x-backstop-fallback"), None);
        assert_eq!(got.header("x-backstop-fallback-notice"), None);
    }
    assert_eq!(fakes.oa.requests().len(), 2);
}

#[tokio::test]
async fn a_fallback_is_announced_with_its_reason() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    assert_eq!(got.header("x-backstop-fallback"), Some("rate_limit"));
    assert_eq!(
        got.header("x-backstop-fallback-notice"),
        Some("switched to oa2/gpt-4.1 (oa/gpt-4o rate limited)")
    );
    // The same for a stream, in the other format, across formats.
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error_kind(529, "overloaded"));
    fakes.oa2.push(Step::error(500));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-sonnet-4-5"));
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
    assert!(got.header("x-backstop-fallback").is_some());
    let notice = got.header("x-backstop-fallback-notice").unwrap();
    assert!(
        notice.starts_with("switched to an/claude-sonnet-4-5 (oa/gpt-4o "),
        "{notice}"
    );
    assert_eq!(got.anthropic_stream_text(), "echo: hi");
}

#[tokio::test]
async fn a_key_rotation_within_one_model_is_not_a_fallback() {
    let (fakes, gw) = setup().await;
    fakes.rot.push(Step::error_kind(401, "invalid_api_key"));
    let got = send(gw.openai(&openai_body("rotating", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("rot/rot-model"));
    assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    assert_eq!(got.header("x-backstop-fallback"), None);
    assert_eq!(got.header("x-backstop-fallback-notice"), None);
    let seen = fakes.rot.requests();
    let auth: Vec<_> = seen
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(
        auth,
        [
            format!("Bearer {ROT_FIRST_KEY}"),
            format!("Bearer {ROT_SECOND_KEY}")
        ]
    );
    assert!(fakes.oa.requests().is_empty());
}

#[tokio::test]
async fn attempts_count_every_profile_and_model() {
    let (fakes, gw) = setup().await;
    // rot/first: 401 → rot/second: 500 → oa/gpt-4o answers.
    fakes.rot.push(Step::error_kind(401, "invalid_api_key"));
    fakes.rot.push(Step::error(500));
    let got = send(gw.anthropic(&anthropic_body("rotating", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
    assert_eq!(got.header("x-backstop-fallback"), Some("server_error"));
    assert_eq!(
        got.header("x-backstop-fallback-notice"),
        Some("switched to oa/gpt-4o (rot/rot-model server error)")
    );
    assert_eq!(fakes.rot.requests().len(), 2);
    assert_eq!(fakes.oa.requests().len(), 1);
    // When every attempt fails, the count is on the error too.
    let (fakes, gw) = setup().await;
    fakes.rot.push_many([Step::error(500), Step::error(502)]);
    fakes.oa.push(Step::error(503));
    let got = send(gw.openai(&openai_body("rotating", "hi", false))).await;
    got.openai_error(
        503,
        "server_error",
        &[
            "rot/rot-model (first): server_error [500]",
            "rot/rot-model (second): server_error [502]",
            "oa/gpt-4o (main):",
            "[503]",
        ],
    );
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
}

/// A client-side error returned as is (§3.2) is the answering model's answer: it names
/// that model in `x-backstop-model`, as every response does (§2).
#[tokio::test]
async fn a_returned_client_error_names_the_model_that_answered() {
    let (fakes, gw) = setup().await;
    fakes
        .oa
        .push(Step::error_kind(400, "invalid_request_error"));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", false))).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.header("x-backstop-attempts"), Some("1"));
    // After a fallback: the model whose refusal the client gets.
    fakes.oa.push(Step::error_kind(429, "rate_limit_exceeded"));
    fakes
        .oa2
        .push(Step::error_kind(400, "content_policy_violation"));
    let got = send(gw.openai(&openai_body("default", "hi", true))).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-attempts"), Some("2"));
    // When every target failed, no model answered.
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", ""),
    )
    .await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), None);
}

#[tokio::test]
async fn the_body_model_is_what_the_provider_reported() {
    let (fakes, gw) = setup().await;
    let reply = |text: &str, model: &str| {
        Step::Reply(Reply {
            text: text.into(),
            model: Some(model.into()),
            ..Reply::default()
        })
    };
    // Same format, not streaming.
    fakes.oa.push(reply("a", "gpt-4o-2024-08-06"));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.json()["model"], "gpt-4o-2024-08-06");
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    // Across formats, not streaming.
    fakes.oa.push(reply("b", "gpt-4o-2024-11-20"));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", false))).await;
    assert_eq!(got.json()["model"], "gpt-4o-2024-11-20", "{}", got.text());
    fakes.an.push(reply("c", "claude-sonnet-4-5-20250929"));
    let got = send(gw.openai(&openai_body("claude-first", "hi", false))).await;
    assert_eq!(
        got.json()["model"],
        "claude-sonnet-4-5-20250929",
        "{}",
        got.text()
    );
    // Streaming, both ways.
    fakes.oa.push(reply("d e", "gpt-4o-2024-08-06"));
    let got = send(gw.openai(&openai_body("default", "hi", true))).await;
    let chunks = got.json_events();
    assert!(!chunks.is_empty());
    assert!(
        chunks.iter().all(|c| c["model"] == "gpt-4o-2024-08-06"),
        "{}",
        got.text()
    );
    fakes.an.push(reply("f g", "claude-sonnet-4-5-20250929"));
    let got = send(gw.openai(&openai_body("claude-first", "hi", true))).await;
    let chunks = got.json_events();
    assert!(!chunks.is_empty());
    assert!(
        chunks
            .iter()
            .all(|c| c["model"] == "claude-sonnet-4-5-20250929"),
        "{}",
        got.text()
    );
    fakes.oa.push(reply("h i", "gpt-4o-2024-08-06"));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", true))).await;
    let start = got
        .json_events()
        .into_iter()
        .find(|e| e["type"] == "message_start")
        .unwrap();
    assert_eq!(
        start["message"]["model"],
        "gpt-4o-2024-08-06",
        "{}",
        got.text()
    );
    // A fallback's answer names the fallback's model, never the alias.
    fakes.oa.push(Step::error(500));
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.json()["model"], "gpt-4.1");
}

#[tokio::test]
async fn upstreams_get_their_own_keys_never_the_clients() {
    let (fakes, gw) = setup().await;
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 200);
    let got = send(gw.openai(&openai_body("claude-first", "hi", true))).await;
    assert_eq!(got.status, 200);
    let got = send(gw.anthropic(&anthropic_body("claude-first", "hi", false))).await;
    assert_eq!(got.status, 200);
    fakes.oa.push(Step::error(500));
    let got = send(gw.anthropic(&anthropic_body("default", "hi", false))).await;
    assert_eq!(got.status, 200);

    let oa = fakes.oa.requests();
    assert_eq!(oa.len(), 2);
    for r in &oa {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {OA_KEY}").as_str())
        );
        assert_eq!(r.header("x-api-key"), None);
    }
    let oa2 = fakes.oa2.requests();
    assert_eq!(oa2.len(), 1);
    assert_eq!(
        oa2[0].header("authorization"),
        Some(format!("Bearer {OA2_KEY}").as_str())
    );
    let an = fakes.an.requests();
    assert_eq!(an.len(), 2);
    for r in &an {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some(AN_KEY));
        assert!(
            r.header("anthropic-version").is_some_and(|v| !v.is_empty()),
            "{r:?}"
        );
        assert_eq!(r.header("authorization"), None);
    }
    for r in fakes.all_requests() {
        for (name, value) in &r.headers {
            assert!(
                !value.contains(CLIENT_KEY),
                "the client's key reached upstream in {name}"
            );
        }
    }
}

#[tokio::test]
async fn security_headers_are_sent_when_switched_on() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.config_custom("security_headers: true", "")).await;
    let expected = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ];
    let ok = send(gw.openai(&openai_body("default", "hi", false))).await;
    let err = send(gw.request(Method::GET, "/v1/models")).await;
    let health = send(gw.request(Method::GET, "/health")).await;
    assert_eq!((ok.status, err.status, health.status), (200, 401, 200));
    for got in [&ok, &err, &health] {
        for (name, value) in expected {
            assert_eq!(got.header(name), Some(value), "{name}");
        }
        assert!(got.header("content-security-policy").is_some());
        assert!(got.header("strict-transport-security").is_some());
    }
    // Off by default.
    let plain = Gateway::start(&fakes.standard_config()).await;
    let got = send(plain.request(Method::GET, "/health")).await;
    assert_eq!(got.header("x-content-type-options"), None);
    assert_eq!(got.header("x-frame-options"), None);
}

#[test]
fn exposure_beyond_loopback_needs_keys_or_the_flag() {
    let fakes_text = |server: &str| {
        format!(
            r#"{{ server: {{ {server} }}, providers: {{ ollama: {{ models: ["llama3.2"] }} }} }}"#
        )
    };
    let open = config(&fakes_text(""));
    let keyed = config(&fakes_text(r#"api_keys: ["$CLIENT_KEY"]"#));
    let allowed = config(&fakes_text("allow_unauthenticated: true"));
    let any: std::net::SocketAddr = "0.0.0.0:8787".parse().unwrap();
    let lan: std::net::SocketAddr = "192.168.1.20:8787".parse().unwrap();
    let v6any: std::net::SocketAddr = "[::]:8787".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:8787".parse().unwrap();
    let v6loopback: std::net::SocketAddr = "[::1]:8787".parse().unwrap();
    for addr in [any, lan, v6any] {
        let err = backstop_server::check_exposure(&open, addr, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("server.api_keys"),
            "{msg}"
        );
        assert!(backstop_server::check_exposure(&open, addr, true).is_ok());
        assert!(backstop_server::check_exposure(&keyed, addr, false).is_ok());
        assert!(backstop_server::check_exposure(&allowed, addr, false).is_ok());
    }
    for addr in [loopback, v6loopback] {
        assert!(backstop_server::check_exposure(&open, addr, false).is_ok());
    }
}
