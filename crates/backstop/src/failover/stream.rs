//! Reading an upstream SSE stream as classified items: events, a clean end, or a failure.

use super::classify;
use super::failure::{Failure, Phase, Reason};
use crate::chat::{ChunkEvents, StreamEvent, WireError, WireFormat};
use crate::sse::{SseEvent, SseParser};
use crate::wire;
use std::time::Duration;
use tokio::time::Instant;

/// A stream decoder for whichever format the upstream speaks.
pub enum UpstreamDecoder {
    OpenAi(wire::openai::StreamDecoder),
    Anthropic(wire::anthropic::StreamDecoder),
    Gemini(wire::gemini::StreamDecoder),
}

impl UpstreamDecoder {
    pub fn new(format: WireFormat) -> Option<Self> {
        match format {
            WireFormat::OpenAi => Some(Self::OpenAi(wire::openai::StreamDecoder::new())),
            WireFormat::Anthropic => Some(Self::Anthropic(wire::anthropic::StreamDecoder::new())),
            WireFormat::Gemini => Some(Self::Gemini(wire::gemini::StreamDecoder::new())),
        }
    }

    pub fn push(&mut self, ev: &SseEvent) -> Result<ChunkEvents, WireError> {
        self.push_into(ev, None)
    }

    /// [`push`](Self::push) for an answer being assembled, `text` being its text so far
    /// ([`Assembler::text_buffer`]): a text chunk read by a decoder's template has its
    /// text appended there and gives no events (as an empty text chunk gives none).
    pub fn push_into(
        &mut self,
        ev: &SseEvent,
        text: Option<&mut String>,
    ) -> Result<ChunkEvents, WireError> {
        match self {
            Self::OpenAi(d) => d.push_chunk_into(ev, text),
            Self::Anthropic(d) => d.push_chunk_into(ev, text),
            Self::Gemini(d) => d.push(ev).map(ChunkEvents::from),
        }
    }
}

impl UpstreamDecoder {
    /// The template of the decoder's text chunks (`Template::append_text` appends a
    /// matching chunk's text as `push_into` with that text would: no events, the
    /// decoder unchanged).
    fn template(&self) -> Option<&wire::scan::Template> {
        match self {
            Self::OpenAi(d) => Some(d.template()),
            Self::Anthropic(d) => Some(d.template()),
            Self::Gemini(_) => None,
        }
    }
}

/// One step of an upstream stream.
pub enum StreamItem {
    /// An SSE event with what it means.
    Event(SseEvent, ChunkEvents),
    /// The stream ended properly (its terminator arrived, or it closed after its finish reason).
    End,
    /// The stream failed: cut, stall, malformed chunk or in-band error.
    Failed(Failure),
}

/// An upstream response body read as a sequence of [`StreamItem`]s.
pub struct UpstreamStream {
    response: crate::provider::Response,
    parser: SseParser,
    decoder: UpstreamDecoder,
    /// The next event, read from the parser's bytes (the rest of a read's events stay
    /// there until this one is taken).
    ready: Option<SseEvent>,
    idle: Duration,
    /// The request's deadline (`timeouts.request_ms`, PRODUCT §3.4): a stream still
    /// running then fails, however steadily it sends.
    deadline: Instant,
    /// Whether content already reached the client (changes how failures are phased).
    pub committed: bool,
    /// A finish reason was seen.
    pub finished: bool,
    /// The terminator was seen.
    pub done: bool,
    /// Usage came with or after the finish reason: nothing but the terminator follows
    /// (OpenAI's usage chunk is the last before `[DONE]`; Anthropic's `message_delta`
    /// before `message_stop`; Gemini's last chunk has no terminator at all).
    complete: bool,
    eof: bool,
}

/// How long a stream whose answer is complete (finish reason and usage seen) may take
/// to send its terminator or close before it is finalised without it. Servers send the
/// terminator at once; waiting briefly keeps the connection reusable, and not waiting
/// `idle_ms` keeps an upstream that never sends it from holding the answer back.
const TERMINATOR_GRACE: Duration = Duration::from_millis(200);

/// How long [`UpstreamStream::release`] waits for the end of a body whose terminator
/// has been read.
const RELEASE_GRACE: Duration = Duration::from_millis(500);

