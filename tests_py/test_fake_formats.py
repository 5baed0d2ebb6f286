"""The fake provider speaks the real formats: the official SDKs, pointed straight at it,
parse its answers, streams and errors exactly as they would a real provider's. (The
gateway's tests rely on it, so it is checked on its own here.)"""

import json

import anthropic
import openai
import pytest


@pytest.fixture
def oa(fake):
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def an(fake):
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0)


def test_openai_answer_and_usage(oa, fake):
    fake.script({"type": "reply", "text": "hello there", "usage": {"input_tokens": 7, "output_tokens": 2}})
    r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "hello there"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 2, 9)
    assert r.id.startswith("chatcmpl-") and r.model == "gpt-4o"


def test_openai_stream_with_tools_and_usage(oa, fake):
    fake.script({"type": "reply", "text": "Checking", "tool_calls": [{"name": "f", "arguments": '{"a": 1, "b": [2, 3]}'}]})
    stream = oa.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, args, finish, usage = "", "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            text += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert text == "Checking"
    assert json.loads(args) == {"a": 1, "b": [2, 3]}
    assert finish == "tool_calls"
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize(
    "step,exc,code",
    [
        ({"type": "error", "status": 429, "kind": "rate_limit_exceeded"}, openai.RateLimitError, "rate_limit_exceeded"),
        ({"type": "error", "status": 429, "kind": "insufficient_quota"}, openai.RateLimitError, "insufficient_quota"),
        ({"type": "error", "status": 401, "kind": "invalid_api_key"}, openai.AuthenticationError, "invalid_api_key"),
        ({"type": "error", "status": 400, "kind": "context_length_exceeded"}, openai.BadRequestError, "context_length_exceeded"),
        ({"type": "error", "status": 500}, openai.InternalServerError, None),
    ],
)
def test_openai_errors(oa, fake, step, exc, code):
    fake.script(step)
    with pytest.raises(exc) as e:
        oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    if code:
        assert e.value.code == code


def test_openai_in_band_stream_error(oa, fake):
    fake.script({"type": "stream_then_error", "text": "a b c d", "after_chunks": 2})
    with pytest.raises(openai.APIError):
        for _ in oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True):
            pass


def test_anthropic_answer(an, fake):
    fake.script({"type": "reply", "text": "bonjour", "usage": {"input_tokens": 5, "output_tokens": 1}})
    m = an.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == "bonjour"
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (5, 1)
    assert m.id.startswith("msg_")


def test_anthropic_stream_with_tools(an, fake):
    fake.script({"type": "reply", "text": "Let me see", "tool_calls": [{"name": "f", "arguments": '{"q": "x"}'}, {"name": "g", "arguments": "{}"}]})
    with an.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        tools=[{"name": "f", "input_schema": {"type": "object"}}, {"name": "g", "input_schema": {"type": "object"}}],
        messages=[{"role": "user", "content": "x"}],
    ) as s:
        final = s.get_final_message()
    assert final.content[0].text == "Let me see"
    assert [(b.name, b.input) for b in final.content[1:]] == [("f", {"q": "x"}), ("g", {})]
    assert final.stop_reason == "tool_use"
    assert all(b.id.startswith("toolu_") for b in final.content[1:])


@pytest.mark.parametrize(
    "step,exc,kind",
    [
        ({"type": "error", "status": 429, "kind": "rate_limit_error"}, anthropic.RateLimitError, "rate_limit_error"),
        ({"type": "error", "status": 529, "kind": "overloaded_error"}, anthropic.InternalServerError, "overloaded_error"),
        ({"type": "error", "status": 401, "kind": "authentication_error"}, anthropic.AuthenticationError, "authentication_error"),
        ({"type": "error", "status": 403, "kind": "permission_error"}, anthropic.PermissionDeniedError, "permission_error"),
        ({"type": "error", "status": 400, "kind": "invalid_request_error"}, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_anthropic_errors(an, fake, step, exc, kind):
    fake.script(step)
    with pytest.raises(exc) as e:
        an.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == kind


def test_anthropic_in_band_stream_error(an, fake):
    fake.script({"type": "stream_then_error", "text": "a b c d", "after_chunks": 2, "error": "overloaded"})
    with pytest.raises(anthropic.APIStatusError):
        with an.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "x"}]) as s:
            for _ in s.text_stream:
                pass
