//! Reading an upstream SSE stream as classified items: events, a clean end, or a failure.

use super::classify;
use super::failure::{Failure, Phase, Reason};
use crate::chat::{StreamEvent, WireError, WireFormat};
use crate::sse::{SseEvent, SseParser};
use crate::wire;
use std::collections::VecDeque;
use std::time::Duration;

/// A stream decoder for whichever format the upstream speaks.
pub enum UpstreamDecoder {
    OpenAi(wire::openai::StreamDecoder),
    Anthropic(wire::anthropic::StreamDecoder),
}

impl UpstreamDecoder {
    pub fn new(format: WireFormat) -> Option<Self> {
        match format {
            WireFormat::OpenAi => Some(Self::OpenAi(wire::openai::StreamDecoder::new())),
            WireFormat::Anthropic => Some(Self::Anthropic(wire::anthropic::StreamDecoder::new())),
            WireFormat::Gemini => None,
        }
    }

    pub fn push(&mut self, ev: &SseEvent) -> Result<Vec<StreamEvent>, WireError> {
        match self {
            Self::OpenAi(d) => d.push(ev),
            Self::Anthropic(d) => d.push(ev),
        }
    }
}

/// One step of an upstream stream.
pub enum StreamItem {
    /// An SSE event with what it means.
    Event(SseEvent, Vec<StreamEvent>),
    /// The stream ended properly (its terminator arrived, or it closed after its finish reason).
    End,
    /// The stream failed: cut, stall, malformed chunk or in-band error.
    Failed(Failure),
}

/// An upstream response body read as a sequence of [`StreamItem`]s.
pub struct UpstreamStream {
    response: reqwest::Response,
    parser: SseParser,
    decoder: UpstreamDecoder,
    queue: VecDeque<SseEvent>,
    idle: Duration,
    /// Whether content already reached the client (changes how failures are phased).
    pub committed: bool,
    /// A finish reason was seen.
    pub finished: bool,
    /// The terminator was seen.
    pub done: bool,
    eof: bool,
}

impl UpstreamStream {
    pub fn new(response: reqwest::Response, decoder: UpstreamDecoder, idle: Duration) -> Self {
        UpstreamStream {
            response,
            parser: SseParser::new(),
            decoder,
            queue: VecDeque::new(),
            idle,
            committed: false,
            finished: false,
            done: false,
            eof: false,
        }
    }

    fn phase(&self) -> Phase {
        if self.committed {
            Phase::StreamAfterCommit
        } else {
            Phase::StreamBeforeCommit
        }
    }

    /// The next item. Waits at most the idle timeout for upstream bytes.
    pub async fn next_item(&mut self) -> StreamItem {
        loop {
            if self.done {
                return StreamItem::End;
            }
            if let Some(ev) = self.queue.pop_front() {
                return self.decode(ev);
            }
            if self.eof {
                return if self.finished {
                    self.done = true;
                    StreamItem::End
                } else {
                    StreamItem::Failed(Failure::new(
                        Reason::Timeout,
                        self.phase(),
                        "upstream closed the stream before it finished",
                    ))
                };
            }
            match tokio::time::timeout(self.idle, self.response.chunk()).await {
                Err(_) => {
                    return StreamItem::Failed(Failure::silence(
                        self.phase(),
                        format!(
                            "upstream stream stalled: nothing for {} ms",
                            self.idle.as_millis()
                        ),
                    ));
                }
                Ok(Err(e)) => {
                    let t = crate::provider::body_error(e);
                    return StreamItem::Failed(Failure::new(
                        Reason::Timeout,
                        self.phase(),
                        format!("upstream stream broke: {t}"),
                    ));
                }
                Ok(Ok(Some(bytes))) => {
                    self.queue.extend(self.parser.push(&bytes));
                }
                Ok(Ok(None)) => {
                    self.eof = true;
                    self.queue.extend(self.parser.finish());
                }
            }
        }
    }

    fn decode(&mut self, ev: SseEvent) -> StreamItem {
        match self.decoder.push(&ev) {
            Ok(events) => {
                for e in &events {
                    match e {
                        StreamEvent::Error { error } => {
                            return StreamItem::Failed(classify::classify_stream_error(
                                error,
                                self.committed,
                            ));
                        }
                        StreamEvent::Finish { .. } => self.finished = true,
                        StreamEvent::Done => self.done = true,
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
