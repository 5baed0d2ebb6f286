"""No configured secret ever appears in a log line, an error, /status, /metrics or `backstop check`.

A gateway runs with known upstream and client keys at debug log level through a
session that exercises successes, fallbacks, key rejections whose error bodies
echo the key back (as OpenAI's does), streams, bad input and every operator
route; then every byte it produced is searched for every secret.
"""

import json
import pathlib
import subprocess
import tempfile
import urllib.error
import urllib.request

from conftest import BACKSTOP_BIN, _start, _stop

SECRETS = {
    "BACKSTOP_T_CLIENT": "sk-client-secret-7f3a9c1e5b2d4f60",
    "BACKSTOP_T_OA1": "sk-proj-upstream-one-a1b2c3d4e5f6a7b8",
    "BACKSTOP_T_OA2": "sk-proj-upstream-two-9z8y7x6w5v4u3t2s",
    "BACKSTOP_T_AN": "sk-ant-api03-upstream-q1w2e3r4t5y6u7i8",
    "BACKSTOP_T_HDR": "hdr-secret-0b1c2d3e4f5a6b7c8d9e",
}


def needles(secret):
    """The secret and a long middle slice of it (a partial echo is a leak too)."""
    return [secret, secret[4:-4]]


def call(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def test_no_secret_in_any_output(fake_process, fake):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-secrets-"))
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      server: {{ listen: "127.0.0.1:0", api_keys: ["$BACKSTOP_T_CLIENT"] }},
      providers: {{
        oa: {{ api: "openai", base_url: "{fake_process}/v1",
              auth: [{{ profile: "one", key: "$BACKSTOP_T_OA1" }}, {{ profile: "two", key: "$BACKSTOP_T_OA2" }}],
              headers: {{ "x-extra-auth": "$BACKSTOP_T_HDR" }},
              models: ["gpt-4o"] }},
        an: {{ api: "anthropic", base_url: "{fake_process}", auth: [{{ key: "$BACKSTOP_T_AN" }}],
              models: ["claude-sonnet-4-5"] }},
      }},
      agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }} }},
      retry: {{ max_attempts: 1, backoff_ms: 5 }},
      timeouts: {{ connect_ms: 2000, first_token_ms: 3000, idle_ms: 3000, request_ms: 10000 }},
      state: {{ dir: "{tmp}" }},
    }}"""
    )
    env = {**SECRETS, "BACKSTOP_LOG": "debug", "BACKSTOP_STATE_DIR": str(tmp)}
    log = tmp / "gateway.log"
    proc, url = _start([BACKSTOP_BIN, "--log-format", "json", "serve", "--config", str(cfg)], env=env, stderr_path=log)
    outputs = []
    try:
        auth = {"authorization": f"Bearer {SECRETS['BACKSTOP_T_CLIENT']}"}
        chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        # Key one is rejected with a body that echoes the key (as OpenAI's 401 does), then
        # key two is out of quota, then the Anthropic fallback answers.
        echo_one = f"Incorrect API key provided: {SECRETS['BACKSTOP_T_OA1']}. You can find your API key at https://platform.openai.com/account/api-keys."
        fake.script(
            {"type": "error", "status": 401, "body": {"error": {"message": echo_one, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}},
            {"type": "error", "status": 429, "kind": "insufficient_quota"},
            {"type": "reply", "text": "fallback answer"},
        )
        outputs.append(call("POST", url + "/v1/chat/completions", chat, auth))
        # Streams, and a request every target fails (the error lists attempts).
        fake.script({"type": "error", "status": 500, "body": {"error": {"message": f"boom {SECRETS['BACKSTOP_T_AN']}", "type": "server_error"}}})
        outputs.append(call("POST", url + "/v1/messages", {"model": "an/claude-sonnet-4-5", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]}, {"x-api-key": SECRETS["BACKSTOP_T_CLIENT"]}))
        outputs.append(call("POST", url + "/v1/chat/completions", {**chat, "stream": True}, auth))
        # Bad input and bad keys.
        outputs.append(call("POST", url + "/v1/chat/completions", {"model": 3}, auth))
        outputs.append(call("POST", url + "/v1/chat/completions", chat, {"authorization": "Bearer " + SECRETS["BACKSTOP_T_OA1"]}))
        # Operator routes.
        for path in ["/status", "/metrics", "/v1/models", "/v1/cooldowns", "/ready", "/health"]:
            outputs.append(call("GET", url + path, None, auth))
        outputs.append(call("GET", url + "/status", None, {**auth, "accept": "text/html"}))
        check = subprocess.run([BACKSTOP_BIN, "check", "--config", str(cfg)], env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        outputs.append((0, {}, check.stdout + check.stderr))
    finally:
        _stop(proc)
    # The upstreams did get their keys (the test would prove nothing otherwise).
    seen = json.dumps(fake.requests())
    assert SECRETS["BACKSTOP_T_OA1"] in seen and SECRETS["BACKSTOP_T_AN"] in seen and SECRETS["BACKSTOP_T_HDR"] in seen
    texts = [log.read_text()] + [json.dumps(h) + body for _, h, body in outputs]
    for state_file in tmp.glob("*.json"):
        texts.append(state_file.read_text())
    assert "fallback answer" in texts[1], texts[1]
    for name, secret in SECRETS.items():
        for needle in needles(secret):
            for t in texts:
                assert needle not in t, f"{name} leaked: ...{t[max(0, t.find(needle) - 200): t.find(needle) + 100]}..."
