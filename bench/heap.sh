#!/usr/bin/env bash
# Heap held per slow stream, by allocation site (valgrind's dhat), for issue #6's memory
# target: where the gateway's bytes a stream go.
#
#   bench/heap.sh [N]      N concurrent slow streams (default 500)
#
# Builds `backstop` without mimalloc (`--no-default-features`: dhat sees only the system
# allocator) and the fake; starts a fake that answers 120 words, one chunk a second; runs
# `backstop serve` under dhat (pinned to one core, as bench/run.sh pins it), holds N
# streams open with bench/slow_streams.py, stops the gateway, and prints the heap at its
# peak (dhat's t-gmax) a stream, then the largest allocation sites (bench/dhat_summary.py).
# The dhat file is left in BENCH_HEAP_OUT (default /tmp/backstop-heap) for dh_view.html.
#
# Environment: CARGO_TARGET_DIR, BENCH_HEAP_OUT, BENCH_HEAP_SITES (sites shown, default 15),
# BENCH_HEAP_PARALLEL (streams being opened at once, default 200: the peak may come while
# that many are still being set up; a low value measures the streams' own state).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
n="${1:-500}"
export CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo build -q --release -p backstop-fake --bins
cargo build -q --release -p backstop-cli --no-default-features
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bin="$target/release"
out="${BENCH_HEAP_OUT:-/tmp/backstop-heap}"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ $((n * 2 + 200)) -gt "$(ulimit -n)" ]; then
  echo "bench/heap.sh: open-file limit $(ulimit -n) is too low for $n streams" >&2
  exit 2
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh

start_fake "{\"type\":\"reply\",\"text\":\"$(words 120)\",\"chunks\":120,\"chunk_delay_ms\":1000}"

cat >"$tmp/backstop.json" <<EOT
{
  "server": {"listen": "127.0.0.1:0"},
  "providers": {
    "oa": {"api": "openai", "base_url": "http://$fake/v1", "auth": [{"profile": "k0", "key": "sk-bench-k-0000-xxxxxxxxxxxxxxxx"}]}
  },
  "agents": {"defaults": {"model": {"primary": "oa/m", "fallbacks": []}}},
  "state": {"dir": "$tmp/state"}
}
EOT
python3 -c "
import json
print(json.dumps({'model': 'oa/m', 'stream': True, 'max_tokens': 256,
                  'messages': [{'role': 'user', 'content': 'lorem ipsum ' * 6}]}))" >"$tmp/body.json"

taskset -c 1 valgrind --tool=dhat --dhat-out-file="$out/dhat.out" \
  "$bin/backstop" serve --config "$tmp/backstop.json" >"$tmp/backstop.out" 2>"$tmp/backstop.log" &
vg=$!
pids+=("$vg")
wait_line "$tmp/backstop.out" '^listening on http://'
addr="$(sed -n 's|^listening on http://||p' "$tmp/backstop.out" | head -1)"
python3 bench/slow_streams.py --url "http://$addr/v1/chat/completions" \
  --body-file "$tmp/body.json" --n "$n" --pid "$vg" --hold 3 --timeout 120 \
  --parallel-connects "${BENCH_HEAP_PARALLEL:-200}" >"$tmp/streams.json"
kill -TERM "$vg"
wait "$vg" || true
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('streams held:', d['opened'], 'of', d['requested'])" "$tmp/streams.json"
grep -E "At t-gmax" "$tmp/backstop.log" | sed 's/^==[0-9]*== *//'
python3 bench/dhat_summary.py "$out/dhat.out" --streams "$n" --sites "${BENCH_HEAP_SITES:-15}"
