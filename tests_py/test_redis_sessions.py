"""Two gateway processes sharing sessions through one Redis (`state.redis_url`): a session
pinned through gateway A is served as pinned by gateway B, to the official OpenAI and
Anthropic SDKs alike. Starts its own `redis-server` (Debian package; `.ci/run` installs it)."""

import json
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request

import anthropic
import openai

from conftest import BACKSTOP_BIN, CLIENT_KEY, _start, _stop


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port):
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not listen"
            time.sleep(0.02)


def start_redis():
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return proc, port


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def keys_used(fake):
    out = []
    for r in fake.requests():
        for k, v in r["headers"]:
            if k.lower() == "authorization":
                out.append(v.removeprefix("Bearer "))
    return out


def test_a_session_pinned_through_one_gateway_is_served_as_pinned_by_the_other(fake_process, fake):
    redis, port = start_redis()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-redis-sessions-"))
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      server: {{ api_keys: ["{CLIENT_KEY}"] }},
      providers: {{ oa: {{ api: "openai", base_url: "{fake_process}/v1",
                          auth: [{{ profile: "a", key: "key-a" }}, {{ profile: "b", key: "key-b" }}],
                          models: ["gpt-4o"] }} }},
      auth: {{ order: {{ oa: ["a", "b"] }} }},
      agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: [] }} }} }},
      state: {{ dir: "{tmp}", redis_url: "redis://127.0.0.1:{port}" }},
    }}"""
    )
    gateways = [
        _start([BACKSTOP_BIN, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"], env={"BACKSTOP_LOG": "warn"})
        for _ in range(2)
    ]
    (_, a), (_, b) = gateways
    try:
        fake.reset()
        status, view = call("PUT", f"{a}/v1/sessions/agent-1", {"profile": "b"})
        assert status == 200, view
        deadline = time.monotonic() + 5
        while True:
            status, view = call("GET", f"{b}/v1/sessions/agent-1")
            if status == 200:
                break
            assert status == 404 and time.monotonic() < deadline, (status, view)
            time.sleep(0.01)
        assert view["profile_override"] == "b" and view["profile_override_source"] == "user", view

        session = {"x-backstop-session": "agent-1"}
        oa = openai.OpenAI(base_url=b + "/v1", api_key=CLIENT_KEY, max_retries=0, default_headers=session)
        reply = oa.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        an = anthropic.Anthropic(base_url=b, api_key=CLIENT_KEY, max_retries=0, default_headers=session)
        msg = an.messages.create(model="default", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].text
        # Both went out on the pinned key, though "a" comes first in auth.order …
        assert keys_used(fake) == ["key-b", "key-b"]
        # … and without the session, B starts at "a".
        fake.reset()
        plain = openai.OpenAI(base_url=b + "/v1", api_key=CLIENT_KEY, max_retries=0)
        plain.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        assert keys_used(fake) == ["key-a"]
    finally:
        for proc, _ in gateways:
            _stop(proc)
        redis.kill()
        redis.wait()