impl UpstreamStream {
    /// A stream of `response`'s body. Its head has been read by then and is dropped
    /// ([`forget_head`](crate::provider::Response::forget_head)): kept for the stream's
    /// life, it would keep the connection's first read buffer alive.
    pub fn new(
        mut response: crate::provider::Response,
        decoder: UpstreamDecoder,
        idle: Duration,
        deadline: Instant,
    ) -> Self {
        response.forget_head();
        UpstreamStream {
            response,
            parser: SseParser::new(),
            decoder,
            ready: None,
            idle,
            deadline,
            committed: false,
            finished: false,
            done: false,
            complete: false,
            eof: false,
        }
    }

    /// Once the terminator has been read: read the body's end, so that an HTTP/1
    /// upstream connection goes back to the pool (dropped before its end, hyper closes
    /// it, and the next request pays a new connection; HTTP/2 streams end on their own). The
    /// end is usually buffered already and is read here at once; when it is still on its
    /// way, a short task waits for it (at most [`RELEASE_GRACE`]).
    pub fn release(mut self: Box<Self>) {
        if self.eof || !self.done {
            return;
        }
        loop {
            match futures_util::FutureExt::now_or_never(self.response.chunk()) {
                Some(Ok(Some(_))) => {}
                Some(_) => return,
                None => break,
            }
        }
        tokio::spawn(async move {
            let drain = async { while let Ok(Some(_)) = self.response.chunk().await {} };
            let _ = tokio::time::timeout(RELEASE_GRACE, drain).await;
        });
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the request's deadline has passed.
    pub fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn phase(&self) -> Phase {
        if self.committed {
            Phase::StreamAfterCommit
        } else {
            Phase::StreamBeforeCommit
        }
    }

    /// Whether the next item is ready without reading the upstream again (an event of
    /// a read already made is waiting, or the stream has ended).
    pub fn has_ready(&self) -> bool {
        self.done || self.eof || self.ready.is_some()
    }

    /// The bytes read from the upstream but not yet taken as items (the rest of the
    /// last read): a passthrough relay writes them all on, so it makes room for them
    /// once rather than growing its buffer event by event.
    pub fn pending_bytes(&self) -> usize {
        self.parser.buffered() + self.ready.as_ref().map_or(0, |ev| ev.raw.len())
    }

    /// The next item when it is ready without reading the upstream again
    /// ([`has_ready`](Self::has_ready)): what [`next_item`](Self::next_item) returns at
    /// once then, taken without a future. `text`: see [`next_item`](Self::next_item).
    pub fn ready_item(&mut self, text: Option<&mut String>) -> Option<StreamItem> {
        if self.done {
            return Some(StreamItem::End);
        }
        if let Some(ev) = self.ready.take() {
            self.ready = self.parser.next_event();
            return Some(self.decode(ev, text));
        }
        if self.eof {
            return Some(if self.finished {
                self.done = true;
                StreamItem::End
            } else {
                StreamItem::Failed(Failure::new(
                    Reason::Timeout,
                    self.phase(),
                    "upstream closed the stream before it finished",
                ))
            });
        }
        None
    }

    /// For an answer being assembled (`text`: its text so far, its last part being
    /// text): takes the events ready without reading the upstream again that are text
    /// chunks the decoder's template reads, appending their text, up to the first
    /// other event (which stays ready). [`next_item`](Self::next_item) would give each
    /// of them as an event without events of its own, its text appended the same way;
    /// taken here, the parser makes no event for them.
    pub fn absorb_text(&mut self, text: &mut String) {
        if self.done {
            return;
        }
        let Some(template) = self.decoder.template() else {
            return;
        };
        loop {
            match &self.ready {
                Some(ev) if template.append_text(&ev.data, text) => {}
                _ => return,
            }
            // The next frames' lines matched on the parser's bytes as they are: a text
            // chunk's line is found by matching it.
            let mut run = wire::scan::TextRun::new(text);
            while self.parser.skip_data_line(
                |line| template.text_line(line),
                |line, at| run.push(line, at),
            ) {}
            run.finish();
            self.ready = self.parser.next_event();
        }
    }

    /// The next item. Waits at most the idle timeout for upstream bytes. `text`: the
    /// text of the answer being assembled from the stream, when its last part is text
    /// ([`Assembler::text_buffer`]); a text chunk read by the decoder's template has its
    /// text appended there, and comes as an event with no events of its own. `None`
    /// (a relayed stream): every chunk comes with its events.
    pub async fn next_item(&mut self, mut text: Option<&mut String>) -> StreamItem {
        loop {
            if let Some(item) = self.ready_item(text.as_deref_mut()) {
                return item;
            }
            let wait = if self.complete {
                self.idle.min(TERMINATOR_GRACE)
            } else {
                self.idle
            };
            let until = self.deadline.min(Instant::now() + wait);
            match tokio::time::timeout_at(until, self.response.chunk()).await {
                // The answer had its finish reason: an upstream that then sends nothing
                // (no terminator, no close) has not failed it.
                Err(_) if self.finished => {
                    self.done = true;
                    return StreamItem::End;
                }
                Err(_) if self.past_deadline() => {
                    return StreamItem::Failed(Failure::silence(
                        self.phase(),
                        "the stream did not finish before the request deadline (timeouts.request_ms)",
                    ));
                }
                Err(_) => {
                    return StreamItem::Failed(Failure::silence(
                        self.phase(),
                        format!(
                            "upstream stream stalled: nothing for {} ms",
                            self.idle.as_millis()
                        ),
                    ));
                }
                Ok(Err(t)) => {
                    return StreamItem::Failed(Failure::new(
                        Reason::Timeout,
                        self.phase(),
                        format!("upstream stream broke: {t}"),
                    ));
                }
                Ok(Ok(Some(bytes))) => {
                    self.parser.extend(&bytes);
                    self.ready = self.parser.next_event();
                }
                Ok(Ok(None)) => {
                    self.eof = true;
                    self.ready = self.parser.finish();
                }
            }
        }
    }

    fn decode(&mut self, ev: SseEvent, text: Option<&mut String>) -> StreamItem {
        match self.decoder.push_into(&ev, text) {
            Ok(events) => {
                for e in events.iter() {
                    match e {
                        StreamEvent::Error { error } => {
                            return StreamItem::Failed(classify::classify_stream_error(
                                error,
                                self.committed,
                            ));
                        }
                        StreamEvent::Finish { .. } => self.finished = true,
                        StreamEvent::Done => self.done = true,
                        StreamEvent::Usage { .. } if self.finished => self.complete = true,
                        _ => {}
                    }
                }
                StreamItem::Event(ev, events)
            }
            Err(e) => StreamItem::Failed(Failure::new(
                Reason::ServerError,
                self.phase(),
                format!("malformed chunk from upstream: {}", e.message),
            )),
        }
    }
}

/// Assemble a complete answer from a stream's events (a non-streamed request is
/// streamed from the upstream, so that time to first token and stalls are seen).
pub fn assemble<'a>(
    events: impl IntoIterator<Item = &'a StreamEvent>,
) -> Result<crate::chat::Response, String> {
    let mut assembler = Assembler::new();
    for ev in events {
        assembler.push(ev.clone());
    }
    assembler.finish()
}

