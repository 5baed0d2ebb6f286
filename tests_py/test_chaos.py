"""Failover under concurrency, as an outside fault-injection suite tests it (PRODUCT §3.2–3.5, §4).

Two fake providers: P serves both primaries (an OpenAI-style and an Anthropic-style
provider) and flaps through a seeded script of 429s with Retry-After, 503s, 529s,
resets, silent stalls and hangs; F serves both fallbacks and is always healthy. Many
threads drive the real gateway with the official SDKs (`max_retries=0`), both
ingress formats, streamed and not, half of them on sessions, while another thread
polls `/status`. Then the invariants:

- no client sees an error (the fallback is healthy), every answer is well formed and
  is the echo of its own prompt, and no request takes longer than `timeouts.request_ms`;
- `x-backstop-model` names the provider/model whose fake recorded the request (each
  prompt carries a unique token, since Backstop sends no request id upstream), and
  `x-backstop-fallback` is there exactly when the chain's first model did not answer;
- `x-backstop-attempts` equals what the fakes recorded for that token, except for the
  documented keep-alive resend after a reset (README "How failover works");
- the retry budget holds: attempts ≤ requests × 1.2 + the 10/s floor over the run;
- every session reads back with only the fields of PRODUCT §8, pins that name configured
  models, and after one more request while the primary is disabled, the fallback;
- `/status` is valid JSON of the §8 shape throughout;
- a SIGTERM under load keeps the cooldowns: the state file is valid JSON, and after a
  restart on the same state dir the cooldowns are listed and the primary is skipped.
"""

import concurrent.futures
import json
import os
import pathlib
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import BACKSTOP_BIN, CLIENT_KEY, FAKE_BIN, Fake, _start, _stop

SEED = int(os.environ.get("BACKSTOP_CHAOS_SEED", "20261121"))
REQUEST_MS = 4000
THREADS = 32
PER_THREAD = 30
SESSIONS = [f"chaos-s{i}" for i in range(8)]
# A session whose model the user pins (PUT) to its primary in the middle of the run,
# while the engine writes its own pins for that session's concurrent requests.
USER_SESSION = SESSIONS[0]

# chain (the client's `model`) -> (primary, fallback), as `provider/model`
CHAINS = {
    "default": ("poa/gpt-4o", "fan/claude-haiku-4-5"),
    "an-chain": ("pan/claude-sonnet-4-5", "foa/gpt-4o-mini"),
}
CONFIGURED = {m for pair in CHAINS.values() for m in pair}
SESSION_FIELDS = {
    "id",
    "provider_override",
    "model_override",
    "profile_override",
    "model_override_source",
    "profile_override_source",
    "fallback_notice",
    "updated_at",
}
STATES = {"ok", "degraded", "cooldown", "disabled", "half_open"}
REASONS = {
    "rate_limit", "overloaded", "timeout", "server_error", "auth", "auth_permanent",
    "billing", "model_not_found", "context_overflow", "content_policy", "bad_request", "aborted",
}

ENV = {
    "BACKSTOP_TEST_CLIENT_KEY": CLIENT_KEY,
    "CHAOS_KEY_PO": "sk-chaos-primary-openai-0123456789",
    "CHAOS_KEY_PA": "sk-ant-chaos-primary-0123456789",
    "CHAOS_KEY_FO": "sk-chaos-fallback-openai-0123456789",
    "CHAOS_KEY_FA": "sk-ant-chaos-fallback-0123456789",
    "BACKSTOP_LOG": "warn",
}


