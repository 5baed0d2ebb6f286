//! Relaying a committed stream to the client — and rescuing it when the upstream
//! fails after content has reached the client (PRODUCT §3.6).
//!
//! A failure after the commit point is never passed off as a complete answer. The
//! relay rescues the answer in the first way that is safe for the next target:
//! 1. **prefill**: continue it there with an assistant prefill of what was delivered,
//!    only where that target accepts prefill and never after tool-call output;
//! 2. **splice**: replay the request there and forward only what follows the
//!    delivered text, only if the replay reproduces that text exactly;
//! 3. else end the stream with an explicit in-band error in the client's format.
//!
//! A rescue that fails never hides the original failure: the error the client
//! finally sees names the first cause.

use super::execute::{Answer, Call, Engine};
use super::failure::Failure;
use super::plan::Target;
use super::stream::{StreamItem, UpstreamStream};
use crate::chat::{self, ChunkEvents, Message, Part, Role, StreamEvent, WireFormat};
use crate::config::RescueMode;
use crate::render::stream_failure_error;
use crate::sse::SseEvent;
use crate::state::Admission;
use crate::wire;
use bytes::Bytes;
use hyper::body::Frame;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// The most room a passthrough relay makes at once for upstream bytes still to be
/// written (see [`Writer::event`]).
const MAX_RESERVE: usize = 16 * 1024;
/// The room a delivered text run starts with: a short answer's text then needs no
/// growing, token by token.
const TEXT_RUN: usize = 128;
/// How many rescues one stream may go through.
const MAX_RESCUES: usize = 2;
/// How many targets one rescue may try.
const MAX_RESCUE_CANDIDATES: usize = 2;

/// A stream that reached its commit point.
pub struct Committed {
    pub target: Target,
    pub upstream_format: WireFormat,
    pub head: Vec<(SseEvent, ChunkEvents)>,
    pub rest: Box<UpstreamStream>,
}

/// What reached the client so far (what a rescue needs of it).
#[derive(Default)]
struct Delivered {
    tool_calls: bool,
    /// Every content event the client got, to bring a fresh encoder up to the same
    /// state, with a run of text (or thinking) deltas kept as one: an encoder ends in
    /// the same state either way, and a long answer is not kept as one event (and one
    /// allocation) a token. Not kept after tool-call output, which no rescue follows.
    log: Vec<StreamEvent>,
}

impl Delivered {
    /// Take note of events the client got; returns whether they ended the stream.
    fn observe(&mut self, events: impl IntoIterator<Item = StreamEvent>) -> bool {
        let mut done = false;
        for e in events {
            done |= self.observe_one(e);
        }
        done
    }

    /// [`observe`](Self::observe) a chunk's events (nearly always one, taken as it is).
    fn observe_chunk(&mut self, events: ChunkEvents) -> bool {
        match events {
            ChunkEvents::One(e) => self.observe_one(e),
            ChunkEvents::Many(events) => self.observe(events),
        }
    }

    /// Take note of one event the client got; returns whether it ended the stream.
    fn observe_one(&mut self, e: StreamEvent) -> bool {
        match e {
            StreamEvent::Done => return true,
            StreamEvent::Usage { .. } | StreamEvent::Finish { .. } => {}
            _ if self.tool_calls => {}
            StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallDelta { .. } => {
                self.tool_calls = true;
                self.log = Vec::new();
            }
            StreamEvent::TextDelta { text } => match self.log.last_mut() {
                Some(StreamEvent::TextDelta { text: run }) => run.push_str(&text),
                _ => {
                    let mut run = String::with_capacity(text.len().max(TEXT_RUN));
                    run.push_str(&text);
                    self.log.push(StreamEvent::TextDelta { text: run });
                }
            },
            StreamEvent::ThinkingDelta { text } => match self.log.last_mut() {
                Some(StreamEvent::ThinkingDelta { text: run }) => run.push_str(&text),
                _ => self.log.push(StreamEvent::ThinkingDelta { text }),
            },
            e => self.log.push(e),
        }
        false
    }

