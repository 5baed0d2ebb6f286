#![allow(clippy::unwrap_used)]

use super::*;
use crate::chat::{Request, SystemBlock, Tool};
use bytes::Bytes;

fn text(t: &str) -> Part {
    Part::Text { text: t.into() }
}

fn msg(role: Role, content: Vec<Part>) -> Message {
    Message {
        role,
        content,
        name: None,
    }
}

fn sse(data: &str) -> SseEvent {
    SseEvent {
        event: None,
        data: data.to_string().into(),
        raw: Bytes::from(format!("data: {data}\r\n\r\n")),
    }
}

fn decode_all(chunks: &[&str]) -> Vec<StreamEvent> {
    let mut dec = StreamDecoder::new();
    chunks
        .iter()
        .flat_map(|c| dec.push(&sse(c)).unwrap())
        .collect()
}

// ---- encode_request -------------------------------------------------

#[test]
fn encodes_system_multi_turn_and_generation_config() {
    let req = Request {
        model: "gm/gemini-2.5-flash".into(),
        system: vec![
            SystemBlock {
                text: "You are terse.".into(),
            },
            SystemBlock { text: "".into() },
            SystemBlock {
                text: "Answer in English.".into(),
            },
        ],
        messages: vec![
            Message::text(Role::User, "Hello"),
            Message::text(Role::Assistant, "Hi."),
            Message::text(Role::User, "How are you?"),
            Message::text(Role::User, "Be honest."),
        ],
        max_tokens: Some(256),
        temperature: Some(0.5),
        top_p: Some(0.9),
        top_k: Some(40),
        stop: vec!["END".into()],
        stream: true,
        user: Some("u-1".into()),
        ..Request::default()
    };
    let body = encode_request(&req, "gemini-2.5-flash");
    assert_eq!(
        body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}]},
                {"role": "model", "parts": [{"text": "Hi."}]},
                {"role": "user", "parts": [{"text": "How are you?"}, {"text": "Be honest."}]},
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Answer in English."}]},
            "generationConfig": {
                "maxOutputTokens": 256,
                "temperature": 0.5,
                "topP": 0.9,
                "topK": 40,
                "stopSequences": ["END"],
            },
        })
    );
    // No model, stream or user fields: the model and the stream are in the URL.
    for key in ["model", "stream", "user", "metadata"] {
        assert!(body.get(key).is_none(), "{key}");
    }
}

/// Gemini takes at most 5 stop sequences (more is a 400): the first 5 are sent.
#[test]
fn stop_sequences_are_cut_to_five() {
    let stop: Vec<String> = (1..=7).map(|i| format!("STOP{i}")).collect();
    let req = Request {
        messages: vec![Message::text(Role::User, "Count")],
        stop: stop.clone(),
        ..Request::default()
    };
    let body = encode_request(&req, "gemini-2.5-flash");
    assert_eq!(body["generationConfig"]["stopSequences"], json!(stop[..5]));
    let req = Request {
        stop: stop[..3].to_vec(),
        ..req
    };
    let body = encode_request(&req, "gemini-2.5-flash");
    assert_eq!(body["generationConfig"]["stopSequences"], json!(stop[..3]));
}

/// Gemini answers empty `contents` with a 400: a system prompt alone becomes the user turn.
#[test]
fn a_system_prompt_alone_is_sent_as_the_user_turn() {
    let req = Request {
        system: vec![
            SystemBlock {
                text: "Write a haiku about foxes.".into(),
            },
            SystemBlock {
                text: "Use English.".into(),
            },
        ],
        ..Request::default()
    };
    let body = encode_request(&req, "gemini-2.5-flash");
    assert_eq!(
        body["contents"],
        json!([{"role": "user", "parts": [
            {"text": "Write a haiku about foxes."}, {"text": "Use English."}]}])
    );
    assert!(body.get("systemInstruction").is_none(), "{body}");
    // With a conversation, the system prompt stays the system instruction.
    let req = Request {
        messages: vec![Message::text(Role::User, "Hi")],
        ..req
    };
    let body = encode_request(&req, "gemini-2.5-flash");
    assert_eq!(body["contents"][0]["parts"], json!([{"text": "Hi"}]));
    assert_eq!(
        body["systemInstruction"]["parts"][1]["text"],
        "Use English."
    );
}

