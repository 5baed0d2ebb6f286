//! [`Direct`] against the router: the same answer (status, head as the HTTP/1 loop writes
//! it, body) to every request, chat routes or not, good or bad.

use super::*;
use axum::body::{Body, HttpBody};
use backstop::config::{ConfigOrigin, Format, MapEnv};
use backstop_fake::{FakeHandle, FakeProvider};
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const KEY: &str = "sk-client-direct-0123456789abcdef";

/// Latency-based health is off: a slow moment of a loaded machine would mark a target
/// degraded between the two calls of a case.
fn config(oa: &FakeHandle, an: &FakeHandle, keys: bool, security: bool) -> Config {
    let state = std::env::temp_dir().join(format!(
        "backstop-direct-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let keys = if keys {
        format!(r#""api_keys": ["{KEY}"],"#)
    } else {
        String::new()
    };
    let text = format!(
        r#"{{
  "server": {{ {keys} "security_headers": {security}, "max_body_bytes": 4096, "max_json_depth": 6 }},
  "providers": {{
    "oa": {{ "api": "openai", "base_url": "{oa}", "auth": [{{ "profile": "main", "key": "sk-up-oa-0123456789" }}], "models": ["gpt-4o"] }},
    "an": {{ "api": "anthropic", "base_url": "{an}", "auth": [{{ "profile": "main", "key": "sk-ant-up-0123456789" }}], "models": ["claude-m"] }}
  }},
  "agents": {{
    "defaults": {{ "model": {{ "primary": "oa/gpt-4o", "fallbacks": [] }} }},
    "list": [{{ "id": "cross", "model": {{ "primary": "an/claude-m", "fallbacks": [] }} }}]
  }},
  "state": {{ "dir": "{state}" }},
  "health": {{ "enabled": false }}
}}"#,
        oa = oa.openai_base_url(),
        an = an.anthropic_base_url(),
        state = state.display(),
    );
    backstop::config::from_str(
        &text,
        Format::Json5,
        ConfigOrigin::Environment,
        &MapEnv::default(),
    )
    .unwrap()
}

