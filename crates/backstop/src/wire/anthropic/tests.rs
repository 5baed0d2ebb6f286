#![allow(clippy::unwrap_used)]

use super::*;
use crate::chat::Request;
use crate::wire::scan::BYTE_EDITS;
use bytes::Bytes;
use proptest::prelude::*;

const STREAM_FIXTURE: &str = include_str!("../../../tests/fixtures/anthropic/stream_tool_use.sse");

/// A minimal SSE splitter for tests (the real parser lives in `crate::sse`).
fn parse_sse(text: &str) -> Vec<SseEvent> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let mut ev = SseEvent {
                raw: Bytes::from(format!("{frame}\n\n")),
                ..SseEvent::default()
            };
            let mut data = Vec::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    ev.event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            ev.data = data.join("\n").into();
            ev
        })
        .collect()
}

fn decode_all(events: &[SseEvent]) -> Vec<StreamEvent> {
    let mut dec = StreamDecoder::new();
    events.iter().flat_map(|e| dec.push(e).unwrap()).collect()
}

fn text(t: &str) -> Part {
    Part::Text { text: t.into() }
}

fn base(messages: Value) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages})
}

// ---- decode_request -------------------------------------------------

#[test]
fn decodes_simple_request_with_system_string() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]}
        ],
        "stop_sequences": ["\n\nHuman:", "END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stream": true,
        "metadata": {"user_id": "user-1234"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "service_tier": "auto"
    });
    let r = decode_request(&body).unwrap();
    assert_eq!(r.model, "claude-sonnet-4-5");
    assert_eq!(
        r.system,
        vec![SystemBlock {
            text: "You are terse.".into()
        }]
    );
    assert_eq!(
        r.messages,
        vec![
            Message::text(Role::User, "Hello"),
            Message::text(Role::Assistant, "Hi."),
            Message::text(Role::User, "How are you?"),
        ]
    );
    assert_eq!(r.max_tokens, Some(1024));
    assert_eq!(r.stop, vec!["\n\nHuman:".to_string(), "END".to_string()]);
    assert_eq!(r.temperature, Some(0.5));
    assert_eq!(r.top_p, Some(0.9));
    assert_eq!(r.top_k, Some(40));
    assert!(r.stream);
    assert_eq!(r.user.as_deref(), Some("user-1234"));
    assert_eq!(
        r.reasoning,
        Some(json!({"type": "enabled", "budget_tokens": 2048}))
    );
    assert_eq!(r.tool_choice, None);
    assert_eq!(r.parallel_tool_calls, None);
}

#[test]
fn decodes_system_blocks_and_images() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 512,
        "system": [
            {"type": "text", "text": "Be helpful.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in French."}
        ],
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "Compare these."}
        ]}]
    });
    let r = decode_request(&body).unwrap();
    assert_eq!(
        r.system,
        vec![
            SystemBlock {
                text: "Be helpful.".into()
            },
            SystemBlock {
                text: "Answer in French.".into()
            }
        ]
    );
    assert_eq!(
        r.messages[0].content,
        vec![
            Part::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into()
                }
            },
            Part::Image {
                source: ImageSource::Url {
                    url: "https://example.com/cat.jpg".into()
                }
            },
            text("Compare these."),
        ]
    );
}

#[test]
fn decodes_tools_parallel_tool_use_and_results() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [{
            "name": "get_weather",
            "description": "Get the weather",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
        }],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": false},
        "messages": [
            {"role": "user", "content": "Weather in Paris and London?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two lookups.", "signature": "EqQBCgIYAhIM"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "London"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "service unavailable"}]},
                {"type": "text", "text": "Go on."}
            ]}
        ]
    });
    let r = decode_request(&body).unwrap();
    assert_eq!(
        r.tools,
        vec![Tool {
            name: "get_weather".into(),
            description: Some("Get the weather".into()),
            parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
        }]
    );
    assert_eq!(r.tool_choice, Some(ToolChoice::Required));
    assert_eq!(r.parallel_tool_calls, Some(true));
    assert_eq!(
        r.messages[1].content,
        vec![
            Part::Thinking {
                text: "Two lookups.".into(),
                signature: Some("EqQBCgIYAhIM".into())
            },
            text("Checking."),
            Part::ToolCall {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"location":"Paris"}"#.into()
            },
            Part::ToolCall {
                id: "toolu_2".into(),
                name: "get_weather".into(),
                arguments: r#"{"location":"London"}"#.into()
            },
        ]
    );
    assert_eq!(
        r.messages[2].content,
        vec![
            Part::ToolResult {
                tool_call_id: "toolu_1".into(),
                content: vec![text("18°C, sunny")],
                is_error: false
            },
            Part::ToolResult {
                tool_call_id: "toolu_2".into(),
                content: vec![text("service unavailable")],
                is_error: true
            },
            text("Go on."),
        ]
    );
}