/// The room an assembled answer's text starts with: a short answer's text then needs
/// no growing, token by token.
const ANSWER_TEXT: usize = 1024;

/// A complete answer assembled from a stream's events as they are read ([`assemble`],
/// one event at a time): their strings move into the answer, and the events need not
/// be kept until the stream ends.
pub struct Assembler {
    resp: crate::chat::Response,
    start_input: Option<u64>,
    /// Our tool index → position in `content`.
    tools: Vec<(u32, usize)>,
    /// Why the answer cannot be assembled: the first such event (the rest are ignored).
    error: Option<String>,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Assembler {
    pub fn new() -> Self {
        use crate::chat::{Response, Usage};
        Assembler {
            resp: Response {
                id: String::new(),
                model: String::new(),
                content: Vec::new(),
                finish_reason: None,
                stop_sequence: None,
                usage: Usage::default(),
                created: 0,
            },
            start_input: None,
            tools: Vec::new(),
            error: None,
        }
    }

    /// The answer's text so far, when its last part is text and nothing has failed it:
    /// a text delta then only appends its text there ([`push`](Self::push)), so a
    /// decoder may append a chunk's text itself ([`UpstreamStream::next_item`]).
    pub fn text_buffer(&mut self) -> Option<&mut String> {
        if self.error.is_some() {
            return None;
        }
        match self.resp.content.last_mut() {
            Some(crate::chat::Part::Text { text }) => Some(text),
            _ => None,
        }
    }

    /// Take the events of one chunk.
    pub fn push_all(&mut self, events: ChunkEvents) {
        match events {
            ChunkEvents::One(ev) => self.push(ev),
            ChunkEvents::Many(evs) => evs.into_iter().for_each(|ev| self.push(ev)),
        }
    }

    /// Take one event.
    pub fn push(&mut self, ev: StreamEvent) {
        use crate::chat::Part;
        if self.error.is_some() {
            return;
        }
        let resp = &mut self.resp;
        match ev {
            StreamEvent::Start {
                id,
                model,
                input_tokens,
            } => {
                resp.id = id;
                resp.model = model;
                self.start_input = input_tokens;
            }
            StreamEvent::TextDelta { text } => match resp.content.last_mut() {
                Some(Part::Text { text: t }) => t.push_str(&text),
                _ => {
                    let mut t = String::with_capacity(text.len().max(ANSWER_TEXT));
                    t.push_str(&text);
                    resp.content.push(Part::Text { text: t });
                }
            },
            StreamEvent::ThinkingDelta { text } => match resp.content.last_mut() {
                Some(Part::Thinking { text: t, .. }) => t.push_str(&text),
                _ => resp.content.push(Part::Thinking {
                    text,
                    signature: None,
                }),
            },
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tools.push((index, resp.content.len()));
                resp.content.push(Part::ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                });
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let pos = self
                    .tools
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, p)| *p);
                match pos.and_then(|p| resp.content.get_mut(p)) {
                    Some(Part::ToolCall { arguments: a, .. }) => a.push_str(&arguments),
                    _ => {
                        self.error = Some(format!(
                            "arguments for tool call {index}, which never started"
                        ));
                    }
                }
            }
            StreamEvent::Usage { usage } => resp.usage = usage,
            StreamEvent::Finish {
                reason,
                stop_sequence,
            } => {
                resp.finish_reason = Some(reason);
                resp.stop_sequence = stop_sequence;
            }
            StreamEvent::Error { error } => self.error = Some(error.message),
            StreamEvent::Done => {}
        }
    }

    /// The answer, dated now (its end), or why it could not be assembled.
    pub fn finish(self) -> Result<crate::chat::Response, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut resp = self.resp;
        resp.created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if resp.usage.input_tokens == 0
            && let Some(n) = self.start_input
        {
            resp.usage.input_tokens = n;
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FinishReason, Part, Usage};

    #[test]
    fn assembles_text_and_tool_calls() {
        let events = vec![
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "m".into(),
                input_tokens: Some(7),
            },
            StreamEvent::TextDelta { text: "Hel".into() },
            StreamEvent::TextDelta { text: "lo".into() },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 0,
                    output_tokens: 5,
                    ..Usage::default()
                },
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None,
            },
            StreamEvent::Done,
        ];
        let r = assemble(&events).unwrap();
        assert_eq!(r.id, "msg_1");
        assert_eq!(
            r.content[0],
            Part::Text {
                text: "Hello".into()
            }
        );
        assert_eq!(
            r.content[1],
            Part::ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }
        );
        assert_eq!(r.usage.input_tokens, 7);
        assert_eq!(r.usage.output_tokens, 5);
        assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
        assert!(
            assemble(&[StreamEvent::ToolCallDelta {
                index: 3,
                arguments: "x".into()
            }])
            .is_err()
        );
    }

    #[test]
    fn the_first_event_that_cannot_be_assembled_fails_the_answer() {
        let error = |message: &str| StreamEvent::Error {
            error: crate::chat::UpstreamErrorBody {
                kind: None,
                code: None,
                message: message.into(),
                retry_after: None,
            },
        };
        let events = [
            StreamEvent::TextDelta { text: "a".into() },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            error("later"),
            StreamEvent::TextDelta { text: "b".into() },
        ];
        assert_eq!(
            assemble(&events),
            Err("arguments for tool call 1, which never started".to_string())
        );
        assert_eq!(assemble(&events[2..]), Err("later".to_string()));
        // Chunk by chunk, as a stream is read, the same.
        let mut a = Assembler::new();
        a.push_all(ChunkEvents::One(events[0].clone()));
        a.push_all(ChunkEvents::Many(events[1..].to_vec()));
        assert_eq!(a.finish(), assemble(&events));
        // Text runs are joined, also past the room a text part starts with.
        let long = "x".repeat(ANSWER_TEXT + 3);
        let r = assemble(&[
            StreamEvent::TextDelta { text: long.clone() },
            StreamEvent::TextDelta { text: "y".into() },
        ])
        .unwrap();
        assert_eq!(
            r.content,
            vec![Part::Text {
                text: format!("{long}y")
            }]
        );
        assert!(r.created > 0);
    }

    /// What a stream's chunks come to as `commit_stream` reads them for an answer being
    /// assembled: the chunk by chunk events other than text deltas (or the decoder's
    /// error), the chunk whose events first held content, and the answer (dated 0).
    /// With `direct`, once content has come, text chunks read by the decoder's template
    /// go straight into the answer's text ([`Assembler::text_buffer`]). Reading stops
    /// where the stream would end or fail: an error, the terminator.
    type Read = (
        Vec<Result<Vec<StreamEvent>, String>>,
        Option<usize>,
        Result<crate::chat::Response, String>,
        usize,
    );

    /// An SSE event's name and data.
    type Chunk = (Option<&'static str>, Vec<u8>);

    fn read_assembled(
        format: WireFormat,
        chunks: &[(Option<&str>, Vec<u8>)],
        direct: bool,
    ) -> Read {
        let mut decoder = UpstreamDecoder::new(format).unwrap();
        let mut assembler = Assembler::new();
        let (mut seen, mut first_content, mut appended) = (Vec::new(), None, 0);
        for (i, (event, data)) in chunks.iter().enumerate() {
            let ev = SseEvent {
                event: event.map(str::to_string),
                data: bytes::Bytes::copy_from_slice(data),
                raw: bytes::Bytes::new(),
            };
            let text = if direct && first_content.is_some() {
                assembler.text_buffer()
            } else {
                None
            };
            let direct_text = text.is_some();
            match decoder.push_into(&ev, text) {
                Ok(events) => {
                    if direct_text && events.is_empty() {
                        appended += 1;
                    }
                    if first_content.is_none() && events.iter().any(StreamEvent::is_content) {
                        first_content = Some(i);
                    }
                    let stop = events
                        .iter()
                        .any(|e| matches!(e, StreamEvent::Error { .. } | StreamEvent::Done));
                    let others = events
                        .iter()
                        .filter(|e| !matches!(e, StreamEvent::TextDelta { .. }))
                        .cloned()
                        .collect();
                    seen.push(Ok(others));
                    assembler.push_all(events);
                    if stop {
                        break;
                    }
                }
                Err(e) => {
                    seen.push(Err(e.message));
                    break;
                }
            }
        }
        let answer = assembler.finish().map(|mut r| {
            r.created = 0;
            r
        });
        (seen, first_content, answer, appended)
    }

    /// JSON string literals for the texts of generated chunks, beside serde's own
    /// encodings: escapes serde does not write, a surrogate pair, refused escapes.
    const TEXT_LITERALS: [&str; 9] = [
        r#""""#,
        r#""caf\u00e9""#,
        r#""\ud83d\ude00!""#,
        r#""a\/b\tc\r\n""#,
        r#""\"q\" \\""#,
        r#""bad \u12""#,
        r#""lone \ud83d""#,
        r#""ctl ""#,
        "\"raw \u{e9}\u{1F600} \"",
    ];

    /// Bytes put into a generated chunk: invalid UTF-8, multi-byte characters, JSON
    /// specials, whitespace.
    const CHUNK_EDITS: [&[u8]; 10] = [
        b"\xff",
        b"\xc3",
        "\u{e9}".as_bytes(),
        "\u{1F600}".as_bytes(),
        b"\"",
        b"\\",
        b"\n",
        b"\r\n",
        b" ",
        b"\x01",
    ];

    /// A text's JSON string: serde's encoding of `plain`, or one of [`TEXT_LITERALS`].
    fn json_text((plain, literal): &(String, Option<usize>)) -> String {
        match literal {
            Some(i) => TEXT_LITERALS[i % TEXT_LITERALS.len()].to_string(),
            None => serde_json::to_string(plain).unwrap(),
        }
    }

    fn openai_chunk(kind: u8, text: &str, pad: &str) -> Chunk {
        let chunk = |delta: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","system_fingerprint":"fp_1","choices":[{{"index":0,"delta":{{{delta}}},"logprobs":null,"finish_reason":null}}],"usage":null,"obfuscation":"{pad}"}}"#
            )
        };
        let data = match kind {
            0 => chunk(r#""role":"assistant","content":"","refusal":null"#),
            1 => chunk(r#""content":null,"refusal":"no""#),
            2 => chunk(r#""tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":""}}]"#),
            3 => chunk(r#""tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]"#),
            4 => r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#.to_string(),
            5 => r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3}}"#.to_string(),
            6 => "[DONE]".to_string(),
            7 => chunk(&format!(r#""content":{text},"refusal":null"#)),
            _ => chunk(&format!(r#""content":{text}"#)),
        };
        (None, data.into_bytes())
    }

    fn anthropic_chunk(kind: u8, text: &str, _pad: &str) -> Chunk {
        let (event, data) = match kind {
            0 => ("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#.to_string()),
            1 => ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_string()),
            2 => ("content_block_delta", format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"thinking_delta","thinking":{text}}}}}"#)),
            3 => ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#.to_string()),
            4 => ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}"#.to_string()),
            5 => ("ping", r#"{"type": "ping"}"#.to_string()),
            6 => ("message_stop", r#"{"type":"message_stop"}"#.to_string()),
            7 => ("content_block_delta", format!(r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"text_delta","text":{text}}}}}"#)),
            _ => ("content_block_delta", format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text}}}}}"#)),
        };
        (Some(event), data.into_bytes())
    }

    type Piece = (
        u8,
        (String, Option<usize>),
        String,
        Vec<(proptest::sample::Index, u8, usize)>,
        (usize, usize, bool),
    );

    fn chunks_of(pieces: &[Piece], chunk: fn(u8, &str, &str) -> Chunk) -> Vec<Chunk> {
        pieces
            .iter()
            .map(|(kind, text, pad, edits, around)| {
                let (event, mut data) = chunk(*kind, &json_text(text), pad);
                crate::wire::scan::edit_bytes(&mut data, &CHUNK_EDITS, edits, *around);
                (event, data)
            })
            .collect()
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = Piece> {
        use proptest::prelude::*;
        (
            0u8..16,
            (
                "[a-z \\\\\"\n\u{e9}\u{1F600}]{0,8}",
                proptest::option::weighted(0.3, 0..TEXT_LITERALS.len()),
            ),
            "[a-zA-Z0-9]{0,6}",
            proptest::collection::vec(
                (
                    any::<proptest::sample::Index>(),
                    0u8..3,
                    0..CHUNK_EDITS.len(),
                ),
                0..2,
            ),
            (
                0..CHUNK_EDITS.len(),
                0..CHUNK_EDITS.len(),
                proptest::bool::weighted(0.1),
            ),
        )
            .prop_map(|(kind, text, pad, edits, around)| {
                // Edits in a few chunks only, so that most match the template.
                let edits = if kind % 5 == 0 { edits } else { Vec::new() };
                (kind, text, pad, edits, around)
            })
    }

    proptest::proptest! {
        /// An answer assembled with template text chunks appended straight into its
        /// text is the answer assembled from their events: the same text (escapes
        /// decoded, invalid UTF-8 and escapes refused, chunks missing the template
        /// read by the general path), the same other events chunk by chunk, the same
        /// first content, errors and end.
        #[test]
        fn text_appended_by_the_template_assembles_as_its_events_do(
            openai in proptest::collection::vec(piece(), 0..24),
            anthropic in proptest::collection::vec(piece(), 0..24),
        ) {
            for (format, chunks) in [
                (WireFormat::OpenAi, chunks_of(&openai, openai_chunk)),
                (WireFormat::Anthropic, chunks_of(&anthropic, anthropic_chunk)),
            ] {
                let (seen, first, answer, _) = read_assembled(format, &chunks, true);
                let (want_seen, want_first, want_answer, none) = read_assembled(format, &chunks, false);
                proptest::prop_assert_eq!(none, 0);
                proptest::prop_assert_eq!(seen, want_seen);
                proptest::prop_assert_eq!(first, want_first);
                proptest::prop_assert_eq!(answer, want_answer);
            }
        }
    }

    /// Plain streams of both formats: after the first text chunk (the template), the
    /// text chunks are appended straight into the answer, which reads as assembled
    /// from their events.
    #[test]
    fn plain_text_chunks_are_appended_straight_into_the_answer() {
        let words = [
            "Hel",
            "lo",
            ", w\u{f6}rld\n",
            "\"q\"",
            " \u{1F600}",
            "",
            "!",
        ];
        let texts: Vec<_> = words.iter().map(|w| ((*w).to_string(), None)).collect();
        let no_edit = (Vec::new(), (0, 0, false));
        let piece = |kind: u8, i: usize| -> Piece {
            (
                kind,
                texts[i].clone(),
                format!("p{i}"),
                no_edit.0.clone(),
                no_edit.1,
            )
        };
        let mut openai = vec![piece(0, 0)];
        openai.extend((0..words.len()).map(|i| piece(8, i)));
        openai.extend([piece(4, 0), piece(5, 0), piece(6, 0)]);
        let mut anthropic = vec![piece(0, 0), piece(1, 0)];
        anthropic.extend((0..words.len()).map(|i| piece(8, i)));
        anthropic.extend([piece(3, 0), piece(4, 0), piece(6, 0)]);
        for (format, chunks) in [
            (WireFormat::OpenAi, chunks_of(&openai, openai_chunk)),
            (
                WireFormat::Anthropic,
                chunks_of(&anthropic, anthropic_chunk),
            ),
        ] {
            let got = read_assembled(format, &chunks, true);
            let want = read_assembled(format, &chunks, false);
            // All text chunks but the first (the template's), and Anthropic's
            // `content_block_stop` (no events either way).
            let quiet = usize::from(format == WireFormat::Anthropic);
            assert_eq!(got.3, words.len() - 1 + quiet, "{format:?}");
            assert_eq!((&got.0, got.1, &got.2), (&want.0, want.1, &want.2));
            let text = words.concat();
            assert_eq!(
                got.2.unwrap().content,
                vec![Part::Text { text }],
                "{format:?}"
            );
        }
    }

    /// A loopback upstream of each format, answering every request with the event
    /// stream in `body` (written in `pieces` parts), on a runtime of its own: one per
    /// test thread, as building an upstream's client is not cheap.
    struct Loopback {
        rt: tokio::runtime::Runtime,
        upstreams: [crate::provider::Upstream; 2],
        body: std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>,
    }

    impl Loopback {
        fn new() -> Self {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let body = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), 1)));
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let shared = body.clone();
            rt.spawn(async move {
                loop {
                    let (mut sock, _) = listener.accept().await.unwrap();
                    let (body, pieces) = shared.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let mut req = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = sock.read(&mut buf).await.unwrap();
                            assert!(n > 0, "closed mid-request");
                            req.extend_from_slice(&buf[..n]);
                        }
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        // A reader that stops early (a failed stream) closes its end.
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let size = body.len().div_ceil(pieces).max(1);
                        for part in body.chunks(size) {
                            if sock.write_all(part).await.is_err() || sock.flush().await.is_err() {
                                return;
                            }
                            tokio::task::yield_now().await;
                        }
                        // Open until the reader is done (its end closes).
                        let _ = sock.read(&mut buf).await;
                    });
                }
            });
            let upstream = |api| {
                let config = crate::config::ProviderConfig {
                    id: "p".into(),
                    api,
                    base_url: format!("http://{addr}"),
                    profiles: Vec::new(),
                    models: Vec::new(),
                    headers: Vec::new(),
                };
                crate::provider::Upstream::new(config, &crate::config::Timeouts::default()).unwrap()
            };
            let upstreams = [
                upstream(WireFormat::OpenAi),
                upstream(WireFormat::Anthropic),
            ];
            Loopback {
                rt,
                upstreams,
                body,
            }
        }

        /// `body` read as an [`UpstreamStream`] of `format` (OpenAI or Anthropic).
        async fn stream(&self, format: WireFormat, body: &[u8], pieces: usize) -> UpstreamStream {
            *self.body.lock().unwrap() = (body.to_vec(), pieces.max(1));
            let upstream = &self.upstreams[usize::from(format == WireFormat::Anthropic)];
            let profile = crate::config::AuthProfile {
                name: "k".into(),
                key: None,
            };
            let response = upstream
                .send(&profile, "m", bytes::Bytes::from_static(b"{}"), true)
                .await
                .unwrap();
            UpstreamStream::new(
                response,
                UpstreamDecoder::new(format).unwrap(),
                Duration::from_secs(10),
                Instant::now() + Duration::from_secs(20),
            )
        }
    }

    thread_local! {
        static LOOPBACK: Loopback = Loopback::new();
    }

    /// How the engine reads a stream for an answer being assembled (`commit_stream`):
    /// `How::Events` every chunk's events; `How::Append` template text appended once
    /// content came; `How::Absorb` that, and the ready text chunks taken by
    /// [`UpstreamStream::absorb_text`] first. The answer (dated 0) and the items read.
    #[derive(Clone, Copy, PartialEq)]
    enum How {
        Events,
        Append,
        Absorb,
    }

    async fn assemble_stream(
        mut stream: UpstreamStream,
        how: How,
    ) -> (Result<crate::chat::Response, String>, usize) {
        let mut assembler = Assembler::new();
        let (mut got_content, mut items) = (false, 0);
        let answer = loop {
            let mut text = match how {
                How::Events => None,
                _ if got_content => assembler.text_buffer(),
                _ => None,
            };
            if how == How::Absorb
                && let Some(text) = text.as_deref_mut()
            {
                stream.absorb_text(text);
            }
            items += 1;
            match stream.next_item(text).await {
                StreamItem::Event(_, events) => {
                    got_content |= events.iter().any(StreamEvent::is_content);
                    assembler.push_all(events);
                    if stream.done {
                        break assembler.finish();
                    }
                }
                StreamItem::End => break assembler.finish(),
                StreamItem::Failed(f) => break Err(f.message),
            }
        };
        let answer = answer.map(|mut r| {
            r.created = 0;
            r
        });
        (answer, items)
    }

    /// SSE frames of chunks (an `event:` line when the chunk has a name).
    fn frames(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for (event, data) in chunks {
            if let Some(event) = event {
                out.extend_from_slice(format!("event: {event}\n").as_bytes());
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\n\n");
        }
        out
    }

    /// The three readings of one stream of `format`: the answers, and the items each
    /// took.
    fn read_three_ways(
        format: WireFormat,
        body: &[u8],
        pieces: usize,
    ) -> [(Result<crate::chat::Response, String>, usize); 3] {
        LOOPBACK.with(|lb| {
            [How::Events, How::Append, How::Absorb].map(|how| {
                lb.rt.block_on(async {
                    let stream = lb.stream(format, body, pieces).await;
                    assemble_stream(stream, how).await
                })
            })
        })
    }

    /// Plain streams of both formats, arriving whole: the text chunks after the first
    /// are absorbed with no item each, and the answer is the one their events make.
    #[test]
    fn ready_text_chunks_are_absorbed_without_items() {
        let words: Vec<String> = (0..12).map(|i| format!("w{i} ")).collect();
        let plain = |kind: u8| {
            (
                kind,
                (String::new(), None),
                "pad".to_string(),
                Vec::new(),
                (0, 0, false),
            )
        };
        let text = |w: &String| -> Piece {
            (
                8,
                (w.clone(), None),
                format!("p{}", w.len()),
                Vec::new(),
                (0, 0, false),
            )
        };
        let mut openai = vec![plain(0)];
        openai.extend(words.iter().map(text));
        openai.extend([plain(4), plain(5), plain(6)]);
        let mut anthropic = vec![plain(0), plain(1)];
        anthropic.extend(words.iter().map(text));
        anthropic.extend([plain(3), plain(4), plain(6)]);
        for (format, chunks) in [
            (WireFormat::OpenAi, chunks_of(&openai, openai_chunk)),
            (
                WireFormat::Anthropic,
                chunks_of(&anthropic, anthropic_chunk),
            ),
        ] {
            let [events, append, absorb] = read_three_ways(format, &frames(&chunks), 1);
            let answer = events.0.clone().unwrap();
            assert_eq!(
                answer.content,
                vec![Part::Text {
                    text: words.concat()
                }],
                "{format:?}"
            );
            assert_eq!(append.0, events.0, "{format:?}");
            assert_eq!(absorb.0, events.0, "{format:?}");
            assert_eq!(
                append.1, events.1,
                "{format:?}: appending still reads every chunk as an item"
            );
            // At least the text chunks after the first (the template) need no item, when
            // the stream comes in one read; a split read leaves one for each read.
            assert!(
                absorb.1 < events.1,
                "{format:?}: {} items, {} without absorbing",
                absorb.1,
                events.1
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any stream of both formats (edited chunks, escapes, errors, chunks the
        /// template misses, SSE lines split by edits), written in parts: absorbing
        /// the ready text chunks assembles the answer, or fails, as the events do.
        #[test]
        fn absorbing_ready_text_chunks_assembles_as_the_events_do(
            openai in proptest::collection::vec(piece(), 0..20),
            anthropic in proptest::collection::vec(piece(), 0..20),
            pieces in 1usize..4,
        ) {
            for (format, chunks) in [
                (WireFormat::OpenAi, chunks_of(&openai, openai_chunk)),
                (WireFormat::Anthropic, chunks_of(&anthropic, anthropic_chunk)),
            ] {
                let [events, append, absorb] = read_three_ways(format, &frames(&chunks), pieces);
                proptest::prop_assert_eq!(&append.0, &events.0);
                proptest::prop_assert_eq!(&absorb.0, &events.0);
            }
        }
    }
}
