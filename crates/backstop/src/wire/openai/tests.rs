#![allow(clippy::unwrap_used)]
use super::*;
use crate::wire::scan::BYTE_EDITS;
use proptest::prelude::*;
use serde_json::json;

fn text(t: &str) -> Part {
    Part::Text { text: t.into() }
}

fn call(id: &str, name: &str, args: &str) -> Part {
    Part::ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    }
}

fn result(id: &str, t: &str) -> Part {
    Part::ToolResult {
        tool_call_id: id.into(),
        content: vec![text(t)],
        is_error: false,
    }
}

fn user(parts: Vec<Part>) -> Message {
    Message {
        role: Role::User,
        content: parts,
        name: None,
    }
}

fn assistant(parts: Vec<Part>) -> Message {
    Message {
        role: Role::Assistant,
        content: parts,
        name: None,
    }
}

fn err_of(body: Value) -> String {
    match decode_request(&body) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.message,
    }
}

fn sse(data: &str) -> SseEvent {
    SseEvent {
        event: None,
        data: data.to_string().into(),
        raw: bytes::Bytes::new(),
    }
}

/// Split SSE bytes into events (our writer only ever emits single-line data).
fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with("\n\n"), "frames end with a blank line");
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let data = f.strip_prefix("data: ").unwrap();
            assert!(!data.contains('\n'));
            sse(data)
        })
        .collect()
}

// ---- decode_request -------------------------------------------------

#[test]
fn decodes_system_developer_and_multi_turn() {
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule one."},
                                              {"type": "text", "text": "Rule two."}]},
            {"role": "user", "content": "Hello", "name": "alice"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
        "user": "u-1",
        "metadata": {"team": "a"},
        "reasoning_effort": "low",
        "some_unknown_field": {"x": 1},
    });
    let req = decode_request(&body).unwrap();
    assert_eq!(req.model, "gpt-4o");
    assert_eq!(
        req.system,
        vec![
            SystemBlock {
                text: "You are terse.".into()
            },
            SystemBlock {
                text: "Rule one.".into()
            },
            SystemBlock {
                text: "Rule two.".into()
            },
        ]
    );
    assert_eq!(
        req.messages,
        vec![
            Message {
                role: Role::User,
                content: vec![text("Hello")],
                name: Some("alice".into())
            },
            assistant(vec![text("Hi!")]),
            user(vec![text("Again")]),
        ]
    );
    assert_eq!(req.temperature, Some(0.2));
    assert_eq!(req.top_p, Some(0.9));
    assert_eq!(req.max_tokens, Some(256));
    assert_eq!(req.user.as_deref(), Some("u-1"));
    assert_eq!(req.metadata, json!({"team": "a"}).as_object().cloned());
    assert_eq!(req.reasoning, Some(json!({"effort": "low"})));
    assert!(!req.stream);
}

#[test]
fn decodes_images_url_and_base64() {
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        ]}],
    });
    let req = decode_request(&body).unwrap();
    assert_eq!(
        req.messages[0].content,
        vec![
            text("What is in these?"),
            Part::Image {
                source: ImageSource::Url {
                    url: "https://example.com/cat.png".into()
                }
            },
            Part::Image {
                source: ImageSource::Base64 {
                    media_type: "image/jpeg".into(),
                    data: "/9j/4AAQ".into()
                }
            },
        ]
    );
    let out = encode_request(&req, "gpt-4o");
    assert_eq!(
        out["messages"][0],
        json!({"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        ]})
    );
}

fn tool_conversation() -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "4C"}]},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
            "strict": true}}],
        "tool_choice": "required",
        "parallel_tool_calls": true,
    })
}

#[test]
fn decodes_parallel_tool_calls_and_merges_tool_results() {
    let req = decode_request(&tool_conversation()).unwrap();
    assert_eq!(
        req.messages,
        vec![
            user(vec![text("Weather in Paris and Oslo?")]),
            assistant(vec![
                call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                call("call_b", "get_weather", "{\"city\":\"Oslo\"}"),
            ]),
            user(vec![result("call_a", "18C"), result("call_b", "4C")]),
            user(vec![text("Thanks")]),
        ]
    );
    assert_eq!(req.tools.len(), 1);
    assert_eq!(req.tools[0].name, "get_weather");
    assert_eq!(req.tools[0].description.as_deref(), Some("Current weather"));
    assert_eq!(req.tools[0].parameters["required"], json!(["city"]));
    assert_eq!(req.tool_choice, Some(ToolChoice::Required));
    assert_eq!(req.parallel_tool_calls, Some(true));
}

#[test]
fn encodes_tool_conversation() {
    let req = decode_request(&tool_conversation()).unwrap();
    let out = encode_request(&req, "gpt-4.1");
    assert_eq!(
        out,
        json!({
            "model": "gpt-4.1",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": "4C"},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}}],
            "tool_choice": "required",
            "parallel_tool_calls": true,
        })
    );
}

#[test]
fn tool_results_come_before_the_rest_of_a_user_turn() {
    let req = Request {
        model: "x".into(),
        messages: vec![
            assistant(vec![text("Let me check."), call("c1", "f", "{}")]),
            user(vec![
                text("Here you go"),
                Part::ToolResult {
                    tool_call_id: "c1".into(),
                    content: vec![text("line 1"), text("line 2")],
                    is_error: true,
                },
            ]),
        ],
        ..Request::default()
    };
    let out = encode_request(&req, "gpt-4o");
    assert_eq!(
        out["messages"],
        json!([
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "Error: line 1\nline 2"},
            {"role": "user", "content": "Here you go"},
        ])
    );
}

#[test]
fn decodes_json_mode_and_schema() {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                          "response_format": {"type": "json_object"}});
    assert_eq!(
        decode_request(&body).unwrap().response_format,
        Some(ResponseFormat::JsonObject)
    );
    let schema = json!({"name": "person", "strict": true,
                        "schema": {"type": "object", "properties": {"name": {"type": "string"}}}});
    body["response_format"] = json!({"type": "json_schema", "json_schema": schema});
    let req = decode_request(&body).unwrap();
    assert_eq!(
        req.response_format,
        Some(ResponseFormat::JsonSchema {
            json_schema: schema.clone()
        })
    );
    assert_eq!(
        encode_request(&req, "gpt-4o")["response_format"],
        json!({"type": "json_schema", "json_schema": schema})
    );
    let json_mode = Request {
        response_format: Some(ResponseFormat::JsonObject),
        ..req
    };
    assert_eq!(
        encode_request(&json_mode, "gpt-4o")["response_format"],
        json!({"type": "json_object"})
    );
}

#[test]
fn decodes_stop_string_and_array() {
    let mut body = json!({"model": "m", "messages": [], "stop": "END"});
    assert_eq!(decode_request(&body).unwrap().stop, vec!["END".to_string()]);
    body["stop"] = json!(["a", "b"]);
    let req = decode_request(&body).unwrap();
    assert_eq!(req.stop, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(encode_request(&req, "m")["stop"], json!(["a", "b"]));
    body["stop"] = json!(null);
    assert!(decode_request(&body).unwrap().stop.is_empty());
}

#[test]
fn decodes_tool_choice_forms_and_token_fields() {
    let base = json!({"model": "m", "messages": []});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        decode_request(&b).unwrap()
    };
    assert_eq!(
        with("tool_choice", json!("none")).tool_choice,
        Some(ToolChoice::None)
    );
    assert_eq!(
        with("tool_choice", json!("auto")).tool_choice,
        Some(ToolChoice::Auto)
    );
    assert_eq!(
        with(
            "tool_choice",
            json!({"type": "function", "function": {"name": "f"}})
        )
        .tool_choice,
        Some(ToolChoice::Tool { name: "f".into() })
    );
    assert_eq!(
        with("max_completion_tokens", json!(77)).max_tokens,
        Some(77)
    );
    let mut both = base.clone();
    both["max_tokens"] = json!(10);
    both["max_completion_tokens"] = json!(20);
    assert_eq!(decode_request(&both).unwrap().max_tokens, Some(20));
    assert!(with("stream", json!(true)).stream);
}