    /// The text the client got.
    fn text(&self) -> String {
        let mut text = String::new();
        for e in &self.log {
            if let StreamEvent::TextDelta { text: t } = e {
                text.push_str(t);
            }
        }
        text
    }
}

/// Writes client bytes: forwarded as they came (same format), or encoded.
/// (The encoders are boxed: a passthrough relay, the common case, keeps a small writer.)
enum Writer {
    Passthrough(WireFormat),
    OpenAi(Box<wire::openai::StreamEncoder>),
    Anthropic(Box<wire::anthropic::StreamEncoder>),
}

impl Writer {
    /// An encoder in the client's format; `translating`: the answer comes from another
    /// format, so its id takes the client's format's shape.
    fn encoding(ingress: WireFormat, include_usage: bool, translating: bool) -> Self {
        match ingress {
            WireFormat::Anthropic => {
                let enc = wire::anthropic::StreamEncoder::new();
                Writer::Anthropic(Box::new(if translating { enc.translating() } else { enc }))
            }
            _ => {
                let enc = wire::openai::StreamEncoder::new(include_usage);
                Writer::OpenAi(Box::new(if translating { enc.translating() } else { enc }))
            }
        }
    }

    fn new(ingress: WireFormat, upstream: WireFormat, include_usage: bool) -> Self {
        if ingress == upstream {
            return Writer::Passthrough(ingress);
        }
        Self::encoding(ingress, include_usage, true)
    }

    fn encode(&mut self, events: &[StreamEvent], out: &mut Vec<u8>) {
        match self {
            Writer::Passthrough(_) => {}
            Writer::OpenAi(e) => events.iter().for_each(|ev| e.encode(ev, out)),
            Writer::Anthropic(e) => events.iter().for_each(|ev| e.encode(ev, out)),
        }
    }

    /// Write one upstream event; `pending`: the upstream bytes read after it (the rest
    /// of its read), which a passthrough makes room for at once.
    fn event(&mut self, raw: &SseEvent, events: &[StreamEvent], pending: usize, out: &mut Vec<u8>) {
        match self {
            Writer::Passthrough(_) => {
                // Bounded: a huge event still being read is not room to hold yet.
                out.reserve(raw.raw.len() + pending.min(MAX_RESERVE));
                out.extend_from_slice(&raw.raw);
                complete_frame(&raw.raw, out);
            }
            _ => self.encode(events, out),
        }
    }

    /// Leave passthrough for encoding (a rescue's events come from another request),
    /// bringing the new encoder to the state the client is in by replaying what it got.
    fn switch_to_encoding(&mut self, include_usage: bool, delivered: &Delivered) {
        if let Writer::Passthrough(ingress) = *self {
            *self = Self::encoding(ingress, include_usage, false);
            let mut discard = Vec::new();
            self.encode(&delivered.log, &mut discard);
        }
    }

