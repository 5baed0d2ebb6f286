"""An agent's tool-use loop through the gateway when a failover happens mid-conversation.

The agent (the official openai / anthropic SDK) runs a multi-step tool loop: turn 1
ends in tool calls, the agent sends the tool results, and the model that served
turn 1 fails on turn 2, so another model — in the other wire format — carries on.
The fake records exactly what each upstream received.
"""

import json
import re
import urllib.request
import uuid

import anthropic
import openai
import pytest

from conftest import CLIENT_KEY, OPENAI_WEATHER_TOOL

ANTHROPIC_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")

OPENAI_TOOLS = [
    OPENAI_WEATHER_TOOL,
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a timezone",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string"}},
                "required": ["tz"],
            },
        },
    },
]

ANTHROPIC_TOOLS = [
    {
        "name": t["function"]["name"],
        "description": t["function"]["description"],
        "input_schema": t["function"]["parameters"],
    }
    for t in OPENAI_TOOLS
]

SYSTEM = "You are a travel agent. Use the tools."


def delete_cooldowns(gateway):
    req = urllib.request.Request(gateway + "/v1/cooldowns", method="DELETE")
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    urllib.request.urlopen(req, timeout=10).close()


def get_session(gateway, sid):
    req = urllib.request.Request(gateway + f"/v1/sessions/{sid}")
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def last(fake, path_suffix):
    reqs = [r for r in fake.requests() if r["path"].endswith(path_suffix)]
    assert reqs, f"no request to {path_suffix}: {[r['path'] for r in fake.requests()]}"
    return reqs[-1]["body"]


def anthropic_system_text(body):
    system = body.get("system")
    if isinstance(system, list):
        return "".join(b.get("text", "") for b in system)
    return system


def blocks(message):
    content = message["content"]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content


def primary_failure(kind):
    """Steps that make the chain's first model fail over (429: one attempt; 503: two)."""
    if kind == 429:
        return [{"type": "error", "status": 429, "kind": "rate_limit"}]
    return [{"type": "error", "status": 503}, {"type": "error", "status": 503}]


# ---------------------------------------------------------------------------
# 1. OpenAI SDK agent, chain [oa/gpt-4o, an/claude-sonnet-4-5]


def openai_stream_turn(client, messages, **extra):
    """One streamed agent turn through the SDK's stream helper."""
    with client.chat.completions.stream(
        model="default", messages=messages, tools=OPENAI_TOOLS, **extra
    ) as s:
        final = s.get_final_completion()
    return final.choices[0].message, final.choices[0].finish_reason, None


def run_openai_turn(client, messages, stream, **extra):
    if stream:
        return openai_stream_turn(client, messages, **extra)
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=messages, tools=OPENAI_TOOLS, **extra
    )
    resp = raw.parse()
    return resp.choices[0].message, resp.choices[0].finish_reason, raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [429, 503])
