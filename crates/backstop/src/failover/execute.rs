//! Execution: try the plan's targets until one answers.
//!
//! For a streaming request an attempt succeeds only once the upstream has
//! produced its first content (the commit point): every failure before that
//! moves on invisibly to the client.

use super::classify;
use super::decide::{Action, decide};
use super::failure::{Failure, Phase, Reason};
use super::plan::{AttemptPlan, Target};
use super::stream::{StreamItem, UpstreamDecoder, UpstreamStream};
use crate::chat::{self, StreamEvent, WireFormat};
use crate::config::{Config, ModelRef, Route};
use crate::provider::{Upstream, Upstreams, anthropic::DEFAULT_MAX_TOKENS};
use crate::sse::SseEvent;
use crate::wire;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Upper bound on an upstream error or answer body we are willing to buffer.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// One client request, decoded.
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: String,
    /// The format the client speaks.
    pub ingress: WireFormat,
    /// The client's body as sent (for same-format passthrough).
    pub raw: Arc<serde_json::Value>,
    /// The client's request in the neutral model (for cross-format translation).
    pub request: Arc<chat::Request>,
    pub route: Route,
}

/// An answer that reached the commit point.
pub enum Answer {
    /// A complete answer: the upstream's bytes and what they mean.
    Complete {
        body: Bytes,
        response: chat::Response,
    },
    /// A stream whose first content has arrived. `head` holds every event read so far.
    Stream {
        head: Vec<(SseEvent, Vec<StreamEvent>)>,
        rest: Box<UpstreamStream>,
    },
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub target: Target,
    pub failure: Failure,
}

/// The request was answered.
pub struct Success {
    pub target: Target,
    /// The format the answering upstream speaks.
    pub upstream_format: WireFormat,
    /// The chain's first model (to tell whether a fallback served).
    pub first_model: Option<ModelRef>,
    /// Attempts that failed before this one.
    pub failed: Vec<Attempt>,
    pub answer: Answer,
}

impl Success {
    /// Every upstream attempt, this one included.
    pub fn attempts(&self) -> usize {
        self.failed.len() + 1
    }

    /// Whether a model other than the chain's first answered.
    pub fn is_fallback(&self) -> bool {
        self.target.model_index > 0
    }

    /// `(reason, one-line notice)` when a fallback answered.
    pub fn fallback_notice(&self) -> Option<(Reason, String)> {
        if !self.is_fallback() {
            return None;
        }
        let first = self.first_model.as_ref()?;
        let cause = self
            .failed
            .iter()
            .rev()
            .find(|a| &a.target.model == first)
            .or_else(|| self.failed.last())?;
        Some((
            cause.failure.reason,
            format!(
                "switched to {} ({} {})",
                self.target.model,
                cause.target.model,
                cause.failure.reason.describe()
            ),
        ))
    }
}

/// Every target failed (or one failure must go back to the client as is).
#[derive(Debug, Clone)]
pub struct ChainFailure {
    pub failed: Vec<Attempt>,
    /// Models that could not be tried at all, with why.
    pub unusable: Vec<(ModelRef, String)>,
    /// True when the last failure was returned on purpose (a client-side error).
    pub returned: bool,
}

/// The engine: configuration plus one pooled client per provider.
pub struct Engine {
    pub config: Arc<Config>,
    upstreams: Upstreams,
}

