//! Streams after the commit point, in both ingress formats, same-format and across
//! formats: a failure is never passed off as a complete answer (it ends with an
//! in-band error in the client's format), malformed bytes never leak, a stream
//! without its terminator is finalised, and a healthy same-format stream is
//! forwarded byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use backstop_fake::{FakeHandle, Reply, Step, Usage};
use common::*;
use serde_json::Value;
use std::time::Duration;

const TEXT: &str = "alpha beta gamma delta epsilon";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    OpenAi,
    Anthropic,
}

/// One way through the gateway: the client's format and a model whose only target
/// speaks the same or the other format.
#[derive(Debug, Clone, Copy)]
struct Case {
    client: Client,
    /// The agent: `solo` (OpenAI upstream) or `solo-claude` (Anthropic upstream).
    agent: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        client: Client::OpenAi,
        agent: "solo",
    },
    Case {
        client: Client::OpenAi,
        agent: "solo-claude",
    },
    Case {
        client: Client::Anthropic,
        agent: "solo-claude",
    },
    Case {
        client: Client::Anthropic,
        agent: "solo",
    },
];

impl Case {
    fn upstream<'a>(&self, fakes: &'a Fakes) -> &'a FakeHandle {
        if self.agent == "solo" {
            &fakes.oa
        } else {
            &fakes.an
        }
    }

    async fn stream(&self, gw: &Gateway) -> Got {
        match self.client {
            Client::OpenAi => send(gw.openai(&openai_body(self.agent, "hi", true))).await,
            Client::Anthropic => send(gw.anthropic(&anthropic_body(self.agent, "hi", true))).await,
        }
    }

    fn text(&self, got: &Got) -> String {
        match self.client {
            Client::OpenAi => got.openai_stream_text(),
            Client::Anthropic => got.anthropic_stream_text(),
        }
    }
}

async fn setup() -> (Fakes, Gateway) {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    (fakes, gw)
}

/// Assert the stream delivered a partial answer, then ended (cleanly, at the HTTP
/// level) with exactly one in-band error in the client's format and no normal end.
/// Returns the error message.
fn assert_in_band_error(case: Case, got: &Got, needles: &[&str]) -> String {
    let what = format!("{case:?}: {}", got.text());
    assert_eq!(got.status, 200, "{what}");
    assert_eq!(
        got.header("content-type"),
        Some("text/event-stream"),
        "{what}"
    );
    assert!(
        got.clean_end,
        "the gateway's own stream must end properly: {what}"
    );
    let delivered = case.text(got);
    assert!(
        !delivered.is_empty(),
        "no content before the failure: {what}"
    );
    assert!(
        TEXT.starts_with(&delivered) && delivered.len() < TEXT.len(),
        "{delivered:?}: {what}"
    );
    let events = got.events();
    let last = events.last().unwrap();
    let data: Value = serde_json::from_slice(&last.data)
        .unwrap_or_else(|_| panic!("last event is no JSON: {what}"));
    let message = match case.client {
        Client::OpenAi => {
            assert!(
                events.iter().all(|e| e.data != "[DONE]"),
                "[DONE] after a failure: {what}"
            );
            assert_eq!(last.event, None, "{what}");
            let err = data["error"]
                .as_object()
                .unwrap_or_else(|| panic!("no error object last: {what}"));
            assert!(err["type"].is_string(), "{what}");
            let errors = events
                .iter()
                .filter(|e| e.data_text().contains("\"error\""))
                .count();
            assert_eq!(errors, 1, "{what}");
            err["message"].as_str().unwrap().to_string()
        }
        Client::Anthropic => {
            let names: Vec<_> = events.iter().filter_map(|e| e.event.clone()).collect();
            assert!(
                !names.iter().any(|n| n == "message_stop"),
                "message_stop after a failure: {what}"
            );
            assert_eq!(names.iter().filter(|n| *n == "error").count(), 1, "{what}");
            assert_eq!(last.event.as_deref(), Some("error"), "{what}");
            assert_eq!(data["type"], "error", "{what}");
            assert!(data["error"]["type"].is_string(), "{what}");
            data["error"]["message"].as_str().unwrap().to_string()
        }
    };
    assert!(message.contains("incomplete"), "{message}");
    for n in needles {
        assert!(message.contains(n), "{message:?} lacks {n:?}");
    }
    message
}

