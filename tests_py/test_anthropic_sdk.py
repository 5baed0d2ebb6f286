"""The official anthropic SDK against the gateway: same-format, cross-format, tools, streaming, errors."""

import anthropic
import pytest

from conftest import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def header(fake_request, name):
    for k, v in fake_request["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def test_plain_message_same_format(anthropic_client, fake):
    raw = anthropic_client.messages.with_raw_response.create(
        model="claude-first",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello anthropic"}],
    )
    msg = raw.parse()
    assert msg.content[0].text == "echo: hello anthropic"
    assert msg.stop_reason == "end_turn"
    assert msg.model == "claude-sonnet-4-5"
    assert msg.usage.input_tokens > 0
    assert raw.headers["x-backstop-model"] == "an/claude-sonnet-4-5"
    (req,) = fake.requests()
    assert req["path"] == "/v1/messages"
    assert header(req, "x-api-key") == UPSTREAM_ANTHROPIC_KEY


def test_streaming_same_format(anthropic_client, fake):
    fake.script({"type": "reply", "text": "alpha beta gamma", "chunks": 3})
    with anthropic_client.messages.stream(
        model="claude-first", max_tokens=64, messages=[{"role": "user", "content": "go"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "alpha beta gamma"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_tool_use_and_results(anthropic_client, fake):
    fake.script({"type": "reply", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Lima"}'}]})
    msg = anthropic_client.messages.create(
        model="claude-first",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Lima?"}],
    )
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Lima"}
    follow = anthropic_client.messages.create(
        model="claude-first",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather in Lima?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "fog"}]},
        ],
    )
    assert follow.content[0].type == "text"


def test_cross_format_anthropic_client_openai_upstream(anthropic_client, fake):
    raw = anthropic_client.messages.with_raw_response.create(
        model="solo-openai",
        max_tokens=50,
        system="Answer in French.",
        messages=[{"role": "user", "content": "bonjour"}],
    )
    msg = raw.parse()
    assert msg.content[0].text == "echo: bonjour"
    assert msg.stop_reason == "end_turn"
    assert msg.model == "gpt-4o-mini"
    assert raw.headers["x-backstop-model"] == "oa/gpt-4o-mini"
    # A translated answer carries an id in Anthropic's shape, not OpenAI's `chatcmpl-…`.
    assert msg.id.startswith("msg_") and "chatcmpl" not in msg.id
    (req,) = fake.requests()
    assert req["path"] == "/v1/chat/completions"
    assert header(req, "authorization") == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert req["body"]["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert req["body"]["max_tokens"] == 50


def test_cross_format_streaming_tools(anthropic_client, fake):
    fake.script(
        {
            "type": "reply",
            "text": "Checking.",
            "tool_calls": [
                {"name": "get_weather", "arguments": '{"city": "Quito"}'},
                {"name": "get_weather", "arguments": '{"city": "Cusco"}'},
            ],
        }
    )
    with anthropic_client.messages.stream(
        model="solo-openai",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.id.startswith("msg_") and "chatcmpl" not in final.id
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "text" and final.content[0].text == "Checking."
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.input["city"] for u in uses] == ["Quito", "Cusco"]
    assert final.model == "gpt-4o-mini"
    body = fake.requests()[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tools"][0]["function"]["name"] == "get_weather"


def test_fallback_across_formats(anthropic_client, fake):
    overloaded = {"type": "error", "status": 529, "kind": "overloaded_error"}
    fake.script(overloaded, overloaded, {"type": "reply", "text": "gpt here"})
    raw = anthropic_client.messages.with_raw_response.create(
        model="claude-first", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    )
    msg = raw.parse()
    assert msg.content[0].text == "gpt here"
    assert msg.model == "gpt-4o"
    assert raw.headers["x-backstop-fallback"] == "overloaded"


def test_bad_key_in_x_api_key(gateway, fake):
    client = anthropic.Anthropic(base_url=gateway, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        client.messages.create(model="default", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"


def test_unknown_model_is_404(anthropic_client):
    with pytest.raises(anthropic.NotFoundError) as e:
        anthropic_client.messages.create(model="claude-nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert "claude-first" in str(e.value)


def test_invalid_request_is_400(anthropic_client, fake):
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(model="default", max_tokens=8, messages=[{"role": "robot", "content": "x"}])
    assert "role" in str(e.value)
    assert fake.requests() == []


def test_rate_limited_everywhere_is_429(anthropic_client, fake):
    fake.script({"type": "error", "status": 429, "kind": "rate_limit_error"})
    with pytest.raises(anthropic.RateLimitError) as e:
        anthropic_client.messages.create(
            model="solo-anthropic", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "rate_limit_error"


def test_all_targets_down_is_503_overloaded(anthropic_client, fake):
    fake.default({"type": "error", "status": 500})
    with pytest.raises(anthropic.InternalServerError) as e:
        anthropic_client.messages.create(
            model="solo-anthropic", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 503
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "overloaded_error"
    assert "an/claude-haiku-4-5 (main): server_error [500]" in str(e.value)


def test_exhausted_context_overflow_lists_the_attempts(anthropic_client, fake):
    fake.script({"type": "error", "status": 400, "kind": "context_length_exceeded"})
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(
            model="solo-anthropic", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    err = e.value.body["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("prompt is too long")
    assert err["message"].endswith(" — attempts: an/claude-haiku-4-5 (main): context_overflow [400]")


def test_in_band_error_after_content(anthropic_client, fake):
    fake.script({"type": "stream_then_cut", "text": "this will be cut short", "after_chunks": 2})
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client.messages.stream(
            model="solo-anthropic", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            for _ in stream.text_stream:
                pass
