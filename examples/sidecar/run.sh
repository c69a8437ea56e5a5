#!/usr/bin/env bash
# The sidecar example end to end on one machine: gRPC, HTTP, TCP and unix
# socket clients feed dab's disk spool; from the spool, events go to the
# Kafka topic of their type or to the dead letter topic. In the middle of
# the feed the broker is killed and kept down for 30 s; the clients must
# keep being answered, and at the end every accepted event must be in
# exactly one topic, the one its type names.
#
#   examples/sidecar/run.sh
#
# Starts tansu (SQLite storage, so that a restart keeps what it had) on a
# free loopback port, creates the topics, runs dab (sidecar.dab), runs
# feed.py (the four clients) in the background, kills the broker with -9
# BEFORE_S seconds (default 5) after every client was answered once,
# starts it again on the same storage and port 30 s later, stops the feed
# AFTER_S seconds (default 5) after that, waits until the spool has
# shipped everything, stops dab, and runs report.py, which reads every
# topic and fails on any loss. Every wait is bounded; everything it starts
# is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
outage_s=30 # the issue's figure
before_s="${BEFORE_S:-5}"
after_s="${AFTER_S:-5}"
wait_s="${WAIT_S:-120}"
venv="${DAB_VENV:-$HOME/.cache/dab/venv}"
work="${WORK_DIR:-$(mktemp -d)}"
mkdir -p "$work"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
export DAB_RUN_DIR="${DAB_RUN_DIR:-$work/kafka}"

# A port nobody listens on now (the kernel's pick for port 0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
kafka_port="${KAFKA_PORT:-$(free_port)}"
metrics_port="${METRICS_PORT:-$(free_port)}"
export GRPC_PORT="${GRPC_PORT:-$(free_port)}"
export HTTP_PORT="${HTTP_PORT:-$(free_port)}"
export TCP_PORT="${TCP_PORT:-$(free_port)}"
export UNIX_SOCKET="$work/sidecar.sock"
export SPOOL_DIR="$work/spool"
export KAFKA_BROKERS="127.0.0.1:$kafka_port"
topics=(events.Login events.Message events.ApiCall events.Signup sidecar.dead-letter)

dab_pid="" feed_pid="" child="" broker=0
cleanup() {
  if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
  if [ -n "$feed_pid" ]; then kill "$feed_pid" 2>/dev/null || true; fi
  if [ -n "$dab_pid" ]; then kill -KILL "$dab_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$broker" = 1 ]; then "$root/scripts/kafka-broker.sh" stop "$kafka_port" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Runs a step (a sleep too) in the background and waits for it, so that
# SIGTERM reaches the trap at once rather than after the step.
step() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}
fail() { echo "run.sh: $*" >&2; exit 1; }
now_ns() { date +%s%N; }
metrics() { curl -s --max-time 5 "http://127.0.0.1:$metrics_port/metrics" || true; }
# The value of one sample of the metrics text on stdin (0 when absent).
sample() { awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'; }
# The inputs feed.py has had an answer on so far.
answered_inputs() {
  (grep -o '"input": "[a-z]*"' "$work/answers.ndjson" 2>/dev/null || true) | sort -u | wc -l
}

[ -x "$venv/bin/python" ] || fail "no venv at $venv: run scripts/setup-python.sh"
if [ -n "${DAB_BIN:-}" ]; then
  dab="$DAB_BIN"
else
  echo "== building dab" >&2
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dab-cli
  dab="$CARGO_TARGET_DIR/release/dab"
fi

echo "== broker on 127.0.0.1:$kafka_port (storage $DAB_RUN_DIR/tansu-$kafka_port.db)" >&2
broker=1
"$root/scripts/kafka-broker.sh" start "$kafka_port"
for t in "${topics[@]}"; do
  "$root/scripts/kafka-broker.sh" topic "$t" 2 "$kafka_port"
done

cd "$here"
"$dab" validate sidecar.dab --config dab.yaml
"$dab" run sidecar.dab --config dab.yaml --metrics "127.0.0.1:$metrics_port" 2>"$work/dab.log" &
dab_pid=$!
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$metrics_port/readyz")" = 200 ] && break
  kill -0 "$dab_pid" 2>/dev/null || fail "dab exited at start; see $work/dab.log"
  sleep 0.1
done
[ -S "$UNIX_SOCKET" ] || fail "dab is not ready after 30 s; see $work/dab.log"

