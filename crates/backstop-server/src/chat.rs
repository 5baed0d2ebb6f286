//! `POST /v1/chat/completions` and `POST /v1/messages`: decode, resolve, execute, render.

use crate::AppState;
use crate::guard::{RequestId, error_response};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use backstop::WireFormat;
use backstop::chat::{ClientError, ErrorKind};
use backstop::config::ResolveError;
use backstop::failover::relay::{Committed, relay};
use backstop::failover::session::SessionCtx;
use backstop::failover::{Answer, Call, RawBody, Success};
use backstop::render;
use backstop::state::session::{PROFILE_HEADER, SESSION_HEADER, check_id, user_pins};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use std::sync::Arc;

pub const MODEL: HeaderName = HeaderName::from_static("x-backstop-model");
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-backstop-attempts");
pub const FALLBACK: HeaderName = HeaderName::from_static("x-backstop-fallback");
pub const FALLBACK_NOTICE: HeaderName = HeaderName::from_static("x-backstop-fallback-notice");
pub const FALLBACKS_HEADER: &str = "x-backstop-fallbacks";
// Request headers looked up by name: a `HeaderName` is found without parsing a `&str`.
const FALLBACKS: HeaderName = HeaderName::from_static(FALLBACKS_HEADER);
const SESSION: HeaderName = HeaderName::from_static(SESSION_HEADER);
const PROFILE: HeaderName = HeaderName::from_static(PROFILE_HEADER);
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

pub async fn openai(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let id = request_id(&req);
    handle(state, WireFormat::OpenAi, req, id).await
}

pub async fn anthropic(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let id = request_id(&req);
    handle(state, WireFormat::Anthropic, req, id).await
}

