"""Fault injection with an independent upstream (`rawfake.py`), not `backstop-fake`.

Each test scripts the exact bytes an upstream writes — SSE framing, body framing,
connection behaviour, odd error bodies — and checks what the official SDKs see through
the real `backstop serve` binary, against PRODUCT.md §3.1, §3.4 and §3.6.
"""

import asyncio
import pathlib
import tempfile
import time
import urllib.request

import anthropic
import openai
import pytest

from conftest import BACKSTOP_BIN, CLIENT_KEY, _start, _stop
from rawfake import (
    RawFake,
    anthropic_events,
    anthropic_json,
    chunk,
    gz,
    openai_events,
    openai_json,
    response,
    sse,
    stream_head,
)

FIRST_TOKEN_MS = 1000
IDLE_MS = 1000


@pytest.fixture(scope="module")
def raw():
    f = RawFake()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def gw(raw):
    tmp = tempfile.mkdtemp(prefix="backstop-raw-")
    cfg = pathlib.Path(tmp) / "backstop.json5"
    cfg.write_text(
        f"""
    {{
      server: {{ listen: "127.0.0.1:0", api_keys: ["{CLIENT_KEY}"] }},
      providers: {{
        oa: {{ api: "openai", base_url: "{raw.url}/v1",
              auth: [{{ profile: "main", key: "sk-raw-openai-0123456789" }}], models: ["gpt-4o"] }},
        an: {{ api: "anthropic", base_url: "{raw.url}",
              auth: [{{ profile: "main", key: "sk-ant-raw-0123456789" }}],
              models: ["claude-sonnet-4-5"] }},
        bk: {{ api: "openai", base_url: "{raw.url}/bk/v1",
              auth: [{{ profile: "main", key: "sk-raw-backup-0123456789" }}], models: ["backup-1"] }},
      }},
      agents: {{
        defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["bk/backup-1"] }} }},
        list: [
          {{ id: "claude", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: ["bk/backup-1"] }} }},
          {{ id: "solo-oa", model: {{ primary: "oa/gpt-4o", fallbacks: [] }} }},
          {{ id: "solo-an", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: [] }} }},
        ],
      }},
      retry: {{ max_attempts: 2, backoff_ms: 10 }},
      timeouts: {{ connect_ms: 1000, first_token_ms: {FIRST_TOKEN_MS}, idle_ms: {IDLE_MS},
                  request_ms: 15000 }},
    }}
    """
    )
    proc, url = _start(
        [BACKSTOP_BIN, "serve", "--config", str(cfg)],
        env={"BACKSTOP_STATE_DIR": tmp},
        stderr_path=str(pathlib.Path(tmp) / "gateway.log"),
    )
    yield url
    _stop(proc)


@pytest.fixture(autouse=True)
def fresh(raw, gw):
    raw.reset()
    req = urllib.request.Request(gw + "/v1/cooldowns", method="DELETE")
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    urllib.request.urlopen(req, timeout=10).close()
    yield


