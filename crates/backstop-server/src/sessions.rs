//! `GET`, `PUT` and `DELETE /v1/sessions/{id}`: a session's failover fields
//! (PRODUCT §3.5, §8). Errors are in OpenAI's shape.

use crate::AppState;
use crate::guard::error_response;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backstop::WireFormat;
use backstop::chat::{ClientError, ErrorKind};
use backstop::clock::{Clock, rfc3339};
use backstop::config::Config;
use backstop::state::session::{
    self, MemorySessionStore, ResetOutcome, Session, SessionLimits, SessionStore,
};
use serde_json::{Value, json};
use std::sync::Arc;

/// A `PUT` body is two short strings; anything much larger is not one.
const MAX_PUT_BYTES: usize = 64 * 1024;

/// An in-memory store on `clock` (for a gateway around an injected engine).
pub fn memory_store(config: &Config, clock: Arc<dyn Clock>) -> Arc<dyn SessionStore> {
    Arc::new(MemorySessionStore::new(
        clock,
        SessionLimits::from_config(&config.state),
    ))
}

/// The JSON a client sees for a session.
pub fn view(s: &Session) -> Value {
    json!({
        "id": s.id,
        "provider_override": s.provider_override,
        "model_override": s.model_override,
        "profile_override": s.profile_override,
        "model_override_source": s.model_override_source.map(|p| p.as_str()),
        "profile_override_source": s.profile_override_source.map(|p| p.as_str()),
        "fallback_notice": s.fallback_notice,
        "updated_at": rfc3339(s.updated_at_ms),
    })
}

fn invalid(message: impl Into<String>) -> Response {
    error_response(WireFormat::OpenAi, &ClientError::invalid(message))
}

fn not_found(id: &str) -> Response {
    error_response(
        WireFormat::OpenAi,
        &ClientError::new(ErrorKind::NotFound, format!("no session {id:?}")),
    )
}

/// The id from the path, or the 400 to answer with.
fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, ClientError> {
    let Path(id) = path.map_err(|e| ClientError::invalid(format!("bad session id: {e}")))?;
    session::check_id(&id).map_err(|m| ClientError::invalid(m).with_param("id"))?;
    Ok(id)
}

/// `GET /v1/sessions/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match session_id(path) {
        Ok(id) => id,
        Err(e) => return error_response(WireFormat::OpenAi, &e),
    };
    match state.sessions.get(&id) {
        Some(s) => Json(view(&s)).into_response(),
        None => not_found(&id),
    }
}

/// `PUT /v1/sessions/{id}` with `{"model": "provider/model" | null, "profile": "name" | null}`:
/// set (or, with `null`, clear) user pins. A key left out is left alone.
pub async fn put(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let id = match session_id(path) {
        Ok(id) => id,
        Err(e) => return error_response(WireFormat::OpenAi, &e),
    };
    let limit = MAX_PUT_BYTES.min(state.config().server.max_body_bytes);
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return error_response(
            WireFormat::OpenAi,
            &ClientError::new(
                ErrorKind::RequestTooLarge,
                format!("a session body is at most {limit} bytes"),
            ),
        );
    };
    const SHAPE: &str = r#"expected {"model": "provider/model" | null, "profile": "name" | null}"#;
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return invalid(format!("request body is not valid JSON ({e}); {SHAPE}")),
    };
    let Value::Object(fields) = body else {
        return invalid(format!("request body must be a JSON object; {SHAPE}"));
    };
    if let Some(k) = fields.keys().find(|k| *k != "model" && *k != "profile") {
        return invalid(format!("unknown field {k:?}; valid: model, profile"));
    }
    let mut wanted = [None, None];
    for (i, key) in ["model", "profile"].into_iter().enumerate() {
        wanted[i] = match fields.get(key) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.as_str())),
            Some(other) => {
                return error_response(
                    WireFormat::OpenAi,
                    &ClientError::invalid(format!("{key} must be a string or null; got {other}"))
                        .with_param(key),
                );
            }
        };
    }
    let [model, profile] = wanted;
    if model.is_none() && profile.is_none() {
        return invalid(format!("nothing to set; {SHAPE}"));
    }
    let current = state.sessions.get(&id);
    let pins = match session::user_pins(&state.config(), model, profile, current.as_ref()) {
        Ok(p) => p,
        Err(m) => return invalid(m),
    };
    let s = state.sessions.update(&id, &mut |s| pins.apply(s));
    Json(view(&s)).into_response()
}

/// `DELETE /v1/sessions/{id}`: reset. Drops the auto pins and the fallback
/// notice; a session with no user pin left is gone.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match session_id(path) {
        Ok(id) => id,
        Err(e) => return error_response(WireFormat::OpenAi, &e),
    };
    match state.sessions.reset(&id) {
        ResetOutcome::NotFound => not_found(&id),
        ResetOutcome::Removed | ResetOutcome::Kept(_) => StatusCode::NO_CONTENT.into_response(),
    }
}
