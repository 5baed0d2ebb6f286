#!/usr/bin/env python3
"""Turn bench/run.sh's measurements into Markdown tables (stdout).

usage: report.py results.jsonl extra.json

results.jsonl: one wrk run a line (case, mode, conns, requests, duration_us,
p50_us, p99_us, err_*, cpu_ticks, clk_tck, rss_load_kb, …); extra.json: idle
RSS figures and the slow-stream results. Prints the figures and how they compare
with the issue's targets; it never fails on a figure (no thresholds).
"""

import json
import statistics
import sys

CASES = [
    ("same_format", "Same format, non-streaming (OpenAI → OpenAI, 1 KB prompt)"),
    ("stream_20", "Streaming, 20 chunks (OpenAI → OpenAI, passthrough)"),
    ("cross_format", "Cross format, non-streaming (OpenAI client → Anthropic upstream)"),
    ("failover_503", "Failover: primary answers 503 → fallback"),
    ("failover_reset", "Failover: primary resets the connection → fallback"),
    ("prompt_100k", "Prompt size 100 KB (same format, non-streaming)"),
    ("chain_4", "Chain of 4 targets, 1 key (first answers)"),
    ("keys_100", "1 target, 100 keys (profiles)"),
    ("chain4_keys100", "4 targets × 100 keys"),
]


def rps(r):
    return r["requests"] * 1e6 / r["duration_us"] if r["duration_us"] else 0.0


def cpu_us(r):
    if r["mode"] == "direct" or not r["requests"]:
        return None
    return r["cpu_ticks"] / r["clk_tck"] * 1e6 / r["requests"]


def user_us(r):
    """The user-space part of cpu_us (utime alone); the rest is the kernel's."""
    if cpu_us(r) is None or "cpu_user_ticks" not in r:
        return None
    return r["cpu_user_ticks"] / r["clk_tck"] * 1e6 / r["requests"]


