#!/usr/bin/env bash
# Load benchmark, on loopback only: the same requests sent directly to a fake
# provider, through nginx (a plain reverse proxy) and through Backstop, side by
# side in one run. Prints a table (bench/report.py); bench/RESULTS.md holds the
# figures of a full run and how to read them.
#
#   bench/run.sh            full run: release build, 5 s per case, 1/32/128 connections,
#                           3 repeats of the main case, 10,000 slow streams (~5 min)
#   bench/run.sh --quick    CI smoke run: every case once, 1 s, 8 connections,
#                           100 slow streams, debug binaries (no thresholds: it only
#                           checks that everything works end to end)
#
# Cores (2-core machine): the load generator (wrk) and the fake providers share
# core 0; the proxy under test (nginx with one worker, or Backstop, whose tokio
# runtime then has one worker thread) has core 1 to itself. Both proxies get the
# same core and the same neighbours; "direct" runs wrk and the fake on core 0
# with core 1 idle. Override with LOAD_CORE / PROXY_CORE / FAKE_CORE.
#
# Environment: CARGO_TARGET_DIR (respected), BENCH_PROFILE=release|debug (default:
# release, debug with --quick), BENCH_DURATION (seconds per case), BENCH_OUT (write
# the table there too), BENCH_STREAMS (slow streams; capped by the fd limit; 0: none),
# BENCH_CONNS ("1 32"), BENCH_CASES (a regex over case names), BENCH_REPEATS,
# BENCH_PERF=FILE (perf record the gateway during BENCH_PERF_CASE; FILE.<conns>).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
  *) echo "bench/run.sh: unknown argument ${1} (use --quick or nothing)" >&2; exit 2 ;;
esac

fail() { echo "bench/run.sh: $*" >&2; exit 1; }
stamp() { echo "== [${SECONDS}s] $*"; }

nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx_bin" ] || fail "nginx is not installed (Debian: apt-get install -y nginx)"
for tool in wrk taskset python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (Debian: apt-get install -y wrk util-linux python3 curl)"
done

if [ "$mode" = quick ]; then
  profile="${BENCH_PROFILE:-debug}"
  duration="${BENCH_DURATION:-1}"
  conns_list=(8)
  repeats=1
  streams="${BENCH_STREAMS:-100}"
else
  profile="${BENCH_PROFILE:-release}"
  duration="${BENCH_DURATION:-5}"
  conns_list=(1 32 128)
  repeats=3
  streams="${BENCH_STREAMS:-10000}"
fi
[ -n "${BENCH_CONNS:-}" ] && read -r -a conns_list <<<"$BENCH_CONNS"
[ -n "${BENCH_REPEATS:-}" ] && repeats="$BENCH_REPEATS"
cases_re="${BENCH_CASES:-.}"
ncpu="$(nproc)"
load_core="${LOAD_CORE:-0}"
fake_core="${FAKE_CORE:-0}"
if [ "$ncpu" -ge 2 ]; then proxy_core="${PROXY_CORE:-1}"; else proxy_core="${PROXY_CORE:-0}"; fi

# `--workspace --bins`, as scripts/test builds them: the same features, so no rebuild in CI.
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
stamp "building $profile binaries"
if [ "$profile" = release ]; then
  cargo build -q --release --workspace --bins
  bindir="$target/release"
else
  cargo build -q --workspace --bins
  bindir="$target/debug"
fi
backstop_bin="$bindir/backstop"
fake_bin="$bindir/backstop-fake"
[ -x "$backstop_bin" ] && [ -x "$fake_bin" ] || fail "binaries not found in $bindir"

# Every socket a slow stream costs the gateway twice (client side and upstream side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit="$(ulimit -n)"
max_streams=$(((fd_limit - 400) / 2))
if [ "$streams" -gt "$max_streams" ]; then
  echo "note: open-file limit is $fd_limit: $streams slow streams need ~$((streams * 2)) sockets in the gateway; running $max_streams"
  streams="$max_streams"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/backstop-bench.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
clk_tck="$(getconf CLK_TCK)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait for "listening on http://ADDR" in a log file; prints ADDR.
wait_listening() {
  local log="$1" name="$2" pid="$3" i
  for i in $(seq 1 300); do
    if grep -q '^listening on http://' "$log" 2>/dev/null; then
      sed -n 's|^listening on http://||p' "$log" | head -1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "$name exited at startup"; }
    sleep 0.1
  done
  cat "$log" >&2
  fail "$name did not start within 30 s"
}

