//! Request fields whose meaning must survive the trip to the upstream, checked on what
//! the fake provider receives and what the client gets back (PRODUCT §2: "any ingress
//! format reaches any upstream format … translated faithfully").
#![allow(clippy::unwrap_used)]

mod common;

use backstop_fake::Step;
use common::*;
use serde_json::json;

/// A `chat.completion` with two choices, as OpenAI answers `n: 2`.
fn two_choices() -> Step {
    let body = json!({
        "id": "chatcmpl-two", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "one"}, "logprobs": null, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "two"}, "logprobs": null, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    });
    Step::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

#[tokio::test]
async fn n_choices_reach_an_openai_client_of_an_openai_upstream_whole() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    fakes.oa.push(two_choices());
    let mut body = openai_body("solo", "two ways", false);
    body["n"] = json!(2);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    // Asked for unstreamed: the assembly of an upstream stream keeps only choice 0.
    let sent = &fakes.oa.requests()[0].body;
    assert_eq!(sent["n"], 2);
    assert_ne!(sent["stream"], true, "{sent}");
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

#[tokio::test]
async fn n_choices_toward_an_anthropic_upstream_are_refused_clearly() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    for stream in [false, true] {
        let mut body = openai_body("solo-claude", "two ways", stream);
        body["n"] = json!(3);
        let got = send(gw.openai(&body)).await;
        got.openai_error(
            400,
            "invalid_request_error",
            &["n: 3 choices", "an/claude-sonnet-4-5", "n=1"],
        );
        assert_eq!(got.json()["error"]["param"], "n");
        assert_eq!(got.header("x-backstop-attempts"), Some("0"));
    }
    // n = 1 is what every format does: served.
    let mut body = openai_body("solo-claude", "one way", false);
    body["n"] = json!(1);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        fakes.an.requests().len(),
        1,
        "the refused requests never left"
    );
}

/// Anthropic's `model_context_window_exceeded` stop reason is a truncated answer: an
/// OpenAI client sees `length`, as for `max_tokens`, not a clean `stop`.
#[tokio::test]
async fn a_context_window_cut_from_anthropic_is_length_for_an_openai_client() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let cut = || {
        Step::Reply(backstop_fake::Reply {
            text: "partial answer".into(),
            finish_reason: Some("model_context_window_exceeded".into()),
            ..Default::default()
        })
    };
    fakes.an.push(cut());
    let got = send(gw.openai(&openai_body("solo-claude", "long", false))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["choices"][0]["finish_reason"], "length");

    fakes.an.push(cut());
    let got = send(gw.openai(&openai_body("solo-claude", "long", true))).await;
    let finishes: Vec<String> = got
        .json_events()
        .iter()
        .filter_map(|e| {
            e["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(finishes, ["length"], "{}", got.text());
}

/// A `chat.completion` with log probabilities, as OpenAI answers `logprobs: true` unstreamed.
fn with_logprobs() -> Step {
    let body = json!({
        "id": "chatcmpl-lp", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
            "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}], "refusal": null},
        }],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    });
    Step::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

#[tokio::test]
async fn n_choices_skip_a_model_that_cannot_serve_them_without_counting_an_attempt() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    fakes.oa.push(two_choices());
    // claude-first: an/claude-sonnet-4-5 → oa/gpt-4o. Anthropic answers once: skipped.
    let mut body = openai_body("claude-first", "two ways", false);
    body["n"] = json!(2);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["choices"].as_array().unwrap().len(), 2);
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.header("x-backstop-attempts"), Some("1"));
    assert_eq!(got.header("x-backstop-fallback"), Some("bad_request"));
    assert!(
        fakes.an.requests().is_empty(),
        "the skipped model was never sent it"
    );
}

#[tokio::test]
async fn n_choices_fail_over_past_the_openai_models_to_the_chain_failure_not_a_400() {
    // default: oa/gpt-4o → oa2/gpt-4.1 → an/claude-sonnet-4-5.
    for stream in [false, true] {
        let fakes = Fakes::start();
        let gw = Gateway::start(&fakes.standard_config()).await;
        fakes.oa.set_default(Step::error(503));
        fakes.oa2.set_default(Step::error(503));
        let mut body = openai_body("default", "two ways", stream);
        body["n"] = json!(2);
        let got = send(gw.openai(&body)).await;
        got.openai_error(
            503,
            "server_error",
            &[
                "oa/gpt-4o (main)",
                "oa2/gpt-4.1 (main)",
                "an/claude-sonnet-4-5: skipped: cannot serve n: 2 choices",
            ],
        );
        let tried = fakes.oa.requests().len() + fakes.oa2.requests().len();
        assert_eq!(
            got.header("x-backstop-attempts"),
            Some(tried.to_string().as_str()),
            "only the attempts that left the gateway"
        );
        assert!(tried >= 2);
        assert!(fakes.an.requests().is_empty());
    }
}

#[tokio::test]
async fn logprobs_reach_an_openai_client_of_an_openai_upstream() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    fakes.oa.push(with_logprobs());
    let mut body = openai_body("solo", "hi", false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(1);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(
        v["choices"][0]["logprobs"]["content"][0]["logprob"], -0.25,
        "{v}"
    );
    // Asked for unstreamed: the assembly of an upstream stream keeps only the text.
    let sent = &fakes.oa.requests()[0].body;
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["top_logprobs"], 1);
    assert_ne!(sent["stream"], true, "{sent}");
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

