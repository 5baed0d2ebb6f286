//! The HTTP side: an axum server on a listener whose connections can be killed
//! from a handler (for `Reset`), the provider routes, the `/_fake/*` control
//! routes, and the executor that turns a [`Plan`] into a response.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::plan::{self, Ctx, Format, Piece, Plan, PlanBody};
use crate::step::{Recorded, Step};

/// Request bodies up to this size are accepted (long contexts are a test case).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Chooses the step for a request when the queue is empty (before the default step);
/// `None` falls through to the default. Set with [`FakeHandle::set_responder`].
pub type Responder = Arc<dyn Fn(&Recorded) -> Option<Step> + Send + Sync>;

/// Starts fake providers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use backstop_fake::{FakeProvider, Step};
///
/// let fake = FakeProvider::start()?;
/// fake.push(Step::text("Hello!"));
/// fake.push(Step::error_kind(429, "rate_limit_exceeded"));
/// assert!(fake.openai_base_url().starts_with("http://127.0.0.1:"));
/// assert!(fake.openai_base_url().ends_with("/v1"));
/// assert_eq!(fake.pending(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FakeProvider {
    _private: (),
}

impl FakeProvider {
    /// Serve on `127.0.0.1` on a free port, in a task of the current tokio runtime.
    pub fn start() -> io::Result<FakeHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve on `addr`, in a task of the current tokio runtime (an error when
    /// called outside one).
    pub fn start_on(addr: SocketAddr) -> io::Result<FakeHandle> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("backstop-fake needs a tokio runtime: {e}")))?;
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            recorded: Mutex::new(Vec::new()),
            recording: AtomicBool::new(true),
            responder: Mutex::new(None),
            shutdown: shutdown_rx,
        });
        let app = router(shared.clone()).into_make_service_with_connect_info::<ConnMeta>();
        let task = runtime.spawn(async move {
            // Serving only ends on an I/O error of the listener itself.
            let _ = axum::serve(FakeListener { inner: listener }, app).await;
        });
        Ok(FakeHandle {
            addr,
            shared,
            _server: Arc::new(ServerGuard {
                _shutdown: shutdown_tx,
                task: task.abort_handle(),
            }),
        })
    }
}

/// A running fake. Clones share it; when the last clone is dropped the server
/// stops accepting, and hung or stalled responses end.
#[derive(Clone)]
pub struct FakeHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: Arc<ServerGuard>,
}

impl std::fmt::Debug for FakeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeHandle {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1` — an OpenAI SDK base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` — an Anthropic SDK base URL.
    pub fn anthropic_base_url(&self) -> String {
        self.url()
    }

    /// `http://127.0.0.1:PORT` — a Gemini base URL (the client appends
    /// `/v1beta/models/{model}:generateContent`).
    pub fn gemini_base_url(&self) -> String {
        self.url()
    }

    /// Queue a step for the next request (FIFO, shared by every route).
    pub fn push(&self, step: Step) {
        self.shared.script().queue.push_back(step);
    }

    /// Queue several steps, in order.
    pub fn push_many(&self, steps: impl IntoIterator<Item = Step>) {
        self.shared.script().queue.extend(steps);
    }

    /// The step used when the queue is empty (initially [`Step::Echo`]).
    pub fn set_default(&self, step: Step) {
        self.shared.script().default = step;
    }

    /// Decide each request's step with `responder` when the queue is empty (instead of
    /// the default step, unless it returns `None`): a script that depends on the
    /// request (its key, model, body) or on the time, as `backstop simulate` needs.
    /// `clear` does not remove it; `set_responder(None)` does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use backstop_fake::{FakeProvider, Step};
    /// use std::sync::Arc;
    /// let fake = FakeProvider::start()?;
    /// fake.set_responder(Some(Arc::new(|req: &backstop_fake::Recorded| {
    ///     (req.header("authorization") == Some("Bearer sk-bad")).then(|| Step::error(401))
    /// })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_responder(&self, responder: Option<Responder>) {
        *lock(&self.shared.responder) = responder;
    }

    /// Steps still queued.
    pub fn pending(&self) -> usize {
        self.shared.script().queue.len()
    }

    /// Every provider request received so far (control routes excluded), in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).clone()
    }

    /// Forget the queue and the recorded requests, and make `Echo` the default again.
    pub fn clear(&self) {
        self.shared.reset();
    }

    /// Turn request recording on or off (off for benchmarks: no per-request copy).
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }
}