#[test]
fn assistant_refusal_and_empty_content() {
    let body = json!({"model": "m", "messages": [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "assistant", "content": null, "refusal": "I can't help with that."},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}]},
    ]});
    let req = decode_request(&body).unwrap();
    assert_eq!(req.messages[0].content, vec![call("c", "f", "{}")]);
    assert_eq!(
        req.messages[1].content,
        vec![text("I can't help with that.")]
    );
    assert_eq!(req.messages[2].content, vec![text("a"), text("b")]);
}

#[test]
fn path_precise_errors() {
    assert_eq!(err_of(json!({"messages": []})), "model: required");
    assert_eq!(
        err_of(json!({"model": "", "messages": []})),
        "model: expected a non-empty string"
    );
    assert_eq!(
        err_of(json!({"model": 3, "messages": []})),
        "model: expected a non-empty string"
    );
    assert_eq!(err_of(json!({"model": "m"})), "messages: required");
    assert_eq!(
        err_of(json!({"model": "m", "messages": {}})),
        "messages: expected an array of messages"
    );
    assert_eq!(
        err_of(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"},
                                                   {"role": "user", "content": 5}]})
        ),
        "messages[1].content: expected a string or an array of content parts"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [{"content": "x"}]})),
        "messages[0].role: required"
    );
    assert!(
        err_of(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
            .starts_with("messages[0].role: expected one of")
    );
    assert!(
        err_of(
            json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]})
        )
        .contains("legacy \"function\" role")
    );
    // A part only OpenAI has is no error: noted as untranslatable and left out.
    let r = decode_request(
        &json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "input_audio", "input_audio": {}}]}]}),
    )
    .unwrap();
    assert_eq!(r.messages[0].content, vec![text("x")]);
    let u = r.untranslatable.unwrap();
    assert_eq!(u.param, "messages[0].content[1].type");
    assert!(u.what.contains("\"input_audio\""), "{}", u.what);
    assert_eq!(
        err_of(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {}}]}]})
        ),
        "messages[0].content[0].image_url.url: required"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
        "messages[0].tool_call_id: required"
    );
    assert_eq!(
        err_of(
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]})
        ),
        "messages[0].tool_calls[0].function.name: required"
    );
    assert_eq!(
        err_of(
            json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url"}]}]})
        ),
        "messages[0].content[0].type: unsupported content part type \"image_url\"; expected \"text\""
    );
    assert_eq!(
        err_of(
            json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]})
        ),
        "tools[0].function.name: required"
    );
    assert!(
        err_of(json!({"model": "m", "messages": [], "tool_choice": "always"}))
            .starts_with("tool_choice: expected")
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [], "stop": 5})),
        "stop: expected a string or an array of strings"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [], "stop": ["a", 1]})),
        "stop[1]: expected a string"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [], "max_tokens": -1})),
        "max_tokens: expected a non-negative integer"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [], "temperature": "hot"})),
        "temperature: expected a number"
    );
    assert_eq!(
        err_of(json!({"model": "m", "messages": [], "response_format": {"type": "json_schema"}})),
        "response_format.json_schema: required"
    );
    assert!(
        err_of(json!({"model": "m", "messages": [], "functions": []})).starts_with("functions:")
    );
    let e = decode_request(&json!({"model": "m", "messages": [1]})).unwrap_err();
    assert_eq!(e.path.as_deref(), Some("messages[0]"));
    assert_eq!(e.to_client_error().param.as_deref(), Some("messages[0]"));
    assert!(decode_request(&json!([1])).is_err());
}

#[test]
fn include_usage_flag() {
    assert!(include_usage(
        &json!({"stream": true, "stream_options": {"include_usage": true}})
    ));
    assert!(!include_usage(
        &json!({"stream": true, "stream_options": {"include_usage": false}})
    ));
    assert!(!include_usage(&json!({"stream": true})));
}

// ---- encode_request -------------------------------------------------

#[test]
fn encodes_full_request() {
    let req = Request {
        model: "alias".into(),
        system: vec![
            SystemBlock { text: "S1".into() },
            SystemBlock { text: "S2".into() },
        ],
        messages: vec![
            user(vec![text("hi")]),
            assistant(vec![
                Part::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                text("hello"),
            ]),
            user(vec![Part::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "AAAA".into(),
                },
            }]),
        ],
        max_tokens: Some(100),
        temperature: Some(0.5),
        top_p: Some(1.0),
        top_k: Some(40),
        stop: vec!["\n\n".into()],
        stream: true,
        user: Some("u".into()),
        metadata: json!({"k": "v"}).as_object().cloned(),
        reasoning: Some(json!({"effort": "high"})),
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: Some(false),
        ..Request::default()
    };
    let out = encode_request(&req, "gpt-4o-mini");
    assert_eq!(
        out,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "S1"},
                {"role": "system", "content": "S2"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            ],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 1.0,
            "stop": ["\n\n"],
            "reasoning_effort": "high",
            "user": "u",
            "metadata": {"k": "v"},
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    // No tools: tool_choice and parallel_tool_calls are left out; top_k never appears.
    assert!(out.get("tool_choice").is_none());
    assert!(out.get("top_k").is_none());
}

#[test]
fn reasoning_models_get_max_completion_tokens() {
    let req = Request {
        max_tokens: Some(9),
        ..Request::default()
    };
    for m in ["o1", "o1-mini", "o3-mini", "o4-mini", "gpt-5", "gpt-5-nano"] {
        let out = encode_request(&req, m);
        assert_eq!(out["max_completion_tokens"], 9, "{m}");
        assert!(out.get("max_tokens").is_none(), "{m}");
    }
    for m in ["gpt-4o", "gpt-4.1", "llama-3"] {
        let out = encode_request(&req, m);
        assert_eq!(out["max_tokens"], 9, "{m}");
        assert!(out.get("max_completion_tokens").is_none(), "{m}");
    }
}

#[test]
fn empty_request_has_only_model_and_messages() {
    let out = encode_request(&Request::default(), "m");
    assert_eq!(out, json!({"model": "m", "messages": []}));
    let only_thinking = Request {
        messages: vec![assistant(vec![Part::Thinking {
            text: "t".into(),
            signature: None,
        }])],
        ..Request::default()
    };
    assert_eq!(
        encode_request(&only_thinking, "m")["messages"],
        json!([{"role": "assistant", "content": ""}])
    );
}

// ---- round trip (proptest) -------------------------------------------

fn arb_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?\n]{1,24}"
}

fn arb_id() -> impl Strategy<Value = String> {
    "call_[a-z0-9]{1,8}"
}

fn arb_image() -> impl Strategy<Value = Part> {
    prop_oneof![
        "https://example\\.com/[a-z]{1,8}\\.png".prop_map(|url| Part::Image {
            source: ImageSource::Url { url }
        }),
        ("image/(png|jpeg|webp)", "[A-Za-z0-9+/]{4,16}={0,2}").prop_map(|(media_type, data)| {
            Part::Image {
                source: ImageSource::Base64 { media_type, data },
            }
        }),
    ]
}

fn arb_user() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            prop::collection::vec(
                prop_oneof![arb_text().prop_map(|t| Part::Text { text: t }), arb_image()],
                1..4
            ),
            prop::option::of("[a-z]{1,8}")
        )
            .prop_map(|(content, name)| Message {
                role: Role::User,
                content,
                name
            }),
        prop::collection::vec((arb_id(), arb_text()), 1..4).prop_map(|rs| Message {
            role: Role::User,
            content: rs.into_iter().map(|(id, t)| result(&id, &t)).collect(),
            name: None,
        }),
    ]
}

fn arb_assistant() -> impl Strategy<Value = Message> {
    (
        prop::collection::vec(arb_text(), 0..3),
        prop::collection::vec(
            (arb_id(), "[a-z_]{1,10}", "\\{\"[a-z]{1,5}\":[0-9]{1,3}\\}"),
            0..3,
        ),
        prop::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(texts, calls, name)| {
            let mut content: Vec<Part> =
                texts.into_iter().map(|t| Part::Text { text: t }).collect();
            content.extend(calls.into_iter().map(|(id, n, a)| call(&id, &n, &a)));
            Message {
                role: Role::Assistant,
                content,
                name,
            }
        })
}