#[test]
fn encodes_images_inline_and_by_uri() {
    let req = Request {
        messages: vec![msg(
            Role::User,
            vec![
                text("What is in these?"),
                Part::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    },
                },
                Part::Image {
                    source: ImageSource::Url {
                        url: "data:image/webp;base64,UklGRg==".into(),
                    },
                },
                Part::Image {
                    source: ImageSource::Url {
                        url: "https://example.com/cat.GIF?size=large".into(),
                    },
                },
            ],
        )],
        ..Request::default()
    };
    let body = encode_request(&req, "m");
    assert_eq!(
        body["contents"][0]["parts"],
        json!([
            {"text": "What is in these?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
            {"fileData": {"mimeType": "image/gif", "fileUri": "https://example.com/cat.GIF?size=large"}},
        ])
    );
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Weather for a city".into()),
        parameters: json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f", null]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "maxItems": 3},
            },
            "required": ["city", "ghost"],
            "additionalProperties": false,
            "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}},
                              "additionalProperties": false}},
        }),
    }
}

#[test]
fn encodes_tools_with_gemini_schemas_and_tool_choice() {
    let req = Request {
        messages: vec![Message::text(Role::User, "Weather in Paris?")],
        tools: vec![
            weather_tool(),
            Tool {
                name: "now".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {}}),
            },
            Tool {
                name: "ping".into(),
                description: None,
                parameters: json!({}),
            },
        ],
        tool_choice: Some(ToolChoice::Tool {
            name: "get_weather".into(),
        }),
        parallel_tool_calls: Some(false),
        ..Request::default()
    };
    let body = encode_request(&req, "m");
    assert_eq!(
        body["tools"],
        json!([{"functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "city": {"type": "STRING", "description": "City name"},
                        "unit": {"type": "STRING", "nullable": true, "enum": ["c", "f"], "format": "enum"},
                        "days": {"type": "INTEGER", "minimum": 1, "maximum": 7},
                        "tags": {"type": "ARRAY", "items": {"type": "OBJECT",
                                 "properties": {"name": {"type": "STRING"}}}, "maxItems": "3"},
                    },
                    "required": ["city"],
                },
            },
            {"name": "now"},
            {"name": "ping"},
        ]}])
    );
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    for (choice, mode) in [
        (ToolChoice::Auto, "AUTO"),
        (ToolChoice::None, "NONE"),
        (ToolChoice::Required, "ANY"),
    ] {
        let req = Request {
            tool_choice: Some(choice),
            ..req.clone()
        };
        let body = encode_request(&req, "m");
        assert_eq!(
            body["toolConfig"]["functionCallingConfig"],
            json!({"mode": mode})
        );
    }
    // A tool_choice without tools means nothing.
    let req = Request {
        tools: vec![],
        ..req
    };
    assert!(encode_request(&req, "m").get("toolConfig").is_none());
}

