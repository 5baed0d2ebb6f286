"""The official openai SDK against the gateway: same-format, cross-format, tools, streaming, errors."""

import json

import openai
import pytest

from conftest import CLIENT_KEY, OPENAI_WEATHER_TOOL as WEATHER_TOOL, UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY


def header(fake_request, name):
    for k, v in fake_request["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def test_plain_completion_same_format(openai_client, fake):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="default",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
        temperature=0.2,
        seed=7,  # not modelled by Backstop: must reach the provider untouched
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "echo: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-4o"
    assert raw.headers["x-backstop-model"] == "oa/gpt-4o"
    assert raw.headers["x-backstop-attempts"] == "1"
    assert raw.headers["x-backstop-request-id"]
    assert "x-backstop-fallback" not in raw.headers
    (req,) = fake.requests()
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "gpt-4o"
    assert req["body"]["seed"] == 7
    assert header(req, "authorization") == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert CLIENT_KEY not in json.dumps(req)


def test_streaming_same_format(openai_client, fake):
    fake.script({"type": "reply", "text": "one two three four", "chunks": 4})
    stream = openai_client.chat.completions.create(
        model="oa/gpt-4o",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "one two three four"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_tool_calls_and_results_same_format(openai_client, fake):
    fake.script(
        {
            "type": "reply",
            "tool_calls": [
                {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            ],
        }
    )
    resp = openai_client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "weather in Paris and Rome?"}],
        tools=[WEATHER_TOOL],
    )
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["city"] for c in msg.tool_calls] == ["Paris", "Rome"]
    # Send the results back; the provider must see the whole exchange.
    follow = openai_client.chat.completions.create(
        model="default",
        messages=[
            {"role": "user", "content": "weather in Paris and Rome?"},
            msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"},
            {"role": "tool", "tool_call_id": msg.tool_calls[1].id, "content": "rain"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert follow.choices[0].message.content.startswith("echo:")
    sent = fake.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[3]["content"] == "rain"


def test_cross_format_openai_client_anthropic_upstream(openai_client, fake):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="solo-anthropic",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi from openai"},
        ],
        max_tokens=100,
        stop=["END"],
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "echo: hi from openai"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "claude-haiku-4-5"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-backstop-model"] == "an/claude-haiku-4-5"
    # A translated answer carries an id in OpenAI's shape, not Anthropic's `msg_…`.
    assert resp.id.startswith("chatcmpl-") and "msg_" not in resp.id
    (req,) = fake.requests()
    assert req["path"] == "/v1/messages"
    assert header(req, "x-api-key") == UPSTREAM_ANTHROPIC_KEY
    assert header(req, "anthropic-version") == "2023-06-01"
    assert header(req, "authorization") is None
    body = req["body"]
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 100
    assert body["stop_sequences"] == ["END"]
    assert body["messages"] == [{"role": "user", "content": "hi from openai"}] or body["messages"][0]["role"] == "user"


def test_cross_format_streaming_tools(openai_client, fake):
    fake.script(
        {
            "type": "reply",
            "text": "Let me check.",
            "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}],
        }
    )
    stream = openai_client.chat.completions.create(
        model="solo-anthropic",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    text, args, names, finish, ids = "", {}, {}, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        for c in chunk.choices:
            text += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names[tc.index] = tc.function.name
                args[tc.index] = args.get(tc.index, "") + ((tc.function and tc.function.arguments) or "")
            finish = c.finish_reason or finish
    assert text == "Let me check."
    assert names == {0: "get_weather"}
    assert json.loads(args[0]) == {"city": "Oslo"}
    assert finish == "tool_calls"
    (stream_id,) = ids
    assert stream_id.startswith("chatcmpl-") and "msg_" not in stream_id
    body = fake.requests()[-1]["body"]
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"]["required"] == ["city"]


def test_fallback_to_other_provider(openai_client, fake):
    # Two attempts on the primary (retry.max_attempts = 2), then the fallback answers.
    fake.script({"type": "error", "status": 503}, {"type": "error", "status": 503}, {"type": "reply", "text": "from the fallback"})
    raw = openai_client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "from the fallback"
    assert resp.model == "claude-sonnet-4-5"
    assert raw.headers["x-backstop-model"] == "an/claude-sonnet-4-5"
    assert raw.headers["x-backstop-attempts"] == "3"
    assert raw.headers["x-backstop-fallback"] == "overloaded"
    assert "switched to an/claude-sonnet-4-5" in raw.headers["x-backstop-fallback-notice"]
    assert [r["path"] for r in fake.requests()] == ["/v1/chat/completions"] * 2 + ["/v1/messages"]


def test_unknown_model_is_404_listing_configured(openai_client):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    msg = str(e.value)
    assert "gpt-nope" in msg and "claude-first" in msg and "oa/gpt-4o" in msg


def test_bad_client_key_is_401(gateway, fake):
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}])
    assert fake.requests() == []