impl Engine {
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let upstreams = Upstreams::new(&config)?;
        Ok(Engine { config, upstreams })
    }

    /// Serve one call: plan, then try targets in order.
    pub async fn execute(&self, call: &Call) -> Result<Success, ChainFailure> {
        let plan = super::plan::plan(&self.config, &call.route);
        self.execute_plan(call, plan).await
    }

    async fn execute_plan(&self, call: &Call, plan: AttemptPlan) -> Result<Success, ChainFailure> {
        let deadline = Instant::now() + Duration::from_millis(self.config.timeouts.request_ms);
        let mut failed: Vec<Attempt> = Vec::new();
        let mut skip_model: Option<usize> = None;
        let first_model = call.route.targets.first().cloned();
        for target in plan.targets {
            if skip_model == Some(target.model_index) {
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            let Some(upstream) = self.upstreams.get(&target.model.provider).cloned() else {
                continue;
            };
            match self.attempt(call, &upstream, &target, deadline).await {
                Ok(answer) => {
                    tracing::debug!(request_id = %call.request_id, target = %target, "attempt succeeded");
                    return Ok(Success {
                        upstream_format: upstream.api(),
                        target,
                        first_model,
                        failed,
                        answer,
                    });
                }
                Err(failure) => {
                    let action = decide(&failure);
                    tracing::info!(
                        request_id = %call.request_id,
                        target = %target,
                        reason = %failure.reason,
                        status = failure.status,
                        action = ?action,
                        message = %failure.message,
                        "attempt failed"
                    );
                    failed.push(Attempt {
                        target: target.clone(),
                        failure,
                    });
                    match action {
                        Action::ReturnToClient => {
                            return Err(ChainFailure {
                                failed,
                                unusable: plan.unusable,
                                returned: true,
                            });
                        }
                        Action::NextModel => skip_model = Some(target.model_index),
                        Action::NextTarget => {}
                    }
                }
            }
        }
        Err(ChainFailure {
            failed,
            unusable: plan.unusable,
            returned: false,
        })
    }

    /// The body this upstream gets for this call.
    fn upstream_body(
        &self,
        call: &Call,
        upstream: &Upstream,
        model: &str,
    ) -> Result<Bytes, Failure> {
        let value = if upstream.api() == call.ingress {
            wire::with_model(&call.raw, model)
        } else {
            match upstream.api() {
                WireFormat::OpenAi => wire::openai::encode_request(&call.request, model),
                WireFormat::Anthropic => {
                    let max = upstream
                        .config
                        .model(model)
                        .and_then(|m| m.max_output_tokens)
                        .unwrap_or(DEFAULT_MAX_TOKENS);
                    wire::anthropic::encode_request(&call.request, model, max)
                }
                WireFormat::Gemini => {
                    return Err(Failure::new(
                        Reason::BadRequest,
                        Phase::Transport,
                        "the gemini wire format is not supported yet",
                    ));
                }
            }
        };
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| Failure::new(Reason::BadRequest, Phase::Transport, e.to_string()))
    }

    async fn attempt(
        &self,
        call: &Call,
        upstream: &Arc<Upstream>,
        target: &Target,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let stream = call.request.stream;
        let body = self.upstream_body(call, upstream, &target.model.model)?;
        let profile = upstream
            .config
            .profiles
            .iter()
            .find(|p| p.name == target.profile)
            .ok_or_else(|| {
                Failure::new(
                    Reason::Auth,
                    Phase::Transport,
                    "profile is no longer configured",
                )
            })?;
        let timeouts = self.config.timeouts;
        // Streaming: the response head must arrive within time-to-first-token.
        let head_deadline = if stream {
            deadline.min(Instant::now() + Duration::from_millis(timeouts.first_token_ms))
        } else {
            deadline
        };
        let response = match tokio::time::timeout_at(
            head_deadline,
            upstream.send(profile, &target.model.model, body, stream),
        )
        .await
        {
            Err(_) => {
                return Err(Failure::new(
                    Reason::Timeout,
                    Phase::Transport,
                    "no response from upstream in time",
                ));
            }
            Ok(Err(t)) => return Err(classify::classify_transport(&t)),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = read_body(response, deadline).await.unwrap_or_default();
            return Err(classify::classify_status(
                upstream.api(),
                status,
                retry_after.as_deref(),
                body,
            ));
        }
        if stream {
            self.commit_stream(upstream, response, head_deadline, deadline)
                .await
        } else {
            let body = read_body(response, deadline).await?;
            let parsed = match upstream.api() {
                WireFormat::Anthropic => wire::anthropic::decode_response(&body),
                _ => wire::openai::decode_response(&body),
            };
            match parsed {
                Ok(response) => Ok(Answer::Complete { body, response }),
                Err(e) => Err(Failure::new(
                    Reason::ServerError,
                    Phase::Body,
                    format!("upstream answered 200 with an invalid body: {}", e.message),
                )),
            }
        }
    }

    /// Read a stream up to its first content (or its clean end).
    async fn commit_stream(
        &self,
        upstream: &Upstream,
        response: reqwest::Response,
        first_token_deadline: Instant,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.starts_with("text/event-stream") {
            let status = response.status().as_u16();
            let body = read_body(response, deadline).await.unwrap_or_default();
            let mut f = classify::classify_status(upstream.api(), status, None, body);
            if f.upstream.is_none() {
                f.reason = Reason::ServerError;
                f.phase = Phase::Body;
                f.message = format!(
                    "upstream answered a stream request with content type {content_type:?}"
                );
            }
            return Err(f);
        }
        let decoder = UpstreamDecoder::new(upstream.api()).ok_or_else(|| {
            Failure::new(
                Reason::BadRequest,
                Phase::Transport,
                "unsupported wire format",
            )
        })?;
        let idle = Duration::from_millis(self.config.timeouts.idle_ms);
        let mut rest = Box::new(UpstreamStream::new(response, decoder, idle));
        let mut head = Vec::new();
        loop {
            let item = match tokio::time::timeout_at(first_token_deadline, rest.next_item()).await {
                Err(_) => {
                    return Err(Failure::new(
                        Reason::Timeout,
                        Phase::StreamBeforeCommit,
                        format!(
                            "no first token within {} ms",
                            self.config.timeouts.first_token_ms
                        ),
                    ));
                }
                Ok(item) => item,
            };
            match item {
                StreamItem::Event(raw, events) => {
                    let content = events.iter().any(StreamEvent::is_content);
                    head.push((raw, events));
                    if content {
                        rest.committed = true;
                        return Ok(Answer::Stream { head, rest });
                    }
                }
                // A complete answer without content (e.g. an empty completion) is still an answer.
                StreamItem::End => {
                    rest.committed = true;
                    return Ok(Answer::Stream { head, rest });
                }
                StreamItem::Failed(f) => return Err(f),
            }
        }
    }
}

/// Read a whole body within the deadline, bounded in size.
async fn read_body(mut response: reqwest::Response, deadline: Instant) -> Result<Bytes, Failure> {
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => {
                return Err(Failure::new(
                    Reason::Timeout,
                    Phase::Body,
                    "upstream body did not arrive in time",
                ));
            }
            Ok(Err(e)) => {
                return Err(Failure::new(
                    Reason::Timeout,
                    Phase::Body,
                    format!("upstream body broke: {}", crate::provider::body_error(e)),
                ));
            }
            Ok(Ok(None)) => return Ok(Bytes::from(buf)),
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > MAX_UPSTREAM_BODY {
                    return Err(Failure::new(
                        Reason::ServerError,
                        Phase::Body,
                        "upstream body is too large",
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}