#[test]
fn schema_conversion_handles_unions_consts_and_recursion() {
    let s = json!({
        "type": "object",
        "title": "Args",
        "properties": {
            "mode": {"const": "fast"},
            "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "maybe": {"anyOf": [{"$ref": "#/definitions/Node"}, {"type": "null"}],
                      "description": "optional node"},
            "multi": {"type": ["string", "integer"]},
            "when": {"type": "string", "format": "date-time"},
            "uri": {"type": "string", "format": "uri", "examples": ["x"]},
        },
        "definitions": {"Node": {"type": "object", "properties": {
            "child": {"$ref": "#/definitions/Node"}}}},
    });
    let g = gemini_schema(&s);
    let p = &g["properties"];
    assert_eq!(g["title"], "Args");
    assert_eq!(
        p["mode"],
        json!({"enum": ["fast"], "type": "STRING", "format": "enum"})
    );
    assert_eq!(
        p["either"],
        json!({"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]})
    );
    assert_eq!(p["maybe"]["nullable"], true);
    assert_eq!(p["maybe"]["type"], "OBJECT");
    assert_eq!(p["maybe"]["description"], "optional node");
    assert_eq!(
        p["multi"],
        json!({"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]})
    );
    assert_eq!(p["when"], json!({"type": "STRING", "format": "date-time"}));
    assert_eq!(p["uri"], json!({"type": "STRING"}));
    // The recursive definition is cut off rather than expanded forever.
    let text = g.to_string();
    assert!(
        !text.contains("$ref") && !text.contains("definitions"),
        "{text}"
    );
}

/// Gemini answers 400 "type: must be specified when not using one_of, any_of or
/// all_of fields" for an untyped schema: free-form properties (common in MCP tool
/// schemas) get a type, implied by the shape where JSON Schema leaves it out.
#[test]
fn schema_conversion_gives_every_node_a_type() {
    let s = json!({
        "properties": {
            "anything": {"description": "any JSON value"},
            "blank": {},
            "list": {"items": {}},
            "nested": {"properties": {"k": {"type": "integer"}}},
            "loose": true,
            "either": {"anyOf": [{}, {"type": "integer"}]},
        },
        "required": ["anything"],
    });
    assert_eq!(
        gemini_schema(&s),
        json!({
            "type": "OBJECT",
            "properties": {
                "anything": {"type": "STRING", "description": "any JSON value"},
                "blank": {"type": "STRING"},
                "list": {"type": "ARRAY", "items": {"type": "STRING"}},
                "nested": {"type": "OBJECT", "properties": {"k": {"type": "INTEGER"}}},
                "loose": {"type": "STRING"},
                "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
            },
            "required": ["anything"],
        })
    );
    // A tool whose schema has properties but no `type` still declares an OBJECT;
    // one with no properties at all still has no `parameters`.
    let tool = |parameters: Value| Tool {
        name: "t".into(),
        description: None,
        parameters,
    };
    let req = Request {
        messages: vec![msg(Role::User, vec![text("hi")])],
        tools: vec![
            tool(json!({"properties": {"q": {"type": "string"}}})),
            tool(json!({})),
            tool(json!({"type": "object", "properties": {}})),
        ],
        ..Request::default()
    };
    let decls = &encode_request(&req, "m")["tools"][0]["functionDeclarations"];
    assert_eq!(decls[0]["parameters"]["type"], "OBJECT");
    assert!(decls[1].get("parameters").is_none(), "{decls}");
    assert!(decls[2].get("parameters").is_none(), "{decls}");
}

#[test]
fn encodes_tool_calls_and_results_with_names() {
    let req = Request {
        messages: vec![
            Message::text(Role::User, "Weather in Paris and Rome?"),
            msg(
                Role::Assistant,
                vec![
                    text("Let me check."),
                    Part::ToolCall {
                        id: "call_a".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    },
                    Part::ToolCall {
                        id: "call_b".into(),
                        name: "get_time".into(),
                        arguments: "".into(),
                    },
                    Part::Thinking {
                        text: "hmm".into(),
                        signature: Some("sig".into()),
                    },
                ],
            ),
            msg(
                Role::User,
                vec![
                    Part::ToolResult {
                        tool_call_id: "call_a".into(),
                        content: vec![text(r#"{"temp": 21}"#)],
                        is_error: false,
                    },
                    Part::ToolResult {
                        tool_call_id: "call_b".into(),
                        content: vec![
                            text("clock broken"),
                            Part::Image {
                                source: ImageSource::Base64 {
                                    media_type: "image/jpeg".into(),
                                    data: "/9j/".into(),
                                },
                            },
                        ],
                        is_error: true,
                    },
                ],
            ),
            Message::text(Role::User, "Thanks"),
        ],
        ..Request::default()
    };
    let body = encode_request(&req, "m");
    assert_eq!(
        body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {"role": "model", "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": THOUGHT_SIGNATURE_PLACEHOLDER},
                {"functionCall": {"name": "get_time", "args": {}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": {"temp": 21}}}},
                {"functionResponse": {"name": "get_time", "response": {"error": "clock broken"}}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
                {"text": "Thanks"},
            ]},
        ])
    );
}

#[test]
fn odd_tool_arguments_are_kept() {
    assert_eq!(tool_args("  "), json!({}));
    assert_eq!(tool_args("null"), json!({}));
    assert_eq!(tool_args(r#"{"a":1}"#), json!({"a": 1}));
    assert_eq!(tool_args(r#"{"a":"#), json!({"_raw": r#"{"a":"#}));
    assert_eq!(tool_args("[1]"), json!({"_raw": "[1]"}));
}

#[test]
fn encodes_json_mode_and_schema() {
    let mut req = Request {
        messages: vec![Message::text(Role::User, "List two colours")],
        response_format: Some(ResponseFormat::JsonObject),
        ..Request::default()
    };
    let body = encode_request(&req, "m");
    assert_eq!(
        body["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    req.response_format = Some(ResponseFormat::JsonSchema {
        json_schema: json!({"name": "colours", "strict": true, "schema": {
            "type": "object",
            "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
            "required": ["colours"],
            "additionalProperties": false,
        }}),
    });
    let body = encode_request(&req, "m");
    assert_eq!(
        body["generationConfig"],
        json!({
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {"colours": {"type": "ARRAY", "items": {"type": "STRING"}}},
                "required": ["colours"],
            },
        })
    );
    req.response_format = Some(ResponseFormat::Text);
    assert!(encode_request(&req, "m").get("generationConfig").is_none());
}

#[test]
fn reasoning_becomes_thinking_config() {
    let mut req = Request {
        messages: vec![Message::text(Role::User, "Think")],
        reasoning: Some(json!({"type": "enabled", "budget_tokens": 2048})),
        ..Request::default()
    };
    let body = encode_request(&req, "m");
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 2048, "includeThoughts": true})
    );
    req.reasoning = Some(json!({"effort": "high"}));
    let body = encode_request(&req, "m");
    assert_eq!(
        body["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        24576
    );
    req.reasoning = Some(json!({"type": "disabled"}));
    assert!(encode_request(&req, "m").get("generationConfig").is_none());
}

// ---- decode_response ------------------------------------------------

#[test]
fn decodes_text_response_with_usage() {
    let body = json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": "Hello"}, {"text": " there"}]},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [],
        }],
        "usageMetadata": {
            "promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 25,
            "cachedContentTokenCount": 8, "thoughtsTokenCount": 10,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mBd3aKzxN5yNz7IP0NG-oQ8",
    });
    let r = decode_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.id, "mBd3aKzxN5yNz7IP0NG-oQ8");
    assert_eq!(r.model, "gemini-2.5-flash");
    assert_eq!(r.content, vec![text("Hello"), text(" there")]);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 13,
            cache_read_tokens: Some(8),
            cache_write_tokens: None,
        }
    );
}

