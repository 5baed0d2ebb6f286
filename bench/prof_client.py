#!/usr/bin/env python3
"""Send exactly N chat requests over keep-alive connections (loopback only), for
bench/profile.sh: a fixed request count makes instruction counts comparable.

Prints "N requests, E errors". Standard library only.
"""

import argparse
import http.client
import json
import threading
from urllib.parse import urlsplit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--stream", default="false")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1)
    args = ap.parse_args()
    u = urlsplit(args.url)
    prompt = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 21)[:1024]
    body = {
        "model": args.model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if args.stream == "true":
        body["stream"] = True
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    lock = threading.Lock()
    state = {"left": args.requests, "errors": 0}

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            with lock:
                if state["left"] == 0:
                    break
                state["left"] -= 1
            conn.request("POST", u.path, payload, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200 or b"word19" not in data:
                with lock:
                    state["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{args.requests} requests, {state['errors']} errors")


if __name__ == "__main__":
    main()