#[test]
fn decodes_tool_choice_variants() {
    let with = |choice: Value| {
        let mut b = base(json!([{"role": "user", "content": "x"}]));
        b["tool_choice"] = choice;
        decode_request(&b).unwrap()
    };
    let r = with(json!({"type": "auto", "disable_parallel_tool_use": true}));
    assert_eq!(
        (r.tool_choice, r.parallel_tool_calls),
        (Some(ToolChoice::Auto), Some(false))
    );
    let r = with(json!({"type": "none"}));
    assert_eq!(
        (r.tool_choice, r.parallel_tool_calls),
        (Some(ToolChoice::None), None)
    );
    let r = with(json!({"type": "tool", "name": "get_weather"}));
    assert_eq!(
        r.tool_choice,
        Some(ToolChoice::Tool {
            name: "get_weather".into()
        })
    );
}

fn err_of(body: Value) -> WireError {
    decode_request(&body).unwrap_err()
}

#[test]
fn errors_name_the_path() {
    let e = err_of(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(e.path.as_deref(), Some("max_tokens"));
    assert_eq!(e.message, "max_tokens: Field required");

    let e = err_of(json!({"model": "m", "max_tokens": 0, "messages": []}));
    assert_eq!(e.message, "max_tokens: expected a positive integer, got 0");

    let e = err_of(json!({"max_tokens": 5, "messages": []}));
    assert_eq!(e.message, "model: Field required");

    let e = err_of(base(json!([
        {"role": "user", "content": "x"},
        {"role": "tool", "content": "y"}
    ])));
    assert_eq!(e.path.as_deref(), Some("messages[1].role"));
    assert!(e.message.contains("\"tool\""), "{}", e.message);

    let e = err_of(base(json!([{"role": "system", "content": "x"}])));
    assert_eq!(e.path.as_deref(), Some("messages[0].role"));
    assert!(e.message.contains("top-level `system`"), "{}", e.message);

    // Anthropic's own content and tools are not errors: noted as untranslatable (only
    // an Anthropic model, sent the client's body, can take them) and left out.
    let r = decode_request(&base(json!([{"role": "user", "content": [
        {"type": "text", "text": "read this"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}
    ]}])))
    .unwrap();
    let u = r.untranslatable.unwrap();
    assert_eq!(u.param, "messages[0].content[1].type");
    assert!(u.what.contains("\"document\""), "{}", u.what);
    assert_eq!(
        r.messages[0].content,
        vec![Part::Text {
            text: "read this".into()
        }]
    );

    let e = err_of(base(
        json!([{"role": "user", "content": [{"type": "text"}]}]),
    ));
    assert_eq!(e.message, "messages[0].content[0].text: Field required");

    let e = err_of(base(json!([{"role": "user", "content": 42}])));
    assert_eq!(e.path.as_deref(), Some("messages[0].content"));

    let r = decode_request(&base(json!([{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}
    ]}])))
    .unwrap();
    assert_eq!(
        r.untranslatable.unwrap().param,
        "messages[0].content[0].content[0].type"
    );

    let e = err_of(base(json!([{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": {}}
    ]}])));
    assert_eq!(e.path.as_deref(), Some("messages[0].content[0].type"));

    let mut b = base(json!([{"role": "user", "content": "x"}]));
    b["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
    let r = decode_request(&b).unwrap();
    assert!(r.tools.is_empty());
    let u = r.untranslatable.unwrap();
    assert_eq!(u.param, "tools[0].type");
    assert!(u.what.contains("web_search_20250305"), "{}", u.what);

    let mut b = base(json!([{"role": "user", "content": "x"}]));
    b["tool_choice"] = json!({"type": "required"});
    assert_eq!(err_of(b).path.as_deref(), Some("tool_choice.type"));

    let e = err_of(base(json!([])));
    assert_eq!(e.path.as_deref(), Some("messages"));

    let e = err_of(json!([1, 2]));
    assert_eq!(e.path, None);
    assert!(e.message.contains("JSON object"));
}

// ---- encode_request -------------------------------------------------

