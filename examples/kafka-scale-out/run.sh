#!/usr/bin/env bash
# The kafka-scale-out example, end to end on one machine: a broker, one
# ingest process and two worker processes in one consumer group.
#
#   examples/kafka-scale-out/run.sh [EVENTS]    (default 20000)
#
# Starts tansu on 127.0.0.1:$KAFKA_PORT (default 9392), the two workers
# (`dab run --service worker`), then the ingest service (`--service
# ingest`), feeds EVENTS NDJSON events (types A and B alternating) to the
# ingest's TCP port, waits until the workers have written every A event,
# prints what each worker handled, and stops everything.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
events="${1:-20000}"
port="${KAFKA_PORT:-9392}"
ingest_port="${INGEST_PORT:-7401}"
export KAFKA_BROKERS="127.0.0.1:$port" INGEST_PORT="$ingest_port"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
work="${WORK_DIR:-$(mktemp -d)}"
export OUT_DIR="$work/out"
mkdir -p "$OUT_DIR"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$root/scripts/kafka-broker.sh" stop "$port" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== building dab" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dab-cli
dab="$CARGO_TARGET_DIR/release/dab"

echo "== broker on 127.0.0.1:$port" >&2
"$root/scripts/kafka-broker.sh" start "$port"
"$root/scripts/kafka-broker.sh" topic scale-out-events 4 "$port"

cd "$here"
"$dab" validate ingest.dab worker.dab --config dab.yaml
for w in 1 2; do
  WORKER=$w "$dab" run ingest.dab worker.dab --config dab.yaml --service worker \
    2>"$work/worker-$w.log" &
  pids+=($!)
done
WORKER=0 "$dab" run ingest.dab worker.dab --config dab.yaml --service ingest \
  2>"$work/ingest.log" &
pids+=($!)

# Wait for both workers to have partitions and for the ingest listener.
for _ in $(seq 1 150); do
  if [ "$(grep -l 'partitions assigned' "$work"/worker-*.log 2>/dev/null | wc -l)" -ge 2 ] &&
    (exec 3<>"/dev/tcp/127.0.0.1/$ingest_port") 2>/dev/null; then
    break
  fi
  sleep 0.2
done

echo "== feeding $events events to the ingest service" >&2
python3 - "$events" "$ingest_port" <<'PY'
import json, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
buf = []
for i in range(n):
    t = "A" if i % 2 == 0 else "B"
    buf.append(json.dumps({"host": "feeder", "pid": 1, "type": t, "offset": i, "message": "m%d" % i}) + "\n")
    if len(buf) == 1000:
        s.sendall("".join(buf).encode()); buf = []
s.sendall("".join(buf).encode())
s.close()
PY

want=$(( (events + 1) / 2 ))
echo "== waiting for the workers to handle $want A events" >&2
got=0
for _ in $(seq 1 300); do
  got=$( (cat "$OUT_DIR"/worker-*.ndjson 2>/dev/null || true) | wc -l)
  [ "$got" -ge "$want" ] && break
  sleep 0.2
done

for w in 1 2; do
  n=$(wc -l < "$OUT_DIR/worker-$w.ndjson" 2>/dev/null || echo 0)
  parts=$( (grep -o 'partitions assigned.*' "$work/worker-$w.log" || true) | tail -1 | sed 's/.*partitions=//')
  echo "worker $w handled $n events (partitions $parts)"
done
distinct=$(cat "$OUT_DIR"/worker-*.ndjson | python3 -c 'import json,sys; print(len({json.loads(l)["offset"] for l in sys.stdin}))')
echo "total: $got lines, $distinct distinct A events of $want expected"
[ "$distinct" -eq "$want" ] || { echo "MISSING EVENTS" >&2; exit 1; }