start_fake() { # name default-step-json recording(true|false) -> sets fake_addr
  local name="$1" step="$2" recording="$3"
  taskset -c "$fake_core" "$fake_bin" --listen 127.0.0.1:0 >"$tmp/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  fake_addr="$(wait_listening "$tmp/$name.log" "fake $name" "$pid")"
  curl -sf -o /dev/null -X POST "http://$fake_addr/_fake/default" -d "$step" ||
    fail "fake $name: cannot set its default step"
  curl -sf -o /dev/null -X POST "http://$fake_addr/_fake/recording" -d "{\"on\": $recording}" ||
    fail "fake $name: cannot set recording"
}

words() { # n words of text
  python3 -c "import sys; print(' '.join('word%d' % i for i in range(int(sys.argv[1]))))" "$1"
}

reply20="{\"type\":\"reply\",\"text\":\"$(words 20)\",\"chunks\":20}"
start_fake main "$reply20" false
main_fake="$fake_addr"
start_fake bad '{"type":"error","status":503}' true
bad_fake="$fake_addr"
start_fake rst '{"type":"reset"}' true
rst_fake="$fake_addr"
start_fake slow "{\"type\":\"reply\",\"text\":\"$(words 120)\",\"chunks\":120,\"chunk_delay_ms\":1000}" false
slow_fake="$fake_addr"
# nginx's slow streams get their own fake: the first one may still hold the gateway's
# closed streams for a second, and each fake has the same open-file limit.
start_fake slow2 "{\"type\":\"reply\",\"text\":\"$(words 120)\",\"chunks\":120,\"chunk_delay_ms\":1000}" false
slow2_fake="$fake_addr"

# ---- request bodies ----
python3 - "$tmp" <<'EOF'
import json, sys
tmp = sys.argv[1]
def prompt(n):
    # n bytes of plain words
    s = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (n // 50 + 1))[:n]
    return s
def openai(model, size, stream=False):
    b = {"model": model, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt(size)}], "max_tokens": 256, "temperature": 0.2}
    if stream:
        b["stream"] = True
    return b
bodies = {
    "oa_1k": openai("oa/m", 1024),
    "oa_100k": openai("oa/m", 100 * 1024),
    "oa_1k_stream": openai("oa/m", 1024, True),
    "cross_1k": openai("cross", 1024),
    "fo503_1k": openai("fo503", 1024),
    "forst_1k": openai("forst", 1024),
    "chain4_1k": openai("chain4", 1024),
    "keys100_1k": openai("keys100", 1024),
    "chain4keys100_1k": openai("chain4keys100", 1024),
    "slow_stream": openai("slow", 64, True),
}
for k, v in bodies.items():
    with open(f"{tmp}/{k}.json", "w") as f:
        json.dump(v, f)
EOF