    /// Close a stream whose answer was complete but whose terminator never came.
    fn finalise(&mut self, out: &mut Vec<u8>) {
        match self {
            Writer::Passthrough(WireFormat::Anthropic) => {
                crate::sse::write_event(out, Some("message_stop"), r#"{"type":"message_stop"}"#)
            }
            Writer::Passthrough(_) => out.extend_from_slice(b"data: [DONE]\n\n"),
            _ => self.encode(&[StreamEvent::Done], out),
        }
    }

    fn error(&mut self, err: &chat::ClientError, out: &mut Vec<u8>) {
        match self {
            Writer::Passthrough(WireFormat::Anthropic) => {
                wire::anthropic::StreamEncoder::new().encode_error(err, out)
            }
            Writer::Passthrough(_) => {
                wire::openai::StreamEncoder::new(false).encode_error(err, out)
            }
            Writer::OpenAi(e) => e.encode_error(err, out),
            Writer::Anthropic(e) => e.encode_error(err, out),
        }
    }
}

/// The last event of an upstream that closed without the blank line after it arrives
/// without its frame's end: forwarded as is, the client's SSE reader would never
/// dispatch it (the Anthropic SDK then misses `message_stop`). Ends the frame.
fn complete_frame(raw: &[u8], out: &mut Vec<u8>) {
    fn strip_line_end(b: &[u8]) -> Option<&[u8]> {
        b.strip_suffix(b"\r\n")
            .or_else(|| b.strip_suffix(b"\n"))
            .or_else(|| b.strip_suffix(b"\r"))
    }
    if raw.is_empty() || strip_line_end(raw).and_then(strip_line_end).is_some() {
        return;
    }
    match raw.last() {
        // A CR alone ends the line; an LF after it would only make it a CRLF.
        Some(b'\r') => out.push(b'\r'),
        Some(b'\n') => out.push(b'\n'),
        _ => out.extend_from_slice(b"\n\n"),
    }
}

/// Shapes a rescue stream's events into a continuation of what the client has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    /// The continuation of a prefill: drop its start; drop leading whitespace when the
    /// prefill had trailing whitespace trimmed (providers reject it); count the
    /// delivered text in the completion tokens.
    Prefill {
        skip_leading_ws: bool,
        delivered_tokens: u64,
    },
    /// A replay: swallow text until it has reproduced `expected` exactly, then forward the rest.
    Splice { expected: String, matched: usize },
}

