#!/usr/bin/env bash
# Kafka -> Parquet on S3 figures for docs/PERFORMANCE.md ("## Parquet";
# issue 12, "Speed"), against a tansu broker (memory storage) and moto's S3
# server that this script starts on free loopback ports and stops on exit.
#
# Preloads $N server_logs events (JSON DAB events, type ServerLogs, whose
# `message` is the payload object as a string; event i in hour i % $HOURS,
# so every batch touches $HOURS hours) into a $PARTITIONS-partition topic,
# then, $RUNS times (interleaved, fresh consumer groups every time):
#  - the plain consumer (scripts/bench-parquet.py consume: confluent-kafka,
#    i.e. librdkafka, reading the whole topic, doing nothing with it):
#    events/s from the first message to the last; the ceiling;
#  - for each max_open_writers in $WRITERS: `dab run` of
#      r.NewPipeline().In(KIn).FilterType(ServerLogs).Out(Lake)
#    with a kafka source and a parquet sink on s3://bench/<run> at moto
#    (the sink's defaults: files commit at 5m or 64 MiB unacknowledged):
#    when its /metrics (polled every 100 ms) says the source has read $N,
#    it is stopped with SIGTERM, whose drain commits every open file;
#    events/s from the first poll where dab_source_events_total > 0 to its
#    exit, its peak RSS (VmHWM), and the rows and files then under its
#    prefix (pyarrow), which must be $N for the run to be complete.
# Both consumers get fetch.wait.max.ms=$FETCH_WAIT_MS (tansu sleeps for
# half of a fetch's max wait even when it has data; see "## Kafka").
# Row groups are the sink's default (arrow-rs: at most 1,048,576 rows);
# there is no setting for them to vary.
#
# Before each measurement it waits (at most $QUIET_WAIT s) for other work
# to use under a quarter of the machine, and records how busy it was.
# Prints medians, ratios to the plain consumer and the target (>= 0.8).
# With PERF=1 the first DAB run is profiled with `perf record` and the top
# of the report (self time by symbol) is printed.
# Every wait is bounded; everything started here is stopped on exit.
#
# Usage: scripts/bench-parquet.sh
# Knobs (environment): N=300000 RUNS=3 PARTITIONS=3 HOURS=4 WRITERS="2 16"
#   FETCH_WAIT_MS=10 FILE_AGE= (max_file_age) UNACKED= (max_unacked_bytes) TIMEOUT=300 QUIET_WAIT=30 PERF=0 KEEP=1 (keep the work dir)
#   CARGO_TARGET_DIR (~/.cache/dab/target); DAB_BIN= (a `dab` binary to
#   measure instead of the one built here); DAB_VENV (~/.cache/dab/venv).

set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
RUNS=${RUNS:-3}
PARTITIONS=${PARTITIONS:-3}
HOURS=${HOURS:-4}
WRITERS=${WRITERS:-2 16}
FETCH_WAIT_MS=${FETCH_WAIT_MS:-10}
TIMEOUT=${TIMEOUT:-300}
QUIET_WAIT=${QUIET_WAIT:-30}
PERF=${PERF:-0}
TARGET_RATIO=0.8
# FILE_AGE=D sets the sink's max_file_age; unset, the default (5m).
FILE_AGE_FIELD=${FILE_AGE:+, max_file_age: $FILE_AGE}
# UNACKED=N sets the sink's max_unacked_bytes; unset, the default.
UNACKED_FIELD=${UNACKED:+, max_unacked_bytes: $UNACKED}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
VENV="${DAB_VENV:-$HOME/.cache/dab/venv}"
PY="$VENV/bin/python"
MOTO="$VENV/bin/moto_server"
DAB="${DAB_BIN:-$CARGO_TARGET_DIR/release/dab}"
DRIVER=scripts/bench-parquet.py
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-bench-parquet.XXXXXX")
STARTED=()
BROKER_PORT=
# Credentials for moto and dab, only through the environment.
export AWS_ACCESS_KEY_ID=dab-bench-access-key AWS_SECRET_ACCESS_KEY=dab-bench-secret-key
export S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY

log() { printf '%s\n' "$*" >&2; }
# machine_busy, wait_quiet, median, ratio, free_port, stop, ...
. scripts/lib/bench.sh # (the script has cd'd to the repository root)