echo "== feeding over gRPC :$GRPC_PORT, HTTP :$HTTP_PORT, TCP :$TCP_PORT and $UNIX_SOCKET" >&2
rm -f "$work/stop-feed" "$work/broker-down"
"$venv/bin/python" "$here/feed.py" --grpc "$GRPC_PORT" --http "$HTTP_PORT" --tcp "$TCP_PORT" \
  --unix "$UNIX_SOCKET" --proto-dir "$root/proto" --out "$work" \
  --stop-file "$work/stop-feed" --late-file "$work/broker-down" \
  --max-seconds $((before_s + outage_s + after_s + 90)) >"$work/feed.json" &
feed_pid=$!
for _ in $(seq 1 300); do
  [ "$(answered_inputs)" -ge 4 ] && break
  kill -0 "$feed_pid" 2>/dev/null || fail "feed.py exited early"
  sleep 0.1
done
[ "$(answered_inputs)" -ge 4 ] || fail "not every input answered within 30 s; see $work/dab.log"
step sleep "$before_s"

echo "== killing the broker (kill -9) for $outage_s s" >&2
pid="$(cat "$DAB_RUN_DIR/tansu-$kafka_port.pid")"
down_ns="$(now_ns)"
kill -KILL "$pid"
touch "$work/broker-down" # feed.py starts sending Signup events
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "tansu (pid $pid) outlived kill -9 by 10 s"
metrics >"$work/metrics-down.txt"
# Sleep out the rest of the outage, counted from the kill.
rest_ms=$(((outage_s * 1000000000 - ($(now_ns) - down_ns)) / 1000000))
if [ "$rest_ms" -gt 0 ]; then step sleep "$((rest_ms / 1000)).$(printf '%03d' $((rest_ms % 1000)))"; fi
kill -0 "$feed_pid" 2>/dev/null || fail "feed.py stopped during the outage"
metrics >"$work/metrics-up.txt"
up_ns="$(now_ns)"

echo "== starting the broker again on the same storage" >&2
step env DAB_KAFKA_STORAGE="sqlite://tansu-$kafka_port.db" "$root/scripts/kafka-broker.sh" start "$kafka_port"
step sleep "$after_s"
touch "$work/stop-feed"
for _ in $(seq 1 300); do
  kill -0 "$feed_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$feed_pid" 2>/dev/null && fail "feed.py did not stop within 30 s"
status=0
wait "$feed_pid" || status=$?
feed_pid=""
[ "$status" = 0 ] || fail "feed.py failed ($status): $(cat "$work/feed.json")"
accepted=$(wc -l <"$work/accepted.ndjson")

echo "== waiting (at most ${wait_s} s) until the spool has shipped all $accepted events" >&2
deadline=$((SECONDS + wait_s))
appended=0 acked=0
while [ "$SECONDS" -lt "$deadline" ]; do
  m="$(metrics)"
  appended=$(sample 'dab_diskq_appended_records_total{queue="Spool"}' <<<"$m")
  acked=$(sample 'dab_diskq_reader_acked_records_total{queue="Spool",reader="ship"}' <<<"$m")
  [ "$appended" -ge "$accepted" ] && [ "$acked" -ge "$appended" ] && break
  sleep 0.5
done
metrics >"$work/metrics-end.txt"
if [ "$acked" -lt "$appended" ] || [ "$appended" -lt "$accepted" ]; then
  echo "== the spool did not ship everything within ${wait_s} s; see $work/dab.log" >&2
fi
echo "== $acked of $appended spooled events shipped; stopping dab" >&2
kill -TERM "$dab_pid"
# dab drains for at most 30 s, then abandons what it holds (exit 3).
for _ in $(seq 1 450); do
  kill -0 "$dab_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$dab_pid" 2>/dev/null && fail "dab did not stop within 45 s of SIGTERM"
dab_status=0
wait "$dab_pid" || dab_status=$?
dab_pid=""

# The report runs whatever dab's exit: it shows what is missing.
echo "== reading every topic" >&2
report_status=0
step "$venv/bin/python" "$here/report.py" --work "$work" --brokers "$KAFKA_BROKERS" \
  --down-ns "$down_ns" --up-ns "$up_ns" || report_status=$?
[ "$dab_status" = 0 ] || fail "dab exited with $dab_status; see $work/dab.log"
[ "$report_status" = 0 ] || exit "$report_status"
