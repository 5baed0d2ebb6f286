//! Server-Sent Events: an incremental parser for upstream streams and a writer
//! for client streams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::ops::Range;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when present (Anthropic names every event; OpenAI none).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (per the SSE spec), as received: bytes not
    /// yet decoded as UTF-8 (see [`SseEvent::data_text`]). An event with one `data:`
    /// line (nearly all) shares them with `raw`, copying nothing.
    pub data: Bytes,
    /// The event's bytes exactly as received (including its terminating blank line),
    /// for byte-exact passthrough of same-format streams.
    pub raw: Bytes,
}

impl SseEvent {
    /// The data as text: borrowed when it is valid UTF-8 (nearly always), else with
    /// each invalid sequence replaced by U+FFFD (never a panic).
    pub fn data_text(&self) -> Cow<'_, str> {
        // Valid UTF-8 is checked faster than the lossy path walks it.
        match std::str::from_utf8(&self.data) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&self.data),
        }
    }
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

/// An incremental SSE parser (WHATWG rules) for upstream byte streams.
///
/// Feed it bytes as they arrive with [`push`](Self::push); it returns every event
/// those bytes completed. Lines end in LF, CRLF or CR, and a chunk may split a
/// line anywhere — inside a CRLF pair or a multi-byte UTF-8 character included:
/// the parser works on bytes, and an event's data is decoded as UTF-8 only when it
/// is read ([`SseEvent::data_text`]: invalid UTF-8 becomes U+FFFD, never a panic).
///
/// Each event's `raw` is a zero-copy slice of the bytes received, from the first
/// line of its frame through its terminating blank line, so a same-format stream
/// can be forwarded byte for byte. Frames that dispatch nothing (comments only,
/// `event:` without `data:`) appear in no event's `raw`.
///
/// One deliberate delay: a blank line ending in a bare CR that is the last byte
/// received so far is held until the next byte (or [`finish`](Self::finish))
/// shows whether an LF follows, so that `raw` does not depend on how the stream
/// was chunked.
///
/// ```
/// use backstop::sse::SseParser;
///
/// let mut p = SseParser::new();
/// assert!(p.push(b"event: ping\ndata: {\"a\"").is_empty());
/// let events = p.push(b":1}\n\n: keep-alive\n\n");
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].event.as_deref(), Some("ping"));
/// assert_eq!(events[0].data_text(), "{\"a\":1}");
/// assert_eq!(&events[0].raw[..], b"event: ping\ndata: {\"a\":1}\n\n");
/// assert_eq!(p.buffered(), 0);
/// assert_eq!(p.finish(), None);
/// ```
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current frame, from its first line on (plus anything after).
    buf: BytesMut,
    /// Start of the first line of `buf` not yet processed.
    line_start: usize,
    /// Where to resume looking for a line terminator (`line_start..search_from`
    /// is known to hold none), so a long line split into many chunks is scanned once.
    search_from: usize,
    /// The current frame's `event:` value.
    event: Option<String>,
    /// The current frame's data: where in `buf` while it is one line's value, in
    /// `joined` once a second `data` line comes.
    data: Data,
    /// The `data:` lines of a frame that has several, joined with `\n`.
    joined: BytesMut,
    /// No line has been processed yet (a leading UTF-8 BOM is then skipped).
    at_stream_start: bool,
}

