"""Two gateway processes on one state dir, both hammering failures: no update is lost
(every failure each one saw is counted in auth-state.json) and the file parses at every
moment (atomic writes under a cross-process lock, merged inside the lock)."""

import json
import pathlib
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from conftest import BACKSTOP_BIN, _start, _stop

PROFILES = [f"p{i}" for i in range(6)]


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_two_gateways_on_one_state_dir_lose_no_update(fake_process, fake):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-shared-"))
    state = tmp / "state"
    auth = ", ".join(f'{{ profile: "{p}", key: "key-{p}" }}' for p in PROFILES)
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      providers: {{ oa: {{ api: "openai", base_url: "{fake_process}/v1", auth: [{auth}], models: ["m"] }} }},
      agents: {{ defaults: {{ model: {{ primary: "oa/m", fallbacks: [] }} }} }},
      retry: {{ max_attempts: 1, budget_min_per_sec: 1000 }},
      state: {{ dir: "{state}" }},
    }}"""
    )
    # Every key is rejected: each failure cools its whole profile (auth ladder).
    fake.default({"type": "error", "status": 401, "kind": "invalid_api_key"})
    gateways = [_start([BACKSTOP_BIN, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"], env={"BACKSTOP_LOG": "warn"}) for _ in range(2)]
    stop = threading.Event()
    unreadable = []

    def watch():
        f = state / "auth-state.json"
        while not stop.is_set():
            try:
                text = f.read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                unreadable.append(str(e))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        body = {"model": "default", "messages": [{"role": "user", "content": "x"}]}

        def hammer(url):
            for _ in range(15):
                assert post(url, body) in (401, 503), "every target fails"

        threads = [threading.Thread(target=hammer, args=(url,)) for _, url in gateways for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # What the provider saw, per key, is what the two gateways together must have counted.
        seen = Counter()
        for r in fake.requests():
            for k, v in r["headers"]:
                if k.lower() == "authorization":
                    seen[v.removeprefix("Bearer key-")] += 1
        assert sum(seen.values()) >= len(PROFILES), seen
        deadline = time.monotonic() + 10
        while True:
            try:
                doc = json.loads((state / "auth-state.json").read_text())
            except FileNotFoundError:  # not flushed yet (within a second)
                doc = {"usageStats": {}}
            counts = {p: doc["usageStats"].get(f"oa:{p}", {}).get("errorCount", 0) for p in PROFILES}
            if all(counts[p] == seen[p] for p in PROFILES) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counts == {p: seen[p] for p in PROFILES}, f"file {counts} vs provider {dict(seen)}"
        for p in PROFILES:
            entry = doc["usageStats"][f"oa:{p}"]
            assert entry["cooldownReason"] == "auth" and entry["cooldownUntil"] > 0, entry
    finally:
        stop.set()
        watcher.join()
        for proc, _ in gateways:
            _stop(proc)
    assert unreadable == [], unreadable[:3]