fn arb_messages() -> impl Strategy<Value = Vec<Message>> {
    // Roles alternate, so two tool-result turns are never adjacent (OpenAI
    // has no way to tell them apart).
    prop::collection::vec((arb_user(), arb_assistant()), 0..4)
        .prop_map(|pairs| pairs.into_iter().flat_map(|(u, a)| [u, a]).collect())
}

fn arb_tools() -> impl Strategy<Value = Vec<Tool>> {
    prop::collection::vec(
        ("[a-z_]{1,10}", prop::option::of(arb_text()), "[a-z]{1,6}").prop_map(
            |(name, description, prop)| Tool {
                name,
                description,
                parameters: json!({"type": "object", "properties": {prop: {"type": "string"}}}),
            },
        ),
        0..3,
    )
}

fn arb_tool_choice() -> impl Strategy<Value = ToolChoice> {
    prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::None),
        Just(ToolChoice::Required),
        "[a-z_]{1,10}".prop_map(|name| ToolChoice::Tool { name }),
    ]
}

fn arb_response_format() -> impl Strategy<Value = ResponseFormat> {
    prop_oneof![
        Just(ResponseFormat::Text),
        Just(ResponseFormat::JsonObject),
        "[a-z]{1,8}".prop_map(|name| ResponseFormat::JsonSchema {
            json_schema: json!({"name": name, "strict": true, "schema": {"type": "object"}})
        }),
    ]
}

prop_compose! {
    fn arb_request()(
        system in prop::collection::vec(arb_text().prop_map(|text| SystemBlock { text }), 0..3),
        messages in arb_messages(),
        tools in arb_tools(),
        tool_choice in prop::option::of(arb_tool_choice()),
        parallel in prop::option::of(any::<bool>()),
        max_tokens in prop::option::of(any::<u32>()),
        temperature in prop::option::of(0.0f64..2.0),
        top_p in prop::option::of(0.0f64..1.0),
        stop in prop::collection::vec(arb_text(), 0..4),
        response_format in prop::option::of(arb_response_format()),
        stream in any::<bool>(),
        user in prop::option::of("[a-z0-9-]{1,12}"),
        metadata in prop::option::of(prop::collection::btree_map("[a-z]{1,6}", "[a-z]{0,6}", 1..3)),
        effort in prop::option::of(prop_oneof![Just("low"), Just("medium"), Just("high")]),
    ) -> Request {
        let has_tools = !tools.is_empty();
        Request {
            model: "client-alias".into(),
            system,
            messages,
            tools,
            tool_choice: tool_choice.filter(|_| has_tools),
            parallel_tool_calls: parallel.filter(|_| has_tools),
            max_tokens,
            temperature,
            top_p,
            top_k: None,
            stop,
            response_format,
            stream,
            user,
            metadata: metadata.map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
            reasoning: effort.map(|e| json!({"effort": e})),
            untranslatable: None,
        }
    }
}

proptest! {
    #[test]
    fn request_round_trips(req in arb_request(), reasoning_model in any::<bool>()) {
        let upstream = if reasoning_model { "o3-mini" } else { "gpt-4o" };
        let body = encode_request(&req, upstream);
        let back = decode_request(&body).map_err(|e| TestCaseError::fail(e.message))?;
        prop_assert_eq!(&back.model, upstream);
        let back = Request { model: req.model.clone(), ..back };
        prop_assert_eq!(back, req);
    }
}

// ---- responses --------------------------------------------------------

#[test]
fn decodes_openai_response() {
    let body = br#"{
      "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
      "object": "chat.completion",
      "created": 1741569952,
      "model": "gpt-4.1-2025-04-14",
      "choices": [{
        "index": 0,
        "message": {
          "role": "assistant",
          "content": null,
          "refusal": null,
          "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
          ],
          "annotations": []
        },
        "logprobs": null,
        "finish_reason": "tool_calls"
      }],
      "usage": {
        "prompt_tokens": 82, "completion_tokens": 40, "total_tokens": 122,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
      },
      "service_tier": "default",
      "system_fingerprint": "fp_x"
    }"#;
    let r = decode_response(body).unwrap();
    assert_eq!(r.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_eq!(r.model, "gpt-4.1-2025-04-14");
    assert_eq!(r.created, 1741569952);
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        r.content,
        vec![
            call("call_1", "get_weather", "{\"city\":\"Paris\"}"),
            call("call_2", "get_weather", "{\"city\":\"Oslo\"}"),
        ]
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 82,
            output_tokens: 40,
            cache_read_tokens: Some(64),
            cache_write_tokens: None
        }
    );
}

#[test]
fn decodes_reasoning_content_and_finish_reasons() {
    let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"deepseek-reasoner",
        "choices":[{"index":0,"message":{"role":"assistant","content":"42","reasoning_content":"think"},
        "finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
    let r = decode_response(body).unwrap();
    assert_eq!(
        r.content,
        vec![
            Part::Thinking {
                text: "think".into(),
                signature: None
            },
            text("42")
        ]
    );
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
    assert_eq!(r.usage.cache_read_tokens, None);
    let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a","reasoning":"r"},
        "finish_reason":"content_filter"}]}"#;
    let r = decode_response(body).unwrap();
    assert_eq!(
        r.content[0],
        Part::Thinking {
            text: "r".into(),
            signature: None
        }
    );
    assert_eq!(r.finish_reason, Some(FinishReason::ContentFilter));
    for (s, want) in [
        ("stop", FinishReason::Stop),
        ("function_call", FinishReason::ToolCalls),
        ("weird", FinishReason::Other),
    ] {
        assert_eq!(finish_from_str(s), want);
    }
}

#[test]
fn decode_response_rejects_errors_and_garbage() {
    assert!(decode_response(b"not json").is_err());
    assert!(decode_response(b"[]").is_err());
    assert!(decode_response(br#"{"id":"x"}"#).is_err());
    let e = decode_response(br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#)
        .unwrap_err();
    assert!(e.message.contains("Rate limit reached"));
}

#[test]
fn encodes_response_exactly() {
    let resp = chat::Response {
        id: "chatcmpl-1".into(),
        model: "claude-sonnet-4-5".into(),
        content: vec![
            Part::Thinking {
                text: "hidden".into(),
                signature: None,
            },
            text("Hello"),
            text(" world"),
        ],
        finish_reason: Some(FinishReason::StopSequence),
        stop_sequence: Some("END".into()),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: None,
            cache_write_tokens: Some(3),
        },
        created: 1700000000,
    };
    assert_eq!(
        encode_response(&resp),
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "claude-sonnet-4-5",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world", "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        })
    );
}

#[test]
fn response_round_trips() {
    let resp = chat::Response {
        id: "chatcmpl-9".into(),
        model: "gpt-4o".into(),
        content: vec![
            text("Checking."),
            call("call_1", "lookup", "{\"q\":\"x\"}"),
            call("call_2", "lookup", "{}"),
        ],
        finish_reason: Some(FinishReason::ToolCalls),
        stop_sequence: None,
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: Some(50),
            cache_write_tokens: None,
        },
        created: 1234,
    };
    let bytes = serde_json::to_vec(&encode_response(&resp)).unwrap();
    assert_eq!(decode_response(&bytes).unwrap(), resp);
    let tools_only = chat::Response {
        content: vec![call("c", "f", "{}")],
        ..resp.clone()
    };
    let v = encode_response(&tools_only);
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    for r in [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::ContentFilter,
    ] {
        let x = chat::Response {
            finish_reason: Some(r),
            ..resp.clone()
        };
        let back = decode_response(&serde_json::to_vec(&encode_response(&x)).unwrap()).unwrap();
        assert_eq!(back.finish_reason, Some(r));
    }
}

// ---- errors -----------------------------------------------------------