#[test]
fn decodes_function_calls_and_thoughts() {
    let body = json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Planning the call", "thought": true},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "CiIBVKhc7o"},
                {"functionCall": {"name": "get_time"}},
            ]},
            "finishReason": "STOP",
        }],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 20},
        "modelVersion": "gemini-2.5-pro",
    });
    let r = decode_response(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        r.content[0],
        Part::Thinking {
            text: "Planning the call".into(),
            signature: None
        }
    );
    let calls: Vec<(&str, &str, &str)> = r
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some((id.as_str(), name.as_str(), arguments.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].1, calls[0].2),
        ("get_weather", r#"{"city":"Paris"}"#)
    );
    assert_eq!((calls[1].1, calls[1].2), ("get_time", "{}"));
    assert!(
        calls
            .iter()
            .all(|c| c.0.starts_with("call_") && c.0.len() == 29)
    );
    assert_ne!(calls[0].0, calls[1].0, "ids are unique");
    assert!(!r.id.is_empty(), "an id is made up when Gemini gives none");
}

#[test]
fn decodes_finish_reasons() {
    for (reason, expected) in [
        ("MAX_TOKENS", FinishReason::Length),
        ("SAFETY", FinishReason::ContentFilter),
        ("RECITATION", FinishReason::ContentFilter),
        ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
        ("BLOCKLIST", FinishReason::ContentFilter),
        ("SPII", FinishReason::ContentFilter),
        ("OTHER", FinishReason::Other),
    ] {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                                          "finishReason": reason}]});
        let r = decode_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.finish_reason, Some(expected), "{reason}");
    }
    // A candidate stopped for safety may come with no content at all.
    let body = json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
        "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}]});
    let r = decode_response(body.to_string().as_bytes()).unwrap();
    assert!(r.content.is_empty());
    assert_eq!(r.finish_reason, Some(FinishReason::ContentFilter));
}

