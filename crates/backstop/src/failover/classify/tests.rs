#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reason_named(name: &str) -> Reason {
    serde_json::from_value(Value::String(name.to_string()))
        .unwrap_or_else(|_| panic!("{name:?} is not a reason"))
}

/// True when `text` holds a word that looks like a key (`sk-…`, `AIza…`, 16+ characters).
fn has_key_shaped_word(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|w| {
            w.len() >= 16
                && ["sk-", "sk_", "AIza", "xai-", "gsk_"]
                    .iter()
                    .any(|p| w.starts_with(p))
        })
}

fn assert_clean(f: &Failure, what: &str) {
    assert!(!f.message.trim().is_empty(), "{what}: empty message");
    assert!(!f.message.contains('\n'), "{what}: message is not one line");
    assert!(
        !has_key_shaped_word(&f.message),
        "{what}: key in {:?}",
        f.message
    );
    if let Some(u) = &f.upstream {
        assert!(!has_key_shaped_word(&u.message), "{what}: key in upstream");
    }
    if let Some(raw) = &f.raw_body {
        let raw = String::from_utf8_lossy(raw);
        assert!(!has_key_shaped_word(&raw), "{what}: key in raw body");
    }
}

/// Every `tests/fixtures/<provider>/<status>_<case>.<reason>.<ext>` (an HTTP error body)
/// and `stream_<case>.<reason>.json` (an in-band stream error) is one test case.
#[test]
fn corpus_of_real_error_bodies() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (dir, format, at_least) in [
        ("openai", WireFormat::OpenAi, 15),
        ("anthropic", WireFormat::Anthropic, 10),
        ("openrouter", WireFormat::OpenAi, 8),
        ("gemini", WireFormat::Gemini, 10),
    ] {
        let mut in_dir = 0;
        for entry in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let parts: Vec<&str> = name.split('.').collect();
            let [case, expected, _ext] = parts.as_slice() else {
                continue; // other engineers' fixtures (`error_overloaded.json`, `*.sse`)
            };
            let body = Bytes::from(std::fs::read(&path).unwrap());
            let expected = reason_named(expected);
            let what = format!("{dir}/{name}");
            let f = if case.starts_with("stream_") {
                let err = match format {
                    WireFormat::Anthropic => crate::wire::anthropic::decode_error(&body),
                    _ => crate::wire::openai::decode_error(&body),
                }
                .unwrap_or_else(|| panic!("{what}: not an error body"));
                let f = classify_stream_error(&err, true);
                assert_eq!(f.phase, Phase::StreamAfterCommit, "{what}");
                f
            } else {
                let status: u16 = case
                    .split('_')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: name must start with the status"));
                let f = classify_status(format, status, None, body.clone());
                assert_eq!(f.status, Some(status), "{what}");
                assert_eq!(f.phase, Phase::Status, "{what}");
                if body.first() == Some(&b'{') || body.first() == Some(&b'[') {
                    assert!(f.upstream.is_some(), "{what}: body not decoded");
                }
                f
            };
            assert_clean(&f, &what);
            if f.reason != expected {
                failures.push(format!("{what}: got {} ({})", f.reason, f.message));
            }
            in_dir += 1;
        }
        assert!(in_dir >= at_least, "{dir}: only {in_dir} fixtures");
        checked += in_dir;
    }
    assert!(
        failures.is_empty(),
        "misclassified:\n{}",
        failures.join("\n")
    );
    assert!(checked >= 50, "{checked}");
}

fn openai_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    let v = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(v.to_string())
}

fn reason(format: WireFormat, status: u16, body: &str) -> Reason {
    classify_status(format, status, None, Bytes::from(body.to_string())).reason
}

#[test]
fn statuses_without_a_body() {
    for (status, expected) in [
        (400, R::BadRequest),
        (401, R::Auth),
        (402, R::Billing),
        (403, R::Auth),
        (404, R::ModelNotFound),
        (408, R::Timeout),
        (413, R::BadRequest),
        (422, R::BadRequest),
        (429, R::RateLimit),
        (500, R::ServerError),
        (502, R::ServerError),
        (503, R::Overloaded),
        (504, R::Timeout),
        (529, R::Overloaded),
        (520, R::ServerError),
        (301, R::Unknown),
        (302, R::Unknown),
        (409, R::Unknown),
        (418, R::Unknown),
        (200, R::Unknown),
    ] {
        for format in [
            WireFormat::OpenAi,
            WireFormat::Anthropic,
            WireFormat::Gemini,
        ] {
            let f = classify_status(format, status, None, Bytes::new());
            assert_eq!(f.reason, expected, "{status} {format:?}");
            assert!(
                f.message.starts_with(&format!("HTTP {status}")),
                "{}",
                f.message
            );
        }
    }
}

