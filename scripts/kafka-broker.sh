#!/usr/bin/env bash
# Runs a local Kafka-protocol broker (tansu, see scripts/setup-kafka.sh) on
# loopback for examples and benchmarks; tests start their own with
# tests/kafka_support/broker.rs.
#
#   scripts/kafka-broker.sh start [PORT]                  (default 9092)
#   scripts/kafka-broker.sh stop [PORT]
#   scripts/kafka-broker.sh status [PORT]
#   scripts/kafka-broker.sh topic NAME PARTITIONS [PORT]
#
# `start` runs tansu in the background on 127.0.0.1:PORT with SQLite storage
# in $DAB_RUN_DIR/tansu-PORT.db, removed by `start` so that every start is
# fresh (DAB_KAFKA_STORAGE overrides the --storage-engine URL; not
# memory://, whose fetch skips messages after a consumer hand-over in the
# middle of a record batch: docs/decisions.md, "Kafka tests run tansu on
# SQLite"), its log in $DAB_RUN_DIR/tansu-PORT.log and its
# pid in $DAB_RUN_DIR/tansu-PORT.pid ($DAB_RUN_DIR defaults to
# /tmp/dab-kafka), and waits at most $WAIT seconds (default 30) until it
# answers a metadata request; otherwise it prints the log's tail, stops it,
# and fails. Starting a broker that already runs is a no-op. `stop` sends
# SIGTERM, then SIGKILL after 10 s. `topic` creates a topic (`tansu topic
# create`, with retries; an existing topic is fine). The broker binary is
# found (or built) by scripts/setup-kafka.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

run_dir="${DAB_RUN_DIR:-/tmp/dab-kafka}"
wait_s="${WAIT:-30}"

usage() {
  sed -n '6,9p' "$0" | sed 's/^# *//' >&2
  exit 2
}

pidfile() { echo "$run_dir/tansu-$1.pid"; }
logfile() { echo "$run_dir/tansu-$1.log"; }

# The pid in the pidfile of PORT when that process is alive, else nothing.
live_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  # Alive, and still tansu (not a later process that got the same pid).
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "tansu broker"; then
    echo "$pid"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tansu_bin() { "$here/setup-kafka.sh" --print 2>/dev/null || "$here/setup-kafka.sh" --print; }

# Whether the broker on PORT answers a metadata request.
answers() { timeout 5 "$1" topic list --broker "tcp://127.0.0.1:$2" >/dev/null 2>&1; }

cmd_start() {
  local port="${1:-9092}" bin pid log deadline
  mkdir -p "$run_dir"
  pid="$(live_pid "$port")"
  if [ -n "$pid" ]; then
    echo "kafka-broker: tansu already runs on 127.0.0.1:$port (pid $pid)" >&2
    return 0
  fi
  if port_open "$port"; then
    echo "kafka-broker: 127.0.0.1:$port is taken by another process" >&2
    exit 1
  fi
  bin="$(tansu_bin)"
  log="$(logfile "$port")"
  if [ -z "${DAB_KAFKA_STORAGE:-}" ]; then
    rm -f "$run_dir/tansu-$port.db" "$run_dir/tansu-$port.db-wal" "$run_dir/tansu-$port.db-shm"
  fi
  # cd: tansu reads a .env file from its working directory; the -u list
  # keeps the caller's environment from switching on schema registries or
  # data lakes.
  (
    cd "$run_dir"
    exec nohup env -u SCHEMA_REGISTRY -u DATA_LAKE -u ICEBERG_CATALOG -u CLUSTER_ID \
      -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE -u OTEL_EXPORTER_OTLP_ENDPOINT NO_COLOR=1 \
      "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "${DAB_KAFKA_STORAGE:-sqlite://tansu-$port.db}" \
      </dev/null >"$log" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$(pidfile "$port")"
  deadline=$((SECONDS + wait_s))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka-broker: tansu exited during start; the end of $log:" >&2
      tail -n 20 "$log" >&2 || true
      rm -f "$(pidfile "$port")"
      exit 1
    fi
    if port_open "$port" && answers "$bin" "$port"; then break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka-broker: tansu did not answer on 127.0.0.1:$port within ${wait_s} s; the end of $log:" >&2
      tail -n 20 "$log" >&2 || true
      cmd_stop "$port"
      exit 1
    fi
    sleep 0.1
  done
  echo "kafka-broker: tansu runs on 127.0.0.1:$port (pid $pid, log $log)" >&2
}

cmd_stop() {
  local port="${1:-9092}" pid i
  pid="$(live_pid "$port")"
  if [ -z "$pid" ]; then
    echo "kafka-broker: no tansu of ours on 127.0.0.1:$port" >&2
    rm -f "$(pidfile "$port")"
    return 0
  fi
  kill -CONT "$pid" 2>/dev/null || true # a paused broker cannot act on SIGTERM
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka-broker: tansu (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$port")"
  echo "kafka-broker: stopped tansu on 127.0.0.1:$port (pid $pid)" >&2
}

cmd_status() {
  local port="${1:-9092}" pid
  pid="$(live_pid "$port")"
  if [ -z "$pid" ]; then
    echo "kafka-broker: no tansu of ours on 127.0.0.1:$port" >&2
    exit 1
  fi
  echo "kafka-broker: tansu runs on 127.0.0.1:$port (pid $pid, log $(logfile "$port"))" >&2
}

cmd_topic() {
  [ $# -ge 2 ] || usage
  local name="$1" parts="$2" port="${3:-9092}" bin out i
  bin="$(tansu_bin)"
  for i in 1 2 3 4 5; do
    if out="$(NO_COLOR=1 timeout 10 "$bin" topic create --broker "tcp://127.0.0.1:$port" --partitions "$parts" "$name" 2>&1)"; then
      echo "kafka-broker: topic $name ($parts partitions) on 127.0.0.1:$port" >&2
      return 0
    fi
    case "$out" in
      *"already exists"*)
        echo "kafka-broker: topic $name exists already on 127.0.0.1:$port" >&2
        return 0
        ;;
    esac
    sleep "$i"
  done
  echo "kafka-broker: could not create topic $name on 127.0.0.1:$port:" >&2
  echo "$out" >&2
  exit 1
}

[ $# -ge 1 ] || usage
cmd="$1"
shift
case "$cmd" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  topic) cmd_topic "$@" ;;
  *) usage ;;
esac
