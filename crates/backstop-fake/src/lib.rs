#![forbid(unsafe_code)]
//! Scripted fake model providers that speak the real OpenAI Chat Completions,
//! Anthropic Messages and Gemini `generateContent` wire formats — success bodies, SSE streams with their exact
//! event sequences, real error bodies — and fail on cue: resets, hangs, cuts,
//! stalls, in-band errors, malformed chunks, missing terminators.
//!
//! Used by the gateway's integration tests, by SDK tests in other languages
//! (through the `backstop-fake` binary and its `/_fake/*` control routes), and by
//! benchmarks and `simulate`.
//!
//! - [`FakeProvider::start`] serves on `127.0.0.1:0` and returns a [`FakeHandle`].
//! - Each request to `POST …/chat/completions` (OpenAI), `POST /v1/messages`
//!   (Anthropic) or `POST /v1beta/models/{model}:generateContent` /
//!   `:streamGenerateContent?alt=sse` (Gemini) takes the next queued [`Step`], else
//!   the default step ([`Step::Echo`] unless set), and answers in the route's
//!   format, streaming when the request's `stream` is true (Gemini: when the
//!   method is `streamGenerateContent`).
//! - Over HTTP: `POST /_fake/script` (a JSON array of steps, appended),
//!   `POST /_fake/default` (one step), `GET /_fake/requests`, `POST /_fake/reset`,
//!   `POST /_fake/recording` (`{"on": false}`: stop recording, for benchmarks).
//!
//! Layout: [`step`] is the script, `plan` turns a step and a request into exact
//! bytes and delays (pure; `openai`, `anthropic` and `gemini` implement its `Wire` trait,
//! `text` and `ids` help them), `server` executes plans.

mod anthropic;
mod errors;
mod gemini;
mod ids;
mod openai;
mod plan;
mod redis_server;
mod server;
pub mod step;
mod text;

pub use plan::Format;
pub use redis_server::RedisServer;
pub use server::{FakeHandle, FakeProvider, Responder};
pub use step::{ErrorStep, Recorded, Reply, Step, ToolCall, Usage};
