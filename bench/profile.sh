#!/usr/bin/env bash
# Instruction counts per request (callgrind), for deciding on hot-path changes on a
# shared machine where wall-clock figures are noisy and the VM has no hardware counters.
#
#   bench/profile.sh [case...]     cases: same_format stream_20 cross_format (default),
#                                  keys_100 chain4_keys100 (run on their own: they open a
#                                  breaker on a provider outside their chain first)
#
# For each case: a fake provider (20-word reply in 20 chunks, recording off) and
# `backstop serve` under `valgrind --tool=callgrind` (instrumentation off at start: `--instr-atstart=no`);
# 50 warm-up requests, then instrumentation on for BENCH_PROF_REQUESTS requests
# (default 2000, wrk -c1 until that many have been answered... approximated by a
# fixed-count curl-free loop: bench/prof_client.py), then off. Prints the gateway's
# instructions per request (user space only: the kernel's share is not counted) and
# leaves callgrind.out.<case> in BENCH_PROF_OUT (default: /tmp/backstop-prof) for
# `callgrind_annotate`.
#
# Environment: CARGO_TARGET_DIR, BENCH_PROF_REQUESTS, BENCH_PROF_OUT, BENCH_PROF_CONNS
# (concurrent connections of the client, default 1), BENCH_PROF_VALGRIND_ARGS (more
# callgrind options, e.g. "--cache-sim=yes" for simulated cache misses). Builds the release binaries with
# symbols (CARGO_PROFILE_RELEASE_STRIP=none, DEBUG=line-tables-only).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo build -q --release --workspace --bins
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bin="$target/release"
out="${BENCH_PROF_OUT:-/tmp/backstop-prof}"
n="${BENCH_PROF_REQUESTS:-2000}"
conns="${BENCH_PROF_CONNS:-1}"
mkdir -p "$out"
cases=("$@")
[ "${#cases[@]}" -gt 0 ] || cases=(same_format stream_20 cross_format)

keep="${BENCH_PROF_KEEP:-}"
# shellcheck source=bench/lib.sh
. bench/lib.sh

start_fake "{\"type\":\"reply\",\"text\":\"$(words 20)\",\"chunks\":20}"

# The key-count cases' providers (only when asked for, so the other cases' config stays
# as it was): 100 keys, and one provider on a closed port whose breaker they open.
extra_providers="" extra_agents=""
case " ${cases[*]} " in *" keys_"*|*" chain4_keys"*)
  many_auth="$(python3 -c 'print(", ".join("{\"profile\": \"k%d\", \"key\": \"sk-bench-k-%04d-xxxxxxxxxxxxxxxx\"}" % (i, i) for i in range(100)))')"
  extra_providers=",
    \"many\": {\"api\": \"openai\", \"base_url\": \"http://$fake/v1\", \"auth\": [$many_auth]},
    \"dead\": {\"api\": \"openai\", \"base_url\": \"http://127.0.0.1:1/v1\", \"auth\": [{\"profile\": \"k0\", \"key\": \"sk-bench-k-0000-xxxxxxxxxxxxxxxx\"}]}"
  extra_agents=",
      {\"id\": \"keys100\", \"model\": {\"primary\": \"many/m\", \"fallbacks\": []}},
      {\"id\": \"chain4keys100\", \"model\": {\"primary\": \"many/m\", \"fallbacks\": [\"many/m2\", \"many/m3\", \"many/m4\"]}},
      {\"id\": \"fodead\", \"model\": {\"primary\": \"dead/m\", \"fallbacks\": [\"oa/m\"]}}"
  ;;
esac
cat >"$tmp/backstop.json" <<EOF
{
  "server": {"listen": "127.0.0.1:0"},
  "providers": {
    "oa": {"api": "openai", "base_url": "http://$fake/v1", "auth": [{"profile": "k0", "key": "sk-bench-k-0000-xxxxxxxxxxxxxxxx"}]},
    "an": {"api": "anthropic", "base_url": "http://$fake", "auth": [{"profile": "k0", "key": "sk-bench-k-0000-xxxxxxxxxxxxxxxx"}]}$extra_providers
  },
  "agents": {
    "defaults": {"model": {"primary": "oa/m", "fallbacks": []}},
    "list": [{"id": "cross", "model": {"primary": "an/claude-m", "fallbacks": []}}$extra_agents]
  },
  "state": {"dir": "$tmp/state"}
}
EOF

# shellcheck disable=SC2086 # BENCH_PROF_VALGRIND_ARGS is a list of options
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.out" ${BENCH_PROF_VALGRIND_ARGS:-} \
  "$bin/backstop" serve --config "$tmp/backstop.json" >"$tmp/backstop.out" 2>"$tmp/backstop.log" &
vg=$!
pids+=("$vg")
wait_line "$tmp/backstop.out" '^listening on http://'
addr="$(sed -n 's|^listening on http://||p' "$tmp/backstop.out" | head -1)"

for c in "${cases[@]}"; do
  case "$c" in
    same_format) model=oa/m stream=false ;;
    stream_20) model=oa/m stream=true ;;
    cross_format) model=cross stream=false ;;
    keys_100) model=keys100 stream=false ;;
    chain4_keys100) model=chain4keys100 stream=false ;;
    *) echo "bench/profile.sh: unknown case $c" >&2; exit 2 ;;
  esac
  case "$c" in
    # A breaker open on another provider (as the bench's failover cases leave behind):
    # the planner can no longer skip the cooldown lookups of every provider at once.
    keys_100|chain4_keys100) python3 bench/prof_client.py --url "http://$addr/v1/chat/completions" --model fodead \
      --stream false --requests 1 --conns 1 >/dev/null ;;
  esac
  python3 bench/prof_client.py --url "http://$addr/v1/chat/completions" --model "$model" \
    --stream "$stream" --requests 50 --conns "$conns" >/dev/null
  callgrind_control -z "$vg" >/dev/null
  callgrind_control -i on "$vg" >/dev/null
  python3 bench/prof_client.py --url "http://$addr/v1/chat/completions" --model "$model" \
    --stream "$stream" --requests "$n" --conns "$conns" >"$tmp/client.out"
  callgrind_control -i off "$vg" >/dev/null
  callgrind_control -d "$c" "$vg" >/dev/null
  sleep 1
  f="$(ls -t "$tmp"/cg.out* | head -1)"
  cp "$f" "$out/callgrind.out.$c"
  total="$(callgrind_annotate "$out/callgrind.out.$c" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)"
  echo "$c: $(cat "$tmp/client.out"); $total Ir in the gateway; $((total / n)) Ir per request"
done
