//! Bad client input: every malformed request gets a 4xx in the client's format with a
//! message that says what is wrong, and no upstream ever hears of it.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

async fn setup() -> (Fakes, Gateway) {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    (fakes, gw)
}

fn raw_openai(gw: &Gateway, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    gw.request(Method::POST, "/v1/chat/completions")
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body)
}

fn raw_anthropic(gw: &Gateway, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    gw.request(Method::POST, "/v1/messages")
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn malformed_json_is_400_in_each_format() {
    let (fakes, gw) = setup().await;
    let got = send(raw_openai(&gw, r#"{"model": "default", "messages": ["#)).await;
    got.openai_error(400, "invalid_request_error", &["not valid JSON"]);
    let got = send(raw_anthropic(&gw, "{nope")).await;
    got.anthropic_error(400, "invalid_request_error", &["not valid JSON"]);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn a_json_array_body_is_400() {
    let (fakes, gw) = setup().await;
    let body = r#"[{"model": "default", "messages": []}]"#;
    send(raw_openai(&gw, body))
        .await
        .openai_error(400, "invalid_request_error", &["JSON object"]);
    send(raw_anthropic(&gw, body)).await.anthropic_error(
        400,
        "invalid_request_error",
        &["JSON object"],
    );
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn an_empty_body_is_400() {
    let (fakes, gw) = setup().await;
    send(raw_openai(&gw, ""))
        .await
        .openai_error(400, "invalid_request_error", &["empty"]);
    send(raw_anthropic(&gw, "  \n")).await.anthropic_error(
        400,
        "invalid_request_error",
        &["empty"],
    );
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let (fakes, gw) = setup().await;
    let got = send(gw.openai(&json!({"model": "default", "messages": "hi"}))).await;
    got.openai_error(
        400,
        "invalid_request_error",
        &["messages: expected an array"],
    );
    assert_eq!(got.json()["error"]["param"], "messages");
    let got = send(gw.anthropic(&json!({
        "model": "default", "max_tokens": 64, "messages": {"role": "user"}
    })))
    .await;
    got.anthropic_error(400, "invalid_request_error", &["messages: "]);
    let got = send(gw.anthropic(&json!({
        "model": "default", "max_tokens": "64",
        "messages": [{"role": "user", "content": "hi"}]
    })))
    .await;
    got.anthropic_error(
        400,
        "invalid_request_error",
        &["max_tokens: expected", "\"64\""],
    );
    let got = send(gw.openai(&json!({
        "model": "default", "max_tokens": "64",
        "messages": [{"role": "user", "content": "hi"}]
    })))
    .await;
    got.openai_error(400, "invalid_request_error", &["max_tokens: expected"]);
    assert_eq!(got.json()["error"]["param"], "max_tokens");
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn a_missing_model_is_400() {
    let (fakes, gw) = setup().await;
    let got = send(gw.openai(&json!({"messages": [{"role": "user", "content": "hi"}]}))).await;
    got.openai_error(400, "invalid_request_error", &["model: ", "required"]);
    let got = send(gw.anthropic(&json!({
        "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]
    })))
    .await;
    got.anthropic_error(400, "invalid_request_error", &["model: ", "required"]);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn an_unknown_model_is_404_listing_what_is_configured() {
    let (fakes, gw) = setup().await;
    let listed = [
        "gpt-5-nope",
        "default",
        "claude-first",
        "solo",
        "oa/gpt-4o",
        "oa/gpt-4o-mini",
        "oa2/gpt-4.1",
        "an/claude-sonnet-4-5",
        "rot/rot-model",
    ];
    let got = send(gw.openai(&openai_body("gpt-5-nope", "hi", false))).await;
    got.openai_error(404, "invalid_request_error", &listed);
    assert_eq!(got.json()["error"]["code"], "model_not_found");
    assert_eq!(got.json()["error"]["param"], "model");
    let got = send(gw.anthropic(&anthropic_body("gpt-5-nope", "hi", true))).await;
    got.anthropic_error(404, "not_found_error", &listed);
    // A provider that is not configured is no provider/model either.
    let got = send(gw.openai(&openai_body("opnai/gpt-4o", "hi", false))).await;
    got.openai_error(
        404,
        "invalid_request_error",
        &["opnai/gpt-4o", "oa, oa2, an, rot"],
    );
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn an_oversize_body_with_content_length_is_413() {
    let (fakes, gw) = setup().await;
    let big = "x".repeat(70_000);
    let got = send(gw.openai(&openai_body("default", &big, false))).await;
    got.openai_error(413, "invalid_request_error", &["65536", "max_body_bytes"]);
    let got = send(gw.anthropic(&anthropic_body("default", &big, false))).await;
    got.anthropic_error(413, "request_too_large", &["65536", "max_body_bytes"]);
    assert_no_upstream_requests(&fakes);
}

/// A chunked body (no Content-Length) of `n` bytes, sent in 8 KiB pieces.
fn chunked(n: usize) -> reqwest::Body {
    let mut body = br#"{"model":"default","messages":[{"role":"user","content":""#.to_vec();
    body.resize(n, b'x');
    body.extend_from_slice(br#""}]}"#);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn an_oversize_chunked_body_is_413() {
    let (fakes, gw) = setup().await;
    let rb = raw_openai(&gw, chunked(70_000));
    let got = send(rb).await;
    got.openai_error(413, "invalid_request_error", &["65536", "max_body_bytes"]);
    let got = send(raw_anthropic(&gw, chunked(70_000))).await;
    got.anthropic_error(413, "request_too_large", &["max_body_bytes"]);
    // Under the limit, chunked is fine.
    let got = send(raw_openai(&gw, chunked(1_000))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(fakes.oa.requests().len(), 1);
    fakes.oa.clear();
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn json_nested_deeper_than_the_limit_is_400() {
    let (fakes, gw) = setup().await;
    // max_json_depth is 16; the body object itself is one level.
    let deep = format!(
        r#"{{"model":"default","messages":[{{"role":"user","content":"hi"}}],"metadata":{}1{}}}"#,
        "[".repeat(20),
        "]".repeat(20)
    );
    send(raw_openai(&gw, deep.clone())).await.openai_error(
        400,
        "invalid_request_error",
        &["deeper than 16", "max_json_depth"],
    );
    send(raw_anthropic(&gw, deep)).await.anthropic_error(
        400,
        "invalid_request_error",
        &["max_json_depth"],
    );
    // Brackets inside strings are not nesting.
    let flat = format!(
        r#"{{"model":"default","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "[".repeat(40)
    );
    let got = send(raw_openai(&gw, flat)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    fakes.oa.clear();
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn a_missing_client_key_is_401_on_both_routes() {
    let (fakes, gw) = setup().await;
    let got = send(
        gw.request(Method::POST, "/v1/chat/completions")
            .json(&openai_body("default", "hi", false)),
    )
    .await;
    got.openai_error(401, "invalid_request_error", &["missing API key", "Bearer"]);
    let got = send(
        gw.request(Method::POST, "/v1/messages")
            .json(&anthropic_body("default", "hi", false)),
    )
    .await;
    got.anthropic_error(
        401,
        "authentication_error",
        &["missing API key", "x-api-key"],
    );
    // Other routes need a key too.
    let got = send(gw.request(Method::GET, "/v1/models")).await;
    got.openai_error(401, "invalid_request_error", &["missing API key"]);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn a_bad_client_key_is_401_on_both_routes() {
    let (fakes, gw) = setup().await;
    let body = openai_body("default", "hi", false);
    let got = send(
        gw.request(Method::POST, "/v1/chat/completions")
            .bearer_auth("sk-wrong-key-0123456789abcdef")
            .json(&body),
    )
    .await;
    let msg = got.openai_error(401, "invalid_request_error", &["invalid API key"]);
    assert!(!msg.contains("sk-wrong"), "the key is echoed: {msg}");
    assert_eq!(got.json()["error"]["code"], "invalid_api_key");
    let abody = anthropic_body("default", "hi", false);
    let got = send(
        gw.request(Method::POST, "/v1/messages")
            .header("x-api-key", "sk-wrong-key-0123456789abcdef")
            .json(&abody),
    )
    .await;
    got.anthropic_error(401, "authentication_error", &["invalid API key"]);
    let got = send(
        gw.request(Method::POST, "/v1/messages")
            .bearer_auth("sk-wrong-key-0123456789abcdef")
            .json(&abody),
    )
    .await;
    got.anthropic_error(401, "authentication_error", &["invalid API key"]);
    // A prefix of the right key is not the right key.
    let got = send(
        gw.request(Method::POST, "/v1/chat/completions")
            .bearer_auth(&CLIENT_KEY[..CLIENT_KEY.len() - 1])
            .json(&body),
    )
    .await;
    got.openai_error(401, "invalid_request_error", &["invalid API key"]);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn x_api_key_is_accepted_on_messages_only() {
    let (fakes, gw) = setup().await;
    // On /v1/chat/completions x-api-key is not a credential.
    let got = send(
        gw.request(Method::POST, "/v1/chat/completions")
            .header("x-api-key", CLIENT_KEY)
            .json(&openai_body("default", "hi", false)),
    )
    .await;
    got.openai_error(401, "invalid_request_error", &["missing API key"]);
    let got = send(
        gw.request(Method::GET, "/v1/models")
            .header("x-api-key", CLIENT_KEY),
    )
    .await;
    got.openai_error(401, "invalid_request_error", &["missing API key"]);
    assert_no_upstream_requests(&fakes);
    // Bearer works everywhere, x-api-key on /v1/messages.
    let got = send(gw.openai(&openai_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = send(
        gw.request(Method::POST, "/v1/messages")
            .bearer_auth(CLIENT_KEY)
            .json(&anthropic_body("default", "hi", false)),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = send(gw.anthropic(&anthropic_body("default", "hi", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(send(gw.get("/v1/models")).await.status, 200);
    // The Anthropic SDK sends both headers when given an api key and an auth token:
    // either one being right is enough, whichever it is.
    for (bearer, x_api_key) in [
        ("sk-wrong-key-0123456789abcdef", CLIENT_KEY),
        (CLIENT_KEY, "sk-wrong-key-0123456789abcdef"),
    ] {
        let got = send(
            gw.request(Method::POST, "/v1/messages")
                .bearer_auth(bearer)
                .header("x-api-key", x_api_key)
                .json(&anthropic_body("default", "hi", false)),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let got = send(
        gw.request(Method::POST, "/v1/messages")
            .bearer_auth("sk-wrong-key-0123456789abcdef")
            .header("x-api-key", "sk-also-wrong-0123456789abcdef")
            .json(&anthropic_body("default", "hi", false)),
    )
    .await;
    got.anthropic_error(401, "authentication_error", &["invalid API key"]);
}

#[tokio::test]
async fn health_and_ready_need_no_key() {
    let (fakes, gw) = setup().await;
    let got = send(gw.request(Method::GET, "/health")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["status"], "ok");
    got.request_id();
    let got = send(gw.request(Method::GET, "/ready")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["ready"], true);
    assert_no_upstream_requests(&fakes);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_json() {
    let (fakes, gw) = setup().await;
    let got = send(gw.get("/v1/nothing-here")).await;
    got.openai_error(
        404,
        "invalid_request_error",
        &["no route", "GET /v1/nothing-here", "/v1/chat/completions"],
    );
    let got = send(gw.get("/v1/messages/batches")).await;
    got.anthropic_error(404, "not_found_error", &["/v1/messages/batches"]);
    let got = send(gw.get("/v1/chat/completions")).await;
    got.openai_error(
        405,
        "invalid_request_error",
        &["GET", "/v1/chat/completions", "not allowed"],
    );
    let got = send(
        gw.request(Method::GET, "/v1/messages")
            .header("x-api-key", CLIENT_KEY),
    )
    .await;
    got.anthropic_error(405, "invalid_request_error", &["GET", "/v1/messages"]);
    let got = send(
        gw.request(Method::POST, "/v1/models")
            .bearer_auth(CLIENT_KEY),
    )
    .await;
    got.openai_error(405, "invalid_request_error", &["POST", "/v1/models"]);
    assert_no_upstream_requests(&fakes);
}
