//! Upstream providers: one file per upstream kind, each with the same shape —
//! constants, credentials (how a key becomes headers), the endpoint URL — and
//! this module's [`Upstream`], which owns the pooled HTTP client and sends.
//!
//! Wire types and conversions live in [`crate::wire`]; classification of what
//! comes back lives in [`crate::failover`].

pub mod anthropic;
pub mod gemini;
mod h1;
pub mod openai;

use crate::chat::WireFormat;
use crate::config::{AuthProfile, Config, ProviderConfig, Timeouts};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

/// A transport-level failure: no HTTP response was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connection timed out")]
    ConnectTimeout,
    #[error("connection reset or closed before a response: {0}")]
    Reset(String),
    #[error("request failed: {0}")]
    Other(String),
}

impl TransportError {
    /// A failure to send a request and receive its response head. The messages are the
    /// errors' own (never a header value; the client's errors name no URL).
    fn from_client(e: &hyper_util::client::legacy::Error) -> Self {
        // The client's own message is only "client error (Kind)": its causes say more.
        let text = match std::error::Error::source(e) {
            Some(cause) => error_chain(cause),
            None => e.to_string(),
        };
        if is_timeout(e) {
            TransportError::ConnectTimeout
        } else if e.is_connect() {
            TransportError::Connect(text)
        } else {
            TransportError::Reset(text)
        }
    }
}

/// Whether an I/O timeout is among an error's causes (a connect that took too long).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// An error's message with its sources, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// An upstream's response: its head, and its body read chunk by chunk.
#[derive(Debug)]
pub struct Response(Inner);

/// Who reads it: hyper's client (`https`), or Backstop's own HTTP/1.1 client (`http`).
#[derive(Debug)]
enum Inner {
    Hyper(http::Response<Incoming>),
    H1(h1::Response),
}

impl Response {
    pub fn status(&self) -> http::StatusCode {
        match &self.0 {
            Inner::Hyper(r) => r.status(),
            Inner::H1(r) => r.status(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match &self.0 {
            Inner::Hyper(r) => r.headers(),
            Inner::H1(r) => r.headers(),
        }
    }

    /// The `content-type` header's value (the first, when several came).
    pub fn content_type(&self) -> Option<&[u8]> {
        match &self.0 {
            Inner::Hyper(r) => r
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Inner::H1(r) => r.content_type(),
        }
    }

    /// Drop the response's head (headers, extensions) once it has been read, keeping the
    /// body. hyper parses header values as slices of the connection's read buffer, so a
    /// head kept for a stream's whole life keeps that buffer alive and makes the
    /// connection allocate another one for the body (8 KB a stream).
    pub fn forget_head(&mut self) {
        match &mut self.0 {
            Inner::Hyper(r) => {
                *r.headers_mut() = HeaderMap::new();
                r.extensions_mut().clear();
            }
            Inner::H1(r) => r.forget_head(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        let r = match &mut self.0 {
            Inner::Hyper(r) => r,
            Inner::H1(r) => return r.chunk().await,
        };
        loop {
            match r.body_mut().frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(TransportError::Reset(error_chain(&e))),
                Some(Ok(frame)) => {
                    // Trailers (HTTP/2) carry nothing we read.
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// The connector: TCP (and TLS for `https`), the whole of it within the connect timeout
/// (a name lookup or a TLS handshake that hangs is a connect that does not happen).
#[derive(Clone)]
struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream connection that knows when it was opened, and says so in its
/// `Connected` info (which hyper-util attaches to a request's error): a request that
/// failed on a connection opened before it was sent went out on a pooled one.
struct Connection {
    inner: Stream,
    opened: OpenedAt,
}

/// When a connection was opened (its `Connected` extra).
#[derive(Clone, Copy)]
struct OpenedAt(tokio::time::Instant);

impl hyper_util::client::legacy::connect::Connection for Connection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected().extra(self.opened)
    }
}

impl hyper::rt::Read for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether the request behind `e` went out on a connection opened before `sent`.
fn on_pooled_connection(e: &hyper_util::client::legacy::Error, sent: tokio::time::Instant) -> bool {
    let Some(info) = e.connect_info() else {
        return false;
    };
    let mut ext = http::Extensions::new();
    info.get_extras(&mut ext);
    ext.get::<OpenedAt>().is_some_and(|o| o.0 < sent)
}

impl tower_service::Service<Uri> for Connector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r.map(|inner| Connection {
                    inner,
                    opened: OpenedAt(tokio::time::Instant::now()),
                }),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", timeout.as_millis()),
                )
                .into()),
            }
        })
    }
}