/// The UTF-8 byte order mark, ignored at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self {
            at_stream_start: true,
            ..Self::default()
        }
    }

    /// Feed bytes as they arrive; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.extend(chunk);
        let mut out = Vec::new();
        while let Some(event) = self.next_event() {
            out.push(event);
        }
        out
    }

    /// Take bytes as they arrive, to be read as events with
    /// [`next_event`](Self::next_event) (one at a time, so that the events of a read
    /// need no queue of their own).
    pub fn extend(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next event the bytes taken so far complete, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        if let Some(event) = self.one_data_line() {
            return Some(event);
        }
        loop {
            let len = self.buf.len();
            // A line ending right where the search starts (the blank line after a
            // field line, nearly always) needs no search.
            let rel = match self.buf.get(self.search_from) {
                Some(b'\n' | b'\r') => Some(0),
                _ => memchr::memchr2(b'\n', b'\r', &self.buf[self.search_from..]),
            };
            let Some(rel) = rel else {
                self.search_from = len;
                return None;
            };
            let term = self.search_from + rel;
            let next = if self.buf[term] == b'\n' {
                term + 1
            } else if term + 1 < len {
                term + 1 + usize::from(self.buf[term + 1] == b'\n')
            } else {
                // A CR as the last byte so far: wait to see whether an LF follows.
                self.search_from = term;
                return None;
            };
            if let Some(event) = self.line(term, next) {
                return Some(event);
            }
        }
    }

    /// Consume, without making an event, the frame at the start of the buffer when it is
    /// one complete `data:` line whose value `read` reads: `read` gets the bytes from
    /// the value's start to the end of the buffer, and returns the value's length when
    /// it reads it there (it must hold no CR or LF), with what it found. When the line
    /// ends right there and a blank line follows, both complete, the frame (whose
    /// [`SseEvent::data`] would be those bytes) is `take`n, with the same bytes and
    /// what `read` found, and consumed (`true`). Otherwise (`false`) nothing is
    /// consumed and [`next_event`](Self::next_event) reads on as if this had not been
    /// called. `read` is not called when the frame does not start with a `data:` line
    /// (or the stream's first line has not been read yet).
    pub fn skip_data_line<T>(
        &mut self,
        read: impl FnOnce(&[u8]) -> Option<(usize, T)>,
        take: impl FnOnce(&[u8], T),
    ) -> bool {
        if !self.at_data_frame() {
            return false;
        }
        let from = self.data_value_start();
        let Some(line) = self.buf.get(from..) else {
            return false;
        };
        let Some((len, found)) = read(line) else {
            return false;
        };
        debug_assert!(
            line.get(..len)
                .is_some_and(|v| memchr::memchr2(b'\n', b'\r', v).is_none()),
            "a data line's value holds no line end"
        );
        let Some(end) = self.frame_end(from + len) else {
            return false;
        };
        take(line, found);
        self.buf.advance(end);
        self.search_from = 0;
        true
    }

    /// Where the value of the `data:` line at the buffer's start begins: after the field
    /// name and the one space that may follow it (a line ending there has its end
    /// after that space, so the value is never past it).
    fn data_value_start(&self) -> usize {
        if self.buf.get(5) == Some(&b' ') { 6 } else { 5 }
    }

    /// At the start of a frame whose first line is a `data:` line (the stream's first
    /// line read already).
    fn at_data_frame(&self) -> bool {
        self.line_start == 0
            && !self.at_stream_start
            && matches!(self.data, Data::None)
            && self.event.is_none()
            && self.buf.starts_with(b"data:")
    }

    /// The end of a frame whose first line ends at `term` when that line's end and a
    /// blank line after it are complete: `None` when either is not, or when `term` is
    /// not a line end.
    fn frame_end(&self, term: usize) -> Option<usize> {
        let len = self.buf.len();
        let next = match *self.buf.get(term)? {
            b'\n' => term + 1,
            b'\r' if term + 1 < len => term + 1 + usize::from(self.buf[term + 1] == b'\n'),
            _ => return None,
        };
        match *self.buf.get(next)? {
            b'\n' => Some(next + 1),
            b'\r' if next + 1 < len => Some(next + 1 + usize::from(self.buf[next + 1] == b'\n')),
            _ => None,
        }
    }

    /// The frame at the start of the buffer when it is one `data:` line and a blank
    /// line, both complete (nearly every frame of a stream), read as [`line`](Self::line)
    /// would read it, line by line, and dispatched. `None` (nothing changed) for
    /// anything else, which the general path reads.
    fn one_data_line(&mut self) -> Option<SseEvent> {
        let (value, end) = self.one_data_frame()?;
        let raw = self.buf.split_to(end).freeze();
        let data = raw.slice(value);
        self.search_from = 0;
        Some(SseEvent {
            event: None,
            data,
            raw,
        })
    }

    /// Where [`one_data_line`](Self::one_data_line)'s frame is: its data's range and
    /// its end (the blank line's end), the buffer unchanged.
    fn one_data_frame(&self) -> Option<(Range<usize>, usize)> {
        if !self.at_data_frame() {
            return None;
        }
        // `search_from` is past what an earlier read of this line saw.
        let from = self.search_from.max(5);
        let term = from + memchr::memchr2(b'\n', b'\r', self.buf.get(from..)?)?;
        let end = self.frame_end(term)?;
        Some((self.data_value_start()..term, end))
    }

    /// The stream ended: returns a final event if one was pending without its
    /// blank line (a stream cut before its terminator still yields what it had).
    /// A last line without its line ending counts as a line. The parser is then
    /// back at the start of a stream.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let len = self.buf.len();
        let mut event = None;
        if self.line_start < len {
            let content_end = if self.buf[len - 1] == b'\r' {
                len - 1
            } else {
                len
            };
            event = self.line(content_end, len);
        }
        if event.is_none() && !matches!(self.data, Data::None) {
            let end = self.buf.len();
            event = Some(self.dispatch(end));
        }
        *self = Self::new();
        event
    }

    /// Bytes buffered but not yet part of a completed event (for a bound on memory).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Process the line `line_start..content_end` whose terminator ends at `next`.
    fn line(&mut self, content_end: usize, next: usize) -> Option<SseEvent> {
        let mut start = self.line_start;
        self.line_start = next;
        self.search_from = next;
        if content_end == start {
            return self.blank_line(next);
        }
        if self.at_stream_start {
            self.at_stream_start = false;
            if self.buf[start..content_end].starts_with(BOM) {
                start += BOM.len();
            }
        }
        let line = &self.buf[start..content_end];
        // A `data:` line (nearly all) has its first colon right after the field name.
        let colon = if line.starts_with(b"data:") {
            Some(4)
        } else {
            memchr::memchr(b':', line)
        };
        let (field, value) = match colon {
            Some(0) => return None, // a comment
            Some(colon) => {
                let mut from = start + colon + 1;
                if from < content_end && self.buf[from] == b' ' {
                    from += 1;
                }
                (&line[..colon], from..content_end)
            }
            None => (line, content_end..content_end),
        };
        match field {
            b"data" => match std::mem::take(&mut self.data) {
                Data::None => self.data = Data::Line(value),
                Data::Line(first) => {
                    self.joined.clear();
                    self.joined.extend_from_slice(&self.buf[first]);
                    self.joined.put_u8(b'\n');
                    self.joined.extend_from_slice(&self.buf[value]);
                    self.data = Data::Joined;
                }
                Data::Joined => {
                    self.joined.put_u8(b'\n');
                    self.joined.extend_from_slice(&self.buf[value]);
                    self.data = Data::Joined;
                }
            },
            b"event" => {
                let value = &self.buf[value];
                self.event =
                    (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned());
            }
            _ => {} // id, retry and unknown fields are ignored
        }
        None
    }

    /// A blank line ending at `end`: dispatch the frame, or drop it if it had no data.
    fn blank_line(&mut self, end: usize) -> Option<SseEvent> {
        self.at_stream_start = false;
        if matches!(self.data, Data::None) {
            self.buf.advance(end);
            self.reset_frame();
            None
        } else {
            Some(self.dispatch(end))
        }
    }

    /// Emit the current frame, whose bytes are `buf[..end]`.
    fn dispatch(&mut self, end: usize) -> SseEvent {
        let raw = self.buf.split_to(end).freeze();
        let data = match std::mem::take(&mut self.data) {
            Data::Line(value) => raw.slice(value),
            Data::Joined => self.joined.split().freeze(),
            Data::None => Bytes::new(),
        };
        let event = SseEvent {
            event: self.event.take(),
            data,
            raw,
        };
        self.reset_frame();
        event
    }

    fn reset_frame(&mut self) {
        self.event = None;
        self.data = Data::None;
        self.line_start = 0;
        self.search_from = 0;
    }
}