#[test]
fn odd_statuses_with_a_known_shape_use_the_type() {
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"x"}}"#;
    assert_eq!(reason(WireFormat::Anthropic, 409, body), R::BadRequest);
    // OpenRouter answers 200 with an error body when a model fails after routing.
    let body = r#"{"error":{"message":"Provider returned error","code":502}}"#;
    assert_eq!(reason(WireFormat::OpenAi, 200, body), R::ServerError);
}

#[test]
fn forbidden_is_auth_unless_the_body_says_otherwise() {
    let openai = |m: &str, code: Option<&str>| {
        classify_status(
            WireFormat::OpenAi,
            403,
            None,
            openai_body(m, "invalid_request_error", code),
        )
        .reason
    };
    assert_eq!(openai("You are not allowed to do this", None), R::Auth);
    assert_eq!(
        openai(
            "Project `proj_x` does not have access to model `gpt-4o`",
            Some("model_not_found")
        ),
        R::ModelNotFound
    );
    // Without the code, the message alone is enough.
    assert_eq!(
        openai(
            "Project `proj_x` does not have access to model `gpt-4o`",
            None
        ),
        R::ModelNotFound
    );
    assert_eq!(
        openai("This key is associated with a deactivated account.", None),
        R::AuthPermanent
    );
    let anthropic = |m: &str| {
        let body =
            serde_json::json!({"type":"error","error":{"type":"permission_error","message":m}});
        reason(WireFormat::Anthropic, 403, &body.to_string())
    };
    assert_eq!(
        anthropic("Your API key does not have permission to use the specified resource."),
        R::Auth
    );
    assert_eq!(
        anthropic("This organization has been disabled."),
        R::AuthPermanent
    );
    assert_eq!(
        anthropic("Your account has been disabled."),
        R::AuthPermanent
    );
    let gemini = |m: &str| {
        let body =
            serde_json::json!({"error":{"code":403,"message":m,"status":"PERMISSION_DENIED"}});
        reason(WireFormat::Gemini, 403, &body.to_string())
    };
    assert_eq!(gemini("The caller does not have permission"), R::Auth);
    assert_eq!(
        gemini("Your API key was reported as leaked. Please use another API key."),
        R::AuthPermanent
    );
    // OpenRouter uses 403 for moderation flags.
    let body = r#"{"error":{"code":403,"message":"x requires moderation on OpenAI. Your input was flagged for \"violence\"."}}"#;
    assert_eq!(reason(WireFormat::OpenAi, 403, body), R::ContentPolicy);
}

#[test]
fn codes_beat_messages_and_messages_beat_statuses() {
    // Gemini's rate-limit message talks of quota and billing; it is still a rate limit.
    let gemini = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED"}}"#;
    assert_eq!(reason(WireFormat::Gemini, 429, gemini), R::RateLimit);
    // OpenAI's identical message with the insufficient_quota code is billing.
    let openai = openai_body(
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        Some("insufficient_quota"),
    );
    assert_eq!(
        classify_status(WireFormat::OpenAi, 429, None, openai).reason,
        R::Billing
    );
    // A 400 that is really an auth or billing problem.
    let key = r#"{"error":{"code":400,"message":"API key expired. Please renew the API key.","status":"INVALID_ARGUMENT"}}"#;
    assert_eq!(reason(WireFormat::Gemini, 400, key), R::Auth);
    let credit = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
    assert_eq!(reason(WireFormat::Anthropic, 400, credit), R::Billing);
    // Anthropic's 402 billing_error type.
    let billing = r#"{"type":"error","error":{"type":"billing_error","message":"Billing error"}}"#;
    assert_eq!(reason(WireFormat::Anthropic, 402, billing), R::Billing);
    // A body in another format than the provider's is still read.
    assert_eq!(
        reason(
            WireFormat::OpenAi,
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
        ),
        R::Overloaded
    );
}

#[test]
fn stream_errors() {
    let err = |kind: Option<&str>, code: Option<&str>, message: &str| UpstreamErrorBody {
        kind: kind.map(str::to_string),
        code: code.map(str::to_string),
        message: message.to_string(),
        retry_after: None,
    };
    let f = classify_stream_error(&err(Some("overloaded_error"), None, "Overloaded"), false);
    assert_eq!(
        (f.reason, f.phase),
        (R::Overloaded, Phase::StreamBeforeCommit)
    );
    let f = classify_stream_error(&err(Some("rate_limit_error"), None, "slow down"), true);
    assert_eq!(
        (f.reason, f.phase),
        (R::RateLimit, Phase::StreamAfterCommit)
    );
    assert_eq!(f.status, None);
    // Nothing recognisable: the provider failed a request it had accepted.
    assert_eq!(
        classify_stream_error(&err(None, None, "boom"), true).reason,
        R::ServerError
    );
    assert_eq!(
        classify_stream_error(&err(None, None, ""), true).message,
        "the upstream stream reported an error"
    );
    // A numeric code stands in for the missing status.
    assert_eq!(
        classify_stream_error(&err(None, Some("429"), "Provider returned error"), true).reason,
        R::RateLimit
    );
    assert_eq!(
        classify_stream_error(
            &err(Some("UNAVAILABLE"), Some("503"), "The model is overloaded."),
            true
        )
        .reason,
        R::Overloaded
    );
    assert_eq!(
        classify_stream_error(&err(Some("invalid_request_error"), None, "x"), true).reason,
        R::BadRequest
    );
    assert_eq!(
        classify_stream_error(&err(None, Some("content_filter"), "x"), false).reason,
        R::ContentPolicy
    );
}