#[test]
fn encodes_full_request() {
    let req = Request {
        model: "default".into(),
        system: vec![SystemBlock {
            text: "Be terse.".into(),
        }],
        messages: vec![
            Message::text(Role::User, "What is in this picture?"),
            Message {
                role: Role::User,
                content: vec![Part::Image {
                    source: ImageSource::Url {
                        url: "data:image/png;base64,iVBORw0KGgo=".into(),
                    },
                }],
                name: None,
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    Part::Thinking {
                        text: "hmm".into(),
                        signature: None,
                    },
                    Part::Thinking {
                        text: "signed".into(),
                        signature: Some("sig".into()),
                    },
                    Part::ToolCall {
                        id: "call_1".into(),
                        name: "lookup".into(),
                        arguments: r#"{"q":"cat"}"#.into(),
                    },
                ],
                name: None,
            },
            Message {
                role: Role::User,
                content: vec![
                    text("thanks"),
                    Part::ToolResult {
                        tool_call_id: "call_1".into(),
                        content: vec![
                            text("a cat"),
                            Part::Image {
                                source: ImageSource::Url {
                                    url: "https://example.com/c.png".into(),
                                },
                            },
                        ],
                        is_error: false,
                    },
                ],
                name: None,
            },
            Message::text(Role::Assistant, "It is"),
        ],
        tools: vec![Tool {
            name: "lookup".into(),
            description: Some("Look things up".into()),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }],
        tool_choice: Some(ToolChoice::Tool {
            name: "lookup".into(),
        }),
        parallel_tool_calls: Some(false),
        max_tokens: None,
        temperature: Some(0.2),
        top_p: Some(0.5),
        top_k: Some(10),
        stop: vec!["END".into()],
        response_format: None,
        stream: true,
        user: Some("u-1".into()),
        metadata: Some(Map::from_iter([("k".to_string(), json!("v"))])),
        reasoning: Some(json!({"type": "enabled", "budget_tokens": 1024})),
        untranslatable: None,
    };
    let body = encode_request(&req, "claude-opus-4-5", 4096);
    assert_eq!(
        body,
        json!({
            "model": "claude-opus-4-5",
            "max_tokens": 4096,
            "system": "Be terse.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "signed", "signature": "sig"},
                    {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [
                        {"type": "text", "text": "a cat"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}}
                    ]},
                    {"type": "text", "text": "thanks"}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "It is"}]}
            ],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.5,
            "top_k": 10,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "lookup", "description": "Look things up",
                       "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": true},
            "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        })
    );
}

#[test]
fn merges_same_role_and_puts_tool_results_first() {
    let req = Request {
        messages: vec![
            Message::text(Role::User, "a"),
            Message::text(Role::User, "b"),
            Message {
                role: Role::Assistant,
                content: vec![
                    Part::ToolCall {
                        id: "t1".into(),
                        name: "f".into(),
                        arguments: String::new(),
                    },
                    Part::ToolCall {
                        id: "t2".into(),
                        name: "f".into(),
                        arguments: "null".into(),
                    },
                ],
                name: None,
            },
            Message::text(Role::User, "note first"),
            Message {
                role: Role::User,
                content: vec![Part::ToolResult {
                    tool_call_id: "t1".into(),
                    content: vec![],
                    is_error: true,
                }],
                name: None,
            },
            Message {
                role: Role::User,
                content: vec![Part::ToolResult {
                    tool_call_id: "t2".into(),
                    content: vec![text("ok")],
                    is_error: false,
                }],
                name: None,
            },
            Message::text(Role::Assistant, ""),
        ],
        max_tokens: Some(100),
        ..Request::default()
    };
    let body = encode_request(&req, "m", 1);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "f", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": true},
                {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]},
                {"type": "text", "text": "note first"}
            ]}
        ])
    );
    assert_eq!(body["max_tokens"], 100);
    assert!(body.get("system").is_none());
    assert!(body.get("tools").is_none());
    assert!(body.get("stream").is_none());
    assert!(body.get("metadata").is_none());
}

