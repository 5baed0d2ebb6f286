//! Backstop's own HTTP/1.x connection loop in front of the axum [`Router`].
//!
//! hyper's server keeps a 16 KB read buffer and an 8 KB write buffer per connection for
//! the connection's whole life (a slow stream holds them for minutes). This loop holds a
//! read buffer only while bytes are pending (it waits for readability, then allocates),
//! writes a response head from one short-lived buffer and body frames straight to the
//! socket. It behaves as hyper's HTTP/1 server toward clients: the same head (header order,
//! `date`, `content-length` or chunked, `connection`), keep-alive and pipelining,
//! `Expect: 100-continue`, a client that goes away seen at once while an answer is
//! pending or streams. A connection that opens with the HTTP/2 preface goes to hyper's
//! HTTP/2 server (h2c prior knowledge), as before.
//!
//! Request bodies are read whole before the handler runs (every handler reads them whole
//! anyway), up to `server.max_body_bytes` + 1 bytes: a larger one reaches the handler at
//! that length, or, announced by `Content-Length`, not at all (an erroring body), so the
//! handler answers its own 413 in the client's format; the connection closes after.

use axum::Router;
use axum::body::{Body, HttpBody};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// A request head larger than this is answered 431.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// More header lines than this are answered 431 (hyper's default).
const MAX_HEADERS: usize = 100;
/// hyper's limit on a request target (414 beyond).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// How long a client may take to send a request head (slowloris), counted from the
/// connection's start for its first request and from the first byte for the next ones.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a next (pipelined) request kept while an answer is pending or streams.
const MAX_PENDING: usize = MAX_HEAD;
/// A read asks for at least this much room.
const READ_CHUNK: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection needs to serve requests.
#[derive(Clone)]
pub(crate) struct Shared {
    pub router: Router,
    /// The chat routes, served without the router (see [`crate::Direct`]).
    pub direct: Option<crate::Direct>,
    /// `server.max_body_bytes` of the config serving now.
    pub max_body: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// Accept connections until `shutdown` resolves, then finish what is in flight: idle
/// connections close, busy ones answer their request with `connection: close`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    // Every connection task holds a receiver; the server returns when all are dropped.
    let (done_tx, done_rx) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Without TCP_NODELAY, a streamed answer's small writes wait on the client's
        // delayed ACK (Nagle): ~40 ms stalls between SSE events on loopback.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a client connection: {e}");
        }
        let shared = shared.clone();
        let stop = stop.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            Conn::new(tcp, shared, stop).run().await;
            drop(done);
        });
    }
    drop(done_rx);
    drop(listener);
    done_tx.closed().await;
}

/// As axum::serve: a connection error is the client's; anything else (EMFILE) waits a
/// second and accepts again.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A parsed request head and what it says about the connection and the body.
struct Head {
    request: Request<()>,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Length(u64),
    Chunked,
}

/// Why a head is refused: the status answered before the connection closes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    Malformed,
    TooLarge,
    UriTooLong,
}

impl HeadError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            HeadError::Malformed => (StatusCode::BAD_REQUEST, "malformed HTTP request\n"),
            HeadError::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large\n",
            ),
            HeadError::UriTooLong => (StatusCode::URI_TOO_LONG, "request target too long\n"),
        }
    }
}

