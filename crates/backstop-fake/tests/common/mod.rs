//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Once;

use backstop::sse::{SseEvent, SseParser};
use serde_json::Value;

pub fn client() -> reqwest::Client {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn post(url: &str, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

/// Read a whole body; `Err` carries what arrived before the body failed.
pub async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return Ok(out),
            Err(_) => return Err(out),
        }
    }
}

pub fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events = parser.push(bytes);
    events.extend(parser.finish());
    events
}

/// The JSON data of every event (the `[DONE]` sentinel and bad JSON skipped).
pub fn json_events(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.data).ok())
        .collect()
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Concatenated OpenAI `delta.content` of every chunk.
pub fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

/// Concatenated Anthropic `text_delta` text of every event.
pub fn anthropic_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta"))
        .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
        .collect()
}

/// Whether a request failed with a TCP reset (ECONNRESET) somewhere in its causes.
pub fn is_connection_reset(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        source = e.source();
    }
    false
}
