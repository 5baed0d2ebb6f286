//! Streams that fail after content reached the client: cut, stall, malformed
//! chunk, missing terminator — rescued by prefill continuation or replay-and-splice,
//! else ended with an in-band error that names the first cause.
#![allow(clippy::unwrap_used)]

mod failover_common;

use backstop_fake::{ErrorStep, FakeHandle, Reply as FakeReply, Step, Usage};
use failover_common::*;
use serde_json::{Value, json};
use std::time::Duration;

const ANSWER: &str = "The quick brown fox jumps over the lazy dog.";
/// What the client has when the primary fails after two chunks ("The ", "quick ").
const DELIVERED: &str = "The quick ";

fn cut_after_two() -> Step {
    Step::StreamThenCut {
        text: ANSWER.into(),
        after_chunks: 2,
    }
}

fn reply(text: &str) -> Step {
    Step::text(text)
}

/// `openai/gpt-4o` first, `anthropic/claude-sonnet-4-5` as the fallback.
fn openai_then_anthropic(primary: &FakeHandle, fallback: &FakeHandle, overrides: Value) -> Value {
    config(
        json!({
            "openai": openai_provider(primary, &["a"], json!(["gpt-4o"])),
            "anthropic": anthropic_provider(fallback, &["t"], json!(["claude-sonnet-4-5"])),
        }),
        "openai/gpt-4o",
        &["anthropic/claude-sonnet-4-5"],
        overrides,
    )
}

/// `openai/gpt-4o` first, `backup/gpt-4o-mini` (OpenAI API: no prefill) as the fallback.
fn openai_then_openai(primary: &FakeHandle, fallback: &FakeHandle, overrides: Value) -> Value {
    config(
        json!({
            "openai": openai_provider(primary, &["a"], json!(["gpt-4o"])),
            "backup": openai_provider(fallback, &["x"], json!(["gpt-4o-mini"])),
        }),
        "openai/gpt-4o",
        &["backup/gpt-4o-mini"],
        overrides,
    )
}

/// The last message of an upstream request (either format).
fn last_message(fake: &FakeHandle, i: usize) -> Value {
    let reqs = fake.requests();
    let messages = reqs[i].body["messages"].as_array().unwrap().clone();
    messages.last().unwrap().clone()
}