#[test]
fn transport_failures_are_timeouts() {
    for err in [
        TransportError::Connect("tcp connect error: Connection refused (os error 111)".into()),
        TransportError::ConnectTimeout,
        TransportError::Reset("connection closed before message completed".into()),
        TransportError::Other("error sending request".into()),
    ] {
        let f = classify_transport(&err);
        assert_eq!(
            (f.reason, f.phase, f.status),
            (R::Timeout, Phase::Transport, None),
            "{err}"
        );
        assert_eq!(f.message, err.to_string());
    }
    let f = classify_transport(&TransportError::Other(
        "bad header for sk-abcdefghijklmnopqrstuvwxyz123456".into(),
    ));
    assert!(!has_key_shaped_word(&f.message), "{}", f.message);
}

#[test]
fn aborted_has_its_constructor() {
    let f = aborted(Phase::StreamAfterCommit);
    assert_eq!((f.reason, f.phase), (R::Aborted, Phase::StreamAfterCommit));
}

#[test]
fn retry_after_forms() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
    let at = |v: &str| parse_retry_after_at(v, now);
    assert_eq!(at("2"), Some(Duration::from_secs(2)));
    assert_eq!(at(" 0.5 "), Some(Duration::from_millis(500)));
    assert_eq!(at("0"), Some(Duration::ZERO));
    assert_eq!(at("-1"), None);
    assert_eq!(at("soon"), None);
    assert_eq!(at(""), None);
    assert_eq!(at("NaN"), None);
    assert_eq!(
        at("Wed, 21 Oct 2015 07:28:30 GMT"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        at("Wed, 21 Oct 2015 07:27:00 GMT"),
        Some(Duration::ZERO),
        "past"
    );
    assert_eq!(
        at("Thu, 22 Oct 2015 07:28:00 GMT"),
        Some(MAX_RETRY_AFTER),
        "capped"
    );
    assert_eq!(at("999999999"), Some(MAX_RETRY_AFTER), "capped");
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
}

#[test]
fn retry_after_sources_in_order() {
    let gemini =
        std::fs::read(fixtures().join("gemini/429_resource_exhausted.rate_limit.json")).unwrap();
    let gemini = Bytes::from(gemini);
    // RetryInfo.retryDelay when there is no header.
    let f = classify_status(WireFormat::Gemini, 429, None, gemini.clone());
    assert_eq!(f.retry_after, Some(Duration::from_secs(15)));
    // The header wins over the body.
    let f = classify_status(WireFormat::Gemini, 429, Some("3"), gemini.clone());
    assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
    // retry-after-ms wins over retry-after.
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", http::HeaderValue::from_static("20"));
    headers.insert("retry-after-ms", http::HeaderValue::from_static("1500"));
    let f = classify_status_with(WireFormat::Gemini, 429, &headers, gemini);
    assert_eq!(f.retry_after, Some(Duration::from_millis(1500)));
    // Else the message ("Please try again in 9.816s").
    let body =
        std::fs::read(fixtures().join("openai/429_rate_limit_tokens.rate_limit.json")).unwrap();
    let f = classify_status(WireFormat::OpenAi, 429, None, Bytes::from(body));
    assert_eq!(f.retry_after, Some(Duration::from_millis(9816)));
    let body =
        std::fs::read(fixtures().join("openai/429_rate_limit_requests.rate_limit.json")).unwrap();
    let f = classify_status(WireFormat::OpenAi, 429, None, Bytes::from(body));
    assert_eq!(f.retry_after, Some(Duration::from_millis(120)));
    // Nothing said: nothing guessed.
    let f = classify_status(WireFormat::OpenAi, 429, Some("soon"), Bytes::new());
    assert_eq!(f.retry_after, None);
}

#[test]
fn durations_in_bodies() {
    assert_eq!(parse_duration("17s"), Some(Duration::from_secs(17)));
    assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("644ms"), Some(Duration::from_millis(644)));
    assert_eq!(
        parse_duration("1m12.5s"),
        Some(Duration::from_millis(72_500))
    );
    assert_eq!(parse_duration("2h"), Some(MAX_RETRY_AFTER));
    for bad in ["", "s", "12", "12x", "1.2.3s", "a moment"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(retry_in_message("please try again in a moment."), None);
    assert_eq!(
        retry_in_message("please retry in 53.5s."),
        Some(Duration::from_millis(53_500))
    );
}

