//! `GET /v1/cooldowns`, `DELETE /v1/cooldowns/{scope}` and `DELETE /v1/cooldowns`:
//! see and clear cooldowns by hand (PRODUCT §8).

use crate::AppState;
use crate::guard::error_response;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backstop::WireFormat;
use backstop::chat::{ClientError, ErrorKind};
use backstop::failover::cooldown::Scope;
use serde_json::json;
use std::sync::Arc;

/// Every scope that is not closed: cooling down, disabled or half-open.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let items: Vec<_> = state
        .engine()
        .cooldowns
        .snapshot()
        .into_iter()
        .filter(|(_, s)| s.state != backstop::state::BreakerState::Closed)
        .map(|(scope, s)| backstop::state::cooldown_json(&scope, &s))
        .collect();
    Json(json!({ "cooldowns": items })).into_response()
}

/// Clear one scope: `openai:work`, `openai:work/gpt-4o` or `openai/gpt-4o`.
pub async fn clear(State(state): State<Arc<AppState>>, Path(scope): Path<String>) -> Response {
    let parsed: Scope = match scope.parse() {
        Ok(s) => s,
        Err(e) => {
            return error_response(
                WireFormat::OpenAi,
                &ClientError::invalid(format!(
                    "{scope:?} is not a cooldown scope ({e}); use provider:profile, provider:profile/model or provider/model"
                )),
            );
        }
    };
    if state.engine().cooldowns.clear(&parsed) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(
            WireFormat::OpenAi,
            &ClientError::new(ErrorKind::NotFound, format!("no cooldown for {scope}")),
        )
    }
}

/// Clear every cooldown.
pub async fn clear_all(State(state): State<Arc<AppState>>) -> Response {
    state.engine().cooldowns.clear_all();
    StatusCode::NO_CONTENT.into_response()
}