#[tokio::test]
async fn a_cut_after_content_ends_with_an_in_band_error() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes).push(Step::StreamThenCut {
            text: TEXT.into(),
            after_chunks: 2,
        });
        let got = case.stream(&gw).await;
        assert_in_band_error(case, &got, &["timeout"]);
        assert_eq!(got.header("x-backstop-attempts"), Some("1"));
        // With no other target, one replay-and-splice rescue on the same target is allowed
        // (PRODUCT §8); the fake's replay (an echo) does not reproduce the delivered text,
        // so the client gets the in-band error naming the first cause, never more tries.
        assert!(case.upstream(&fakes).requests().len() <= 2);
    }
}

#[tokio::test]
async fn a_stall_after_content_ends_with_an_in_band_error_after_idle_ms() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes).push(Step::StreamThenStall {
            text: TEXT.into(),
            after_chunks: 2,
        });
        let got = case.stream(&gw).await;
        assert_in_band_error(case, &got, &["stalled", "300 ms"]);
        // idle_ms is 300; the request deadline 5000.
        assert!(
            got.elapsed >= Duration::from_millis(300),
            "{:?}",
            got.elapsed
        );
        assert!(
            got.elapsed < Duration::from_millis(3000),
            "{:?}",
            got.elapsed
        );
    }
}

#[tokio::test]
async fn a_malformed_chunk_never_reaches_the_client() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes).push(Step::StreamMalformed {
            text: TEXT.into(),
            after_chunks: 2,
        });
        let got = case.stream(&gw).await;
        assert!(
            !got.text().contains("{not json"),
            "{case:?}: {}",
            got.text()
        );
        assert_in_band_error(case, &got, &["malformed"]);
        // Every event the client got is valid JSON (or OpenAI's terminator, which must not be here).
        for e in got.events() {
            assert!(
                serde_json::from_slice::<Value>(&e.data).is_ok(),
                "{case:?}: {:?}",
                e.data
            );
        }
    }
}

#[tokio::test]
async fn an_in_band_upstream_error_after_content_ends_with_an_in_band_error() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes).push(Step::StreamThenError {
            text: TEXT.into(),
            after_chunks: 2,
            error: serde_json::json!("overloaded"),
        });
        let got = case.stream(&gw).await;
        assert_in_band_error(case, &got, &["overloaded"]);
    }
}

#[tokio::test]
async fn a_stream_without_its_terminator_is_finalised() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes)
            .push(Step::StreamNoDone { text: TEXT.into() });
        let got = case.stream(&gw).await;
        let what = format!("{case:?}: {}", got.text());
        assert_eq!(got.status, 200, "{what}");
        assert!(got.clean_end, "{what}");
        assert_eq!(case.text(&got), TEXT, "{what}");
        let events = got.events();
        let last = events.last().unwrap();
        match case.client {
            Client::OpenAi => {
                assert_eq!(last.data, "[DONE]", "{what}");
                assert_eq!(
                    events.iter().filter(|e| e.data == "[DONE]").count(),
                    1,
                    "{what}"
                );
                let finish = got
                    .json_events()
                    .iter()
                    .filter_map(|c| {
                        c.pointer("/choices/0/finish_reason")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .collect::<Vec<_>>();
                assert_eq!(finish, ["stop"], "{what}");
            }
            Client::Anthropic => {
                assert_eq!(last.event.as_deref(), Some("message_stop"), "{what}");
                assert_eq!(
                    serde_json::from_slice::<Value>(&last.data).unwrap()["type"],
                    "message_stop"
                );
                let names: Vec<_> = events.iter().filter_map(|e| e.event.clone()).collect();
                assert_eq!(
                    names.iter().filter(|n| *n == "message_stop").count(),
                    1,
                    "{what}"
                );
                assert!(names.contains(&"message_delta".to_string()), "{what}");
            }
        }
        assert!(!got.text().contains("\"error\""), "{what}");
    }
}

#[tokio::test]
async fn a_healthy_stream_ends_properly_in_every_direction() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        case.upstream(&fakes).push(Step::Reply(Reply {
            text: TEXT.into(),
            ..Reply::default()
        }));
        let got = case.stream(&gw).await;
        let what = format!("{case:?}: {}", got.text());
        assert_eq!(got.status, 200, "{what}");
        assert_eq!(
            got.header("content-type"),
            Some("text/event-stream"),
            "{what}"
        );
        assert_eq!(case.text(&got), TEXT, "{what}");
        let events = got.events();
        match case.client {
            Client::OpenAi => assert_eq!(events.last().unwrap().data, "[DONE]", "{what}"),
            Client::Anthropic => {
                assert_eq!(
                    events.first().unwrap().event.as_deref(),
                    Some("message_start"),
                    "{what}"
                );
                assert_eq!(
                    events.last().unwrap().event.as_deref(),
                    Some("message_stop"),
                    "{what}"
                );
            }
        }
    }
}