/// The id the guard layer gave a request (through the router).
fn request_id(req: &Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

pub(crate) async fn handle(
    state: Arc<AppState>,
    ingress: WireFormat,
    req: Request,
    request_id: String,
) -> Response {
    let started = std::time::Instant::now();
    let metrics = state.engine().metrics.clone();
    let (resp, upstream_time) = match serve(state, ingress, req, request_id).await {
        Ok(ok) => ok,
        Err(err) => (error_response(ingress, &err), std::time::Duration::ZERO),
    };
    metrics.request(ingress.as_str(), resp.status().as_u16());
    metrics.overhead(
        ingress.as_str(),
        started.elapsed().saturating_sub(upstream_time),
    );
    resp
}

/// The response, and the time spent on upstreams (for the overhead histogram).
async fn serve(
    state: Arc<AppState>,
    ingress: WireFormat,
    req: Request,
    request_id: String,
) -> Result<(Response, std::time::Duration), ClientError> {
    let config = state.config();
    let (parts, body) = req.into_parts();
    let limit = config.server.max_body_bytes;
    let too_large = || {
        ClientError::new(
            ErrorKind::RequestTooLarge,
            format!(
                "request body is larger than the limit of {limit} bytes (server.max_body_bytes)"
            ),
        )
    };
    let wanted = Wanted::of(&parts.headers);
    if let Some(len) = wanted
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    // Bodies are read as they come: a compressed one would only fail as "not valid JSON".
    if let Some(enc) = wanted.content_encoding.map(|v| v.as_bytes().trim_ascii())
        && !(enc.is_empty() || enc.eq_ignore_ascii_case(b"identity"))
    {
        return Err(ClientError::invalid(format!(
            "content-encoding {} is not supported: send the request body uncompressed",
            String::from_utf8_lossy(enc)
        ))
        .with_status(415));
    }
    let bytes = body_bytes(body, limit).await.map_err(|()| too_large())?;
    let (raw, request) = decode_body(ingress, bytes, config.server.max_json_depth)?;
    let fallbacks = match wanted.fallbacks {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ClientError::invalid(format!("{FALLBACKS_HEADER}: not valid text"))
                .with_param(FALLBACKS_HEADER)
        })?),
    };
    let route = config
        .resolve(&request.model, fallbacks)
        .map_err(|e| match e {
            ResolveError::UnknownModel { message, .. } => {
                ClientError::new(ErrorKind::NotFound, message)
                    .with_code("model_not_found")
                    .with_param("model")
            }
            ResolveError::BadFallbacks { message } => {
                ClientError::invalid(message).with_param(FALLBACKS_HEADER)
            }
        })?;
    let session = session_for(&state, wanted.session, wanted.profile)?;
    let include_usage = ingress == WireFormat::OpenAi && raw.facts().include_usage;
    let call = Call {
        request_id,
        ingress,
        raw: Arc::new(raw),
        request: Arc::new(request),
        route,
        session,
        translate: false,
        anthropic_beta: match ingress {
            WireFormat::Anthropic => wanted.anthropic_beta.cloned(),
            _ => None,
        },
    };
    match state.engine().execute(&call).await {
        Ok(success) => {
            let upstream_time = success.upstream_time;
            Ok((respond(&state, call, include_usage, success), upstream_time))
        }
        Err(failure) => {
            let e = render::chain_error(ingress, |p| config.provider(p).map(|p| p.api), &failure);
            let mut resp = match e.passthrough {
                Some(body) => {
                    let mut r = Response::new(Body::from(body));
                    *r.status_mut() =
                        StatusCode::from_u16(e.error.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                None => error_response(ingress, &e.error),
            };
            set_attempts(resp.headers_mut(), failure.failed.len());
            // A client-side error returned as is was that model's answer.
            if let Some(v) = e
                .answered_by
                .as_deref()
                .and_then(|m| HeaderValue::from_str(m).ok())
            {
                resp.headers_mut().insert(MODEL, v);
            }
            if let Some(wait) = failure.retry_after {
                // Whole seconds, rounded up: a client must not come back before the soonest recovery.
                let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok((resp, failure.upstream_time))
        }
    }
}

/// `axum::body::to_bytes(body, limit)`: the body's data frames joined, refused (`Err`)
/// when they pass `limit` bytes or the body fails. The usual body, one data frame
/// (the HTTP/1 loop's), is its frame as it is, without the list of buffers that
/// collecting makes; a body says it ended (`is_end_stream`) only when no frame is left.
async fn body_bytes(mut body: Body, limit: usize) -> Result<Bytes, ()> {
    use axum::body::HttpBody;
    let mut left = limit;
    let mut whole = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while !body.is_end_stream() {
        let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        else {
            break;
        };
        // Trailers are not data (`to_bytes` leaves them out too).
        let Ok(data) = frame.map_err(drop)?.into_data() else {
            continue;
        };
        left = left.checked_sub(data.len()).ok_or(())?;
        if let Some(j) = &mut joined {
            j.extend_from_slice(&data);
        } else if whole.is_empty() {
            whole = data;
        } else if !data.is_empty() {
            let mut j = bytes::BytesMut::with_capacity(whole.len() + data.len());
            j.extend_from_slice(&whole);
            j.extend_from_slice(&data);
            joined = Some(j);
        }
    }
    Ok(joined.map_or(whole, bytes::BytesMut::freeze))
}

/// The request headers [`serve`] reads: each the first value of its name, as
/// `HeaderMap::get` gives it, found in one pass over the few headers a request has.
#[derive(Default)]
struct Wanted<'a> {
    content_length: Option<&'a HeaderValue>,
    content_encoding: Option<&'a HeaderValue>,
    fallbacks: Option<&'a HeaderValue>,
    session: Option<&'a HeaderValue>,
    profile: Option<&'a HeaderValue>,
    anthropic_beta: Option<&'a HeaderValue>,
}

impl<'a> Wanted<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut w = Wanted::default();
        for (name, value) in headers {
            let slot = if name == header::CONTENT_LENGTH {
                &mut w.content_length
            } else if name == header::CONTENT_ENCODING {
                &mut w.content_encoding
            } else if name == FALLBACKS {
                &mut w.fallbacks
            } else if name == SESSION {
                &mut w.session
            } else if name == PROFILE {
                &mut w.profile
            } else if name == ANTHROPIC_BETA {
                &mut w.anthropic_beta
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        w
    }
}

fn set_attempts(headers: &mut HeaderMap, n: usize) {
    // The common counts without formatting (the same text `HeaderValue::from` writes).
    let v = match n {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n as u64),
    };
    headers.insert(ATTEMPTS, v);
}