impl Filter {
    /// The events to forward, or why the rescue cannot go on.
    fn apply(
        &mut self,
        events: impl IntoIterator<Item = StreamEvent>,
    ) -> Result<Vec<StreamEvent>, String> {
        let events = events.into_iter();
        let mut out = Vec::with_capacity(events.size_hint().0);
        for ev in events {
            match self {
                Filter::Prefill {
                    skip_leading_ws,
                    delivered_tokens,
                } => match ev {
                    StreamEvent::Start { .. } => {}
                    StreamEvent::TextDelta { text } if *skip_leading_ws => {
                        let t = text.trim_start();
                        if !t.is_empty() {
                            *skip_leading_ws = false;
                            out.push(StreamEvent::TextDelta {
                                text: t.to_string(),
                            });
                        }
                    }
                    StreamEvent::Usage { mut usage } => {
                        usage.output_tokens += *delivered_tokens;
                        out.push(StreamEvent::Usage { usage });
                    }
                    other => out.push(other),
                },
                Filter::Splice { expected, matched } => {
                    let done = *matched >= expected.len();
                    match ev {
                        StreamEvent::Start { .. } => {}
                        StreamEvent::ThinkingDelta { .. } if !done => {}
                        StreamEvent::TextDelta { text } if !done => {
                            let remaining = &expected[*matched..];
                            if text.len() <= remaining.len() {
                                if !remaining.starts_with(&text) {
                                    return Err(
                                        "the replay diverged from the delivered text".into()
                                    );
                                }
                                *matched += text.len();
                            } else {
                                if !text.starts_with(remaining) {
                                    return Err(
                                        "the replay diverged from the delivered text".into()
                                    );
                                }
                                let tail = text[remaining.len()..].to_string();
                                *matched = expected.len();
                                out.push(StreamEvent::TextDelta { text: tail });
                            }
                        }
                        StreamEvent::Usage { usage } => out.push(StreamEvent::Usage { usage }),
                        other if !done => {
                            return Err(format!(
                                "the replay produced {} before reproducing the delivered text",
                                match other {
                                    StreamEvent::ToolCallStart { .. }
                                    | StreamEvent::ToolCallDelta { .. } => "a tool call",
                                    _ => "its end",
                                }
                            ));
                        }
                        other => out.push(other),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A rough token count for text whose real count is unknown (about 4 bytes a token).
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// A relayed stream: the client's bytes, produced as the client takes them. The relay
/// runs inside the body (no task, no channel): polling the body advances it, so it reads
/// the upstream only as fast as the client takes the answer. Dropping the body (the
/// client went away) stops the relay and closes the upstream at once.
pub struct RelayBody {
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    slot: Arc<Slot>,
}

/// Where the relay leaves its next bytes for the body to take.
#[derive(Default)]
struct Slot(Mutex<Option<Bytes>>);

impl Slot {
    fn put(&self, bytes: Bytes) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
    }

    fn take(&self) -> Option<Bytes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Hands bytes to the body and waits until it has taken them.
struct Handoff(Arc<Slot>);

impl Handoff {
    async fn send(&self, bytes: Bytes) {
        self.0.put(bytes);
        // The body returns the bytes as soon as the relay is pending here and polls it
        // again for more: one pending poll is the whole wait (no waker is needed).
        let mut waited = false;
        std::future::poll_fn(|_| {
            if waited {
                Poll::Ready(())
            } else {
                waited = true;
                Poll::Pending
            }
        })
        .await
    }
}

impl RelayBody {
    /// The next bytes; `None` at the end.
    pub async fn next(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_bytes(cx)).await
    }

    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(run) = &mut self.run
            && run.as_mut().poll(cx).is_ready()
        {
            self.run = None;
        }
        match self.slot.take() {
            Some(bytes) => Poll::Ready(Some(bytes)),
            None if self.run.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl hyper::body::Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .poll_bytes(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// What the client's going away does to the relay: the target's attempt is abandoned
/// while it is `armed` (the relay waits on the upstream or on the client); not while a
/// failure is being handled (the target was judged already).
struct Current {
    engine: Arc<Engine>,
    target: Target,
    armed: bool,
}

impl Drop for Current {
    fn drop(&mut self) {
        if self.armed {
            abandon(&self.engine, &self.target);
        }
    }
}

/// A relay's state, kept in one place (its future holds it once, and little else while
/// it waits).
struct Relay {
    current: Current,
    call: Call,
    rest: Box<UpstreamStream>,
    writer: Writer,
    delivered: Delivered,
    /// How a rescue's events are shaped (none before the first rescue).
    filter: Option<Filter>,
    /// The failure the client's error names (the first), once one happened.
    first_cause: Option<Box<Failure>>,
    rescues: usize,
    /// The targets tried before the current one.
    earlier: Vec<Target>,
    out: Vec<u8>,
    include_usage: bool,
    saw_done: bool,
    tx: Handoff,
}

/// Relay a committed stream to the client as bytes in its format, rescuing it if the
/// upstream fails after content. Dropping the body (the client went away) stops the
/// relay and closes the upstream.
pub fn relay(engine: Arc<Engine>, call: Call, start: Committed, include_usage: bool) -> RelayBody {
    let slot = Arc::new(Slot::default());
    let Committed {
        target,
        upstream_format,
        head,
        rest,
    } = start;
    let relay = Relay {
        writer: Writer::new(call.ingress, upstream_format, include_usage),
        current: Current {
            engine,
            target,
            armed: true,
        },
        call,
        rest,
        delivered: Delivered::default(),
        filter: None,
        first_cause: None,
        rescues: 0,
        earlier: Vec::new(),
        out: Vec::with_capacity(1024),
        include_usage,
        saw_done: false,
        tx: Handoff(slot.clone()),
    };
    RelayBody {
        run: Some(Box::pin(relay.run(head))),
        slot,
    }
}

impl Relay {
    /// The relay's future. (Not an `async fn`: that would keep the relay twice, as its
    /// argument and as its local.)
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        head: Vec<(SseEvent, ChunkEvents)>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            for (raw, events) in head {
                let pending = self.rest.pending_bytes();
                self.writer.event(&raw, &events, pending, &mut self.out);
                self.saw_done |= self.delivered.observe_chunk(events);
            }
            while !self.saw_done {
                // Events that came in one upstream read leave in one client write: send only
                // before waiting on the upstream again (nothing is held back that has
                // arrived). A client that goes away meanwhile (here or while the upstream is
                // awaited) drops the body: `current` abandons the attempt and the upstream
                // closes now, not at its next event or stall, which would cool the target
                // down and rescue for nobody.
                if !self.out.is_empty() && !self.rest.has_ready() {
                    self.tx
                        .send(Bytes::from(std::mem::take(&mut self.out)))
                        .await;
                }
                let item = match self.rest.ready_item(None) {
                    Some(item) => item,
                    None => self.rest.next_item(None).await,
                };
                let failure = match item {
                    StreamItem::Event(raw, events) => {
                        match self.filter.as_mut().map(|f| f.apply(events.clone())) {
                            None => {
                                let pending = self.rest.pending_bytes();
                                self.writer.event(&raw, &events, pending, &mut self.out);
                                self.saw_done = self.delivered.observe_chunk(events);
                                continue;
                            }
                            Some(Ok(events)) => {
                                self.writer.encode(&events, &mut self.out);
                                self.saw_done = self.delivered.observe(events);
                                continue;
                            }
                            Some(Err(why)) => {
                                let mut f = Failure::new(
                                    super::Reason::ServerError,
                                    super::Phase::StreamAfterCommit,
                                    why,
                                );
                                f.status = None;
                                Box::new(f)
                            }
                        }
                    }
                    StreamItem::End => {
                        self.writer.finalise(&mut self.out);
                        break;
                    }
                    StreamItem::Failed(f) => Box::new(f),
                };
                // Rare, so boxed: the state the relay waits in stays small.
                if !Box::pin(self.on_failure(failure)).await {
                    break;
                }
            }
            // The client's answer is complete (the body returns these last bytes, then its
            // end); the upstream connection is given back.
            self.current.armed = false;
            if !self.out.is_empty() {
                self.tx.0.put(Bytes::from(std::mem::take(&mut self.out)));
            }
            self.rest.release();
        }
    }

    /// After the upstream failed: rescue the answer (whether the relay goes on), or
    /// write the client's error.
    async fn on_failure(&mut self, failure: Box<Failure>) -> bool {
        let engine = &self.current.engine;
        let target = &self.current.target;
        tracing::warn!(
            request_id = %self.call.request_id,
            upstream = %target,
            reason = %failure.reason,
            error = %failure.message,
            "stream failed after content reached the client"
        );
        // The request's deadline ended an answer that was still coming: the target is
        // not at fault, and there is no time left to rescue it.
        let past_deadline = self.rest.past_deadline();
        self.current.armed = false;
        if past_deadline {
            abandon(engine, target);
        } else {
            engine.cooldowns.on_failure(
                &target.model.provider,
                &target.profile,
                &target.model.model,
                failure.reason,
                failure.retry_after,
            );
        }
        // What arrived before the failure reaches the client before any rescue runs.
        if !self.out.is_empty() {
            self.tx
                .send(Bytes::from(std::mem::take(&mut self.out)))
                .await;
        }
        let cause = (**self.first_cause.get_or_insert(failure)).clone();
        let deadline = self.rest.deadline();
        // No rescue for a client that went away meanwhile: it dropped the body, and
        // with it the rescue.
        let rescued = if self.rescues < MAX_RESCUES && !self.delivered.tool_calls && !past_deadline
        {
            rescue(
                &self.current.engine,
                &self.call,
                &self.current.target,
                &self.delivered,
                &self.earlier,
                deadline,
            )
            .await
        } else {
            None
        };
        let Some((next, mut filter, committed)) = rescued else {
            self.writer
                .error(&stream_failure_error(&cause), &mut self.out);
            return false;
        };
        self.rescues += 1;
        tracing::info!(
            request_id = %self.call.request_id,
            from = %self.current.target,
            to = %next,
            mode = ?next_filter_mode(&filter),
            "rescuing the stream"
        );
        self.writer
            .switch_to_encoding(self.include_usage, &self.delivered);
        let failed = std::mem::replace(&mut self.current.target, next);
        self.earlier.push(failed);
        self.current.armed = true;
        self.rest = committed.1;
        for (_, events) in committed.0 {
            match filter.apply(events) {
                Ok(events) => {
                    self.writer.encode(&events, &mut self.out);
                    self.saw_done |= self.delivered.observe(events);
                }
                Err(why) => {
                    tracing::warn!(request_id = %self.call.request_id, "rescue abandoned: {why}");
                    self.current.armed = false;
                    self.writer
                        .error(&stream_failure_error(&cause), &mut self.out);
                    return false;
                }
            }
        }
        self.filter = Some(filter);
        true
    }
}

/// The target's attempt ends through no fault of its own (the client left, the request's
/// deadline passed): a half-open probe it held is freed, nothing is cooled.
fn abandon(engine: &Engine, target: &Target) {
    engine
        .cooldowns
        .on_abandon(&target.model.provider, &target.profile, &target.model.model);
}

fn next_filter_mode(f: &Filter) -> RescueMode {
    match f {
        Filter::Prefill { .. } => RescueMode::Prefill,
        Filter::Splice { .. } => RescueMode::Splice,
    }
}

type RescueStream = (Vec<(SseEvent, ChunkEvents)>, Box<UpstreamStream>);

/// Find a target that can carry the answer on, and open its stream.
async fn rescue(
    engine: &Engine,
    call: &Call,
    failed: &Target,
    delivered: &Delivered,
    earlier: &[Target],
    deadline: Instant,
) -> Option<(Target, Filter, RescueStream)> {
    let modes = &engine.config.stream.rescue;
    if modes.is_empty() {
        return None;
    }
    let delivered_text = delivered.text();
    let plan = engine.plan(&call.route);
    let same = |a: &Target, b: &Target| a.model == b.model && a.profile == b.profile;
    let pos = plan.targets.iter().position(|t| same(t, failed));
    // Later targets of the plan first (another key of the same model, then the next
    // models); the failed target itself last, for a replay.
    let mut candidates: Vec<Target> = plan
        .targets
        .iter()
        .skip(pos.map_or(0, |p| p + 1))
        // (The failed target was tried, and the ones before it.)
        .filter(|t| !same(failed, t) && !earlier.iter().any(|x| same(x, t)))
        // Content only the client's format has: only a model of that format can go on.
        .filter(|t| {
            call.request.untranslatable.is_none()
                || engine.api_of(&t.model.provider) == Some(call.ingress)
        })
        .cloned()
        .collect();
    candidates.push(failed.clone());
    let mut tries = 0;
    for cand in candidates {
        if tries >= MAX_RESCUE_CANDIDATES {
            break;
        }
        let (p, a, m) = (&cand.model.provider, &cand.profile, &cand.model.model);
        let is_failed = same(&cand, failed);
        if !is_failed && matches!(engine.cooldowns.admit(p, a, m), Admission::Denied { .. }) {
            continue;
        }
        // A prefill is a translated request, which would leave the untranslatable out.
        let prefill = modes.contains(&RescueMode::Prefill)
            && call.request.untranslatable.is_none()
            && !is_failed
            && !delivered_text.is_empty()
            && crate::models::accepts_prefill(&engine.config, p, m);
        let splice = modes.contains(&RescueMode::Splice);
        if !prefill && !splice {
            continue;
        }
        if !engine.spend_retry() {
            return None;
        }
        tries += 1;
        let (attempt_call, filter) = if prefill {
            let trimmed = delivered_text.trim_end();
            let mut request = (*call.request).clone();
            request.stream = true;
            request.messages.push(Message {
                role: Role::Assistant,
                content: vec![Part::Text {
                    text: trimmed.to_string(),
                }],
                name: None,
            });
            (
                Call {
                    request: Arc::new(request),
                    translate: true,
                    ..call.clone()
                },
                Filter::Prefill {
                    skip_leading_ws: trimmed.len() < delivered_text.len(),
                    delivered_tokens: estimate_tokens(&delivered_text),
                },
            )
        } else {
            (
                call.clone(),
                Filter::Splice {
                    expected: delivered_text.clone(),
                    matched: 0,
                },
            )
        };
        // Within the request's one deadline (PRODUCT §3.4), not a fresh one.
        match engine.attempt_target(&attempt_call, &cand, deadline).await {
            Ok(Answer::Stream { head, rest }) => {
                engine.cooldowns.on_success(p, a, m);
                return Some((cand, filter, (head, rest)));
            }
            Ok(Answer::Complete { .. }) => return None,
            Err(f) => {
                tracing::info!(request_id = %call.request_id, upstream = %cand, reason = %f.reason, "rescue attempt failed");
                engine
                    .cooldowns
                    .on_failure(p, a, m, f.reason, f.retry_after);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Usage;

    fn text(t: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: t.into() }
    }

    /// The compacted log brings a fresh encoder to the state the whole sequence of
    /// events would: what it writes next is the same, in both client formats.
    #[test]
    fn a_compacted_log_replays_to_the_same_encoder_state() {
        let mut rng = fastrand::Rng::with_seed(8);
        let pieces = ["", " ", "a", "é", "b c", "\n", "日本"];
        for round in 0..4000 {
            let mut events = Vec::new();
            if rng.bool() {
                events.push(StreamEvent::Start {
                    id: "chatcmpl-x".into(),
                    model: "m".into(),
                    input_tokens: rng.bool().then_some(3),
                });
            }
            for _ in 0..rng.usize(0..10) {
                let text = pieces[rng.usize(0..pieces.len())].to_string();
                events.push(match rng.usize(0..6) {
                    0..=2 => StreamEvent::TextDelta { text },
                    3..=4 => StreamEvent::ThinkingDelta { text },
                    _ => StreamEvent::Usage {
                        usage: Usage {
                            input_tokens: 3,
                            output_tokens: 1,
                            ..Usage::default()
                        },
                    },
                });
            }
            let mut delivered = Delivered::default();
            // Observed in random batches, as upstream reads bring them.
            let mut rest = events.clone();
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                delivered.observe(rest.drain(..n));
            }
            let whole: String = events
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::TextDelta { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(delivered.text(), whole);
            let then = [
                text("z"),
                StreamEvent::ThinkingDelta { text: "t".into() },
                text("y"),
                StreamEvent::Finish {
                    reason: chat::FinishReason::Stop,
                    stop_sequence: None,
                },
                StreamEvent::Usage {
                    usage: Usage::default(),
                },
                StreamEvent::Done,
            ];
            for ingress in [WireFormat::OpenAi, WireFormat::Anthropic] {
                let (mut a, mut b) = (
                    Writer::encoding(ingress, true, false),
                    Writer::encoding(ingress, true, false),
                );
                let mut discard = Vec::new();
                a.encode(&events, &mut discard);
                b.encode(&delivered.log, &mut discard);
                let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
                a.encode(&then, &mut out_a);
                b.encode(&then, &mut out_b);
                // Chunks carry a creation time: compare all but its digits.
                let strip = |o: &[u8]| {
                    let text = String::from_utf8_lossy(o).to_string();
                    let mut parts = text.split("\"created\":");
                    let mut kept = parts.next().unwrap_or_default().to_string();
                    for p in parts {
                        kept.push_str(p.trim_start_matches(|c: char| c.is_ascii_digit()));
                    }
                    kept
                };
                assert_eq!(strip(&out_a), strip(&out_b), "round {round}: {events:?}");
            }
        }
    }

    #[test]
    fn tool_call_output_ends_the_log() {
        let mut d = Delivered::default();
        d.observe(vec![text("a"), text("b")]);
        assert_eq!(d.log, vec![text("ab")]);
        d.observe(vec![StreamEvent::ToolCallStart {
            index: 0,
            id: "c".into(),
            name: "t".into(),
        }]);
        d.observe(vec![text("c")]);
        assert!(d.tool_calls);
        assert!(d.log.is_empty());
    }

    #[test]
    fn a_chunk_is_observed_as_its_events_are() {
        let done = StreamEvent::Done;
        let usage = StreamEvent::Usage {
            usage: chat::Usage::default(),
        };
        let chunks = vec![
            ChunkEvents::One(text("a")),
            ChunkEvents::Many(vec![]),
            ChunkEvents::Many(vec![text("b"), usage.clone()]),
            ChunkEvents::One(usage),
            ChunkEvents::Many(vec![done.clone(), text("c")]),
            ChunkEvents::One(done),
        ];
        let (mut a, mut b) = (Delivered::default(), Delivered::default());
        for chunk in chunks {
            assert_eq!(a.observe_chunk(chunk.clone()), b.observe(Vec::from(chunk)));
            assert_eq!(a.log, b.log);
        }
        assert_eq!(a.log, vec![text("abc")]);
    }

    #[test]
    fn a_frame_cut_before_its_blank_line_is_completed() {
        for (raw, added) in [
            (&b"data: x\n\n"[..], &b""[..]),
            (b"data: x\r\n\r\n", b""),
            (b"data: x\r\r", b""),
            (b"data: x\n\r\n", b""),
            (b"data: x\r\n", b"\n"),
            (b"data: x\n", b"\n"),
            (b"data: x\r", b"\r"),
            (b"data: x", b"\n\n"),
        ] {
            let mut out = Vec::new();
            complete_frame(raw, &mut out);
            assert_eq!(out, added, "{:?}", String::from_utf8_lossy(raw));
            // What the client gets is one whole frame that a parser dispatches.
            let mut p = crate::sse::SseParser::new();
            let whole = [raw, &out].concat();
            let mut events = p.push(&whole);
            // A comment after it settles a trailing CR (it could have begun a CRLF).
            events.extend(p.push(b":c\n"));
            assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&whole));
            assert_eq!(events[0].data, "x");
        }
    }

    #[test]
    fn splice_forwards_only_what_follows_the_delivered_text() {
        let mut f = Filter::Splice {
            expected: "Hello wor".into(),
            matched: 0,
        };
        let start = StreamEvent::Start {
            id: "x".into(),
            model: "m".into(),
            input_tokens: None,
        };
        assert_eq!(f.apply(vec![start, text("Hel")]).unwrap(), vec![]);
        assert_eq!(f.apply(vec![text("lo w")]).unwrap(), vec![]);
        assert_eq!(f.apply(vec![text("orld!")]).unwrap(), vec![text("ld!")]);
        assert_eq!(f.apply(vec![text(" Bye")]).unwrap(), vec![text(" Bye")]);
    }

    #[test]
    fn splice_stops_when_the_replay_diverges() {
        let mut f = Filter::Splice {
            expected: "Hello world".into(),
            matched: 0,
        };
        assert!(f.apply(vec![text("Hello there")]).is_err());
        let mut f = Filter::Splice {
            expected: "Hello".into(),
            matched: 0,
        };
        assert!(
            f.apply(vec![StreamEvent::Finish {
                reason: chat::FinishReason::Stop,
                stop_sequence: None
            }])
            .is_err()
        );
        let mut f = Filter::Splice {
            expected: "Hi".into(),
            matched: 0,
        };
        assert!(
            f.apply(vec![StreamEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "t".into()
            }])
            .is_err()
        );
    }

    #[test]
    fn prefill_continuation_drops_its_start_and_counts_delivered_tokens() {
        let mut f = Filter::Prefill {
            skip_leading_ws: true,
            delivered_tokens: 5,
        };
        let out = f
            .apply(vec![
                StreamEvent::Start {
                    id: "x".into(),
                    model: "m".into(),
                    input_tokens: Some(9),
                },
                text("  "),
                text(" next"),
                StreamEvent::Usage {
                    usage: Usage {
                        input_tokens: 9,
                        output_tokens: 3,
                        ..Usage::default()
                    },
                },
            ])
            .unwrap();
        assert_eq!(out[0], text("next"));
        assert_eq!(
            out[1],
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 9,
                    output_tokens: 8,
                    ..Usage::default()
                }
            }
        );
    }
}
