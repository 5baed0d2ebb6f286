//! Gemini as an upstream: OpenAI and Anthropic clients served by a fake Gemini,
//! plain, streaming and with tools; a Gemini rate limit fails over; the fake sees
//! Google's URL, key header and body shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backstop::clock::ManualClock;
use backstop::config::{ConfigOrigin, Format, MapEnv};
use backstop::failover::Engine;
use backstop::state::MemoryStore;
use backstop_fake::{FakeHandle, FakeProvider, Recorded, Reply, Step, ToolCall, Usage};
use backstop_server::AppState;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

// ---- harness (after tests/failover_common) ----

struct Gateway {
    url: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl Gateway {
    async fn start(config: Value) -> Gateway {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = backstop::config::from_str(
            &config.to_string(),
            Format::Json5,
            ConfigOrigin::Environment,
            &MapEnv::new(),
        )
        .unwrap_or_else(|e| panic!("bad test config: {e}"));
        let engine = Arc::new(
            Engine::with_state(
                Arc::new(config),
                Arc::new(MemoryStore::new()),
                Arc::new(ManualClock::new(1_800_000_000_000)),
            )
            .expect("engine"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let state = Arc::new(AppState::with_engine(engine));
        tokio::spawn(async move {
            let _ = backstop_server::serve_state(state, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap();
        Gateway {
            url,
            client,
            _shutdown: tx,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("gateway answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("gateway body"),
        }
    }

    async fn chat(&self, body: &Value) -> Answer {
        self.post("/v1/chat/completions", body).await
    }

    async fn messages(&self, body: &Value) -> Answer {
        self.post("/v1/messages", body).await
    }
}

fn fake() -> FakeHandle {
    FakeProvider::start().expect("start fake provider")
}

/// A config whose default chain is `gm/gemini-2.5-flash` (on `gemini`), then `fallbacks`.
/// The Gemini fake first, then `oa/gpt-4o` on the OpenAI fake `oa`.
fn with_openai_fallback(gemini: &FakeHandle, oa: &FakeHandle) -> Value {
    let extra = json!({"oa": {
        "api": "openai",
        "base_url": oa.openai_base_url(),
        "auth": [{"profile": "main", "key": "sk-oa"}],
        "models": ["gpt-4o"],
    }});
    config(gemini, extra, &["oa/gpt-4o"])
}

fn config(gemini: &FakeHandle, extra: Value, fallbacks: &[&str]) -> Value {
    let mut providers = json!({
        "gm": {
            "api": "gemini",
            "base_url": gemini.gemini_base_url(),
            "auth": [{"profile": "main", "key": "AIzaFakeGeminiKey"}],
            "models": ["gemini-2.5-flash"],
        },
    });
    if let (Some(p), Value::Object(extra)) = (providers.as_object_mut(), extra) {
        p.extend(extra);
    }
    json!({
        "providers": providers,
        "agents": {"defaults": {"model": {"primary": "gm/gemini-2.5-flash", "fallbacks": fallbacks}}},
        "retry": {"max_attempts": 2, "backoff_ms": 5},
        "timeouts": {"connect_ms": 2000, "first_token_ms": 3000, "idle_ms": 3000, "request_ms": 10000},
    })
}

/// The data payloads of an SSE body, with their event names.
fn sse_events(body: &str) -> Vec<(Option<String>, Value)> {
    let normalized = body.replace("\r\n", "\n");
    let mut out = Vec::new();
    for block in normalized.split("\n\n") {
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            let data = data.join("\n");
            let v = if data == "[DONE]" {
                Value::String(data)
            } else {
                serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("client got a malformed event ({e}): {data}"))
            };
            out.push((event, v));
        }
    }
    out
}

fn reply(text: &str) -> Step {
    Step::Reply(Reply {
        text: text.into(),
        usage: Some(Usage {
            input_tokens: 11,
            output_tokens: 4,
        }),
        ..Reply::default()
    })
}

/// The fake saw Google's URL (streaming: the engine streams from every upstream),
/// the key in `x-goog-api-key`, and a `generateContent` body.
fn assert_gemini_request(r: &Recorded) {
    assert_eq!(
        r.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(r.query.as_deref(), Some("alt=sse"));
    assert_eq!(r.header("x-goog-api-key"), Some("AIzaFakeGeminiKey"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("x-api-key"), None);
    for key in ["model", "stream", "stream_options", "messages"] {
        assert!(r.body.get(key).is_none(), "{key} in {}", r.body);
    }
    assert!(r.body["contents"].is_array(), "{}", r.body);
}

// ---- OpenAI clients ----

#[tokio::test]
async fn openai_client_plain_answer_from_gemini() {
    let gm = fake();
    gm.push(reply("Foxes are clever."));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me about foxes"},
            ],
            "max_tokens": 50,
            "temperature": 0.2,
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-backstop-model"), Some("gm/gemini-2.5-flash"));
    let body = a.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini-2.5-flash");
    // An id in OpenAI's shape, derived from Gemini's `responseId`.
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() > 9, "{id}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Foxes are clever."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let seen = gm.requests();
    assert_eq!(seen.len(), 1);
    assert_gemini_request(&seen[0]);
    assert_eq!(
        seen[0].body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        seen[0].body["contents"],
        json!([{"role": "user", "parts": [{"text": "Tell me about foxes"}]}])
    );
    assert_eq!(seen[0].body["generationConfig"]["maxOutputTokens"], 50);
    assert_eq!(seen[0].body["generationConfig"]["temperature"], 0.2);
}

#[tokio::test]
async fn openai_client_streams_from_gemini() {
    let gm = fake();
    gm.push(reply("one two three"));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [{"role": "user", "content": "Count"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&a.body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<&Value> = events
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.is_object())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() > 9, "{id}");
    assert!(chunks.iter().all(|c| c["id"] == id), "one id per stream");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = chunks
        .iter()
        .rev()
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_gemini_request(&gm.requests()[0]);
}

#[tokio::test]
async fn openai_client_tools_through_gemini() {
    let gm = fake();
    gm.push(Step::Reply(Reply {
        tool_calls: vec![ToolCall {
            id: None,
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }],
        ..Reply::default()
    }));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false},
        "strict": true,
    }}]);
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": tools,
            "tool_choice": "required",
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let body = a.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let call_id = call["id"].as_str().unwrap().to_string();
    assert!(call_id.starts_with("call_"), "{call_id}");

    let seen = &gm.requests()[0].body;
    assert_eq!(
        seen["tools"],
        json!([{"functionDeclarations": [{
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                           "required": ["city"]},
        }]}])
    );
    assert_eq!(
        seen["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );

    // The next turn sends the result back: Gemini gets it by function name.
    gm.push(reply("It is sunny in Paris."));
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call_id, "content": "{\"sky\":\"sunny\"}"},
            ],
            "tools": tools,
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "It is sunny in Paris."
    );
    let contents = &gm.requests()[1].body["contents"];
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(
        contents[1]["parts"][0]["functionCall"],
        json!({"name": "get_weather", "args": {"city": "Paris"}})
    );
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [{"functionResponse": {
            "name": "get_weather", "response": {"output": {"sky": "sunny"}}}}]})
    );
}