#[test]
fn no_key_survives_in_a_failure() {
    let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let body = openai_body(
        &format!(
            "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        Some("invalid_api_key"),
    );
    let f = classify_status(WireFormat::OpenAi, 401, None, body);
    assert_eq!(f.reason, R::Auth);
    assert!(
        f.message.contains("Incorrect API key provided: sk-…6789."),
        "{}",
        f.message
    );
    assert_clean(&f, "openai key echo");
    // The scrubbed raw body is still the provider's error, for passthrough.
    assert!(crate::wire::openai::decode_error(f.raw_body.as_ref().unwrap()).is_some());
    let gemini = format!(
        r#"{{"error":{{"code":403,"message":"Permission denied: Consumer 'api_key:AIzaSyD{}' has been suspended.","status":"PERMISSION_DENIED"}}}}"#,
        "x".repeat(32)
    );
    let f = classify_status(WireFormat::Gemini, 403, None, Bytes::from(gemini));
    assert_eq!(f.reason, R::AuthPermanent);
    assert_clean(&f, "gemini key echo");
    let f = classify_status(
        WireFormat::OpenAi,
        500,
        None,
        Bytes::from(format!("proxy failed for key {key}")),
    );
    assert_clean(&f, "plain text");
    let f = classify_stream_error(
        &UpstreamErrorBody {
            kind: None,
            code: None,
            message: format!("bad key {key}"),
            retry_after: None,
        },
        true,
    );
    assert_clean(&f, "stream");
}

#[test]
fn messages_are_one_bounded_line() {
    let long = format!("line one\nline   two {}", "y".repeat(5000));
    let f = classify_status(
        WireFormat::OpenAi,
        400,
        None,
        openai_body(&long, "invalid_request_error", None),
    );
    assert!(f.message.starts_with("line one line two y"));
    assert_eq!(f.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(f.message.ends_with('…'));
    // An HTML error page is not a message.
    let f = classify_status(
        WireFormat::OpenAi,
        502,
        None,
        Bytes::from_static(b"<html><body>502</body></html>"),
    );
    assert_eq!(f.message, "HTTP 502 Bad Gateway");
    assert!(f.upstream.is_none());
}

#[test]
fn gemini_bodies_decode() {
    let v: Value = serde_json::from_str(
        r#"[{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}]"#,
    )
    .unwrap();
    let e = decode_gemini_error(&v).unwrap();
    assert_eq!(
        (e.kind.as_deref(), e.code.as_deref(), e.message.as_str()),
        (Some("RESOURCE_EXHAUSTED"), Some("429"), "m")
    );
    assert_eq!(
        decode_gemini_error(&serde_json::json!({"candidates": []})),
        None
    );
    let (reason, delay) = google_details(&serde_json::json!({"error":{"details":[
        {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"},
        {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2.5s"}]}}));
    assert_eq!(
        (reason.as_str(), delay),
        ("API_KEY_INVALID", Some(Duration::from_millis(2500)))
    );
}

fn tier(w: When) -> u8 {
    match w {
        Id(_) => 0,
        Says(_) => 1,
        Status(..) => 2,
        Kind(_) => 3,
    }
}

#[test]
fn the_table_is_ordered_and_well_formed() {
    for pair in RULES.windows(2) {
        assert!(
            tier(pair[0].0) <= tier(pair[1].0),
            "{:?} is out of its tier",
            pair[1].0
        );
    }
    for (i, (when, _)) in RULES.iter().enumerate() {
        if let Says(text) = when {
            assert_eq!(
                *text,
                text.to_lowercase(),
                "Says rows are matched lowercased"
            );
        }
        if let Status(lo, hi) = when {
            assert!(
                lo <= hi && is_error_status(*lo) && is_error_status(*hi),
                "{when:?}"
            );
        }
        assert!(
            !RULES[..i].iter().any(|(w, _)| w == when),
            "duplicate row {when:?}"
        );
    }
}

proptest! {
    #[test]
    fn any_body_is_classified_without_leaking_keys(
        status in 100u16..600,
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        text in "[ -~]{0,80}",
    ) {
        let f = classify_status(WireFormat::OpenAi, status, None, Bytes::from(junk));
        prop_assert_eq!(f.status, Some(status));
        let body = openai_body(&format!("{text} sk-{}", "Z".repeat(40)), "x", None);
        let f = classify_status(WireFormat::Gemini, status, None, body);
        prop_assert!(!has_key_shaped_word(&f.message), "{}", f.message);
    }
}