#[test]
fn encodes_json_mode_as_system_instruction() {
    let mut req = Request {
        system: vec![SystemBlock {
            text: "You extract data.".into(),
        }],
        messages: vec![Message::text(Role::User, "Alice is 30")],
        response_format: Some(ResponseFormat::JsonSchema {
            json_schema: json!({"name": "person", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}}),
        }),
        ..Request::default()
    };
    let body = encode_request(&req, "m", 1);
    let system = body["system"].as_array().unwrap();
    assert_eq!(system.len(), 2);
    assert_eq!(
        system[0],
        json!({"type": "text", "text": "You extract data."})
    );
    let instruction = system[1]["text"].as_str().unwrap();
    assert!(instruction.starts_with(JSON_MODE_INSTRUCTION));
    assert!(instruction.ends_with(r#"{"type":"object","properties":{"age":{"type":"integer"}}}"#));

    req.system.clear();
    req.response_format = Some(ResponseFormat::JsonObject);
    let body = encode_request(&req, "m", 1);
    assert_eq!(body["system"], json!(JSON_MODE_INSTRUCTION));

    req.response_format = Some(ResponseFormat::Text);
    assert!(encode_request(&req, "m", 1).get("system").is_none());
}

#[test]
fn encodes_tool_choice_variants() {
    let mk = |choice: Option<ToolChoice>, parallel: Option<bool>| {
        let req = Request {
            messages: vec![Message::text(Role::User, "x")],
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            tool_choice: choice,
            parallel_tool_calls: parallel,
            ..Request::default()
        };
        encode_request(&req, "m", 1).get("tool_choice").cloned()
    };
    assert_eq!(
        mk(Some(ToolChoice::Auto), None),
        Some(json!({"type": "auto"}))
    );
    assert_eq!(
        mk(Some(ToolChoice::None), Some(false)),
        Some(json!({"type": "none"}))
    );
    assert_eq!(
        mk(Some(ToolChoice::Required), Some(true)),
        Some(json!({"type": "any"}))
    );
    assert_eq!(mk(None, None), None);
    assert_eq!(
        mk(None, Some(false)),
        Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
    );
}

#[test]
fn tool_input_is_lenient() {
    assert_eq!(tool_input(""), json!({}));
    assert_eq!(tool_input("  "), json!({}));
    assert_eq!(tool_input("null"), json!({}));
    assert_eq!(tool_input(r#"{"a":[1,2]}"#), json!({"a": [1, 2]}));
    assert_eq!(tool_input(r#"{"a":[1,2"#), json!({"a": [1, 2]}));
    assert_eq!(tool_input(r#"{"a":"hel"#), json!({"a": "hel"}));
    assert_eq!(tool_input(r#"{"a":1,"#), json!({"a": 1}));
    assert_eq!(tool_input("[1]"), json!({"_raw": "[1]"}));
    assert_eq!(tool_input("not json"), json!({"_raw": "not json"}));
    assert_eq!(tool_input(r#"{"a":}"#), json!({"_raw": r#"{"a":}"#}));
}

// ---- round trip property ---------------------------------------------

fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9 .,!?]{0,15}"
}

fn image() -> impl Strategy<Value = Part> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(|p| Part::Image {
            source: ImageSource::Url {
                url: format!("https://example.com/{p}.png")
            }
        }),
        (
            prop::sample::select(vec!["image/png", "image/jpeg", "image/gif", "image/webp"]),
            "[A-Za-z0-9+/]{4,24}"
        )
            .prop_map(|(mt, data)| Part::Image {
                source: ImageSource::Base64 {
                    media_type: mt.into(),
                    data
                }
            }),
    ]
}

fn text_or_image() -> impl Strategy<Value = Part> {
    prop_oneof![word().prop_map(|t| Part::Text { text: t }), image()]
}

fn arguments() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i32>().prop_map(Value::from),
        word().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    prop::collection::vec(("[a-z]{1,6}", value), 0..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()).to_string())
}

fn user_message() -> impl Strategy<Value = Message> {
    let result = (
        "toolu_[a-zA-Z0-9]{4,8}",
        prop::collection::vec(text_or_image(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, content, is_error)| Part::ToolResult {
            tool_call_id: id,
            content,
            is_error,
        });
    (
        prop::collection::vec(result, 0..3),
        prop::collection::vec(text_or_image(), 0..3),
    )
        .prop_filter("a message has content", |(r, o)| {
            !r.is_empty() || !o.is_empty()
        })
        .prop_map(|(mut results, others)| {
            results.extend(others);
            Message {
                role: Role::User,
                content: results,
                name: None,
            }
        })
}

fn assistant_message() -> impl Strategy<Value = Message> {
    let part = prop_oneof![
        word().prop_map(|t| Part::Text { text: t }),
        ("toolu_[a-zA-Z0-9]{4,8}", "[a-z_]{1,10}", arguments()).prop_map(
            |(id, name, arguments)| Part::ToolCall {
                id,
                name,
                arguments
            }
        ),
        (word(), "[A-Za-z0-9]{8,16}").prop_map(|(t, s)| Part::Thinking {
            text: t,
            signature: Some(s)
        }),
    ];
    prop::collection::vec(part, 1..4).prop_map(|content| Message {
        role: Role::Assistant,
        content,
        name: None,
    })
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    (
        prop::collection::vec((user_message(), assistant_message()), 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(pairs, skip_first, drop_last)| {
            let mut ms: Vec<Message> = pairs.into_iter().flat_map(|(u, a)| [u, a]).collect();
            if skip_first {
                ms.remove(0);
            }
            if drop_last && ms.len() > 1 {
                ms.pop();
            }
            ms
        })
}

fn tenth() -> impl Strategy<Value = Option<f64>> {
    prop::option::of((0u32..=20).prop_map(|k| f64::from(k) / 10.0))
}

fn tooling() -> impl Strategy<Value = (Vec<Tool>, Option<ToolChoice>, Option<bool>)> {
    let tool = ("[a-z_]{1,10}", prop::option::of(word())).prop_map(|(name, description)| Tool {
        name,
        description,
        parameters: json!({"type": "object", "properties": {"x": {"type": "string"}}}),
    });
    let choice = prop::option::of(prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::None),
        Just(ToolChoice::Required),
        "[a-z_]{1,10}".prop_map(|name| ToolChoice::Tool { name }),
    ]);
    (prop::collection::vec(tool, 0..3), choice, any::<bool>()).prop_map(
        |(tools, choice, serial)| {
            if tools.is_empty() {
                return (tools, None, None);
            }
            let parallel = match &choice {
                Some(c) if *c != ToolChoice::None && serial => Some(false),
                _ => None,
            };
            (tools, choice, parallel)
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    (
        (prop::collection::vec(word(), 0..3), messages(), tooling()),
        (1u32..200_000, tenth(), tenth(), prop::option::of(1u32..500)),
        (
            prop::collection::vec(word(), 0..3),
            any::<bool>(),
            prop::option::of("[a-z0-9-]{1,12}"),
            prop::option::of(
                (1024u32..8192).prop_map(|b| json!({"type": "enabled", "budget_tokens": b})),
            ),
        ),
    )
        .prop_map(
            |(
                (system, messages, (tools, tool_choice, parallel_tool_calls)),
                (max_tokens, temperature, top_p, top_k),
                (stop, stream, user, reasoning),
            )| Request {
                model: "client-model".into(),
                system: system
                    .into_iter()
                    .map(|text| SystemBlock { text })
                    .collect(),
                messages,
                tools,
                tool_choice,
                parallel_tool_calls,
                max_tokens: Some(max_tokens),
                temperature,
                top_p,
                top_k,
                stop,
                response_format: None,
                stream,
                user,
                metadata: None,
                reasoning,
                untranslatable: None,
            },
        )
}

proptest! {
    #[test]
    fn request_round_trips(req in request()) {
        let body = encode_request(&req, "claude-upstream", 1);
        let mut back = decode_request(&body).unwrap();
        prop_assert_eq!(&back.model, "claude-upstream");
        back.model = req.model.clone();
        prop_assert_eq!(back, req);
    }
}

// ---- responses --------------------------------------------------------

#[test]
fn decodes_realistic_response_with_cache_tokens() {
    let body = br#"{
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": "I'll check the weather."},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 50, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000, "output_tokens": 75}
    }"#;
    let r = decode_response(body).unwrap();
    assert_eq!(r.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(r.model, "claude-sonnet-4-5-20250929");
    assert_eq!(
        r.content,
        vec![
            Part::Thinking {
                text: "Let me think.".into(),
                signature: Some("EqQBCgIYAhIM".into())
            },
            text("I'll check the weather."),
            Part::ToolCall {
                id: "toolu_01A09q90qw90lq917835lq9".into(),
                name: "get_weather".into(),
                arguments: r#"{"location":"San Francisco, CA"}"#.into()
            },
        ]
    );
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 1070,
            output_tokens: 75,
            cache_read_tokens: Some(1000),
            cache_write_tokens: Some(20)
        }
    );
    assert!(r.created > 0);

    let encoded = encode_response(&r);
    assert_eq!(
        encoded["usage"],
        json!({"input_tokens": 50, "output_tokens": 75, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000})
    );
    let mut back = decode_response(encoded.to_string().as_bytes()).unwrap();
    back.created = r.created;
    assert_eq!(back, r);
}

#[test]
fn encodes_response() {
    let resp = chat::Response {
        id: "chatcmpl-1".into(),
        model: "gpt-4o".into(),
        content: vec![
            Part::Thinking {
                text: "unsigned".into(),
                signature: None,
            },
            text("Done"),
            Part::ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments: r#"{"a":1}"#.into(),
            },
        ],
        finish_reason: Some(FinishReason::StopSequence),
        stop_sequence: Some("END".into()),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 3,
            cache_read_tokens: Some(40),
            cache_write_tokens: None,
        },
        created: 1,
    };
    assert_eq!(
        encode_response(&resp),
        json!({
            "id": "chatcmpl-1",
            "type": "message",
            "role": "assistant",
            "model": "gpt-4o",
            "content": [
                {"type": "thinking", "thinking": "unsigned", "signature": ""},
                {"type": "text", "text": "Done"},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}
            ],
            "stop_reason": "stop_sequence",
            "stop_sequence": "END",
            // 10 prompt tokens cannot hold 40 cached ones: saturates at 0.
            "usage": {"input_tokens": 0, "output_tokens": 3, "cache_read_input_tokens": 40}
        })
    );
}

#[test]
fn stop_reasons_map_both_ways() {
    for (wire, neutral) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::StopSequence),
        ("max_tokens", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::ContentFilter),
    ] {
        assert_eq!(finish_from_stop_reason(wire), neutral);
        assert_eq!(stop_reason_str(neutral), wire);
    }
    assert_eq!(
        finish_from_stop_reason("model_context_window_exceeded"),
        FinishReason::Length
    );
    assert_eq!(finish_from_stop_reason("pause_turn"), FinishReason::Other);
    assert_eq!(stop_reason_str(FinishReason::Other), "end_turn");
}