def test_openai_agent_tool_loop_fails_over_to_anthropic(openai_client, fake, stream, status):
    fake.script(
        {
            "type": "reply",
            "tool_calls": [
                {"id": "call_Q8aB3xYz", "name": "get_weather", "arguments": '{"city": "Paris"}'}
            ],
        }
    )
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    msg, finish, _ = run_openai_turn(openai_client, messages, stream)
    assert finish == "tool_calls"
    (call,) = msg.tool_calls
    assert call.id == "call_Q8aB3xYz"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.requests()[-1]["path"] == "/v1/chat/completions"

    messages += [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    fake.reset()
    fake.script(*primary_failure(status), {"type": "reply", "text": "Sunny and 21C in Paris."})
    msg, finish, headers = run_openai_turn(openai_client, messages, stream)
    assert msg.content == "Sunny and 21C in Paris."
    assert finish == "stop"
    assert not msg.tool_calls
    if headers is not None:
        assert headers["x-backstop-model"] == "an/claude-sonnet-4-5"
        assert headers["x-backstop-fallback"] in ("rate_limit", "overloaded", "server_error")

    body = last(fake, "/v1/messages")
    assert body["model"] == "claude-sonnet-4-5"
    assert anthropic_system_text(body) == SYSTEM
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert blocks(body["messages"][0]) == [{"type": "text", "text": "Weather in Paris?"}]
    (use,) = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    assert use == {"type": "tool_use", "id": "call_Q8aB3xYz", "name": "get_weather",
                   "input": {"city": "Paris"}}
    (result,) = blocks(body["messages"][2])
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == "call_Q8aB3xYz"
    assert result["content"] in ("sunny, 21C", [{"type": "text", "text": "sunny, 21C"}])
    assert {t["name"] for t in body["tools"]} == {"get_weather", "get_time"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_anthropic_agent_tool_loop_fails_over_to_openai(anthropic_client, fake, stream):
    tool_id = "toolu_01A09q90qw90lq917835lq9"
    fake.script(
        {
            "type": "reply",
            "text": "Let me check.",
            "tool_calls": [{"id": tool_id, "name": "get_weather", "arguments": '{"city": "Lima"}'}],
        }
    )
    messages = [{"role": "user", "content": "Weather in Lima?"}]
    kw = dict(model="claude-first", max_tokens=300, system=SYSTEM, tools=ANTHROPIC_TOOLS)

    def turn(messages):
        if stream:
            with anthropic_client.messages.stream(messages=messages, **kw) as s:
                return s.get_final_message()
        return anthropic_client.messages.create(messages=messages, **kw)

    first = turn(messages)
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert (use.id, use.name, use.input) == (tool_id, "get_weather", {"city": "Lima"})

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "fog"}]},
    ]
    fake.reset()
    fake.script(
        {"type": "error", "status": 529, "kind": "overloaded_error"},
        {"type": "error", "status": 529, "kind": "overloaded_error"},
        {"type": "reply", "text": "Foggy in Lima."},
    )
    second = turn(messages)
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if b.type == "text"] == ["Foggy in Lima."]

    body = last(fake, "/chat/completions")
    assert body["model"] == "gpt-4o"
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[0]["content"] in (SYSTEM, [{"type": "text", "text": SYSTEM}])
    assert msgs[2]["content"] in ("Let me check.", [{"type": "text", "text": "Let me check."}])
    (tc,) = msgs[2]["tool_calls"]
    assert tc["id"] == tool_id and tc["type"] == "function"
    assert tc["function"]["name"] == "get_weather"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Lima"}
    assert msgs[3]["tool_call_id"] == tool_id
    assert msgs[3]["content"] in ("fog", [{"type": "text", "text": "fog"}])


# ---------------------------------------------------------------------------
# 2. Parallel tool calls across the failover, streamed, both directions

PARALLEL = [
    {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    {"name": "get_time", "arguments": '{"tz": "Europe/Oslo"}'},
]


def test_parallel_tool_calls_openai_client_served_by_anthropic(openai_client, fake):
    fake.script(
        {"type": "error", "status": 429, "kind": "rate_limit"},
        {"type": "reply", "tool_calls": [
            {"id": "toolu_01Weather", **PARALLEL[0]}, {"id": "toolu_02Time", **PARALLEL[1]},
        ]},
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Oslo?"}]
    msg, finish, _ = openai_stream_turn(openai_client, messages)
    assert finish == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("toolu_01Weather", "get_weather", {"city": "Oslo"}),
        ("toolu_02Time", "get_time", {"tz": "Europe/Oslo"}),
    ]
    assert fake.requests()[-1]["path"] == "/v1/messages"

    # Turn 2: the primary is still cooling, so the fallback gets both results.
    messages += [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "toolu_01Weather", "content": "snow"},
        {"role": "tool", "tool_call_id": "toolu_02Time", "content": "09:00"},
    ]
    fake.reset()
    fake.script({"type": "reply", "text": "Snowy, 9am."})
    msg, finish, _ = openai_stream_turn(openai_client, messages)
    assert msg.content == "Snowy, 9am."
    body = last(fake, "/v1/messages")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    uses = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == [
        ("toolu_01Weather", "get_weather", {"city": "Oslo"}),
        ("toolu_02Time", "get_time", {"tz": "Europe/Oslo"}),
    ]
    results = blocks(body["messages"][2])
    assert [r["tool_use_id"] for r in results] == ["toolu_01Weather", "toolu_02Time"]