/// `provider/model`, as `ModelRef`'s `Display` writes it, in one exact allocation.
fn model_text(m: &backstop::config::ModelRef) -> Bytes {
    let mut v = Vec::with_capacity(m.provider.len() + 1 + m.model.len());
    v.extend_from_slice(m.provider.as_bytes());
    v.push(b'/');
    v.extend_from_slice(m.model.as_bytes());
    Bytes::from(v)
}

fn respond(state: &Arc<AppState>, call: Call, include_usage: bool, success: Success) -> Response {
    let ingress = call.ingress;
    // Headers go straight into the response (in the order they always had).
    let mut resp = Response::new(Body::empty());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_maybe_shared(model_text(&success.target.model)) {
        headers.insert(MODEL, v);
    }
    set_attempts(headers, success.attempts());
    if let Some(cleared) = &success.fallback_cleared
        && let Ok(v) = HeaderValue::from_str(cleared)
    {
        headers.insert(FALLBACK_NOTICE, v);
    }
    if let Some((reason, notice)) = success.fallback_notice() {
        headers.insert(FALLBACK, HeaderValue::from_static(reason));
        if let Ok(v) = HeaderValue::from_str(&notice) {
            headers.insert(FALLBACK_NOTICE, v);
        }
    }
    let upstream = success.upstream_format;
    let body = match success.answer {
        Answer::Complete { body, response } => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Body::from(render::complete_body(ingress, upstream, &body, &response))
        }
        Answer::Stream { head, rest } => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            let committed = Committed {
                target: success.target,
                upstream_format: upstream,
                head,
                rest,
            };
            Body::new(relay(state.engine(), call, committed, include_usage))
        }
    };
    *resp.body_mut() = body;
    resp
}

/// A client's body and its neutral request. The common shape of an OpenAI body is read
/// straight from its bytes; anything else (and every error) goes through a JSON value.
fn decode_body(
    ingress: WireFormat,
    bytes: Bytes,
    max_depth: usize,
) -> Result<(RawBody, backstop::chat::Request), ClientError> {
    // A body the fast path reads is valid JSON: its nesting, found on the way, is what
    // `check_depth` would count, without a pass of its own.
    if ingress == WireFormat::OpenAi
        && let Some((request, facts)) = backstop::wire::openai::decode_request_fast(&bytes)
    {
        if facts.spans.as_ref().is_none_or(|s| s.depth > max_depth) {
            return Err(too_deep(max_depth));
        }
        return Ok((RawBody::scanned(bytes, facts), request));
    }
    check_depth(&bytes, max_depth)?;
    let raw = parse_checked_json(&bytes)?;
    let request = match ingress {
        WireFormat::Anthropic => backstop::wire::anthropic::decode_request(&raw),
        _ => backstop::wire::openai::decode_request(&raw),
    }
    .map_err(|e| e.to_client_error())?;
    Ok((RawBody::parsed(bytes, raw), request))
}

/// Parse a client's JSON body, refusing nesting deeper than `max_depth` before parsing.
#[cfg(test)]
fn parse_json(bytes: &[u8], max_depth: usize) -> Result<serde_json::Value, ClientError> {
    check_depth(bytes, max_depth)?;
    parse_checked_json(bytes)
}

/// Parse a client's JSON body whose depth was checked.
fn parse_checked_json(bytes: &[u8]) -> Result<serde_json::Value, ClientError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ClientError::invalid(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ClientError::invalid("request body must be a JSON object"));
    }
    Ok(value)
}

