"""The JSON log: one structured event per failover decision (PRODUCT §5).

Each line is one flat JSON object with no repeated key, and each decision names the
request id, `from`, `to` (the next attempt's target, or `none` when the request
ends there), the reason and the attempt number.
"""

import json
import pathlib
import tempfile
import urllib.request

from conftest import BACKSTOP_BIN, _start, _stop


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"repeated key in a log object: {keys}"
    return dict(pairs)


def test_each_failover_decision_is_one_event_with_from_and_to(fake_process, fake):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-logs-"))
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      server: {{ listen: "127.0.0.1:0" }},
      providers: {{
        oa: {{ api: "openai", base_url: "{fake_process}/v1",
              auth: [{{ profile: "one", key: "sk-log-one-0123456789" }}, {{ profile: "two", key: "sk-log-two-0123456789" }}],
              models: ["gpt-4o"] }},
        an: {{ api: "anthropic", base_url: "{fake_process}", auth: [{{ profile: "main", key: "sk-ant-log-0123456789" }}],
              models: ["claude-sonnet-4-5"] }},
      }},
      agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }} }},
      retry: {{ max_attempts: 1 }},
      state: {{ dir: "{tmp}" }},
    }}"""
    )
    log = tmp / "gateway.log"
    proc, url = _start([BACKSTOP_BIN, "--log-format", "json", "serve", "--config", str(cfg)], stderr_path=log)
    try:
        fake.script(
            {"type": "error", "status": 429, "kind": "rate_limit_exceeded"},
            {"type": "error", "status": 503, "kind": "server_error"},
            {"type": "reply", "text": "fallback answer"},
        )
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status == 200
            request_id = r.headers["x-backstop-request-id"]
            assert r.headers["x-backstop-model"] == "an/claude-sonnet-4-5"
    finally:
        _stop(proc)
    events = [json.loads(line, object_pairs_hook=no_duplicates) for line in log.read_text().splitlines() if line.startswith("{")]
    # One flat object a line: the event's own fields beside timestamp, level and message.
    assert events and all({"timestamp", "level", "message"} <= e.keys() for e in events), events[:3]
    assert not any("fields" in e for e in events), events[:3]
    fields = events
    decisions = [f for f in fields if f.get("message") == "failover decision" and f.get("request_id") == request_id]
    assert [(d["from"], d["to"], d["reason"], d["attempt"]) for d in decisions] == [
        ("oa/gpt-4o", "oa/gpt-4o", "rate_limit", 1),
        ("oa/gpt-4o", "an/claude-sonnet-4-5", "overloaded", 2),
    ], decisions
    assert [(d["from_profile"], d["to_profile"]) for d in decisions] == [("one", "two"), ("two", "main")]
    assert all(d["error"] for d in decisions), decisions
    switched = [f for f in fields if f.get("request_id") == request_id and str(f.get("message", "")).startswith("switched to")]
    assert len(switched) == 1, fields
    assert (switched[0]["from"], switched[0]["to"], switched[0]["attempt"]) == ("oa/gpt-4o", "an/claude-sonnet-4-5", 3)