/// Ids and times a fake or the gateway draws anew for each answer.
fn mask(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "id" | "created" | "system_fingerprint" | "obfuscation"
                ) {
                    *v = Value::Null;
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

/// A body with its JSON (whole, or per SSE `data:` line) masked.
fn masked_body(bytes: &[u8]) -> String {
    if let Ok(mut v) = serde_json::from_slice::<Value>(bytes) {
        mask(&mut v);
        return v.to_string();
    }
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(|line| match line.strip_prefix("data: ") {
            Some(data) => match serde_json::from_str::<Value>(data) {
                Ok(mut v) => {
                    mask(&mut v);
                    format!("data: {v}")
                }
                Err(_) => line.to_string(),
            },
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    /// The head's lines as the HTTP/1 loop writes them (`date` left out).
    head: Vec<String>,
    body: String,
}

async fn seen(resp: axum::response::Response) -> Seen {
    let written = h1::written_head(&resp);
    let (parts, body) = resp.into_parts();
    let size = body.size_hint();
    let head = String::from_utf8(written)
        .unwrap()
        .split("\r\n")
        .filter(|line| !line.starts_with("date: "))
        .map(|line| match line.strip_prefix("x-backstop-request-id: ") {
            Some(v) => {
                assert!(v.len() == 28 && v.starts_with("req_"), "{v}");
                "x-backstop-request-id: req_…".to_string()
            }
            None => line.to_string(),
        })
        .collect();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Seen {
        status: parts.status,
        head,
        body: format!(
            "{:?}/{:?} {}",
            size.lower(),
            size.upper(),
            masked_body(&bytes)
        ),
    }
}

/// What the HTTP/1 loop does with a request: [`Direct`] for the chat routes.
async fn dispatch(direct: &Direct, router: &Router, req: Request<Body>) -> Seen {
    let resp = match direct.route(&req) {
        Some(ingress) => direct.call(ingress, req).await,
        None => router.clone().oneshot(req).await,
    };
    match resp {
        Ok(r) => seen(r).await,
        Err(never) => match never {},
    }
}

struct Case {
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Case {
    /// The request; a session named `session` (sessions keep state between requests:
    /// the two paths are compared on fresh sessions of the same name length).
    fn request(&self, session: &str) -> Request<Body> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.path);
        for (n, v) in &self.headers {
            let v = if v == "s-1" { session } else { v };
            b = b.header(*n, HeaderValue::from_str(v).unwrap());
        }
        b.body(Body::from(self.body.clone())).unwrap()
    }
}

fn cases() -> Vec<Case> {
    let openai = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"héllo \"there\"\n\u00e9 😀"}}],"max_tokens":50,"temperature":0.2,"stream":{stream}}}"#
        )
    };
    let anthropic = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","max_tokens":50,"system":"Be brief.","messages":[{{"role":"user","content":"hi there"}}],"stream":{stream}}}"#
        )
    };
    let deep = format!(
        r#"{{"model":"oa/gpt-4o","x":{}1{}}}"#,
        "[".repeat(9),
        "]".repeat(9)
    );
    let large = format!(
        r#"{{"model":"oa/gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(5000)
    );
    let bodies: Vec<String> = vec![
        openai("oa/gpt-4o", false),
        openai("oa/gpt-4o", true),
        openai("cross", false),
        openai("cross", true),
        openai("nope/none", false),
        anthropic("an/claude-m", false),
        anthropic("an/claude-m", true),
        anthropic("oa/gpt-4o", false),
        anthropic("oa/gpt-4o", true),
        String::new(),
        "  ".into(),
        "{nope".into(),
        "[1]".into(),
        r#"{"model":"oa/gpt-4o"}"#.into(),
        r#"{"model":"oa/gpt-4o","messages":"x"}"#.into(),
        deep,
        large,
    ];
    let auths: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![("authorization", format!("Bearer {KEY}"))],
        vec![("authorization", "Bearer sk-wrong".into())],
        vec![("x-api-key", KEY.into())],
        vec![
            ("x-api-key", "sk-wrong".into()),
            ("authorization", format!("bearer  {KEY} ")),
        ],
    ];
    let extras: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![("content-encoding", "gzip".into())],
        vec![("content-encoding", "Identity".into())],
        vec![("x-backstop-fallbacks", "nope".into())],
        vec![("x-backstop-fallbacks", "oa/gpt-4o".into())],
        vec![("x-backstop-session", "bad id with spaces".into())],
        vec![("x-backstop-session", "s-1".into())],
        vec![("x-backstop-profile", "main".into())],
        vec![("content-length", "999999".into())],
        vec![("anthropic-beta", "tools-2024".into())],
    ];
    let paths = [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/messages",
        "/v1/chat/completions/",
        "/V1/messages",
        "/v1/messages?beta=true",
        "/health",
        "/v1/models",
        "/nowhere",
    ];
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::with_seed(8);
    for path in paths {
        for method in [Method::POST, Method::GET, Method::PUT, Method::HEAD] {
            // Every body and header combination on the main routes, a sample elsewhere.
            let main = method == Method::POST && path.len() > 14 && !path.contains('?');
            for (bi, body) in bodies.iter().enumerate() {
                for (ai, auth) in auths.iter().enumerate() {
                    for (ei, extra) in extras.iter().enumerate() {
                        let all = main && (ei == 0 || (ai == 1 && bi < 9) || (ai == 3 && bi == 5));
                        if !all && rng.usize(0..60) != 0 {
                            continue;
                        }
                        let mut headers = vec![("content-type", "application/json".into())];
                        headers.extend(auth.iter().cloned());
                        headers.extend(extra.iter().cloned());
                        out.push(Case {
                            method: method.clone(),
                            path,
                            headers,
                            body: body.clone().into_bytes(),
                        });
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_answers_as_the_router() {
    let oa = FakeProvider::start().unwrap();
    let an = FakeProvider::start().unwrap();
    let cases = cases();
    assert!(cases.len() > 500, "{}", cases.len());
    for (keys, security) in [(true, true), (false, false), (true, false)] {
        let state = Arc::new(AppState::new(Arc::new(config(&oa, &an, keys, security))).unwrap());
        let router = router(state.clone());
        let direct = Direct::new(state);
        let mut direct_hits = 0;
        for (i, case) in cases.iter().enumerate() {
            direct_hits += usize::from(direct.route(&case.request("s-1")).is_some());
            let session = format!("s-{keys}-{security}-{i:04}");
            let by_router = match router.clone().oneshot(case.request(&session)).await {
                Ok(r) => seen(r).await,
                Err(never) => match never {},
            };
            let session = format!("s-{keys}-{security}-{:04}", i + 5000);
            let by_h1 = dispatch(&direct, &router, case.request(&session)).await;
            assert_eq!(
                by_router,
                by_h1,
                "{} {} {:?} {}",
                case.method,
                case.path,
                case.headers,
                String::from_utf8_lossy(&case.body)
            );
        }
        assert!(direct_hits > 300, "{direct_hits}");
    }
}
