#!/usr/bin/env bash
# gRPC ingest and signature figures for docs/PERFORMANCE.md ("## gRPC ingest
# and signatures"; issue 4, "Speed"):
#
#  1. murron_grpc -> FilterType(A) -> Blackhole through `dab run`, fed by
#     the example `murron_load` (crates/dab-connectors/examples) with
#     $CONNECTIONS connections x $IN_FLIGHT calls in flight, batches of
#     $BATCH events of about $EVENT_BYTES bytes, flat out: events/s acked
#     over $DURATION s after $WARMUP s, cross-checked against the delta of
#     dab's own `dab_source_events_total` over the same seconds (less 0.5 s,
#     so as to lie inside the client's window); dab's peak
#     RSS sampled from /proc every 100 ms; CPU of dab and of the client;
#     $RUNS runs, median;
#  2. the same at half the flat-out median (or $LAT_RATE) for batch ack
#     latency p50/p99/p99.9 (from the call to its Ack; also p99 from each
#     batch's scheduled slot, the coordinated-omission check); $RUNS runs,
#     median;
#  3. the criterion bench `signature` (dab-api): ns and events/s for
#     verify and sign of a 200-byte-message event (SIG=0 skips it).
#
# With PERF=1 the first flat-out run is also profiled with `perf record`
# (dwarf call graphs), and the top of the report is printed.
#
# Prints medians and the ratio to the 500,000 events/s target. Every wait
# is bounded; everything started here is stopped on exit.
#
# Usage: scripts/bench-grpc.sh
# Knobs (environment): RUNS=3 DURATION=10 WARMUP=3 CONNECTIONS=4 IN_FLIGHT=8
#   BATCH=100 EVENT_BYTES=250 THREADS=2 CALL=unary|stream LAT_RATE=
#   QUIET_WAIT=30 SIG=1 PERF=0 PERF_KEEP=path/to/copy/perf.data DAB_ARGS= DAB_BIN=

set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-4}
IN_FLIGHT=${IN_FLIGHT:-8}
BATCH=${BATCH:-100}
EVENT_BYTES=${EVENT_BYTES:-250}
THREADS=${THREADS:-2}
CALL=${CALL:-unary}
QUIET_WAIT=${QUIET_WAIT:-30}
SIG=${SIG:-1}
PERF=${PERF:-0}
STREAM_FLAG=()
if [[ $CALL == stream ]]; then STREAM_FLAG=(--stream); fi
# Extra `dab run` flags, e.g. DAB_ARGS="--channel-batches 64".
read -r -a DAB_EXTRA <<<"${DAB_ARGS:-}"

TARGET_EPS=500000

DAB=${DAB_BIN:-target/release/dab}
LOAD=target/release/examples/murron_load
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-bench-grpc.XXXXXX")
STARTED=()