def write_config(path, p_url, f_url, state_dir, fast_ladders=True):
    ladders = (
        "auth: { cooldowns: { transient: { base_ms: 50, cap_ms: 400 }, probe_interval_ms: 50 } },"
        if fast_ladders
        else ""
    )
    path.write_text(
        f"""{{
      server: {{ listen: "127.0.0.1:0", api_keys: ["$BACKSTOP_TEST_CLIENT_KEY"] }},
      providers: {{
        poa: {{ api: "openai", base_url: "{p_url}/v1", auth: [{{ profile: "main", key: "$CHAOS_KEY_PO" }}],
               models: ["gpt-4o"] }},
        pan: {{ api: "anthropic", base_url: "{p_url}", auth: [{{ profile: "main", key: "$CHAOS_KEY_PA" }}],
               models: ["claude-sonnet-4-5"] }},
        foa: {{ api: "openai", base_url: "{f_url}/v1", auth: [{{ profile: "main", key: "$CHAOS_KEY_FO" }}],
               models: ["gpt-4o-mini"] }},
        fan: {{ api: "anthropic", base_url: "{f_url}", auth: [{{ profile: "main", key: "$CHAOS_KEY_FA" }}],
               models: ["claude-haiku-4-5"] }},
      }},
      {ladders}
      agents: {{
        defaults: {{ model: {{ primary: "poa/gpt-4o", fallbacks: ["fan/claude-haiku-4-5"] }} }},
        list: [ {{ id: "an-chain", model: {{ primary: "pan/claude-sonnet-4-5", fallbacks: ["foa/gpt-4o-mini"] }} }} ],
      }},
      retry: {{ max_attempts: 2, backoff_ms: 10, max_retry_after_ms: 300 }},
      timeouts: {{ connect_ms: 1000, first_token_ms: 400, idle_ms: 400, request_ms: {REQUEST_MS} }},
      state: {{ dir: "{state_dir}" }},
    }}"""
    )


