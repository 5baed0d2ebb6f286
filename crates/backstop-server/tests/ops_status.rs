//! `/status` and `/metrics` across a scripted outage and recovery on the injected
//! clock (PRODUCT §5, §8): a key is rejected, cools down, turns half-open when its
//! window ends, and closes again on a successful probe; the chain's active target
//! follows; the failover is recorded; the metrics say the same.
#![allow(clippy::unwrap_used)]

mod ops_common;

use backstop::clock::{Clock, rfc3339};
use backstop_fake::{ErrorStep, Step};
use ops_common::*;
use serde_json::{Value, json};

const PRIMARY: &str = "openai/gpt-4o";
const FALLBACK: &str = "anthropic/claude-sonnet-4-5";

fn rejected_key() -> Step {
    Step::Error(ErrorStep {
        status: 401,
        body: Some(json!({"error": {
            "message": "Incorrect API key provided: sk-test-a************cdef. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        ..ErrorStep::default()
    })
}

/// The field names PRODUCT §8 gives, present in `v` (fields may be added, never renamed).
fn has_fields(v: &Value, names: &[&str], what: &str) {
    let have = keys(v);
    for n in names {
        assert!(have.iter().any(|h| h == n), "{what} lacks \"{n}\": {v:#}");
    }
}

fn assert_shape(s: &Value) {
    has_fields(s, &["providers", "chains", "events"], "the status document");
    for p in s["providers"].as_array().unwrap() {
        has_fields(p, &["id", "api", "profiles", "models"], "a provider");
        for a in p["profiles"].as_array().unwrap() {
            has_fields(
                a,
                &["id", "state", "reason", "until", "error_count", "last_used"],
                "a profile",
            );
        }
        for m in p["models"].as_array().unwrap() {
            has_fields(
                m,
                &["id", "state", "reason", "until", "latency_ms", "error_rate"],
                "a model",
            );
            assert_eq!(keys(&m["latency_ms"]), ["ewma", "p50", "p95"]);
        }
    }
    for c in s["chains"].as_array().unwrap() {
        has_fields(c, &["agent", "targets", "active"], "a chain");
        assert!(c["targets"].is_array());
    }
    for e in s["events"].as_array().unwrap() {
        assert_eq!(keys(e), ["at", "from", "reason", "request_id", "to"]);
    }
}

fn breaker(metrics: &str, state: &str) -> Option<f64> {
    sample(
        metrics,
        &format!(
            "backstop_breaker_state{{provider=\"openai\",profile=\"a\",model=\"gpt-4o\",state=\"{state}\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_follow_an_outage_and_its_recovery() {
    let (primary, fallback) = (fake(), fake());
    let gw = Gateway::start(two_model_config(&primary, &fallback, json!({}))).await;

    // Before any traffic: everything ok, no figures, the primary is active.
    let s = gw.status().await;
    assert_shape(&s);
    assert_eq!(s["now"], rfc3339(CLOCK_START_MS));
    let a = profile_of(&s, "openai", "a");
    assert_eq!(
        (&a["state"], &a["reason"], &a["until"]),
        (&json!("ok"), &Value::Null, &Value::Null)
    );
    assert_eq!(a["error_count"], 0);
    assert_eq!(a["last_used"], Value::Null);
    assert_eq!(a["last_error"], Value::Null);
    assert_eq!(a["key"], "sk-…cdef", "keys show redacted, never whole: {a}");
    assert!(!s.to_string().contains("0123456789abcdef"));
    let m = model_of(&s, "openai", "gpt-4o");
    assert_eq!(m["state"], "ok");
    assert_eq!(
        m["latency_ms"],
        json!({"ewma": null, "p50": null, "p95": null})
    );
    assert_eq!(m["error_rate"], Value::Null);
    assert_eq!(provider_of(&s, "openai")["api"], "openai");
    assert_eq!(provider_of(&s, "anthropic")["api"], "anthropic");
    let c = chain_of(&s, "default");
    assert_eq!(c["targets"], json!([PRIMARY, FALLBACK]));
    assert_eq!(c["active"], PRIMARY);
    assert_eq!(s["events"], json!([]));

    // Traffic, plain and streamed: latency figures appear.
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some(PRIMARY));
    let r = gw.chat_body(&chat_request(true), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = gw.status().await;
    assert_shape(&s);
    let m = model_of(&s, "openai", "gpt-4o");
    for figure in ["ewma", "p50", "p95"] {
        let v = m["latency_ms"][figure].as_f64();
        assert!(v.is_some_and(|v| v >= 0.0), "latency {figure}: {m}");
    }
    assert!(m["latency_ms"]["p50"].as_f64() <= m["latency_ms"]["p95"].as_f64());
    assert_eq!(m["error_rate"], 0.0);
    assert_eq!(
        profile_of(&s, "openai", "a")["last_used"],
        rfc3339(CLOCK_START_MS)
    );

    // The outage: the key is rejected; the fallback answers.
    gw.clock.advance(std::time::Duration::from_secs(60));
    let t_fail = gw.clock.now_ms();
    primary.push(rejected_key());
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some(FALLBACK));
    assert_eq!(r.header("x-backstop-fallback"), Some("auth"));
    let request_id = r.header("x-backstop-request-id").unwrap().to_string();
    let until_ms = gw
        .engine
        .cooldowns
        .usable_at("openai", "a", "gpt-4o")
        .expect("the rejected key cools down");
    let ahead = until_ms - t_fail;
    assert!(
        (300_000..=360_000).contains(&ahead),
        "auth cooldown is ~5 min: {ahead} ms"
    );

    let s = gw.status().await;
    assert_shape(&s);
    let a = profile_of(&s, "openai", "a");
    assert_eq!(a["state"], "cooldown", "{a}");
    assert_eq!(a["reason"], "auth");
    assert_eq!(a["until"], rfc3339(until_ms));
    assert_eq!(a["error_count"], 1);
    assert_eq!(a["last_error"]["reason"], "auth");
    assert_eq!(a["last_error"]["status"], 401);
    assert_eq!(a["last_error"]["at"], rfc3339(t_fail));
    let msg = a["last_error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("Incorrect API key provided"), "{msg}");
    let m = model_of(&s, "openai", "gpt-4o");
    assert_eq!(m["state"], "cooldown", "{m}");
    assert_eq!(m["reason"], "auth");
    assert_eq!(m["until"], rfc3339(until_ms));
    assert_eq!(m["error_rate"], 1.0 / 3.0);
    assert_eq!(m["last_error"]["status"], 401);
    assert_eq!(
        model_of(&s, "anthropic", "claude-sonnet-4-5")["state"],
        "ok"
    );
    assert_eq!(chain_of(&s, "default")["active"], FALLBACK);
    let events = s["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0],
        json!({"at": rfc3339(t_fail), "request_id": request_id, "from": PRIMARY, "to": FALLBACK, "reason": "auth"})
    );

    let text = gw.metrics().await;
    let has = |series: &str, want: f64| {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    };
    has(
        "backstop_requests_total{ingress=\"openai\",status=\"200\"}",
        3.0,
    );
    has(
        "backstop_attempts_total{provider=\"openai\",model=\"gpt-4o\",outcome=\"ok\"}",
        2.0,
    );
    has(
        "backstop_attempts_total{provider=\"openai\",model=\"gpt-4o\",outcome=\"auth\"}",
        1.0,
    );
    has(
        "backstop_attempts_total{provider=\"anthropic\",model=\"claude-sonnet-4-5\",outcome=\"ok\"}",
        1.0,
    );
    has(
        &format!(
            "backstop_failovers_total{{from=\"{PRIMARY}\",to=\"{FALLBACK}\",reason=\"auth\"}}"
        ),
        1.0,
    );
    assert_eq!(breaker(&text, "open"), Some(1.0), "{text}");
    assert_eq!(breaker(&text, "closed"), Some(0.0));
    assert_eq!(breaker(&text, "half_open"), Some(0.0));
    for (hist, labels, count) in [
        (
            "backstop_upstream_latency_seconds",
            "provider=\"openai\",model=\"gpt-4o\"",
            3.0,
        ),
        // Every answer that got a first token, the client's streamed or not (PRODUCT §5).
        (
            "backstop_time_to_first_token_seconds",
            "provider=\"openai\",model=\"gpt-4o\"",
            2.0,
        ),
        (
            "backstop_time_to_first_token_seconds",
            "provider=\"anthropic\",model=\"claude-sonnet-4-5\"",
            1.0,
        ),
        ("backstop_overhead_seconds", "ingress=\"openai\"", 3.0),
    ] {
        assert!(text.contains(&format!("# TYPE {hist} histogram")), "{hist}");
        let inf = sample(&text, &format!("{hist}_bucket{{{labels},le=\"+Inf\"}}"));
        let n = sample(&text, &format!("{hist}_count{{{labels}}}"));
        let sum = sample(&text, &format!("{hist}_sum{{{labels}}}"));
        assert!(n.is_some_and(|n| n >= 1.0), "{hist}_count: {text}");
        if count > 0.0 {
            assert_eq!(n, Some(count), "{hist}_count");
        }
        assert_eq!(inf, n, "{hist}: the +Inf bucket counts everything");
        assert!(sum.is_some_and(|s| s >= 0.0), "{hist}_sum");
        assert!(
            text.contains(&format!("{hist}_bucket{{{labels},le=\"0.1\"}}")),
            "{hist} buckets"
        );
    }

    // While it cools: the fallback serves without asking the primary.
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.header("x-backstop-model"), Some(FALLBACK));
    assert_eq!(primary.requests().len(), 3);
    let s = gw.status().await;
    assert_eq!(chain_of(&s, "default")["active"], FALLBACK);
    assert_eq!(profile_of(&s, "openai", "a")["state"], "cooldown");

    // The window ends: half-open, and the chain turns back to the primary to probe it.
    gw.set_clock(until_ms + 1);
    let s = gw.status().await;
    assert_shape(&s);
    let a = profile_of(&s, "openai", "a");
    assert_eq!(a["state"], "half_open", "{a}");
    assert_eq!(a["reason"], "auth");
    assert_eq!(model_of(&s, "openai", "gpt-4o")["state"], "half_open");
    assert_eq!(chain_of(&s, "default")["active"], PRIMARY);
    let text = gw.metrics().await;
    assert_eq!(breaker(&text, "half_open"), Some(1.0), "{text}");
    assert_eq!(breaker(&text, "open"), Some(0.0));

    // Recovery: the probe succeeds and everything is ok again.
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-model"), Some(PRIMARY));
    let s = gw.status().await;
    assert_shape(&s);
    let a = profile_of(&s, "openai", "a");
    assert_eq!(
        (&a["state"], &a["reason"], &a["until"]),
        (&json!("ok"), &Value::Null, &Value::Null),
        "{a}"
    );
    assert_eq!(a["error_count"], 0);
    assert_eq!(a["last_used"], rfc3339(until_ms + 1));
    let m = model_of(&s, "openai", "gpt-4o");
    assert_eq!(m["state"], "ok");
    assert_eq!(m["reason"], Value::Null);
    assert_eq!(m["requests"], json!({"ok": 3, "failed": 1}));
    assert_eq!(chain_of(&s, "default")["active"], PRIMARY);
    let events = s["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["request_id"] == request_id.as_str()),
        "the failover stays in the timeline: {events:?}"
    );
    // Newest first: traffic back on the primary says "fallback cleared" once, after
    // the failover itself.
    assert_eq!(events[0]["reason"], "fallback_cleared", "{events:?}");
    assert_eq!(events[0]["to"], PRIMARY, "{events:?}");
    assert_eq!(events[1]["to"], FALLBACK, "newest first: {events:?}");
    let text = gw.metrics().await;
    assert_eq!(breaker(&text, "closed"), Some(1.0), "{text}");
    assert_eq!(breaker(&text, "open"), Some(0.0));
    assert_eq!(breaker(&text, "half_open"), Some(0.0));
    has(
        "backstop_attempts_total{provider=\"openai\",model=\"gpt-4o\",outcome=\"auth\"}",
        1.0,
    );
    assert_eq!(
        sample(
            &text,
            "backstop_attempts_total{provider=\"openai\",model=\"gpt-4o\",outcome=\"ok\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "backstop_requests_total{ingress=\"openai\",status=\"200\"}"
        ),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_cools_per_model_and_the_metrics_name_the_reason() {
    let (primary, fallback) = (fake(), fake());
    primary.push(Step::rate_limited(20));
    let gw = Gateway::start(two_model_config(&primary, &fallback, json!({}))).await;
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));

    let s = gw.status().await;
    // A rate limit cools the key for this model only; the key serves no other model, so
    // it shows as cooling (as `auth-state.json` shows it), with its error counted, and
    // the model cannot be served by any key and says why and until when.
    let a = profile_of(&s, "openai", "a");
    assert_eq!(a["state"], "cooldown", "{a}");
    assert_eq!(a["reason"], "rate_limit");
    assert_eq!(a["error_count"], 1);
    let m = model_of(&s, "openai", "gpt-4o");
    assert_eq!(m["state"], "cooldown", "{m}");
    assert_eq!(m["reason"], "rate_limit");
    let until = gw
        .engine
        .cooldowns
        .usable_at("openai", "a", "gpt-4o")
        .unwrap();
    assert!(
        (20_000..=25_000).contains(&(until - CLOCK_START_MS)),
        "Retry-After 20 s"
    );
    assert_eq!(m["until"], rfc3339(until));
    assert_eq!(m["profiles"][0]["state"], "cooldown");
    assert_eq!(m["last_error"]["reason"], "rate_limit");
    assert_eq!(m["last_error"]["status"], 429);
    assert_eq!(chain_of(&s, "default")["active"], FALLBACK);
    assert_eq!(s["events"][0]["reason"], "rate_limit");

    let text = gw.metrics().await;
    assert_eq!(
        sample(
            &text,
            "backstop_attempts_total{provider=\"openai\",model=\"gpt-4o\",outcome=\"rate_limit\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "backstop_failovers_total{{from=\"{PRIMARY}\",to=\"{FALLBACK}\",reason=\"rate_limit\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(breaker(&text, "open"), Some(1.0));
}

/// A key cooling for one of its two models is `degraded` (the other model still uses
/// it), with the failure counted in its `error_count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cooling_for_one_of_its_models_is_degraded() {
    let (primary, fallback) = (fake(), fake());
    primary.push(Step::rate_limited(20));
    let gw = Gateway::start(config(
        json!({
            "openai": openai_provider(&primary, &["a"], json!(["gpt-4o", "gpt-4o-mini"])),
            "anthropic": anthropic_provider(&fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        json!({"retry": {"max_attempts": 1}}),
    ))
    .await;
    let r = gw.chat_with(&[]).await;
    assert_eq!(r.header("x-backstop-fallback"), Some("rate_limit"));
    let s = gw.status().await;
    let a = profile_of(&s, "openai", "a");
    assert_eq!(a["state"], "degraded", "{a}");
    assert_eq!(a["reason"], "rate_limit");
    assert_eq!(a["error_count"], 1);
    assert_eq!(model_of(&s, "openai", "gpt-4o-mini")["state"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_json_unless_a_browser_asks_for_html() {
    let (primary, fallback) = (fake(), fake());
    let mut config = two_model_config(&primary, &fallback, json!({}));
    // A password written in a base_url is never shown.
    let url = primary
        .openai_base_url()
        .replace("http://", "http://gw:hunter2@");
    config["providers"]["openai"]["base_url"] = json!(url);
    let gw = Gateway::start(config).await;
    let s = gw.status().await;
    assert_eq!(
        provider_of(&s, "openai")["base_url"],
        url.replace("hunter2", "****")
    );
    assert!(!s.to_string().contains("hunter2"));
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("text/html;q=0.5, application/json"),
        Some("text/html, */*"),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let r = gw.get("/status", &headers).await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{accept:?}: {:?}",
            r.header("content-type")
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_shape(&r.json());
    }
    let r = gw
        .get(
            "/status",
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.starts_with("<!doctype html>"));
}