fn assert_names_the_cut(error: &Value) {
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("(timeout:"),
        "the in-band error must name the first cause (the cut): {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_answer_is_continued_with_a_prefill_on_an_anthropic_fallback() {
    let (primary, fallback) = (fake(), fake());
    primary.push(cut_after_two());
    fallback.push(Step::Reply(FakeReply {
        text: " brown fox jumps over the lazy dog.".into(),
        usage: Some(Usage {
            input_tokens: 40,
            output_tokens: 8,
        }),
        ..FakeReply::default()
    }));
    let gw = Gateway::start(openai_then_anthropic(&primary, &fallback, json!({}))).await;
    let mut body = openai_request("default", true);
    body["stream_options"] = json!({"include_usage": true});

    let r = gw.chat(&body).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None, "{}", r.body);
    assert_eq!(s.text, ANSWER, "one coherent answer");
    assert!(s.done, "the rescued stream ends with [DONE]");
    assert_eq!(s.trailing, 0);
    // The fallback continued from an assistant prefill of what was delivered.
    assert_eq!(fallback.requests().len(), 1);
    assert_eq!(fallback.requests()[0].path, "/v1/messages");
    let last = last_message(&fallback, 0);
    assert_eq!(last["role"], "assistant", "{last}");
    assert_eq!(content_text(&last["content"]), DELIVERED.trim_end());
    assert_eq!(primary.requests().len(), 1);
    // Usage: the prompt of the attempt that finished the answer, and every completion
    // token the client received (the continuation's plus the delivered text's).
    let usage = s.usage.expect("usage chunk");
    assert_eq!(usage["prompt_tokens"], 40, "{usage}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((9..=12).contains(&completion), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_answer_is_spliced_when_the_replay_reproduces_the_delivered_text() {
    let (primary, fallback) = (fake(), fake());
    primary.push(cut_after_two());
    fallback.push(reply(ANSWER));
    let gw = Gateway::start(openai_then_openai(&primary, &fallback, json!({}))).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None, "{}", r.body);
    assert_eq!(s.text, ANSWER, "the delivered text appears once");
    assert!(s.done);
    // A replay: the client's own request, no prefill.
    assert_eq!(fallback.requests().len(), 1);
    assert_eq!(last_message(&fallback, 0)["role"], "user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_answer_ends_with_an_in_band_error_when_the_replay_diverges() {
    let (primary, fallback) = (fake(), fake());
    primary.push(cut_after_two());
    primary.set_default(reply("Foxes are small omnivores."));
    fallback.set_default(reply("Foxes are small omnivores."));
    let gw = Gateway::start(openai_then_openai(&primary, &fallback, json!({}))).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(
        s.text, DELIVERED,
        "nothing of the diverging replay reaches the client"
    );
    assert!(!s.done, "a partial answer is never finished with [DONE]");
    let error = s.error.expect("an in-band error");
    assert_names_the_cut(&error);
    assert!(!error.to_string().contains("diverged"), "{error}");
    assert!(!r.body.contains("omnivores"));
    assert!(!fallback.requests().is_empty(), "a replay was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_answer_on_anthropic_ingress_ends_with_an_anthropic_error_event() {
    let (primary, fallback) = (fake(), fake());
    primary.push(Step::StreamThenCut {
        text: ANSWER.into(),
        after_chunks: 2,
    });
    fallback.set_default(reply("Something else entirely."));
    primary.set_default(reply("Something else entirely."));
    let gw = Gateway::start(config(
        json!({
            "anthropic": anthropic_provider(&primary, &["t"], json!([{"id": "claude-sonnet-4-5", "prefill": false}])),
            "backup": openai_provider(&fallback, &["x"], json!(["gpt-4o-mini"])),
        }),
        "anthropic/claude-sonnet-4-5",
        &["backup/gpt-4o-mini"],
        json!({}),
    ))
    .await;

    let r = gw.messages(&anthropic_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_anthropic_stream(&r.body);
    assert_eq!(s.text, DELIVERED);
    assert!(!s.stopped, "no message_stop after a partial answer");
    let error = s.error.expect("an Anthropic error event");
    assert_names_the_cut(&error);
    assert!(error["type"].is_string(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_prefill_after_a_cut_does_not_mask_the_cut() {
    let (primary, fallback) = (fake(), fake());
    primary.push(cut_after_two());
    // The replay on the primary itself diverges too: nothing can rescue the answer.
    primary.set_default(reply("Foxes are small omnivores."));
    // A model that refuses prefill refuses it every time.
    fallback.set_default(Step::Error(ErrorStep {
        status: 400,
        body: Some(json!({"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "This model does not support assistant message prefill. The conversation must end with a user message."}})),
        ..ErrorStep::default()
    }));
    let gw = Gateway::start(openai_then_anthropic(&primary, &fallback, json!({}))).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.text, DELIVERED);
    assert!(!s.done);
    let error = s.error.expect("an in-band error");
    assert_names_the_cut(&error);
    assert!(!error.to_string().contains("prefill"), "{error}");
    assert!(!error.to_string().contains("invalid_request"), "{error}");
    // The prefill rescue was tried.
    let last = last_message(&fallback, 0);
    assert_eq!(last["role"], "assistant", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_mid_answer_is_rescued() {
    let (primary, fallback) = (fake(), fake());
    primary.push(Step::StreamThenStall {
        text: ANSWER.into(),
        after_chunks: 2,
    });
    fallback.push(reply(ANSWER));
    let gw = Gateway::start(openai_then_openai(
        &primary,
        &fallback,
        json!({"timeouts": {"idle_ms": 300}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None, "{}", r.body);
    assert_eq!(s.text, ANSWER);
    assert!(s.done);
    assert!(
        r.elapsed >= Duration::from_millis(290),
        "rescued before the idle timeout: {:?}",
        r.elapsed
    );
    assert!(r.elapsed < Duration::from_secs(3), "{:?}", r.elapsed);
    assert_eq!(fallback.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_without_any_rescue_names_the_stall() {
    let upstream = fake();
    upstream.push(Step::StreamThenStall {
        text: ANSWER.into(),
        after_chunks: 2,
    });
    upstream.set_default(Step::Hang);
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({"timeouts": {"idle_ms": 300, "first_token_ms": 300}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", true)).await;

    let s = parse_openai_stream(&r.body);
    assert_eq!(s.text, DELIVERED);
    assert!(!s.done);
    let error = s.error.expect("an in-band error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("stalled"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_never_reaches_the_client() {
    let upstream = fake();
    // The only target: the rescue replays it and splices.
    upstream.push_many([
        Step::StreamMalformed {
            text: ANSWER.into(),
            after_chunks: 2,
        },
        reply(ANSWER),
    ]);
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("not json"), "{}", r.body);
    // Every event the client got parses (parse_openai_stream panics otherwise).
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None, "{}", r.body);
    assert_eq!(s.text, ANSWER);
    assert!(s.done);
    assert_eq!(models_seen(&upstream), ["gpt-4o", "gpt-4o"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_before_content_fails_over_invisibly() {
    let (primary, fallback) = (fake(), fake());
    primary.push(Step::StreamMalformed {
        text: ANSWER.into(),
        after_chunks: 0,
    });
    let gw = Gateway::start(openai_then_openai(&primary, &fallback, json!({}))).await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("not json"));
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None);
    // Retried on the same target (a server error, not silence), whose next answer is the echo.
    assert_eq!(s.text, "echo: Tell me about foxes");
    assert!(s.done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_without_done_is_finalised() {
    let upstream = fake();
    upstream.push(Step::StreamNoDone {
        text: ANSWER.into(),
    });
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({}),
    ))
    .await;
    let mut body = openai_request("default", true);
    body["stream_options"] = json!({"include_usage": true});

    let r = gw.chat(&body).await;

    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!upstream.requests()[0].body.to_string().contains("[DONE]"));
    let s = parse_openai_stream(&r.body);
    assert_eq!(s.error, None);
    assert_eq!(s.text, ANSWER);
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert!(s.done, "finalised with data: [DONE]: {}", r.body);
    assert!(s.usage.is_some(), "usage survives: {}", r.body);
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    assert_eq!(
        upstream.requests().len(),
        1,
        "a complete answer is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream_without_message_stop_is_finalised() {
    let upstream = fake();
    upstream.push(Step::StreamNoDone {
        text: ANSWER.into(),
    });
    let gw = Gateway::start(config(
        json!({"anthropic": anthropic_provider(&upstream, &["t"], json!(["claude-sonnet-4-5"]))}),
        "anthropic/claude-sonnet-4-5",
        &[],
        json!({}),
    ))
    .await;

    let r = gw.messages(&anthropic_request("default", true)).await;

    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_anthropic_stream(&r.body);
    assert_eq!(s.error, None);
    assert_eq!(s.text, ANSWER);
    assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
    assert!(s.stopped, "finalised with message_stop: {}", r.body);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_running_at_the_request_deadline_ends_with_an_in_band_error() {
    // PRODUCT §3.4: one request-wide deadline bounds every attempt — a committed stream
    // too, however steadily it sends (each chunk well within idle_ms).
    let upstream = fake();
    let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    upstream.set_default(Step::Reply(FakeReply {
        text: words.join(" "),
        chunk_delay_ms: Some(100),
        ..FakeReply::default()
    }));
    let gw = Gateway::start(config(
        json!({"openai": openai_provider(&upstream, &["a"], json!(["gpt-4o"]))}),
        "openai/gpt-4o",
        &[],
        json!({"timeouts": {"connect_ms": 500, "first_token_ms": 500, "idle_ms": 1000, "request_ms": 1200}}),
    ))
    .await;

    let r = gw.chat(&openai_request("default", true)).await;

    assert!(r.elapsed < Duration::from_millis(2500), "{:?}", r.elapsed);
    let s = parse_openai_stream(&r.body);
    assert!(s.text.starts_with("w0 w1"), "{}", s.text);
    assert!(!s.done, "a cut answer must not end with [DONE]");
    let error = s.error.expect("an in-band error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("request deadline"), "{error}");
    // A long answer is not the target's fault: it does not cool down, and no rescue ran.
    assert_eq!(upstream.requests().len(), 1);
    let cooldowns = gw.get("/v1/cooldowns", &[]).await.json();
    assert_eq!(cooldowns["cooldowns"], json!([]), "{cooldowns}");
}
