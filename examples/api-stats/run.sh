#!/usr/bin/env bash
# The api-stats example end to end on one machine: the seed's Samza jobs
# (router, per-team windowed statistics with a teams table, the experiment
# exposure join) in one dab process, fed over HTTP; prints the results and
# checks them against what feed.py computed in plain Python.
#
#   examples/api-stats/run.sh [CALLS]    (default 3000)
#
# Every wait is bounded; dab is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
calls="${1:-3000}"
ingest_port="${INGEST_PORT:-7412}"
metrics_port="${METRICS_PORT:-9412}"
wait_s="${WAIT_S:-120}"
work="${WORK_DIR:-$(mktemp -d)}"
mkdir -p "$work/out"
export INGEST_PORT="$ingest_port" OUT_DIR="$work/out" EXAMPLE_DIR="$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"

dab_pid="" child=""
cleanup() {
  if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
  if [ -n "$dab_pid" ]; then kill -KILL "$dab_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
step() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}
fail() { echo "run.sh: $*" >&2; exit 1; }

if [ -n "${DAB_BIN:-}" ]; then
  dab="$DAB_BIN"
else
  echo "== building dab" >&2
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dab-cli
  dab="$CARGO_TARGET_DIR/release/dab"
fi

cd "$here"
"$dab" validate api-stats.dab --config dab.yaml
"$dab" run api-stats.dab --config dab.yaml --state-dir "$work/state" \
  --metrics "127.0.0.1:$metrics_port" 2>"$work/dab.log" &
dab_pid=$!
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$metrics_port/readyz")" = 200 ] && break
  kill -0 "$dab_pid" 2>/dev/null || fail "dab exited at start; see $work/dab.log"
  sleep 0.1
done

echo "== posting $calls API calls and the experiment's exposures to 127.0.0.1:$ingest_port" >&2
step python3 "$here/feed.py" "$ingest_port" "$work/expected.json" "$calls"

echo "== waiting (at most ${wait_s} s) for every result" >&2
deadline=$((SECONDS + wait_s))
while [ "$SECONDS" -lt "$deadline" ]; do
  if python3 "$here/report.py" "$work/expected.json" "$work/out" --quiet 2>/dev/null; then
    break
  fi
  sleep 1
done
echo "== stopping dab" >&2
kill -TERM "$dab_pid"
for _ in $(seq 1 300); do
  kill -0 "$dab_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$dab_pid" 2>/dev/null && fail "dab did not stop within 30 s of SIGTERM"
status=0
wait "$dab_pid" || status=$?
dab_pid=""
[ "$status" = 0 ] || fail "dab exited with $status; see $work/dab.log"
step python3 "$here/report.py" "$work/expected.json" "$work/out"
