//! Which chain serves a request: agent ids, `default`, `provider/model`, bare catalogue
//! names, the `x-backstop-fallbacks` header; `/v1/models` and `/ready`.
#![allow(clippy::unwrap_used)]

mod common;

use backstop_fake::Step;
use common::*;
use reqwest::Method;
use serde_json::Value;

async fn setup() -> (Fakes, Gateway) {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    (fakes, gw)
}

#[tokio::test]
async fn default_serves_the_default_chain() {
    let (fakes, gw) = setup().await;
    let got = send(gw.openai(&openai_body("default", "hello", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(openai_answer_text(&got.json()), "echo: hello");
    assert_eq!(models_seen(&fakes.oa.requests()), ["gpt-4o"]);
    assert!(fakes.oa2.requests().is_empty() && fakes.an.requests().is_empty());
}

#[tokio::test]
async fn an_agent_id_serves_its_chain() {
    let (fakes, gw) = setup().await;
    // An OpenAI client on an agent whose primary speaks Anthropic.
    let got = send(gw.openai(&openai_body("claude-first", "hello", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-sonnet-4-5"));
    assert_eq!(openai_answer_text(&got.json()), "echo: hello");
    let seen = fakes.an.requests();
    assert_eq!(models_seen(&seen), ["claude-sonnet-4-5"]);
    assert_eq!(seen[0].path, "/v1/messages");
    // Its fallback is oa/gpt-4o, not the default chain's oa2.
    fakes.an.push(Step::error_kind(529, "overloaded_error"));
    let got = send(gw.anthropic(&anthropic_body("claude-first", "again", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(anthropic_answer_text(&got.json()), "echo: again");
    assert_eq!(models_seen(&fakes.oa.requests()), ["gpt-4o"]);
    assert!(fakes.oa2.requests().is_empty());
}

#[tokio::test]
async fn provider_slash_model_comes_first_then_the_default_fallbacks() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    let got = send(gw.openai(&openai_body("oa/gpt-4o-mini", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(models_seen(&fakes.oa.requests()), ["gpt-4o-mini"]);
    // The default chain's first fallback.
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(models_seen(&fakes.oa2.requests()), ["gpt-4.1"]);
    assert!(fakes.an.requests().is_empty());
}

#[tokio::test]
async fn provider_slash_model_outside_the_catalogue_is_allowed() {
    let (fakes, gw) = setup().await;
    let got = send(gw.anthropic(&anthropic_body("an/claude-opus-4-5", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-opus-4-5"));
    assert_eq!(models_seen(&fakes.an.requests()), ["claude-opus-4-5"]);
}

#[tokio::test]
async fn a_bare_catalogue_name_finds_its_provider() {
    let (fakes, gw) = setup().await;
    let got = send(gw.openai(&openai_body("gpt-4.1", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(models_seen(&fakes.oa2.requests()), ["gpt-4.1"]);
    let got = send(gw.anthropic(&anthropic_body("claude-sonnet-4-5", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-sonnet-4-5"));
    assert_eq!(models_seen(&fakes.an.requests()), ["claude-sonnet-4-5"]);
    // Then the default fallbacks: gpt-4.1 fails, the next default fallback (an) answers.
    fakes.oa2.push(Step::error(503));
    let got = send(gw.openai(&openai_body("gpt-4.1", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-sonnet-4-5"));
    assert!(fakes.oa.requests().is_empty());
}

#[tokio::test]
async fn the_fallbacks_header_replaces_the_fallbacks() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", "an/claude-sonnet-4-5"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("an/claude-sonnet-4-5"));
    assert!(fakes.oa2.requests().is_empty(), "oa2 was skipped");
    assert_eq!(fakes.oa.requests().len(), 1);
    // Several entries, in the header's order.
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    fakes.an.push(Step::error_kind(529, "overloaded_error"));
    let got = send(gw.openai(&openai_body("default", "hi", false)).header(
        "x-backstop-fallbacks",
        " an/claude-sonnet-4-5 , oa2/gpt-4.1",
    ))
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa2/gpt-4.1"));
    assert_eq!(got.header("x-backstop-attempts"), Some("3"));
}

#[tokio::test]
async fn an_empty_fallbacks_header_means_no_fallbacks() {
    let (fakes, gw) = setup().await;
    fakes.oa.push(Step::error(500));
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", ""),
    )
    .await;
    let msg = got.openai_error(
        503,
        "server_error",
        &["oa/gpt-4o (main): server_error [500]"],
    );
    assert!(!msg.contains("oa2") && !msg.contains("an/"), "{msg}");
    assert_eq!(fakes.oa.requests().len(), 1);
    assert!(fakes.oa2.requests().is_empty() && fakes.an.requests().is_empty());
}

#[tokio::test]
async fn a_bad_fallbacks_entry_is_400() {
    let (fakes, gw) = setup().await;
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", "an/claude-sonnet-4-5,opnai/gpt-4o"),
    )
    .await;
    got.openai_error(
        400,
        "invalid_request_error",
        &[
            "x-backstop-fallbacks",
            "\"opnai/gpt-4o\"",
            "oa, oa2, an, rot",
        ],
    );
    assert_eq!(got.json()["error"]["param"], "x-backstop-fallbacks");
    let got = send(
        gw.anthropic(&anthropic_body("default", "hi", false))
            .header("x-backstop-fallbacks", "gpt-4o"),
    )
    .await;
    got.anthropic_error(
        400,
        "invalid_request_error",
        &["x-backstop-fallbacks", "\"gpt-4o\""],
    );
    assert_no_upstream_requests(&fakes);
}

const LISTED: [&str; 11] = [
    "default",
    "claude-first",
    "solo",
    "solo-claude",
    "rotating",
    "openai-pair",
    "oa/gpt-4o",
    "oa/gpt-4o-mini",
    "oa2/gpt-4.1",
    "an/claude-sonnet-4-5",
    "rot/rot-model",
];

#[tokio::test]
async fn models_are_listed_in_openai_shape() {
    let (fakes, gw) = setup().await;
    let got = send(gw.get("/v1/models")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.request_id();
    let v = got.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, LISTED);
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_u64(), "{m}");
        assert!(m["owned_by"].is_string(), "{m}");
    }
    assert_eq!(data[6]["owned_by"], "oa");
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn models_are_listed_in_anthropic_shape_when_asked() {
    let (fakes, gw) = setup().await;
    let got = send(
        gw.request(Method::GET, "/v1/models")
            .bearer_auth(CLIENT_KEY)
            .header("anthropic-version", "2023-06-01"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, LISTED);
    for m in data {
        assert_eq!(m["type"], "model", "{m}");
        assert!(m["display_name"].is_string(), "{m}");
        assert!(m["created_at"].is_string(), "{m}");
    }
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], "default");
    assert_eq!(v["last_id"], "rot/rot-model");
    assert!(v.get("object").is_none());
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn ready_is_200_with_a_usable_chain() {
    let (_fakes, gw) = setup().await;
    let got = send(gw.request(Method::GET, "/ready")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["ready"], true);
    assert_eq!(got.json()["unusable_chains"], serde_json::json!([]));
}

#[tokio::test]
async fn ready_is_503_naming_chains_without_a_usable_target() {
    let fakes = Fakes::start();
    let text = format!(
        r#"{{
  providers: {{
    oa: {{ api: "openai", base_url: "{oa}", auth: [{{ key: "$UNSET_ONE" }}], models: ["gpt-4o"] }},
    an: {{ api: "anthropic", base_url: "{an}", auth: [{{ profile: "a", key: "$UNSET_TWO" }}, {{ profile: "b", key: "$UNSET_THREE" }}] }},
  }},
  agents: {{
    defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }},
    list: [ {{ id: "claude", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: [] }} }} ],
  }},
}}"#,
        oa = fakes.oa.openai_base_url(),
        an = fakes.an.anthropic_base_url(),
    );
    let gw = Gateway::start(&text).await;
    let got = send(gw.request(Method::GET, "/ready")).await;
    assert_eq!(got.status, 503, "{}", got.text());
    got.request_id();
    let v = got.json();
    assert_eq!(v["ready"], false);
    assert_eq!(
        v["unusable_chains"],
        serde_json::json!(["default", "claude"])
    );
    // /health stays up.
    assert_eq!(send(gw.request(Method::GET, "/health")).await.status, 200);
    // A request to such a chain says why, and nothing is sent upstream.
    let got = send(
        gw.request(Method::POST, "/v1/chat/completions")
            .json(&openai_body("default", "hi", false)),
    )
    .await;
    got.openai_error(
        503,
        "server_error",
        &[
            "oa/gpt-4o: no usable key",
            "an/claude-sonnet-4-5: no usable key",
        ],
    );
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn ready_stays_200_when_only_some_chains_are_dead() {
    let fakes = Fakes::start();
    let text = format!(
        r#"{{
  providers: {{
    oa: {{ api: "openai", base_url: "{oa}", auth: [{{ key: "$OA_KEY" }}] }},
    an: {{ api: "anthropic", base_url: "{an}", auth: [{{ key: "$UNSET_TWO" }}] }},
  }},
  agents: {{
    defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: [] }} }},
    list: [ {{ id: "claude", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: [] }} }} ],
  }},
}}"#,
        oa = fakes.oa.openai_base_url(),
        an = fakes.an.anthropic_base_url(),
    );
    let gw = Gateway::start(&text).await;
    let got = send(gw.request(Method::GET, "/ready")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v: Value = got.json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["unusable_chains"], serde_json::json!(["claude"]));
}

#[tokio::test]
async fn a_fallbacks_header_that_is_not_text_is_400() {
    let (fakes, gw) = setup().await;
    let value = reqwest::header::HeaderValue::from_bytes(b"an/claude-\xff").unwrap();
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("x-backstop-fallbacks", value),
    )
    .await;
    got.openai_error(400, "invalid_request_error", &["x-backstop-fallbacks"]);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer() {
    let (fakes, gw) = setup().await;
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("question number {i}");
            let (model, stream) = [
                ("default", false),
                ("default", true),
                ("claude-first", false),
                ("claude-first", true),
            ][i % 4];
            let got = if i % 2 == 0 {
                send(gw.openai(&openai_body(model, &text, stream))).await
            } else {
                send(gw.anthropic(&anthropic_body(model, &text, stream))).await
            };
            assert_eq!(got.status, 200, "{}", got.text());
            let answer = match (i % 2 == 0, stream) {
                (true, false) => openai_answer_text(&got.json()).to_string(),
                (true, true) => got.openai_stream_text(),
                (false, false) => anthropic_answer_text(&got.json()),
                (false, true) => got.anthropic_stream_text(),
            };
            assert_eq!(answer, format!("echo: {text}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fakes.oa.requests().len() + fakes.an.requests().len(), 24);
}