#[tokio::test]
async fn logprobs_skip_a_model_that_cannot_return_them() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    fakes.oa.push(with_logprobs());
    let mut body = openai_body("claude-first", "hi", false);
    body["logprobs"] = json!(true);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(got.header("x-backstop-attempts"), Some("1"));
    assert!(got.json()["choices"][0]["logprobs"].is_object());
    assert!(fakes.an.requests().is_empty());
    // Only Anthropic in the chain: a 400 naming the field and the chain's model.
    let mut body = openai_body("solo-claude", "hi", false);
    body["logprobs"] = json!(true);
    let got = send(gw.openai(&body)).await;
    got.openai_error(
        400,
        "invalid_request_error",
        &["logprobs: true", "an/claude-sonnet-4-5"],
    );
    assert_eq!(got.json()["error"]["param"], "logprobs");
    assert_eq!(got.header("x-backstop-attempts"), Some("0"));
    // `logprobs: false` asks for nothing an Anthropic model cannot give.
    let mut body = openai_body("solo-claude", "hi", false);
    body["logprobs"] = json!(false);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(fakes.an.requests().len(), 1);
}

/// An unstreamed upstream call (here for `logprobs`) sends its head only once the whole
/// answer is written: first_token_ms (300 ms in these tests) must not cut a longer
/// answer, only the request's deadline bounds it.
#[tokio::test]
async fn an_unstreamed_upstream_answer_may_take_longer_than_first_token_ms() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    fakes.oa.push(Step::Reply(backstop_fake::Reply {
        text: "slow but whole".into(),
        first_token_delay_ms: Some(700),
        ..Default::default()
    }));
    let mut body = openai_body("solo", "take your time", false);
    body["logprobs"] = json!(true);
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["choices"][0]["message"]["content"],
        "slow but whole"
    );
    assert_eq!(fakes.oa.requests().len(), 1);
}

/// An Anthropic client's failed tool call (`tool_result` with `is_error: true`) reaches an
/// OpenAI upstream marked as an error in the `tool` message's text, which has no flag for it.
#[tokio::test]
async fn a_tool_error_from_an_anthropic_client_stays_an_error_toward_openai() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let body = json!({
        "model": "solo", "max_tokens": 50,
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": "connection refused"},
            ]},
        ],
    });
    let got = send(gw.anthropic(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let sent = &fakes.oa.requests()[0].body;
    let tool = &sent["messages"][2];
    assert_eq!(tool["role"], "tool", "{sent}");
    assert_eq!(tool["tool_call_id"], "toolu_1");
    assert_eq!(tool["content"], "Error: connection refused");
}

/// Chat Completions takes at most 4 stop sequences (a longer list is a 400): an
/// Anthropic client's longer `stop_sequences` reach an OpenAI upstream as the first 4.
#[tokio::test]
async fn more_stop_sequences_than_openai_takes_are_cut_to_four() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let mut body = anthropic_body("solo", "count", false);
    body["stop_sequences"] = json!(["a", "b", "c", "d", "e", "f"]);
    let got = send(gw.anthropic(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let sent = &fakes.oa.requests()[0].body;
    assert_eq!(sent["stop"], json!(["a", "b", "c", "d"]), "{sent}");
}

/// A PDF `document` block and a server tool: Anthropic's own, with no equivalent in the
/// other formats.
fn anthropic_with_document(model: &str) -> serde_json::Value {
    json!({
        "model": model, "max_tokens": 50,
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}},
            {"type": "text", "text": "summarize"},
        ]}],
    })
}

/// Content only the client's own format has (README: "same-format traffic is forwarded
/// with only `model` rewritten") reaches a model of that format as the client sent it,
/// instead of being refused because it cannot be translated.
#[tokio::test]
async fn anthropic_only_content_reaches_an_anthropic_model_as_sent() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let got = send(gw.anthropic(&anthropic_with_document("solo-claude"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let sent = &fakes.an.requests()[0].body;
    assert_eq!(
        sent["messages"][0]["content"][0]["type"], "document",
        "{sent}"
    );
    assert_eq!(sent["tools"][0]["type"], "web_search_20250305", "{sent}");
}

/// … and a model of another format is never sent it: skipped when the chain has a model
/// of the client's format, a 400 naming the field when it has none.
#[tokio::test]
async fn untranslatable_content_skips_other_formats_or_is_refused_clearly() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let got = send(gw.anthropic(&anthropic_with_document("solo"))).await;
    got.anthropic_error(
        400,
        "invalid_request_error",
        &[
            "messages[0].content[0].type",
            "\"document\"",
            "oa/gpt-4o-mini",
        ],
    );
    assert_eq!(got.header("x-backstop-attempts"), Some("0"));
    assert_no_upstream_requests(&fakes);

    // claude-first: an/claude-sonnet-4-5 → oa/gpt-4o. Claude fails; GPT is not sent a
    // request it would answer without the document.
    fakes.an.set_default(Step::Error(backstop_fake::ErrorStep {
        status: 500,
        ..Default::default()
    }));
    let got = send(gw.anthropic(&anthropic_with_document("claude-first"))).await;
    assert_eq!(got.status / 100, 5, "{}", got.text());
    assert!(
        fakes.oa.requests().is_empty(),
        "the OpenAI model was sent it"
    );

    // An OpenAI client's `file` part: served by an OpenAI model as sent, refused for Claude.
    let body = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}},
            {"type": "text", "text": "summarize"},
        ]}]})
    };
    let got = send(gw.openai(&body("solo"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        fakes.oa.requests()[0].body["messages"][0]["content"][0]["type"],
        "file"
    );
    let got = send(gw.openai(&body("solo-claude"))).await;
    got.openai_error(
        400,
        "invalid_request_error",
        &["\"file\"", "an/claude-sonnet-4-5"],
    );
    assert_eq!(got.json()["error"]["param"], "messages[0].content[0].type");
}