#[test]
fn bad_responses_are_errors() {
    assert!(decode_response(b"<html>502 Bad Gateway</html>").is_err());
    assert!(decode_response(b"[]").is_err());
    assert!(decode_response(br#"{"type":"message","content":[]}"#).is_err());
    let e = decode_response(include_bytes!(
        "../../../tests/fixtures/anthropic/error_overloaded.json"
    ))
    .unwrap_err();
    assert!(e.message.contains("Overloaded"), "{}", e.message);
    assert!(e.message.contains("overloaded_error"), "{}", e.message);
}

// ---- errors -----------------------------------------------------------

#[test]
fn decodes_error_bodies() {
    assert_eq!(
        decode_error(include_bytes!(
            "../../../tests/fixtures/anthropic/error_overloaded.json"
        )),
        Some(UpstreamErrorBody {
            kind: Some("overloaded_error".into()),
            code: None,
            message: "Overloaded".into(),
            retry_after: None,
        })
    );
    assert_eq!(
        decode_error(include_bytes!(
            "../../../tests/fixtures/anthropic/error_invalid_request.json"
        ))
        .and_then(|e| e.kind),
        Some("invalid_request_error".into())
    );
    assert_eq!(
        decode_error(br#"{"type":"message","id":"x","content":[]}"#),
        None
    );
    assert_eq!(decode_error(b"upstream connect error"), None);
    assert_eq!(
        decode_error(br#"{"type":"error","error":{"type":"api_error"}}"#),
        None
    );
}

#[test]
fn encodes_errors_per_kind() {
    for (kind, ty) in [
        (ErrorKind::InvalidRequest, "invalid_request_error"),
        (ErrorKind::Authentication, "authentication_error"),
        (ErrorKind::Permission, "permission_error"),
        (ErrorKind::NotFound, "not_found_error"),
        (ErrorKind::RequestTooLarge, "request_too_large"),
        (ErrorKind::RateLimit, "rate_limit_error"),
        (ErrorKind::Api, "api_error"),
        (ErrorKind::Overloaded, "overloaded_error"),
        (ErrorKind::Timeout, "timeout_error"),
    ] {
        let body = encode_error(&ClientError::new(kind, "boom"));
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": ty, "message": "boom"}})
        );
        assert_eq!(
            decode_error(body.to_string().as_bytes())
                .and_then(|e| e.kind)
                .as_deref(),
            Some(ty)
        );
    }
}

// ---- streaming --------------------------------------------------------

#[test]
fn decodes_realistic_stream() {
    let events = decode_all(&parse_sse(STREAM_FIXTURE));
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                model: "claude-sonnet-4-5-20250929".into(),
                input_tokens: Some(572),
            },
            StreamEvent::TextDelta {
                text: "Okay, let me check".into()
            },
            StreamEvent::TextDelta {
                text: " both cities.".into()
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "get_weather".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"location\":".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: " \"Paris\"}".into()
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_01Hq7bSgZ4TdEt3aC5cXzP2N".into(),
                name: "get_weather".into()
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{\"location\": \"London\"}".into()
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 572,
                    output_tokens: 89,
                    cache_read_tokens: Some(100),
                    cache_write_tokens: Some(0)
                }
            },
            StreamEvent::Done,
        ]
    );
}

