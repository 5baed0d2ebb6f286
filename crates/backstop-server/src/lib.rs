//! The Backstop HTTP gateway: axum routes over the [`backstop`] engine.
//!
//! - `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic): [`chat`];
//! - `GET /v1/models`, `GET /health`, `GET /ready`: [`info`];
//! - `GET/PUT/DELETE /v1/sessions/{id}`: [`sessions`];
//! - client authentication, limits and headers: [`guard`].
#![forbid(unsafe_code)]

mod chat;
mod cooldowns;
mod dashboard;
mod guard;
mod h1;
mod info;
pub mod reload;
mod sessions;
mod status;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{delete, get, post};
use backstop::Config;
use backstop::clock::{Clock, SystemClock};
use backstop::failover::Engine;
use backstop::state::{SessionStore, StateStore};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every handler shares.
pub struct AppState {
    /// Swapped whole by a config reload ([`AppState::reload`]).
    engine: ArcSwap<Engine>,
    /// Sessions (`x-backstop-session`): `<state.dir>/sessions.json`, or Redis
    /// when `state.redis_url` is set.
    pub sessions: Arc<dyn SessionStore>,
}

impl AppState {
    /// The gateway's state on the store `config.state` asks for
    /// ([`backstop::state::open_store`]: Redis when `state.redis_url` is set, else
    /// `auth-state.json` in `state.dir`) and the system clock. Needs a tokio runtime when
    /// a Redis store is configured.
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = backstop::state::open_store(&config, clock.clone())?;
        Self::with_state(config, store, clock)
    }

    /// On a given state store and clock (tests pass a `MemoryStore` or a `FileStore` in a
    /// temp dir, and a manual clock). Sessions persist in `state.dir` (`sessions.json`) or, with `state.redis_url`, in Redis.
    pub fn with_state(
        config: Arc<Config>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let sessions = backstop::state::session::open_store(&config, clock.clone())?;
        Ok(AppState {
            engine: ArcSwap::from_pointee(Engine::with_state(config, store, clock)?),
            sessions,
        })
    }

    /// Around an engine built elsewhere (tests inject a manual clock or a state store).
    /// Sessions are kept in memory on the engine's clock; see [`AppState::with_sessions`].
    pub fn with_engine(engine: Arc<Engine>) -> Self {
        let sessions = sessions::memory_store(&engine.config, engine.cooldowns.clock().clone());
        AppState {
            engine: ArcSwap::new(engine),
            sessions,
        }
    }

    /// Replace the session store.
    pub fn with_sessions(mut self, sessions: Arc<dyn SessionStore>) -> Self {
        self.sessions = sessions;
        self
    }

    /// The engine serving now (a reload may replace it; a request keeps the one it started on).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// The config serving now.
    pub fn config(&self) -> Arc<Config> {
        self.engine.load().config.clone()
    }

    /// Replace the config: a new engine on it, keeping cooldowns, breakers, health and
    /// metrics. A config that cannot make an engine changes nothing.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let next = self.engine.load().reconfigure(Arc::new(config))?;
        self.engine.store(Arc::new(next));
        Ok(())
    }
}

/// The gateway's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let security = state.config().server.security_headers;
    let router = Router::new()
        .route("/v1/chat/completions", post(chat::openai))
        .route("/chat/completions", post(chat::openai))
        .route("/v1/messages", post(chat::anthropic))
        .route("/v1/models", get(info::models))
        .route("/health", get(info::health))
        .route("/ready", get(info::ready))
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .route(
            "/v1/cooldowns",
            get(cooldowns::list).delete(cooldowns::clear_all),
        )
        .route("/v1/cooldowns/{*scope}", delete(cooldowns::clear))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get)
                .put(sessions::put)
                .delete(sessions::delete),
        )
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::request_id_and_auth,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            guard::panic_response,
        ))
        .with_state(state);
    if security {
        guard::with_security_headers(router)
    } else {
        router
    }
}

/// The chat routes (`POST` to `/v1/chat/completions`, `/chat/completions`,
/// `/v1/messages`), served by the HTTP/1 loop without the router: what the router's
/// route and layers do to such a request and its answer is done here in place (request
/// id and authentication by the same code, a panic's 500, the security headers; axum's
/// `content-length` of an answer of known length is the HTTP/1 loop's), without a boxed
/// future and a cloned service per layer. Any other request goes to the router.
#[derive(Clone)]
pub(crate) struct Direct {
    state: Arc<AppState>,
    /// `server.security_headers` when the router was built (as [`router`] reads it).
    security: bool,
}

/// A response future of [`Direct`] or of the router.
pub(crate) type Answer =
    std::pin::Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

impl Direct {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        let security = state.config().server.security_headers;
        Direct { state, security }
    }

    /// The chat handler a request goes to, if it is one of the chat routes.
    pub(crate) fn route<B>(&self, req: &http::Request<B>) -> Option<backstop::WireFormat> {
        if req.method() != http::Method::POST {
            return None;
        }
        match req.uri().path() {
            "/v1/chat/completions" | "/chat/completions" => Some(backstop::WireFormat::OpenAi),
            "/v1/messages" => Some(backstop::WireFormat::Anthropic),
            _ => None,
        }
    }

    /// Serve a request of a chat route ([`Direct::route`]).
    pub(crate) fn call(
        &self,
        ingress: backstop::WireFormat,
        req: axum::extract::Request,
    ) -> Answer {
        let state = self.state.clone();
        let security = self.security;
        Box::pin(async move {
            let answer = std::panic::AssertUnwindSafe(guard::guarded(&state, req, |req, id| {
                chat::handle(state.clone(), ingress, req, id.0)
            }));
            let mut resp = match futures_util::FutureExt::catch_unwind(answer).await {
                Ok(resp) => resp,
                Err(panic) => guard::panic_response(panic),
            };
            if security {
                guard::set_security_headers(resp.headers_mut());
            }
            // axum's `content-length` of an answer of known length (a top-level route's,
            // after every layer's headers) is not set here: the HTTP/1 loop, which alone
            // serves these routes, writes the same line in the same place (last) when the
            // header is absent.
            Ok(resp)
        })
    }
}

/// Why the gateway refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without client keys: set server.api_keys (e.g. [\"$BACKSTOP_API_KEY\"]), listen on 127.0.0.1, or pass --allow-unauthenticated"
    )]
    Exposed(SocketAddr),
    #[error("{0}")]
    Engine(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Listening beyond loopback without client keys is refused unless explicitly allowed.
pub fn check_exposure(
    config: &Config,
    addr: SocketAddr,
    allow_unauthenticated: bool,
) -> Result<(), ServeError> {
    let exposed = !addr.ip().is_loopback();
    if exposed
        && config.server.api_keys.is_empty()
        && !(allow_unauthenticated || config.server.allow_unauthenticated)
    {
        return Err(ServeError::Exposed(addr));
    }
    Ok(())
}

/// Bind `addr`, then serve until `shutdown` resolves.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serve on an already bound listener until `shutdown` resolves.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = Arc::new(AppState::new(config).map_err(ServeError::Engine)?);
    serve_state(state, listener, shutdown).await
}

/// Serve an existing state (its engine, clock and store) until `shutdown` resolves.
pub async fn serve_state(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Backstop's own HTTP/1 connection loop (h2c goes to hyper): see `h1`.
    let limits = state.clone();
    let shared = h1::Shared {
        direct: Some(Direct::new(state.clone())),
        router: router(state),
        max_body: Arc::new(move || limits.engine.load().config.server.max_body_bytes),
    };
    h1::serve(listener, shared, shutdown).await;
    Ok(())
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod direct_tests;