def errors(r):
    return sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    extra = json.load(open(sys.argv[2]))
    # First run of each (case, mode, conns) for the tables; repeats feed the noise section.
    first = {}
    repeats = {}
    for r in rows:
        key = (r["case"], r["mode"], r["conns"])
        first.setdefault(key, r)
        repeats.setdefault(key, []).append(r)
    conns_all = sorted({r["conns"] for r in rows})
    out = []
    w = out.append
    w("All latencies in µs; CPU = the proxy process's user+system time per request "
      "(/proc/PID/stat, 10 ms ticks), “user” its user-space part (utime); RSS = peak VmRSS during the run. "
      "“×nginx” = Backstop ÷ nginx in the same run; “+p50” = p50 over direct.\n")
    for case, title in CASES:
        present = [k for k in first if k[0] == case]
        if not present:
            continue
        w(f"### {title}\n")
        fo = case.startswith("failover")
        head = "| conns | path | req/s | p50 | p99 | CPU µs/req | user µs/req | RSS MB | errors | ×nginx req/s | ×nginx CPU | +p50 |"
        sep = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        if fo:
            head += " primary attempts |"
            sep += "---:|"
        w(head)
        w(sep)
        for c in conns_all:
            direct = first.get((case, "direct", c)) or first.get(("same_format", "direct", c))
            nginx = first.get((case, "nginx", c))
            for m in ("direct", "nginx", "backstop"):
                r = first.get((case, m, c))
                if not r:
                    continue
                x_rps = x_cpu = add = None
                if m == "backstop" and nginx:
                    x_rps = rps(r) / rps(nginx) if rps(nginx) else None
                    nc = cpu_us(nginx)
                    x_cpu = cpu_us(r) / nc if nc else None
                if m != "direct" and direct:
                    add = r["p50_us"] - direct["p50_us"]
                line = (f"| {c} | {m} | {rps(r):.0f} | {r['p50_us']} | {r['p99_us']} | "
                        f"{fmt(cpu_us(r))} | {fmt(user_us(r))} | {fmt(r['rss_load_kb'] / 1024 if r['rss_load_kb'] else None, '{:.1f}')} | "
                        f"{errors(r)} | {fmt(x_rps, '{:.2f}')} | {fmt(x_cpu, '{:.2f}')} | "
                        f"{fmt(add, '{:+.0f}')} |")
                if fo:
                    line += f" {r.get('primary_attempts', '–')} |"
                w(line)
        w("")

    # Noise: the main case repeated.
    reps = {k: v for k, v in repeats.items() if k[0] == "same_format" and len(v) > 1}
    if reps:
        w("### Noise: the main case (same format, non-streaming) repeated\n")
        w("| conns | path | runs | req/s (each) | spread (max−min)/median | CPU µs/req (each) |")
        w("|---:|---|---:|---|---:|---|")
        for (case, m, c), rs in sorted(reps.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            vals = [rps(r) for r in rs]
            med = statistics.median(vals)
            spread = (max(vals) - min(vals)) / med * 100 if med else 0
            cpus = ", ".join(fmt(cpu_us(r)) + (f" ({fmt(user_us(r))} user)" if user_us(r) is not None else "") for r in rs)
            w(f"| {c} | {m} | {len(rs)} | {', '.join(f'{v:.0f}' for v in vals)} | {spread:.1f} % | {cpus} |")
        w("")

    # Memory.
    kb = lambda v: f"{v / 1024:.1f} MB"
    w("### Memory\n")
    w(f"- Backstop idle RSS: {kb(extra['backstop_idle_rss_kb'])} at start, "
      f"{kb(extra['backstop_after_load_rss_kb'])} after the load runs "
      f"(nginx, master + worker: {kb(extra['nginx_idle_rss_kb'])}, "
      f"{kb(extra['nginx_after_load_rss_kb'])}).")
    for name in ("backstop", "nginx"):
        s = extra.get(f"streams_{name}")
        if not s or not s["requested"]:
            continue
        per = (s["rss_open_kb"] - s["rss_before_kb"]) / s["opened"] if s["opened"] else 0
        line = (f"- {name}: {s['opened']} of {s['requested']} slow streams open "
                f"({s['failed']} failed; opened in {s['open_secs']} s): RSS {kb(s['rss_before_kb'])} before, "
                f"{kb(s['rss_open_kb'])} with them open ({per:.1f} KB a stream), "
                f"{kb(s['rss_after_close_kb'])} 2 s after closing them.")
        if s["opened"] and s["opened"] < 10000:
            est = s["rss_before_kb"] + per * 10000
            line += f" Extrapolated to 10,000: {kb(est)}."
        if s["first_failures"]:
            line += f" First failures: {s['first_failures']}."
        w(line)
    w("")

    # Targets (issue 6), judged on this run's figures.
    w("### Against the targets (this run)\n")

    def pick(case, m, prefer=32):
        for c in [prefer] + conns_all:
            if (case, m, c) in first:
                return first[(case, m, c)]
        return None

    def verdict(ok):
        return "met" if ok else "NOT met"

    for case in ("same_format", "stream_20"):
        for c in conns_all:
            b, n = first.get((case, "backstop", c)), first.get((case, "nginx", c))
            if b and n and cpu_us(n):
                x = cpu_us(b) / cpu_us(n)
                w(f"- CPU/request {case} at {c} conns: Backstop {cpu_us(b):.0f} µs vs nginx "
                  f"{cpu_us(n):.0f} µs = {x:.2f}× (target ≤ 1.5×): {verdict(x <= 1.5)}")
    for case in ("same_format", "stream_20"):
        b, n = pick(case, "backstop"), pick(case, "nginx")
        if b and n and rps(n):
            x = rps(b) / rps(n)
            w(f"- req/s {case} at {b['conns']} conns: {rps(b):.0f} vs nginx {rps(n):.0f} = {x:.2f}× "
              f"(target ≥ 0.8×): {verdict(x >= 0.8)}")
    b, d = pick("same_format", "backstop", 1), pick("same_format", "direct", 1)
    if b and d:
        add = b["p50_us"] - d["p50_us"]
        w(f"- added p50 at {b['conns']} conn(s), same format: {add:+d} µs over direct "
          f"({d['p50_us']} → {b['p50_us']} µs; target ≤ 50 µs): {verdict(add <= 50)}")
    b, s = pick("cross_format", "backstop"), pick("same_format", "backstop")
    if b and s and cpu_us(s):
        x = cpu_us(b) / cpu_us(s)
        w(f"- cross-format CPU at {b['conns']} conns: {cpu_us(b):.0f} µs vs same-format "
          f"{cpu_us(s):.0f} µs = {x:.2f}× (target ≤ 2×): {verdict(x <= 2)}")
    idle = extra["backstop_idle_rss_kb"] / 1024
    w(f"- idle RSS {idle:.1f} MB (target ≤ 15 MB): {verdict(idle <= 15)}")
    s = extra.get("streams_backstop")
    if s and s["opened"]:
        per = (s["rss_open_kb"] - s["rss_before_kb"]) / s["opened"]
        est = (s["rss_before_kb"] + per * max(0, 10000 - s["opened"]) + (s["rss_open_kb"] - s["rss_before_kb"])) / 1024
        est = max(est, s["rss_open_kb"] / 1024)
        w(f"- RSS with {s['opened']} slow streams {s['rss_open_kb'] / 1024:.1f} MB"
          + (f" (≈{est:.0f} MB at 10,000)" if s["opened"] < 10000 else "")
          + f" (target ≤ 100 MB at 10,000): {verdict(est <= 100)}")
    for case in ("failover_503", "failover_reset"):
        for c in conns_all:
            r = first.get((case, "backstop", c))
            if r and "primary_attempts" in r:
                w(f"- {case} at {c} conns: {r['primary_attempts']} primary attempts for "
                  f"{r['requests']} requests (breaker cleared before the run; ≤ {c} means at most "
                  f"one per request in flight before it opened), {errors(r)} errors")
    print("\n".join(out))


if __name__ == "__main__":
    main()
