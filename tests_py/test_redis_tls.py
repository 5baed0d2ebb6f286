"""`rediss://`: gateways share state through a Redis that only speaks TLS, and verify its
certificate (against the system roots, or `SSL_CERT_FILE`). Starts its own TLS
`redis-server` with a throwaway CA made by `openssl`."""

import pathlib
import subprocess
import tempfile
import time

from conftest import BACKSTOP_BIN, CLIENT_KEY, _start, _stop
from test_redis_sessions import call, free_port, keys_used, wait_listening


def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Backstop test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "ext.cnf", "-out", "server.crt")


def status_of(url):
    status, doc = call("GET", f"{url}/status")
    assert status == 200, doc
    return doc


def test_gateways_share_cooldowns_over_rediss_and_verify_the_certificate(fake_process, fake):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-rediss-"))
    make_certs(tmp)
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp / "server.crt"), "--tls-key-file", str(tmp / "server.key"),
         "--tls-ca-cert-file", str(tmp / "ca.crt"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    url = f"rediss://127.0.0.1:{port}"
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      server: {{ api_keys: ["{CLIENT_KEY}"] }},
      providers: {{ oa: {{ api: "openai", base_url: "{fake_process}/v1",
                          auth: [{{ profile: "a", key: "key-a" }}, {{ profile: "b", key: "key-b" }}],
                          models: ["gpt-4o"] }} }},
      auth: {{ order: {{ oa: ["a", "b"] }} }},
      agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: [] }} }} }},
      state: {{ dir: "{tmp}", redis_url: "{url}" }},
    }}"""
    )
    trusted = {"BACKSTOP_LOG": "warn", "SSL_CERT_FILE": str(tmp / "ca.crt")}
    cmd = [BACKSTOP_BIN, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"]
    gateways = [_start(cmd, env=trusted) for _ in range(2)]
    # A third gateway that does not trust the CA must not connect.
    untrusted_log = tmp / "untrusted.log"
    untrusted = _start(cmd, env={"BACKSTOP_LOG": "warn", "SSL_CERT_FILE": str(tmp / "server.key")},
                       stderr_path=untrusted_log)
    (_, a), (_, b) = gateways
    try:
        deadline = time.monotonic() + 10
        # Both stores of both gateways: each connects (and handshakes) on its own.
        while not all(status_of(g)["state"][store]["connected"]
                      for g in (a, b) for store in ("cooldowns", "sessions")):
            assert time.monotonic() < deadline, status_of(a)["state"]
            time.sleep(0.05)
        for g in (a, b):
            st = status_of(g)["state"]
            assert st["cooldowns"]["location"] == url and st["sessions"]["connected"] is True, st

        # Key "a" is rate limited through A; B learns it over TLS and goes straight to "b".
        fake.reset()
        fake.script({"type": "error", "status": 429, "kind": "rate_limit_exceeded"})
        status, body = call("POST", f"{a}/v1/chat/completions",
                            {"model": "default", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        assert keys_used(fake) == ["key-a", "key-b"]
        deadline = time.monotonic() + 10
        while True:
            _, listed = call("GET", f"{b}/v1/cooldowns")
            if any(c["scope"] == "oa:a/gpt-4o" for c in listed["cooldowns"]):
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.02)
        fake.reset()
        status, body = call("POST", f"{b}/v1/chat/completions",
                            {"model": "default", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        assert keys_used(fake) == ["key-b"]

        # The gateway that cannot verify the certificate serves on its own view instead.
        st = status_of(untrusted[1])["state"]
        assert st["cooldowns"]["connected"] is False and st["sessions"]["connected"] is False, st
        deadline = time.monotonic() + 10
        while "invalid peer certificate" not in (log := untrusted_log.read_text()):
            assert time.monotonic() < deadline, log
            time.sleep(0.05)
        assert "Redis is unreachable" in log, log
        assert status_of(untrusted[1])["state"]["cooldowns"]["connected"] is False
    finally:
        for proc, _ in gateways + [untrusted]:
            _stop(proc)
        redis.kill()
        redis.wait()