def test_malformed_request_is_400(openai_client, fake):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model="default", messages="not a list")
    assert "messages" in str(e.value)
    assert fake.requests() == []


def test_upstream_bad_request_passes_through(openai_client, fake):
    fake.script({"type": "error", "status": 400, "kind": "context_length_exceeded"})
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model="solo-openai", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.code == "context_length_exceeded"
    # PRODUCT §8: every target tried, the message lists each attempt after the provider's words.
    assert str(e.value.message).endswith(" — attempts: oa/gpt-4o-mini (main): context_overflow [400]")
    assert e.value.response.headers.get("x-backstop-model") is None


def test_context_overflow_from_anthropic_keeps_openais_code(openai_client, fake):
    # Agents that compact on `context_length_exceeded` see it even when the provider that
    # overflowed speaks Anthropic (which has no such code).
    fake.script({"type": "error", "status": 400, "kind": "context_length_exceeded"})
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model="solo-anthropic", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.code == "context_length_exceeded"
    assert e.value.type == "invalid_request_error"
    assert "prompt is too long" in e.value.message
    assert "attempts: an/claude-haiku-4-5 (main): context_overflow [400]" in e.value.message


def test_content_policy_is_returned_as_is(openai_client, fake):
    refusal = {
        "error": {
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        }
    }
    fake.script({"type": "error", "status": 400, "body": refusal})
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}])
    assert e.value.body == refusal["error"]
    assert e.value.response.headers["x-backstop-model"] == "oa/gpt-4o"


def test_all_targets_rate_limited_is_429(openai_client, fake):
    fake.script({"type": "error", "status": 429, "kind": "rate_limit_exceeded"})
    with pytest.raises(openai.RateLimitError) as e:
        openai_client.chat.completions.create(
            model="solo-openai", messages=[{"role": "user", "content": "x"}]
        )
    assert "oa/gpt-4o-mini (main): rate_limit [429]" in str(e.value)
    # Typed as OpenAI types its own 429s.
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.type == "requests"


def test_all_targets_down_is_503_server_error(openai_client, fake):
    fake.default({"type": "error", "status": 500})
    with pytest.raises(openai.InternalServerError) as e:
        openai_client.chat.completions.create(
            model="solo-openai", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 503
    assert e.value.type == "server_error"
    assert "oa/gpt-4o-mini (main): server_error [500]" in str(e.value)


def test_n_choices_skip_an_anthropic_model(openai_client, fake):
    two = {
        "id": "chatcmpl-two", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "one"}, "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "two"}, "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    fake.script({"type": "raw", "status": 200, "headers": [["content-type", "application/json"]], "body": json.dumps(two)})
    # claude-first: an/claude-sonnet-4-5 → oa/gpt-4o; Anthropic cannot return two choices.
    raw = openai_client.chat.completions.with_raw_response.create(
        model="claude-first", n=2, messages=[{"role": "user", "content": "x"}]
    )
    resp = raw.parse()
    assert [c.message.content for c in resp.choices] == ["one", "two"]
    assert raw.headers["x-backstop-model"] == "oa/gpt-4o"
    assert raw.headers["x-backstop-attempts"] == "1"
    assert [r["path"] for r in fake.requests()] == ["/v1/chat/completions"]
    # Nothing in the chain can: a 400 naming n.
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model="solo-anthropic", n=2, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.param == "n"
    assert "an/claude-haiku-4-5" in str(e.value)


def test_in_band_error_after_content(openai_client, fake):
    fake.script({"type": "stream_then_error", "text": "partial answer that breaks", "after_chunks": 2})
    stream = openai_client.chat.completions.create(
        model="solo-openai", messages=[{"role": "user", "content": "x"}], stream=True
    )
    got = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            for c in chunk.choices:
                got += c.delta.content or ""
    assert got.startswith("partial")


def test_models_list(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert ids[:4] == ["default", "claude-first", "solo-openai", "solo-anthropic"]
    assert "oa/gpt-4o" in ids and "an/claude-haiku-4-5" in ids