/// A broken or refused function call is no answer at all: an error, not an empty
/// `Stop`/`Other` an agent would take for a finished turn.
#[test]
fn unusable_finish_reasons_are_errors() {
    for reason in [
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MALFORMED_RESPONSE",
    ] {
        // Gemini sends such a candidate with no content at all.
        let body = json!({"candidates": [{"finishReason": reason, "index": 0}],
            "usageMetadata": {"promptTokenCount": 2595, "totalTokenCount": 2595}});
        let e = decode_response(body.to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains(reason), "{}", e.message);

        let mut dec = StreamDecoder::new();
        let first = dec.push(&sse(TEXT_STREAM[0])).unwrap();
        assert!(matches!(first[0], StreamEvent::Start { .. }));
        let events = dec
            .push(&sse(&json!({
                "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                                "finishReason": reason, "index": 0}],
                "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
            })
            .to_string()))
            .unwrap();
        let [StreamEvent::Error { error }] = events.as_slice() else {
            panic!("{reason}: {events:?}")
        };
        assert_eq!(error.code.as_deref(), Some(reason));
        let f = crate::failover::classify::classify_stream_error(error, false);
        assert_eq!(f.reason, crate::failover::Reason::ServerError, "{reason}");
        // Nothing after it is read.
        assert!(dec.push(&sse(TEXT_STREAM[1])).unwrap().is_empty());
    }
}

#[test]
fn decodes_a_blocked_prompt() {
    let body = json!({
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.0-flash",
    });
    let r = decode_response(body.to_string().as_bytes()).unwrap();
    assert!(r.content.is_empty());
    assert_eq!(r.finish_reason, Some(FinishReason::ContentFilter));
    assert_eq!(r.usage.input_tokens, 9);
}

#[test]
fn rejects_errors_and_garbage_as_responses() {
    let err = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
    let e = decode_response(err).unwrap_err();
    assert!(e.message.contains("API key not valid"), "{}", e.message);
    assert!(e.message.contains("INVALID_ARGUMENT"), "{}", e.message);
    assert!(decode_response(b"{not json").is_err());
    assert!(decode_response(b"[1]").is_err());
    assert_eq!(
        decode_response(b"{}").unwrap_err().path.as_deref(),
        Some("candidates")
    );
}

#[test]
fn decodes_error_bodies() {
    let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
    assert_eq!(
        decode_error(body),
        Some(UpstreamErrorBody {
            kind: Some("RESOURCE_EXHAUSTED".into()),
            code: Some("429".into()),
            message: "Resource has been exhausted (e.g. check quota).".into(),
            retry_after: None,
        })
    );
    // streamGenerateContent without alt=sse wraps it in an array.
    let wrapped = br#"[{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}]"#;
    assert_eq!(
        decode_error(wrapped).unwrap().kind.as_deref(),
        Some("UNAVAILABLE")
    );
    assert_eq!(decode_error(br#"{"candidates":[]}"#), None);
    assert_eq!(decode_error(b"<html>"), None);
}

// ---- streaming ------------------------------------------------------

/// A stream as `streamGenerateContent?alt=sse` sends it: usage on every chunk,
/// the last chunk carrying the finish reason and the final counts, no terminator.
const TEXT_STREAM: &[&str] = &[
    r#"{"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash","responseId": "resp-1"}"#,
    r#"{"candidates": [{"content": {"parts": [{"text": " sky is"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash","responseId": "resp-1"}"#,
    r#"{"candidates": [{"content": {"parts": [{"text": " blue."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 5,"totalTokenCount": 13,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.5-flash","responseId": "resp-1"}"#,
];

#[test]
fn stream_decoder_reads_a_text_stream() {
    let events = decode_all(TEXT_STREAM);
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "resp-1".into(),
                model: "gemini-2.5-flash".into(),
                input_tokens: None,
            },
            StreamEvent::TextDelta { text: "The".into() },
            StreamEvent::TextDelta {
                text: " sky is".into()
            },
            StreamEvent::TextDelta {
                text: " blue.".into()
            },
            StreamEvent::Usage {
                usage: Usage {
                    input_tokens: 8,
                    output_tokens: 5,
                    cache_read_tokens: None,
                    cache_write_tokens: None,
                }
            },
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            },
            StreamEvent::Done,
        ]
    );
    let r = crate::failover::stream::assemble(&events).unwrap();
    assert_eq!(r.content, vec![text("The sky is blue.")]);
}

