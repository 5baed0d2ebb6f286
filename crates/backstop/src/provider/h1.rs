//! Backstop's own HTTP/1.1 client, for plain-`http://` upstreams (local model servers,
//! sidecars, the tests and the bench). `https` upstreams keep hyper's pooled client
//! (HTTP/2 through ALPN).
//!
//! No connection task and no channel: a [`Response`] owns its connection while its body
//! is read, and [`Response::chunk`] reads and decodes the body inline (content-length,
//! chunked with extensions and trailers, close-delimited). A body that ends cleanly on a
//! connection that may be kept gives the connection back to its upstream's [`Pool`]; a
//! response dropped before its end closes it. No buffer is held while a response waits
//! for its upstream: one is allocated when there is something to read, and the body's
//! bytes are handed out as slices of it.

use super::{TransportError, error_chain, is_timeout};
use crate::http1::{ChunkedDecoder, Step, has_token, is_chunked};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per upstream (nginx in bench/ keeps 256).
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed (when next seen, or by the sweep).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a pool that holds idle connections is swept: those past [`IDLE_TIMEOUT`]
/// and those the server closed are closed then, not only when the pool is next used (a
/// quiet upstream would otherwise keep its closed sockets in CLOSE_WAIT).
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The largest response head read (hyper's default limit is ~400 KB; 64 KB is plenty).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have.
const MAX_HEADERS: usize = 100;
/// Headers parsed on the first try (a larger array is tried when there are more).
const FEW_HEADERS: usize = 24;
/// The first read's size; doubled while reads fill the buffer, up to [`MAX_READ`].
const READ_SIZE: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// The TCP connector (hyper-util's: name lookup, connect timeout, TCP_NODELAY,
/// keepalive) and the idle connections of one upstream.
pub(super) struct Client {
    connector: HttpConnector,
    connect_timeout: Duration,
    pool: Arc<Pool>,
}

#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<IdleSet>,
}