#[test]
fn encodes_errors() {
    // A rate limit as OpenAI says it: type `requests`, code `rate_limit_exceeded`.
    let e = ClientError::new(ErrorKind::RateLimit, "all targets failed");
    assert_eq!(
        encode_error(&e),
        json!({"error": {"message": "all targets failed", "type": "requests",
                         "param": null, "code": "rate_limit_exceeded"}})
    );
    let e = ClientError::invalid("messages: required").with_param("messages");
    assert_eq!(
        encode_error(&e),
        json!({"error": {"message": "messages: required", "type": "invalid_request_error",
                         "param": "messages", "code": null}})
    );
    let e = ClientError::new(ErrorKind::NotFound, "no such model").with_code("model_not_found");
    assert_eq!(
        encode_error(&e),
        json!({"error": {"message": "no such model", "type": "invalid_request_error",
                         "param": null, "code": "model_not_found"}})
    );
    for (kind, ty) in [
        (ErrorKind::Authentication, "invalid_request_error"),
        (ErrorKind::Permission, "permission_error"),
        (ErrorKind::RequestTooLarge, "invalid_request_error"),
        (ErrorKind::RateLimit, "requests"),
        (ErrorKind::Api, "server_error"),
        (ErrorKind::Overloaded, "server_error"),
        (ErrorKind::Timeout, "server_error"),
    ] {
        assert_eq!(
            encode_error(&ClientError::new(kind, "m"))["error"]["type"],
            ty
        );
    }
}

#[test]
fn decodes_provider_error_bodies() {
    let openai = br#"{"error":{"message":"Incorrect API key provided: sk-abc***.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    assert_eq!(
        decode_error(openai),
        Some(UpstreamErrorBody {
            kind: Some("invalid_request_error".into()),
            code: Some("invalid_api_key".into()),
            message: "Incorrect API key provided: sk-abc***.".into(),
            retry_after: None,
        })
    );
    let quota = br#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    assert_eq!(
        decode_error(quota).unwrap().code.as_deref(),
        Some("insufficient_quota")
    );
    let server = br#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
    let s = decode_error(server).unwrap();
    assert_eq!((s.kind.as_deref(), s.code), (Some("server_error"), None));

    let openrouter = br#"{"error":{"code":429,"message":"Provider returned error","metadata":{"raw":"rate limited upstream","provider_name":"Together"}}}"#;
    let o = decode_error(openrouter).unwrap();
    assert_eq!(o.code.as_deref(), Some("429"));
    assert_eq!(o.kind, None);
    assert_eq!(o.message, "Provider returned error: rate limited upstream");

    let gemini = br#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]"#;
    assert_eq!(
        decode_error(gemini),
        Some(UpstreamErrorBody {
            kind: Some("RESOURCE_EXHAUSTED".into()),
            code: Some("429".into()),
            message: "Resource has been exhausted (e.g. check quota).".into(),
            retry_after: None,
        })
    );
    let vllm = br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
    let v = decode_error(vllm).unwrap();
    assert_eq!(
        (v.kind.as_deref(), v.code.as_deref()),
        (Some("NotFoundError"), Some("404"))
    );
    let ollama = br#"{"error":"model 'llama9' not found"}"#;
    assert_eq!(
        decode_error(ollama).unwrap().message,
        "model 'llama9' not found"
    );

    assert_eq!(decode_error(b"<html>Bad Gateway</html>"), None);
    assert_eq!(decode_error(br#"{"id":"chatcmpl-1","choices":[]}"#), None);
    assert_eq!(decode_error(br#"{"error":null}"#), None);
}

// ---- stream decoder ---------------------------------------------------

fn decode_all(dec: &mut StreamDecoder, datas: &[&str]) -> Vec<StreamEvent> {
    datas
        .iter()
        .flat_map(|d| dec.push(&sse(d)).unwrap())
        .collect()
}

#[test]
fn decodes_realistic_stream() {
    let chunks = [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Let me "},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"check."},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_P","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_O","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"city\":\"Oslo\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":30,"total_tokens":110,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        "",
        "[DONE]",
    ];
    let mut dec = StreamDecoder::new();
    let events = decode_all(&mut dec, &chunks);
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o-2024-08-06".into(),
                input_tokens: None
            },
            StreamEvent::TextDelta {
                text: "Let me ".into()
            },
            StreamEvent::TextDelta {
                text: "check.".into()
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_P".into(),
                name: "get_weather".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"ci".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "ty\":\"Paris\"}".into()
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_O".into(),
                name: "get_weather".into()
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{\"city\":\"Oslo\"}".into()
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                stop_sequence: None
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 80,
                    output_tokens: 30,
                    cache_read_tokens: Some(0),
                    cache_write_tokens: None
                }
            },
            StreamEvent::Done,
        ]
    );
}

#[test]
fn renumbers_tool_calls_and_reads_reasoning() {
    let mut dec = StreamDecoder::new();
    let events = decode_all(
        &mut dec,
        &[
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"reasoning":"more"}}]}"#,
            // Upstream indices need not start at 0.
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            // No index at all, but a new id: a new call.
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":{"x":1}}}]}}]}"#,
            // Same upstream index as the first, different id: a new call too.
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"c","function":{"name":"h"}}]}}]}"#,
            r#"{"id":"g","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"arguments":"[]"}}]}}]}"#,
        ],
    );
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "g".into(),
                model: "m".into(),
                input_tokens: None
            },
            StreamEvent::ThinkingDelta { text: "hmm".into() },
            StreamEvent::ThinkingDelta {
                text: "more".into()
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into()
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into()
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "g".into()
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{\"x\":1}".into()
            },
            StreamEvent::ToolCallStart {
                index: 2,
                id: "c".into(),
                name: "h".into()
            },
            StreamEvent::ToolCallDelta {
                index: 2,
                arguments: "[]".into()
            },
        ]
    );
}

#[test]
fn stream_decoder_handles_errors_and_garbage() {
    let mut dec = StreamDecoder::new();
    // OpenRouter's mid-stream error chunk.
    let ev = dec
        .push(&sse(r#"{"id":"cmpl-abc","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error","native_finish_reason":"error"}]}"#))
        .unwrap();
    assert_eq!(
        ev,
        vec![StreamEvent::Error {
            error: UpstreamErrorBody {
                kind: None,
                code: Some("server_error".into()),
                message: "Provider disconnected unexpectedly".into(),
                retry_after: None,
            }
        }]
    );
    let ev = dec
        .push(&sse(
            r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#,
        ))
        .unwrap();
    assert!(matches!(&ev[..], [StreamEvent::Error { error }] if error.message == "overloaded"));
    assert!(dec.push(&sse("{not json")).is_err());
    assert!(dec.push(&sse("   ")).unwrap().is_empty());
    let plain = SseEvent {
        event: Some("error".into()),
        data: "upstream went away".into(),
        raw: bytes::Bytes::new(),
    };
    assert!(
        matches!(&dec.push(&plain).unwrap()[..], [StreamEvent::Error { error }] if error.message == "upstream went away")
    );
}

// ---- stream encoder ---------------------------------------------------

fn sample_events() -> Vec<StreamEvent> {
    vec![
        StreamEvent::Start {
            id: "chatcmpl-77".into(),
            model: "gpt-4o".into(),
            input_tokens: None,
        },
        StreamEvent::TextDelta { text: "Hi ".into() },
        StreamEvent::ThinkingDelta {
            text: "dropped".into(),
        },
        StreamEvent::TextDelta {
            text: "there".into(),
        },
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "f".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "{\"a\":".into(),
        },
        StreamEvent::ToolCallStart {
            index: 1,
            id: "call_2".into(),
            name: "g".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            arguments: "1}".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 1,
            arguments: "{}".into(),
        },
        StreamEvent::Usage {
            usage: Usage {
                input_tokens: 9,
                output_tokens: 4,
                cache_read_tokens: Some(2),
                cache_write_tokens: None,
            },
        },
        StreamEvent::Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        StreamEvent::Done,
    ]
}

#[test]
fn encoder_output_decodes_back() {
    let events = sample_events();
    let mut enc = StreamEncoder::new(true);
    let mut out = Vec::new();
    for ev in &events {
        enc.encode(ev, &mut out);
    }
    let frames = parse_sse(&out);
    let mut dec = StreamDecoder::new();
    let mut back = Vec::new();
    for f in &frames {
        back.extend(dec.push(f).unwrap());
    }
    // Thinking is dropped; usage moves to the end, just before [DONE].
    let mut want: Vec<StreamEvent> = events
        .iter()
        .filter(|e| {
            !matches!(
                e,
                StreamEvent::ThinkingDelta { .. } | StreamEvent::Usage { .. }
            )
        })
        .cloned()
        .collect();
    want.insert(want.len() - 1, events[9].clone());
    assert_eq!(back, want);
}

#[test]
fn encoder_frames_match_openai_shapes() {
    let mut enc = StreamEncoder::new(true);
    let mut out = Vec::new();
    for ev in sample_events() {
        enc.encode(&ev, &mut out);
    }
    let frames = parse_sse(&out);
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_slice(&f.data).unwrap())
        .collect();
    assert_eq!(frames.last().unwrap().data, "[DONE]");
    let created = chunks[0]["created"].clone();
    assert!(created.as_u64().unwrap() > 0);
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-77");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o");
        assert_eq!(c["created"], created);
        assert!(c.get("system_fingerprint").is_none());
    }
    assert_eq!(
        chunks[0],
        json!({"id": "chatcmpl-77", "object": "chat.completion.chunk", "created": created, "model": "gpt-4o",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": null, "finish_reason": null}],
               "usage": null})
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hi "}));
    assert_eq!(
        chunks[3]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]})
    );
    assert_eq!(
        chunks[4]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]})
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
               "prompt_tokens_details": {"cached_tokens": 2}})
    );
}