def http(method, url, body=None, timeout=10, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    req.add_header("authorization", f"Bearer {CLIENT_KEY}")
    req.add_header("accept", "application/json")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def primary_script(rng, n):
    """Flapping: healthy runs, then bursts of one fault kind. Returns (steps, resets)."""
    faults = [
        ({"type": "error", "status": 429, "kind": "rate_limit", "retry_after": "1"}, 3),
        ({"type": "error", "status": 503, "kind": "unavailable"}, 3),
        ({"type": "error", "status": 529, "kind": "overloaded_error"}, 2),
        ({"type": "error", "status": 500, "kind": "server_error"}, 2),
        ({"type": "reset"}, 2),
        ({"type": "stream_then_stall", "text": "never", "after_chunks": 0}, 1),
        ({"type": "hang"}, 1),
        ({"type": "reply", "text": "slow", "first_token_delay_ms": 900}, 1),
    ]
    weights = [w for _, w in faults]
    steps = []
    while len(steps) < n:
        steps += [{"type": "echo"}] * rng.randint(1, 6)
        fault = rng.choices([f for f, _ in faults], weights)[0]
        steps += [fault] * rng.randint(1, 4)
    steps = steps[:n]
    return steps, sum(1 for s in steps if s["type"] == "reset")


def which_provider(fake_name, rec):
    api = "oa" if rec["path"].endswith("/chat/completions") else "an"
    return f"{fake_name}{api}/{rec['body'].get('model')}"


def token_of(rec):
    return None if not isinstance(rec["body"], dict) else _find_token(json.dumps(rec["body"]))


def _find_token(text):
    i = text.find("chaos-tok-")
    if i < 0:
        return None
    j = i + len("chaos-tok-")
    while j < len(text) and text[j].isdigit():
        j += 1
    return text[i:j]


def call_openai(client, chain, prompt, stream, headers):
    raw = client.chat.completions.with_raw_response.create(
        model=chain,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=stream,
        extra_headers=headers,
    )
    parsed = raw.parse()
    if stream:
        text, finish = "", None
        for chunk in parsed:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert finish is not None, "stream ended without a finish_reason"
    else:
        assert parsed.object == "chat.completion"
        text = parsed.choices[0].message.content
        assert parsed.choices[0].finish_reason is not None
    return raw.headers, text


def call_anthropic(client, chain, prompt, stream, headers):
    raw = client.messages.with_raw_response.create(
        model=chain,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=stream,
        extra_headers=headers,
    )
    parsed = raw.parse()
    if stream:
        text, kinds = "", []
        for event in parsed:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    else:
        assert parsed.type == "message" and parsed.role == "assistant"
        assert parsed.stop_reason is not None
        text = "".join(b.text for b in parsed.content if b.type == "text")
    return raw.headers, text


class StatusPoller(threading.Thread):
    """Polls /status (JSON) and records every answer that is not the §8 shape."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.polls = 0
        self.problems = []

    def run(self):
        while not self.stop.is_set():
            try:
                status, body = http("GET", self.url + "/status", timeout=5)
                self.polls += 1
                self.problems += [f"poll {self.polls}: {p}" for p in status_problems(status, body)]
            except Exception as e:  # noqa: BLE001 - any failure to answer is a finding
                self.problems.append(f"poll {self.polls}: {e!r}")
            self.stop.wait(0.05)


def status_problems(status, body):
    if status != 200:
        return [f"status {status}"]
    if not isinstance(body, dict):
        return [f"not a JSON object: {str(body)[:200]}"]
    out = []
    for key in ("providers", "chains", "events"):
        if not isinstance(body.get(key), list):
            out.append(f"{key} missing or not a list")
    for p in body.get("providers") or []:
        for key in ("id", "api", "profiles", "models"):
            if key not in p:
                out.append(f"provider without {key}: {p}")
        for item in (p.get("profiles") or []) + (p.get("models") or []):
            if item.get("state") not in STATES:
                out.append(f"{p.get('id')}: bad state {item.get('state')!r}")
            # A model that is slow or erroring without a cooldown is `degraded`, and says
            # so as its reason (README "Health and degradation").
            allowed = REASONS | ({"degraded"} if item.get("state") == "degraded" else set())
            if item.get("reason") is not None and item["reason"] not in allowed:
                out.append(f"{p.get('id')}: bad reason {item.get('reason')!r}")
    for c in body.get("chains") or []:
        for key in ("agent", "targets", "active"):
            if key not in c:
                out.append(f"chain without {key}: {c}")
    return out


@pytest.fixture(scope="module")
def two_fakes():
    p_proc, p_url = _start([FAKE_BIN, "--listen", "127.0.0.1:0"])
    f_proc, f_url = _start([FAKE_BIN, "--listen", "127.0.0.1:0"])
    yield Fake(p_url), Fake(f_url)
    _stop(p_proc)
    _stop(f_proc)


@pytest.fixture
def chaos_gateway(two_fakes, tmp_path):
    P, F = two_fakes
    P.reset()
    F.reset()
    tmp = tmp_path
    cfg = tmp / "backstop.json5"
    write_config(cfg, P.url, F.url, tmp / "state")
    proc, url = _start([BACKSTOP_BIN, "serve", "--config", str(cfg)], env=ENV)
    yield url, P, F, cfg
    _stop(proc)


def test_flapping_primary_under_concurrent_load(chaos_gateway):
    import anthropic
    import openai

    url, P, F, _cfg = chaos_gateway
    rng = random.Random(SEED)
    total = THREADS * PER_THREAD
    steps, resets_scripted = primary_script(rng, total)
    P.script(*steps)

    oa = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=REQUEST_MS / 1000 + 5)
    an = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0, timeout=REQUEST_MS / 1000 + 5)
    # Each session stays on one chain (so "its fallback" is well defined).
    session_chain = {s: list(CHAINS)[i % len(CHAINS)] for i, s in enumerate(SESSIONS)}
    plans = []
    for n in range(total):
        session = rng.choice(SESSIONS) if rng.random() < 0.5 else None
        chain = session_chain[session] if session else rng.choice(list(CHAINS))
        plans.append((n, rng.choice(["openai", "anthropic"]), chain, rng.random() < 0.5, session))

    def one(plan):
        n, sdk, chain, stream, session = plan
        token = f"chaos-tok-{n}"
        headers = {"x-backstop-session": session} if session else {}
        started = time.monotonic()
        try:
            call = call_openai if sdk == "openai" else call_anthropic
            h, text = call(oa if sdk == "openai" else an, chain, f"say {token}", stream, headers)
            error = None
        except Exception as e:  # noqa: BLE001 - a client error is the finding
            h, text, error = {}, None, f"{type(e).__name__}: {e}"
        return {
            "n": n, "token": token, "sdk": sdk, "chain": chain, "stream": stream, "session": session,
            "elapsed": time.monotonic() - started, "error": error, "text": text,
            "rid": h.get("x-backstop-request-id"), "model": h.get("x-backstop-model"),
            "attempts": h.get("x-backstop-attempts"), "fallback": h.get("x-backstop-fallback"),
        }

    user_pin = CHAINS[session_chain[USER_SESSION]][0]

    def pin_mid_run():
        time.sleep(1.0)
        status, body = http("PUT", f"{url}/v1/sessions/{USER_SESSION}", {"model": user_pin})
        assert status == 200, (status, body)

    poller = StatusPoller(url)
    poller.start()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS + 1) as pool:
        pinned = pool.submit(pin_mid_run)
        results = list(pool.map(one, plans))
        pinned.result()
    run_secs = time.monotonic() - started
    poller.stop.set()
    poller.join()

    # Correlate what each fake recorded with the request that sent it.
    recorded = {}
    for name, fake in (("p", P), ("f", F)):
        for rec in fake.requests():
            recorded.setdefault(token_of(rec), []).append(which_provider(name, rec))
    problems = []
    excess = 0
    for r in results:
        tag = f"#{r['n']} {r['sdk']} {r['chain']} stream={r['stream']} session={r['session']} rid={r['rid']}"
        if r["error"]:
            problems.append(f"{tag}: client error {r['error']}")
            continue
        if r["text"] != f"echo: say {r['token']}":
            problems.append(f"{tag}: answer {r['text']!r}")
        if r["elapsed"] * 1000 > REQUEST_MS + 1000:
            problems.append(f"{tag}: took {r['elapsed']:.2f}s (request_ms {REQUEST_MS})")
        seen = recorded.get(r["token"], [])
        primary, fallback = CHAINS[r["chain"]]
        if r["model"] not in (primary, fallback):
            problems.append(f"{tag}: x-backstop-model {r['model']!r} is not in the chain")
        elif r["model"] not in seen:
            problems.append(f"{tag}: x-backstop-model {r['model']} but the fakes saw {seen}")
        elif r["model"] == primary and fallback in seen:
            problems.append(f"{tag}: primary answered after the fallback was tried: {seen}")
        if (r["fallback"] is not None) != (r["model"] == fallback):
            problems.append(f"{tag}: x-backstop-fallback {r['fallback']!r} with model {r['model']}")
        if r["fallback"] is not None and r["fallback"] not in REASONS | {"degraded"}:
            problems.append(f"{tag}: x-backstop-fallback {r['fallback']!r} is not a reason")
        if r["attempts"] is None or not r["attempts"].isdigit():
            problems.append(f"{tag}: x-backstop-attempts {r['attempts']!r}")
            continue
        diff = len(seen) - int(r["attempts"])
        if diff < 0:
            problems.append(f"{tag}: x-backstop-attempts {r['attempts']} but the fakes saw {len(seen)}: {seen}")
        excess += max(diff, 0)
    # A reset on a reused connection is sent once more, uncounted (documented): at most
    # one extra recorded request per scripted reset.
    if excess > resets_scripted:
        problems.append(f"{excess} recorded requests beyond x-backstop-attempts, only {resets_scripted} resets scripted")
    stray = {t: v for t, v in recorded.items() if t is None}
    if stray:
        problems.append(f"requests without a token reached the fakes: {stray}")
    from collections import Counter

    print(
        f"\nchaos seed={SEED}: {total} requests in {run_secs:.1f}s, answered by",
        dict(Counter(r["model"] for r in results)), "attempts", dict(Counter(r["attempts"] for r in results)),
        f"primary steps consumed {len(P.requests())}/{len(steps)}, excess {excess}, status polls {poller.polls}",
        f"max latency {max(r['elapsed'] for r in results):.2f}s", "fallback reasons",
        dict(Counter(r["fallback"] for r in results)),
    )
    assert not problems, f"{len(problems)} of {total} requests broke an invariant:\n" + "\n".join(problems[:40])

    # §3.4: retries and failovers together within 20 % of traffic plus 10/s (over the
    # budget's 10 s window: at most 100 a window).
    upstream = sum(len(v) for t, v in recorded.items() if t is not None) - excess
    windows = int(run_secs // 10) + 1
    assert upstream <= total * 1.2 + 100 * windows, (upstream, total, run_secs)
    assert poller.polls >= 3 and not poller.problems, poller.problems[:20]

    # §3.5: sessions read back with the §8 fields only, naming configured models.
    for s in SESSIONS:
        status, body = http("GET", f"{url}/v1/sessions/{s}")
        if status == 404:
            continue
        assert status == 200, (s, status, body)
        assert set(body) <= SESSION_FIELDS, (s, sorted(set(body) - SESSION_FIELDS))
        assert body["id"] == s
        if body.get("model_override") is not None:
            assert f"{body['provider_override']}/{body['model_override']}" in CONFIGURED, body
            assert body.get("model_override_source") in ("auto", "user"), body
        if body.get("profile_override") is not None:
            assert body["profile_override"] == "main", body
            assert body.get("profile_override_source") in ("auto", "user"), body

    # §5/§8 metrics agree with what the clients saw, under concurrency.
    req = urllib.request.Request(url + "/metrics", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        metrics = r.read().decode()

    def metric_sum(name):
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))

    assert metric_sum("backstop_requests_total") == total, metrics
    assert metric_sum("backstop_attempts_total") == sum(int(r["attempts"]) for r in results), metrics
    assert metric_sum("backstop_failovers_total") == sum(r["fallback"] is not None for r in results), metrics

    # The user's pin survived every concurrent engine write and rollback.
    status, body = http("GET", f"{url}/v1/sessions/{USER_SESSION}")
    assert (f"{body.get('provider_override')}/{body.get('model_override')}", body.get("model_override_source")) == (
        user_pin, "user"), body

    # Now both primaries lose their key: disabled (auth ladder, minutes) while the
    # fallbacks stay healthy. One more request on each session must leave it on its
    # fallback, never pointing at the disabled primary.
    P.reset()
    P.default({"type": "error", "status": 401, "kind": "invalid_api_key"})
    http("DELETE", url + "/v1/cooldowns")
    # No fallbacks for these two (a primary marked degraded by the flapping would be put
    # after its fallback and not tried): each primary answers 401 and is disabled.
    for chain in CHAINS:
        status, body = http("POST", url + "/v1/chat/completions",
                            {"model": chain, "messages": [{"role": "user", "content": "x"}]},
                            headers={"x-backstop-fallbacks": ""})
        assert status == 503 and "auth [401]" in body["error"]["message"], (chain, status, body)
    status, body = http("GET", url + "/v1/cooldowns")
    cooling = {c["scope"] for c in body["cooldowns"] if c["state"] == "open"}
    assert {"poa:main", "pan:main"} <= cooling, body
    tried = len(P.requests())
    for s in SESSIONS:
        chain = session_chain[s]
        h, text = call_anthropic(an, chain, f"say chaos-tok-{s}", True, {"x-backstop-session": s})
        assert h.get("x-backstop-model") == CHAINS[chain][1], (s, dict(h))
        assert h.get("x-backstop-attempts") == "1", (s, dict(h))
        status, body = http("GET", f"{url}/v1/sessions/{s}")
        assert status == 200, (s, status, body)
        pin = f"{body.get('provider_override')}/{body.get('model_override')}"
        if s == USER_SESSION:
            # A user pin is honoured and survives; the fallback serves meanwhile.
            assert (pin, body.get("model_override_source")) == (user_pin, "user"), body
        else:
            assert pin == CHAINS[chain][1], (s, body)
            assert CHAINS[chain][1] in (body.get("fallback_notice") or ""), (s, body)
    assert P.requests()[tried:] == [], "a disabled primary was tried"


def test_retry_budget_caps_a_storm_on_a_lone_target(chaos_gateway):
    """§3.4: a chain with nowhere else to go, its only target failing every request:
    retries stay within 20 % of the requests plus the 10/s floor (100 over the budget's
    10 s window), and every client gets a well-formed error listing the attempt."""
    url, P, _F, _cfg = chaos_gateway
    P.default({"type": "error", "status": 503, "kind": "unavailable"})
    total = 400

    def one(i):
        return http("POST", url + "/v1/chat/completions",
                    {"model": "default", "messages": [{"role": "user", "content": f"storm {i}"}]},
                    headers={"x-backstop-fallbacks": ""})

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(total)))
    secs = time.monotonic() - started
    assert secs < 10, secs
    bad = [(st, b) for st, b in answers
           if st != 503 or "poa/gpt-4o (main)" not in ((b or {}).get("error") or {}).get("message", "")]
    assert not bad, bad[:5]
    seen = len(P.requests())
    assert total <= seen <= total * 1.2 + 100, (seen, total)


def test_half_open_primary_gets_exactly_one_probe_from_a_burst(chaos_gateway):
    """§3.3: when a cooldown expires exactly one request probes the scope; a burst of
    concurrent requests meanwhile goes to the fallback, and nobody sees an error."""
    url, P, F, _cfg = chaos_gateway
    P.script({"type": "error", "status": 503, "kind": "unavailable"},
             {"type": "error", "status": 503, "kind": "unavailable"})
    status, body = http("POST", url + "/v1/chat/completions",
                        {"model": "default", "messages": [{"role": "user", "content": "trip"}]})
    assert status == 200, body
    _, body = http("GET", url + "/v1/cooldowns")
    until = max(c["until_ms"] for c in body["cooldowns"] if c["scope"].startswith("poa:"))
    # The ladder of this config is 50 ms → 400 ms: wait out the cooldown (real time, short).
    while time.time() * 1000 < until + 20:
        time.sleep(0.02)
    P.reset()
    F.reset()
    # The probe is slow (but within first_token_ms), so the burst arrives while it runs.
    P.default({"type": "reply", "text": "probe ok", "first_token_delay_ms": 300})

    def one(i):
        req = urllib.request.Request(
            url + "/v1/chat/completions", method="POST",
            data=json.dumps({"model": "default", "messages": [{"role": "user", "content": f"burst {i}"}]}).encode(),
            headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["x-backstop-model"]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert all(st == 200 for st, _ in answers), answers
    assert len(P.requests()) == 1, f"{len(P.requests())} probes of a half-open primary"
    assert sum(m == "poa/gpt-4o" for _, m in answers) == 1, answers
    assert len(F.requests()) == 19


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_no_stream_runs_past_the_request_deadline(chaos_gateway, sdk):
    """§3.4: the primary hangs, the fallback streams steadily but too long: the client's
    stream ends by `timeouts.request_ms` with an error in its SDK, never later."""
    import anthropic
    import openai

    url, P, F, _cfg = chaos_gateway
    P.default({"type": "hang"})
    words = " ".join(f"w{i}" for i in range(40))
    F.default({"type": "reply", "text": words, "chunk_delay_ms": 150})  # 6 s in all
    started = time.monotonic()
    text = ""
    with pytest.raises((openai.APIError, anthropic.APIError)):
        if sdk == "openai":
            client = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
            for chunk in client.chat.completions.create(
                    model="default", messages=[{"role": "user", "content": "long"}], stream=True):
                text += "".join(c.delta.content or "" for c in chunk.choices)
        else:
            client = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)
            for event in client.messages.create(
                    model="default", max_tokens=64, messages=[{"role": "user", "content": "long"}], stream=True):
                if event.type == "content_block_delta":
                    text += event.delta.text
    elapsed = time.monotonic() - started
    assert elapsed * 1000 < REQUEST_MS + 1000, elapsed
    assert text.startswith("w0 w1") and text != words, text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stop_under_load_keeps_cooldowns(two_fakes, sig, tmp_path):
    """§4: cooldowns survive a restart, also one that interrupts the load; a crash at any
    instant leaves readable files (atomic writes)."""
    P, F = two_fakes
    P.reset()
    F.reset()
    tmp = tmp_path
    state = tmp / "state"
    cfg = tmp / "backstop.json5"
    write_config(cfg, P.url, F.url, state, fast_ladders=False)
    proc, url = _start([BACKSTOP_BIN, "serve", "--config", str(cfg)], env=ENV)
    try:
        # Both primaries fail: the OpenAI one with a 503 (transient, 30 s by default), the
        # Anthropic one loses its key (auth: 5 min, whole profile).
        P.script({"type": "error", "status": 503, "kind": "unavailable"},
                 {"type": "error", "status": 503, "kind": "unavailable"})
        status, body = http("POST", url + "/v1/chat/completions",
                            {"model": "default", "messages": [{"role": "user", "content": "x"}]})
        assert status == 200, body
        P.default({"type": "error", "status": 401, "kind": "invalid_api_key"})
        status, body = http("POST", url + "/v1/chat/completions",
                            {"model": "an-chain", "messages": [{"role": "user", "content": "y"}]})
        assert status == 200, body
        status, body = http("GET", url + "/v1/cooldowns")
        before = {c["scope"]: c for c in body["cooldowns"]}
        assert {"poa:main/gpt-4o", "pan:main"} <= set(before), body

        stop = threading.Event()
        unreadable = []

        def load(i):
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    # Every request on a new session: the session store is written all along.
                    http("POST", url + "/v1/chat/completions",
                         {"model": list(CHAINS)[i % 2], "stream": i % 3 == 0,
                          "messages": [{"role": "user", "content": f"load {i}"}]}, timeout=5,
                         headers={"x-backstop-session": f"load-{i}-{n}"})
                except Exception:  # noqa: BLE001 - the gateway goes away under them
                    pass

        def watch():
            while not stop.is_set():
                for f in state.glob("*.json"):
                    try:
                        json.loads(f.read_text())
                    except FileNotFoundError:
                        pass
                    except ValueError as e:
                        unreadable.append(f"{f.name}: {e}")

        workers = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
        workers.append(threading.Thread(target=watch, daemon=True))
        for w in workers:
            w.start()
        time.sleep(1.5)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the gateway did not exit within 15 s of {sig.name} under load")
        stop.set()
        for w in workers:
            w.join(timeout=10)
        if sig == signal.SIGTERM:
            assert code == 0, f"exit code {code} after SIGTERM"
        assert not unreadable, unreadable[:5]
    finally:
        if proc.poll() is None:
            _stop(proc)

    for f in state.glob("*.json"):
        json.loads(f.read_text())
    if sig == signal.SIGTERM:
        # Sessions are written within a second in the background, and flushed on shutdown.
        assert (state / "sessions.json").exists(), sorted(p.name for p in state.iterdir())
    doc = json.loads((state / "auth-state.json").read_text())
    stats = doc["usageStats"]
    now_ms = time.time() * 1000
    assert stats["poa:main"]["cooldownUntil"] > now_ms, stats
    assert stats["poa:main"]["cooldownReason"] == "overloaded" or stats["poa:main"]["cooldownReason"] in REASONS
    assert stats["poa:main"].get("cooldownModel") == "gpt-4o", stats
    assert stats["pan:main"].get("disabledUntil", 0) > now_ms or stats["pan:main"].get("cooldownUntil", 0) > now_ms, stats

    P.reset()
    proc, url = _start([BACKSTOP_BIN, "serve", "--config", str(cfg)], env=ENV)
    try:
        status, body = http("GET", url + "/v1/cooldowns")
        after = {c["scope"]: c for c in body["cooldowns"]}
        for scope in ("poa:main/gpt-4o", "pan:main"):
            assert scope in after, (scope, body)
            assert after[scope]["until_ms"] >= before[scope]["until_ms"], (before[scope], after[scope])
        out = subprocess.run(
            [BACKSTOP_BIN, "cooldowns", "list", "--json", "--config", str(cfg), "--url", url],
            capture_output=True, text=True, timeout=20, env={**os.environ, **ENV},
        )
        assert out.returncode == 0, out.stderr
        listed = {c["scope"] for c in json.loads(out.stdout)["cooldowns"]}
        assert {"poa:main/gpt-4o", "pan:main"} <= listed, out.stdout
        # Still cooling after the restart: the primaries are skipped, not tried.
        for chain, (_, fallback) in CHAINS.items():
            req = urllib.request.Request(
                url + "/v1/chat/completions", method="POST",
                data=json.dumps({"model": chain, "messages": [{"role": "user", "content": "z"}]}).encode(),
            )
            req.add_header("authorization", f"Bearer {CLIENT_KEY}")
            req.add_header("content-type", "application/json")
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.headers["x-backstop-model"] == fallback
                assert r.headers["x-backstop-attempts"] == "1"
        assert not P.requests(), "a primary that was cooling before the restart was tried"
    finally:
        _stop(proc)
