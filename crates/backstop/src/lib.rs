//! Backstop: keeps AI agents answering when model providers fail.
//!
//! The engine as a library: configuration ([`config`]), the provider-neutral
//! chat model ([`chat`]), wire formats ([`wire`]), upstream providers
//! ([`provider`]) and the failover engine ([`failover`]). It has no HTTP-server
//! dependency; `backstop-server` puts it behind axum.
#![forbid(unsafe_code)]
// A `Failure` is returned rarely and carries the provider's error for the client; boxing it
// everywhere would cost more clarity than the copy costs time.
#![allow(clippy::result_large_err)]

pub mod chat;
pub mod clock;
pub mod config;
pub mod failover;
pub mod health;
pub mod http1;
pub mod metrics;
pub mod models;
pub mod probe;
pub mod provider;
pub mod render;
pub mod secret;
pub mod sse;
pub mod state;
mod sync;

/// The hasher of the maps looked up on every request by provider and model names
/// (health, upstreams, the active model per chain): foldhash, randomly seeded per map.
/// SipHash (std's) cost ~160 instructions per short name; foldhash a fraction of that,
/// and a per-map random seed still keeps colliding names out of an outsider's reach.
pub(crate) type NameHasher = foldhash::fast::RandomState;
pub mod wire;

pub use chat::WireFormat;
pub use config::Config;
