//! Server-Sent Events: an incremental parser for upstream streams and a writer
//! for client streams.

use bytes::Bytes;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when present (Anthropic names every event; OpenAI none).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (per the SSE spec).
    pub data: String,
    /// The event's bytes exactly as received (including its terminating blank line),
    /// for byte-exact passthrough of same-format streams.
    pub raw: Bytes,
}

/// Write one SSE frame (`event:` line if given, `data:` line(s), blank line) to `out`.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

// STUB parser (replaced by the sse-fake branch)
pub struct SseParser;
#[allow(clippy::new_without_default, unused_variables)]
impl SseParser {
    pub fn new() -> Self {
        todo!()
    }
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        todo!()
    }
    pub fn finish(&mut self) -> Option<SseEvent> {
        todo!()
    }
    pub fn buffered(&self) -> usize {
        todo!()
    }
}
