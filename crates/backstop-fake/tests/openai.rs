//! The OpenAI Chat Completions route: every step kind, streaming and not.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use backstop_fake::{FakeProvider, Reply, Step, ToolCall, Usage};
use common::*;
use serde_json::{Value, json};

fn url(fake: &backstop_fake::FakeHandle) -> String {
    format!("{}/chat/completions", fake.openai_base_url())
}

fn request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Say hi"}
        ]
    })
}

#[tokio::test]
async fn reply_non_streaming_has_the_completion_shape() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "Hello there".into(),
        usage: Some(Usage {
            input_tokens: 11,
            output_tokens: 2,
        }),
        ..Reply::default()
    }));
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert!(header(&resp, "x-request-id").starts_with("req_"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].is_u64());
    assert_eq!(
        body["model"], "gpt-4o-mini",
        "defaults to the request's model"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello there");
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice.get("logprobs").is_some());
    assert_eq!(
        body["usage"]["prompt_tokens"], 11,
        "usage as scripted: {body}"
    );
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert_eq!(body["usage"]["total_tokens"], 13);
}

#[tokio::test]
async fn reply_streaming_event_sequence() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "héllo wide 🌍 world".into(),
        model: Some("gpt-4o-2024-08-06".into()),
        chunks: Some(3),
        ..Reply::default()
    }));
    let resp = post(&url(&fake), request(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let events = parse_sse(&read_body(resp).await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        events.iter().all(|e| e.event.is_none()),
        "OpenAI names no events"
    );
    let chunks = json_events(&events);
    assert_eq!(chunks.len(), 5, "role + 3 content + finish: {chunks:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], "gpt-4o-2024-08-06");
        assert!(c.get("usage").is_none(), "no usage without include_usage");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks[1..4]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(openai_text(&chunks), "héllo wide 🌍 world");
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_before_done() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::text("a b"));
    let mut req = request(true);
    req["stream_options"] = json!({"include_usage": true});
    let events = parse_sse(&read_body(post(&url(&fake), req).await).await.unwrap());
    let n = events.len();
    assert_eq!(events[n - 1].data, "[DONE]");
    let chunks = json_events(&events);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let others = &chunks[..chunks.len() - 1];
    assert!(others.iter().all(|c| c["usage"].is_null()));
    assert_eq!(
        others.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn tool_calls_streamed_in_fragments_and_whole() {
    let fake = FakeProvider::start().unwrap();
    let reply = Step::Reply(Reply {
        tool_calls: vec![
            ToolCall {
                id: None,
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris","unit":"c"}"#.into(),
            },
            ToolCall {
                id: Some("call_fixed".into()),
                name: "noop".into(),
                arguments: "{}".into(),
            },
        ],
        ..Reply::default()
    });
    fake.push_many([reply.clone(), reply]);

    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let chunks = json_events(&events);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .collect();
    let first: Vec<_> = calls.iter().filter(|c| c["index"] == 0).collect();
    assert!(
        first.len() >= 3,
        "arguments split into fragments: {first:?}"
    );
    assert!(first[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(first[0]["type"], "function");
    assert_eq!(first[0]["function"]["name"], "get_weather");
    let args: String = first
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(args, r#"{"city":"Paris","unit":"c"}"#);
    assert!(
        calls
            .iter()
            .any(|c| c["index"] == 1 && c["id"] == "call_fixed")
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "tool_calls");

    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    let msg = &body["choices"][0]["message"];
    assert!(msg["content"].is_null());
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris","unit":"c"}"#
    );
    assert_eq!(msg["tool_calls"][1]["id"], "call_fixed");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn finish_reason_is_translated() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "cut".into(),
        finish_reason: Some("max_tokens".into()),
        ..Reply::default()
    }));
    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn echo_is_the_default_and_reads_text_parts() {
    let fake = FakeProvider::start().unwrap();
    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: Say hi");

    let req = json!({"model": "m", "stream": true, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "part one"}]}
    ]});
    let events = parse_sse(&read_body(post(&url(&fake), req).await).await.unwrap());
    assert_eq!(openai_text(&json_events(&events)), "echo: part one");
}