/// The idle connections, oldest first, and whether a sweep task is running for them
/// (one runs while there are any: [`Pool::checkin`] starts it, it ends when the pool is
/// empty or dropped).
#[derive(Default)]
struct IdleSet {
    conns: VecDeque<Idle>,
    sweeping: bool,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl Pool {
    /// An idle connection still open, if there is one (the most recently used first).
    fn checkout(&self) -> Option<TcpStream> {
        loop {
            let idle = {
                let mut set = self.idle.lock().ok()?;
                let i = set.conns.pop_back()?;
                if i.since.elapsed() >= IDLE_TIMEOUT {
                    // The rest are older still.
                    set.conns.clear();
                    return None;
                }
                i
            };
            if idle.still_open() {
                return Some(idle.stream);
            }
        }
    }

    fn checkin(self: &Arc<Self>, stream: TcpStream) {
        let Ok(mut set) = self.idle.lock() else {
            return;
        };
        while set
            .conns
            .front()
            .is_some_and(|i| i.since.elapsed() >= IDLE_TIMEOUT)
        {
            set.conns.pop_front();
        }
        if set.conns.len() < MAX_IDLE {
            set.conns.push_back(Idle {
                stream,
                since: Instant::now(),
            });
        }
        if !set.sweeping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            set.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Close the idle connections that are too old or no longer open; whether any are
    /// left (when none are, the sweep ends: the next check-in starts another).
    fn sweep_once(&self) -> bool {
        let Ok(mut set) = self.idle.lock() else {
            return false;
        };
        set.conns
            .retain(|i| i.since.elapsed() < IDLE_TIMEOUT && i.still_open());
        set.sweeping = !set.conns.is_empty();
        set.sweeping
    }
}

/// Sweep a pool every [`SWEEP_EVERY`] while it holds idle connections and exists.
async fn sweep(pool: std::sync::Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match pool.upgrade() {
            Some(pool) if pool.sweep_once() => {}
            _ => return,
        }
    }
}

impl Idle {
    /// Still open? Nothing may be waiting on an idle connection: a close (0) or bytes the
    /// server should not have sent both make it useless. Without read readiness (the
    /// body's last read was short, see `http1::read_buf`) nothing has come since, and no
    /// read is needed to know it.
    fn still_open(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => return true,
            std::task::Poll::Ready(Err(_)) => return false,
            std::task::Poll::Ready(Ok(())) => {}
        }
        matches!(
            self.stream.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

/// A failed exchange, and whether any byte of an answer had come (a request unanswered
/// on a pooled connection may be sent again).
struct Failed {
    error: TransportError,
    unanswered: bool,
}

impl Client {
    pub(super) fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        connector.set_nodelay(true);
        Client {
            connector,
            connect_timeout,
            pool: Arc::new(Pool::default()),
        }
    }

    /// Send `head` (the request head, all of it) and `body`; return once the response
    /// head has come. A request on a pooled connection that got no byte of answer (the
    /// server closed the idle connection as the request crossed) is sent once more on a
    /// new connection if `may_resend` agrees.
    pub(super) async fn send(
        &self,
        uri: &Uri,
        head: &[u8],
        body: &[u8],
        keep_alive: bool,
        may_resend: impl FnOnce() -> bool,
    ) -> Result<Response, TransportError> {
        if let Some(stream) = self.pool.checkout() {
            match self.exchange(stream, head, body, keep_alive).await {
                Ok(r) => return Ok(r),
                Err(f) if f.unanswered && matches!(f.error, TransportError::Reset(_)) => {
                    if !may_resend() {
                        return Err(f.error);
                    }
                }
                Err(f) => return Err(f.error),
            }
        }
        let stream = self.connect(uri).await?;
        self.exchange(stream, head, body, keep_alive)
            .await
            .map_err(|f| f.error)
    }

    async fn connect(&self, uri: &Uri) -> Result<TcpStream, TransportError> {
        let mut connector = self.connector.clone();
        let connect = tower_service::Service::call(&mut connector, uri.clone());
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(TransportError::ConnectTimeout),
            Ok(Err(e)) if is_timeout(&e) => Err(TransportError::ConnectTimeout),
            Ok(Err(e)) => Err(TransportError::Connect(error_chain(&e))),
            Ok(Ok(io)) => Ok(io.into_inner()),
        }
    }

