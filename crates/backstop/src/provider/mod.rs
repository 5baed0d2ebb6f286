//! Upstream providers: one file per upstream kind, each with the same shape —
//! constants, credentials (how a key becomes headers), the endpoint URL — and
//! this module's [`Upstream`], which owns the pooled HTTP client and sends.
//!
//! Wire types and conversions live in [`crate::wire`]; classification of what
//! comes back lives in [`crate::failover`].

pub mod anthropic;
pub mod gemini;
pub mod openai;

use crate::chat::WireFormat;
use crate::config::{AuthProfile, Config, ProviderConfig, Timeouts};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
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
    fn from_reqwest(e: reqwest::Error) -> Self {
        // Keys travel in headers, never in URLs, but strip the URL anyway: messages stay
        // short and nothing a provider put in a URL can leak.
        let e = e.without_url();
        let text = error_chain(&e);
        if e.is_connect() {
            if e.is_timeout() {
                TransportError::ConnectTimeout
            } else {
                TransportError::Connect(text)
            }
        } else if e.is_timeout() {
            TransportError::ConnectTimeout
        } else if e.is_request() || e.is_body() {
            TransportError::Reset(text)
        } else {
            TransportError::Other(text)
        }
    }
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

/// One configured provider with its pooled HTTP client.
#[derive(Debug)]
pub struct Upstream {
    pub config: ProviderConfig,
    client: reqwest::Client,
    /// The endpoint parsed once, when it does not depend on the model (OpenAI and
    /// Anthropic): parsing a URL on every request showed in profiles.
    fixed_url: Option<reqwest::Url>,
    /// Whether Backstop adds `stream_options` for this server: decided once from its API
    /// and host, and turned off for good (until the config reloads) when it refuses it.
    sends_stream_options: AtomicBool,
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

impl Upstream {
    pub fn new(config: ProviderConfig, timeouts: &Timeouts) -> Result<Self, String> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(timeouts.connect_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            // As many idle upstream connections as a busy gateway has requests in flight
            // (nginx in bench/ keeps 256): at 128 connections a limit of 64 made every
            // other request open a new upstream connection.
            .pool_max_idle_per_host(256)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            // Never follow a redirect: a key must reach no host but its provider's
            // base_url (reqwest drops `authorization` on a cross-host redirect, but not
            // `x-api-key` or `x-goog-api-key`). A 3xx is a failure like any other.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("providers.{}: cannot build HTTP client: {e}", config.id))?;
        let fixed_url = match config.api {
            WireFormat::OpenAi => Some(openai::endpoint(&config.base_url)),
            WireFormat::Anthropic => Some(anthropic::endpoint(&config.base_url)),
            WireFormat::Gemini => None,
        }
        .and_then(|u| reqwest::Url::parse(&u).ok());
        let sends_stream_options = AtomicBool::new(
            config.api == WireFormat::OpenAi && openai::accepts_stream_options(&config.base_url),
        );
        Ok(Upstream {
            config,
            client,
            fixed_url,
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
    /// response head has arrived; the body is read by the caller.
    pub async fn send(
        &self,
        profile: &AuthProfile,
        model: &str,
        body: Bytes,
        stream: bool,
    ) -> Result<reqwest::Response, TransportError> {
        let rb = match &self.fixed_url {
            Some(url) => self.client.post(url.clone()),
            None => self.client.post(self.endpoint(model, stream)),
        };
        let mut rb = rb
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        rb = match self.config.api {
            WireFormat::OpenAi => openai::authorize(rb, profile),
            WireFormat::Anthropic => anthropic::authorize(rb, profile),
            WireFormat::Gemini => gemini::authorize(rb, profile),
        };
        if stream {
            rb = rb.header(http::header::ACCEPT, "text/event-stream");
        } else {
            rb = rb.header(http::header::ACCEPT, "application/json");
        }
        for (name, value) in &self.config.headers {
            rb = rb.header(name.as_str(), value.expose());
        }
        rb.send().await.map_err(TransportError::from_reqwest)
    }
}

/// Every configured provider, by id.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_id: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut by_id = HashMap::new();
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

/// Read a body error from reqwest as a transport error (used while streaming).
pub fn body_error(e: reqwest::Error) -> TransportError {
    TransportError::from_reqwest(e)
}