#[test]
fn stream_decoder_reads_function_calls_whole() {
    let chunks = [
        r#"{"candidates": [{"content": {"parts": [{"text": "Checking."}],"role": "model"},"index": 0}],"modelVersion": "gemini-2.5-pro","responseId": "r2"}"#,
        r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"city": "Paris"}},"thoughtSignature": "CiQB"},{"functionCall": {"name": "get_time","args": {}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 40,"candidatesTokenCount": 12,"thoughtsTokenCount": 30},"modelVersion": "gemini-2.5-pro","responseId": "r2"}"#,
    ];
    let events = decode_all(&chunks);
    let r = crate::failover::stream::assemble(&events).unwrap();
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage.output_tokens, 42);
    assert_eq!(r.content[0], text("Checking."));
    let Part::ToolCall {
        id,
        name,
        arguments,
    } = &r.content[1]
    else {
        panic!("{:?}", r.content)
    };
    assert!(id.starts_with("call_"));
    assert_eq!(
        (name.as_str(), arguments.as_str()),
        ("get_weather", r#"{"city":"Paris"}"#)
    );
    let starts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStart { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [0, 1]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

#[test]
fn stream_decoder_reports_in_band_errors_and_malformed_chunks() {
    let mut dec = StreamDecoder::new();
    let first = dec.push(&sse(TEXT_STREAM[0])).unwrap();
    assert!(matches!(first[0], StreamEvent::Start { .. }));
    let events = dec
        .push(&sse(
            r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#,
        ))
        .unwrap();
    let [StreamEvent::Error { error }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(error.kind.as_deref(), Some("UNAVAILABLE"));
    assert_eq!(error.code.as_deref(), Some("503"));
    assert!(dec.push(&sse("{not json")).is_err());
    assert!(dec.push(&sse("")).unwrap().is_empty());
}

/// An in-band error's `RetryInfo` says when to come back, as in an error status body;
/// the message need not repeat it.
#[test]
fn stream_decoder_reads_retry_info_of_in_band_errors() {
    let mut dec = StreamDecoder::new();
    let events = dec
        .push(&sse(
            r#"{"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}"#,
        ))
        .unwrap();
    let [StreamEvent::Error { error }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(37)));
    let f = crate::failover::classify::classify_stream_error(error, false);
    assert_eq!(f.reason, crate::failover::Reason::RateLimit);
    assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(37)));
}

#[test]
fn stream_decoder_ends_a_blocked_prompt() {
    let events = decode_all(&[
        r#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 7,"totalTokenCount": 7},"modelVersion": "gemini-2.5-flash","responseId": "r3"}"#,
    ]);
    assert!(matches!(events[0], StreamEvent::Start { .. }));
    assert!(events.contains(&StreamEvent::Finish {
        reason: FinishReason::ContentFilter,
        stop_sequence: None
    }));
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert!(!events.iter().any(StreamEvent::is_content));
}

#[test]
fn stream_decoder_ignores_chunks_after_the_finish() {
    let mut chunks = TEXT_STREAM.to_vec();
    chunks.push(r#"{"candidates": [{"content": {"parts": [{"text": "late"}],"role": "model"},"index": 0}]}"#);
    let events = decode_all(&chunks);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert!(!events.contains(&StreamEvent::TextDelta {
        text: "late".into()
    }));
}