/// Replace the values of per-answer fields (ids, timestamps, fingerprints) so two
/// answers to the same request compare equal.
fn normalise(text: &str) -> String {
    let mut out = text.to_string();
    for key in [
        "\"id\":",
        "\"created\":",
        "\"system_fingerprint\":",
        "\"obfuscation\":",
    ] {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            let (before, after) = rest.split_at(at + key.len());
            result.push_str(before);
            let end = if let Some(s) = after.strip_prefix('"') {
                1 + s.find('"').unwrap() + 1
            } else {
                after.find([',', '}']).unwrap()
            };
            result.push_str("\"X\"");
            rest = &after[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

fn fixed_reply() -> Step {
    Step::Reply(Reply {
        text: TEXT.into(),
        usage: Some(Usage {
            input_tokens: 11,
            output_tokens: 5,
        }),
        ..Reply::default()
    })
}

#[tokio::test]
async fn a_same_format_stream_is_forwarded_byte_for_byte() {
    let (fakes, gw) = setup().await;
    // OpenAI: through the gateway, then straight to the fake with the body it got.
    fakes.oa.push(fixed_reply());
    let mut body = openai_body("solo", "hi", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let via = send(gw.openai(&body)).await;
    assert_eq!(via.status, 200, "{}", via.text());
    let upstream_body = fakes.oa.requests()[0].body.clone();
    assert_eq!(upstream_body["model"], "gpt-4o-mini");
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    fakes.oa.push(fixed_reply());
    let direct = send(
        client()
            .post(format!("{}/chat/completions", fakes.oa.openai_base_url()))
            .bearer_auth(OA_KEY)
            .json(&upstream_body),
    )
    .await;
    assert_eq!(direct.status, 200);
    assert!(direct.text().contains("data: [DONE]"));
    assert_eq!(normalise(&via.text()), normalise(&direct.text()));
    // The id really is the fake's: one per answer, the same in every chunk.
    assert!(
        via.json_events()[0]["id"]
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-")
    );

    // Anthropic.
    fakes.an.push(fixed_reply());
    let via = send(gw.anthropic(&anthropic_body("solo-claude", "hi", true))).await;
    assert_eq!(via.status, 200, "{}", via.text());
    let upstream_body = fakes.an.requests()[0].body.clone();
    assert_eq!(upstream_body["model"], "claude-sonnet-4-5");
    fakes.an.push(fixed_reply());
    let direct = send(
        client()
            .post(format!("{}/v1/messages", fakes.an.anthropic_base_url()))
            .header("x-api-key", AN_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&upstream_body),
    )
    .await;
    assert_eq!(direct.status, 200);
    assert!(direct.text().contains("event: message_stop"));
    assert_eq!(normalise(&via.text()), normalise(&direct.text()));
}

#[tokio::test]
async fn a_same_format_non_streamed_answer_matches_a_direct_one() {
    // A non-streamed request is streamed from the upstream (so time to first token and
    // stalls are seen) and the answer assembled: it must say exactly what a direct
    // non-streamed request to the provider says.
    let (fakes, gw) = setup().await;
    fakes.oa.push(fixed_reply());
    let body = openai_body("solo", "hi", false);
    let via = send(gw.openai(&body)).await;
    let upstream_body = fakes.oa.requests()[0].body.clone();
    assert_eq!(upstream_body["stream"], true);
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    let mut direct_body = upstream_body.clone();
    direct_body["stream"] = serde_json::Value::Bool(false);
    direct_body
        .as_object_mut()
        .unwrap()
        .remove("stream_options");
    fakes.oa.push(fixed_reply());
    let direct = send(
        client()
            .post(format!("{}/chat/completions", fakes.oa.openai_base_url()))
            .bearer_auth(OA_KEY)
            .json(&direct_body),
    )
    .await;
    assert_eq!((via.status, direct.status), (200, 200));
    let (v, d) = (via.json(), direct.json());
    for path in [
        "/object",
        "/model",
        "/choices/0/message/role",
        "/choices/0/message/content",
        "/choices/0/finish_reason",
        "/usage/prompt_tokens",
        "/usage/completion_tokens",
        "/usage/total_tokens",
    ] {
        assert_eq!(v.pointer(path), d.pointer(path), "{path}: {v} vs {d}");
    }
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));

    fakes.an.push(fixed_reply());
    let via = send(gw.anthropic(&anthropic_body("solo-claude", "hi", false))).await;
    let upstream_body = fakes.an.requests()[0].body.clone();
    assert_eq!(upstream_body["stream"], true);
    let mut direct_body = upstream_body.clone();
    direct_body["stream"] = serde_json::Value::Bool(false);
    fakes.an.push(fixed_reply());
    let direct = send(
        client()
            .post(format!("{}/v1/messages", fakes.an.anthropic_base_url()))
            .header("x-api-key", AN_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&direct_body),
    )
    .await;
    assert_eq!((via.status, direct.status), (200, 200));
    let (v, d) = (via.json(), direct.json());
    for path in [
        "/type",
        "/role",
        "/model",
        "/content",
        "/stop_reason",
        "/stop_sequence",
        "/usage/input_tokens",
        "/usage/output_tokens",
    ] {
        assert_eq!(v.pointer(path), d.pointer(path), "{path}: {v} vs {d}");
    }
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
}

#[tokio::test]
async fn include_usage_gets_a_usage_chunk_from_an_anthropic_upstream() {
    let (fakes, gw) = setup().await;
    fakes.an.push(fixed_reply());
    let mut body = openai_body("solo-claude", "hi", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let got = send(gw.openai(&body)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let events = got.events();
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks = got.json_events();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], serde_json::json!([]), "{}", got.text());
    assert_eq!(last["usage"]["prompt_tokens"], 11, "{}", got.text());
    assert_eq!(last["usage"]["completion_tokens"], 5, "{}", got.text());
    assert_eq!(last["usage"]["total_tokens"], 16, "{}", got.text());
    // Without include_usage, no usage chunk.
    fakes.an.push(fixed_reply());
    let got = send(gw.openai(&openai_body("solo-claude", "hi", true))).await;
    assert!(
        got.json_events().iter().all(|c| c["usage"].is_null()),
        "{}",
        got.text()
    );
}

/// `prefix` followed by one or more ASCII letters and digits (the providers' id shapes:
/// Anthropic `msg_013Zva…`, OpenAI `chatcmpl-B9MB…`).
fn assert_id_shape(id: &Value, prefix: &str, what: &str) -> String {
    let id = id.as_str().unwrap_or_else(|| panic!("no id: {what}"));
    let rest = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{id:?} does not start with {prefix:?}: {what}"));
    assert!(
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id:?}: {what}"
    );
    id.to_string()
}

/// Every answer carries an id in the client's own format's shape, translated or not,
/// streamed (one id for the whole stream) or not.
#[tokio::test]
async fn every_answer_carries_an_id_in_the_clients_shape() {
    for case in CASES {
        let (fakes, gw) = setup().await;
        let prefix = match case.client {
            Client::OpenAi => "chatcmpl-",
            Client::Anthropic => "msg_",
        };
        case.upstream(&fakes).push(fixed_reply());
        let got = case.stream(&gw).await;
        let what = format!("{case:?} stream: {}", got.text());
        assert_eq!(got.status, 200, "{what}");
        match case.client {
            Client::OpenAi => {
                let ids: Vec<String> = got
                    .json_events()
                    .iter()
                    .map(|v| assert_id_shape(&v["id"], prefix, &what))
                    .collect();
                assert!(ids.len() > 2, "{what}");
                assert!(
                    ids.iter().all(|id| id == &ids[0]),
                    "one id per stream: {what}"
                );
            }
            Client::Anthropic => {
                let start = &got.json_events()[0];
                assert_eq!(start["type"], "message_start", "{what}");
                assert_id_shape(&start["message"]["id"], prefix, &what);
            }
        }

        case.upstream(&fakes).push(fixed_reply());
        let got = match case.client {
            Client::OpenAi => send(gw.openai(&openai_body(case.agent, "hi", false))).await,
            Client::Anthropic => send(gw.anthropic(&anthropic_body(case.agent, "hi", false))).await,
        };
        let what = format!("{case:?}: {}", got.text());
        assert_eq!(got.status, 200, "{what}");
        assert_id_shape(&got.json()["id"], prefix, &what);
    }
}
