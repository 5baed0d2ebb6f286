//! The Anthropic Messages route: every step kind, streaming and not.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use backstop_fake::{FakeHandle, FakeProvider, Reply, Step, ToolCall, Usage};
use common::*;
use serde_json::{Value, json};

fn url(fake: &FakeHandle) -> String {
    format!("{}/v1/messages", fake.anthropic_base_url())
}

fn request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": stream,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hi"}]}
        ]
    })
}

fn names(events: &[backstop::sse::SseEvent]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.event.as_deref().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn reply_non_streaming_has_the_message_shape() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "Hello there".into(),
        usage: Some(Usage {
            input_tokens: 21,
            output_tokens: 4,
        }),
        ..Reply::default()
    }));
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert!(header(&resp, "request-id").starts_with("req_"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert!(body["stop_sequence"].is_null());
    assert_eq!(body["usage"]["input_tokens"], 21);
    assert_eq!(body["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn reply_streaming_event_sequence() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "héllo wide 🌍 world".into(),
        chunks: Some(2),
        usage: Some(Usage {
            input_tokens: 9,
            output_tokens: 7,
        }),
        ..Reply::default()
    }));
    let resp = post(&url(&fake), request(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let events = parse_sse(&read_body(resp).await.unwrap());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let data = json_events(&events);
    for (e, d) in events.iter().zip(&data) {
        assert_eq!(
            d["type"],
            e.event.as_deref().unwrap(),
            "data.type = event name"
        );
    }
    let msg = &data[0]["message"];
    assert!(msg["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(msg["content"], json!([]));
    assert!(msg["stop_reason"].is_null());
    assert_eq!(msg["usage"]["input_tokens"], 9);
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(anthropic_text(&data), "héllo wide 🌍 world");
    assert_eq!(data[5]["index"], 0);
    assert_eq!(data[6]["delta"]["stop_reason"], "end_turn");
    assert!(data[6]["delta"]["stop_sequence"].is_null());
    assert_eq!(data[6]["usage"]["output_tokens"], 7);
}

#[tokio::test]
async fn tool_use_streamed_and_whole() {
    let fake = FakeProvider::start().unwrap();
    let reply = Step::Reply(Reply {
        text: "Checking.".into(),
        tool_calls: vec![ToolCall {
            id: None,
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris","unit":"c"}"#.into(),
        }],
        ..Reply::default()
    });
    fake.push_many([reply.clone(), reply]);

    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let data = json_events(&events);
    let start = data
        .iter()
        .find(|d| d["type"] == "content_block_start" && d["index"] == 1)
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert!(
        start["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    assert_eq!(start["content_block"]["name"], "get_weather");
    assert_eq!(start["content_block"]["input"], json!({}));
    let fragments: Vec<&str> = data
        .iter()
        .filter(|d| d.pointer("/delta/type").and_then(Value::as_str) == Some("input_json_delta"))
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_eq!(fragments.concat(), r#"{"city":"Paris","unit":"c"}"#);
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["content"][0]["text"], "Checking.");
    assert_eq!(body["content"][1]["type"], "tool_use");
    assert_eq!(
        body["content"][1]["input"],
        json!({"city": "Paris", "unit": "c"})
    );
    assert_eq!(body["stop_reason"], "tool_use");
}

#[tokio::test]
async fn finish_reason_is_translated() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "cut".into(),
        finish_reason: Some("length".into()),
        ..Reply::default()
    }));
    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn echo_reads_blocks_and_strings() {
    let fake = FakeProvider::start().unwrap();
    let body: Value = post(&url(&fake), request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["content"][0]["text"], "echo: Say hi");

    let req = json!({"model": "m", "max_tokens": 5, "stream": true,
                     "messages": [{"role": "user", "content": "plain"}]});
    let events = parse_sse(&read_body(post(&url(&fake), req).await).await.unwrap());
    assert_eq!(anthropic_text(&json_events(&events)), "echo: plain");
}

#[tokio::test]
async fn error_bodies_for_each_kind() {
    let fake = FakeProvider::start().unwrap();
    let cases = [
        (Step::rate_limited(5), 429, "rate_limit_error"),
        (Step::error(529), 529, "overloaded_error"),
        (Step::error(401), 401, "authentication_error"),
        (Step::error(403), 403, "permission_error"),
        (Step::error(400), 400, "invalid_request_error"),
        (Step::error(500), 500, "api_error"),
        (Step::error(404), 404, "not_found_error"),
        (Step::error_kind(402, "billing"), 402, "billing_error"),
    ];
    for (step, status, kind) in cases {
        fake.push(step);
        let resp = post(&url(&fake), request(status % 2 == 1)).await;
        assert_eq!(resp.status(), status);
        assert_eq!(header(&resp, "content-type"), "application/json");
        if status == 429 {
            assert_eq!(header(&resp, "retry-after"), "5");
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(
            body["request_id"].as_str().unwrap().starts_with("req_"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn reset_fails_the_request() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reset);
    let err = client()
        .post(url(&fake))
        .json(&request(true))
        .send()
        .await
        .unwrap_err();
    assert!(is_connection_reset(&err), "{err:?}");
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
        .json(&request(false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn stream_then_cut_aborts_mid_body() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenCut {
        text: "one two three".into(),
        after_chunks: 1,
    });
    let partial = read_body(post(&url(&fake), request(true)).await)
        .await
        .unwrap_err();
    let events = parse_sse(&partial);
    assert_eq!(anthropic_text(&json_events(&events)), "one ");
    let names = names(&events);
    assert!(!names.contains(&"message_stop") && !names.contains(&"message_delta"));
    assert_eq!(names[0], "message_start");
}

#[tokio::test]
async fn stream_then_stall_goes_silent() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenStall {
        text: "one two".into(),
        after_chunks: 0,
    });
    let mut resp = post(&url(&fake), request(true)).await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("event: ping") {
        got.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
    }
    let next = tokio::time::timeout(Duration::from_millis(300), resp.chunk()).await;
    assert!(next.is_err(), "nothing after the stall: {next:?}");
    assert_eq!(anthropic_text(&json_events(&parse_sse(&got))), "");
    drop(fake);
    assert!(resp.chunk().await.is_err());
}

#[tokio::test]
async fn stream_then_error_sends_an_error_event() {
    let fake = FakeProvider::start().unwrap();
    fake.push_many([
        Step::StreamThenError {
            text: "one two".into(),
            after_chunks: 1,
            error: Value::Null,
        },
        Step::StreamThenError {
            text: "x".into(),
            after_chunks: 5,
            error: json!("rate_limit"),
        },
    ]);
    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    let data: Value = serde_json::from_slice(&last.data).unwrap();
    assert_eq!(
        data,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert!(!names(&events).contains(&"message_stop"));
    assert_eq!(anthropic_text(&json_events(&events)), "one ");

    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let data: Value = serde_json::from_slice(&events.last().unwrap().data).unwrap();
    assert_eq!(data["error"]["type"], "rate_limit_error");
    assert_eq!(anthropic_text(&json_events(&events)), "x");
}

#[tokio::test]
async fn stream_malformed_then_continues() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamMalformed {
        text: "one two".into(),
        after_chunks: 1,
    });
    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    let bad = events.iter().position(|e| e.data == "{not json").unwrap();
    assert_eq!(anthropic_text(&json_events(&events[..bad])), "one ");
    assert_eq!(anthropic_text(&json_events(&events)), "one two");
    assert_eq!(names(&events).last(), Some(&"message_stop"));
}

#[tokio::test]
async fn stream_no_done_ends_without_message_stop() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamNoDone { text: "hi".into() });
    let events = parse_sse(
        &read_body(post(&url(&fake), request(true)).await)
            .await
            .unwrap(),
    );
    assert_eq!(names(&events).last(), Some(&"message_delta"));
    assert_eq!(anthropic_text(&json_events(&events)), "hi");
}

#[tokio::test]
async fn stream_then_error_on_a_non_streaming_request_is_an_http_error() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenError {
        text: "x".into(),
        after_chunks: 0,
        error: Value::Null,
    });
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
}

#[tokio::test]
async fn raw_sends_anything() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Raw {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: "not a message".into(),
    });
    let resp = post(&url(&fake), request(false)).await;
    assert_eq!(header(&resp, "content-type"), "text/plain");
    assert_eq!(resp.text().await.unwrap(), "not a message");
}
