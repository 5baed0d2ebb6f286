# Shared by bench/profile.sh and bench/heap.sh (sourced, not run): a temporary directory
# and the processes to stop on exit, waiting for a line in a log, and a fake provider
# with a default reply and recording off.
#
# The sourcing script sets `bin` (the release binaries) and `keep` (non-empty: leave
# the temporary directory) before calling these.

tmp="$(mktemp -d "${TMPDIR:-/tmp}/backstop-bench.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${keep:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

wait_line() { # file pattern
  local i
  for i in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$1" >&2
  echo "$0: timed out waiting for $2 in $1" >&2
  exit 1
}

start_fake() { # default-step-json -> sets `fake` (its address)
  "$bin/backstop-fake" --listen 127.0.0.1:0 >"$tmp/fake.log" 2>&1 &
  pids+=("$!")
  wait_line "$tmp/fake.log" '^listening on http://'
  fake="$(sed -n 's|^listening on http://||p' "$tmp/fake.log" | head -1)"
  curl -sf -o /dev/null -X POST "http://$fake/_fake/default" -d "$1"
  curl -sf -o /dev/null -X POST "http://$fake/_fake/recording" -d '{"on": false}'
}

words() { # n words of text
  python3 -c "import sys; print(' '.join('word%d' % i for i in range(int(sys.argv[1]))))" "$1"
}