    async fn exchange(
        &self,
        stream: TcpStream,
        head: &[u8],
        body: &[u8],
        keep_alive: bool,
    ) -> Result<Response, Failed> {
        if let Err(e) = write_all(&stream, head, body).await {
            return Err(Failed {
                error: TransportError::Reset(format!("connection error: {e}")),
                unanswered: true,
            });
        }
        let mut conn = Body {
            stream: Some(stream),
            buf: Bytes::new(),
            framing: Framing::Done,
            keep_alive,
            read_size: READ_SIZE,
            pool: Arc::clone(&self.pool),
        };
        let mut answered = false;
        loop {
            if !conn.buf.is_empty() {
                answered = true;
                match parse_head(&mut conn.buf) {
                    Ok(Some(head)) if head.status.is_informational() => continue,
                    Ok(Some(head)) => {
                        conn.framing = head.framing;
                        conn.keep_alive &= head.keep_alive;
                        let mut response = Response {
                            status: head.status,
                            head: head.raw,
                            headers: OnceLock::new(),
                            content_type: head.content_type,
                            body: conn,
                        };
                        response.body.end_if_done();
                        return Ok(response);
                    }
                    Ok(None) if conn.buf.len() >= MAX_HEAD => {
                        return Err(Failed {
                            error: TransportError::Reset("message head is too large".into()),
                            unanswered: false,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(Failed {
                            error: TransportError::Reset(e),
                            unanswered: false,
                        });
                    }
                }
            }
            match conn.fill().await {
                Ok(0) => {
                    return Err(Failed {
                        error: TransportError::Reset(
                            "connection closed before message completed".into(),
                        ),
                        unanswered: !answered,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failed {
                        error: TransportError::Reset(format!("connection error: {e}")),
                        unanswered: !answered,
                    });
                }
            }
        }
    }
}

/// Write `head` and `body`, in one vectored write when the socket takes it all.
async fn write_all(stream: &TcpStream, mut head: &[u8], mut body: &[u8]) -> io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let written = if head.is_empty() {
            stream.try_write(body)
        } else {
            stream.try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                let h = n.min(head.len());
                head = &head[h..];
                n -= h;
                body = &body[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A response head, parsed.
struct Head {
    status: StatusCode,
    /// The head as it came (its header map is built only when asked for).
    raw: Bytes,
    content_type: Option<Bytes>,
    framing: Framing,
    keep_alive: bool,
}

/// Parse a response head at the start of `buf`; on success it is taken off `buf`.
/// `None`: not all of it has come.
fn parse_head(buf: &mut Bytes) -> Result<Option<Head>, String> {
    let parsed = {
        let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
        let mut response = httparse::Response::new(&mut few);
        match response.parse(&buf[..]) {
            Ok(status) => head_of(buf, &response, status),
            Err(httparse::Error::TooManyHeaders) => {
                let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut many);
                match response.parse(&buf[..]) {
                    Ok(status) => head_of(buf, &response, status),
                    Err(e) => Err(format!("invalid HTTP response: {e}")),
                }
            }
            Err(e) => Err(format!("invalid HTTP response: {e}")),
        }
    }?;
    Ok(parsed.map(|(head, len)| {
        buf.advance(len);
        head
    }))
}

/// The head `response` parsed from `buf`, and its length.
fn head_of(
    buf: &Bytes,
    response: &httparse::Response<'_, '_>,
    status: httparse::Status<usize>,
) -> Result<Option<(Head, usize)>, String> {
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| "invalid HTTP status-code parsed")?;
    if code == 101 {
        return Err("received an unexpected 101 Switching Protocols".into());
    }
    let mut keep_alive = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut content_type = None;
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value).ok_or("invalid content-length parsed")?;
            if length.is_some_and(|l| l != n) {
                return Err("invalid content-length parsed".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = Some(is_chunked(h.value));
        } else if name.eq_ignore_ascii_case(b"content-type") {
            content_type.get_or_insert_with(|| buf.slice_ref(h.value));
        } else if name.eq_ignore_ascii_case(b"connection") && has_token(h.value, b"close") {
            keep_alive = false;
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) => {
                // A length beside a chunked coding: not a message to keep a
                // connection for.
                keep_alive &= length.is_none();
                Framing::Chunked(ChunkedDecoder::default())
            }
            (Some(false), _) | (None, None) => {
                keep_alive = false;
                Framing::Close
            }
            (None, Some(n)) => Framing::Length(n),
        }
    };
    Ok(Some((
        Head {
            status,
            raw: buf.slice(..len),
            content_type,
            framing,
            keep_alive,
        },
        len,
    )))
}

/// The header map of a head already parsed once (`raw`): built only when asked for
/// (a streamed answer's head is dropped unread). httparse checked the names and values
/// against the same rules as `HeaderName` and `HeaderValue`.
fn header_map(raw: &Bytes) -> HeaderMap {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut parsed);
    let mut headers = HeaderMap::new();
    if response.parse(raw).is_ok() {
        headers.reserve(response.headers.len());
        for h in response.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_maybe_shared(raw.slice_ref(h.value)),
            ) {
                headers.append(name, value);
            }
        }
    }
    headers
}

/// A `content-length` value: digits, or a list of equal ones.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// At the connection's close.
    Close,
    /// It has ended (or broken).
    Done,
}

/// A response's body: its connection, and what has been read and not yet handed out.
struct Body {
    stream: Option<TcpStream>,
    buf: Bytes,
    framing: Framing,
    keep_alive: bool,
    read_size: usize,
    pool: Arc<Pool>,
}

