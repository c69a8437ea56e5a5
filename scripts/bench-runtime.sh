#!/usr/bin/env bash
# Runtime speed figures for docs/PERFORMANCE.md ("## Runtime"):
#
#  1. in-process, ONE core: the criterion bench `pipeline` (Generator ->
#     FilterType -> WithSampleRate -> Blackhole on a current-thread tokio
#     runtime) under `taskset -c 0`, and `taskset -c 0 dab run` of the same
#     pipeline over a bound generator of $GEN_EVENTS events (wall time);
#  2. the loopback ceiling: dab-loadgen's own trivial line relay;
#  3. tcp NDJSON (~250-byte events) -> FilterType -> tcp NDJSON through
#     `dab run`, sender flat out: events/s at the receiver over $WINDOWS
#     windows of $WINDOW s after $WARMUP s, dab's peak RSS sampled from /proc
#     every 100 ms; $RUNS runs;
#  4. the same at half the median rate of 3, for latency p50/p99 (receive
#     time minus the send time in each event's `timestamp`); $RUNS runs;
#  5. with STAGES=1, the per-stage criterion benches.
#
# Prints medians and the ratios to the targets. Every wait is bounded;
# everything started here is stopped on exit.
#
# Usage: scripts/bench-runtime.sh
# Knobs (environment): RUNS=3 WINDOW=10 WINDOWS=3 WARMUP=3 GEN_EVENTS=20000000
#   STAGES=0|1 SKIP_INPROC=0|1 CONNECTIONS=1 QUIET_WAIT=30 DAB_ARGS=  DAB_BIN=
#   LAT_RATE= (events/s for the latency runs; default: half the flat-out median)
#   SKIP_MAX=1 (with LAT_RATE: latency runs only)  SKIP_LAT=1 (no latency runs)
# Built into $CARGO_TARGET_DIR when that is set (as cargo does), else target/.

set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
WINDOW=${WINDOW:-10}
WINDOWS=${WINDOWS:-3}
WARMUP=${WARMUP:-3}
GEN_EVENTS=${GEN_EVENTS:-20000000}
STAGES=${STAGES:-0}
SKIP_INPROC=${SKIP_INPROC:-0}
CONNECTIONS=${CONNECTIONS:-1}
QUIET_WAIT=${QUIET_WAIT:-30}
# Extra `dab run` flags for the tcp runs, e.g. DAB_ARGS="--channel-batches 1024".
read -r -a DAB_EXTRA <<<"${DAB_ARGS:-}"

TARGET_INPROC=3000000
TARGET_TCP=1000000
TARGET_RSS_MIB=150

# DAB_BIN: another build of dab to measure (an experiment); the default is this tree's.
TARGET=${CARGO_TARGET_DIR:-target}
DAB=${DAB_BIN:-$TARGET/release/dab}
LOADGEN=$TARGET/release/dab-loadgen
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-bench.XXXXXX")
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
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }

millions() { awk -v a="$1" 'BEGIN { printf "%.3fM", a / 1e6 }'; }