#[tokio::test]
async fn error_bodies_for_each_kind() {
    let fake = FakeProvider::start().unwrap();
    let cases = [
        (
            Step::rate_limited(2),
            429,
            "requests",
            Some("rate_limit_exceeded"),
        ),
        (
            Step::error_kind(429, "insufficient_quota"),
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        (
            Step::error(401),
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        (
            Step::error_kind(400, "context_length_exceeded"),
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        (
            Step::error_kind(404, "model_not_found"),
            404,
            "invalid_request_error",
            Some("model_not_found"),
        ),
        (Step::error(500), 500, "server_error", None),
        (Step::error(503), 503, "server_error", None),
    ];
    for (step, status, kind, code) in cases {
        fake.push(step);
        // Errors answer with JSON whether or not the request streams.
        let resp = post(&url(&fake), request(status % 2 == 0)).await;
        assert_eq!(resp.status(), status);
        assert_eq!(header(&resp, "content-type"), "application/json");
        if status == 429 && code == Some("rate_limit_exceeded") {
            assert_eq!(header(&resp, "retry-after"), "2");
        }
        let body: Value = resp.json().await.unwrap();
        let err = &body["error"];
        assert!(err["message"].as_str().unwrap().len() > 10, "{body}");
        assert_eq!(err["type"], kind, "{body}");
        assert_eq!(err["code"].as_str(), code, "{body}");
        assert!(err.get("param").is_some(), "{body}");
    }
}

#[tokio::test]
async fn error_with_explicit_body() {
    let fake = FakeProvider::start().unwrap();
    let body = json!({"error": {"message": "custom", "type": "x", "param": null, "code": "y"}});
    fake.push(Step::Error(backstop_fake::ErrorStep {
        status: 418,
        body: Some(body.clone()),
        retry_after: None,
        kind: None,
    }));
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.json::<Value>().await.unwrap(), body);
}

#[tokio::test]
async fn reset_fails_the_request_and_the_next_one_works() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reset);
    let err = client()
        .post(url(&fake))
        .json(&request(false))
        .send()
        .await
        .unwrap_err();
    assert!(is_connection_reset(&err), "{err:?}");
    assert_eq!(
        fake.requests().len(),
        1,
        "the request was read before the reset"
    );
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn hang_never_answers() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Hang);
    let err = client()
        .post(url(&fake))
        .timeout(Duration::from_millis(300))
        .json(&request(true))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn stream_then_cut_aborts_mid_body() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenCut {
        text: "one two three four".into(),
        after_chunks: 2,
    });
    let resp = post(&url(&fake), request(true)).await;
    assert_eq!(resp.status(), 200);
    let partial = read_body(resp).await.unwrap_err();
    let events = parse_sse(&partial);
    assert_eq!(openai_text(&json_events(&events)), "one two ");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
}

#[tokio::test]
async fn stream_then_cut_on_a_non_streaming_request() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenCut {
        text: "one two".into(),
        after_chunks: 1,
    });
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 200);
    let partial = read_body(resp).await.unwrap_err();
    assert!(serde_json::from_slice::<Value>(&partial).is_err());
}

#[tokio::test]
async fn stream_then_stall_goes_silent() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenStall {
        text: "one two three".into(),
        after_chunks: 1,
    });
    let mut resp = post(&url(&fake), request(true)).await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"one \"") {
        got.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
    }
    let next = tokio::time::timeout(Duration::from_millis(300), resp.chunk()).await;
    assert!(next.is_err(), "nothing after the stall: {next:?}");
    drop(fake);
    assert!(
        resp.chunk().await.is_err(),
        "shutting the fake down ends the stall"
    );
    assert_eq!(openai_text(&json_events(&parse_sse(&got))), "one ");
}

#[tokio::test]
async fn stream_then_error_sends_an_error_chunk_without_done() {
    let fake = FakeProvider::start().unwrap();
    fake.push_many([
        Step::StreamThenError {
            text: "one two".into(),
            after_chunks: 1,
            error: Value::Null,
        },
        Step::StreamThenError {
            text: "x".into(),
            after_chunks: 0,
            error: json!({"message": "boom", "type": "server_error", "param": null, "code": null}),
        },
    ]);
    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let last: Value = serde_json::from_slice(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(last["error"]["message"].is_string());
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert_eq!(openai_text(&json_events(&events)), "one ");

    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let last: Value = serde_json::from_slice(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["message"], "boom");
}

#[tokio::test]
async fn stream_malformed_then_continues() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamMalformed {
        text: "one two three".into(),
        after_chunks: 1,
    });
    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let bad = events.iter().position(|e| e.data == "{not json").unwrap();
    assert_eq!(openai_text(&json_events(&events[..bad])), "one ");
    assert_eq!(openai_text(&json_events(&events)), "one two three");
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

#[tokio::test]
async fn stream_no_done_ends_cleanly_without_terminator() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamNoDone {
        text: "one two".into(),
    });
    let body = read_body(post(&url(&fake), request(true)).await)
        .await
        .unwrap();
    let events = parse_sse(&body);
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    let chunks = json_events(&events);
    assert_eq!(openai_text(&chunks), "one two");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn raw_sends_anything() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Raw {
        status: 502,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html>Bad Gateway</html>".into(),
    });
    let resp = post(&url(&fake), request(true)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "content-type"), "text/html");
    assert_eq!(resp.text().await.unwrap(), "<html>Bad Gateway</html>");
}

#[tokio::test]
async fn prefixed_base_url_works() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::text("routed"));
    let resp = post(
        &format!("{}/api/v1/chat/completions", fake.url()),
        request(false),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "routed");
    assert_eq!(fake.requests()[0].path, "/api/v1/chat/completions");
}

#[tokio::test]
async fn first_token_delay_holds_back_content_not_headers() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "late".into(),
        first_token_delay_ms: Some(150),
        ..Reply::default()
    }));
    let started = std::time::Instant::now();
    let resp = post(&url(&fake), request(true)).await;
    let events = parse_sse(&read_body(resp).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(openai_text(&json_events(&events)), "late");
}

#[tokio::test]
async fn a_long_stream_is_delivered_whole_up_to_the_cut() {
    let fake = FakeProvider::start().unwrap();
    let text: String = (0..3000).map(|i| format!("w{i} ")).collect();
    fake.push(Step::StreamThenCut {
        text,
        after_chunks: 2500,
    });
    let partial = read_body(post(&url(&fake), request(true)).await)
        .await
        .unwrap_err();
    let got = openai_text(&json_events(&parse_sse(&partial)));
    assert_eq!(got.split_whitespace().count(), 2500);
    assert!(got.ends_with("w2499 "));
}