def test_parallel_tool_calls_anthropic_client_served_by_openai(anthropic_client, fake):
    fake.script(
        {"type": "error", "status": 429, "kind": "rate_limit"},
        {"type": "reply", "tool_calls": [
            {"id": "call_W1", **PARALLEL[0]}, {"id": "call_T2", **PARALLEL[1]},
        ]},
    )
    kw = dict(model="claude-first", max_tokens=300, system=SYSTEM, tools=ANTHROPIC_TOOLS)
    messages = [{"role": "user", "content": "Oslo?"}]
    with anthropic_client.messages.stream(messages=messages, **kw) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_W1", "get_weather", {"city": "Oslo"}),
        ("call_T2", "get_time", {"tz": "Europe/Oslo"}),
    ]
    assert fake.requests()[-1]["path"] == "/v1/chat/completions"

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_W1", "content": "snow"},
            {"type": "tool_result", "tool_use_id": "call_T2", "content": "09:00"},
        ]},
    ]
    fake.reset()
    fake.script({"type": "reply", "text": "Snowy, 9am."})
    with anthropic_client.messages.stream(messages=messages, **kw) as s:
        final = s.get_final_message()
    assert [b.text for b in final.content if b.type == "text"] == ["Snowy, 9am."]
    body = last(fake, "/chat/completions")
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in msgs[2]["tool_calls"]] == [
        ("call_W1", "get_weather", {"city": "Oslo"}),
        ("call_T2", "get_time", {"tz": "Europe/Oslo"}),
    ]
    assert [m["tool_call_id"] for m in msgs[3:]] == ["call_W1", "call_T2"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_agent_gets_json_arguments_for_a_call_without_input(openai_client, fake, stream):
    """Anthropic streams a call without parameters as `input: {}` and no JSON text;
    the OpenAI agent must get `{}` (what OpenAI sends), not an empty string that its
    `json.loads` refuses."""
    fake.script(
        {"type": "error", "status": 429, "kind": "rate_limit"},
        {"type": "reply", "tool_calls": [{"id": "toolu_NoArgs", "name": "get_time", "arguments": ""}]},
    )
    messages = [{"role": "user", "content": "What time is it?"}]
    msg, finish, _ = run_openai_turn(openai_client, messages, stream)
    assert finish == "tool_calls"
    assert fake.requests()[-1]["path"] == "/v1/messages"
    (call,) = msg.tool_calls
    assert (call.id, call.function.name) == ("toolu_NoArgs", "get_time")
    assert json.loads(call.function.arguments) == {}


# ---------------------------------------------------------------------------
# 3. Tool-call ids one provider made, in history sent to another


@pytest.mark.parametrize("foreign_id", ["functions.get_weather:0", "call:abc.1", "call abc/1"])
def test_foreign_tool_ids_reach_anthropic_in_its_pattern(openai_client, fake, foreign_id):
    """An OpenAI-compatible provider's id (Kimi: `functions.get_weather:0`) is refused by
    Anthropic (`tool_use.id` must match ^[a-zA-Z0-9_-]+$): the fallback must get a valid
    id, the same in the tool_use and its tool_result."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather in Rome and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": foreign_id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            {"id": foreign_id + "x", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": foreign_id, "content": "hot"},
        {"role": "tool", "tool_call_id": foreign_id + "x", "content": "cold"},
    ]
    fake.script({"type": "error", "status": 429, "kind": "rate_limit"},
                {"type": "reply", "text": "Hot in Rome, cold in Oslo."})
    resp = openai_client.chat.completions.create(model="default", messages=messages,
                                                 tools=OPENAI_TOOLS)
    assert resp.choices[0].message.content == "Hot in Rome, cold in Oslo."
    body = last(fake, "/v1/messages")
    uses = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    results = blocks(body["messages"][2])
    assert len(uses) == 2 and len(results) == 2
    for u in uses:
        assert ANTHROPIC_TOOL_ID.match(u["id"]), u["id"]
    assert uses[0]["id"] != uses[1]["id"]
    assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
    assert [r["content"] for r in results] in (
        ["hot", "cold"], [[{"type": "text", "text": "hot"}], [{"type": "text", "text": "cold"}]])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_foreign_tool_ids_reach_anthropic_client_in_its_pattern(anthropic_client, fake, gateway,
                                                                stream):
    """An Anthropic agent served by an OpenAI-compatible fallback whose ids Anthropic
    refuses: the agent gets valid `tool_use` ids, so its history still works when the
    Anthropic primary serves the next turn (forwarded as sent)."""
    foreign = "functions.get_weather:0"
    fake.script(
        {"type": "error", "status": 529, "kind": "overloaded_error"},
        {"type": "error", "status": 529, "kind": "overloaded_error"},
        {"type": "reply", "tool_calls": [{"id": foreign, "name": "get_weather",
                                          "arguments": '{"city": "Quito"}'}]},
    )
    kw = dict(model="claude-first", max_tokens=300, system=SYSTEM, tools=ANTHROPIC_TOOLS)
    messages = [{"role": "user", "content": "Quito?"}]
    if stream:
        with anthropic_client.messages.stream(messages=messages, **kw) as s:
            first = s.get_final_message()
    else:
        first = anthropic_client.messages.create(messages=messages, **kw)
    assert fake.requests()[-1]["path"] == "/v1/chat/completions"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert ANTHROPIC_TOOL_ID.match(use.id), use.id
    assert use.input == {"city": "Quito"}

    delete_cooldowns(gateway)
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "mild"}]},
    ]
    fake.reset()
    fake.script({"type": "reply", "text": "Mild in Quito."})
    second = anthropic_client.messages.create(messages=messages, **kw)
    assert second.content[0].text == "Mild in Quito."
    body = last(fake, "/v1/messages")
    (sent_use,) = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    assert ANTHROPIC_TOOL_ID.match(sent_use["id"])
    assert blocks(body["messages"][2])[0]["tool_use_id"] == sent_use["id"]


def test_gemini_invented_tool_ids_round_trip_to_anthropic(openai_client, fake):
    """Gemini has no tool-call ids: Backstop invents one; it must survive the next turn,
    on Gemini (matched back to the call's name) and on Anthropic (valid pattern)."""
    fb = {"x-backstop-fallbacks": "an/claude-sonnet-4-5"}
    fake.script({"type": "reply", "tool_calls": [
        {"name": "get_weather", "arguments": '{"city": "Kyiv"}'},
        {"name": "get_time", "arguments": '{"tz": "Europe/Kyiv"}'},
    ]})
    messages = [{"role": "user", "content": "Kyiv?"}]
    with openai_client.chat.completions.stream(
        model="gm/gemini-2.5-flash", messages=messages, tools=OPENAI_TOOLS, extra_headers=fb
    ) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    ids = [c.id for c in calls]
    assert len(set(ids)) == 2
    for i in ids:
        assert ANTHROPIC_TOOL_ID.match(i), i
    assert ":streamGenerateContent" in fake.requests()[-1]["path"]

    messages += [
        final.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": ids[0], "content": "rain"},
        {"role": "tool", "tool_call_id": ids[1], "content": "10:00"},
    ]
    # Turn 2 on Gemini itself: the results are matched to their calls by name.
    fake.reset()
    fake.script({"type": "reply", "text": "Rainy, 10am."})
    resp = openai_client.chat.completions.create(
        model="gm/gemini-2.5-flash", messages=messages, tools=OPENAI_TOOLS, extra_headers=fb)
    assert resp.choices[0].message.content == "Rainy, 10am."
    gbody = fake.requests()[-1]["body"]
    parts = [p for c in gbody["contents"] for p in c["parts"]]
    responses = [p["functionResponse"]["name"] for p in parts if "functionResponse" in p]
    assert responses == ["get_weather", "get_time"]

    # Turn 2 failed over to Anthropic: same ids, paired.
    fake.reset()
    fake.script({"type": "error", "status": 429, "kind": "rate_limit"},
                {"type": "reply", "text": "Rainy, 10am."})
    resp = openai_client.chat.completions.create(
        model="gm/gemini-2.5-flash", messages=messages, tools=OPENAI_TOOLS, extra_headers=fb)
    assert resp.choices[0].message.content == "Rainy, 10am."
    body = last(fake, "/v1/messages")
    uses = [b for b in blocks(body["messages"][1]) if b["type"] == "tool_use"]
    assert [u["id"] for u in uses] == ids
    assert [r["tool_use_id"] for r in blocks(body["messages"][2])] == ids


# ---------------------------------------------------------------------------
# 4. A stream cut in the middle of a tool call's arguments


def test_openai_stream_cut_mid_tool_arguments_is_an_error(openai_client, fake):
    # The call's start (id, name) and one argument fragment reach the client, then a cut.
    fake.script({"type": "reply", "cut_after_chunks": 2, "chunks": 4, "tool_calls": [
        {"id": "call_cut1", "name": "get_weather", "arguments": '{"city": "Amsterdam"}'}]})
    # The rescue must not replay the call on the fallback: were it asked, it would answer.
    fake.default({"type": "reply", "text": "should not be used"})
    seen_args = ""
    with pytest.raises(openai.APIError):
        stream = openai_client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Amsterdam?"}],
            tools=OPENAI_TOOLS, stream=True)
        for chunk in stream:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    seen_args += (tc.function and tc.function.arguments) or ""
                assert c.finish_reason is None, "a cut tool call passed off as finished"
    assert seen_args and seen_args != '{"city": "Amsterdam"}'
    assert len(fake.requests()) == 1, [r["path"] for r in fake.requests()]
    # The SDK's stream helper (what agents use to assemble tool calls) raises too.
    fake.script({"type": "reply", "cut_after_chunks": 3, "chunks": 4, "tool_calls": [
        {"id": "call_cut2", "name": "get_weather", "arguments": '{"city": "Amsterdam"}'}]})
    with pytest.raises(openai.APIError):
        with openai_client.chat.completions.stream(
            model="default", messages=[{"role": "user", "content": "Amsterdam?"}],
            tools=OPENAI_TOOLS) as s:
            s.get_final_completion()
    assert len(fake.requests()) == 2, [r["path"] for r in fake.requests()]


@pytest.mark.parametrize("model", ["claude-first", "solo-openai"])
def test_anthropic_stream_cut_mid_tool_arguments_is_an_error(anthropic_client, fake, model):
    fake.script({"type": "reply", "cut_after_chunks": 2, "chunks": 4, "tool_calls": [
        {"name": "get_weather", "arguments": '{"city": "Amsterdam"}'}]})
    fake.default({"type": "reply", "text": "should not be used"})
    kinds = []
    with pytest.raises(anthropic.APIError):
        with anthropic_client.messages.stream(
            model=model, max_tokens=100, tools=ANTHROPIC_TOOLS,
            messages=[{"role": "user", "content": "Amsterdam?"}]) as s:
            for event in s:
                kinds.append(event.type)
            s.get_final_message()
    assert "message_stop" not in kinds
    assert "content_block_start" in kinds


def test_openai_stream_cut_mid_tool_arguments_cross_format(openai_client, fake):
    fake.script({"type": "reply", "cut_after_chunks": 2, "chunks": 4, "tool_calls": [
        {"name": "get_weather", "arguments": '{"city": "Amsterdam"}'}]})
    fake.default({"type": "reply", "text": "should not be used"})
    finishes = []
    with pytest.raises(openai.APIError):
        for chunk in openai_client.chat.completions.create(
            model="claude-first", messages=[{"role": "user", "content": "Amsterdam?"}],
            tools=OPENAI_TOOLS, stream=True):
            finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert finishes == []
    assert len(fake.requests()) == 1, [r["path"] for r in fake.requests()]


# ---------------------------------------------------------------------------
# 5. Sessions: stay on the fallback while the primary cools, then return


def test_session_stays_on_fallback_then_returns_to_primary(openai_client, fake, gateway):
    sid = "agent-" + uuid.uuid4().hex[:12]
    hdr = {"x-backstop-session": sid}
    fake.script({"type": "reply", "tool_calls": [
        {"id": "call_s1", "name": "get_weather", "arguments": '{"city": "Bern"}'}]})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Bern?"}]
    msg, _, headers = run_openai_turn(openai_client, messages, False, extra_headers=hdr)
    assert headers["x-backstop-model"] == "oa/gpt-4o"
    messages += [msg.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "call_s1", "content": "clear"}]

    # Turn 2: the primary is rate limited; the fallback answers with another tool call.
    fake.reset()
    fake.script({"type": "error", "status": 429, "kind": "rate_limit"},
                {"type": "reply", "tool_calls": [
                    {"id": "toolu_s2", "name": "get_time", "arguments": '{"tz": "Europe/Zurich"}'}]})
    msg, finish, headers = run_openai_turn(openai_client, messages, False, extra_headers=hdr)
    assert finish == "tool_calls"
    assert headers["x-backstop-model"] == "an/claude-sonnet-4-5"
    assert "switched to an/claude-sonnet-4-5" in headers["x-backstop-fallback-notice"]
    session = get_session(gateway, sid)
    assert (session["provider_override"], session["model_override"]) == ("an", "claude-sonnet-4-5")
    messages += [msg.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "toolu_s2", "content": "10:00"}]

    # Turn 3: the primary still cools: straight to the fallback, no attempt on the primary.
    fake.reset()
    fake.script({"type": "reply", "text": "Clear, 10am."})
    msg, _, headers = run_openai_turn(openai_client, messages, False, extra_headers=hdr)
    assert msg.content == "Clear, 10am."
    assert headers["x-backstop-model"] == "an/claude-sonnet-4-5"
    assert headers["x-backstop-attempts"] == "1"
    assert [r["path"] for r in fake.requests()] == ["/v1/messages"]
    body = fake.requests()[0]["body"]
    ids = [b["id"] for m in body["messages"] for b in blocks(m) if b["type"] == "tool_use"]
    assert ids == ["call_s1", "toolu_s2"]

    # The primary recovers (cooldown cleared): the session goes back to it, said once.
    delete_cooldowns(gateway)
    messages += [{"role": "assistant", "content": "Clear, 10am."},
                 {"role": "user", "content": "And tomorrow?"}]
    fake.reset()
    fake.script({"type": "reply", "text": "Clear too."})
    msg, _, headers = run_openai_turn(openai_client, messages, False, extra_headers=hdr)
    assert headers["x-backstop-model"] == "oa/gpt-4o"
    assert "fallback cleared" in headers.get("x-backstop-fallback-notice", "")
    assert [r["path"] for r in fake.requests()] == ["/v1/chat/completions"]
    body = fake.requests()[0]["body"]
    ids = [tc["id"] for m in body["messages"] for tc in m.get("tool_calls", [])]
    assert ids == ["call_s1", "toolu_s2"]
    fake.reset()
    msg, _, headers = run_openai_turn(openai_client, messages, False, extra_headers=hdr)
    assert headers["x-backstop-model"] == "oa/gpt-4o"
    assert "x-backstop-fallback-notice" not in headers