# CPU seconds (user + system) of a live process.
cpu_of() {
    awk '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Kills a process we started: TERM, then KILL after $2 seconds.
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

# Events/s from criterion's median time per iteration: group, bench,
# events per iteration.
crit_eps() {
    python3 - "$TARGET/criterion/$1/$2/new/estimates.json" "$3" <<'PY'
import json, sys
ns = json.load(open(sys.argv[1]))["median"]["point_estimate"]
print(f"{float(sys.argv[2]) * 1e9 / ns:.0f}")
PY
}

# Ports below the kernel's ephemeral range (32768+), so that no outgoing
# connection holds one; a fresh pair for every run.
port_base=$((20000 + RANDOM % 10000))
PORT=0
next_port() {
    port_base=$((port_base + 1))
    PORT=$port_base
}

log "== building (release)"
cargo build --release -q -p dab-cli -p dab-bench

echo "## machine"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "nproc: $(nproc)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
echo "rustc: $(rustc --version)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may be dirty)"

INPROC_BENCH=nan
INPROC_RUN=nan
if [[ $SKIP_INPROC != 1 ]]; then
    echo
    echo "## in-process, one core"
    log "== criterion: pipeline bench under taskset -c 0"
    busy=$(wait_quiet)
    taskset -c 0 cargo bench -q -p dab-runtime --bench pipeline >"$TMP/crit.txt" 2>&1 || {
        cat "$TMP/crit.txt" >&2
        exit 1
    }
    # Criterion's median time per iteration (one run of 1M events).
    for b in generator_filtertype_sample_blackhole generator_blackhole; do
        eps=$(crit_eps pipeline_1thread "$b" 1000000)
        echo "criterion pipeline_1thread/$b: median $(millions "$eps") events/s (10 samples of 1M events; machine busy before: $busy)"
        if [[ $b == generator_filtertype_sample_blackhole ]]; then INPROC_BENCH=$eps; fi
    done

    log "== taskset -c 0 dab run, $GEN_EVENTS generated events"
    dir=$TMP/inproc
    mkdir -p "$dir"
    cat >"$dir/bench.dab" <<'EOF'
bench.NewPipeline().In(Gen).FilterType(A).WithSampleRate(5).Out(Blackhole)
EOF
    cat >"$dir/dab.yaml" <<EOF
sources:
  Gen: { kind: generator, count: $GEN_EVENTS, types: [A, B], payload_bytes: 100, seed: 7 }
types:
  A: {}
  B: {}
EOF
    rates=()
    for ((r = 1; r <= RUNS; r++)); do
        busy=$(wait_quiet)
        t0=$(date +%s%N)
        timeout 120 taskset -c 0 "$DAB" run "$dir/bench.dab" --config "$dir/dab.yaml" 2>"$dir/run$r.err"
        t1=$(date +%s%N)
        eps=$(awk -v n="$GEN_EVENTS" -v d=$((t1 - t0)) 'BEGIN { printf "%.0f", n * 1e9 / d }')
        echo "dab run (taskset -c 0) run $r: $(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e9 }') s wall, $(millions "$eps") events/s (machine busy before: $busy)"
        rates+=("$eps")
    done
    INPROC_RUN=$(printf '%s\n' "${rates[@]}" | median)
fi

# One tcp -> FilterType -> tcp run. $1: label, $2: sender rate (0 = flat
# out). Appends "RUN ..." to $TMP/results.
tcp_run() {
    local label=$1 rate=$2 in out dir recv_pid dab_pid send_pid busy total_secs
    next_port
    in=$PORT
    next_port
    out=$PORT
    dir=$TMP/$label
    mkdir -p "$dir"
    cat >"$dir/relay.dab" <<'EOF'
relay.NewPipeline().In(TcpIn).FilterType(A).Out(TcpOut)
EOF
    cat >"$dir/dab.yaml" <<EOF
sources:
  TcpIn: { kind: tcp, listen: "127.0.0.1:$in", framing: ndjson }
sinks:
  TcpOut: { kind: tcp, connect: "127.0.0.1:$out" }
types:
  A: {}
EOF
    total_secs=$(awk -v w="$WARMUP" -v n="$WINDOWS" -v l="$WINDOW" 'BEGIN { printf "%d", w + n * l + 2 }')
    busy=$(wait_quiet)
    "$LOADGEN" recv --listen "127.0.0.1:$out" --warmup "$WARMUP" --window "$WINDOW" \
        --windows "$WINDOWS" --start-timeout 30 --max-secs $((total_secs + 60)) >"$dir/recv.out" &
    recv_pid=$!
    STARTED+=("$recv_pid")
    "$DAB" run "$dir/relay.dab" --config "$dir/dab.yaml" "${DAB_EXTRA[@]}" 2>"$dir/dab.err" &
    dab_pid=$!
    STARTED+=("$dab_pid")
    rss_sampler "$dab_pid" "$dir/rss" $((total_secs + 90)) &
    STARTED+=("$!")
    "$LOADGEN" send --to "127.0.0.1:$in" --rate "$rate" --duration "$total_secs" \
        --connections "$CONNECTIONS" --types A >"$dir/send.out" &
    send_pid=$!
    STARTED+=("$send_pid")
    local dab_cpu0 t0 dab_cpu1 t1
    sleep "$WARMUP"
    dab_cpu0=$(cpu_of "$dab_pid")
    t0=$(date +%s%N)
    # The receiver ends by itself (bounded by --max-secs).
    wait "$send_pid" || true
    dab_cpu1=$(cpu_of "$dab_pid")
    t1=$(date +%s%N)
    wait "$recv_pid" || true
    stop "$dab_pid" 40
    local s r rss cores
    s=$(cat "$dir/send.out")
    r=$(grep '^RECV' "$dir/recv.out" || echo "RECV error=no_result")
    rss=$(cat "$dir/rss" 2>/dev/null || echo 0)
    cores=$(awk -v a="$dab_cpu0" -v b="$dab_cpu1" -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", (b - a) / (d / 1e9) }')
    echo "RUN label=$label rate=$rate ${r#RECV } sent=$(field "$s" sent) send_eps=$(field "$s" eps) line_bytes=$(field "$s" avg_line_bytes) rss_kib=$rss dab_cores=$cores busy_before=$busy" >>"$TMP/results"
    tail -n 1 "$TMP/results" >&2
}

echo
echo "## loopback ceiling (dab-loadgen relay, same sender and receiver)"
log "== relay ceiling"
next_port
in=$PORT
next_port
out=$PORT
busy=$(wait_quiet)
"$LOADGEN" recv --listen "127.0.0.1:$out" --warmup "$WARMUP" --window "$WINDOW" --windows 1 \
    --start-timeout 30 --max-secs 120 >"$TMP/ceiling.recv" &
recv_pid=$!
STARTED+=("$recv_pid")
"$LOADGEN" relay --listen "127.0.0.1:$in" --to "127.0.0.1:$out" >"$TMP/ceiling.relay" &
relay_pid=$!
STARTED+=("$relay_pid")
"$LOADGEN" send --to "127.0.0.1:$in" --duration $((WARMUP + WINDOW + 2)) >"$TMP/ceiling.send"
wait "$recv_pid" || true
wait "$relay_pid" || true
CEILING=$(field "$(grep '^RECV' "$TMP/ceiling.recv" || true)" median_eps)
echo "relay: $(millions "${CEILING:-0}") events/s (machine busy before: $busy)"

TCP_MAX=nan
TCP_RSS=0
TCP_CORES=nan
if [[ ${SKIP_MAX:-0} == 1 && -n ${LAT_RATE:-} ]]; then
    log "== SKIP_MAX=1: no flat-out runs"
else
    echo
    echo "## tcp ndjson -> FilterType -> tcp ndjson, flat out ($RUNS runs, ${WINDOWS}x${WINDOW} s windows after ${WARMUP} s; dab run ${DAB_EXTRA[*]:-with defaults}; $CONNECTIONS sender connection(s))"
    : >"$TMP/results"
    for ((r = 1; r <= RUNS; r++)); do
        log "== tcp flat out, run $r"
        tcp_run "max$r" 0
    done
    grep 'label=max' "$TMP/results"
    TCP_MAX=$(grep 'label=max' "$TMP/results" | while read -r l; do field "$l" median_eps; done | median)
    TCP_RSS=$(grep 'label=max' "$TMP/results" | while read -r l; do field "$l" rss_kib; done | sort -n | tail -n 1)
    TCP_CORES=$(grep 'label=max' "$TMP/results" | while read -r l; do field "$l" dab_cores; done | median)
fi
HALF=${LAT_RATE:-$(awk -v m="$TCP_MAX" 'BEGIN { printf "%.0f", m / 2 }')}
LAT_P50=nan LAT_P99=nan LAT_P999=nan HALF_EPS=nan HALF_RSS=0
if [[ ${SKIP_LAT:-0} == 1 ]]; then
    log "== SKIP_LAT=1: no latency runs"
else
    echo
    why="half the flat-out median"
    if [[ -n ${LAT_RATE:-} ]]; then why="set by LAT_RATE"; fi
    echo "## latency at $HALF events/s ($why; $RUNS runs)"
    for ((r = 1; r <= RUNS; r++)); do
        log "== tcp at $HALF events/s, run $r"
        tcp_run "half$r" "$HALF"
    done
    grep 'label=half' "$TMP/results"
    LAT_P50=$(grep 'label=half' "$TMP/results" | while read -r l; do field "$l" p50_us; done | median)
    LAT_P99=$(grep 'label=half' "$TMP/results" | while read -r l; do field "$l" p99_us; done | median)
    LAT_P999=$(grep 'label=half' "$TMP/results" | while read -r l; do field "$l" p999_us; done | median)
    HALF_EPS=$(grep 'label=half' "$TMP/results" | while read -r l; do field "$l" median_eps; done | median)
    HALF_RSS=$(grep 'label=half' "$TMP/results" | while read -r l; do field "$l" rss_kib; done | sort -n | tail -n 1)
fi

if [[ $STAGES == 1 ]]; then
    echo
    echo "## per-stage (criterion, 1024-event batches)"
    log "== criterion: stages bench"
    busy=$(wait_quiet)
    cargo bench -q -p dab-runtime --bench stages >"$TMP/stages.txt" 2>&1 || {
        cat "$TMP/stages.txt" >&2
        exit 1
    }
    echo "(machine busy before: $busy)"
    for d in "$TARGET"/criterion/stage_*/*/new; do
        b=${d%/new}
        bench=${b##*/}
        group=${b%/*}
        group=${group##*/}
        echo "$group/$bench: median $(millions "$(crit_eps "$group" "$bench" 1024)") events/s"
    done
fi

rss_mib=$(awk -v k="${TCP_RSS:-0}" 'BEGIN { printf "%.1f", k / 1024 }')
echo
echo "## summary (medians)"
printf '%-58s %14s %10s %8s\n' figure value target ratio
if [[ $SKIP_INPROC != 1 ]]; then
    printf '%-58s %14s %10s %8s\n' "in-process, 1 core, criterion (events/s)" "$(millions "$INPROC_BENCH")" 3M "$(ratio "$INPROC_BENCH" $TARGET_INPROC)"
    printf '%-58s %14s %10s %8s\n' "in-process, taskset -c 0 dab run, $GEN_EVENTS events (ev/s)" "$(millions "$INPROC_RUN")" 3M "$(ratio "$INPROC_RUN" $TARGET_INPROC)"
fi
printf '%-58s %14s %10s %8s\n' "tcp -> FilterType -> tcp, flat out (events/s)" "$(millions "$TCP_MAX")" 1M "$(ratio "$TCP_MAX" $TARGET_TCP)"
printf '%-58s %14s %10s %8s\n' "  dab peak RSS, flat-out runs (MiB; ratio: lower is better)" "$rss_mib" "<150" "$(ratio "$rss_mib" $TARGET_RSS_MIB)"
printf '%-58s %14s %10s %8s\n' "  dab CPU while flat out (cores of 2)" "$TCP_CORES" "" ""
printf '%-58s %14s %10s %8s\n' "  loopback relay ceiling (events/s; ratio: dab / relay)" "$(millions "${CEILING:-0}")" "" "$(ratio "$TCP_MAX" "${CEILING:-0}")"
printf '%-58s %14s %10s %8s\n' "latency at $(millions "$HALF")/s: achieved (events/s)" "$(millions "$HALF_EPS")" "" ""
printf '%-58s %14s %10s %8s\n' "  p50 (us)" "$LAT_P50" "" ""
printf '%-58s %14s %10s %8s\n' "  p99 (us)" "$LAT_P99" "" ""
printf '%-58s %14s %10s %8s\n' "  p99.9 (us)" "$LAT_P999" "" ""
printf '%-58s %14s %10s %8s\n' "  dab peak RSS (MiB)" "$(awk -v k="${HALF_RSS:-0}" 'BEGIN { printf "%.1f", k / 1024 }')" "" ""
