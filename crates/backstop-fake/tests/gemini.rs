//! The Gemini route: replies, streams, errors and stream faults, read back with
//! Backstop's own Gemini decoder.
#![allow(clippy::unwrap_used)]

mod common;

use backstop::chat::{FinishReason, Part, StreamEvent};
use backstop::wire::gemini::{StreamDecoder, decode_error, decode_response};
use backstop_fake::{FakeHandle, FakeProvider, Reply, Step, ToolCall, Usage};
use common::*;
use serde_json::{Value, json};

fn url(fake: &FakeHandle, stream: bool) -> String {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    format!(
        "{}/v1beta/models/gemini-2.5-flash:{method}",
        fake.gemini_base_url()
    )
}

fn request() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Say hi"}]}]})
}

fn decode_stream(bytes: &[u8]) -> Vec<StreamEvent> {
    let mut dec = StreamDecoder::new();
    parse_sse(bytes)
        .iter()
        .flat_map(|e| dec.push(e).unwrap())
        .collect()
}

#[tokio::test]
async fn reply_non_streaming() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "Hello there".into(),
        usage: Some(Usage {
            input_tokens: 9,
            output_tokens: 2,
        }),
        ..Reply::default()
    }));
    let resp = post(&url(&fake, false), request()).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("application/json"));
    let body = resp.bytes().await.unwrap();
    let r = decode_response(&body).unwrap();
    assert_eq!(r.model, "gemini-2.5-flash", "the model comes from the path");
    assert_eq!(
        r.content,
        vec![Part::Text {
            text: "Hello there".into()
        }]
    );
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (9, 2));
    let seen = &fake.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.query, None);
}

#[tokio::test]
async fn echo_reads_the_last_user_turn() {
    let fake = FakeProvider::start().unwrap();
    let body = post(&url(&fake, false), request())
        .await
        .bytes()
        .await
        .unwrap();
    let r = decode_response(&body).unwrap();
    assert_eq!(
        r.content,
        vec![Part::Text {
            text: "echo: Say hi".into()
        }]
    );
}

#[tokio::test]
async fn streams_text_and_tool_calls() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::Reply(Reply {
        text: "one two".into(),
        tool_calls: vec![ToolCall {
            id: None,
            name: "lookup".into(),
            arguments: r#"{"q":"x"}"#.into(),
        }],
        ..Reply::default()
    }));
    let resp = post(&url(&fake, true), request()).await;
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(fake.requests()[0].query.as_deref(), Some("alt=sse"));
    let bytes = read_body(resp).await.unwrap();
    let events = decode_stream(&bytes);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let r = backstop::failover::stream::assemble(&events).unwrap();
    assert_eq!(
        r.content[0],
        Part::Text {
            text: "one two".into()
        }
    );
    assert!(
        matches!(&r.content[1], Part::ToolCall { name, arguments, .. }
        if name == "lookup" && arguments == r#"{"q":"x"}"#)
    );
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
}

#[tokio::test]
async fn errors_in_googles_shape() {
    let fake = FakeProvider::start().unwrap();
    for (status, kind, name) in [
        (429, None, "RESOURCE_EXHAUSTED"),
        (400, Some("invalid_request"), "INVALID_ARGUMENT"),
        (403, None, "PERMISSION_DENIED"),
        (500, None, "INTERNAL"),
        (503, None, "UNAVAILABLE"),
    ] {
        fake.push(match kind {
            Some(k) => Step::error_kind(status, k),
            None => Step::error(status),
        });
        let resp = post(&url(&fake, true), request()).await;
        assert_eq!(resp.status(), status);
        let body = resp.bytes().await.unwrap();
        let e = decode_error(&body).unwrap();
        assert_eq!(e.kind.as_deref(), Some(name));
        assert_eq!(e.code, Some(status.to_string()));
    }
}

#[tokio::test]
async fn stream_then_error_sends_an_error_chunk() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenError {
        text: "a b c".into(),
        after_chunks: 1,
        error: json!("overloaded"),
    });
    let bytes = read_body(post(&url(&fake, true), request()).await)
        .await
        .unwrap();
    let events = decode_stream(&bytes);
    assert_eq!(events[1], StreamEvent::TextDelta { text: "a ".into() });
    let Some(StreamEvent::Error { error }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.kind.as_deref(), Some("UNAVAILABLE"));
}

#[tokio::test]
async fn stream_then_cut_never_finishes() {
    let fake = FakeProvider::start().unwrap();
    fake.push(Step::StreamThenCut {
        text: "a b c".into(),
        after_chunks: 2,
    });
    let got = read_body(post(&url(&fake, true), request()).await).await;
    let bytes = got.expect_err("the body is cut");
    let events = decode_stream(&bytes);
    assert!(events.contains(&StreamEvent::TextDelta { text: "b ".into() }));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, StreamEvent::Finish { .. }))
    );
}
