#!/usr/bin/env python3
"""Hold N concurrent slow streaming requests open and sample a process's RSS.

Opens N HTTP/1.1 connections to URL (loopback only), sends the JSON body of
--body-file on each (a streaming request whose upstream sends one chunk every
second or so), waits until each has its response head and first SSE data, then
samples VmRSS of --pid while all are open, closes them all, and samples again.
Prints one JSON line. Bounded: gives up opening after --timeout seconds.

Standard library only (asyncio); raise `ulimit -n` before running it.
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


async def one(host, port, request, opened, failures, gate, stop):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            failures.append(f"connect: {e}")
            return
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                failures.append(f"status {status.decode(errors='replace')}")
                writer.close()
                return
            # The first event with content: the gateway has committed the stream.
            seen = b""
            while b"data:" not in seen:
                chunk = await reader.read(4096)
                if not chunk:
                    raise ConnectionError("stream ended before its first data")
                seen += chunk
        except (OSError, asyncio.IncompleteReadError, ConnectionError, IndexError) as e:
            failures.append(f"stream: {e!r}")
            writer.close()
            return
    opened.append(writer)
    # Drain the stream until told to stop (keeps the socket's receive buffer empty).
    try:
        while not stop.is_set():
            chunk = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            if not chunk:
                break
    except (asyncio.TimeoutError, OSError):
        pass
    except asyncio.CancelledError:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--pid", type=int, action="append", required=True,
                    help="process whose VmRSS to sample (repeat to sum several)")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to hold all streams open")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up opening after this")
    ap.add_argument("--parallel-connects", type=int, default=200)
    a = ap.parse_args()

    u = urlsplit(a.url)
    host, port = u.hostname, u.port
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("slow_streams.py: loopback only")
    with open(a.body_file, "rb") as f:
        body = f.read()
    request = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    def total_rss():
        vals = [rss_kb(p) for p in a.pid]
        return sum(v for v in vals if v is not None)

    rss_before = total_rss()
    opened, failures = [], []
    gate = asyncio.Semaphore(a.parallel_connects)
    stop = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(host, port, request, opened, failures, gate, stop))
             for _ in range(a.n)]
    # Wait until every stream is open (or failed), bounded in time.
    while len(opened) + len(failures) < a.n and time.monotonic() - t0 < a.timeout:
        await asyncio.sleep(0.2)
    open_secs = time.monotonic() - t0
    peak = 0
    t1 = time.monotonic()
    while time.monotonic() - t1 < a.hold:
        peak = max(peak, total_rss())
        await asyncio.sleep(0.25)
    held = len(opened)
    stop.set()
    for w in opened:
        w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(2.0)
    rss_after = total_rss()
    print(json.dumps({
        "requested": a.n,
        "opened": held,
        "failed": len(failures),
        "first_failures": sorted(set(failures))[:3],
        "open_secs": round(open_secs, 2),
        "rss_before_kb": rss_before,
        "rss_open_kb": peak,
        "rss_after_close_kb": rss_after,
    }))


if __name__ == "__main__":
    asyncio.run(main())