#[test]
fn encoder_without_usage_or_start() {
    let mut enc = StreamEncoder::new(false);
    let mut out = Vec::new();
    enc.encode(&StreamEvent::TextDelta { text: "x".into() }, &mut out);
    enc.encode(
        &StreamEvent::Usage {
            usage: Usage::default(),
        },
        &mut out,
    );
    enc.encode(
        &StreamEvent::Finish {
            reason: FinishReason::StopSequence,
            stop_sequence: Some("E".into()),
        },
        &mut out,
    );
    enc.encode(&StreamEvent::Done, &mut out);
    enc.encode(
        &StreamEvent::TextDelta {
            text: "after done".into(),
        },
        &mut out,
    );
    let frames = parse_sse(&out);
    assert_eq!(frames.len(), 4, "role, text, finish, [DONE]");
    let first: Value = serde_json::from_slice(&frames[0].data).unwrap();
    assert_eq!(first["id"], SYNTHETIC_ID);
    assert!(first.get("usage").is_none());
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let finish: Value = serde_json::from_slice(&frames[2].data).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(frames[3].data, "[DONE]");
}

#[test]
fn encoder_in_band_error_has_no_done() {
    let mut enc = StreamEncoder::new(true);
    let mut out = Vec::new();
    enc.encode(
        &StreamEvent::Start {
            id: "c".into(),
            model: "m".into(),
            input_tokens: None,
        },
        &mut out,
    );
    enc.encode(
        &StreamEvent::TextDelta {
            text: "partial".into(),
        },
        &mut out,
    );
    let err = ClientError::new(ErrorKind::Overloaded, "all targets failed");
    enc.encode_error(&err, &mut out);
    enc.encode(&StreamEvent::Done, &mut out);
    let frames = parse_sse(&out);
    assert_eq!(frames.len(), 3);
    let last: Value = serde_json::from_slice(&frames[2].data).unwrap();
    assert_eq!(
        last,
        json!({"error": {"message": "all targets failed", "type": "server_error", "param": null, "code": null}})
    );
    assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
    // Our decoder reads it back as an in-band error.
    let mut dec = StreamDecoder::new();
    let ev = dec.push(&frames[2]).unwrap();
    assert!(
        matches!(&ev[..], [StreamEvent::Error { error }] if error.message == "all targets failed")
    );
}

#[test]
fn encoder_writes_upstream_error_events() {
    let mut enc = StreamEncoder::default();
    let mut out = Vec::new();
    let error = UpstreamErrorBody {
        kind: None,
        code: Some("502".into()),
        message: "bad gateway".into(),
        retry_after: None,
    };
    enc.encode(
        &StreamEvent::Error {
            error: error.clone(),
        },
        &mut out,
    );
    enc.encode(&StreamEvent::Done, &mut out);
    let frames = parse_sse(&out);
    assert_eq!(frames.len(), 1);
    let back = StreamDecoder::new().push(&frames[0]).unwrap();
    assert_eq!(
        back,
        vec![StreamEvent::Error {
            error: UpstreamErrorBody {
                kind: Some("server_error".into()),
                ..error
            }
        }]
    );
}

/// The fast path of the stream decoder gives exactly what the general decoder gives,
/// and leaves every chunk it does not handle (odd types, errors, tool calls) to it.
#[test]
fn fast_stream_path_matches_the_general_decoder() {
    let chunks = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\" \n"},"finish_reason":null}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":1,"delta":{"content":"other choice"}},{"delta":{"content":"no index"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"","reasoning":"ignored: reasoning_content wins"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"reasoning":"think","refusal":"no"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":8,"prompt_tokens_details":{},"prompt_cache_hit_tokens":5}}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":8.5,"completion_tokens":"3"}}"#,
        r#"{"id":7,"model":null,"choices":[{"index":0,"delta":{"content":5}}]}"#,
        r#"{"id":"c1","choices":[{"index":-1,"delta":{"content":"negative index"}}]}"#,
        r#"{"id":"c1","choices":[null,{"index":0,"delta":{"content":"after null"}}]}"#,
        r#"{"id":"c1","choices":{"index":0}}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":null{"content":"after null"}}]}"#,
        r#"{"id":"c1","choices":null[{"index":0,"delta":{"content":"x"}}]}"#,
        r#"{"id":"c1","id":"c2","choices":[{"index":0,"delta":{"content":"dup"}}]}"#,
        r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        r#"{"object":"error","message":"vllm style","type":"BadRequestError"}"#,
        r#"{"choices":[],"x_groq":{"usage":{"prompt_tokens":4,"completion_tokens":2}}}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":"{}"}}]}}]}"#,
        r#"[1,2]"#,
    ];
    for first in [true, false] {
        for chunk in chunks {
            let ev = SseEvent {
                event: None,
                data: chunk.to_string().into(),
                raw: bytes::Bytes::new(),
            };
            let mut fast = StreamDecoder::new();
            let mut general = StreamDecoder::new();
            if !first {
                fast.started = true;
                general.started = true;
            }
            let via_push = fast.push(&ev).map_err(|e| e.to_string());
            let via_value = general.push_value(&ev, chunk).map_err(|e| e.to_string());
            assert_eq!(via_push, via_value, "chunk {chunk}");
            assert_eq!(fast.started, general.started, "chunk {chunk}");
        }
    }
}

/// Keys the fast path's inline key reading must read as the general decoder does:
/// escaped (`\u0069d` is `id`), duplicated, prefixes or extensions of known keys,
/// long, with whitespace around them.
#[test]
fn fast_stream_path_reads_odd_keys_as_the_general_decoder() {
    let chunks = [
        r#"{"\u0069d":"c1","model":"m","choices":[{"index":0,"delta":{"content":"x"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"ind\u0065x":1,"delta":{"content":"x"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"cont\u0065nt":"x"}}]}"#,
        r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"x","content":"y"}}]}"#,
        r#"{"id":"c1","model":"m","model":"n","choices":[]}"#,
        r#"{"i":"c1","ids":"c2","modelx":"m","choices":[{"indexx":1,"delt":{},"delta":{"conten":"a","contents":"b","content":"x"}}]}"#,
        r#"{"id":"c1","a_key_longer_than_three_words_of_eight":"v","choices":[{"index":0,"delta":{"content":"x"}}]}"#,
        "{\"id\":\"c1\",\"caf\\u00e9\":1,\"caf\u{e9}\u{1F600}\":2,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}",
        "{ \"id\" : \"c1\" ,\n\"choices\"\t:\r\n[ { \"index\" :0 , \"delta\": {\"content\" : \"x\" } } ] , \"usage\" : { \"prompt_tokens\" : 1 } }",
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}}"#,
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens\u0000":1}}"#,
        "{\"id\":\"c1\",\"ta\tb\":1,\"choices\":[]}",
        r#"{"id":"c1","a\qb":1,"choices":[]}"#,
    ];
    for chunk in chunks {
        let ev = SseEvent {
            event: None,
            data: chunk.to_string().into(),
            raw: bytes::Bytes::new(),
        };
        let fast = StreamDecoder::new().push(&ev).map_err(|e| e.to_string());
        let general = StreamDecoder::new()
            .push_value(&ev, chunk.trim())
            .map_err(|e| e.to_string());
        assert_eq!(fast, general, "chunk {chunk}");
    }
}