# ---- nginx: a plain reverse proxy to the fake (HTTP/1.1 keepalive upstream) ----
nginx_port="$(free_port)"
mkdir -p "$tmp/nginx/logs"
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $fd_limit;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections $((fd_limit - 100)); }
http {
  access_log off;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  client_max_body_size 16m;
  client_body_buffer_size 256k;
  keepalive_requests 1000000;
  upstream fake { server $main_fake; keepalive 256; keepalive_requests 1000000; }
  upstream slowfake { server $slow2_fake; keepalive 256; }
  server {
    listen 127.0.0.1:$nginx_port;
    location /slow/ {
      proxy_pass http://slowfake/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
taskset -c "$proxy_core" "$nginx_bin" -e "$tmp/nginx/logs/error.log" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break
  kill -0 "$nginx_pid" 2>/dev/null || { cat "$tmp/nginx/logs/error.log" >&2; fail "nginx exited at startup"; }
  sleep 0.1
done
nginx_pids() { echo "$nginx_pid" $(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null); }

# ---- Backstop ----
python3 - "$tmp" "$main_fake" "$bad_fake" "$rst_fake" "$slow_fake" <<'EOF'
import json, sys
tmp, main, bad, rst, slow = sys.argv[1:]
def prov(api, addr, n=1, prefix="k"):
    base = f"http://{addr}/v1" if api == "openai" else f"http://{addr}"
    auth = [{"profile": f"{prefix}{i}", "key": f"sk-bench-{prefix}-{i:04d}-xxxxxxxxxxxxxxxx"} for i in range(n)]
    return {"api": api, "base_url": base, "auth": auth}
config = {
    "server": {"listen": "127.0.0.1:0"},
    "providers": {
        "oa": prov("openai", main),
        "an": prov("anthropic", main),
        "bad": prov("openai", bad),
        "rst": prov("openai", rst),
        "many": prov("openai", main, 100),
        "slowp": prov("openai", slow),
    },
    "agents": {
        "defaults": {"model": {"primary": "oa/m", "fallbacks": []}},
        "list": [
            {"id": "cross", "model": {"primary": "an/claude-m", "fallbacks": []}},
            {"id": "fo503", "model": {"primary": "bad/m", "fallbacks": ["oa/m"]}},
            {"id": "forst", "model": {"primary": "rst/m", "fallbacks": ["oa/m"]}},
            {"id": "chain4", "model": {"primary": "oa/m", "fallbacks": ["oa/m2", "oa/m3", "oa/m4"]}},
            {"id": "keys100", "model": {"primary": "many/m", "fallbacks": []}},
            {"id": "chain4keys100", "model": {"primary": "many/m", "fallbacks": ["many/m2", "many/m3", "many/m4"]}},
            {"id": "slow", "model": {"primary": "slowp/m", "fallbacks": []}},
        ],
    },
    "state": {"dir": f"{tmp}/state"},
}
with open(f"{tmp}/backstop.json", "w") as f:
    json.dump(config, f, indent=1)
EOF
taskset -c "$proxy_core" "$backstop_bin" serve --config "$tmp/backstop.json" >"$tmp/backstop.out" 2>"$tmp/backstop.log" &
backstop_pid=$!
pids+=("$backstop_pid")
backstop_addr="$(wait_listening "$tmp/backstop.out" backstop "$backstop_pid")"

rss_kb() { # sum of VmRSS over pids
  local total=0 p v
  for p in "$@"; do
    v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
stat_ticks() { # awk-expr pid...: the expression over /proc/PID/stat's fields after the name, summed
  local expr="$1" total=0 p v
  shift
  for p in "$@"; do
    v="$(awk "{ sub(/^.*\\) /, \"\"); print $expr }" "/proc/$p/stat" 2>/dev/null || true)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
cpu_ticks() { stat_ticks '$12 + $13' "$@"; } # utime+stime (fields 14 and 15 of /proc/PID/stat)
user_ticks() { stat_ticks '$12' "$@"; }       # utime alone: the user-space part

backstop_idle_rss="$(rss_kb "$backstop_pid")"
nginx_idle_rss="$(rss_kb $(nginx_pids))"

# ---- end-to-end checks (each URL once, before any timing) ----
check() { # label url body-file expect-substring [header]
  local label="$1" url="$2" body="$3" expect="$4" header="${5:-}" out
  out="$(curl -s -m 20 -D "$tmp/check.h" -o "$tmp/check.b" -w '%{http_code}' \
        -H 'content-type: application/json' --data-binary "@$tmp/$body.json" "$url")" ||
    fail "check $label: no answer from $url"
  [ "$out" = 200 ] || { head -c 600 "$tmp/check.b" >&2; echo >&2; fail "check $label: HTTP $out from $url"; }
  grep -q -- "$expect" "$tmp/check.b" || { head -c 600 "$tmp/check.b" >&2; echo >&2; fail "check $label: the answer lacks \"$expect\""; }
  if [ -n "$header" ]; then
    grep -qi -- "$header" "$tmp/check.h" || { cat "$tmp/check.h" >&2; fail "check $label: no header \"$header\""; }
  fi
}
direct_url="http://$main_fake/v1/chat/completions"
nginx_url="http://127.0.0.1:$nginx_port/v1/chat/completions"
backstop_url="http://$backstop_addr/v1/chat/completions"
stamp "end-to-end checks"
check "direct" "$direct_url" oa_1k 'word19'
check "nginx" "$nginx_url" oa_1k 'word19'
check "nginx stream" "$nginx_url" oa_1k_stream 'data: \[DONE\]'
check "backstop same-format" "$backstop_url" oa_1k 'word19' 'x-backstop-model: oa/m'
check "backstop stream" "$backstop_url" oa_1k_stream 'data: \[DONE\]' 'x-backstop-model: oa/m'
check "backstop cross-format" "$backstop_url" cross_1k 'word19' 'x-backstop-model: an/claude-m'
check "backstop 100 KB" "$backstop_url" oa_100k 'word19'
check "backstop failover 503" "$backstop_url" fo503_1k 'word19' 'x-backstop-fallback: '
check "backstop failover reset" "$backstop_url" forst_1k 'word19' 'x-backstop-fallback: '
check "backstop chain 4" "$backstop_url" chain4_1k 'word19'
check "backstop 100 keys" "$backstop_url" keys100_1k 'word19' 'x-backstop-model: many/m'
check "backstop 4 x 100" "$backstop_url" chain4keys100_1k 'word19'

recorded() { # requests a fake has recorded
  curl -sf "http://$1/_fake/requests" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}

results="$tmp/results.jsonl"
: >"$results"
# One wrk run: case mode conns url body-file [extra json fields]
measure() {
  local case="$1" m="$2" c="$3" url="$4" body="$5" extra="${6:-}" watch=() out pid rss peak=0 t0 t1 u0 u1
  [[ "$case" =~ $cases_re ]] || return 0
  case "$m" in
    nginx) read -r -a watch <<<"$(nginx_pids)" ;;
    backstop) watch=("$backstop_pid") ;;
  esac
  t0="$(cpu_ticks "${watch[@]}")" u0="$(user_ticks "${watch[@]}")"
  BODY_FILE="$tmp/$body.json" taskset -c "$load_core" \
    wrk -t1 -c"$c" -d"${duration}s" --timeout 10s --latency -s bench/post.lua "$url" \
    >"$tmp/wrk.out" 2>&1 &
  pid=$!
  if [ -n "${BENCH_PERF:-}" ] && [ "$m" = backstop ] && [ "$case" = "${BENCH_PERF_CASE:-same_format}" ]; then
    # Profile the gateway during this run: BENCH_PERF=path/to/perf.data (cpu-clock sampling).
    perf record -q -e cpu-clock -F 1999 ${BENCH_PERF_CALLGRAPH:+--call-graph dwarf,32768} \
      -p "$backstop_pid" -o "$BENCH_PERF.$c" -- sleep "$((duration - 1))" >/dev/null 2>&1 || true
  fi
  while kill -0 "$pid" 2>/dev/null; do
    if [ "${#watch[@]}" -gt 0 ]; then
      rss="$(rss_kb "${watch[@]}")"
      [ "$rss" -gt "$peak" ] && peak="$rss"
    fi
    sleep 0.2
  done
  wait "$pid" || { cat "$tmp/wrk.out" >&2; fail "wrk failed on $case/$m/$c"; }
  t1="$(cpu_ticks "${watch[@]}")" u1="$(user_ticks "${watch[@]}")"
  out="$(sed -n 's/^RESULT //p' "$tmp/wrk.out")"
  [ -n "$out" ] || { cat "$tmp/wrk.out" >&2; fail "wrk printed no result for $case/$m/$c"; }
  python3 - "$out" "$case" "$m" "$c" "$((t1 - t0))" "$clk_tck" "$peak" "$extra" "$((u1 - u0))" >>"$results" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
r.update(case=sys.argv[2], mode=sys.argv[3], conns=int(sys.argv[4]), cpu_ticks=int(sys.argv[5]),
         clk_tck=int(sys.argv[6]), rss_load_kb=int(sys.argv[7]), cpu_user_ticks=int(sys.argv[9]))
if sys.argv[8]:
    r.update(json.loads(sys.argv[8]))
print(json.dumps(r))
EOF
  printf '  [%4ss] %-14s %-8s c=%-4s %s\n' "$SECONDS" "$case" "$m" "$c" \
    "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%8.0f req/s  p50 %6d us  p99 %6d us  errors %d" % (r["requests"]*1e6/r["duration_us"], r["p50_us"], r["p99_us"], r["err_status"]+r["err_read"]+r["err_connect"]+r["err_timeout"]+r["err_write"]))' "$out")"
}

three() { # case body conns: direct, nginx, backstop
  measure "$1" direct "$3" "$direct_url" "$2"
  measure "$1" nginx "$3" "$nginx_url" "$2"
  measure "$1" backstop "$3" "$backstop_url" "$2"
}

failover() { # case body conns primary-fake
  local before after
  [[ "$1" =~ $cases_re ]] || return 0
  curl -sf -o /dev/null -X DELETE "http://$backstop_addr/v1/cooldowns" || fail "cannot clear cooldowns"
  before="$(recorded "$4")"
  measure "$1" backstop "$3" "$backstop_url" "$2" "{\"primary_before\": $before}"
  after="$(recorded "$4")"
  python3 - "$results" "$((after - before))" <<'EOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
lines = open(path).read().splitlines()
last = json.loads(lines[-1]); last["primary_attempts"] = n; lines[-1] = json.dumps(last)
open(path, "w").write("\n".join(lines) + "\n")
EOF
}

stamp "load (wrk -t1, ${duration} s per run; load on core $load_core, proxy on core $proxy_core, fakes on core $fake_core)"
for c in "${conns_list[@]}"; do
  three same_format oa_1k "$c"
  three stream_20 oa_1k_stream "$c"
  measure cross_format backstop "$c" "$backstop_url" cross_1k
  failover failover_503 fo503_1k "$c" "$bad_fake"
  failover failover_reset forst_1k "$c" "$rst_fake"
done
gc=32
[ "$mode" = quick ] && gc="${conns_list[0]}"
three prompt_100k oa_100k "$gc"
measure chain_4 backstop "$gc" "$backstop_url" chain4_1k
measure keys_100 backstop "$gc" "$backstop_url" keys100_1k
measure chain4_keys100 backstop "$gc" "$backstop_url" chain4keys100_1k
for i in $(seq 2 "$repeats"); do
  echo "  (repeat $i of the main case)"
  three same_format oa_1k "$gc"
done
backstop_after_rss="$(rss_kb "$backstop_pid")"
nginx_after_rss="$(rss_kb $(nginx_pids))"

stamp "$streams concurrent slow streams (one chunk a second)"
echo '{"requested": 0, "opened": 0, "failed": 0, "first_failures": [], "open_secs": 0, "rss_before_kb": 0, "rss_open_kb": 0, "rss_after_close_kb": 0}' >"$tmp/streams_backstop.json"
cp "$tmp/streams_backstop.json" "$tmp/streams_nginx.json"
if [ "$streams" -gt 0 ]; then
python3 bench/slow_streams.py --url "$backstop_url" --body-file "$tmp/slow_stream.json" \
  --n "$streams" --pid "$backstop_pid" --hold 3 --timeout 90 >"$tmp/streams_backstop.json" ||
  fail "slow streams through backstop failed"
read -r -a npids <<<"$(nginx_pids)"
npid_args=()
for p in "${npids[@]}"; do npid_args+=(--pid "$p"); done
python3 bench/slow_streams.py --url "http://127.0.0.1:$nginx_port/slow/v1/chat/completions" \
  --body-file "$tmp/slow_stream.json" --n "$streams" "${npid_args[@]}" --hold 3 --timeout 90 \
  >"$tmp/streams_nginx.json" || fail "slow streams through nginx failed"
fi
cat "$tmp/streams_backstop.json" "$tmp/streams_nginx.json"

python3 - "$results" "$backstop_idle_rss" "$backstop_after_rss" "$nginx_idle_rss" "$nginx_after_rss" \
  "$tmp/streams_backstop.json" "$tmp/streams_nginx.json" >"$tmp/extra.json" <<'EOF'
import json, sys
_, results, bi, ba, ni, na, sb, sn = sys.argv
print(json.dumps({"backstop_idle_rss_kb": int(bi), "backstop_after_load_rss_kb": int(ba),
                  "nginx_idle_rss_kb": int(ni), "nginx_after_load_rss_kb": int(na),
                  "streams_backstop": json.load(open(sb)), "streams_nginx": json.load(open(sn))}))
EOF
python3 bench/report.py "$results" "$tmp/extra.json" >"$tmp/table.md" || fail "report failed"
cat "$tmp/table.md"
if [ -n "${BENCH_OUT:-}" ]; then
  cp "$tmp/table.md" "$BENCH_OUT"
  cp "$results" "${BENCH_OUT%.md}.jsonl"
fi
# Warnings the gateway logged during the run (a failed upstream connection, etc.).
if grep -q 'ERROR' "$tmp/backstop.log"; then
  echo "note: backstop logged errors:"; grep 'ERROR' "$tmp/backstop.log" | head -5
fi
stamp "done ($mode)"
