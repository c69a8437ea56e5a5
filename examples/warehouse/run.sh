#!/usr/bin/env bash
# The warehouse example, end to end on one machine: HTTP ingest -> Kafka
# topic -> Parquet on S3-compatible storage -> DuckDB.
#
#   examples/warehouse/run.sh [EVENTS]    (default 5000)
#
# Starts tansu on 127.0.0.1:$KAFKA_PORT (default 9394) and moto's S3 server
# on 127.0.0.1:$S3_PORT (default 9395), makes the bucket `warehouse`, runs
# dab (warehouse.dab: the ingest and the archiver in one process), POSTs
# EVENTS server_logs events spanning 6 hours (feed.py), waits until
# `dab_parquet_rows_committed_total` says every one is in a committed
# object, stops dab, and queries the objects with DuckDB (query.py). Every
# wait is bounded; everything it starts is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
events="${1:-5000}"
kafka_port="${KAFKA_PORT:-9394}"
s3_port="${S3_PORT:-9395}"
ingest_port="${INGEST_PORT:-7402}"
metrics_port="${METRICS_PORT:-9396}"
wait_s="${WAIT_S:-180}"
venv="${DAB_VENV:-$HOME/.cache/dab/venv}"
work="${WORK_DIR:-$(mktemp -d)}"
mkdir -p "$work"

export KAFKA_BROKERS="127.0.0.1:$kafka_port" INGEST_PORT="$ingest_port"
export S3_ENDPOINT="http://127.0.0.1:$s3_port" S3_BUCKET=warehouse
export OUT_DIR="$work/out" SPOOL_DIR="$work/spool"
# moto takes any key; dab, s3.py and query.py read them from here.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-warehouse-example}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-warehouse-example-secret}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
mkdir -p "$OUT_DIR"

dab_pid="" moto_pid="" child="" broker=0
cleanup() {
  if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
  if [ -n "$dab_pid" ]; then kill -KILL "$dab_pid" 2>/dev/null || true; fi
  if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$broker" = 1 ]; then "$root/scripts/kafka-broker.sh" stop "$kafka_port" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Runs a step in the background and waits for it, so that SIGTERM reaches
# the trap at once rather than after the step.
step() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
fail() { echo "run.sh: $*" >&2; exit 1; }

[ -x "$venv/bin/moto_server" ] || fail "no moto server at $venv/bin/moto_server: run scripts/setup-python.sh"
if [ -n "${DAB_BIN:-}" ]; then
  dab="$DAB_BIN"
else
  echo "== building dab" >&2
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dab-cli
  dab="$CARGO_TARGET_DIR/release/dab"
fi

echo "== broker on 127.0.0.1:$kafka_port" >&2
broker=1
"$root/scripts/kafka-broker.sh" start "$kafka_port"
"$root/scripts/kafka-broker.sh" topic server-logs 4 "$kafka_port"

echo "== S3 server (moto) on 127.0.0.1:$s3_port" >&2
port_open "$s3_port" && fail "127.0.0.1:$s3_port is taken"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 300); do
  port_open "$s3_port" && break
  kill -0 "$moto_pid" 2>/dev/null || fail "moto_server exited; see $work/moto.log"
  sleep 0.1
done
port_open "$s3_port" || fail "moto_server did not listen within 30 s"
"$venv/bin/python" "$root/tests/interop/s3.py" mkbucket "$S3_ENDPOINT" "$S3_BUCKET"

cd "$here"
"$dab" validate warehouse.dab --config dab.yaml
"$dab" run warehouse.dab --config dab.yaml --metrics "127.0.0.1:$metrics_port" 2>"$work/dab.log" &
dab_pid=$!
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$metrics_port/readyz")" = 200 ] && break
  kill -0 "$dab_pid" 2>/dev/null || fail "dab exited at start; see $work/dab.log"
  sleep 0.1
done

echo "== posting $events events to 127.0.0.1:$ingest_port" >&2
step python3 "$here/feed.py" "$events" "$ingest_port"

echo "== waiting (at most ${wait_s} s) until $events rows are committed" >&2
rows=0
deadline=$((SECONDS + wait_s))
while [ "$SECONDS" -lt "$deadline" ]; do
  rows=$( (curl -s "http://127.0.0.1:$metrics_port/metrics" || true) |
    awk '/^dab_parquet_rows_committed_total\{sink="Warehouse"\}/ { print $2 }')
  rows="${rows:-0}"
  [ "$rows" -ge "$events" ] && break
  sleep 0.5
done
echo "== $rows rows committed; stopping dab" >&2
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
[ "$rows" -ge "$events" ] || fail "only $rows of $events rows were committed within ${wait_s} s; see $work/dab.log"

echo "== querying s3://$S3_BUCKET/server_logs with DuckDB" >&2
step "$venv/bin/python" "$here/query.py" "$S3_ENDPOINT" "$S3_BUCKET" server_logs/
