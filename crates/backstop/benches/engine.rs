//! Microbenchmarks of the request path's pure parts: the classifier, the planner and
//! the wire translators (requests and 20-chunk streams). `cargo bench -p backstop`.
//! Timings live here, never in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backstop::WireFormat;
use backstop::chat::StreamEvent;
use backstop::clock::SystemClock;
use backstop::config::{Config, ConfigOrigin, Format, MapEnv, from_str};
use backstop::failover::classify::classify_status;
use backstop::failover::cooldowns::Cooldowns;
use backstop::failover::plan::{LazyPlan, plan};
use backstop::sse::{SseEvent, SseParser};
use backstop::state::MemoryStore;
use backstop::wire::{anthropic, openai};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// (name, format, status, retry-after, body)
type ErrorCase = (
    &'static str,
    WireFormat,
    u16,
    Option<&'static str>,
    &'static [u8],
);

fn classifier(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify_status");
    let cases: [ErrorCase; 4] = [
        (
            "openai_429_rate_limit",
            WireFormat::OpenAi,
            429,
            Some("2"),
            br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2.5s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            "openai_429_insufficient_quota",
            WireFormat::OpenAi,
            429,
            None,
            br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ),
        (
            "anthropic_529_overloaded",
            WireFormat::Anthropic,
            529,
            None,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
        (
            "html_502",
            WireFormat::OpenAi,
            502,
            None,
            b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        ),
    ];
    for (name, format, status, retry_after, body) in cases {
        let body = Bytes::from_static(body);
        g.bench_function(name, |b| {
            b.iter(|| classify_status(format, black_box(status), retry_after, body.clone()))
        });
    }
    g.finish();
}

fn planner_config(targets: usize, profiles: usize) -> Config {
    let auth: Vec<Value> = (0..profiles)
        .map(|i| json!({"profile": format!("p{i}"), "key": format!("sk-bench-{i:04}-xxxxxxxxxxxxxxxx")}))
        .collect();
    let fallbacks: Vec<String> = (1..targets).map(|i| format!("oa/m{i}")).collect();
    let text = json!({
        "providers": {"oa": {"api": "openai", "base_url": "http://127.0.0.1:1/v1", "auth": auth}},
        "agents": {"defaults": {"model": {"primary": "oa/m0", "fallbacks": fallbacks}}},
    })
    .to_string();
    from_str(
        &text,
        Format::Json5,
        ConfigOrigin::Environment,
        &MapEnv::new(),
    )
    .unwrap()
}

fn planner(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    for (targets, profiles, history) in
        [(1, 1, false), (4, 100, false), (1, 1, true), (4, 100, true)]
    {
        let config = planner_config(targets, profiles);
        let route = config.resolve("default", None).unwrap();
        let cooldowns = Cooldowns::new(
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
            config.auth.cooldowns.clone(),
            Duration::from_secs(3600),
        );
        // With history: half the keys used once, a few cooling down.
        for i in (0..profiles).step_by(2).filter(|_| history) {
            cooldowns.on_success("oa", &format!("p{i}"), "m0");
        }
        for i in (0..profiles).step_by(10).skip(1).filter(|_| history) {
            cooldowns.on_failure(
                "oa",
                &format!("p{i}"),
                "m0",
                backstop::failover::Reason::RateLimit,
                Some(Duration::from_secs(30)),
            );
        }
        let plan0 = plan(&config, &route, &cooldowns, |_, _| false);
        assert_eq!(plan0.targets.len(), targets * profiles);
        let state = if history { "history" } else { "healthy" };
        g.bench_function(
            format!("{targets}_targets_x_{profiles}_profiles_{state}"),
            |b| b.iter(|| plan(&config, black_box(&route), &cooldowns, |_, _| false)),
        );
        // What the engine pays when the first target answers: planning is lazy.
        let never = |_: &str, _: &str| false;
        g.bench_function(
            format!("{targets}_targets_x_{profiles}_profiles_{state}_first_target_lazy"),
            |b| {
                b.iter(|| {
                    let mut lazy = LazyPlan::new(
                        &config,
                        black_box(&route),
                        &cooldowns,
                        &never,
                        None,
                        cooldowns.now_ms(),
                    );
                    lazy.get(0).map(|t| t.model_index)
                })
            },
        );
    }
    g.finish();
}

fn openai_body(prompt_bytes: usize) -> Value {
    let prompt: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(prompt_bytes)
        .collect();
    json!({
        "model": "default",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "user", "content": prompt},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "max_tokens": 256,
        "temperature": 0.2,
    })
}