/// Stops the server when the last handle goes.
struct ServerGuard {
    /// Dropping it wakes every hung or stalled response.
    _shutdown: watch::Sender<()>,
    task: tokio::task::AbortHandle,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    script: Mutex<Script>,
    recorded: Mutex<Vec<Recorded>>,
    recording: AtomicBool,
    responder: Mutex<Option<Responder>>,
    shutdown: watch::Receiver<()>,
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Step>,
    default: Step,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }

    /// The next queued step, else the responder's, else the default. `request` is
    /// `None` only when there is no responder.
    fn next_step(&self, request: Option<&Recorded>) -> Step {
        if let Some(step) = self.script().queue.pop_front() {
            return step;
        }
        let responder = lock(&self.responder).clone();
        if let (Some(responder), Some(request)) = (responder, request)
            && let Some(step) = responder(request)
        {
            return step;
        }
        self.script().default.clone()
    }

    fn reset(&self) {
        *self.script() = Script::default();
        lock(&self.recorded).clear();
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- connections that a handler can kill ----

#[derive(Debug, Default)]
struct ConnCtl {
    killed: AtomicBool,
}

/// Per-connection info handed to handlers (`ConnectInfo`).
#[derive(Debug, Clone)]
struct ConnMeta {
    #[allow(dead_code)] // kept for debugging output
    peer: SocketAddr,
    ctl: Arc<ConnCtl>,
}

impl ConnMeta {
    /// Make the connection fail at its next read or write, and close it with a
    /// TCP reset instead of a FIN.
    fn kill(&self) {
        self.ctl.killed.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, FakeListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, FakeListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct FakeListener {
    inner: TcpListener,
}

impl Listener for FakeListener {
    type Io = ConnIo;
    type Addr = ConnMeta;

    async fn accept(&mut self) -> (ConnIo, ConnMeta) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let ctl = Arc::new(ConnCtl::default());
                    let io = ConnIo {
                        stream,
                        ctl: ctl.clone(),
                        aborted: false,
                    };
                    return (io, ConnMeta { peer, ctl });
                }
                // Out of file descriptors and the like: back off, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnMeta> {
        Ok(ConnMeta {
            peer: self.inner.local_addr()?,
            ctl: Arc::default(),
        })
    }
}

/// A TCP stream that fails every operation once its connection is killed.
struct ConnIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
    aborted: bool,
}

impl ConnIo {
    fn check(&mut self) -> io::Result<()> {
        if !self.ctl.killed.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.aborted {
            self.aborted = true;
            // SO_LINGER 0: closing sends RST, so the client sees a reset.
            let _ = self.stream.set_zero_linger();
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "backstop-fake: scripted connection reset",
        ))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// ---- routes ----

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/script", post(post_script))
        .route("/_fake/default", post(post_default))
        .route("/_fake/requests", get(get_requests))
        .route("/_fake/reset", post(post_reset))
        .route("/_fake/recording", post(post_recording))
        .fallback(provider)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Every provider route: find the format from the path, take the next step, answer.
async fn provider(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnMeta>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let Some(format) = Format::for_path(path).filter(|_| method == Method::POST) else {
        return control_error(
            StatusCode::NOT_FOUND,
            format!(
                "backstop-fake: no route for {method} {path} (POST …/chat/completions, \
                 /v1/messages or …/models/{{model}}:generateContent)"
            ),
        );
    };
    let json = parse_body(&body);
    let ctx = Ctx::new(format, &json, body.len()).with_path(path);
    let recording = shared.recording.load(Ordering::Relaxed);
    // The request as recorded, for the log and for a responder (the body moves into it).
    let (recorded, json) = if recording || lock(&shared.responder).is_some() {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_string(), value)
            })
            .collect();
        let path = path.to_string();
        (
            Some(Recorded {
                path,
                query: uri.query().map(str::to_string),
                headers,
                body: json,
            }),
            Value::Null,
        )
    } else {
        (None, json)
    };
    let step = shared.next_step(recorded.as_ref());
    let plan = plan::plan(&step, &ctx, recorded.as_ref().map_or(&json, |r| &r.body));
    if recording && let Some(recorded) = recorded {
        lock(&shared.recorded).push(recorded);
    }
    execute(plan, &conn, shared.shutdown.clone()).await
}

fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn execute(plan: Plan, conn: &ConnMeta, mut shutdown: watch::Receiver<()>) -> Response {
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let body = match plan.body {
        PlanBody::Reset => {
            conn.kill();
            // Writing this response fails: the client gets a reset, no headers.
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        PlanBody::Hang => {
            // Returns once the fake shuts down.
            let _ = shutdown.changed().await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        PlanBody::Full(bytes) => Body::from(bytes),
        PlanBody::Stream(pieces) => Body::from_stream(piece_stream(pieces, shutdown)),
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(plan.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in plan.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
    if is_sse && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// The body of a streamed answer: data as planned, delays slept, and a cut
/// (an error, so the HTTP body never ends properly) or a stall at the end.
fn piece_stream(
    pieces: Vec<Piece>,
    shutdown: watch::Receiver<()>,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(
        (pieces.into_iter(), shutdown),
        |(mut pieces, mut shutdown)| async move {
            loop {
                match pieces.next()? {
                    Piece::Data(bytes) => return Some((Ok(bytes), (pieces, shutdown))),
                    Piece::Delay(delay) => tokio::time::sleep(delay).await,
                    Piece::Cut => {
                        // Let the server flush what was sent before aborting.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                        let cut = io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "backstop-fake: scripted cut",
                        );
                        return Some((Err(cut), (pieces, shutdown)));
                    }
                    Piece::Stall => {
                        let _ = shutdown.changed().await;
                        let end = io::Error::other("backstop-fake: shut down while stalled");
                        return Some((Err(end), (pieces, shutdown)));
                    }
                }
            }
        },
    )
}

// ---- control routes ----

fn control_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// `POST /_fake/script`: a JSON array of steps (or one step), appended to the queue.
async fn post_script(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let parsed = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(serde_json::from_value::<Step>)
            .collect::<Result<Vec<_>, _>>(),
        Ok(one) => serde_json::from_value::<Step>(one).map(|s| vec![s]),
        Err(e) => Err(e),
    };
    match parsed {
        Ok(steps) => {
            let added = steps.len();
            let mut script = shared.script();
            script.queue.extend(steps);
            axum::Json(json!({"added": added, "pending": script.queue.len()})).into_response()
        }
        Err(e) => control_error(StatusCode::BAD_REQUEST, format!("invalid step: {e}")),
    }
}

/// `POST /_fake/default`: one step, used when the queue is empty.
async fn post_default(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Step>(&body) {
        Ok(step) => {
            shared.script().default = step;
            axum::Json(json!({"ok": true})).into_response()
        }
        Err(e) => control_error(StatusCode::BAD_REQUEST, format!("invalid step: {e}")),
    }
}

/// `GET /_fake/requests`: every recorded provider request.
async fn get_requests(State(shared): State<Arc<Shared>>) -> Response {
    let recorded = lock(&shared.recorded).clone();
    axum::Json(recorded).into_response()
}

/// `POST /_fake/recording`: `{"on": false}` stops recording requests (benchmarks: no
/// per-request copy), `{"on": true}` starts again.
async fn post_recording(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("on").and_then(Value::as_bool))
    {
        Some(on) => {
            shared.recording.store(on, Ordering::Relaxed);
            axum::Json(json!({"ok": true, "recording": on})).into_response()
        }
        None => control_error(
            StatusCode::BAD_REQUEST,
            "expected {\"on\": true} or {\"on\": false}".to_string(),
        ),
    }
}

/// `POST /_fake/reset`: empty queue, no recorded requests, `Echo` default.
async fn post_reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    axum::Json(json!({"ok": true})).into_response()
}
