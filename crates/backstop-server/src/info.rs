//! `/v1/models`, `/health`, `/ready`, and the answers for unknown routes.

use crate::AppState;
use crate::guard::{error_response, format_for_path};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backstop::chat::{ClientError, ErrorKind};
use serde_json::json;
use std::sync::Arc;

/// `GET /v1/models`: `default`, every agent id, every catalogue `provider/model`.
/// In OpenAI's list shape, or Anthropic's when the client sends `anthropic-version`.
pub async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let ids = state.config().model_ids();
    if headers.contains_key("anthropic-version") {
        let data: Vec<_> = ids
            .iter()
            .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        return Json(json!({
            "data": data,
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        }))
        .into_response();
    }
    let data: Vec<_> = ids
        .iter()
        .map(|id| {
            let owner = id.split_once('/').map(|(p, _)| p).unwrap_or("backstop");
            json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready`: 200 when at least one chain has a usable target, else 503; names the chains that have none.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let config = state.config();
    let mut chains: Vec<(String, backstop::config::Chain)> =
        vec![("default".to_string(), config.default_chain.clone())];
    chains.extend(
        config
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.chain.clone())),
    );
    let mut unusable = Vec::new();
    for (name, chain) in &chains {
        let route = backstop::config::Route {
            agent: Some(name.clone()),
            targets: std::iter::once(chain.primary.clone())
                .chain(chain.fallbacks.iter().cloned())
                .collect(),
        };
        let usable = state
            .engine()
            .plan(&route)
            .targets
            .iter()
            .any(|t| t.usable_at.is_none());
        if !usable {
            unusable.push(name.clone());
        }
    }
    let ready = unusable.len() < chains.len();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "unusable_chains": unusable})),
    )
        .into_response()
}

pub async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    error_response(
        format_for_path(&path),
        &ClientError::new(
            ErrorKind::NotFound,
            format!(
                "no route {} {path}; Backstop serves POST /v1/chat/completions, POST /v1/messages, GET /v1/models, GET /health, GET /ready",
                req.method()
            ),
        ),
    )
}

pub async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path().to_string();
    error_response(
        format_for_path(&path),
        &ClientError::new(
            ErrorKind::InvalidRequest,
            format!("method {} is not allowed on {path}", req.method()),
        )
        .with_status(405),
    )
}