/// One configured provider with its pooled HTTP client.
pub struct Upstream {
    pub config: ProviderConfig,
    client: Client<Connector, Full<Bytes>>,
    /// The endpoint parsed once, when it does not depend on the model (OpenAI and
    /// Anthropic): parsing a URL on every request showed in profiles.
    fixed_uri: Option<Uri>,
    /// `config.headers`, parsed once (the config checked them; values are marked
    /// sensitive: they may hold secrets).
    extra_headers: HeaderMap,
    /// Backstop's own HTTP/1.1 client, for an `http://` upstream.
    h1: Option<H1>,
    /// Whether Backstop adds `stream_options` for this server: decided once from its API
    /// and host, and turned off for good (until the config reloads) when it refuses it.
    sends_stream_options: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.config)
            .field("fixed_uri", &self.fixed_uri)
            .finish_non_exhaustive()
    }
}

static INSTALL_CRYPTO: Once = Once::new();

/// Install the process's rustls crypto provider (ring) once: HTTPS upstreams and
/// `rediss://` both need it.
pub(crate) fn install_crypto_provider() {
    INSTALL_CRYPTO.call_once(|| {
        // Another part of the process may have installed one already: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

const USER_AGENT_VALUE: HeaderValue =
    HeaderValue::from_static(concat!("backstop/", env!("CARGO_PKG_VERSION")));

/// A pooled HTTP client: HTTP/2 through ALPN for `https`, HTTP/1.1 otherwise; no proxy,
/// no redirects followed (hyper follows none), no retries of its own beyond a request
/// that never left on a pooled connection found closed.
fn client(timeouts: &Timeouts) -> Result<Client<Connector, Full<Bytes>>, String> {
    install_crypto_provider();
    let connect = Duration::from_millis(timeouts.connect_ms);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    http.set_keepalive(Some(Duration::from_secs(30)));
    http.set_nodelay(true);
    let tls = HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("cannot load the system's TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let connector = Connector {
        inner: tls,
        timeout: connect,
    };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // As many idle upstream connections as a busy gateway has requests in flight
        // (nginx in bench/ keeps 256): at 128 connections a limit of 64 made every
        // other request open a new upstream connection.
        .pool_max_idle_per_host(256)
        // hyper's adaptive read buffer is kept: an exact 4 KiB one saved 0.8 KB per slow
        // stream (53.6 → 52.8 KB), but caps a response head at that size.
        .build(connector))
}

/// What an `http://` upstream's requests are sent with: the client, and the parts of
/// the request head that do not change, written once.
struct H1 {
    client: h1::Client,
    /// `POST {path} HTTP/1.1\r\n` for a fixed endpoint.
    request_line: Option<Vec<u8>>,
    /// The headers before the credentials: content-type, accept (for `stream` false,
    /// true), user-agent, and Anthropic's version.
    common: [Vec<u8>; 2],
    /// `config.headers` (the last value of each name, in the order a header map keeps
    /// them) and `host`; `None` when a configured header names one that Backstop sets
    /// itself: then the head is written from the same header map that hyper is given.
    tail: Option<Vec<u8>>,
}

/// Headers Backstop sets on a request itself (or hyper, for `https`).
const OWN_HEADERS: [&str; 12] = [
    "content-type",
    "accept",
    "user-agent",
    "authorization",
    "anthropic-version",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-beta",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// `Host`'s value for `uri`, as hyper-util writes it (the port unless the default).
fn host_value(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) if port != 80 => format!("{host}:{port}"),
        _ => host.to_string(),
    }
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// `content-length: {len}\r\n\r\n`, the head's end.
fn push_length_and_end(head: &mut Vec<u8>, len: usize) {
    head.extend_from_slice(b"content-length: ");
    crate::wire::push_u64(head, len as u64);
    head.extend_from_slice(b"\r\n\r\n");
}

fn push_request_line(head: &mut Vec<u8>, uri: &Uri) {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    head.extend_from_slice(b" HTTP/1.1\r\n");
}

impl H1 {
    fn new(
        config: &ProviderConfig,
        fixed_uri: Option<&Uri>,
        extra_headers: &HeaderMap,
        connect_timeout: Duration,
    ) -> Option<Self> {
        let uri = match fixed_uri {
            Some(u) => u.clone(),
            None => gemini::endpoint(&config.base_url, "m", false)
                .parse::<Uri>()
                .ok()?,
        };
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let request_line = fixed_uri.map(|u| {
            let mut line = Vec::new();
            push_request_line(&mut line, u);
            line
        });
        let common = [false, true].map(|stream| {
            let mut h = Vec::new();
            push_header(&mut h, b"content-type", b"application/json");
            push_header(
                &mut h,
                b"accept",
                if stream {
                    b"text/event-stream"
                } else {
                    b"application/json"
                },
            );
            push_header(&mut h, b"user-agent", USER_AGENT_VALUE.as_bytes());
            if config.api == WireFormat::Anthropic {
                push_header(
                    &mut h,
                    b"anthropic-version",
                    crate::wire::anthropic::API_VERSION.as_bytes(),
                );
            }
            h
        });
        let tail = if extra_headers
            .keys()
            .any(|k| OWN_HEADERS.contains(&k.as_str()))
        {
            None
        } else {
            // As `Upstream::headers` puts them in the request's map: the last value of
            // a name, where the name first came.
            let mut map = HeaderMap::new();
            for (name, value) in extra_headers {
                map.insert(name, value.clone());
            }
            let mut tail = Vec::new();
            for (name, value) in &map {
                push_header(&mut tail, name.as_str().as_bytes(), value.as_bytes());
            }
            push_header(&mut tail, b"host", host_value(&uri).as_bytes());
            Some(tail)
        };
        Some(H1 {
            client: h1::Client::new(connect_timeout),
            request_line,
            common,
            tail,
        })
    }
}

/// Whether a credential may go in a header as it is (`HeaderValue::from_str`'s rule).
fn check_header_value(value: &str) -> Result<(), TransportError> {
    if value.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t') {
        Ok(())
    } else {
        Err(TransportError::Other(
            "a credential holds characters not allowed in a header".into(),
        ))
    }
}

/// A header value that may hold a key: never logged, never shown.
fn secret_header(value: &str) -> Result<HeaderValue, TransportError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        TransportError::Other("a credential holds characters not allowed in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Upstream {
    pub fn new(config: ProviderConfig, timeouts: &Timeouts) -> Result<Self, String> {
        let client = client(timeouts).map_err(|e| format!("providers.{}: {e}", config.id))?;
        let fixed_uri = match config.api {
            WireFormat::OpenAi => Some(openai::endpoint(&config.base_url)),
            WireFormat::Anthropic => Some(anthropic::endpoint(&config.base_url)),
            WireFormat::Gemini => None,
        }
        .and_then(|u| u.parse::<Uri>().ok());
        let mut extra_headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("providers.{}.headers.{name}: not a header name", config.id)
            })?;
            let value = secret_header(value.expose()).map_err(|_| {
                format!("providers.{}.headers.{name}: not a header value", config.id)
            })?;
            extra_headers.append(name, value);
        }
        let h1 = H1::new(
            &config,
            fixed_uri.as_ref(),
            &extra_headers,
            Duration::from_millis(timeouts.connect_ms),
        );
        let sends_stream_options = AtomicBool::new(
            config.api == WireFormat::OpenAi && openai::accepts_stream_options(&config.base_url),
        );
        Ok(Upstream {
            config,
            client,
            fixed_uri,
            extra_headers,
            h1,
            sends_stream_options,
        })
    }

    /// Whether Backstop adds `stream_options` (usage in a stream) to what it sends this
    /// OpenAI-compatible server: not to hosts known to reject it
    /// ([`openai::accepts_stream_options`]), nor once this one refused it.
    pub fn sends_stream_options(&self) -> bool {
        self.sends_stream_options.load(Ordering::Relaxed)
    }

    /// The server refused `stream_options`: stop sending it. True when it was being sent
    /// (the first refusal).
    pub fn refuse_stream_options(&self) -> bool {
        self.sends_stream_options.swap(false, Ordering::Relaxed)
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn api(&self) -> WireFormat {
        self.config.api
    }

    /// The URL a request for `model` goes to.
    pub fn endpoint(&self, model: &str, stream: bool) -> String {
        match self.config.api {
            WireFormat::OpenAi => openai::endpoint(&self.config.base_url),
            WireFormat::Anthropic => anthropic::endpoint(&self.config.base_url),
            WireFormat::Gemini => gemini::endpoint(&self.config.base_url, model, stream),
        }
    }

    /// Send a prepared JSON body with `profile`'s credentials. Returns as soon as the
    /// response head has arrived; the body is read by the caller. A redirect is not
    /// followed: a key must reach no host but its provider's `base_url`, so a 3xx is
    /// returned like any other status (a failure).
    ///
    /// A pooled keep-alive connection that the server closed while it sat idle fails the
    /// request sent on it before any answer (the server's close and the request crossed):
    /// that is no failure of the provider, so such a request is sent once more, on a new
    /// connection.
    pub async fn send(
        &self,
        profile: &AuthProfile,
        model: &str,
        body: Bytes,
        stream: bool,
    ) -> Result<Response, TransportError> {
        self.send_with_beta(profile, model, body, stream, None, || true)
            .await
    }

    /// [`Upstream::send`], with a client's `anthropic-beta` header, which goes only to an
    /// Anthropic upstream; `may_resend` is asked before a request that met a closed
    /// pooled connection is sent once more (the engine spends retry budget on it: a
    /// provider that resets every request must not see each one twice unbounded).
    pub async fn send_with_beta(
        &self,
        profile: &AuthProfile,
        model: &str,
        body: Bytes,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
        may_resend: impl FnOnce() -> bool,
    ) -> Result<Response, TransportError> {
        let uri = match &self.fixed_uri {
            Some(uri) => uri.clone(),
            None => self.endpoint(model, stream).parse::<Uri>().map_err(|e| {
                TransportError::Other(format!("the provider's URL is not valid: {e}"))
            })?,
        };
        if let Some(h1) = &self.h1 {
            let (head, keep_alive) =
                self.h1_head(h1, &uri, profile, body.len(), stream, anthropic_beta)?;
            return h1
                .client
                .send(&uri, &head, &body, keep_alive, may_resend)
                .await
                .map(|r| Response(Inner::H1(r)));
        }
        let sent = tokio::time::Instant::now();
        let req = self.request(uri.clone(), profile, body.clone(), stream, anthropic_beta)?;
        match self.client.request(req).await {
            Ok(r) => Ok(Response(Inner::Hyper(r))),
            Err(e) => {
                let err = TransportError::from_client(&e);
                let pooled = on_pooled_connection(&e, sent);
                if !(pooled && matches!(err, TransportError::Reset(_)) && may_resend()) {
                    return Err(err);
                }
                let req = self.request(uri, profile, body, stream, anthropic_beta)?;
                self.client
                    .request(req)
                    .await
                    .map(|r| Response(Inner::Hyper(r)))
                    .map_err(|e| TransportError::from_client(&e))
            }
        }
    }

    /// The request head for an `http://` upstream, and whether its connection may be
    /// kept (not when a configured header asks for its close).
    fn h1_head(
        &self,
        h1: &H1,
        uri: &Uri,
        profile: &AuthProfile,
        body_len: usize,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
    ) -> Result<(Vec<u8>, bool), TransportError> {
        let Some(tail) = &h1.tail else {
            return self.h1_head_from_map(uri, profile, body_len, stream, anthropic_beta);
        };
        let common = &h1.common[usize::from(stream)];
        let key = profile.key.as_ref().map(|k| k.expose());
        let mut head = Vec::with_capacity(
            128 + uri.path().len() + common.len() + tail.len() + key.map_or(0, str::len),
        );
        match &h1.request_line {
            Some(line) => head.extend_from_slice(line),
            None => push_request_line(&mut head, uri),
        }
        head.extend_from_slice(common);
        if let Some(key) = key {
            check_header_value(key)?;
            match self.config.api {
                WireFormat::OpenAi => {
                    head.extend_from_slice(b"authorization: Bearer ");
                    head.extend_from_slice(key.as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                WireFormat::Anthropic => push_header(&mut head, b"x-api-key", key.as_bytes()),
                WireFormat::Gemini => push_header(&mut head, b"x-goog-api-key", key.as_bytes()),
            }
        }
        if self.config.api == WireFormat::Anthropic
            && let Some(beta) = anthropic_beta
        {
            push_header(&mut head, b"anthropic-beta", beta.as_bytes());
        }
        head.extend_from_slice(tail);
        push_length_and_end(&mut head, body_len);
        Ok((head, true))
    }

    /// [`Upstream::h1_head`] when a configured header names one Backstop sets: written
    /// from the header map hyper is given, in its order, `host` and `content-length`
    /// added last unless configured (as hyper does).
    fn h1_head_from_map(
        &self,
        uri: &Uri,
        profile: &AuthProfile,
        body_len: usize,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
    ) -> Result<(Vec<u8>, bool), TransportError> {
        let mut h = HeaderMap::new();
        self.headers(&mut h, profile, stream, anthropic_beta)?;
        let mut head = Vec::new();
        push_request_line(&mut head, uri);
        for (name, value) in &h {
            push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
        if !h.contains_key(http::header::HOST) {
            push_header(&mut head, b"host", host_value(uri).as_bytes());
        }
        let keep_alive = !h
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| crate::http1::has_token(v.as_bytes(), b"close"));
        if h.contains_key(http::header::CONTENT_LENGTH)
            || h.contains_key(http::header::TRANSFER_ENCODING)
        {
            head.extend_from_slice(b"\r\n");
        } else {
            push_length_and_end(&mut head, body_len);
        }
        Ok((head, keep_alive))
    }

    fn request(
        &self,
        uri: Uri,
        profile: &AuthProfile,
        body: Bytes,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
    ) -> Result<Request<Full<Bytes>>, TransportError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        self.headers(req.headers_mut(), profile, stream, anthropic_beta)?;
        Ok(req)
    }

    /// The request's headers, in a map (for hyper).
    fn headers(
        &self,
        h: &mut HeaderMap,
        profile: &AuthProfile,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
    ) -> Result<(), TransportError> {
        h.reserve(6 + self.extra_headers.len());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        h.insert(USER_AGENT, USER_AGENT_VALUE);
        match self.config.api {
            WireFormat::OpenAi => openai::authorize(h, profile)?,
            WireFormat::Anthropic => anthropic::authorize(h, profile)?,
            WireFormat::Gemini => gemini::authorize(h, profile)?,
        }
        if self.config.api == WireFormat::Anthropic
            && let Some(beta) = anthropic_beta
        {
            h.insert("anthropic-beta", beta.clone());
        }
        for (name, value) in &self.extra_headers {
            h.insert(name, value.clone());
        }
        Ok(())
    }
}

/// Every configured provider, by id.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_id: HashMap<String, Arc<Upstream>, crate::NameHasher>,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut by_id = HashMap::default();
        for p in &config.providers {
            by_id.insert(
                p.id.clone(),
                Arc::new(Upstream::new(p.clone(), &config.timeouts)?),
            );
        }
        Ok(Upstreams { by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Upstream>> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretSource};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const KEY: &str = "sk-test-key-0123456789";

    fn upstream(api: WireFormat, base_url: &str, connect_ms: u64) -> Upstream {
        let config = ProviderConfig {
            id: "p".into(),
            api,
            base_url: base_url.into(),
            profiles: vec![profile()],
            models: Vec::new(),
            headers: vec![(
                "x-extra".into(),
                Secret::new("extra-value", SecretSource::Literal),
            )],
        };
        let timeouts = Timeouts {
            connect_ms,
            ..Timeouts::default()
        };
        Upstream::new(config, &timeouts).unwrap()
    }

    fn profile() -> AuthProfile {
        AuthProfile {
            name: "k".into(),
            key: Some(Secret::new(KEY, SecretSource::Literal)),
        }
    }

    /// Read one request (head and `content-length` body) from a connection.
    async fn read_request(sock: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed mid-request: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    }

    /// A one-connection server: reads a request, writes `reply` (if any), closes.
    /// Returns the request it read.
    async fn serve_once(reply: Option<&[u8]>) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let reply = reply.map(<[u8]>::to_vec);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let req = read_request(&mut sock).await;
            if let Some(reply) = reply {
                sock.write_all(&reply).await.unwrap();
                sock.flush().await.unwrap();
            }
            req
        });
        (addr, task)
    }

    #[tokio::test]
    async fn sends_the_request_with_credentials_and_reads_the_body() {
        let (addr, server) = serve_once(Some(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        ))
        .await;
        let up = upstream(WireFormat::Anthropic, &format!("http://{addr}"), 5_000);
        let mut resp = up
            .send(&profile(), "m", Bytes::from_static(b"{\"a\":1}"), false)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        while let Some(c) = resp.chunk().await.unwrap() {
            body.extend_from_slice(&c);
        }
        assert_eq!(body, b"{\"ok\":true}");
        let req = server.await.unwrap().to_ascii_lowercase();
        assert!(req.starts_with("post /v1/messages http/1.1\r\n"), "{req}");
        for h in [
            &format!("host: {addr}"),
            "content-type: application/json",
            "accept: application/json",
            concat!("user-agent: backstop/", env!("CARGO_PKG_VERSION")),
            "anthropic-version: 2023-06-01",
            &format!("x-api-key: {}", KEY.to_ascii_lowercase()),
            "x-extra: extra-value",
            "content-length: 7",
        ] {
            assert!(
                req.contains(&format!("\r\n{h}\r\n")),
                "{h} missing in {req}"
            );
        }
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }

    #[tokio::test]
    async fn openai_and_gemini_credentials() {
        let reply: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (addr, server) = serve_once(Some(reply)).await;
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        up.send(&profile(), "m", Bytes::new(), true).await.unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains(&format!("\r\nauthorization: Bearer {KEY}\r\n")),
            "{req}"
        );
        assert!(req.contains("\r\naccept: text/event-stream\r\n"), "{req}");

        let (addr, server) = serve_once(Some(reply)).await;
        let up = upstream(WireFormat::Gemini, &format!("http://{addr}"), 5_000);
        up.send(&profile(), "models/g-1", Bytes::new(), true)
            .await
            .unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("POST /v1beta/models/g-1:streamGenerateContent?alt=sse HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains(&format!("\r\nx-goog-api-key: {KEY}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_redirect_is_returned_not_followed() {
        // Where the redirect points: it must see no connection (and so no key).
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let reply = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target}/steal\r\ncontent-length: 0\r\n\r\n"
        );
        let (addr, server) = serve_once(Some(reply.as_bytes())).await;
        let up = upstream(WireFormat::Anthropic, &format!("http://{addr}"), 5_000);
        let mut resp = up
            .send(&profile(), "m", Bytes::from_static(b"{}"), true)
            .await
            .unwrap();
        assert_eq!(resp.status(), 307);
        assert_eq!(
            resp.headers().get(http::header::LOCATION).unwrap(),
            &format!("http://{target}/steal")
        );
        assert_eq!(resp.chunk().await.unwrap(), None);
        server.await.unwrap();
        // No connection is waiting to be accepted on the redirect's target (a followed
        // redirect would have connected before its answer came back).
        use futures_util::FutureExt;
        assert!(
            elsewhere.accept().now_or_never().is_none(),
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        let err = up
            .send(&profile(), "m", Bytes::new(), true)
            .await
            .unwrap_err();
        match &err {
            TransportError::Connect(m) => {
                assert!(m.contains("refused"), "{m}");
                assert!(!m.contains(KEY) && !m.contains("127.0.0.1"), "{m}");
            }
            other => panic!("not a connect error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn closed_before_a_response_is_a_reset() {
        let (addr, server) = serve_once(None).await;
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        let err = up
            .send(&profile(), "m", Bytes::from_static(b"{}"), true)
            .await
            .unwrap_err();
        server.await.unwrap();
        match &err {
            TransportError::Reset(m) => assert!(!m.contains(KEY), "{m}"),
            other => panic!("not a reset: {other:?}"),
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A server whose first connection answers one request, keeps alive, then closes
    /// when the next request arrives (its idle close crossed that request); a second
    /// connection, if one comes, answers.
    /// The server task ends with whether that second connection came.
    async fn closes_a_pooled_connection() -> (std::net::SocketAddr, tokio::task::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            read_request(&mut first).await;
            first.write_all(OK).await.unwrap();
            read_request(&mut first).await;
            drop(first);
            if let Ok(Ok((mut second, _))) =
                tokio::time::timeout(Duration::from_secs(2), listener.accept()).await
            {
                read_request(&mut second).await;
                second.write_all(OK).await.unwrap();
                // Held open until the client has read the answer.
                let _ = second.read(&mut [0u8; 1]).await;
                return true;
            }
            false
        });
        (addr, server)
    }

    async fn answers_ok(mut resp: Response) {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.chunk().await.unwrap().as_deref(), Some(&b"ok"[..]));
        assert_eq!(resp.chunk().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_server_is_no_failure() {
        let (addr, server) = closes_a_pooled_connection().await;
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        for _ in 0..2 {
            let resp = up
                .send(&profile(), "m", Bytes::from_static(b"{}"), false)
                .await;
            answers_ok(resp.unwrap()).await;
        }
        drop(up);
        assert!(
            server.await.unwrap(),
            "the resend opened a second connection"
        );
    }

    #[tokio::test]
    async fn the_resend_on_a_new_connection_asks_first() {
        // As above, but the caller has no retry budget left: the reset is the answer.
        let (addr, server) = closes_a_pooled_connection().await;
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        let first = up
            .send(&profile(), "m", Bytes::from_static(b"{}"), false)
            .await;
        answers_ok(first.unwrap()).await;
        let mut asked = 0;
        let second = up
            .send_with_beta(
                &profile(),
                "m",
                Bytes::from_static(b"{}"),
                false,
                None,
                || {
                    asked += 1;
                    false
                },
            )
            .await;
        assert!(matches!(second, Err(TransportError::Reset(_))));
        assert_eq!(asked, 1);
        drop(up);
        assert!(!server.await.unwrap(), "no second connection was opened");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_reset() {
        let (addr, server) = serve_once(Some(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100\r\n\r\ndata: {}\n\n",
        ))
        .await;
        let up = upstream(WireFormat::OpenAi, &format!("http://{addr}/v1"), 5_000);
        let mut resp = up.send(&profile(), "m", Bytes::new(), true).await.unwrap();
        server.await.unwrap();
        let mut got = Vec::new();
        let err = loop {
            match resp.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => panic!("a short body ended cleanly"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"data: {}\n\n");
        assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_hangs_is_a_connect_timeout() {
        // Accepts the TCP connection and never answers the TLS hello: the connect
        // timeout covers the whole connect, TLS included.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            // Keep the socket open until the test ends.
            std::future::pending::<()>().await;
            drop(sock);
        });
        let up = upstream(WireFormat::OpenAi, &format!("https://{addr}/v1"), 100);
        let err = up
            .send(&profile(), "m", Bytes::new(), true)
            .await
            .unwrap_err();
        hold.abort();
        assert_eq!(err, TransportError::ConnectTimeout);
    }

    fn upstream_with_headers(api: WireFormat, headers: &[(String, String)]) -> Upstream {
        let config = ProviderConfig {
            id: "p".into(),
            api,
            base_url: match api {
                WireFormat::OpenAi => "http://127.0.0.1:8080/v1".into(),
                WireFormat::Anthropic => "http://example.test".into(),
                WireFormat::Gemini => "http://[::1]:80/".into(),
            },
            profiles: vec![profile()],
            models: Vec::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), Secret::new(v, SecretSource::Literal)))
                .collect(),
        };
        Upstream::new(config, &Timeouts::default()).unwrap()
    }

    fn h1_uri(up: &Upstream) -> Uri {
        up.endpoint("models/g-1", true).parse().unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The request head written from parts prepared once is the one written from
        /// the header map hyper is given.
        #[test]
        fn h1_head_matches_the_header_map(
            api in 0..3u8,
            stream: bool,
            beta in proptest::option::of("[a-z0-9,-]{0,20}"),
            key in proptest::option::of("[ -~\t\u{80}-\u{ff}]{0,30}"),
            extra in proptest::collection::vec(
                (proptest::sample::select(vec!["x-a", "X-A", "x-b", "OpenAI-Organization", "accept-language"]), "[ -~]{0,12}"),
                0..5,
            ),
            len in 0usize..100_000,
        ) {
            let api = [WireFormat::OpenAi, WireFormat::Anthropic, WireFormat::Gemini][usize::from(api)];
            let extra: Vec<(String, String)> =
                extra.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
            let up = upstream_with_headers(api, &extra);
            let h1 = up.h1.as_ref().unwrap();
            proptest::prop_assert!(h1.tail.is_some());
            let profile = AuthProfile { name: "k".into(), key: key.map(|k| Secret::new(&k, SecretSource::Literal)) };
            let beta = beta.map(|b| HeaderValue::from_str(&b).unwrap());
            let uri = h1_uri(&up);
            let fast = up.h1_head(h1, &uri, &profile, len, stream, beta.as_ref());
            let general = up.h1_head_from_map(&uri, &profile, len, stream, beta.as_ref());
            proptest::prop_assert_eq!(fast, general);
        }
    }

    #[test]
    fn h1_head_with_a_configured_header_backstop_sets() {
        let up = upstream_with_headers(
            WireFormat::OpenAi,
            &[
                ("User-Agent".into(), "mine".into()),
                ("x-a".into(), "1".into()),
                ("connection".into(), "close".into()),
            ],
        );
        let h1 = up.h1.as_ref().unwrap();
        assert!(h1.tail.is_none());
        let (head, keep) = up
            .h1_head(h1, &h1_uri(&up), &profile(), 7, false, None)
            .unwrap();
        assert!(!keep);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
                 accept: application/json\r\nuser-agent: mine\r\n\
                 authorization: Bearer {KEY}\r\nx-a: 1\r\nconnection: close\r\n\
                 host: 127.0.0.1:8080\r\ncontent-length: 7\r\n\r\n"
            )
        );
        // https stays with hyper.
        let mut https = upstream_with_headers(WireFormat::Gemini, &[]);
        assert!(https.h1.is_some());
        https.config.base_url = "https://example.test".into();
        let up = Upstream::new(https.config.clone(), &Timeouts::default()).unwrap();
        assert!(up.h1.is_none());
    }

    #[test]
    fn an_invalid_gemini_url_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let up = upstream(WireFormat::Gemini, "http://127.0.0.1:9", 5_000);
        let err = rt
            .block_on(up.send(&profile(), "bad model", Bytes::new(), false))
            .unwrap_err();
        assert!(matches!(err, TransportError::Other(_)), "{err:?}");
    }
}