/// Parse a request head at the front of `buf`: `Ok(None)` while incomplete, else the head
/// and its length in bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    // Not zeroed: httparse writes a slot before the head refers to it (as hyper).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    if path.len() > MAX_URI_LEN {
        return Err(HeadError::UriTooLong);
    }
    // One exact-size copy of the head: header values and the target share it, and no
    // part of the read buffer outlives the read.
    let base = buf.as_ptr() as usize;
    let head = Bytes::copy_from_slice(&buf[..len]);
    let slice = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        head.slice(at..at + s.len())
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed)?;
    let uri = match chat_uri(path) {
        Some(uri) => uri,
        None => Uri::from_maybe_shared(slice(path.as_bytes())).map_err(|_| HeadError::Malformed)?,
    };
    let http11 = version == 1;
    let mut keep_alive = http11;
    let mut body = BodyKind::Length(0);
    let mut content_length: Option<u64> = None;
    let mut is_te = false;
    let mut is_te_chunked = false;
    let mut is_cl = false;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    // The same rules as hyper's (RFC 9112 §6.3).
    for h in req.headers.iter() {
        let name = header_name(h.name.as_bytes()).ok_or(HeadError::Malformed)?;
        let value =
            HeaderValue::from_maybe_shared(slice(h.value)).map_err(|_| HeadError::Malformed)?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(HeadError::Malformed);
                }
                is_te = true;
                if is_cl && content_length.take().is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
                is_te_chunked = is_chunked(&value);
                if is_te_chunked {
                    body = BodyKind::Chunked;
                }
            }
            header::CONTENT_LENGTH => {
                is_cl = true;
                if is_te {
                    continue;
                }
                let len = content_length_parse(&value).ok_or(HeadError::Malformed)?;
                if let Some(prev) = content_length {
                    if prev != len {
                        return Err(HeadError::Malformed);
                    }
                    continue;
                }
                body = BodyKind::Length(len);
                content_length = Some(len);
            }
            header::CONNECTION => {
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if is_te && !is_te_chunked {
        return Err(HeadError::Malformed);
    }
    if is_te && is_cl {
        keep_alive = false;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Some((
        Head {
            request,
            body,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// The target of a chat route, parsed once: a clone of what parsing it gives (its
/// bytes static, so the clone takes no reference count).
fn chat_uri(path: &str) -> Option<Uri> {
    static CHAT: std::sync::LazyLock<[Uri; 3]> = std::sync::LazyLock::new(|| {
        [
            Uri::from_static("/v1/chat/completions"),
            Uri::from_static("/chat/completions"),
            Uri::from_static("/v1/messages"),
        ]
    });
    let at = match path {
        "/v1/chat/completions" => 0,
        "/chat/completions" => 1,
        "/v1/messages" => 2,
        _ => return None,
    };
    Some(CHAT[at].clone())
}

/// A request header's name: `HeaderName::from_bytes`, with the names SDKs send on
/// every request matched first by length and bytes (any case), without its lowercasing
/// table walk, and the custom ones among them without an allocation.
fn header_name(name: &[u8]) -> Option<HeaderName> {
    const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
    let is = |known: &[u8]| token_is(name, known);
    let common = match name.len() {
        4 if is(b"host") => Some(header::HOST),
        6 if is(b"accept") => Some(header::ACCEPT),
        9 if is(b"x-api-key") => Some(crate::guard::X_API_KEY),
        10 if is(b"user-agent") => Some(header::USER_AGENT),
        10 if is(b"connection") => Some(header::CONNECTION),
        12 if is(b"content-type") => Some(header::CONTENT_TYPE),
        13 if is(b"authorization") => Some(header::AUTHORIZATION),
        14 if is(b"content-length") => Some(header::CONTENT_LENGTH),
        15 if is(b"accept-encoding") => Some(header::ACCEPT_ENCODING),
        17 if is(b"anthropic-version") => Some(ANTHROPIC_VERSION),
        _ => None,
    };
    match common {
        Some(n) => Some(n),
        None => HeaderName::from_bytes(name).ok(),
    }
}

/// Whether header name `name` is `known` (lower-case letters and dashes) in any case,
/// as `eq_ignore_ascii_case` tells, eight bytes at a time: at the letters of `known`
/// (its bytes with the 0x40 bit) a byte of `name` counts with its 0x20 bit set, which
/// makes only the upper-case letter equal to the lower-case one; a dash must be one.
fn token_is(name: &[u8], known: &[u8]) -> bool {
    const LETTER: u64 = u64::from_ne_bytes([0x40; 8]);
    if name.len() != known.len() {
        return false;
    }
    let mut names = name.chunks_exact(8);
    let mut knowns = known.chunks_exact(8);
    for (n, k) in (&mut names).zip(&mut knowns) {
        let (Ok(n), Ok(k)) = (<[u8; 8]>::try_from(n), <[u8; 8]>::try_from(k)) else {
            return false;
        };
        let (n, k) = (u64::from_ne_bytes(n), u64::from_ne_bytes(k));
        if n | ((k & LETTER) >> 1) != k {
            return false;
        }
    }
    names
        .remainder()
        .iter()
        .zip(knowns.remainder())
        .all(|(n, k)| n | ((k & 0x40) >> 1) == *k)
}

/// hyper's `content_length_parse`: digits only, at most 19 of them.
fn content_length_parse(value: &HeaderValue) -> Option<u64> {
    let b = value.as_bytes();
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `chunked` is the last coding of a `Transfer-Encoding` value (a value that is not
/// visible ASCII has none, as in hyper).
fn is_chunked(value: &HeaderValue) -> bool {
    value.to_str().is_ok() && backstop::http1::is_chunked(value.as_bytes())
}

/// A comma-separated header value holds `token` (any case; a value that is not visible
/// ASCII holds none, as in hyper).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok() && backstop::http1::has_token(value.as_bytes(), token.as_bytes())
}

/// A chunked request body's decoder: the engine's (`backstop::http1`, which Backstop's
/// upstream client reads chunked answers with), fed from the connection's buffer.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkedDecoder {
    inner: backstop::http1::ChunkedDecoder,
    done: bool,
}

impl ChunkedDecoder {
    /// Decode from `input` into `out`, stopping once `out` holds more than `max_out`
    /// bytes: the bytes of `input` used, or an error for a malformed body.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        max_out: usize,
    ) -> Result<usize, ()> {
        // Chunked request bodies are rare (the SDKs send a length): decoding a copy of
        // what is buffered keeps the connection's buffer its own.
        let mut buf = Bytes::copy_from_slice(input);
        while !self.done && out.len() <= max_out {
            match self.inner.decode(&mut buf).map_err(|_| ())? {
                backstop::http1::Step::Data(d) => out.extend_from_slice(&d),
                backstop::http1::Step::More => break,
                backstop::http1::Step::End => self.done = true,
            }
        }
        Ok(input.len() - buf.len())
    }

    pub(crate) fn done(&self) -> bool {
        self.done
    }
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// HTTP/1.0 with no known length: the end of the connection ends the body.
    Close,
}

/// What a response head needs to know of its request.
#[derive(Debug, Clone, Copy)]
struct ReqFacts {
    head: bool,
    http10: bool,
    keep_alive: bool,
}

/// The body's length as hyper's server sees it: `None` for an ended body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Empty,
    Known(u64),
    Unknown,
}

/// A response body's length as hyper's server sees it.
fn body_length(body: &Body) -> BodyLength {
    if body.is_end_stream() {
        BodyLength::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyLength::Known(n),
            None => BodyLength::Unknown,
        }
    }
}

/// The head this loop writes for `response` to a keep-alive HTTP/1.1 request (the
/// differential tests compare what reaches the client).
#[cfg(test)]
pub(crate) fn written_head(response: &Response<Body>) -> Vec<u8> {
    let facts = ReqFacts {
        head: false,
        http10: false,
        keep_alive: true,
    };
    let mut headers = response.headers().clone();
    let mut head = Vec::new();
    let length = body_length(response.body());
    encode_head(&mut head, response.status(), &mut headers, length, facts);
    head
}

fn can_chunk(facts: ReqFacts, status: StatusCode) -> bool {
    !(facts.head
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(status: StatusCode) -> bool {
    !(status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

/// End a header line that later values of its name were joined to; a
/// `transfer-encoding` whose last coding is not `chunked` gets it added.
fn end_line(dst: &mut Vec<u8>, must_write_chunked: bool) {
    extend(
        dst,
        if must_write_chunked {
            b", chunked\r\n"
        } else {
            b"\r\n"
        },
    );
}

fn extend(dst: &mut Vec<u8>, b: &[u8]) {
    dst.extend_from_slice(b);
}

/// Write a response head as hyper's HTTP/1 server does (lower-case names, in the map's
/// order; `connection` fixed up for the peer's version and keep-alive; a length or
/// chunked framing; `date`): the body's framing and whether the connection must close.
fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: BodyLength,
    facts: ReqFacts,
) -> (Framing, bool) {
    // hyper's `enforce_version`.
    if facts.http10 {
        let keeps = headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "keep-alive"));
        if !keeps && facts.keep_alive {
            headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    } else if !facts.keep_alive
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "close"))
    {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut is_last = !facts.keep_alive;
    let http10 = facts.http10;
    if !http10 && status == StatusCode::OK {
        extend(dst, b"HTTP/1.1 200 OK\r\n");
    } else {
        extend(dst, if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        extend(dst, status.as_str().as_bytes());
        extend(dst, b" ");
        extend(
            dst,
            status.canonical_reason().unwrap_or("<none>").as_bytes(),
        );
        extend(dst, b"\r\n");
    }
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    // A line that later values of the same name join (", "), still open.
    let mut open_line = false;
    let mut must_write_chunked = false;
    let mut prev_len: Option<u64> = None;
    let mut prev_name: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        let first_of_name = prev_name != Some(name);
        if first_of_name {
            if open_line {
                end_line(dst, must_write_chunked);
            }
            open_line = false;
            prev_name = Some(name);
        }
        match *name {
            header::CONTENT_LENGTH => match body {
                BodyLength::Known(known) => {
                    if !open_line {
                        framing = Framing::Length(known);
                        extend(dst, b"content-length: ");
                        extend(dst, value.as_bytes());
                        wrote_len = true;
                        open_line = true;
                    }
                    continue;
                }
                BodyLength::Unknown => {
                    let Some(len) = content_length_parse(value) else {
                        continue;
                    };
                    if prev_len.is_some() {
                        continue;
                    }
                    framing = Framing::Length(len);
                    extend(dst, b"content-length: ");
                    extend(dst, value.as_bytes());
                    wrote_len = true;
                    open_line = true;
                    prev_len = Some(len);
                    continue;
                }
                BodyLength::Empty => {
                    if !facts.head {
                        continue;
                    }
                    wrote_len = true;
                }
            },
            header::TRANSFER_ENCODING => {
                if http10 || !can_chunk(facts, status) {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !is_chunked(value);
                if !open_line {
                    framing = Framing::Chunked;
                    open_line = true;
                    extend(dst, b"transfer-encoding: ");
                } else {
                    extend(dst, b", ");
                }
                extend(dst, value.as_bytes());
                continue;
            }
            header::CONNECTION => {
                if has_token(value, "close") {
                    is_last = true;
                }
                if !open_line {
                    open_line = true;
                    extend(dst, b"connection: ");
                } else {
                    extend(dst, b", ");
                }
                extend(dst, value.as_bytes());
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        extend(dst, name.as_str().as_bytes());
        extend(dst, b": ");
        extend(dst, value.as_bytes());
        extend(dst, b"\r\n");
    }
    if open_line {
        end_line(dst, must_write_chunked);
    }
    if !wrote_len {
        framing = match body {
            BodyLength::Unknown => {
                if http10 || !can_chunk(facts, status) {
                    Framing::Close
                } else {
                    extend(dst, b"transfer-encoding: chunked\r\n");
                    Framing::Chunked
                }
            }
            BodyLength::Empty | BodyLength::Known(0) => {
                if can_have_content_length(status) && !facts.head {
                    extend(dst, b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(len) => {
                if can_have_content_length(status) {
                    extend(dst, b"content-length: ");
                    backstop::wire::push_u64(dst, len);
                    extend(dst, b"\r\n");
                    Framing::Length(len)
                } else {
                    Framing::Length(0)
                }
            }
        };
    }
    if !can_chunk(facts, status) {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        extend(dst, b"date: ");
        date::extend(dst);
        extend(dst, b"\r\n\r\n");
    } else {
        extend(dst, b"\r\n");
    }
    if framing == Framing::Close {
        is_last = true;
    }
    (framing, is_last)
}

/// The `date` value, formatted once a second per thread (as hyper).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) const LEN: usize = 29;

    thread_local! {
        static CACHE: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
    }

    pub(super) fn extend(dst: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == LEN {
                    c.1.copy_from_slice(text.as_bytes());
                    c.0 = secs;
                } else {
                    dst.extend_from_slice(text.as_bytes());
                    return;
                }
            }
            dst.extend_from_slice(&c.1);
        });
    }
}

/// A chunk's size line.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let mut n = len;
    let mut at = 16;
    loop {
        at -= 1;
        buf[at] = b"0123456789ABCDEF"[n & 0xF];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[at..]
}

/// Read what the socket has into `buf` (allocating only now): bytes read, 0 at EOF.
/// Waits on the socket's read readiness directly (the task's waker kept in the socket,
/// as [`Conn::poll_watch`] does), not by `readable()`, which links a waiter into the
/// socket's list and unlinks it again on every wait.
async fn read_more(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        match backstop::http1::read_buf(tcp, buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Readiness left over: hold no buffer while waiting again.
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn write_all_vectored(tcp: &mut TcpStream, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = tcp.write_vectored(parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// After a whole body: the connection may serve another request.
fn reusable(is_last: bool, framing: Framing, remaining: u64) -> bool {
    !is_last
        && match framing {
            Framing::Length(_) => remaining == 0,
            Framing::Chunked => true,
            Framing::Close => false,
        }
}

/// The end of a request: what the connection does next.
enum Next {
    KeepAlive,
    Close,
}

/// One client connection.
struct Conn {
    tcp: TcpStream,
    /// Bytes read and not yet used; without capacity while nothing is pending.
    buf: BytesMut,
    shared: Shared,
    stop: CancellationToken,
}

/// What a wait for the socket found.
enum Watch {
    /// Bytes of a next request (kept), or nothing after all.
    More,
    /// The client went away (EOF or an error).
    Gone,
}

impl Conn {
    fn new(tcp: TcpStream, shared: Shared, stop: CancellationToken) -> Self {
        Conn {
            tcp,
            buf: BytesMut::new(),
            shared,
            stop,
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        read_more(&self.tcp, &mut self.buf).await
    }

    /// Once the socket is readable: keep what comes (bounded), or see the client gone.
    /// Polls the socket's read readiness directly (no waiter registered and unlinked
    /// per poll, as `readable()` would), and reads through a small stack buffer:
    /// readiness is often left over from the read of the head (cleared only by a read
    /// that would block), and a stream must not hold a read buffer for it.
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Watch> {
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Watch::Gone),
                Poll::Ready(Ok(())) => {}
            }
            let mut tmp = [0u8; 1024];
            match backstop::http1::read_buf(&self.tcp, &mut &mut tmp[..]) {
                Ok(0) => return Poll::Ready(Watch::Gone),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Poll::Ready(Watch::More);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Watch::Gone),
            }
        }
    }

    fn release_buf(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    async fn run(mut self) {
        // The first request: an HTTP/2 preface goes to hyper's HTTP/2 server.
        let first = tokio::time::timeout(HEAD_TIMEOUT, async {
            loop {
                let n = self.buf.len().min(H2_PREFACE.len());
                if self.buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                    return true;
                }
                let idle = self.buf.is_empty();
                tokio::select! {
                    r = read_more(&self.tcp, &mut self.buf) => match r {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    },
                    () = self.stop.cancelled(), if idle => return false,
                }
            }
        })
        .await;
        if first != Ok(true) {
            return;
        }
        if self.buf.starts_with(H2_PREFACE) {
            let Conn {
                tcp,
                buf,
                shared,
                stop,
                ..
            } = self;
            // Boxed: an HTTP/1 connection's task need not be as large as an HTTP/2 one.
            Box::pin(serve_h2(tcp, buf.freeze(), shared.router, stop)).await;
            return;
        }
        let mut first = true;
        while let Next::KeepAlive = self.one(first).await {
            first = false;
        }
        let _ = self.tcp.shutdown().await;
    }

    /// Read the next head: `None` when the connection ends quietly.
    async fn read_head(&mut self, first: bool) -> Option<Result<Head, HeadError>> {
        let mut deadline = None;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf) {
                    Ok(Some((head, len))) => {
                        self.buf.advance(len);
                        self.release_buf();
                        return Some(Ok(head));
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            if deadline.is_none() && (first || !self.buf.is_empty()) {
                deadline = Some(tokio::time::Instant::now() + HEAD_TIMEOUT);
            }
            let idle = self.buf.is_empty();
            let read = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, read_more(&self.tcp, &mut self.buf))
                        .await
                        .unwrap_or(Ok(0)),
                    None => read_more(&self.tcp, &mut self.buf).await,
                }
            };
            let n = tokio::select! {
                r = read => r,
                () = self.stop.cancelled(), if idle => return None,
            };
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Answer an unusable head and close.
    async fn refuse(&mut self, err: HeadError) {
        let (status, text) = err.status();
        let mut resp = Response::new(Body::from(text));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        *resp.status_mut() = status;
        let facts = ReqFacts {
            head: false,
            http10: false,
            keep_alive: false,
        };
        let _ = self.respond(resp, facts).await;
    }

    /// Read a request body whole (up to `limit` + 1 bytes): the body, and whether all of
    /// it was read (else the connection closes after the answer).
    async fn read_body(&mut self, kind: BodyKind, limit: usize) -> io::Result<(Body, bool)> {
        match kind {
            BodyKind::Length(0) => Ok((Body::empty(), true)),
            BodyKind::Length(n) => {
                if n > limit as u64 {
                    // The handler refuses it by its Content-Length; a handler that reads
                    // it anyway fails as on a body past its limit.
                    let err = futures_util::stream::once(async {
                        Err::<Bytes, _>(io::Error::other("request body too large"))
                    });
                    return Ok((Body::from_stream(err), false));
                }
                let n = n as usize;
                let mut body = BytesMut::with_capacity(n);
                let have = self.buf.len().min(n);
                body.extend_from_slice(&self.buf[..have]);
                self.buf.advance(have);
                self.release_buf();
                while body.len() < n {
                    self.tcp.readable().await?;
                    let left = n - body.len();
                    let mut limited = (&mut body).limit(left);
                    match backstop::http1::read_buf(&self.tcp, &mut limited) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((Body::from(body.freeze()), true))
            }
            BodyKind::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                let mut out = BytesMut::new();
                loop {
                    if !self.buf.is_empty() {
                        let used = decoder
                            .decode(&self.buf, &mut out, limit)
                            .map_err(|()| io::Error::other("malformed chunked body"))?;
                        self.buf.advance(used);
                        self.release_buf();
                        if decoder.done() {
                            return Ok((Body::from(out.freeze()), true));
                        }
                        if out.len() > limit {
                            return Ok((Body::from(out.freeze()), false));
                        }
                    }
                    if self.read_more().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }

    /// Serve one request: what the connection does next.
    async fn one(&mut self, first: bool) -> Next {
        // The request's part is boxed: a connection's task is as large as its largest
        // state, and a streamed answer waits long in the response's (which is small).
        let (response, facts) = match Box::pin(self.request(first)).await {
            Ok(r) => r,
            Err(next) => return next,
        };
        match self.respond(response, facts).await {
            Ok(true) if !self.stop.is_cancelled() => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    /// Read one request and call the router: its response, or (when there is none to
    /// write) what the connection does next.
    async fn request(&mut self, first: bool) -> Result<(Response<Body>, ReqFacts), Next> {
        let head = match self.read_head(first).await {
            None => return Err(Next::Close),
            Some(Err(e)) => {
                self.refuse(e).await;
                return Err(Next::Close);
            }
            Some(Ok(head)) => head,
        };
        let Head {
            request,
            body: kind,
            mut keep_alive,
            expect_continue,
        } = head;
        let facts_http10 = request.version() == Version::HTTP_10;
        let is_head = request.method() == Method::HEAD;
        let has_body = kind != BodyKind::Length(0);
        let limit = (self.shared.max_body)();
        if expect_continue && has_body && !facts_http10 {
            let fits = match kind {
                BodyKind::Length(n) => n <= limit as u64,
                BodyKind::Chunked => true,
            };
            if fits
                && self
                    .tcp
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return Err(Next::Close);
            }
        }
        let (body, whole) = match self.read_body(kind, limit).await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Other => {
                self.refuse(HeadError::Malformed).await;
                return Err(Next::Close);
            }
            Err(_) => return Err(Next::Close),
        };
        if !whole {
            keep_alive = false;
        }
        let request = request.map(|()| body);
        let direct = self
            .shared
            .direct
            .as_ref()
            .and_then(|d| Some((d, d.route(&request)?)));
        let mut fut = match direct {
            Some((direct, ingress)) => Either::Left(direct.call(ingress, request)),
            None => Either::Right(self.shared.router.call(request)),
        };
        let response = loop {
            let watching = self.buf.len() < MAX_PENDING && whole;
            tokio::select! {
                biased;
                r = &mut fut => match r {
                    Ok(resp) => break resp,
                    Err(never) => match never {},
                },
                w = poll_fn(|cx| self.poll_watch(cx)), if watching => match w {
                    Watch::More => {}
                    Watch::Gone => return Err(Next::Close),
                },
            }
        };
        if self.stop.is_cancelled() {
            keep_alive = false;
        }
        let facts = ReqFacts {
            head: is_head,
            http10: facts_http10,
            keep_alive,
        };
        Ok((response, facts))
    }

    /// Write a response: whether the connection may serve another request. (Its head
    /// is encoded before the writing future is made: that future, which a stream lives
    /// in, keeps only what the writing needs.)
    fn respond(
        &mut self,
        response: Response<Body>,
        facts: ReqFacts,
    ) -> impl Future<Output = io::Result<bool>> + '_ {
        let (mut parts, body) = response.into_parts();
        let length = body_length(&body);
        let mut head = Vec::with_capacity(64 + parts.headers.len() * 32);
        let (framing, is_last) =
            encode_head(&mut head, parts.status, &mut parts.headers, length, facts);
        drop(parts);
        self.write_response(head, body, length, framing, is_last)
    }

    async fn write_response(
        &mut self,
        head: Vec<u8>,
        mut body: Body,
        length: BodyLength,
        framing: Framing,
        is_last: bool,
    ) -> io::Result<bool> {
        let has_body = framing != Framing::Length(0) && length != BodyLength::Empty;
        if !has_body {
            self.tcp.write_all(&head).await?;
            return Ok(!is_last);
        }
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut pending_head = Some(head);
        let mut size_buf = [0u8; 18];
        loop {
            // The first frame goes with the head when it is there already.
            let frame = if pending_head.is_some() {
                match futures_util::FutureExt::now_or_never(poll_fn(|cx| {
                    Pin::new(&mut body).poll_frame(cx)
                })) {
                    Some(f) => f,
                    None => {
                        if let Some(h) = pending_head.take() {
                            self.tcp.write_all(&h).await?;
                        }
                        continue;
                    }
                }
            } else {
                let mut frame = None;
                while frame.is_none() {
                    let watching = self.buf.len() < MAX_PENDING;
                    tokio::select! {
                        biased;
                        f = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame = Some(f),
                        w = poll_fn(|cx| self.poll_watch(cx)), if watching => match w {
                            Watch::More => {}
                            Watch::Gone => return Ok(false),
                        },
                    }
                }
                frame.unwrap_or(None)
            };
            let head_bytes = pending_head.take().unwrap_or_default();
            let data = match frame {
                None => {
                    // The end.
                    let tail: &[u8] = if framing == Framing::Chunked {
                        b"0\r\n\r\n"
                    } else {
                        b""
                    };
                    write_all_vectored(
                        &mut self.tcp,
                        &mut [IoSlice::new(&head_bytes), IoSlice::new(tail)],
                    )
                    .await?;
                    return Ok(reusable(is_last, framing, remaining));
                }
                Some(Err(e)) => {
                    tracing::debug!("response body failed: {e}");
                    if !head_bytes.is_empty() {
                        let _ = self.tcp.write_all(&head_bytes).await;
                    }
                    return Ok(false);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => Bytes::new(), // trailers: not sent (as hyper without `te: trailers`)
                },
            };
            let ended = body.is_end_stream();
            let mut data = data;
            if let Framing::Length(_) = framing {
                if data.len() as u64 > remaining {
                    data.truncate(remaining as usize);
                }
                remaining -= data.len() as u64;
            }
            if data.is_empty() && !ended {
                if !head_bytes.is_empty() {
                    self.tcp.write_all(&head_bytes).await?;
                }
                continue;
            }
            if framing == Framing::Chunked {
                let size: &[u8] = if data.is_empty() {
                    b""
                } else {
                    chunk_size_line(data.len(), &mut size_buf)
                };
                let crlf: &[u8] = if data.is_empty() { b"" } else { b"\r\n" };
                let end: &[u8] = if ended { b"0\r\n\r\n" } else { b"" };
                write_all_vectored(
                    &mut self.tcp,
                    &mut [
                        IoSlice::new(&head_bytes),
                        IoSlice::new(size),
                        IoSlice::new(&data),
                        IoSlice::new(crlf),
                        IoSlice::new(end),
                    ],
                )
                .await?;
            } else {
                write_all_vectored(
                    &mut self.tcp,
                    &mut [IoSlice::new(&head_bytes), IoSlice::new(&data)],
                )
                .await?;
            }
            if ended {
                return Ok(reusable(is_last, framing, remaining));
            }
        }
    }
}

/// A connection's bytes read already, then the socket.
struct Rewind {
    pre: Bytes,
    tcp: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// HTTP/2 with prior knowledge (h2c), by hyper as before.
async fn serve_h2(tcp: TcpStream, pre: Bytes, router: Router, stop: CancellationToken) {
    let io = hyper_util::rt::TokioIo::new(Rewind { pre, tcp });
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        router.clone().call(req.map(Body::new))
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.enable_connect_protocol();
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!("failed to serve connection: {e:#}");
                }
                break;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
