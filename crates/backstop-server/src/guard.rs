//! Client authentication, request ids, security headers, panic safety.

use crate::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use backstop::WireFormat;
use backstop::chat::{ClientError, ErrorKind};
use http::{HeaderName, HeaderValue, header};
use std::future::Future;
use std::sync::Arc;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-backstop-request-id");
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The request id of this request (set by [`request_id`]).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Which format a path's errors are written in.
pub fn format_for_path(path: &str) -> WireFormat {
    if path.starts_with("/v1/messages") {
        WireFormat::Anthropic
    } else {
        WireFormat::OpenAi
    }
}

/// An error response in the client's format.
pub fn error_response(format: WireFormat, err: &ClientError) -> Response {
    let body = backstop::render::error_body(format, err);
    let status =
        http::StatusCode::from_u16(err.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Give every request an id and echo it on the response (whatever answers it, a refusal
/// by [`authenticate`] too), then authenticate it: the two in one layer, each layer
/// costing a clone of the inner service and a boxed future per request.
pub async fn request_id_and_auth(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    guarded(&state, req, |mut req, id| {
        req.extensions_mut().insert(id);
        next.run(req)
    })
    .await
}

/// What [`request_id_and_auth`] does around `next`: the router's layer, and the chat
/// routes served without the router ([`crate::Direct`]), which hand the id to the
/// handler as it is (the router's layer puts it in the request's extensions).
pub(crate) async fn guarded<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request, RequestId) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = new_request_id(fastrand::u64(..), fastrand::u32(..));
    let header = HeaderValue::from_str(&id);
    let id = RequestId(id);
    let mut resp = authenticate(state, req, move |req| next(req, id)).await;
    if let Ok(v) = header {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// `req_` and 24 hex digits: what `format!("req_{a:016x}{b:08x}")` writes, without
/// the formatting machinery.
fn new_request_id(a: u64, b: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_000000000000000000000000";
    // Both numbers as one 96-bit one, least significant digit last.
    let n = (u128::from(a) << 32) | u128::from(b);
    for (i, d) in id[4..].iter_mut().rev().enumerate() {
        *d = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(&id)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The client keys a request carries: `Authorization: Bearer …`, and `x-api-key` on
/// `/v1/messages` (the Anthropic SDK sends both when it has an api key and an auth
/// token; either one being right is enough).
fn presented_keys(req: &Request) -> [Option<&[u8]>; 2] {
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
    });
    let x_api_key = if req.uri().path().starts_with("/v1/messages") {
        req.headers()
            .get(X_API_KEY)
            .map(|v| v.as_bytes().trim_ascii())
    } else {
        None
    };
    [bearer, x_api_key]
}

/// When `server.api_keys` is set, every route but `/health` and `/ready` needs one of them.
async fn authenticate<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let keys = &state.config().server.api_keys;
    let path = req.uri().path();
    if keys.is_empty() || path == "/health" || path == "/ready" {
        return next(req).await;
    }
    let format = format_for_path(path);
    let candidates = presented_keys(&req);
    if candidates.iter().all(Option::is_none) {
        let msg = match format {
            WireFormat::Anthropic => {
                "missing API key: send it in the x-api-key header or as Authorization: Bearer <key>"
            }
            _ => "missing API key: send it as Authorization: Bearer <key>",
        };
        return error_response(format, &ClientError::new(ErrorKind::Authentication, msg));
    }
    // Compare against every key, in constant time each, without stopping early.
    let mut ok = false;
    for candidate in candidates.into_iter().flatten() {
        for k in keys {
            ok |= k.ct_eq(candidate);
        }
    }
    if !ok {
        return error_response(
            format,
            &ClientError::new(ErrorKind::Authentication, "invalid API key")
                .with_code("invalid_api_key"),
        );
    }
    next(req).await
}

/// A panic in a handler becomes a 500 in OpenAI's shape, never a dropped connection.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    error_response(
        WireFormat::OpenAi,
        &ClientError::new(ErrorKind::Api, "internal error in the gateway"),
    )
}

/// Strict security headers, when `server.security_headers` is on.
pub fn with_security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    use tower_http::set_header::SetResponseHeaderLayer;
    SECURITY_HEADERS
        .iter()
        .fold(router, |router, &(name, value)| {
            router.layer(SetResponseHeaderLayer::if_not_present(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            ))
        })
}

/// The security headers, innermost layer first: each is set unless the response has it.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
];

/// What the layers of [`with_security_headers`] do to a response.
pub(crate) fn set_security_headers(headers: &mut http::HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

impl IntoResponse for RequestId {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_formatted_hex() {
        let mut rng = fastrand::Rng::with_seed(3);
        for (a, b) in [
            (0, 0),
            (u64::MAX, u32::MAX),
            (0x0123_4567_89ab_cdef, 0x0a0b_0c0d),
        ]
        .into_iter()
        .chain((0..1000).map(|_| (rng.u64(..), rng.u32(..))))
        {
            assert_eq!(super::new_request_id(a, b), format!("req_{a:016x}{b:08x}"));
        }
    }
}
