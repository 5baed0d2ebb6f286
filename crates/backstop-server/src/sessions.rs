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

/// The keys of a `PUT` body that set pins: the short names, and the names a
/// `GET` answers with (so a session read, edited and written back is accepted).
const PIN_FIELDS: [&str; 5] = [
    "model",
    "profile",
    "provider_override",
    "model_override",
    "profile_override",
];

/// The other keys of a `GET` answer: accepted in a `PUT` body and ignored.
const READ_ONLY_FIELDS: [&str; 5] = [
    "id",
    "model_override_source",
    "profile_override_source",
    "fallback_notice",
    "updated_at",
];

/// One field of a `PUT` body: absent, `null` or a string.
type Field<'a> = Option<Option<&'a str>>;

/// The model and profile a `PUT` asks for, from the short names (`model`,
/// `profile`) and the `GET` names (`provider_override` + `model_override`,
/// `profile_override`). Both forms of one pin must agree. A `GET`-named value
/// equal to what the session already holds leaves that pin alone (so writing
/// back a read session does not turn its automatic pins into user pins).
fn merge_get_shape<'a>(
    model: Field<'a>,
    profile: Field<'a>,
    provider_override: Field<'a>,
    model_override: Field<'a>,
    profile_override: Field<'a>,
    current: Option<&Session>,
) -> Result<(Option<Option<String>>, Field<'a>), ClientError> {
    let from_get = match (provider_override, model_override) {
        (None, None) => None,
        (Some(None), Some(None)) => Some(None),
        (Some(Some(p)), Some(Some(m))) => Some(Some(format!("{p}/{m}"))),
        _ => {
            return Err(ClientError::invalid(
                "provider_override and model_override go together: both strings or both null",
            )
            .with_param(if provider_override.is_none() {
                "provider_override"
            } else {
                "model_override"
            }));
        }
    };
    let held_model = current.and_then(|s| {
        s.provider_override
            .as_ref()
            .zip(s.model_override.as_ref())
            .map(|(p, m)| format!("{p}/{m}"))
    });
    let model = match (model, from_get) {
        (Some(short), Some(long)) if short != long.as_deref() => {
            return Err(ClientError::invalid(format!(
                "model ({}) and provider_override/model_override ({}) disagree; send one",
                shown(short),
                shown(long.as_deref())
            ))
            .with_param("model"));
        }
        (Some(short), _) => Some(short.map(str::to_string)),
        (None, Some(long)) if long == held_model => None,
        (None, long) => long,
    };
    let held_profile = current.and_then(|s| s.profile_override.as_deref());
    let profile = match (profile, profile_override) {
        (Some(short), Some(long)) if short != long => {
            return Err(ClientError::invalid(format!(
                "profile ({}) and profile_override ({}) disagree; send one",
                shown(short),
                shown(long)
            ))
            .with_param("profile"));
        }
        (Some(short), _) => Some(short),
        (None, Some(long)) if long == held_profile => None,
        (None, long) => long,
    };
    Ok((model, profile))
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "null".to_string(), |s| format!("{s:?}"))
}

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
    const SHAPE: &str = r#"expected {"model": "provider/model" | null, "profile": "name" | null} or the provider_override, model_override, profile_override of a GET"#;
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return invalid(format!("request body is not valid JSON ({e}); {SHAPE}")),
    };
    let Value::Object(fields) = body else {
        return invalid(format!("request body must be a JSON object; {SHAPE}"));
    };
    if let Some(k) = fields
        .keys()
        .find(|k| !PIN_FIELDS.contains(&k.as_str()) && !READ_ONLY_FIELDS.contains(&k.as_str()))
    {
        return invalid(format!(
            "unknown field {k:?}; valid: {} (and, ignored, the read-only {})",
            PIN_FIELDS.join(", "),
            READ_ONLY_FIELDS.join(", ")
        ));
    }
    if !PIN_FIELDS.iter().any(|k| fields.contains_key(*k)) {
        return invalid(format!("nothing to set; {SHAPE}"));
    }
    let mut wanted = [None; PIN_FIELDS.len()];
    for (i, key) in PIN_FIELDS.into_iter().enumerate() {
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
    let [
        model,
        profile,
        provider_override,
        model_override,
        profile_override,
    ] = wanted;
    let current = state.sessions.get(&id);
    let (model, profile) = match merge_get_shape(
        model,
        profile,
        provider_override,
        model_override,
        profile_override,
        current.as_ref(),
    ) {
        Ok(pins) => pins,
        Err(e) => return error_response(WireFormat::OpenAi, &e),
    };
    let pins = match session::user_pins(
        &state.config(),
        model.as_ref().map(|m| m.as_deref()),
        profile,
        current.as_ref(),
    ) {
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