cleanup() {
    local p
    for p in "${STARTED[@]}"; do stop "$p" 5; done
    if [[ -n $BROKER_PORT ]]; then
        DAB_RUN_DIR="$TMP/broker" scripts/kafka-broker.sh stop "$BROKER_PORT" || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then log "bench-parquet: work directory kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x $MOTO && -x $PY ]] || { log "bench-parquet: no $MOTO: run scripts/setup-python.sh"; exit 1; }
if [[ -z ${DAB_BIN:-} ]]; then
    log "bench-parquet: building dab (release, $CARGO_TARGET_DIR)"
    cargo build --release --quiet -p dab-cli --bin dab
fi
TANSU=$(scripts/setup-kafka.sh --print)

# -------------------------------------------------------------- servers

BROKER_PORT=$(free_port)
BROKERS="127.0.0.1:$BROKER_PORT"
DAB_KAFKA_STORAGE="${DAB_KAFKA_STORAGE:-memory://tansu/}" DAB_RUN_DIR="$TMP/broker" \
    scripts/kafka-broker.sh start "$BROKER_PORT"
log "bench-parquet: tansu on $BROKERS"

S3_PORT=$(free_port)
S3="http://127.0.0.1:$S3_PORT"
"$MOTO" -H 127.0.0.1 -p "$S3_PORT" </dev/null >"$TMP/moto.log" 2>&1 &
MOTO_PID=$!
STARTED+=("$MOTO_PID")
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || { log "bench-parquet: moto_server exited"; tail "$TMP/moto.log" >&2; exit 1; }
    sleep 0.1
done
timeout 60 "$PY" tests/interop/s3.py mkbucket "$S3" bench
log "bench-parquet: moto on $S3 (pid $MOTO_PID), bucket bench"

DAB_RUN_DIR="$TMP/broker" scripts/kafka-broker.sh topic logs "$PARTITIONS" "$BROKER_PORT"
log "bench-parquet: preloading $N server_logs events over $HOURS hours into 'logs' ($PARTITIONS partitions)"
PRELOAD=$(timeout $((TIMEOUT + 60)) "$PY" "$DRIVER" produce --brokers "$BROKERS" --topic logs \
    --count "$N" --hours "$HOURS" --timeout "$TIMEOUT" | oneline)
log "bench-parquet: preload: $PRELOAD"
[[ $(field "$PRELOAD" delivered) == "$N" ]] || { log "bench-parquet: preload incomplete"; exit 1; }

RESULTS="$TMP/results"
: >"$RESULTS"

run_plain() {
    local i=$1 line busy c0
    busy=$(wait_quiet)
    c0=$(children_cpu)
    line=$(timeout $((TIMEOUT + 30)) "$PY" "$DRIVER" consume --brokers "$BROKERS" --topic logs --count "$N" \
        --group "plain-$i-$$" --set "fetch.wait.max.ms=$FETCH_WAIT_MS" --timeout "$TIMEOUT" | oneline) || line="failed=1 $line"
    echo "RUN kind=plain writers=- i=$i $line cpu=$(awk -v a="$c0" -v b="$(children_cpu)" 'BEGIN { printf "%.2f", b - a }') busy_before=$busy load1=$(load1)" | tee -a "$RESULTS" >&2
}

run_dab() {
    local w=$1 i=$2 dir="$TMP/dab-$1-$2" port pid line busy keys
    mkdir -p "$dir"
    port=$(free_port)
    echo 'r.NewPipeline().In(KIn).FilterType(ServerLogs).Out(Lake)' >"$dir/p.dab"
    cat >"$dir/dab.yaml" <<EOF
types:
  ServerLogs:
    version: 1
    fields:
      ts: timestamp
      level: string
      service: string
      method: string
      path: string
      status: int32
      user_id: int64?
      latency_ms: float64
      client: { ip: string, user_agent: string? }
      labels: map<string, string>?
sources:
  KIn: { kind: kafka, brokers: "$BROKERS", topic: logs, group: "dab-$w-$i-$$", options: { "fetch.wait.max.ms": "$FETCH_WAIT_MS" } }
sinks:
  Lake: { kind: parquet, path: "s3://bench/w$w-$i", type: ServerLogs, s3_endpoint: "$S3", spool: "$dir/spool",
          access_key: "\${S3_ACCESS_KEY}", secret_key: "\${S3_SECRET_KEY}", max_open_writers: $w $FILE_AGE_FIELD $UNACKED_FIELD}
EOF
    busy=$(wait_quiet)
    "$DAB" run "$dir/p.dab" --config "$dir/dab.yaml" --metrics "127.0.0.1:$port" >"$dir/dab.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    local perf_pid=""
    if [[ $PERF == 1 && ! -f $TMP/perf.data ]]; then
        # Until dab is stopped (perf ends with its target).
        timeout $((TIMEOUT + 60)) perf record -F 499 -g -p "$pid" -o "$TMP/perf.data" >"$dir/perf.out" 2>&1 &
        perf_pid=$!
        STARTED+=("$perf_pid")
    fi
    line=$(timeout $((TIMEOUT + 30)) "$PY" "$DRIVER" watch --metrics "127.0.0.1:$port" --rows "$N" \
        --pid "$pid" --timeout "$TIMEOUT" | oneline) || line="failed=1 $line"
    line="$line cpu=$(cpu_of "$pid")"
    stop "$pid" 15
    # Complete when every event is a row of a committed object.
    line="$line $(timeout 120 "$PY" "$DRIVER" rows --endpoint "$S3" --bucket bench --prefix "w$w-$i/" | oneline)"
    local got
    got=$(field "$line" rows)
    line="$line complete=$(( ${got:-0} == N ))"
    if [[ -n $perf_pid ]]; then wait "$perf_pid" || true; fi
    if [[ $(field "$line" complete) != 1 ]]; then tail -n 5 "$dir/dab.log" | sed 's/^/    dab: /' >&2; fi
    echo "RUN kind=dab writers=$w i=$i $line busy_before=$busy load1=$(load1)" | tee -a "$RESULTS" >&2
}

LOAD_START=$(loadavg)
for i in $(seq "$RUNS"); do
    log "bench-parquet: run $i of $RUNS (load $(loadavg))"
    run_plain "$i"
    for w in $WRITERS; do run_dab "$w" "$i"; done
done
LOAD_END=$(loadavg)

# vals KIND WRITERS KEY: that field of those runs, one a line.
vals() { awk -v k="kind=$1" -v w="writers=$2" -v f="$3=" '$2 == k && $3 == w { for (i = 4; i <= NF; i++) if (index($i, f) == 1) print substr($i, length(f) + 1) }' "$RESULTS"; }

{
    echo
    echo "== DAB Kafka -> Parquet on S3 benchmark ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load average $LOAD_START at the start, $LOAD_END at the end"
    echo "servers: $("$TANSU" --version 2>/dev/null | head -n 1 || echo 'tansu ?') (memory storage), moto_server $("$PY" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?'), both on 127.0.0.1"
    echo "input: $N events of $(field "$PRELOAD" event_bytes) bytes (server_logs payloads, $HOURS hours interleaved), $PARTITIONS partitions; fetch.wait.max.ms=$FETCH_WAIT_MS for both consumers"
    plain=$(vals plain - rate | median)
    echo "plain consumer:  median $(fmt_int "$plain") events/s (range $(vals plain - rate | range))"
    for w in $WRITERS; do
        d=$(vals dab "$w" rate | median)
        r=$(ratio "$d" "$plain")
        met=$(awk -v r="$r" -v t="$TARGET_RATIO" 'BEGIN { print (r != "nan" && r >= t) ? "yes" : "NO" }')
        echo "dab, max_open_writers=$w: median $(fmt_int "$d") events/s (range $(vals dab "$w" rate | range)), ratio $r (target >= $TARGET_RATIO: $met); peak RSS median $(vals dab "$w" peak_rss_kib | median | awk '{ printf "%.0f MiB", $1 / 1024 }'); files median $(vals dab "$w" files | median) of $(vals dab "$w" file_mib | median) MiB; complete $(vals dab "$w" complete | awk '{ s += $1 } END { print s + 0 }') of $RUNS"
    done
    if [[ $PERF == 1 && -f $TMP/perf.data ]]; then
        echo
        echo "## profile of dab, first DAB run (perf, self time by symbol, top 40)"
        { perf report -i "$TMP/perf.data" --no-children --sort symbol --percent-limit 0.5 --stdio -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed 's/ *$//' | cut -c1-160 | head -n 40; } || true
    fi
    echo
    echo "raw results:"
    sed 's/^/  /' "$RESULTS"
}
