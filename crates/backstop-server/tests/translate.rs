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