fn translators(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate_request");
    for size in [1024, 100 * 1024] {
        let body = openai_body(size);
        let bytes = serde_json::to_vec(&body).unwrap();
        let request = openai::decode_request(&body).unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let kb = size / 1024;
        g.bench_function(format!("parse_json_{kb}k"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&bytes)).unwrap())
        });
        g.bench_function(format!("openai_decode_request_{kb}k"), |b| {
            b.iter(|| openai::decode_request(black_box(&body)).unwrap())
        });
        g.bench_function(format!("openai_encode_request_{kb}k"), |b| {
            b.iter(|| openai::encode_request(black_box(&request), "gpt-4o"))
        });
        g.bench_function(format!("anthropic_encode_request_{kb}k"), |b| {
            b.iter(|| anthropic::encode_request(black_box(&request), "claude-m", 4096))
        });
        // The same-format body: through a `Value` (before) and spliced into the bytes (now).
        g.bench_function(format!("same_format_value_{kb}k"), |b| {
            b.iter(|| {
                serde_json::to_vec(&backstop::wire::with_model(black_box(&body), "gpt-4o")).unwrap()
            })
        });
        g.bench_function(format!("same_format_splice_{kb}k"), |b| {
            b.iter(|| {
                backstop::wire::splice_fields(black_box(&bytes), &[("model", "\"gpt-4o\"")])
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// A 20-chunk stream in `format`, as the upstream sends it (bytes).
fn stream_bytes(format: WireFormat) -> Vec<u8> {
    let mut events = vec![StreamEvent::Start {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        input_tokens: Some(12),
    }];
    for i in 0..20 {
        events.push(StreamEvent::TextDelta {
            text: format!("word{i} "),
        });
    }
    events.push(StreamEvent::Finish {
        reason: backstop::chat::FinishReason::Stop,
        stop_sequence: None,
    });
    events.push(StreamEvent::Usage {
        usage: backstop::chat::Usage {
            input_tokens: 12,
            output_tokens: 20,
            ..Default::default()
        },
    });
    events.push(StreamEvent::Done);
    let mut out = Vec::new();
    match format {
        WireFormat::Anthropic => {
            let mut enc = anthropic::StreamEncoder::new();
            for ev in &events {
                enc.encode(ev, &mut out);
            }
        }
        _ => {
            let mut enc = openai::StreamEncoder::new(true);
            for ev in &events {
                enc.encode(ev, &mut out);
            }
        }
    }
    out
}

fn sse_events(bytes: &[u8]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut evs = parser.push(bytes);
    evs.extend(parser.finish());
    evs
}

fn streams(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_20_chunks");
    for (name, format) in [
        ("openai", WireFormat::OpenAi),
        ("anthropic", WireFormat::Anthropic),
    ] {
        let bytes = stream_bytes(format);
        let sse = sse_events(&bytes);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("{name}_sse_parse"), |b| {
            b.iter(|| sse_events(black_box(&bytes)))
        });
        g.bench_function(format!("{name}_decode"), |b| {
            b.iter(|| match format {
                WireFormat::Anthropic => {
                    let mut d = anthropic::StreamDecoder::new();
                    sse.iter().map(|e| d.push(e).unwrap().len()).sum::<usize>()
                }
                _ => {
                    let mut d = openai::StreamDecoder::new();
                    sse.iter().map(|e| d.push(e).unwrap().len()).sum::<usize>()
                }
            })
        });
        let events: Vec<StreamEvent> = match format {
            WireFormat::Anthropic => {
                let mut d = anthropic::StreamDecoder::new();
                sse.iter().flat_map(|e| d.push(e).unwrap()).collect()
            }
            _ => {
                let mut d = openai::StreamDecoder::new();
                sse.iter().flat_map(|e| d.push(e).unwrap()).collect()
            }
        };
        // Re-encoding into the other format: the cross-format stream path.
        let other = if format == WireFormat::Anthropic {
            "openai"
        } else {
            "anthropic"
        };
        g.bench_function(format!("{name}_to_{other}_encode"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(4096);
                if format == WireFormat::Anthropic {
                    let mut enc = openai::StreamEncoder::new(false);
                    for ev in &events {
                        enc.encode(black_box(ev), &mut out);
                    }
                } else {
                    let mut enc = anthropic::StreamEncoder::new();
                    for ev in &events {
                        enc.encode(black_box(ev), &mut out);
                    }
                }
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, classifier, planner, translators, streams);
criterion_main!(benches);