/// Where the current frame's data is.
#[derive(Debug, Default)]
enum Data {
    /// No `data` line yet.
    #[default]
    None,
    /// One `data` line: its value is this range of the parser's buffer.
    Line(Range<usize>),
    /// Several: joined in the parser's `joined`.
    Joined,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut events = p.push(input);
        events.extend(p.finish());
        events
    }

    fn datas(events: &[SseEvent]) -> Vec<String> {
        events.iter().map(|e| e.data_text().into_owned()).collect()
    }

    fn data_of(e: Option<&SseEvent>) -> Option<String> {
        e.map(|e| e.data_text().into_owned())
    }

    #[test]
    fn writer_output_parses_back() {
        let mut out = Vec::new();
        write_event(&mut out, Some("message_start"), "line one\nline two");
        let events = parse_all(&out);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("message_start"));
        assert_eq!(events[0].data, "line one\nline two");
        assert_eq!(&events[0].raw[..], &out[..]);
    }

    #[test]
    fn lf_crlf_and_cr_line_endings() {
        for input in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\ndata: b\n\r\n",
        ] {
            let events = parse_all(input);
            assert_eq!(datas(&events), ["a", "b"], "{input:?}");
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(raw, input);
        }
    }

    #[test]
    fn crlf_split_between_chunks() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r").is_empty());
        assert!(
            p.push(b"\n\r").is_empty(),
            "blank line held until the next byte"
        );
        let events = p.push(b"\ndata: b\r\n\r\n");
        assert_eq!(datas(&events), ["a", "b"]);
        assert_eq!(&events[0].raw[..], b"data: a\r\n\r\n");
        assert_eq!(&events[1].raw[..], b"data: b\r\n\r\n");
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn bare_cr_terminator_dispatches_on_next_byte_or_finish() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r\r").is_empty());
        let events = p.push(b"d");
        assert_eq!(datas(&events), ["a"]);
        assert_eq!(&events[0].raw[..], b"data: a\r\r");

        let mut p = SseParser::new();
        assert!(p.push(b"data: z\r\r").is_empty());
        let last = p.finish();
        assert_eq!(data_of(last.as_ref()).as_deref(), Some("z"));
        assert_eq!(
            last.map(|e| e.raw),
            Some(Bytes::from_static(b"data: z\r\r"))
        );
    }

    #[test]
    fn comments_are_ignored_but_kept_in_raw() {
        let input = b": hello\ndata: x\n: inside\ndata: y\n\n";
        let events = parse_all(input);
        assert_eq!(datas(&events), ["x\ny"]);
        assert_eq!(&events[0].raw[..], input);
    }

    #[test]
    fn comment_only_frames_dispatch_nothing() {
        let mut p = SseParser::new();
        assert!(p.push(b": keep-alive\n\n").is_empty());
        assert_eq!(p.buffered(), 0);
        let events = p.push(b":ping\n\ndata: 1\n\n");
        assert_eq!(datas(&events), ["1"]);
        assert_eq!(&events[0].raw[..], b"data: 1\n\n");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        let events = parse_all(b"event: ping\n\nid: 3\nretry: 10\n\nevent: x\ndata\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("x"));
        assert_eq!(
            events[0].data, "",
            "a bare `data` line is an empty data line"
        );
        assert_eq!(&events[0].raw[..], b"event: x\ndata\n\n");
    }

    #[test]
    fn multi_line_data_joined_with_lf() {
        let events = parse_all(b"data: one\ndata:two\ndata:  three\ndata:\n\n");
        assert_eq!(datas(&events), ["one\ntwo\n three\n"]);
    }

    #[test]
    fn only_one_space_after_colon_is_stripped() {
        let events = parse_all(b"data:no-space\n\ndata:  two\n\nevent:  e\ndata: a:b\n\n");
        assert_eq!(datas(&events), ["no-space", " two", "a:b"]);
        assert_eq!(events[2].event.as_deref(), Some(" e"));
    }

    #[test]
    fn event_name_applies_to_its_frame_only() {
        let events = parse_all(b"event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n");
        let names: Vec<_> = events.iter().map(|e| e.event.as_deref()).collect();
        assert_eq!(names, [Some("a"), None, None]);
    }

    #[test]
    fn id_retry_and_unknown_fields_ignored() {
        let events = parse_all(b"id: 7\nretry: 100\nfoo: bar\ndata: d\n\n");
        assert_eq!(datas(&events), ["d"]);
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn utf8_split_across_chunks() {
        let input = "data: héllo 🌍\n\n".as_bytes();
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in input {
            events.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(datas(&events), ["héllo 🌍"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_a_panic() {
        let events = parse_all(b"event: \xff\ndata: a\xc3\n\n");
        assert_eq!(events[0].data_text(), "a\u{FFFD}");
        assert_eq!(events[0].event.as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn invalid_utf8_across_data_lines_reads_as_each_line_decoded() {
        let events = parse_all(b"data: a\xe2\x82\ndata: \x82b\ndata:\xff\n\n");
        assert_eq!(events[0].data_text(), "a\u{FFFD}\n\u{FFFD}b\n\u{FFFD}");
    }

    #[test]
    fn one_data_line_is_shared_with_raw() {
        let events = parse_all(b"event: e\r\ndata: {\"a\":1}\r\n\r\ndata:x\n\n");
        for e in &events {
            let (raw, data) = (e.raw.as_ptr_range(), e.data.as_ptr_range());
            assert!(raw.start <= data.start && data.end <= raw.end, "{e:?}");
        }
        assert_eq!(datas(&events), ["{\"a\":1}", "x"]);
    }

    #[test]
    fn leading_bom_is_skipped() {
        let events = parse_all(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(
            datas(&events),
            ["a"],
            "a BOM later in the stream is not skipped"
        );
    }

    #[test]
    fn finish_yields_a_cut_event() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\":1}\n").is_empty());
        assert_eq!(p.buffered(), 14);
        let e = p.finish();
        assert_eq!(data_of(e.as_ref()).as_deref(), Some("{\"a\":1}"));
        assert_eq!(p.buffered(), 0);

        let mut p = SseParser::new();
        assert!(p.push(b"data: [DONE]").is_empty());
        let e = p.finish();
        assert_eq!(data_of(e.as_ref()).as_deref(), Some("[DONE]"));
        assert_eq!(e.map(|e| e.raw), Some(Bytes::from_static(b"data: [DONE]")));

        let mut p = SseParser::new();
        assert!(p.push(b": only a comment\nevent: x\n").is_empty());
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn finish_resets_the_parser() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: a\ndata: 1").is_empty());
        assert!(p.finish().is_some());
        let events = p.push(b"data: 2\n\n");
        assert_eq!(events[0].event, None);
        assert_eq!(events[0].data, "2");
    }

    #[test]
    fn buffered_counts_pending_bytes() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: 1\n\ndata: 2").len(), 1);
        assert_eq!(p.buffered(), 7);
        assert_eq!(p.push(b"\n\n").len(), 1);
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn long_line_in_many_chunks() {
        let payload = "x".repeat(100_000);
        let input = format!("data: {payload}\n\n");
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for piece in input.as_bytes().chunks(7) {
            events.extend(p.push(piece));
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, payload);
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum Frame {
        Event {
            name: Option<String>,
            data: String,
            comment: Option<String>,
        },
        KeepAlive(String),
    }

    fn text() -> impl Strategy<Value = String> {
        // Printable text with multi-byte characters and colons/spaces; no CR/LF.
        proptest::collection::vec(
            prop_oneof![
                Just("héllo 🌍".to_string()),
                Just(" ".to_string()),
                Just(":".to_string()),
                Just("€".to_string()),
                "[a-zA-Z0-9{}\"\\[\\],]{1,8}",
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            4 => (
                proptest::option::of("[a-z_]{1,12}"),
                proptest::collection::vec(text(), 1..4).prop_map(|lines| lines.join("\n")),
                proptest::option::of(text()),
            )
                .prop_map(|(name, data, comment)| Frame::Event { name, data, comment }),
            1 => text().prop_map(Frame::KeepAlive),
        ]
    }

    /// An expected event: name, data, raw bytes.
    type Expected = (Option<String>, String, Vec<u8>);

    /// Serialize frames with the given line endings (cycled); returns the bytes and
    /// the expected (name, data, raw) of each dispatched event.
    fn serialize(frames: &[Frame], endings: &[&'static str]) -> (Vec<u8>, Vec<Expected>) {
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let mut i = 0;
        let mut prev = "";
        // A bare CR followed by a bare LF would read as one CRLF: avoid that pair.
        let mut eol = || {
            let mut e = endings[i % endings.len()];
            i += 1;
            if prev == "\r" && e == "\n" {
                e = "\r\n";
            }
            prev = e;
            e
        };
        for frame in frames {
            let mut bytes = String::new();
            match frame {
                Frame::Event {
                    name,
                    data,
                    comment,
                } => {
                    if let Some(c) = comment {
                        bytes += &format!(":{c}{}", eol());
                    }
                    if let Some(n) = name {
                        bytes += &format!("event: {n}{}", eol());
                    }
                    for line in data.split('\n') {
                        bytes += &format!("data: {line}{}", eol());
                    }
                    bytes += eol();
                    expected.push((name.clone(), data.clone(), bytes.clone().into_bytes()));
                }
                Frame::KeepAlive(c) => {
                    bytes += &format!(":{c}{}{}", eol(), eol());
                }
            }
            out.extend_from_slice(bytes.as_bytes());
        }
        (out, expected)
    }

    /// The events of `input` by the WHATWG rules, read whole and line by line (no
    /// incremental state, no shortcuts): `(event, data)` of each dispatched one.
    fn reference(input: &[u8]) -> Vec<(Option<String>, Vec<u8>)> {
        let mut input = input;
        if input.starts_with(BOM) {
            input = &input[BOM.len()..];
        }
        let mut out = Vec::new();
        let (mut event, mut data): (Option<String>, Option<Vec<u8>>) = (None, None);
        let mut rest = input;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .unwrap_or(rest.len());
            let line = &rest[..end];
            let skip = match rest.get(end..end + 2) {
                Some(b"\r\n") => 2,
                Some(_) | None if end < rest.len() => 1,
                _ => 0,
            };
            rest = &rest[end + skip..];
            if line.is_empty() {
                if let Some(d) = data.take() {
                    out.push((event.take(), d));
                }
                event = None;
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, mut value) = match line.iter().position(|&b| b == b':') {
                Some(c) => (&line[..c], &line[c + 1..]),
                None => (line, &line[line.len()..]),
            };
            if value.first() == Some(&b' ') {
                value = &value[1..];
            }
            match field {
                b"data" => match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                },
                b"event" => {
                    event =
                        (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned());
                }
                _ => {}
            }
        }
        if let Some(d) = data {
            out.push((event, d));
        }
        out
    }

    /// Byte soup from the pieces that matter to the parser.
    fn soup() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop::sample::select(vec![
                &b"data"[..],
                b"data:",
                b"data: ",
                b"event",
                b"event: ",
                b":",
                b" ",
                b"\n",
                b"\r",
                b"\r\n",
                b"\n\n",
                b"x",
                b"{\"a\":1}",
                b"id: 1",
                "\u{e9}".as_bytes(),
                b"\xe2\x82",
                b"\xff",
                BOM,
            ]),
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// Any bytes, read whole or split at any one point or byte by byte, give the
        /// events the line-by-line reading gives, with the same `raw` bytes.
        #[test]
        fn any_bytes_read_as_the_reference_reads_them(
            input in soup(),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = parse_all(&input);
            let got: Vec<_> = whole.iter().map(|e| (e.event.clone(), e.data.to_vec())).collect();
            prop_assert_eq!(got, reference(&input));

            let cut = cut.index(input.len() + 1);
            let mut p = SseParser::new();
            let mut split = p.push(&input[..cut]);
            p.extend(&input[cut..]);
            split.extend(std::iter::from_fn(|| p.next_event()));
            split.extend(p.finish());
            prop_assert_eq!(&split, &whole);

            let mut p = SseParser::new();
            let mut bytewise = Vec::new();
            for b in &input {
                bytewise.extend(p.push(std::slice::from_ref(b)));
            }
            bytewise.extend(p.finish());
            prop_assert_eq!(&bytewise, &whole);
        }
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_events(
            frames in proptest::collection::vec(frame(), 0..8),
            endings in proptest::collection::vec(
                prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 1..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let (input, expected) = serialize(&frames, &endings);
            let whole = parse_all(&input);

            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.push(0);
            points.push(input.len());
            points.sort_unstable();
            let mut p = SseParser::new();
            let mut chunked = Vec::new();
            for w in points.windows(2) {
                chunked.extend(p.push(&input[w[0]..w[1]]));
            }
            chunked.extend(p.finish());

            prop_assert_eq!(&chunked, &whole);
            let got: Vec<_> = whole
                .iter()
                .map(|e| (e.event.clone(), e.data_text().into_owned(), e.raw.to_vec()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }

    /// What a reader of `skip_data_line` may do: read a value up to its line's end
    /// (found here by a search; the engine's template finds it by matching), and take
    /// it or not.
    fn read_line(line: &[u8], take: bool) -> Option<usize> {
        let len = memchr::memchr2(b'\n', b'\r', line).unwrap_or(line.len());
        take.then_some(len)
    }

    /// `skip_data_line` with `read` giving the value's length: the value taken, if
    /// the frame was.
    fn skip(p: &mut SseParser, read: impl FnOnce(&[u8]) -> Option<usize>) -> Option<Vec<u8>> {
        let mut taken = None;
        let consumed = p.skip_data_line(
            |line| read(line).map(|n| (n, n)),
            |line, n| taken = Some(line[..n].to_vec()),
        );
        assert_eq!(consumed, taken.is_some(), "taken exactly when consumed");
        taken
    }

    proptest! {
        /// Frames consumed by `skip_data_line` are the events `next_event` would have
        /// given there, in order, and the rest read as before: any bytes, split at any
        /// one point. A reader that ends a value before its line does consumes nothing.
        #[test]
        fn skipped_data_frames_are_the_events_they_replace(
            input in soup(),
            cut in any::<prop::sample::Index>(),
            pick in 0usize..3,
            short in any::<bool>(),
        ) {
            let whole = parse_all(&input);
            let cut = cut.index(input.len() + 1);
            let mut p = SseParser::new();
            let mut seen = Vec::new();
            let mut skipped = 0;
            for part in [&input[..cut], &input[cut..]] {
                p.extend(part);
                loop {
                    let mut early = false;
                    let taken = skip(&mut p, |line| {
                        let mut len = read_line(line, (line.len() + pick) % 3 != 0)?;
                        if short && len > 0 {
                            len -= 1;
                            early = true;
                        }
                        Some(len)
                    });
                    if let Some(value) = taken {
                        prop_assert!(!early, "a line ended early was consumed");
                        seen.push((None, value));
                        skipped += 1;
                        continue;
                    }
                    match p.next_event() {
                        Some(e) => seen.push((e.event, e.data.to_vec())),
                        None => break,
                    }
                }
            }
            seen.extend(p.finish().map(|e| (e.event, e.data.to_vec())));
            let want: Vec<_> = whole.iter().map(|e| (e.event.clone(), e.data.to_vec())).collect();
            prop_assert_eq!(seen, want);
            prop_assert!(skipped <= whole.len());
        }
    }

    #[test]
    fn data_frames_are_skipped_when_read_whole() {
        let mut p = SseParser::new();
        p.extend(b": hi\n\ndata: a\n\ndata: bb\r\n\r\ndata:c\n\ndata: d\ndata: e\n\nevent: e\ndata: f\n\ndata: x");
        // Nothing before the stream's first line has been read.
        assert_eq!(skip(&mut p, |_| panic!("at the stream's start")), None);
        assert_eq!(data_of(p.next_event().as_ref()).as_deref(), Some("a"));
        let mut lines = Vec::new();
        let mut read = |line: &[u8]| {
            lines.push(line.to_vec());
            read_line(line, true)
        };
        assert_eq!(skip(&mut p, &mut read).as_deref(), Some(&b"bb"[..]));
        assert_eq!(skip(&mut p, &mut read).as_deref(), Some(&b"c"[..]));
        // A second data line: the frame is not one line.
        assert_eq!(skip(&mut p, &mut read), None);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(b"bb\r\n") && lines[1].starts_with(b"c\n"));
        assert_eq!(data_of(p.next_event().as_ref()).as_deref(), Some("d\ne"));
        // A frame with an `event:` line is not read; an incomplete one is not taken.
        assert_eq!(skip(&mut p, |_| panic!("not a data frame")), None);
        let e = p.next_event().unwrap();
        assert_eq!((e.event.as_deref(), &e.data[..]), (Some("e"), &b"f"[..]));
        assert_eq!(skip(&mut p, |line| read_line(line, true)), None);
        // Nor a line that a reader ends early.
        p.extend(b"yz\n\n");
        assert_eq!(skip(&mut p, |line| Some(read_line(line, true)? - 1)), None);
        assert_eq!(
            skip(&mut p, |line| read_line(line, true)).as_deref(),
            Some(&b"xyz"[..])
        );
        assert_eq!(p.buffered(), 0);
    }
}
