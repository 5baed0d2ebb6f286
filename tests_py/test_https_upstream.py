"""An `https://` upstream: the gateway verifies its certificate against the system roots
(here `SSL_CERT_FILE`, a throwaway CA made by `openssl`), speaks HTTP/2 when the server
offers it through ALPN, and refuses a server its roots do not vouch for.

The upstream is the fake behind a small TLS-terminating relay (Python's `ssl`), which
records the protocol each connection negotiated."""

import pathlib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlsplit

from conftest import BACKSTOP_BIN, CLIENT_KEY, _start, _stop
from test_redis_sessions import call, keys_used
from test_redis_tls import make_certs


class TlsRelay:
    """Accepts TLS on a loopback port and relays the plaintext to `target` (host, port)."""

    def __init__(self, cert, key, target):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.alpn = []
        self.handshake_errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self.handshake_errors.append(repr(e))
            raw.close()
            return
        self.alpn.append(conn.selected_alpn_protocol())
        upstream = socket.create_connection(self.target)

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def close(self):
        self.listener.close()


def other_ca(d):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=Some other CA", "-keyout", "other.key", "-out", "other.crt"],
        cwd=d, check=True, capture_output=True,
    )


def test_https_upstream_is_verified_and_speaks_http2(fake_process, fake):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="backstop-https-"))
    make_certs(tmp)
    other_ca(tmp)
    fake_addr = urlsplit(fake_process)
    relay = TlsRelay(tmp / "server.crt", tmp / "server.key", (fake_addr.hostname, fake_addr.port))
    cfg = tmp / "backstop.json5"
    cfg.write_text(
        f"""{{
      server: {{ api_keys: ["{CLIENT_KEY}"] }},
      providers: {{ oa: {{ api: "openai", base_url: "https://127.0.0.1:{relay.port}/v1",
                          auth: [{{ profile: "a", key: "key-a" }}], models: ["gpt-4o"] }} }},
      agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: [] }} }} }},
      state: {{ dir: "{tmp}" }},
      timeouts: {{ connect_ms: 5000 }},
    }}"""
    )
    cmd = [BACKSTOP_BIN, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"]
    trusted = _start(cmd, env={"BACKSTOP_LOG": "warn", "SSL_CERT_FILE": str(tmp / "ca.crt")})
    untrusted_log = tmp / "untrusted.log"
    untrusted = _start(cmd, env={"BACKSTOP_LOG": "info", "SSL_CERT_FILE": str(tmp / "other.crt")},
                       stderr_path=untrusted_log)
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    try:
        fake.script({"type": "reply", "text": "over tls"})
        status, body = call("POST", f"{trusted[1]}/v1/chat/completions", chat)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "over tls"
        assert keys_used(fake) == ["key-a"]
        # The relay offered h2 and http/1.1: the gateway chose HTTP/2.
        assert relay.alpn == ["h2"], relay.alpn

        # Through a gateway whose roots do not include the CA: no request reaches the fake.
        fake.reset()
        status, body = call("POST", f"{untrusted[1]}/v1/chat/completions", chat)
        assert status == 503 and "all targets failed" in body["error"]["message"], body
        assert fake.requests() == []
        deadline = time.monotonic() + 10
        while "invalid peer certificate" not in (log := untrusted_log.read_text()):
            assert time.monotonic() < deadline, log
            time.sleep(0.02)
        assert relay.alpn == ["h2"], relay.alpn
        assert relay.handshake_errors, "the relay saw no refused handshake"
    finally:
        for proc, _ in (trusted, untrusted):
            _stop(proc)
        relay.close()