impl Body {
    /// Read what the connection has (waiting for it) after what `buf` holds; `Ok(0)`
    /// at its end. No buffer is held while waiting.
    async fn fill(&mut self) -> io::Result<usize> {
        let Some(stream) = &self.stream else {
            return Ok(0);
        };
        // The socket's read readiness is awaited directly (the task's waker kept in the
        // socket), not by `readable()`, which links a waiter into the socket's list and
        // unlinks it again on every wait.
        let readable = || std::future::poll_fn(|cx| stream.poll_read_ready(cx));
        loop {
            if self.buf.is_empty() {
                // An empty slice may still hold the last read's buffer.
                self.buf = Bytes::new();
                readable().await?;
            } else if futures_util::FutureExt::now_or_never(readable()).is_none() {
                // A partial line kept over a wait: not the whole read buffer with it.
                self.buf = Bytes::copy_from_slice(&self.buf);
                readable().await?;
            }
            let mut read = BytesMut::with_capacity(self.buf.len() + self.read_size);
            read.extend_from_slice(&self.buf);
            match crate::http1::read_buf(stream, &mut read) {
                Ok(n) => {
                    if n == self.read_size && self.read_size < MAX_READ {
                        self.read_size *= 2;
                    }
                    if n > 0 {
                        self.buf = read.freeze();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decode what `buf` holds.
    fn decode(&mut self) -> Result<Step, &'static str> {
        match &mut self.framing {
            Framing::Done => Ok(Step::End),
            Framing::Length(0) => Ok(Step::End),
            Framing::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                *left -= n as u64;
                Ok(Step::Data(self.buf.split_to(n)))
            }
            Framing::Close => {
                if self.buf.is_empty() {
                    Ok(Step::More)
                } else {
                    Ok(Step::Data(std::mem::take(&mut self.buf)))
                }
            }
            Framing::Chunked(decoder) => decoder.decode(&mut self.buf),
        }
    }

    /// The body has ended: give the connection back if it may be kept.
    fn end(&mut self) {
        self.framing = Framing::Done;
        if let Some(stream) = self.stream.take()
            && self.keep_alive
            && self.buf.is_empty()
        {
            self.pool.checkin(stream);
        }
        self.buf = Bytes::new();
    }

    /// A body with nothing in it ends at once.
    fn end_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.end();
        }
    }

    fn fail(&mut self) {
        self.framing = Framing::Done;
        self.stream = None;
        self.buf = Bytes::new();
    }
}

/// A response from an `http://` upstream: its head, and its connection while its body
/// is read.
pub(super) struct Response {
    status: StatusCode,
    head: Bytes,
    headers: OnceLock<HeaderMap>,
    content_type: Option<Bytes>,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", self.headers())
            .finish_non_exhaustive()
    }
}

impl Response {
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        self.headers.get_or_init(|| header_map(&self.head))
    }

    /// The first `content-type`, without building the header map.
    pub(super) fn content_type(&self) -> Option<&[u8]> {
        self.content_type.as_deref()
    }

    pub(super) fn forget_head(&mut self) {
        self.head = Bytes::new();
        self.headers = OnceLock::new();
        self.content_type = None;
    }

    /// The next piece of the body; `None` at its end. Cancel-safe: what has been read
    /// is kept in `self` across the one wait.
    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.body.decode() {
                Ok(Step::Data(b)) => {
                    if self.body.framing == Framing::Length(0) {
                        self.body.end();
                    }
                    return Ok(Some(b));
                }
                Ok(Step::End) => {
                    if self.body.framing != Framing::Done {
                        self.body.end();
                    }
                    return Ok(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.body.fail();
                    return Err(TransportError::Reset(format!(
                        "error reading a body from connection: {e}"
                    )));
                }
            }
            match self.body.fill().await {
                Ok(0) if self.body.framing == Framing::Close => {
                    self.body.keep_alive = false;
                    self.body.end();
                    return Ok(None);
                }
                Ok(0) => {
                    self.body.fail();
                    return Err(TransportError::Reset(
                        "error reading a body from connection: end of file before message length reached"
                            .into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    self.body.fail();
                    return Err(TransportError::Reset(format!(
                        "error reading a body from connection: {e}"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