fn sse(event: &str, data: &str) -> SseEvent {
    SseEvent {
        event: Some(event.into()),
        data: data.to_string().into(),
        raw: Bytes::new(),
    }
}

#[test]
fn decodes_in_band_error_and_rejects_garbage() {
    let mut dec = StreamDecoder::new();
    let got = dec
        .push(&sse(
            "error",
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
        ))
        .unwrap();
    assert_eq!(
        got,
        vec![StreamEvent::Error {
            error: UpstreamErrorBody {
                kind: Some("overloaded_error".into()),
                code: None,
                message: "Overloaded".into(),
                retry_after: None,
            }
        }]
    );
    assert!(dec.push(&sse("content_block_delta", "{not json")).is_err());
    assert!(dec.push(&sse("message_start", "42")).is_err());
    // input_json_delta for a block that never started as tool_use.
    let e = dec
        .push(&sse(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
        ))
        .unwrap_err();
    assert!(e.message.contains("block 3"), "{}", e.message);
    // The event name alone is enough (empty data), and unknown events are ignored.
    assert_eq!(
        dec.push(&sse("message_stop", "")).unwrap(),
        vec![StreamEvent::Done]
    );
    assert!(dec.push(&sse("ping", "{}")).unwrap().is_empty());
    assert!(
        dec.push(&sse("future_event", r#"{"type":"future_event"}"#))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn decodes_thinking_and_stop_sequence_stream() {
    let mut dec = StreamDecoder::new();
    let frames = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-opus-4-5","usage":{"input_tokens":10,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":"Hi"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"input_tokens":12,"output_tokens":7}}"#,
    ];
    let got: Vec<StreamEvent> = frames
        .iter()
        .flat_map(|f| {
            dec.push(&SseEvent {
                data: (*f).into(),
                ..SseEvent::default()
            })
            .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        vec![
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "claude-opus-4-5".into(),
                input_tokens: Some(10)
            },
            StreamEvent::ThinkingDelta { text: "Hmm".into() },
            StreamEvent::TextDelta { text: "Hi".into() },
            StreamEvent::Finish {
                reason: FinishReason::StopSequence,
                stop_sequence: Some("END".into())
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 7,
                    cache_read_tokens: None,
                    cache_write_tokens: None
                }
            },
        ]
    );
}