fn too_deep(max_depth: usize) -> ClientError {
    ClientError::invalid(format!(
        "request body is nested deeper than {max_depth} levels (server.max_json_depth)"
    ))
}

fn check_depth(bytes: &[u8], max_depth: usize) -> Result<(), ClientError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: to its closing quote, stepping over escapes. A long
                // prompt is most of a body; it is skipped a vector at a time.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                        None => return Ok(()),
                        Some(rel) if bytes[i + rel] == b'\\' => i += rel + 2,
                        Some(rel) => {
                            i += rel;
                            break;
                        }
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(too_deep(max_depth));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The session of a request (`x-backstop-session`), with a user profile pin from
/// `x-backstop-profile` applied first.
fn session_for(
    state: &AppState,
    session: Option<&HeaderValue>,
    profile: Option<&HeaderValue>,
) -> Result<Option<SessionCtx>, ClientError> {
    let text = |header: HeaderName, value: Option<&HeaderValue>| {
        let name = header.as_str();
        value
            .map(|v| {
                v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                    ClientError::invalid(format!("{name}: not valid text")).with_param(name)
                })
            })
            .transpose()
    };
    let Some(id) = text(SESSION, session)?.filter(|s| !s.is_empty()) else {
        if profile.is_some() {
            return Err(ClientError::invalid(format!(
                "{PROFILE_HEADER} needs a session: send {SESSION_HEADER} too"
            ))
            .with_param(PROFILE_HEADER));
        }
        return Ok(None);
    };
    check_id(&id).map_err(|e| {
        ClientError::invalid(format!("{SESSION_HEADER}: {e}")).with_param(SESSION_HEADER)
    })?;
    if let Some(profile) = text(PROFILE, profile)?.filter(|s| !s.is_empty()) {
        let config = state.config();
        let current = state.sessions.get(&id);
        // Checked against the provider of the session's user model pin, else any provider.
        let pins =
            user_pins(&config, None, Some(Some(&profile)), current.as_ref()).map_err(|e| {
                ClientError::invalid(format!("{PROFILE_HEADER}: {e}")).with_param(PROFILE_HEADER)
            })?;
        state.sessions.update(&id, &mut |s| pins.apply(s));
    }
    Ok(Some(SessionCtx {
        id,
        store: state.sessions.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_limit_counts_only_structure() {
        assert!(check_depth(br#"{"a":[[1]]}"#, 3).is_ok());
        assert!(check_depth(br#"{"a":[[[1]]]}"#, 3).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":"\"[[[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":"\\"}[[["#, 2).is_err());
        assert!(check_depth(br#"{"a":"x\\\"[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":"unterminated [[[["#, 2).is_ok());
        assert!(check_depth(br#"{"a":"ends in a backslash \"#, 2).is_ok());
    }

    /// The byte-at-a-time scan `check_depth` replaced: the same verdict on any input.
    fn check_depth_bytewise(bytes: &[u8], max_depth: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max_depth {
                        return false;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        true
    }

    #[test]
    fn depth_scan_agrees_with_a_bytewise_scan() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"\"\\[]{}a";
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            let max = rng.usize(0..5);
            assert_eq!(
                check_depth(&body, max).is_ok(),
                check_depth_bytewise(&body, max),
                "{:?} at {max}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// A body the fast path reads is refused for its depth exactly when `check_depth`
    /// refuses it, with the same error.
    #[test]
    fn the_fast_path_refuses_the_depths_check_depth_refuses() {
        let bodies = [
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"[[{{"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x","x":[[1]]}]}"#,
            r#"{"model":"m","messages":[],"stop":["a"],"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","messages":[],"x":{"a":[{"b":"]]\"[["}]}}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"s"}],"n":1,"y":[]}"#,
        ];
        for body in bodies {
            assert!(
                backstop::wire::openai::decode_request_fast(body.as_bytes()).is_some(),
                "{body}"
            );
            for max in 0..8 {
                let want = check_depth(body.as_bytes(), max).map_err(|e| e.message);
                let got = decode_body(WireFormat::OpenAi, Bytes::from(body), max)
                    .map(drop)
                    .map_err(|e| e.message);
                assert_eq!(got, want, "{body} at {max}");
            }
        }
    }

    /// One pass finds what `HeaderMap::get` finds, repeated names and all.
    #[test]
    fn wanted_headers_are_the_first_of_their_names() {
        let names = [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            FALLBACKS,
            SESSION,
            PROFILE,
            ANTHROPIC_BETA,
            header::HOST,
            HeaderName::from_static("x-backstop-sessio"),
            HeaderName::from_static("x-other"),
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let mut h = HeaderMap::new();
            for i in 0..rng.usize(0..8) {
                let name = names[rng.usize(0..names.len())].clone();
                h.append(name, HeaderValue::from(i as u64));
            }
            let w = Wanted::of(&h);
            assert_eq!(w.content_length, h.get(header::CONTENT_LENGTH));
            assert_eq!(w.content_encoding, h.get(header::CONTENT_ENCODING));
            assert_eq!(w.fallbacks, h.get(FALLBACKS));
            assert_eq!(w.session, h.get(SESSION));
            assert_eq!(w.profile, h.get(PROFILE));
            assert_eq!(w.anthropic_beta, h.get(ANTHROPIC_BETA));
        }
    }

    #[test]
    fn header_texts_are_the_formatted_ones() {
        for n in 0..12 {
            let mut h = HeaderMap::new();
            set_attempts(&mut h, n);
            assert_eq!(h[&ATTEMPTS], HeaderValue::from(n as u64));
        }
        let m = backstop::config::ModelRef {
            provider: "oa".into(),
            model: "gpt-4o/x é".into(),
        };
        assert_eq!(model_text(&m), m.to_string().as_bytes());
    }

    /// `body_bytes` gives what `axum::body::to_bytes` gives (the same bytes, or a
    /// refusal for both) for bodies of one frame and of several (empty ones, a failing
    /// one), at limits around their length.
    #[test]
    fn body_bytes_is_to_bytes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        for case in 0..3000 {
            let frames: Vec<Option<Vec<u8>>> = (0..rng.usize(0..5))
                .map(|_| {
                    (rng.u8(..) > 20).then(|| {
                        let len = [0, 1, 7, 40][rng.usize(0..4)];
                        (0..len).map(|_| rng.u8(..)).collect()
                    })
                })
                .collect();
            let total: usize = frames.iter().flatten().map(Vec::len).sum();
            let limit = total.saturating_sub(2) + rng.usize(0..5);
            let one = case % 3 == 0;
            let body = || {
                if one {
                    let data: Vec<u8> = frames.iter().flatten().flatten().copied().collect();
                    Body::from(data)
                } else {
                    let items: Vec<Result<Bytes, std::io::Error>> = frames
                        .iter()
                        .map(|f| match f {
                            Some(d) => Ok(Bytes::from(d.clone())),
                            None => Err(std::io::Error::other("failed")),
                        })
                        .collect();
                    Body::from_stream(futures_util::stream::iter(items))
                }
            };
            let want = rt
                .block_on(axum::body::to_bytes(body(), limit))
                .map_err(drop);
            let got = rt.block_on(body_bytes(body(), limit));
            assert_eq!(got, want, "{frames:?} (one: {one}) at {limit}");
        }
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        assert_eq!(parse_json(b"", 8).unwrap_err().status, 400);
        assert_eq!(parse_json(b"{nope", 8).unwrap_err().status, 400);
        assert_eq!(parse_json(b"[1]", 8).unwrap_err().status, 400);
        assert!(parse_json(br#"{"model":"x"}"#, 8).is_ok());
    }
}
