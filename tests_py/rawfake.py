"""An independent upstream for fault injection: raw asyncio streams, every byte and write ours.

`backstop-fake` (the project's own fake provider) answers the way its authors expected
upstreams to answer. This one does not share its code or its habits: a test scripts each
request's answer as a coroutine that writes exactly the bytes it wants, in as many writes
as it wants, with pauses between them, and closes (or keeps) the connection as it wants.

    fake = RawFake()            # listens on 127.0.0.1, in a thread of its own
    fake.script(handler, ...)   # the next requests' answers, in order
    fake.default = handler      # the answer once the script is used up
    fake.routes[prefix] = h     # requests whose path starts with prefix (before the script)
    fake.requests               # every request received: Req(method, path, headers, body)
    fake.connections            # how many TCP connections were accepted

A handler is `async def h(req, conn) -> bool`: it writes through `conn.write(bytes)` /
`await conn.drain()` / `await conn.pause(seconds)` and returns whether the connection may
carry another request (keep-alive). `conn.close()` closes it at once (a cut).
"""

import asyncio
import collections
import gzip
import json
import threading
import time


class Req:
    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body) if self.body else None

    def __repr__(self):
        return f"Req({self.method} {self.path})"


class Conn:
    def __init__(self, writer):
        self.writer = writer
        self.closed = False

    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        if not self.closed:
            self.writer.write(data)

    async def drain(self):
        if not self.closed:
            try:
                await self.writer.drain()
            except ConnectionError:
                self.closed = True

    async def send(self, data):
        self.write(data)
        await self.drain()

    async def pause(self, seconds):
        await asyncio.sleep(seconds)

    def close(self):
        if not self.closed:
            self.closed = True
            self.writer.close()


class RawFake:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.queue = collections.deque()
        self.default = None
        self.routes = {}
        self.requests = []
        self.connections = 0
        self.idle_writers = set()
        self._lock = threading.Lock()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)

            async def start():
                self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self.server.sockets[0].getsockname()[1]

            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def script(self, *handlers):
        with self._lock:
            self.queue.extend(handlers)

    def reset(self):
        with self._lock:
            self.queue.clear()
            self.requests.clear()
            self.connections = 0
        self.default = None
        self.routes = {}

    def close_idle(self):
        """Close every connection that is waiting for its next request (an idle
        keep-alive connection the server drops)."""

        async def go():
            for w in list(self.idle_writers):
                w.close()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)

    def stop(self):
        async def go():
            self.server.close()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _next(self, path):
        for prefix, handler in self.routes.items():
            if path.startswith(prefix):
                return handler
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        return self.default

    async def _serve(self, reader, writer):
        with self._lock:
            self.connections += 1
        conn = Conn(writer)
        try:
            while True:
                self.idle_writers.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                finally:
                    self.idle_writers.discard(writer)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = []
                for line in lines[1:]:
                    if line:
                        k, v = line.split(":", 1)
                        headers.append((k.strip(), v.strip()))
                req = Req(method, path, headers, b"")
                length = req.header("content-length")
                if length:
                    req.body = await reader.readexactly(int(length))
                elif (req.header("transfer-encoding") or "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        body += await reader.readexactly(size + 2)
                        body = body[:-2]
                    req.body = body
                with self._lock:
                    self.requests.append(req)
                handler = self._next(req.path)
                if handler is None:
                    conn.write(
                        response(500, b'{"error":"rawfake: nothing scripted"}', close=True)
                    )
                    await conn.drain()
                    keep = False
                else:
                    keep = await handler(req, conn)
                if not keep or conn.closed:
                    return
        except Exception as e:  # noqa: BLE001 — a broken handler must not kill the server
            print(f"rawfake handler error: {e!r}")
        finally:
            conn.close()


# ---- response builders ------------------------------------------------------------


def response(status, body=b"", headers=(), content_type="application/json", close=False,
             length=True, reason=None):
    """A whole HTTP/1.1 response with a `content-length` body."""
    if isinstance(body, str):
        body = body.encode()
    reason = reason or {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                        429: "Too Many Requests", 500: "Internal Server Error",
                        502: "Bad Gateway", 503: "Service Unavailable",
                        529: "Overloaded"}.get(status, "Status")
    h = [f"HTTP/1.1 {status} {reason}"]
    if content_type:
        h.append(f"content-type: {content_type}")
    if length:
        h.append(f"content-length: {len(body)}")
    if close:
        h.append("connection: close")
    h.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + body


def chunk(data):
    """One chunked-encoding frame."""
    if isinstance(data, str):
        data = data.encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream_head(headers=(), chunked=True, close=False, version="1.1"):
    h = [f"HTTP/{version} 200 OK", "content-type: text/event-stream", "cache-control: no-cache"]
    if chunked:
        h.append("transfer-encoding: chunked")
    if close:
        h.append("connection: close")
    h.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(h) + "\r\n\r\n").encode("latin-1")


# ---- provider event bodies ----------------------------------------------------------


def openai_events(text="hello world", model="gpt-4o", usage=True, done=True, pieces=None):
    """The `data:` payloads of an OpenAI chat completion stream, as JSON strings."""
    pieces = pieces or [w + " " for w in text.split(" ")]
    pieces[-1] = pieces[-1].rstrip(" ")
    base = {"id": "chatcmpl-raw1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "system_fingerprint": "fp_raw"}
    out = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}])]
    for p in pieces:
        out.append(dict(base, choices=[{"index": 0, "delta": {"content": p},
                                        "logprobs": None, "finish_reason": None}]))
    out.append(dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}]))
    if usage:
        out.append(dict(base, choices=[], usage={"prompt_tokens": 9, "completion_tokens": len(pieces),
                                                 "total_tokens": 9 + len(pieces)}))
    data = [json.dumps(e) for e in out]
    if done:
        data.append("[DONE]")
    return data


def anthropic_events(text="hello world", model="claude-sonnet-4-5", ping=True, pieces=None):
    """(event, data) pairs of an Anthropic Messages stream."""
    pieces = pieces or [w + " " for w in text.split(" ")]
    pieces[-1] = pieces[-1].rstrip(" ")
    ev = [("message_start", {"type": "message_start", "message": {
        "id": "msg_raw1", "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    if ping:
        ev.append(("ping", {"type": "ping"}))
    for p in pieces:
        ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": p}}))
    ev += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
           ("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": len(pieces)}}),
           ("message_stop", {"type": "message_stop"})]
    return [(e, json.dumps(d)) for e, d in ev]


def sse(data, event=None, nl="\n"):
    """One SSE frame."""
    out = ""
    if event:
        out += f"event: {event}{nl}"
    out += f"data: {data}{nl}{nl}"
    return out.encode()


def openai_json(text="hello world", model="gpt-4o"):
    return json.dumps({
        "id": "chatcmpl-raw2", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}})


def anthropic_json(text="hello world", model="claude-sonnet-4-5"):
    return json.dumps({
        "id": "msg_raw2", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 2}})


def gz(data):
    return gzip.compress(data if isinstance(data, bytes) else data.encode())


__all__ = ["RawFake", "Req", "Conn", "response", "chunk", "stream_head", "openai_events",
           "anthropic_events", "sse", "openai_json", "anthropic_json", "gz", "time"]