fn encode_all(events: &[StreamEvent]) -> String {
    let mut enc = StreamEncoder::new();
    let mut out = Vec::new();
    for e in events {
        enc.encode(e, &mut out);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn encoder_output_decodes_to_the_same_events() {
    let events = vec![
        StreamEvent::Start {
            id: "msg_x".into(),
            model: "gpt-4o".into(),
            input_tokens: Some(120),
        },
        StreamEvent::ThinkingDelta {
            text: "Plan".into(),
        },
        StreamEvent::TextDelta {
            text: "Hello".into(),
        },
        StreamEvent::TextDelta {
            text: ", world".into(),
        },
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_a".into(),
            name: "f".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{\"a\":".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "1}".into(),
        },
        StreamEvent::ToolCallStart {
            index: 1,
            id: "call_b".into(),
            name: "g".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 1,
            arguments: "{}".into(),
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: 120,
                output_tokens: 33,
                cache_read_tokens: Some(100),
                cache_write_tokens: None,
            },
        },
        StreamEvent::Done,
    ];
    let text = encode_all(&events);
    let frames = parse_sse(&text);
    // Every frame's `event:` name matches its JSON type.
    for f in &frames {
        let v: Value = serde_json::from_slice(&f.data).unwrap();
        assert_eq!(v["type"].as_str(), f.event.as_deref());
    }
    let names: Vec<&str> = frames.iter().filter_map(|f| f.event.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start: Value = serde_json::from_slice(&frames[0].data).unwrap();
    assert_eq!(
        start,
        json!({"type": "message_start", "message": {
            "id": "msg_x", "type": "message", "role": "assistant", "content": [], "model": "gpt-4o",
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 120, "output_tokens": 0}}})
    );
    let tool_start: Value = serde_json::from_slice(&frames[12].data).unwrap();
    assert_eq!(
        tool_start,
        json!({"type": "content_block_start", "index": 3,
               "content_block": {"type": "tool_use", "id": "call_b", "name": "g", "input": {}}})
    );
    let delta: Value = serde_json::from_slice(&frames[15].data).unwrap();
    assert_eq!(
        delta,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 33}})
    );
    // The decoder emits Finish before Usage, the same as the input order here.
    assert_eq!(decode_all(&frames), events);
}

#[test]
fn encoder_synthesizes_start_and_defaults() {
    let text = encode_all(&[
        StreamEvent::TextDelta { text: "Hi".into() },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: 9,
                output_tokens: 2,
                ..Usage::default()
            },
        },
        StreamEvent::Done,
        StreamEvent::TextDelta {
            text: "after done".into(),
        },
    ]);
    let frames = parse_sse(&text);
    let first: Value = serde_json::from_slice(&frames[0].data).unwrap();
    assert_eq!(first["message"]["id"], "msg_backstop");
    assert_eq!(first["message"]["usage"]["input_tokens"], 0);
    let delta: Value = serde_json::from_slice(&frames[frames.len() - 2].data).unwrap();
    assert_eq!(
        delta,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": 9, "output_tokens": 2}})
    );
    assert_eq!(
        frames.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
    assert!(!text.contains("after done"));
    let decoded = decode_all(&frames);
    assert_eq!(decoded.last(), Some(&StreamEvent::Done),);
    assert!(decoded.contains(&StreamEvent::Usage {
        usage: Usage {
            input_tokens: 9,
            output_tokens: 2,
            ..Usage::default()
        }
    }));
}

#[test]
fn encoder_writes_errors() {
    let mut enc = StreamEncoder::new();
    let mut out = Vec::new();
    enc.encode_error(
        &ClientError::new(ErrorKind::Overloaded, "all targets overloaded"),
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"all targets overloaded\"}}\n\n"
    );
    let upstream = StreamEvent::Error {
        error: UpstreamErrorBody {
            kind: Some("server_error".into()),
            code: None,
            message: "boom".into(),
            retry_after: None,
        },
    };
    let frames = parse_sse(&encode_all(&[upstream]));
    assert_eq!(frames.len(), 1);
    assert_eq!(
        decode_all(&frames),
        vec![StreamEvent::Error {
            error: UpstreamErrorBody {
                kind: Some("api_error".into()),
                code: None,
                message: "boom".into(),
                retry_after: None,
            }
        }]
    );
}

fn delta_event(data: &str) -> SseEvent {
    SseEvent {
        event: Some("content_block_delta".into()),
        data: data.to_string().into(),
        raw: Bytes::new(),
    }
}

fn text_delta(text_json: &str) -> String {
    format!(
        r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text_json}}}}}"#
    )
}