# Only our own children, by pid (a pid that ended may have been reused).
ours() { [[ $(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ') == "$$" ]]; }

cleanup() {
    local p
    for p in "${STARTED[@]}"; do
        if ours "$p"; then kill "$p" 2>/dev/null || true; fi
    done
    sleep 0.3
    for p in "${STARTED[@]}"; do
        if ours "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
# machine_busy, wait_quiet
. scripts/lib/bench.sh  # (the script has cd'd to the repository root)

# Median of numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# key=value field of a result line.
field() { tr ' ' '\n' <<<"$1" | awk -v k="$2=" 'index($0, k) == 1 && !done { print substr($0, length(k) + 1); done = 1 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }

thousands() { awk -v a="$1" 'BEGIN { printf "%.0fk", a / 1e3 }'; }



load1() { cut -d ' ' -f 1 /proc/loadavg; }

# Busy and total jiffies of the whole machine, from /proc/stat.
jiffies() { awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }

# CPU seconds (user + system) of a live process.
cpu_of() {
    awk '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# TERM, then KILL after $2 seconds.
stop() {
    local pid=$1 grace=${2:-10} i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Samples VmRSS of $1 every 100 ms into $2 (max, KiB) until it exits or
# $3 seconds pass.
rss_sampler() {
    local pid=$1 out=$2 limit=$3 max=0 k v _ start=$SECONDS
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < limit)); do
        while read -r k v _; do
            if [[ $k == VmRSS: ]] && ((v > max)); then max=$v; fi
        done <"/proc/$pid/status" 2>/dev/null || true
        echo "$max" >"$out"
        sleep 0.1
    done
}

# GET http://$1$2 with a 2 s limit; empty on failure.
http_get() {
    if command -v curl >/dev/null; then
        curl -s --max-time 2 "http://$1$2" || true
    else
        python3 -c 'import sys, urllib.request
try: print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end="")
except Exception: pass' "http://$1$2"
    fi
}

# dab_source_events_total of the source, from dab's metrics.
source_events() {
    http_get "$1" /metrics | awk '/^dab_source_events_total\{source="Grpc"\}/ { print $2 }'
}

# Events/s from criterion's median time per iteration (one event).
crit() {
    python3 - "target/criterion/$1/$2/new/estimates.json" <<'PY'
import json, sys
ns = json.load(open(sys.argv[1]))["median"]["point_estimate"]
print(f"{ns:.0f} {1e9 / ns:.0f}")
PY
}

port_base=$((20000 + RANDOM % 10000))
PORT=0
next_port() {
    port_base=$((port_base + 1))
    PORT=$port_base
}

log "== building (release): dab, the murron_load example"
cargo build --release -q -p dab-cli
cargo build --release -q -p dab-connectors --example murron_load

echo "## machine"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "nproc: $(nproc)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
echo "rustc: $(rustc --version)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may be dirty)"
echo "load average at start: $(cut -d ' ' -f 1-3 /proc/loadavg)"

# One run. $1: label, $2: rate (0 = flat out), $3: 1 to profile.
# Appends "RUN ..." to $TMP/results.
grpc_run() {
    local label=$1 rate=$2 profile=${3:-0} dir grpc admin dab_pid load_pid busy total i
    next_port
    grpc=127.0.0.1:$PORT
    next_port
    admin=127.0.0.1:$PORT
    dir=$TMP/$label
    mkdir -p "$dir"
    cat >"$dir/g.dab" <<'EOF'
g.NewPipeline().In(Grpc).FilterType(A).Out(Blackhole)
EOF
    cat >"$dir/dab.yaml" <<EOF
sources:
  Grpc: { kind: murron_grpc, listen: "$grpc" }
types:
  A: {}
EOF
    busy=$(wait_quiet)
    "$DAB" run "$dir/g.dab" --config "$dir/dab.yaml" --metrics "$admin" "${DAB_EXTRA[@]}" 2>"$dir/dab.err" &
    dab_pid=$!
    STARTED+=("$dab_pid")
    # Ready when the metrics answer and the gRPC port takes connections.
    for ((i = 0; i < 100; i++)); do
        if [[ -n $(source_events "$admin") ]] && (exec 3<>"/dev/tcp/${grpc%:*}/${grpc#*:}") 2>/dev/null; then break; fi
        if ! kill -0 "$dab_pid" 2>/dev/null; then
            cat "$dir/dab.err" >&2
            log "dab run exited early"
            exit 1
        fi
        sleep 0.1
    done
    total=$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%d", w + d + 1 }')
    rss_sampler "$dab_pid" "$dir/rss" $((total + 60)) &
    STARTED+=("$!")
    # The client is bounded by its own --duration and --call-timeout;
    # `timeout` is the backstop.
    timeout $((total + 60)) "$LOAD" --addr "$grpc" --connections "$CONNECTIONS" --in-flight "$IN_FLIGHT" \
        --batch "$BATCH" --event-bytes "$EVENT_BYTES" --rate "$rate" --duration "$DURATION" \
        --warmup "$WARMUP" --threads "$THREADS" "${STREAM_FLAG[@]}" \
        >"$dir/load.out" 2>"$dir/load.err" &
    load_pid=$!
    STARTED+=("$load_pid")
    # The client's window starts about 50 ms after it connects; dab's count
    # is taken over a window 0.3 s later and 0.5 s shorter, so that it lies
    # inside the client's (the client stops sending when its window ends).
    sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 0.3 }')"
    local ev0 ev1 cpu0 cpu1 j0 j1 t0 t1 perf_pid=""
    t0=$(date +%s%N)
    ev0=$(source_events "$admin")
    cpu0=$(cpu_of "$dab_pid")
    j0=$(jiffies)
    if [[ $profile == 1 ]]; then
        timeout $((DURATION + 30)) perf record -F 499 --call-graph dwarf,16384 -p "$dab_pid" \
            -o "$TMP/perf.data" -- sleep "$DURATION" >"$dir/perf.out" 2>&1 &
        perf_pid=$!
        STARTED+=("$perf_pid")
    fi
    sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 1 ? d - 0.5 : d / 2) }')"
    t1=$(date +%s%N)
    ev1=$(source_events "$admin")
    cpu1=$(cpu_of "$dab_pid")
    j1=$(jiffies)
    wait "$load_pid" || log "  murron_load failed: $(tail -n 3 "$dir/load.err" "$dir/load.out")"
    if [[ -n $perf_pid ]]; then wait "$perf_pid" || true; fi
    stop "$dab_pid" 40
    local r rss dab_eps cores machine other
    r=$(grep '^RESULT' "$dir/load.out" || echo "RESULT error=no_result")
    rss=$(cat "$dir/rss" 2>/dev/null || echo 0)
    dab_eps=$(awk -v a="${ev0:-0}" -v b="${ev1:-0}" -v d=$((t1 - t0)) 'BEGIN { printf "%.0f", (b - a) / (d / 1e9) }')
    cores=$(awk -v a="$cpu0" -v b="$cpu1" -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", (b - a) / (d / 1e9) }')
    # Cores busy on the whole machine over the window, and what was left
    # for other work (other sessions' builds) besides dab and the client.
    machine=$(awk -v a="$j0" -v b="$j1" -v n="$(nproc)" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.2f", (d > 0 ? n * (y[1] - x[1]) / d : 0) }')
    other=$(awk -v m="$machine" -v d="$cores" -v c="$(field "$r" client_cores)" 'BEGIN { o = m - d - c; printf "%.2f", (o < 0 ? 0 : o) }')
    echo "RUN label=$label ${r#RESULT } dab_metrics_eps=$dab_eps rss_kib=$rss dab_cores=$cores machine_cores=$machine other_cores=$other busy_before=$busy load1_after=$(load1)" >>"$TMP/results"
    tail -n 1 "$TMP/results" >&2
}

values() { grep "label=$1" "$TMP/results" | while read -r l; do field "$l" "$2"; done; }

: >"$TMP/results"
echo
echo "## murron_grpc -> FilterType(A) -> Blackhole, flat out ($RUNS runs of ${DURATION} s after ${WARMUP} s; $CALL calls, $CONNECTIONS connections x $IN_FLIGHT in flight, $BATCH events/batch; dab run ${DAB_EXTRA[*]:-with defaults})"
for ((r = 1; r <= RUNS; r++)); do
    log "== flat out, run $r"
    grpc_run "max$r" 0 "$([[ $PERF == 1 && $r == 1 ]] && echo 1 || echo 0)"
done
grep 'label=max' "$TMP/results"
MAX=$(values max eps | median)
MAX_DAB=$(values max dab_metrics_eps | median)
MAX_RANGE=$(values max eps | sort -g | awk '{ v[NR] = $1 } END { printf "%.0fk to %.0fk", v[1] / 1e3, v[NR] / 1e3 }')
MAX_DAB_RANGE=$(values max dab_metrics_eps | sort -g | awk '{ v[NR] = $1 } END { printf "%.0fk to %.0fk", v[1] / 1e3, v[NR] / 1e3 }')
MAX_P99=$(values max p99_us | median)
MAX_CORES=$(values max dab_cores | median)
MAX_CLIENT=$(values max client_cores | median)
MAX_OTHER=$(values max other_cores | median)
MAX_RSS=$(values max rss_kib | sort -n | tail -n 1)
MAX_REFUSED=$(values max resource_exhausted | median)
EV_BYTES=$(values max event_bytes | awk 'NR == 1')

HALF=${LAT_RATE:-$(awk -v m="$MAX" 'BEGIN { printf "%.0f", m / 2 }')}
why="half the flat-out median"
if [[ -n ${LAT_RATE:-} ]]; then why="set by LAT_RATE"; fi
echo
echo "## latency at $HALF events/s ($why; $RUNS runs)"
for ((r = 1; r <= RUNS; r++)); do
    log "== at $HALF events/s, run $r"
    grpc_run "half$r" "$HALF"
done
grep 'label=half' "$TMP/results"
HALF_EPS=$(values half eps | median)
P50=$(values half p50_us | median)
P99=$(values half p99_us | median)
P999=$(values half p999_us | median)
SP99=$(values half sched_p99_us | median)
HALF_CORES=$(values half dab_cores | median)
HALF_RSS=$(values half rss_kib | sort -n | tail -n 1)

if [[ $PERF == 1 && -f $TMP/perf.data ]]; then
    echo
    echo "## profile of dab, flat-out run 1 (perf, self time, top 40)"
    perf report -i "$TMP/perf.data" --no-children --sort symbol --percent-limit 0.5 --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | sed -E 's/[[:space:]]+$//' | cut -c 1-160 | head -n 40 || true
    echo
    echo "## the same, inclusive (children), top 40 without tokio's and std's frames"
    perf report -i "$TMP/perf.data" --children --sort symbol --percent-limit 2 --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | grep -vE '\(inlined\)|tokio::runtime|std::|catch_unwind|do_call|call_once|clone3|start_thread|__rust_begin' |
        sed -E 's/[[:space:]]+$//' | cut -c 1-160 | head -n 40 || true
    if [[ -n ${PERF_KEEP:-} ]]; then cp "$TMP/perf.data" "$PERF_KEEP"; fi
fi

SIG_LINES=()
if [[ $SIG == 1 ]]; then
    echo
    echo "## signatures (criterion, dab-api bench signature)"
    log "== criterion: signature bench"
    busy=$(wait_quiet)
    cargo bench -q -p dab-api --bench signature >"$TMP/sig.txt" 2>&1 || {
        cat "$TMP/sig.txt" >&2
        exit 1
    }
    echo "(machine busy before: $busy)"
    for d in target/criterion/signature_*/*/new; do
        b=${d%/new}
        bench=${b##*/}
        group=${b%/*}
        group=${group##*/}
        read -r ns eps <<<"$(crit "$group" "$bench")"
        echo "$group/$bench: median $ns ns/event, $(thousands "$eps") events/s"
        SIG_LINES+=("$(printf '%-58s %14s' "  $bench (ns/event; events/s)" "$ns; $(thousands "$eps")")")
    done
fi

echo
echo "## summary (medians)"
printf '%-58s %14s %10s %8s\n' figure value target ratio
printf '%-58s %14s %10s %8s\n' "gRPC -> FilterType -> Blackhole, flat out (events/s)" "$(thousands "$MAX")" 500k "$(ratio "$MAX" $TARGET_EPS)"
printf '%-58s %14s %10s %8s\n' "  the same by dab_source_events_total (events/s)" "$(thousands "$MAX_DAB")" "" ""
printf '%-58s %14s\n' "  range over the runs (client; dab's metric)" "$MAX_RANGE; $MAX_DAB_RANGE"
printf '%-58s %14s\n' "  event size on the wire (bytes)" "$EV_BYTES"
printf '%-58s %14s\n' "  ack latency p99 flat out (us)" "$MAX_P99"
printf '%-58s %14s\n' "  RESOURCE_EXHAUSTED answers per run" "$MAX_REFUSED"
printf '%-58s %14s\n' "  dab CPU (cores of 2)" "$MAX_CORES"
printf '%-58s %14s\n' "  load client CPU (cores of 2)" "$MAX_CLIENT"
printf '%-58s %14s\n' "  other work on the machine meanwhile (cores of 2)" "$MAX_OTHER"
printf '%-58s %14s\n' "  dab peak RSS (MiB)" "$(awk -v k="${MAX_RSS:-0}" 'BEGIN { printf "%.1f", k / 1024 }')"
printf '%-58s %14s\n' "at $(thousands "$HALF")/s: achieved (events/s)" "$(thousands "$HALF_EPS")"
printf '%-58s %14s\n' "  ack latency p50 (us, call to Ack)" "$P50"
printf '%-58s %14s\n' "  ack latency p99 (us, call to Ack)" "$P99"
printf '%-58s %14s\n' "  ack latency p99.9 (us, call to Ack)" "$P999"
printf '%-58s %14s\n' "  ack latency p99 (us, from the scheduled slot)" "$SP99"
printf '%-58s %14s\n' "  dab CPU (cores of 2)" "$HALF_CORES"
printf '%-58s %14s\n' "  dab peak RSS (MiB)" "$(awk -v k="${HALF_RSS:-0}" 'BEGIN { printf "%.1f", k / 1024 }')"
if ((${#SIG_LINES[@]})); then
    echo "signatures (criterion):"
    printf '%s\n' "${SIG_LINES[@]}"
fi
echo "load average at end: $(cut -d ' ' -f 1-3 /proc/loadavg)"
