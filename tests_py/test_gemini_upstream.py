"""The official openai and anthropic SDKs served by a Gemini upstream (the fake's Gemini route)."""

import json

from conftest import CLIENT_KEY, UPSTREAM_GEMINI_KEY


def header(fake_request, name):
    for k, v in fake_request["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def assert_gemini_request(req):
    # The engine streams from every upstream: Gemini's SSE method, key in x-goog-api-key.
    assert req["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert req["query"] == "alt=sse"
    assert header(req, "x-goog-api-key") == UPSTREAM_GEMINI_KEY
    assert header(req, "authorization") is None
    assert "model" not in req["body"] and "stream" not in req["body"]
    assert CLIENT_KEY not in json.dumps(req)


def test_openai_sdk_with_tools(openai_client, fake):
    fake.script(
        {
            "type": "reply",
            "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}],
            "usage": {"input_tokens": 30, "output_tokens": 7},
        }
    )
    raw = openai_client.chat.completions.with_raw_response.create(
        model="solo-gemini",
        messages=[
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                },
            }
        ],
    )
    resp = raw.parse()
    assert raw.headers["x-backstop-model"] == "gm/gemini-2.5-flash"
    assert resp.model == "gemini-2.5-flash"
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.usage.prompt_tokens == 30 and resp.usage.completion_tokens == 7
    (req,) = fake.requests()
    assert_gemini_request(req)
    body = req["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "Use tools."}]}
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather"
    assert "additionalProperties" not in json.dumps(decl)


def test_anthropic_sdk_streaming(anthropic_client, fake):
    fake.script({"type": "reply", "text": "one two three four", "chunks": 4})
    with anthropic_client.messages.stream(
        model="solo-gemini",
        max_tokens=64,
        messages=[{"role": "user", "content": "count"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four"
    assert final.model == "gemini-2.5-flash"
    assert final.stop_reason == "end_turn"
    (req,) = fake.requests()
    assert_gemini_request(req)
    assert req["body"]["contents"] == [{"role": "user", "parts": [{"text": "count"}]}]
    assert req["body"]["generationConfig"]["maxOutputTokens"] == 64