proptest! {
    #[test]
    fn fast_stream_path_matches_for_any_text(
        text in ".{0,40}",
        id in "[a-z0-9-]{0,12}",
        index in 0u64..3,
        finish in proptest::option::of("(stop|length|content_filter|tool_calls|weird)"),
    ) {
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}],
        })
        .to_string();
        let ev = SseEvent { event: None, data: chunk.clone().into(), raw: bytes::Bytes::new() };
        let fast = StreamDecoder::new().push(&ev).map_err(|e| e.to_string());
        let general = StreamDecoder::new().push_value(&ev, &chunk).map_err(|e| e.to_string());
        prop_assert_eq!(fast, general);
    }
}

/// Chunks one edit away from valid ones (a byte dropped, doubled or replaced by a
/// character that matters to JSON): whatever the fast walker makes of them, the result
/// is the general decoder's — it never accepts what serde refuses, nor reads a field
/// differently.
const MUTATION_BASES: [&str; 6] = [
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\" \n"},"logprobs":{"content":[{"token":"a","logprob":-0.5e-3,"bytes":[97]}]},"finish_reason":"stop"}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0},"prompt_cache_hit_tokens":1}}"#,
    r#"{"id":"c1","choices":[{"index":1,"delta":{"reasoning":"r"}},{"delta":{"reasoning_content":"t","content":"x","tool_calls":null},"finish_reason":"length"}],"extra":[true,false,null,{"a":[]}]}"#,
    r#" {"id":"c1","choices":[{"index":0,"delta":{"content":"\ud83d\ude00 ok"}}]} "#,
    r#"{"id":"c1","model":"m","service_tier":"default","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":27,"completion_tokens":5,"total_tokens":32,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":[1,{"a":null}]}},"obfuscation":"x"}"#,
];

proptest! {
    #[test]
    fn fast_stream_path_matches_on_corrupted_chunks(
        base in 0..MUTATION_BASES.len(),
        at in any::<proptest::sample::Index>(),
        edit in 0u8..3,
        with in proptest::sample::select(crate::wire::EDIT_CHARS.to_vec()),
    ) {
        let chunk = crate::wire::one_edit(MUTATION_BASES[base], at, edit, with);
        let ev = SseEvent { event: None, data: chunk.clone().into(), raw: bytes::Bytes::new() };
        let fast = StreamDecoder::new().push(&ev).map_err(|e| e.to_string());
        let general = StreamDecoder::new().push_value(&ev, chunk.trim()).map_err(|e| e.to_string());
        prop_assert_eq!(fast, general, "chunk {}", chunk);
    }
}

#[test]
fn fast_stream_path_takes_the_mutation_bases() {
    // The corrupted-chunk test means something only if its bases take the fast path.
    for chunk in MUTATION_BASES {
        assert!(
            StreamDecoder::new().push_fast(chunk.trim()).is_some(),
            "{chunk}"
        );
    }
}

/// Strings with escapes (copied) and without (borrowed) both stay on the fast path.
#[test]
fn fast_stream_path_takes_escaped_and_plain_text() {
    for (chunk, text) in [
        (
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"plain"},"finish_reason":null}],"usage":null}"#,
            "plain",
        ),
        (
            r#"{"id":"c\u0031","model":"m","choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\"\n"},"finish_reason":"stop"}]}"#,
            "café \"q\"\n",
        ),
    ] {
        let events = StreamDecoder::new().push_fast(chunk).expect("fast path");
        assert!(events.contains(&StreamEvent::TextDelta { text: text.into() }));
    }
}

/// The bytes written directly are the bytes of the `Value` encoding, for every shape.
#[test]
fn encode_response_bytes_match_the_value_encoding() {
    let base = chat::Response {
        id: "chatcmpl-1".into(),
        model: "gpt-4o".into(),
        content: vec![text("Hel"), text("lo \"there\"\n\u{e9}")],
        finish_reason: Some(FinishReason::Stop),
        stop_sequence: None,
        usage: Usage {
            input_tokens: 12,
            output_tokens: 5,
            cache_read_tokens: Some(3),
            cache_write_tokens: Some(1),
        },
        created: 1_795_254_433,
    };
    let tools = chat::Response {
        content: vec![call("c1", "f", "{\"a\":1}"), call("c2", "g", "")],
        finish_reason: Some(FinishReason::ToolCalls),
        usage: Usage::default(),
        ..base.clone()
    };
    let mixed = chat::Response {
        content: vec![text("calling"), call("c1", "f", "{}")],
        finish_reason: None,
        ..base.clone()
    };
    let empty = chat::Response {
        id: String::new(),
        model: String::new(),
        content: vec![],
        finish_reason: Some(FinishReason::Length),
        created: 0,
        ..base.clone()
    };
    for r in [base, tools, mixed, empty] {
        assert_eq!(
            String::from_utf8(encode_response_bytes(&r)).unwrap(),
            serde_json::to_string(&encode_response(&r)).unwrap()
        );
    }
}

/// A realistic text chunk (OpenAI's shape, with its random `obfuscation` padding).
fn text_chunk(delta: &str, obfuscation: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","system_fingerprint":"fp_1","choices":[{{"index":0,"delta":{{{delta}}},"logprobs":null,"finish_reason":null}}],"usage":null,"obfuscation":"{obfuscation}"}}"#
    )
}

