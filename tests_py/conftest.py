"""Fixtures for the client tests: a scripted fake provider and a real gateway process.

The fake provider (`backstop-fake`) speaks the real OpenAI, Anthropic and Gemini
wire formats; the gateway (`backstop serve`) is the real binary. The official SDKs
talk to the gateway exactly as they would to a provider.
"""

import os
import pathlib
import subprocess
import tempfile
import time

import json
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BACKSTOP_BIN = os.environ.get("BACKSTOP_BIN", str(TARGET / "debug" / "backstop"))
FAKE_BIN = os.environ.get("FAKE_BIN", str(TARGET / "debug" / "backstop-fake"))

# Keys the gateway holds for the fake upstreams, and the key clients use.
UPSTREAM_OPENAI_KEY = "sk-upstream-openai-0123456789abcdef"
UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-0123456789abcdef"
UPSTREAM_GEMINI_KEY = "AIza-upstream-gemini-0123456789abcdef"
CLIENT_KEY = "sk-backstop-client-0123456789abcdef"


def _start(cmd, env=None, stderr_path=None):
    """Start a process that prints `listening on http://HOST:PORT`; return (proc, base_url).

    With `stderr_path`, the process's log goes to that file (tests read it back)."""
    stderr = open(stderr_path, "w") if stderr_path else subprocess.PIPE
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else open(stderr_path).read()
            raise RuntimeError(f"{cmd[0]} exited before listening: {err}")
        if line.startswith("listening on "):
            return proc, line.split("listening on ", 1)[1].strip()
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start in time")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Fake:
    """Drives the fake provider over its control endpoints."""

    def __init__(self, url):
        self.url = url

    def _call(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def script(self, *steps):
        self._call("POST", "/_fake/script", list(steps))

    def default(self, step):
        self._call("POST", "/_fake/default", step)

    def requests(self):
        return self._call("GET", "/_fake/requests")

    def reset(self):
        self._call("POST", "/_fake/reset", {})


@pytest.fixture(scope="session")
def fake_process():
    proc, url = _start([FAKE_BIN, "--listen", "127.0.0.1:0"])
    yield url
    _stop(proc)


@pytest.fixture
def fake(fake_process):
    f = Fake(fake_process)
    f.reset()
    yield f
    f.reset()


def gateway_config(fake_url):
    """A config with an OpenAI-style, an Anthropic-style and a Gemini provider, all on the fake."""
    return f"""
    {{
      server: {{ listen: "127.0.0.1:0", api_keys: ["$BACKSTOP_TEST_CLIENT_KEY"] }},
      providers: {{
        oa: {{ api: "openai", base_url: "{fake_url}/v1",
              auth: [{{ profile: "main", key: "$BACKSTOP_TEST_OPENAI_KEY" }}],
              models: ["gpt-4o", "gpt-4o-mini"] }},
        an: {{ api: "anthropic", base_url: "{fake_url}",
              auth: [{{ profile: "main", key: "$BACKSTOP_TEST_ANTHROPIC_KEY" }}],
              models: ["claude-sonnet-4-5", {{ id: "claude-haiku-4-5", context_window: 200000 }}] }},
        gm: {{ api: "gemini", base_url: "{fake_url}",
              auth: [{{ profile: "main", key: "$BACKSTOP_TEST_GEMINI_KEY" }}],
              models: ["gemini-2.5-flash"] }},
      }},
      agents: {{
        defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }},
        list: [
          {{ id: "claude-first", model: {{ primary: "an/claude-sonnet-4-5", fallbacks: ["oa/gpt-4o"] }} }},
          {{ id: "solo-openai", model: {{ primary: "oa/gpt-4o-mini", fallbacks: [] }} }},
          {{ id: "solo-anthropic", model: {{ primary: "an/claude-haiku-4-5", fallbacks: [] }} }},
          {{ id: "solo-gemini", model: {{ primary: "gm/gemini-2.5-flash", fallbacks: [] }} }},
        ],
      }},
      retry: {{ max_attempts: 2, backoff_ms: 10 }},
      timeouts: {{ connect_ms: 2000, first_token_ms: 5000, idle_ms: 5000, request_ms: 20000 }},
    }}
    """


@pytest.fixture(scope="session")
def gateway(fake_process):
    """A running gateway in front of the fake; yields its base URL (no path)."""
    tmp = tempfile.mkdtemp(prefix="backstop-test-")
    cfg = pathlib.Path(tmp) / "backstop.json5"
    cfg.write_text(gateway_config(fake_process))
    env = {
        "BACKSTOP_TEST_CLIENT_KEY": CLIENT_KEY,
        "BACKSTOP_TEST_OPENAI_KEY": UPSTREAM_OPENAI_KEY,
        "BACKSTOP_TEST_ANTHROPIC_KEY": UPSTREAM_ANTHROPIC_KEY,
        "BACKSTOP_TEST_GEMINI_KEY": UPSTREAM_GEMINI_KEY,
        "BACKSTOP_STATE_DIR": tmp,
    }
    proc, url = _start([BACKSTOP_BIN, "serve", "--config", str(cfg)], env=env)
    yield url
    _stop(proc)


@pytest.fixture(autouse=True)
def fresh_cooldowns(request):
    """Each test starts with no cooldowns left over from the one before."""
    if "gateway" in request.fixturenames:
        url = request.getfixturevalue("gateway")
        req = urllib.request.Request(url + "/v1/cooldowns", method="DELETE")
        req.add_header("authorization", f"Bearer {CLIENT_KEY}")
        urllib.request.urlopen(req, timeout=10).close()
    yield


@pytest.fixture
def openai_client(gateway, fake):
    import openai

    return openai.OpenAI(base_url=gateway + "/v1", api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture
def anthropic_client(gateway, fake):
    import anthropic

    return anthropic.Anthropic(base_url=gateway, api_key=CLIENT_KEY, max_retries=0)


# A tool in OpenAI's shape, shared by the SDK tests.
OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
