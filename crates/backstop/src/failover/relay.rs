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
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// What reached the client so far.
#[derive(Default)]
struct Delivered {
    text: String,
    tool_calls: bool,
    /// Every content event the client got, to bring a fresh encoder up to the same state.
    log: Vec<StreamEvent>,
}

impl Delivered {
    /// Take note of events the client got (kept in the log, not copied); returns
    /// whether they ended the stream.
    fn observe(&mut self, events: impl IntoIterator<Item = StreamEvent>) -> bool {
        let mut done = false;
        for e in events {
            match &e {
                StreamEvent::TextDelta { text } => self.text.push_str(text),
                StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallDelta { .. } => {
                    self.tool_calls = true
                }
                StreamEvent::Done => done = true,
                _ => {}
            }
            if !matches!(
                e,
                StreamEvent::Usage { .. } | StreamEvent::Finish { .. } | StreamEvent::Done
            ) {
                self.log.push(e);
            }
        }
        done
    }
}

/// Writes client bytes: forwarded as they came (same format), or encoded.
enum Writer {
    Passthrough(WireFormat),
    OpenAi(wire::openai::StreamEncoder),
    Anthropic(wire::anthropic::StreamEncoder),
}

impl Writer {
    /// An encoder in the client's format; `translating`: the answer comes from another
    /// format, so its id takes the client's format's shape.
    fn encoding(ingress: WireFormat, include_usage: bool, translating: bool) -> Self {
        match ingress {
            WireFormat::Anthropic => {
                let enc = wire::anthropic::StreamEncoder::new();
                Writer::Anthropic(if translating { enc.translating() } else { enc })
            }
            _ => {
                let enc = wire::openai::StreamEncoder::new(include_usage);
                Writer::OpenAi(if translating { enc.translating() } else { enc })
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

    fn event(&mut self, raw: &SseEvent, events: &[StreamEvent], out: &mut Vec<u8>) {
        match self {
            Writer::Passthrough(_) => {
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

/// Relay a committed stream to the client as bytes in its format, rescuing it if the
/// upstream fails after content. Dropping the receiver (the client went away) stops the
/// relay and closes the upstream.
pub fn relay(
    engine: Arc<Engine>,
    call: Call,
    start: Committed,
    include_usage: bool,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let ingress = call.ingress;
        let Committed {
            mut target,
            upstream_format,
            head,
            mut rest,
        } = start;
        let mut writer = Writer::new(ingress, upstream_format, include_usage);
        let mut delivered = Delivered::default();
        let mut filter: Option<Filter> = None;
        let mut first_cause: Option<Failure> = None;
        let mut rescues = 0usize;
        let mut tried: Vec<Target> = vec![target.clone()];
        let mut out = Vec::with_capacity(1024);
        let mut saw_done = false;
        for (raw, events) in head {
            writer.event(&raw, &events, &mut out);
            saw_done |= delivered.observe(events);
        }
        while !saw_done {
            // Events that came in one upstream read leave in one client write: send only
            // before waiting on the upstream again (nothing is held back that has arrived).
            if !out.is_empty()
                && !rest.has_ready()
                && tx
                    .send(Bytes::from(std::mem::take(&mut out)))
                    .await
                    .is_err()
            {
                abandon(&engine, &target);
                return;
            }
            // Waiting on the upstream, watch the client too: one that went away stops the
            // relay (and closes the upstream) now, not at the upstream's next event or
            // stall, which would cool the target down and rescue for nobody. (Events of a
            // read already made need no watch: a gone client is seen at the next send.)
            let item = if rest.has_ready() {
                Some(rest.next_item().await)
            } else {
                tokio::select! {
                    biased;
                    _ = tx.closed() => None,
                    item = rest.next_item() => Some(item),
                }
            };
            let Some(item) = item else {
                abandon(&engine, &target);
                return;
            };
            let failure = match item {
                StreamItem::Event(raw, events) => {
                    match filter.as_mut().map(|f| f.apply(events.clone())) {
                        None => {
                            writer.event(&raw, &events, &mut out);
                            saw_done = delivered.observe(events);
                            continue;
                        }
                        Some(Ok(events)) => {
                            writer.encode(&events, &mut out);
                            saw_done = delivered.observe(events);
                            continue;
                        }
                        Some(Err(why)) => {
                            let mut f = Failure::new(
                                super::Reason::ServerError,
                                super::Phase::StreamAfterCommit,
                                why,
                            );
                            f.status = None;
                            f
                        }
                    }
                }
                StreamItem::End => {
                    writer.finalise(&mut out);
                    break;
                }
                StreamItem::Failed(f) => f,
            };
            tracing::warn!(
                request_id = %call.request_id,
                upstream = %target,
                reason = %failure.reason,
                error = %failure.message,
                "stream failed after content reached the client"
            );
            // The request's deadline ended an answer that was still coming: the target is
            // not at fault, and there is no time left to rescue it.
            let past_deadline = rest.past_deadline();
            if past_deadline {
                abandon(&engine, &target);
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
            if !out.is_empty() {
                let _ = tx.send(Bytes::from(std::mem::take(&mut out))).await;
            }
            let cause = first_cause.get_or_insert(failure).clone();
            let deadline = rest.deadline();
            let rescued = if rescues < MAX_RESCUES && !delivered.tool_calls && !past_deadline {
                // No rescue for a client that went away meanwhile.
                tokio::select! {
                    biased;
                    _ = tx.closed() => return,
                    next = rescue(&engine, &call, &target, &delivered, &tried, deadline) => next,
                }
            } else {
                None
            };
            let Some((next, next_filter, committed)) = rescued else {
                writer.error(&stream_failure_error(&cause), &mut out);
                break;
            };
            rescues += 1;
            tracing::info!(
                request_id = %call.request_id,
                from = %target,
                to = %next,
                mode = ?next_filter_mode(&next_filter),
                "rescuing the stream"
            );
            writer.switch_to_encoding(include_usage, &delivered);
            target = next;
            tried.push(target.clone());
            rest = committed.1;
            let mut f = next_filter;
            let mut head_ok = true;
            for (_, events) in committed.0 {
                match f.apply(events) {
                    Ok(events) => {
                        writer.encode(&events, &mut out);
                        saw_done |= delivered.observe(events);
                    }
                    Err(why) => {
                        tracing::warn!(request_id = %call.request_id, "rescue abandoned: {why}");
                        head_ok = false;
                        break;
                    }
                }
            }
            if !head_ok {
                writer.error(&stream_failure_error(&cause), &mut out);
                break;
            }
            filter = Some(f);
        }
        if !out.is_empty() {
            let _ = tx.send(Bytes::from(out)).await;
        }
        // The client's answer is complete; the upstream connection is given back.
        drop(tx);
        rest.release();
    });
    rx
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
    tried: &[Target],
    deadline: Instant,
) -> Option<(Target, Filter, RescueStream)> {
    let modes = &engine.config.stream.rescue;
    if modes.is_empty() {
        return None;
    }
    let plan = engine.plan(&call.route);
    let same = |a: &Target, b: &Target| a.model == b.model && a.profile == b.profile;
    let pos = plan.targets.iter().position(|t| same(t, failed));
    // Later targets of the plan first (another key of the same model, then the next
    // models); the failed target itself last, for a replay.
    let mut candidates: Vec<Target> = plan
        .targets
        .iter()
        .skip(pos.map_or(0, |p| p + 1))
        .filter(|t| !tried.iter().any(|x| same(x, t)))
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
            && !delivered.text.is_empty()
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
            let trimmed = delivered.text.trim_end();
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
                    skip_leading_ws: trimmed.len() < delivered.text.len(),
                    delivered_tokens: estimate_tokens(&delivered.text),
                },
            )
        } else {
            (
                call.clone(),
                Filter::Splice {
                    expected: delivered.text.clone(),
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