/// Text chunks like the one before are read by comparing bytes with it (the template);
/// chunk after chunk, the events are the general decoder's.
#[test]
fn repeated_text_chunks_take_the_template() {
    let chunks = [
        (text_chunk(r#""role":"assistant","content":"","refusal":null"#, "ab"), false),
        (text_chunk(r#""content":"Hello""#, "xyz1"), false),
        (text_chunk(r#""content":" w\u00f6rld\n""#, "q"), true),
        (text_chunk(r#""content":"""#, ""), true),
        (text_chunk(r#""content":"\"quoted\"""#, "Zz9"), true),
        (text_chunk(r#""content":null,"refusal":"no""#, "r"), false),
        (text_chunk(r#""content":"again""#, "ob"), true),
        (text_chunk(r#""content":"two","content":"keys""#, "ob"), false),
        (
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#.to_string(),
            false,
        ),
        (
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3}}"#.to_string(),
            false,
        ),
        (text_chunk(r#""content":"late""#, "x"), true),
        (text_chunk(r#""content":"bad \u12""#, "x"), false),
        (text_chunk(r#""content":"ctl \u0001""#, "x\ty"), false),
    ];
    let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
    for (chunk, by_template) in &chunks {
        assert_eq!(
            fast.repeat.text_of(chunk).is_some(),
            *by_template,
            "{chunk}"
        );
        let got = fast.push(&sse(chunk)).map_err(|e| e.to_string());
        let want = general
            .push_value(&sse(chunk), chunk)
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{chunk}");
    }
}

proptest! {
    /// Once a text chunk is the template, any chunk one edit away from the next text
    /// chunk decodes as the general decoder decodes it: the template never accepts
    /// what serde refuses, nor reads a changed field as the old one.
    #[test]
    fn template_matches_the_general_decoder_on_corrupted_chunks(
        text in "[a-z \\\\\"\u{e9}]{0,12}",
        at in any::<proptest::sample::Index>(),
        edit in 0u8..3,
        with in proptest::sample::select(crate::wire::EDIT_CHARS.to_vec()),
    ) {
        let first = text_chunk(r#""content":"first""#, "pad1");
        let next = text_chunk(&format!(r#""content":{}"#, serde_json::to_string(&text).unwrap()), "p");
        let chunk = crate::wire::one_edit(&next, at, edit, with);
        let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
        fast.push(&sse(&first)).unwrap();
        general.push_value(&sse(&first), &first).unwrap();
        prop_assert!(fast.repeat.text_of(&next).is_some());
        let got = fast.push(&sse(&chunk)).map_err(|e| e.to_string());
        let want = general.push_value(&sse(&chunk), chunk.trim()).map_err(|e| e.to_string());
        prop_assert_eq!(got, want, "chunk {}", chunk);
    }
}

#[test]
fn an_error_result_says_so_once_in_its_tool_message() {
    let err = |t: &str| Part::ToolResult {
        tool_call_id: "c1".into(),
        content: if t.is_empty() { vec![] } else { vec![text(t)] },
        is_error: true,
    };
    for (given, sent) in [
        ("boom", "Error: boom"),
        ("", "Error"),
        ("error: already said", "error: already said"),
        ("ERROR 42", "ERROR 42"),
    ] {
        let req = Request {
            messages: vec![user(vec![err(given)])],
            ..Request::default()
        };
        assert_eq!(
            encode_request(&req, "gpt-4o")["messages"][0]["content"],
            sent
        );
    }
    let req = Request {
        messages: vec![user(vec![result("c1", "boom")])],
        ..Request::default()
    };
    assert_eq!(
        encode_request(&req, "gpt-4o")["messages"][0]["content"],
        "boom"
    );
}

proptest! {
    /// The written answer is serde_json's serialization of `encode_response`, for any
    /// text (escapes, control characters, multi-byte UTF-8), split into parts anyhow,
    /// with or without tool calls.
    #[test]
    fn written_answers_are_the_values_bytes(
        texts in proptest::collection::vec("[\\x00-\\x7f\u{e9}\u{20ac}\u{1d11e}\"\\\\]{0,12}", 0..4),
        calls in proptest::collection::vec(("[a-z\"\\n]{0,4}", "[a-z\\x01]{0,4}", "[{}\"a:\\\\]{0,6}"), 0..3),
        id in "[a-z\\-\"\u{e9}]{0,8}",
        model in "[a-z/\\\\\u{e9}]{0,8}",
        tokens in (any::<u32>(), any::<u32>(), proptest::option::of(any::<u32>())),
        created in any::<u64>(),
        finish in 0usize..6,
        calls_first in any::<bool>(),
    ) {
        let mut content: Vec<Part> = texts.into_iter().map(|text| Part::Text { text }).collect();
        let tool_calls = calls.into_iter().map(|(id, name, arguments)| Part::ToolCall { id, name, arguments });
        if calls_first {
            let rest = std::mem::take(&mut content);
            content.extend(tool_calls);
            content.extend(rest);
        } else {
            content.extend(tool_calls);
        }
        let finish_reason = [
            None,
            Some(FinishReason::Stop),
            Some(FinishReason::Length),
            Some(FinishReason::ToolCalls),
            Some(FinishReason::ContentFilter),
            Some(FinishReason::StopSequence),
        ][finish];
        let r = chat::Response {
            id,
            model,
            content,
            finish_reason,
            stop_sequence: None,
            usage: Usage {
                input_tokens: u64::from(tokens.0),
                output_tokens: u64::from(tokens.1),
                cache_read_tokens: tokens.2.map(u64::from),
                ..Usage::default()
            },
            created,
        };
        prop_assert_eq!(
            String::from_utf8(encode_response_bytes(&r)).unwrap(),
            serde_json::to_string(&encode_response(&r)).unwrap()
        );
    }
}

/// The general reading of an event: its data decoded (invalid UTF-8 replaced) and
/// trimmed, then walked through a `Value` (what `push` gives when no shortcut applies).
/// `chunk` read by `fast` (`push`: templates, the cursor) as `general`
/// ([`push_general`]) reads it.
fn reads_alike(
    fast: &mut StreamDecoder,
    general: &mut StreamDecoder,
    chunk: Vec<u8>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let lossy = String::from_utf8_lossy(&chunk).into_owned();
    let ev = SseEvent {
        event: None,
        data: chunk.into(),
        raw: bytes::Bytes::new(),
    };
    let got = fast.push(&ev).map_err(|e| e.to_string());
    let want = push_general(general, &ev);
    proptest::prop_assert_eq!(got, want, "chunk {:?}", lossy);
    Ok(())
}

fn push_general(dec: &mut StreamDecoder, ev: &SseEvent) -> Result<Vec<StreamEvent>, String> {
    let text = ev.data_text();
    let data = text.trim();
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data == "[DONE]" {
        return Ok(vec![StreamEvent::Done]);
    }
    dec.push_value(ev, data).map_err(|e| e.to_string())
}

proptest! {
    /// Text chunks matched against the template on their bytes (before any UTF-8
    /// check) decode exactly as the general reading decodes them, whatever bytes are
    /// put in, dropped or replaced, inside the text or the padding or elsewhere, and
    /// whatever surrounds the chunk.
    #[test]
    fn template_on_bytes_matches_the_general_reading(
        texts in proptest::collection::vec("[a-z \\\\\"\u{e9}\u{1F600}]{0,8}", 1..4),
        pads in proptest::collection::vec("[a-zA-Z0-9]{0,16}", 1..4),
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), 0u8..3, 0..BYTE_EDITS.len()), 0..3),
        around in (0..BYTE_EDITS.len(), 0..BYTE_EDITS.len(), any::<bool>()),
    ) {
        let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
        let first = text_chunk(r#""content":"first""#, "pad1");
        fast.push(&sse(&first)).unwrap();
        push_general(&mut general, &sse(&first)).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let delta = format!(r#""content":{}"#, serde_json::to_string(text).unwrap());
            let mut chunk = text_chunk(&delta, &pads[i % pads.len()]).into_bytes();
            if i + 1 == texts.len() {
                crate::wire::scan::edit_bytes(&mut chunk, &BYTE_EDITS, &edits, around);
            }
            reads_alike(&mut fast, &mut general, chunk)?;
        }
    }
}

/// `Template::text_line`, its text appended to `out` (`TextRun`): what absorbing a
/// line's chunk appends.
fn line_text(t: &crate::wire::scan::Template, line: &[u8], out: &mut String) -> Option<usize> {
    let (n, at) = t.text_line(line)?;
    let mut run = crate::wire::scan::TextRun::new(out);
    run.push(line, at);
    run.finish();
    Some(n)
}

proptest! {
    /// A text chunk matched on a stream's bytes before its line's end is found
    /// (`Template::text_line`, the assembled answer's absorbing of ready text
    /// chunks) reads as the chunk's event does: where it stops at a line end, the
    /// line's value up to there is a chunk `append_text` takes, with the same text.
    /// And a plain chunk (nothing around it, one line) is never missed.
    #[test]
    fn template_on_lines_reads_as_on_events(
        texts in proptest::collection::vec("[a-z \\\\\"\u{e9}\u{1F600}]{0,8}", 1..4),
        pads in proptest::collection::vec("[a-zA-Z0-9]{0,16}", 1..4),
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), 0u8..3, 0..BYTE_EDITS.len()), 0..3),
        around in (0..BYTE_EDITS.len(), 0..BYTE_EDITS.len(), any::<bool>()),
        after in proptest::sample::select(vec!["\n\n", "\r\n\r\n", "\r", "", " \n\n", "data: x"]),
    ) {
        let mut dec = StreamDecoder::new();
        dec.push(&sse(&text_chunk(r#""content":"first""#, "pad1"))).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let delta = format!(r#""content":{}"#, serde_json::to_string(text).unwrap());
            let mut chunk = text_chunk(&delta, &pads[i % pads.len()]).into_bytes();
            if i + 1 == texts.len() {
                crate::wire::scan::edit_bytes(&mut chunk, &BYTE_EDITS, &edits, around);
            }
            let mut line = chunk.clone();
            line.extend_from_slice(after.as_bytes());
            let mut got = String::from("so far ");
            match line_text(&dec.repeat, &line, &mut got) {
                Some(n) => {
                    prop_assert!(!line[..n].iter().any(|&b| b == b'\n' || b == b'\r'));
                    if matches!(line.get(n), Some(b'\n' | b'\r')) {
                        let mut want = String::from("so far ");
                        prop_assert!(dec.repeat.append_text(&line[..n], &mut want));
                        prop_assert_eq!(&got, &want);
                    }
                }
                None => prop_assert_eq!(got.as_str(), "so far "),
            }
            let plain = chunk.trim_ascii().len() == chunk.len()
                && !chunk.iter().any(|&b| b == b'\n' || b == b'\r');
            let mut want = String::new();
            if plain && dec.repeat.append_text(&chunk, &mut want) {
                let mut got = String::new();
                prop_assert_eq!(line_text(&dec.repeat, &line, &mut got), Some(chunk.len()));
                prop_assert_eq!(got, want);
            }
        }
    }
}

/// A text chunk matched on a stream's bytes: its length when the bytes start with a
/// whole chunk like the template's, nothing when the chunk is cut, changed at its end,
/// or holds a line end, or when the template came from several lines.
#[test]
fn template_on_lines_needs_the_whole_chunk() {
    let mut dec = StreamDecoder::new();
    dec.push(&sse(&text_chunk(r#""content":"first""#, "pad1")))
        .unwrap();
    let chunk = text_chunk(r#""content":"caf\u00e9 ok""#, "xyz");
    let line = |tail: &str| format!("{chunk}{tail}").into_bytes();
    let read = |bytes: &[u8]| {
        let mut text = String::new();
        line_text(&dec.repeat, bytes, &mut text).map(|n| (n, text))
    };
    let whole = Some((chunk.len(), "caf\u{e9} ok".to_string()));
    assert_eq!(read(&line("\n\ndata: [DONE]\n\n")), whole);
    // What follows is not looked at: the reader checks the line ends there.
    assert_eq!(read(&line("}\n\n")), whole);
    assert_eq!(read(&line("")), whole);
    // Cut short, or its last byte changed.
    assert_eq!(read(&chunk.as_bytes()[..chunk.len() - 1]), None);
    let mut changed = chunk.clone().into_bytes();
    *changed.last_mut().unwrap() = b']';
    assert_eq!(read(&changed), None);
    // A line end (or any control byte) inside a string.
    for pad in ["x\ny", "x\ry"] {
        let chunk = text_chunk(r#""content":"a""#, pad);
        assert_eq!(read(chunk.as_bytes()), None, "{pad:?}");
    }
    let broken = text_chunk("\"content\":\"a\nb\"", "p");
    assert_eq!(read(broken.as_bytes()), None);
    let mut text = String::from("kept");
    assert_eq!(line_text(&dec.repeat, broken.as_bytes(), &mut text), None);
    assert_eq!(text, "kept");
    // A template from a chunk of several lines (data lines joined with LF) does not
    // match lines.
    let mut multi = StreamDecoder::new();
    let two_lines = text_chunk(r#""content":"first""#, "pad1").replacen(',', ",\n", 1);
    multi.push(&sse(&two_lines)).unwrap();
    let mut text = String::new();
    assert!(multi.repeat.append_text(two_lines.as_bytes(), &mut text));
    assert_eq!(
        line_text(&multi.repeat, two_lines.as_bytes(), &mut text),
        None
    );
}

/// Unchanged text chunks are read by the byte-level template, and ASCII whitespace
/// around one does not keep it from matching.
#[test]
fn template_on_bytes_takes_plain_chunks() {
    let mut dec = StreamDecoder::new();
    let first = text_chunk(r#""content":"first""#, "pad1");
    dec.push(&sse(&first)).unwrap();
    for chunk in [
        text_chunk(r#""content":"caf\u00e9""#, "abc"),
        format!(" \t{}\r\n", text_chunk(r#""content":"é😀""#, "")),
    ] {
        let text = dec
            .repeat
            .text_hole(chunk.as_bytes().trim_ascii())
            .and_then(crate::wire::scan::TextHole::into_string);
        assert!(text.is_some(), "{chunk}");
    }
    let bad = text_chunk("\"content\":\"a\u{fffd}\"", "x").replace('\u{fffd}', "\u{e9}");
    let mut bytes = bad.into_bytes();
    let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
    bytes[at + 1] = b'z'; // a cut sequence inside the text
    assert!(
        dec.repeat
            .text_hole(&bytes)
            .is_some_and(|t| t.into_string().is_none())
    );
}

/// The fields a stream's chunks start with, for the resumed-walk tests: OpenAI's, with
/// escapes and multi-byte UTF-8, with `usage` and an unknown string before `choices`,
/// an error, whitespace, and none.
const HEADS: [&str; 6] = [
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","system_fingerprint":"fp_1","#,
    r#"{"id":"c\u0031","model":null,"usage":{"prompt_tokens":1},"sys":"a\"b","#,
    "{ \"id\" : \"\u{e9}\u{1F600}\" ,\n\"x_groq\":null,\"n\":-1.5e3, ",
    r#"{"id":"c1","object":"error","#,
    r#"{"id":"c1","extra":{"k":[true,null]},"model":"m","#,
    "{",
];

/// What follows the common fields: the chunks of a stream (role, text, finish, usage),
/// tool calls, errors, fields after `choices` (reordered, duplicated, unknown), a
/// second `choices`, whitespace.
const TAILS: [&str; 11] = [
    r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"ab"}"#,
    r#""choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\""},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x"}"#,
    r#""choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    r#""choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0}}}"#,
    r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":"{}"}}]}}]}"#,
    r#""choices":null,"error":{"message":"overloaded","type":"server_error"}}"#,
    r#""choices":[{"index":1,"delta":{"content":"x"}}],"extra":{"a":[1,2.5]},"id":"dup"}"#,
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\u{1F600} ok\"}}],\"model\":\"other\"}",
    r#""choices":[{"index":0,"delta":{"content":"x"}}],"choices":[]}"#,
    "\"choices\" : [ ] , \"usage\" : null }",
    r#""choices":[{"index":0,"delta":{"reasoning":"r","content":null}}],"obfuscation":"abc"}"#,
];

proptest! {
    /// Chunks that start with the fields of one walked before are walked from its
    /// `choices` member on (the state there restored): chunk after chunk, whatever
    /// follows those fields and whatever bytes are put in, dropped or replaced
    /// anywhere (in the common fields too), the events are the general reading's.
    #[test]
    fn resumed_walks_match_the_general_reading(
        head in 0..HEADS.len(),
        tails in proptest::collection::vec(0..TAILS.len(), 1..6),
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), 0u8..3, 0..BYTE_EDITS.len()), 0..3),
        edited in any::<proptest::sample::Index>(),
        around in (0..BYTE_EDITS.len(), 0..BYTE_EDITS.len(), any::<bool>()),
    ) {
        let (mut fast, mut general) = (StreamDecoder::new(), StreamDecoder::new());
        let edited = edited.index(tails.len());
        for (i, &tail) in tails.iter().enumerate() {
            let mut chunk = format!("{}{}", HEADS[head], TAILS[tail]).into_bytes();
            if i == edited {
                crate::wire::scan::edit_bytes(&mut chunk, &BYTE_EDITS, &edits, around);
            }
            reads_alike(&mut fast, &mut general, chunk)?;
        }
    }
}

/// The chunks after the first are walked from `choices` on: the common fields are
/// kept from the first walk, and read as that walk read them.
#[test]
fn chunks_like_the_first_resume_after_its_common_fields() {
    for head in HEADS {
        let mut dec = StreamDecoder::new();
        let first = format!(r#"{head}"choices":[{{"index":0,"delta":{{"content":""}}}}]}}"#);
        let walked = dec.push_fast(&first);
        if head.contains("error") {
            assert!(walked.is_none() && dec.resume.is_none());
            continue;
        }
        assert!(walked.is_some(), "{first}");
        assert_eq!(dec.prefix, head.trim_end(), "{head}");
        for tail in TAILS {
            let chunk = format!("{head}{tail}");
            let resumed = dec.push_fast(&chunk);
            let mut fresh = StreamDecoder::new();
            fresh.started = true;
            assert_eq!(resumed, fresh.push_fast(&chunk), "{chunk}");
            // (A second `usage` is refused either way.)
            if !head.contains("usage") && tail.starts_with(r#""choices":[{"index":0,"delta":{}"#) {
                assert!(resumed.is_some(), "{chunk}");
            }
        }
    }
}