@pytest.fixture
def oai(gw):
    return openai.OpenAI(base_url=gw + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


@pytest.fixture
def ant(gw):
    return anthropic.Anthropic(base_url=gw, api_key=CLIENT_KEY, max_retries=0, timeout=20)


MSG = [{"role": "user", "content": "hi"}]


def oai_stream(client, model="solo-oa", **kw):
    """Stream through the SDK; returns (text, finish_reason, usage)."""
    text, finish, usage = "", None, None
    for c in client.chat.completions.create(
        model=model, messages=MSG, stream=True, stream_options={"include_usage": True}, **kw
    ):
        if c.usage:
            usage = c.usage
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    return text, finish, usage


def ant_stream(client, model="solo-an"):
    """Stream through the SDK; returns (text, stop_reason, output_tokens, event types)."""
    text, stop, out_tokens, types = "", None, None, []
    with client.messages.stream(model=model, max_tokens=64, messages=MSG) as s:
        for ev in s:
            types.append(ev.type)
            if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                text += ev.delta.text
            if ev.type == "message_delta":
                stop = ev.delta.stop_reason
                out_tokens = ev.usage.output_tokens
    return text, stop, out_tokens, types


def backup_ok(text="from backup"):
    """The backup provider: a plain, well-formed OpenAI stream."""

    async def h(req, conn):
        body = stream_head() + b"".join(chunk(sse(d)) for d in openai_events(text, "backup-1"))
        await conn.send(body + b"0\r\n\r\n")
        return True

    return h


# ---- helpers to build handlers ------------------------------------------------------


def openai_stream_handler(frames, chunked=True, close_after=False, writes=None, pause=0.0,
                          head=None, terminate=True, pause_every=1):
    """Answer with the given SSE bytes (`frames`, already framed), split into `writes`
    (a list of byte strings) when given, pausing `pause` seconds after every
    `pause_every`-th write."""

    async def h(req, conn):
        payload = b"".join(frames)
        parts = writes(payload) if writes else [payload]
        await conn.send(head if head is not None else stream_head(chunked=chunked,
                                                                   close=close_after))
        for i, p in enumerate(parts, 1):
            await conn.send(chunk(p) if chunked else p)
            if pause and i % pause_every == 0:
                await conn.pause(pause)
        if chunked and terminate:
            await conn.send(b"0\r\n\r\n")
        if close_after or not chunked:
            conn.close()
            return False
        return True

    return h


def bytewise(payload):
    return [payload[i : i + 1] for i in range(len(payload))]


# ---- SSE framing --------------------------------------------------------------------


@pytest.mark.parametrize("nl", ["\r\n", "\r"])
def test_openai_stream_with_crlf_or_cr_line_endings(raw, oai, nl):
    frames = [sse(d, nl=nl) for d in openai_events("alpha beta gamma")]
    raw.script(openai_stream_handler(frames))
    text, finish, usage = oai_stream(oai)
    assert text == "alpha beta gamma"
    assert finish == "stop"
    assert usage and usage.completion_tokens == 3


def test_anthropic_stream_with_crlf_line_endings(raw, ant):
    frames = [sse(d, e, nl="\r\n") for e, d in anthropic_events("alpha beta gamma")]
    raw.script(openai_stream_handler(frames))
    text, stop, out, types = ant_stream(ant)
    assert text == "alpha beta gamma"
    assert stop == "end_turn" and out == 3
    assert types[-1] == "message_stop"


# One byte per write, with a short pause after every fourth write (not every write: with
# this module's 1 s first-token timeout, a loaded machine's sleep granularity made the
# hundreds of pauses before the first content byte a timing margin, not a test of parsing).
def test_openai_stream_one_byte_per_write(raw, oai):
    frames = [sse(d) for d in openai_events("slow and steady")]
    raw.script(openai_stream_handler(frames, writes=bytewise, pause=0.0005, pause_every=4))
    text, finish, usage = oai_stream(oai)
    assert text == "slow and steady" and finish == "stop" and usage


def test_anthropic_stream_one_byte_per_write_cross_format(raw, oai):
    """Anthropic upstream, byte by byte, translated for an OpenAI client."""
    frames = [sse(d, e) for e, d in anthropic_events("slow and steady")]
    raw.script(openai_stream_handler(frames, writes=bytewise, pause=0.0005, pause_every=4))
    text, finish, usage = oai_stream(oai, model="solo-an")
    assert text == "slow and steady" and finish == "stop"
    assert usage and usage.prompt_tokens == 9 and usage.completion_tokens == 3


def test_whole_stream_in_one_write(raw, ant):
    frames = [sse(d, e) for e, d in anthropic_events("all at once")]
    raw.script(openai_stream_handler(frames))
    text, stop, out, _ = ant_stream(ant)
    assert text == "all at once" and stop == "end_turn" and out == 3


def test_comments_pings_event_id_retry_and_blank_lines(raw, oai, ant):
    """`: ping` comments, `event:` lines on an OpenAI stream, `id:`/`retry:` fields and
    extra blank lines are SSE noise: the answer comes through whole."""
    ev = openai_events("noise is fine")
    frames = [b"retry: 3000\n\n", b": ping\n\n", b"\n\n\n"]
    for i, d in enumerate(ev):
        frames.append(f"id: {i}\nevent: chunk\ndata: {d}\n\n".encode())
        frames.append(b": keep-alive\n\n\n")
    raw.script(openai_stream_handler(frames))
    text, finish, usage = oai_stream(oai)
    assert text == "noise is fine" and finish == "stop" and usage

    frames = [b": hello\n\n"]
    for e, d in anthropic_events("noise is fine"):
        frames.append(f"id: x\nevent: {e}\nretry: 10\ndata: {d}\n\n".encode())
        frames.append(sse('{"type": "ping"}', "ping"))
    raw.script(openai_stream_handler(frames))
    text, stop, out, _ = ant_stream(ant)
    assert text == "noise is fine" and stop == "end_turn" and out == 3


def test_final_event_without_trailing_blank_line(raw, oai, ant):
    ev = openai_events("last line")
    frames = [sse(d) for d in ev[:-1]] + [f"data: {ev[-1]}".encode()]
    raw.script(openai_stream_handler(frames))
    text, finish, usage = oai_stream(oai)
    assert text == "last line" and finish == "stop" and usage

    ev = anthropic_events("last line")
    frames = [sse(d, e) for e, d in ev[:-1]] + [f"event: {ev[-1][0]}\ndata: {ev[-1][1]}\n".encode()]
    raw.script(openai_stream_handler(frames))
    text, stop, out, types = ant_stream(ant)
    assert text == "last line" and stop == "end_turn" and types[-1] == "message_stop"


@pytest.mark.parametrize("stream", [True, False])
def test_openai_stream_without_done_is_finalised_promptly_with_usage(raw, oai, stream):
    """No `data: [DONE]`, and the upstream keeps the connection open (no close, no
    terminating chunk): after the finish reason and the usage chunk the answer is
    complete and must be finalised promptly, not after idle_ms."""
    frames = [sse(d) for d in openai_events("no done", done=False)]

    async def h(req, conn):
        await conn.send(stream_head() + chunk(b"".join(frames)))
        await conn.pause(IDLE_MS * 3 / 1000)
        conn.close()
        return False

    raw.script(h)
    t0 = time.monotonic()
    if stream:
        text, finish, usage = oai_stream(oai)
    else:
        r = oai.chat.completions.create(model="solo-oa", messages=MSG)
        text, finish, usage = r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    took = time.monotonic() - t0
    assert text == "no done" and finish == "stop"
    assert usage and usage.completion_tokens == 2
    assert took < IDLE_MS / 1000, f"finalised after {took:.2f}s"


# ---- pings are not content ----------------------------------------------------------


def test_openai_stream_of_only_comments_hits_first_token_timeout_and_fails_over(raw, oai):
    async def pinger(req, conn):
        await conn.send(stream_head())
        for _ in range(int(FIRST_TOKEN_MS / 100) * 3):
            await conn.send(chunk(b": ping\n\n"))
            await conn.pause(0.1)
        conn.close()
        return False

    raw.routes["/bk/"] = backup_ok()
    raw.script(pinger)
    raw.default = pinger
    t0 = time.monotonic()
    text, finish, usage = oai_stream(oai, model="default")
    took = time.monotonic() - t0
    assert text == "from backup" and finish == "stop"
    assert took < FIRST_TOKEN_MS * 2.5 / 1000, took


def test_anthropic_stream_of_only_pings_hits_first_token_timeout_and_fails_over(raw, ant):
    """message_start and `event: ping` forever: a role-only start and pings are not content."""
    ev = anthropic_events("never")

    async def pinger(req, conn):
        await conn.send(stream_head() + chunk(sse(ev[0][1], ev[0][0])))
        for _ in range(int(FIRST_TOKEN_MS / 100) * 3):
            await conn.send(chunk(sse('{"type": "ping"}', "ping")))
            await conn.pause(0.1)
        conn.close()
        return False

    raw.routes["/bk/"] = backup_ok()
    raw.default = pinger
    t0 = time.monotonic()
    text, stop, _, _ = ant_stream(ant, model="claude")
    took = time.monotonic() - t0
    assert text == "from backup" and stop == "end_turn"
    assert took < FIRST_TOKEN_MS * 2.5 / 1000, took


def test_stall_after_content_ends_with_in_band_error(raw, oai, ant):
    """Content, then only pings: an idle stall. The client sees an error, never a
    complete answer."""
    ev = openai_events("partial answer here", done=False)

    async def stall(req, conn):
        await conn.send(stream_head() + chunk(b"".join(sse(d) for d in ev[:2])))
        for _ in range(int(IDLE_MS / 100) * 4):
            await conn.send(chunk(b": ping\n\n"))
            await conn.pause(0.1)
        conn.close()
        return False

    raw.default = stall
    with pytest.raises(openai.APIError):
        oai_stream(oai)

    aev = anthropic_events("partial answer here")

    async def astall(req, conn):
        await conn.send(stream_head() + chunk(b"".join(sse(d, e) for e, d in aev[:4])))
        for _ in range(int(IDLE_MS / 100) * 4):
            await conn.send(chunk(sse('{"type": "ping"}', "ping")))
            await conn.pause(0.1)
        conn.close()
        return False

    raw.default = astall
    with pytest.raises(anthropic.APIError):
        ant_stream(ant)


# ---- bodies -------------------------------------------------------------------------


def oai_whole(client, model="solo-oa"):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
    return raw, raw.parse()


def sse_body(fmt, text):
    if fmt == "openai":
        return b"".join(sse(d) for d in openai_events(text))
    return b"".join(sse(d, e) for e, d in anthropic_events(text))


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize("framing", ["content-length", "close-delimited-1.1", "http-1.0"])
def test_stream_body_framings(raw, oai, ant, fmt, framing):
    body = sse_body(fmt, "framed just so")

    async def h(req, conn):
        if framing == "content-length":
            head = stream_head(chunked=False, headers=[("content-length", str(len(body)))])
            await conn.send(head + body)
            return True
        version = "1.0" if framing == "http-1.0" else "1.1"
        await conn.send(stream_head(chunked=False, close=True, version=version))
        for i in range(0, len(body), 7):
            await conn.send(body[i : i + 7])
        conn.close()
        return False

    raw.script(h)
    if fmt == "openai":
        text, finish, usage = oai_stream(oai)
        assert text == "framed just so" and finish == "stop" and usage
    else:
        text, stop, out, types = ant_stream(ant)
        assert text == "framed just so" and stop == "end_turn" and types[-1] == "message_stop"


def test_no_accept_encoding_upstream_or_gzip_is_understood(raw, oai):
    """The SDKs send `accept-encoding: gzip, deflate`. Either Backstop does not pass it
    on (the upstream then answers plainly), or it reads what it asked for."""
    body = sse_body("openai", "maybe zipped")

    async def h(req, conn):
        ae = (req.header("accept-encoding") or "").lower()
        if "gzip" in ae:
            z = gz(body)
            await conn.send(stream_head(chunked=False, headers=[
                ("content-encoding", "gzip"), ("content-length", str(len(z)))]) + z)
        else:
            await conn.send(stream_head(chunked=False, headers=[
                ("content-length", str(len(body)))]) + body)
        return True

    raw.script(h)
    text, finish, _ = oai_stream(oai)
    assert text == "maybe zipped" and finish == "stop"
    raw.script(h)
    _, resp = oai_whole(oai)
    assert resp.choices[0].message.content == "maybe zipped"


BAD_ANSWERS = {
    "200-empty": response(200, b""),
    "200-html": response(200, b"<html><body>Welcome to the captive portal</body></html>",
                         content_type="text/html"),
    "200-json-garbage": response(200, b'{"status":"ok"}'),
    "502-html": response(502, b"<html><head><title>502 Bad Gateway</title></head>"
                              b"<body><center><h1>502 Bad Gateway</h1></center>"
                              b"<hr><center>nginx</center></body></html>", content_type="text/html"),
    "503-html": response(503, b"<!DOCTYPE html><html><body>upstream connect error</body></html>",
                         content_type="text/html; charset=utf-8"),
    "503-plain": response(503, b"no healthy upstream", content_type="text/plain"),
    "500-extra-fields": response(500, b'{"error":{"message":"The server had an error","type":"server_error",'
                                      b'"param":null,"code":null,"request_id":"req_1","retryable":true},'
                                      b'"trace":{"span":"x"}}'),
    "529-anthropic-extra": response(529, b'{"type":"error","error":{"type":"overloaded_error",'
                                         b'"message":"Overloaded","details":null},"request_id":"req_x"}'),
    "header-then-close": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n",
    "half-a-head": b"HTTP/1.1 200 OK\r\ncontent-ty",
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
@pytest.mark.parametrize("stream", [True, False])
def test_bad_answers_fail_over_invisibly(raw, oai, case, stream):
    payload = BAD_ANSWERS[case]

    async def bad(req, conn):
        await conn.send(payload)
        conn.close()
        return False

    raw.routes["/bk/"] = backup_ok()
    raw.default = bad
    if stream:
        text, finish, _ = oai_stream(oai, model="default")
    else:
        r, resp = oai_whole(oai, model="default")
        text, finish = resp.choices[0].message.content, resp.choices[0].finish_reason
        assert r.headers["x-backstop-model"] == "bk/backup-1"
    assert text == "from backup" and finish == "stop"


def test_error_body_that_stalls_is_a_timeout_not_a_wait_for_the_deadline(raw, oai):
    """A 503 whose body never finishes: a stall like any other (idle timeout), not a
    wait for `timeouts.request_ms`."""

    async def stall(req, conn):
        await conn.send(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                        b"content-length: 200\r\n\r\n{\"error\":{\"message\":\"over")
        await conn.pause(IDLE_MS * 6 / 1000)
        conn.close()
        return False

    raw.routes["/bk/"] = backup_ok()
    raw.default = stall
    t0 = time.monotonic()
    text, _, _ = oai_stream(oai, model="default")
    took = time.monotonic() - t0
    assert text == "from backup"
    # One idle timeout per attempt on it (a 503 is retried once), not the upstream's 6 s.
    assert took < IDLE_MS * 4 / 1000, took


def cooldown_until(gw, provider):
    import json as _json

    req = urllib.request.Request(gw + "/v1/cooldowns")
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return _json.loads(r.read()), None


def test_429_retry_after_ms_is_waited_on_a_lone_target(raw, oai):
    raw.script(
        lambda req, conn: _send_close(conn, response(
            429, b'{"error":{"message":"Rate limit reached","type":"requests",'
                 b'"param":null,"code":"rate_limit_exceeded"}}',
            headers=[("retry-after-ms", "400"), ("retry-after", "1")])),
    )
    raw.default = openai_stream_handler([sse(d) for d in openai_events("after wait")])
    t0 = time.monotonic()
    r = oai.chat.completions.with_raw_response.create(model="solo-oa", messages=MSG)
    took = time.monotonic() - t0
    assert r.parse().choices[0].message.content == "after wait"
    assert r.headers["x-backstop-attempts"] == "2"
    assert 0.35 < took < 0.95, took


def test_429_retry_after_http_date_is_understood(raw, oai):
    import email.utils

    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    raw.script(
        lambda req, conn: _send_close(conn, response(
            429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
            headers=[("retry-after", when)])),
    )
    raw.default = openai_stream_handler([sse(d) for d in openai_events("after date")])
    t0 = time.monotonic()
    r = oai.chat.completions.with_raw_response.create(model="solo-oa", messages=MSG)
    took = time.monotonic() - t0
    assert r.parse().choices[0].message.content == "after date"
    assert r.headers["x-backstop-attempts"] == "2"
    assert 0.5 < took < 3.5, took


async def _send_close(conn, payload):
    await conn.send(payload)
    conn.close()
    return False


def test_huge_response_headers(raw, oai):
    headers = [(f"x-upstream-{i}", "v" * 40) for i in range(90)]
    headers.append(("x-big", "b" * 32000))
    body = sse_body("openai", "big head")

    async def h(req, conn):
        await conn.send(stream_head(headers=headers) + chunk(body) + b"0\r\n\r\n")
        return True

    raw.script(h)
    text, finish, _ = oai_stream(oai)
    assert text == "big head" and finish == "stop"


# ---- connections --------------------------------------------------------------------


def test_cut_mid_chunk_after_content_is_an_error_not_a_complete_answer(raw, oai, ant):
    body = b"".join(sse(d) for d in openai_events("cut me off", done=False)[:3])

    async def cut(req, conn):
        await conn.send(stream_head() + chunk(body) + b"40\r\ndata: {\"id\":")
        conn.close()
        return False

    raw.default = cut
    with pytest.raises(openai.APIError):
        oai_stream(oai)

    abody = b"".join(sse(d, e) for e, d in anthropic_events("cut me off")[:4])

    async def acut(req, conn):
        await conn.send(stream_head() + chunk(abody) + b"40\r\nevent: content_bl")
        conn.close()
        return False

    raw.default = acut
    with pytest.raises(anthropic.APIError):
        ant_stream(ant)


def test_connection_close_on_every_response(raw, oai, ant):
    raw.default = openai_stream_handler([sse(d) for d in openai_events("fresh socket")],
                                        close_after=True)
    for _ in range(4):
        r = oai.chat.completions.with_raw_response.create(model="solo-oa", messages=MSG)
        assert r.parse().choices[0].message.content == "fresh socket"
        assert r.headers["x-backstop-attempts"] == "1"
    assert raw.connections == 4


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_keep_alive_connection_dropped_by_upstream_is_no_failure(raw, oai, gw, fmt):
    """The upstream keeps a connection alive (no `connection: close`), then drops it
    right after the answer, as servers with a short keep-alive timeout do. The next
    request finds the pooled connection dead: that is no provider failure."""
    body = sse_body(fmt, "pooled")
    model = "solo-oa" if fmt == "openai" else "solo-an"

    async def answer_then_drop(req, conn):
        await conn.send(stream_head() + chunk(body) + b"0\r\n\r\n")
        await conn.pause(0.001)
        conn.close()  # no `connection: close` said: the client believed it would stay
        return False

    raw.default = answer_then_drop
    for _ in range(12):
        r = oai.chat.completions.with_raw_response.create(model=model, messages=MSG)
        assert r.parse().choices[0].message.content == "pooled"
        assert r.headers["x-backstop-attempts"] == "1", r.headers["x-backstop-attempts"]
        time.sleep(0.002)
    listed, _ = cooldown_until(gw, "oa")
    assert not listed.get("cooldowns"), listed


def test_idle_pooled_connection_closed_by_upstream(raw, oai):
    raw.default = openai_stream_handler([sse(d) for d in openai_events("still here")])
    r = oai.chat.completions.with_raw_response.create(model="solo-oa", messages=MSG)
    assert r.parse().choices[0].message.content == "still here"
    raw.close_idle()
    time.sleep(0.05)
    r = oai.chat.completions.with_raw_response.create(model="solo-oa", messages=MSG)
    assert r.parse().choices[0].message.content == "still here"
    assert r.headers["x-backstop-attempts"] == "1"


@pytest.mark.parametrize("model", ["solo-oa", "default"])
def test_pooled_connection_closed_as_the_next_request_arrives_is_no_failure(raw, oai, gw, model):
    """The upstream's keep-alive idle close crosses the next request on that connection
    (the server closes without answering): not a provider failure, not a fallback, no
    extra attempt counted."""
    ok = openai_stream_handler([sse(d) for d in openai_events("fine")])

    async def idle_close(req, conn):
        conn.close()
        return False

    raw.routes["/bk/"] = backup_ok()
    raw.script(ok, idle_close)
    raw.default = ok
    oai.chat.completions.create(model=model, messages=MSG)
    # Let the answered connection go back to the gateway's pool, so the next request
    # takes it (sent at once, it may race a new connection, which is not this case).
    time.sleep(0.05)
    r = oai.chat.completions.with_raw_response.create(model=model, messages=MSG)
    assert r.parse().choices[0].message.content == "fine"
    assert r.headers["x-backstop-model"] == "oa/gpt-4o"
    assert r.headers["x-backstop-attempts"] == "1"
    assert len(raw.requests) == 3  # the answered one, the one cut, its resend


@pytest.mark.parametrize("stream", [False, True])
def test_connection_is_reused_when_the_body_end_comes_after_done(raw, oai, stream):
    """The upstream writes `data: [DONE]` and, a moment later, the chunked body's end.
    Backstop reads that end before letting go of the answer, so the keep-alive
    connection goes back to its pool instead of being closed (a new connection, and
    for https a TLS handshake, for every request otherwise)."""
    frames = [sse(d) for d in openai_events("kept")]

    async def done_then_end(req, conn):
        await conn.send(stream_head() + chunk(b"".join(frames)))
        await conn.pause(0.005)
        await conn.send(b"0\r\n\r\n")
        return True

    raw.default = done_then_end
    for _ in range(5):
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in oai.chat.completions.create(model="solo-oa", messages=MSG, stream=True)
                if c.choices
            )
        else:
            text = oai.chat.completions.create(model="solo-oa", messages=MSG).choices[0].message.content
        assert text == "kept"
        time.sleep(0.05)  # the connection's return to the pool is asynchronous
    # One connection for all five (none when an earlier test's is still in the pool).
    assert raw.connections <= 1, raw.connections