// ---- Anthropic clients ----

#[tokio::test]
async fn anthropic_client_plain_answer_from_gemini() {
    let gm = fake();
    gm.push(reply("Foxes are clever."));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .messages(&json!({
            "model": "default",
            "max_tokens": 64,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Tell me about foxes"}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let body = a.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "gemini-2.5-flash");
    // An id in Anthropic's shape, derived from Gemini's `responseId`.
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("msg_") && id.len() > 4, "{id}");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Foxes are clever."}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 11);
    assert_eq!(body["usage"]["output_tokens"], 4);
    let seen = &gm.requests()[0];
    assert_gemini_request(seen);
    assert_eq!(seen.body["generationConfig"]["maxOutputTokens"], 64);
}

#[tokio::test]
async fn anthropic_client_streams_from_gemini() {
    let gm = fake();
    gm.push(reply("one two three"));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .messages(&json!({
            "model": "default",
            "max_tokens": 64,
            "stream": true,
            "messages": [{"role": "user", "content": "Count"}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let events = sse_events(&a.body);
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    let delta = events
        .iter()
        .find(|(e, _)| e.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta.1["usage"]["output_tokens"], 4);
    assert_eq!(
        events[0].1["message"]["model"], "gemini-2.5-flash",
        "{}",
        a.body
    );
    let id = events[0].1["message"]["id"].as_str().unwrap();
    assert!(id.starts_with("msg_") && id.len() > 4, "{id}");
}

// ---- failover ----

#[tokio::test]
async fn gemini_rate_limit_fails_over_to_the_next_model() {
    let gm = fake();
    let oa = fake();
    gm.push(Step::error(429));
    oa.push(Step::text("Served by OpenAI."));
    let gw = Gateway::start(with_openai_fallback(&gm, &oa)).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [{"role": "user", "content": "Tell me about foxes"}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "Served by OpenAI."
    );
    assert_eq!(a.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(a.header("x-backstop-fallback"), Some("rate_limit"));
    assert_eq!(a.header("x-backstop-attempts"), Some("2"));
    let seen = gm.requests();
    assert_eq!(seen.len(), 1, "a rate limit with no other key moves on");
    assert_gemini_request(&seen[0]);
    assert_eq!(oa.requests().len(), 1);
}

#[tokio::test]
async fn gemini_bad_request_goes_back_to_the_client() {
    let gm = fake();
    gm.push(Step::error_kind(400, "invalid_request"));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .messages(&json!({
            "model": "default",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let body = a.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request contains an invalid argument."),
        "{body}"
    );
}

#[tokio::test]
async fn gemini_stream_error_before_content_fails_over() {
    let gm = fake();
    let oa = fake();
    // An overloaded target is retried once (retry.max_attempts 2) before the next model.
    let overloaded = Step::StreamThenError {
        text: "never".into(),
        after_chunks: 0,
        error: json!("overloaded"),
    };
    gm.push_many([overloaded.clone(), overloaded]);
    oa.push(Step::text("Rescued."));
    let gw = Gateway::start(with_openai_fallback(&gm, &oa)).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-backstop-model"), Some("oa/gpt-4o"));
    assert_eq!(a.header("x-backstop-fallback"), Some("overloaded"));
    assert_eq!(a.header("x-backstop-attempts"), Some("3"));
    assert_eq!(gm.requests().len(), 2);
    let text: String = sse_events(&a.body)
        .iter()
        .filter_map(|(_, v)| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Rescued.");
}

/// Google says when to retry in a `RetryInfo` detail, not a `Retry-After` header: the
/// gateway honours it like the header (20 s is over `max_retry_after_ms`, so no wait;
/// the all-failed 429 tells the client when to come back).
#[tokio::test]
async fn gemini_retry_info_is_honoured_like_retry_after() {
    let gm = fake();
    gm.set_default(Step::rate_limited(20));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(gm.requests().len(), 1, "20 s is over max_retry_after_ms");
    let retry_after: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((20..=22).contains(&retry_after), "{retry_after}");
    let message = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("rate_limit [429]"), "{message}");
}

/// A Gemini turn that ends in `finishReason: MALFORMED_FUNCTION_CALL` (no content).
fn malformed_function_call(text: &str) -> Step {
    Step::Reply(Reply {
        text: text.into(),
        finish_reason: Some("MALFORMED_FUNCTION_CALL".into()),
        ..Reply::default()
    })
}

/// A broken function call is no answer: it is a `server_error` (retried, then failed
/// over), never an empty `stop` that an agent would read as a finished turn.
#[tokio::test]
async fn gemini_malformed_function_call_fails_over() {
    for stream in [false, true] {
        let gm = fake();
        let oa = fake();
        gm.push_many([malformed_function_call(""), malformed_function_call("")]);
        oa.push(Step::text("Rescued."));
        let gw = Gateway::start(with_openai_fallback(&gm, &oa)).await;
        let a = gw
            .messages(&json!({
                "model": "default",
                "max_tokens": 64,
                "stream": stream,
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
            }))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-backstop-model"), Some("oa/gpt-4o"), "{stream}");
        assert_eq!(a.header("x-backstop-fallback"), Some("server_error"));
        assert_eq!(a.header("x-backstop-attempts"), Some("3"));
        assert_eq!(gm.requests().len(), 2, "retried once, as a server error");
        let text = if stream {
            sse_events(&a.body)
                .iter()
                .filter_map(|(_, v)| v["delta"]["text"].as_str().map(str::to_string))
                .collect::<String>()
        } else {
            a.json()["content"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text, "Rescued.");
    }
}

/// After content has reached the client, it ends the stream with an in-band error.
#[tokio::test]
async fn gemini_malformed_function_call_after_content_is_an_in_band_error() {
    let gm = fake();
    gm.set_default(malformed_function_call("Let me look that up."));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "stream": true,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let events = sse_events(&a.body);
    assert!(
        !events.iter().any(|(_, v)| v == "[DONE]"),
        "not a finished answer: {}",
        a.body
    );
    assert!(
        !events
            .iter()
            .any(|(_, v)| v["choices"][0]["finish_reason"].is_string()),
        "no finish reason: {}",
        a.body
    );
    let error = events
        .iter()
        .find_map(|(_, v)| v.get("error"))
        .unwrap_or_else(|| panic!("an in-band error: {}", a.body));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("MALFORMED_FUNCTION_CALL"), "{message}");
}

/// OpenAI accepts a conversation of one system message; Gemini refuses empty
/// `contents`, so the system prompt is sent as the user's turn.
#[tokio::test]
async fn a_system_prompt_alone_reaches_gemini_as_the_user_turn() {
    let gm = fake();
    gm.push(reply("A fox, quick."));
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "messages": [{"role": "system", "content": "Write a haiku about foxes."}],
        }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = &gm.requests()[0].body;
    assert_eq!(
        seen["contents"],
        json!([{"role": "user", "parts": [{"text": "Write a haiku about foxes."}]}])
    );
    assert!(seen.get("systemInstruction").is_none(), "{seen}");
}

/// The same `RetryInfo` in an in-band stream error (its message not repeating the
/// delay) is honoured too.
#[tokio::test]
async fn gemini_retry_info_of_an_in_band_error_is_honoured() {
    let gm = fake();
    gm.set_default(Step::StreamThenError {
        text: "never".into(),
        after_chunks: 0,
        error: json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}],
        }}),
    });
    let gw = Gateway::start(config(&gm, json!({}), &[])).await;
    let a = gw
        .chat(&json!({
            "model": "default",
            "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(gm.requests().len(), 1, "20 s is over max_retry_after_ms");
    let retry_after: u64 = a
        .header("retry-after")
        .unwrap_or_else(|| panic!("a retry-after header: {:?}", a.headers))
        .parse()
        .unwrap();
    assert!((20..=22).contains(&retry_after), "{retry_after}");
}