/// Text deltas are walked by the cursor, and the ones after the first recognised by
/// comparing bytes; event after event, the results are the general decoder's.
#[test]
fn text_delta_fast_path_matches_the_general_decoder() {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#.to_string(),
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_string(),
        text_delta(r#""Hello""#),
        text_delta(r#""""#),
        text_delta(r#"" w\u00f6rld \"q\"\n""#),
        text_delta(r#""\ud800""#),
        text_delta("null"),
        text_delta("5"),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"b"}}"#.to_string(),
        r#"{"type":"content_block_delta","index":null,"delta":{"type":"text_delta","text":"x"}}"#.to_string(),
        r#"{"type":"content_block_delta","index":1.0,"delta":{"type":"text_delta","text":"x"}}"#.to_string(),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#.to_string(),
        r#"{"type":"content_block\u005fdelta","index":0,"delta":{"type":"text_delta","text":"esc"}}"#.to_string(),
        r#"{"delta":{"text":"first","type":"text_delta"},"index":2,"type":"content_block_delta","extra":[1,{"a":null}]}"#.to_string(),
        r#"{"delta":{"text":"again","type":"text_delta"},"index":2,"type":"content_block_delta","extra":[1,{"a":null}]}"#.to_string(),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#.to_string(),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#.to_string(),
        text_delta(r#""after""#),
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}"#.to_string(),
        r#"{"type":"message_stop"}"#.to_string(),
        text_delta(r#""late""#),
    ];
    let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
    let mut by_template = 0;
    for data in &events {
        by_template += usize::from(fast.repeat.text_of(data).is_some());
        let got = fast.push(&delta_event(data)).map_err(|e| e.to_string());
        let want = general
            .push_value(&delta_event(data), data)
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{data}");
    }
    // "", the escaped text, the lone surrogate (its escape does not decode: the
    // general decoder reads it), "again" (like "first", whose fields come in another
    // order) and "late" (like "after").
    assert_eq!(by_template, 5);
}

proptest! {
    /// Once a text delta is the template, an event one edit away from the next one
    /// decodes as the general decoder decodes it.
    #[test]
    fn text_delta_fast_path_matches_on_corrupted_events(
        text in "[a-z \\\\\"\u{e9}]{0,12}",
        at in any::<proptest::sample::Index>(),
        edit in 0u8..3,
        with in proptest::sample::select(crate::wire::EDIT_CHARS.to_vec()),
    ) {
        let first = text_delta(r#""first""#);
        let next = text_delta(&serde_json::to_string(&text).unwrap());
        let data = crate::wire::one_edit(&next, at, edit, with);
        let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
        fast.push(&delta_event(&first)).unwrap();
        general.push_value(&delta_event(&first), &first).unwrap();
        prop_assert!(fast.repeat.text_of(&next).is_some());
        let got = fast.push(&delta_event(&data)).map_err(|e| e.to_string());
        let want = general.push_value(&delta_event(&data), data.trim()).map_err(|e| e.to_string());
        prop_assert_eq!(got, want, "event {}", data);
    }
}

#[test]
fn foreign_tool_ids_take_anthropics_pattern_and_stay_paired() {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    };
    assert_eq!(
        tool_use_id("toolu_01A09q90qw90lq917835lq9"),
        "toolu_01A09q90qw90lq917835lq9"
    );
    assert_eq!(tool_use_id("call_abc-1"), "call_abc-1");
    let a = tool_use_id("call:abc.1");
    let b = tool_use_id("call.abc:1");
    assert!(valid(&a) && valid(&b), "{a} {b}");
    assert!(a.starts_with("call_abc_1_"), "{a}");
    assert_ne!(a, b);
    assert_eq!(tool_use_id("call:abc.1"), a);
    assert!(valid(&tool_use_id("")));
    assert!(valid(&tool_use_id("functions.get_weather:0")));
}

#[test]
fn a_tool_call_without_input_decodes_to_empty_object_arguments() {
    let sse = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"now\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"at\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    let mut dec = StreamDecoder::new();
    let events: Vec<StreamEvent> = parse_sse(sse)
        .iter()
        .flat_map(|ev| dec.push(ev).unwrap())
        .collect();
    let args: Vec<(u32, &str)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta { index, arguments } => Some((*index, arguments.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(args, vec![(0, "{}"), (1, "{\"a\":1}")]);
}

/// The general reading of an event: its data decoded (invalid UTF-8 replaced) and
/// trimmed, then walked through a `Value` (what `push` gives when no shortcut applies).
fn push_general(dec: &mut StreamDecoder, ev: &SseEvent) -> Result<Vec<StreamEvent>, String> {
    let text = ev.data_text();
    dec.push_value(ev, text.trim()).map_err(|e| e.to_string())
}

proptest! {
    /// Text deltas matched against the template on their bytes (before any UTF-8
    /// check) decode exactly as the general reading decodes them, whatever bytes are
    /// put in, dropped or replaced, and whatever surrounds the event.
    #[test]
    fn text_delta_on_bytes_matches_the_general_reading(
        texts in proptest::collection::vec("[a-z \\\\\"\u{e9}\u{1F600}]{0,8}", 1..4),
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), 0u8..3, 0..BYTE_EDITS.len()), 0..3),
        around in (0..BYTE_EDITS.len(), 0..BYTE_EDITS.len(), any::<bool>()),
    ) {
        let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
        let first = text_delta(r#""first""#);
        fast.push(&delta_event(&first)).unwrap();
        push_general(&mut general, &delta_event(&first)).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let mut data = text_delta(&serde_json::to_string(text).unwrap()).into_bytes();
            if i + 1 == texts.len() {
                crate::wire::scan::edit_bytes(&mut data, &BYTE_EDITS, &edits, around);
            }
            let ev = SseEvent {
                event: Some("content_block_delta".into()),
                data: data.clone().into(),
                raw: Bytes::new(),
            };
            let got = fast.push(&ev).map_err(|e| e.to_string());
            let want = push_general(&mut general, &ev);
            prop_assert_eq!(got, want, "event {:?}", String::from_utf8_lossy(&data));
        }
    }
}
