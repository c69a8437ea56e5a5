#!/usr/bin/env bash
# Kafka figures for docs/PERFORMANCE.md ("## Kafka"; issue 5, "Speed"), against
# a tansu broker (memory storage) that this script starts on a free loopback
# port and stops on exit:
#
#  a) Throughput. Preloads $N JSON events of about $EVENT_BYTES bytes, type A,
#     into a $PARTITIONS-partition topic, then, $RUNS times each (interleaved,
#     fresh consumer groups and fresh output topics every time):
#     - the plain copy (`dab-kafka-bench copy`: librdkafka consume -> produce,
#       no DAB, with DAB's guarantees and client settings): events/s from the
#       first message consumed to the last delivery report;
#     - `dab run` of  r.NewPipeline().In(KIn).FilterType(A).Out(KOut)  with
#       kafka bindings: events/s from the first poll (every $POLL_MS ms) of
#       its /metrics where dab_source_events_total > 0 to the first where
#       dab_kafka_delivered_total reached $N (or, when some events never
#       come, the last poll where it grew). Both leave out the group join,
#       which is printed apart.
#     Every output topic is then read back and checked (missing and repeated
#     events). For each profile in $PROFILES: medians, the DAB/copy ratio and
#     the issue's target (DAB >= half the copy and >= 50,000 events/s).
#     Profiles: `default` is DAB's client settings as they are; `fast` adds
#     fetch.wait.max.ms=$FAST_FETCH_WAIT_MS to both consumers (through the
#     source binding's `options:` for DAB), because tansu sleeps for half of
#     a fetch's max wait even when it has data (see docs/PERFORMANCE.md).
#  b) Recovery ($REC=1). `dab run` consumes a topic while a producer sends at
#     half of DAB's median rate (profile $REC_PROFILE) for $REC_PRE s, then
#     at twice that median for $REC_BURST s, then at half again for
#     $REC_POST s. Every $SAMPLE_MS ms: dab's VmRSS, the group's committed
#     lag at the broker (dab-kafka-bench lag) and dab's own
#     dab_kafka_consumer_lag. Prints peak RSS, peak lag, and how long after
#     the burst ended the lag was back near zero: from then on at most the
#     highest lag seen before the burst (after a 3 s warm-up; at least 1,000
#     events). Offsets are committed every second, so at a steady rate R the
#     committed lag swings between about 0 and R x 1 s; that swing is the
#     "zero" a running consumer group can show.
#
# Before each measurement it waits (at most $QUIET_WAIT s) until other work
# uses under a quarter of the machine, and records how busy it was. With
# PERF=1 the first DAB run is profiled with `perf record` (dwarf call
# graphs) and the top of the report is printed.
#
# Prints a summary at the end, with the machine (nproc, load average).
# Every wait is bounded; everything started here is stopped on exit. Takes
# about 8 minutes with the defaults. tansu keeps every message in memory
# (0.3 to 0.6 KB each; some 16 million messages at the defaults, 5 to 7 GB).
#
# Usage: scripts/bench-kafka.sh
# Knobs (environment): N=1000000 RUNS=3 PARTITIONS=3 EVENT_BYTES=250
#   PROFILES="default fast" FAST_FETCH_WAIT_MS=10 POLL_MS=100 REC=1
#   REC_PROFILE=default REC_PRE=10 REC_BURST=10 REC_POST=30 REC_TAIL=60
#   SAMPLE_MS=500 TIMEOUT=300 DAB_ARGS= SOURCE_OPTIONS= SINK_OPTIONS=
#   (DAB_ARGS: extra `dab run` flags, e.g. "--channel-batches 64";
#   SOURCE_OPTIONS / SINK_OPTIONS: extra librdkafka settings, "k=v k=v",
#   for DAB's source / sink bindings' `options:` only, to try settings)
#   QUIET_WAIT=30 PERF=0 PERF_KEEP=path/to/copy/perf.data
#   KEEP=1 keeps the work directory; CARGO_TARGET_DIR (~/.cache/dab/target);
#   DAB_BIN= (a `dab` binary to measure instead of the one built here).

set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
RUNS=${RUNS:-3}
PARTITIONS=${PARTITIONS:-3}
EVENT_BYTES=${EVENT_BYTES:-250}
PROFILES=${PROFILES:-default fast}
FAST_FETCH_WAIT_MS=${FAST_FETCH_WAIT_MS:-10}
POLL_MS=${POLL_MS:-100}
REC=${REC:-1}
REC_PROFILE=${REC_PROFILE:-default}
REC_PRE=${REC_PRE:-10}
REC_BURST=${REC_BURST:-10}
REC_POST=${REC_POST:-30}
REC_TAIL=${REC_TAIL:-60}
SAMPLE_MS=${SAMPLE_MS:-500}
TIMEOUT=${TIMEOUT:-300}
QUIET_WAIT=${QUIET_WAIT:-30}
PERF=${PERF:-0}
read -r -a DAB_EXTRA <<<"${DAB_ARGS:-}"
read -r -a SOURCE_EXTRA <<<"${SOURCE_OPTIONS:-}"
read -r -a SINK_EXTRA <<<"${SINK_OPTIONS:-}"
TARGET_EPS=50000

for p in $PROFILES; do
    case "$p" in
        default | fast) ;;
        *) echo "bench-kafka: unknown profile $p in PROFILES (default, fast)" >&2; exit 2 ;;
    esac
done
if [[ $REC == 1 && " $PROFILES " != *" $REC_PROFILE "* ]]; then
    echo "bench-kafka: REC_PROFILE=$REC_PROFILE is not in PROFILES=\"$PROFILES\"" >&2
    exit 2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
# Errors of the bench tool without a backtrace.
export RUST_LIB_BACKTRACE=0
# DAB_BIN: another `dab` binary to measure (an experiment or a base commit).
DAB="${DAB_BIN:-$CARGO_TARGET_DIR/release/dab}"
BENCH="$CARGO_TARGET_DIR/release/dab-kafka-bench"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-bench-kafka.XXXXXX")
STARTED=()
BROKER_PORT=
BROKER_PID=

log() { printf '%s\n' "$*" >&2; }
# machine_busy, wait_quiet, median, ratio, free_port, stop, ...
. scripts/lib/bench.sh  # (the script has cd'd to the repository root)

stop_broker() {
    [[ -n $BROKER_PORT ]] || return 0
    if [[ -x scripts/kafka-broker.sh ]]; then
        DAB_RUN_DIR="$TMP/broker" scripts/kafka-broker.sh stop "$BROKER_PORT" || true
    elif [[ -n $BROKER_PID ]] && ours "$BROKER_PID"; then
        kill "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PORT=
}

cleanup() {
    local p
    for p in "${STARTED[@]}"; do
        if ours "$p"; then kill "$p" 2>/dev/null || true; fi
    done
    sleep 0.3
    for p in "${STARTED[@]}"; do
        if ours "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    done
    stop_broker
    if [[ ${KEEP:-0} == 1 ]]; then
        log "bench-kafka: work directory kept: $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------- build

log "bench-kafka: building dab and dab-kafka-bench (release, $CARGO_TARGET_DIR)"
cargo build --release --quiet -p dab-cli --bin dab -p dab-bench --bin dab-kafka-bench

TANSU=$(scripts/setup-kafka.sh --print)
TANSU_VERSION=$("$TANSU" --version 2>/dev/null | head -n 1 || echo "tansu ?")

# -------------------------------------------------------------- broker

BROKER_PORT=$(free_port)
BROKERS="127.0.0.1:$BROKER_PORT"
if [[ -x scripts/kafka-broker.sh ]]; then
    # Memory storage, as in every figure in docs/PERFORMANCE.md: these runs
    # read each topic from its start, where its mid-batch fetch bug
    # (docs/decisions.md, "Kafka tests run tansu on SQLite") does not bite;
    # SQLite storage is several times slower.
    DAB_KAFKA_STORAGE="${DAB_KAFKA_STORAGE:-memory://tansu/}" DAB_RUN_DIR="$TMP/broker" scripts/kafka-broker.sh start "$BROKER_PORT"
    BROKER_PID=$(cat "$TMP/broker/tansu-$BROKER_PORT.pid")
else
    mkdir -p "$TMP/broker"
    (cd "$TMP/broker" && exec env NO_COLOR=1 "$TANSU" broker --listener-url "tcp://$BROKERS" \
        --advertised-listener-url "tcp://$BROKERS" --storage-engine memory://tansu/ \
        </dev/null >"$TMP/broker/tansu.log" 2>&1) &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    for _ in $(seq 300); do
        timeout 5 "$TANSU" topic list --broker "tcp://$BROKERS" >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
log "bench-kafka: tansu on $BROKERS (pid $BROKER_PID)"

topic() {
    if [[ -x scripts/kafka-broker.sh ]]; then
        DAB_RUN_DIR="$TMP/broker" scripts/kafka-broker.sh topic "$1" "$PARTITIONS" "$BROKER_PORT"
    else
        NO_COLOR=1 timeout 10 "$TANSU" topic create --broker "tcp://$BROKERS" --partitions "$PARTITIONS" "$1" >/dev/null
    fi
}

# librdkafka settings of a profile, as "k=v" words.
profile_settings() {
    case "$1" in
        default) ;;
        fast) echo "fetch.wait.max.ms=$FAST_FETCH_WAIT_MS" ;;
    esac
}

profile_label() {
    case "$1" in
        default) printf "DAB's client settings as they are" ;;
        fast) printf 'fetch.wait.max.ms=%s for both consumers' "$FAST_FETCH_WAIT_MS" ;;
    esac
    if [[ -n ${SOURCE_OPTIONS:-}${SINK_OPTIONS:-}${DAB_ARGS:-} ]]; then
        printf "; DAB only: source options '%s', sink options '%s', dab run flags '%s'" \
            "${SOURCE_OPTIONS:-}" "${SINK_OPTIONS:-}" "${DAB_ARGS:-}"
    fi
}

# "k=v k=v" -> "{k: v, k: v}" for a binding's options (quoted values).
yaml_options() {
    local out="" kv
    for kv in "$@"; do
        [[ -n $kv ]] || continue
        out+="${out:+, }\"${kv%%=*}\": \"${kv#*=}\""
    done
    [[ -n $out ]] && printf ', options: { %s }' "$out"
}

# "k=v ..." -> --consumer-set k=v ...
set_args() {
    local flag=$1 kv
    shift
    for kv in "$@"; do [[ -n $kv ]] && printf '%s\n%s\n' "$flag" "$kv"; done
}

RESULTS="$TMP/results"
: >"$RESULTS"

# ---------------------------------------------------------- throughput

# copy PROFILE I: one plain copy; appends a RUN line to $RESULTS.
run_copy() {
    local profile=$1 i=$2 out="copy-out-$1-$2" group="bench-copy-$1-$2-$$" settings line t0 t1 c_tansu c_copy check busy
    read -r -a settings <<<"$(profile_settings "$profile")"
    topic "$out" 2>/dev/null
    mapfile -t cargs < <(set_args --consumer-set "${settings[@]}")
    busy=$(wait_quiet)
    t0=$(cpu_of "$BROKER_PID")
    c_copy=$(children_cpu)
    line=$(timeout $((TIMEOUT + 30)) "$BENCH" copy --brokers "$BROKERS" --from in --to "$out" --count "$N" \
        --group "$group" --timeout "$TIMEOUT" "${cargs[@]}" | oneline) || line="failed=1 $line"
    t1=$(cpu_of "$BROKER_PID")
    c_copy=$(awk -v a="$c_copy" -v b="$(children_cpu)" 'BEGIN { printf "%.2f", b - a }')
    c_tansu=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    check=$(timeout 200 "$BENCH" verify --brokers "$BROKERS" --topic "$out" --count "$N" --idle 2 \
        --consumer-set "fetch.wait.max.ms=$FAST_FETCH_WAIT_MS" | grep -E '^(read|missing|repeated)=' | oneline) || check="verify=failed"
    echo "RUN kind=copy profile=$profile i=$i $line copy_cpu=$c_copy tansu_cpu=$c_tansu $check busy_before=$busy load1=$(load1)" | tee -a "$RESULTS" >&2
}

# run_dab PROFILE I: one `dab run`; appends a RUN line to $RESULTS.
run_dab() {
    local profile=$1 i=$2 out="dab-out-$1-$2" group="bench-dab-$1-$2-$$" dir="$TMP/dab-$1-$2" settings port pid line t0 t1 c_tansu c_dab check busy perf_pid=""
    read -r -a settings <<<"$(profile_settings "$profile")"
    topic "$out" 2>/dev/null
    mkdir -p "$dir"
    port=$(free_port)
    echo 'r.NewPipeline().In(KIn).FilterType(A).Out(KOut)' >"$dir/k.dab"
    cat >"$dir/dab.yaml" <<EOF
sources:
  KIn: { kind: kafka, brokers: "$BROKERS", topic: in, group: "$group"$(yaml_options "${settings[@]}" "${SOURCE_EXTRA[@]}") }
sinks:
  KOut: { kind: kafka, brokers: "$BROKERS", topic: "$out"$(yaml_options "${SINK_EXTRA[@]}") }
types:
  A: {}
EOF
    busy=$(wait_quiet)
    t0=$(cpu_of "$BROKER_PID")
    "$DAB" run "$dir/k.dab" --config "$dir/dab.yaml" --metrics "127.0.0.1:$port" "${DAB_EXTRA[@]}" >"$dir/dab.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    if [[ $PERF == 1 && ! -f $TMP/perf.data ]]; then
        # Until dab is stopped (perf ends with its target).
        timeout $((TIMEOUT + 60)) perf record -F 499 --call-graph dwarf,16384 -p "$pid" \
            -o "$TMP/perf.data" >"$dir/perf.out" 2>&1 &
        perf_pid=$!
        STARTED+=("$perf_pid")
    fi
    line=$(timeout $((TIMEOUT + 30)) "$BENCH" watch --metrics "127.0.0.1:$port" --delivered "$N" \
        --every-ms "$POLL_MS" --timeout "$TIMEOUT" --pid "$pid" | oneline) || line="failed=1 $line"
    c_dab=$(cpu_of "$pid")
    stop "$pid" 15
    if [[ -n $perf_pid ]]; then wait "$perf_pid" || true; fi
    t1=$(cpu_of "$BROKER_PID")
    c_tansu=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    check=$(timeout 200 "$BENCH" verify --brokers "$BROKERS" --topic "$out" --count "$N" --idle 2 \
        --consumer-set "fetch.wait.max.ms=$FAST_FETCH_WAIT_MS" | grep -E '^(read|missing|repeated|missing_runs)=' | oneline) || check="verify=failed"
    echo "RUN kind=dab profile=$profile i=$i $line dab_cpu=$c_dab tansu_cpu=$c_tansu $check busy_before=$busy load1=$(load1)" | tee -a "$RESULTS" >&2
}

topic in
log "bench-kafka: preloading $N events of $EVENT_BYTES bytes into 'in' ($PARTITIONS partitions)"
PRELOAD=$(timeout $((TIMEOUT + 60)) "$BENCH" produce --brokers "$BROKERS" --topic in --count "$N" \
    --payload-bytes "$EVENT_BYTES" | oneline)
log "bench-kafka: preload: $PRELOAD"
[[ $(field "$PRELOAD" delivered) == "$N" ]] || { log "bench-kafka: preload incomplete"; exit 1; }

LOAD_START=$(loadavg)
for profile in $PROFILES; do
    for i in $(seq "$RUNS"); do
        log "bench-kafka: profile $profile, run $i of $RUNS (load $(loadavg))"
        run_copy "$profile" "$i"
        run_dab "$profile" "$i"
    done
done
LOAD_END=$(loadavg)

# rate_of KIND PROFILE: the rates of those runs, one a line.
rates_of() { awk -v k="kind=$1" -v p="profile=$2" '$2 == k && $3 == p { for (i = 1; i <= NF; i++) if ($i ~ /^rate=/) { sub(/^rate=/, "", $i); print $i } }' "$RESULTS"; }
joins_of() { awk -v k="kind=$1" -v p="profile=$2" '$2 == k && $3 == p { for (i = 1; i <= NF; i++) if ($i ~ /^(join_secs|first_consumed_secs)=/) { sub(/^[a-z_]+=/, "", $i); print $i } }' "$RESULTS"; }
missing_of() { awk -v k="kind=$1" -v p="profile=$2" '$2 == k && $3 == p { for (i = 1; i <= NF; i++) if ($i ~ /^missing=/) { sub(/^missing=/, "", $i); s += $i } } END { print s + 0 }' "$RESULTS"; }

declare -A MED_COPY MED_DAB
for profile in $PROFILES; do
    MED_COPY[$profile]=$(rates_of copy "$profile" | median)
    MED_DAB[$profile]=$(rates_of dab "$profile" | median)
done

# ------------------------------------------------------------ recovery

REC_LINE=""
if [[ $REC == 1 ]]; then
    max=${MED_DAB[$REC_PROFILE]:-nan}
    if [[ $max == nan ]]; then
        log "bench-kafka: no DAB median for profile $REC_PROFILE; skipping the recovery run"
    else
        base=$(awk -v m="$max" 'BEGIN { printf "%.0f", m / 2 }')
        burst=$(awk -v m="$max" 'BEGIN { printf "%.0f", m * 2 }')
        dur=$((REC_PRE + REC_BURST + REC_POST))
        log "bench-kafka: recovery: $base events/s for ${REC_PRE} s, $burst for ${REC_BURST} s, $base for ${REC_POST} s (profile $REC_PROFILE)"
        topic rec-in
        topic rec-out
        dir="$TMP/recovery"
        mkdir -p "$dir"
        read -r -a settings <<<"$(profile_settings "$REC_PROFILE")"
        group="bench-rec-$$"
        port=$(free_port)
        echo 'r.NewPipeline().In(KIn).FilterType(A).Out(KOut)' >"$dir/k.dab"
        cat >"$dir/dab.yaml" <<EOF
sources:
  KIn: { kind: kafka, brokers: "$BROKERS", topic: rec-in, group: "$group"$(yaml_options "${settings[@]}" "${SOURCE_EXTRA[@]}") }
sinks:
  KOut: { kind: kafka, brokers: "$BROKERS", topic: rec-out$(yaml_options "${SINK_EXTRA[@]}") }
types:
  A: {}
EOF
        "$DAB" run "$dir/k.dab" --config "$dir/dab.yaml" --metrics "127.0.0.1:$port" "${DAB_EXTRA[@]}" >"$dir/dab.log" 2>&1 &
        dpid=$!
        STARTED+=("$dpid")
        assigned=$(timeout 90 "$BENCH" watch --metrics "127.0.0.1:$port" --assigned "$PARTITIONS" --timeout 60 --pid "$dpid" | oneline) ||
            { log "bench-kafka: dab did not get its partitions"; tail -n 20 "$dir/dab.log" >&2; exit 1; }
        log "bench-kafka: recovery: dab has its partitions ($assigned)"
        rec_busy=$(wait_quiet)
        timeout $((dur + REC_TAIL + 60)) "$BENCH" lag --brokers "$BROKERS" --topic rec-in --group "$group" \
            --every-ms "$SAMPLE_MS" --for-secs $((dur + REC_TAIL)) --rss-pid "$dpid" --metrics "127.0.0.1:$port" \
            --quiet-after "$dur" --quiet-lag 0 >"$dir/samples" 2>"$dir/lag.err" &
        spid=$!
        STARTED+=("$spid")
        REC_PROD=$(timeout $((dur + 120)) "$BENCH" produce --brokers "$BROKERS" --topic rec-in --rate "$base" \
            --duration "$dur" --burst-after "$REC_PRE" --burst-secs "$REC_BURST" --burst-rate "$burst" \
            --payload-bytes "$EVENT_BYTES" | oneline) || REC_PROD="failed=1 $REC_PROD"
        log "bench-kafka: recovery producer: $REC_PROD"
        # The sampler ends once the lag stayed at zero for 3 s after the
        # producer stopped, or after $REC_TAIL s.
        for _ in $(seq $(((REC_TAIL + 30) * 10))); do
            kill -0 "$spid" 2>/dev/null || break
            sleep 0.1
        done
        stop "$spid" 5
        rec_cpu=$(cpu_of "$dpid")
        stop "$dpid" 15
        sent=$(field "$REC_PROD" sent)
        rec_check=$(timeout 200 "$BENCH" verify --brokers "$BROKERS" --topic rec-out --count "${sent:-0}" --idle 2 \
            --consumer-set "fetch.wait.max.ms=$FAST_FETCH_WAIT_MS" | grep -E '^(read|missing|repeated)=' | oneline) || rec_check="verify=failed"
        bs=$(field "$REC_PROD" burst_start_unix_ms)
        be=$(field "$REC_PROD" burst_end_unix_ms)
        ps0=$(field "$REC_PROD" started_unix_ms)
        # Peaks, the pre-burst median lag, and the first sample after the
        # burst's end from which the lag stays near zero to the end.
        pe=$(awk -v a="$ps0" -v d="$(field "$REC_PROD" send_secs)" 'BEGIN { printf "%.0f", a + d * 1000 }')
        REC_LINE=$(awk -v bs="$bs" -v be="$be" -v ps0="$ps0" -v pe="$pe" '
            function val(k,   i) { for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
            $1 == "sample" {
                t = val("unix_ms"); lag = val("lag"); rss = val("rss_kib"); dl = val("dab_lag")
                n++; T[n] = t; L[n] = lag; D[n] = dl
                if (rss != "" && rss + 0 > peak_rss) peak_rss = rss + 0
                if (lag != "" && lag + 0 > peak_lag) { peak_lag = lag + 0; peak_at = t }
                if (dl != "" && dl + 0 > peak_dlag) peak_dlag = dl + 0
                if (t >= ps0 + 3000 && t < bs) {
                    np++; if (lag + 0 > premax) premax = lag + 0; if (dl + 0 > premaxd) premaxd = dl + 0
                    if (rss + 0 > pre_rss) pre_rss = rss + 0
                }
            }
            END {
                thr = premax; if (thr < 1000) thr = 1000
                thrd = premaxd; if (thrd < 1000) thrd = 1000
                rec = -1; recd = -1
                for (i = n; i >= 1; i--) { if (T[i] < be) break; if (L[i] != "" && L[i] + 0 <= thr) rec = T[i]; else break }
                for (i = n; i >= 1; i--) { if (T[i] < be) break; if (D[i] != "" && D[i] + 0 <= thrd) recd = T[i]; else break }
                printf "samples=%d pre_burst_samples=%d peak_rss_kib=%d pre_burst_rss_kib=%d peak_lag=%d peak_lag_after_burst_end_s=%.1f pre_burst_max_lag=%d near_zero_lag=%d recovered_s=%s recovered_before_producer_end=%s peak_dab_lag=%d pre_burst_max_dab_lag=%d near_zero_dab_lag=%d recovered_dab_lag_s=%s",
                    n, np, peak_rss, pre_rss, peak_lag, (peak_at - be) / 1000, premax, thr,
                    (rec < 0 ? "never" : sprintf("%.1f", (rec - be) / 1000)),
                    (rec >= 0 && rec <= pe ? "yes" : "no"),
                    peak_dlag, premaxd, thrd,
                    (recd < 0 ? "never" : sprintf("%.1f", (recd - be) / 1000))
            }' "$dir/samples")
        REC_LINE="$REC_LINE dab_cpu=$rec_cpu $rec_check busy_before=$rec_busy"
        log "bench-kafka: recovery: $REC_LINE"
        if [[ ${KEEP:-0} == 1 ]]; then log "bench-kafka: samples in $dir/samples"; fi
    fi
fi

# ------------------------------------------------------------- summary

{
    echo
    echo "== DAB Kafka benchmark ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load average $LOAD_START at the start, $LOAD_END after the throughput runs, $(loadavg) at the end"
    echo "broker: $TANSU_VERSION, memory storage, on the same machine (127.0.0.1); its RSS at the end: $(awk '/^VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$BROKER_PID/status" 2>/dev/null || echo '?')"
    echo "input: $N events of $(field "$PRELOAD" event_bytes) bytes (JSON, type A), $PARTITIONS partitions; preload at $(fmt_int "$(field "$PRELOAD" delivered_rate)") events/s"
    echo
    for profile in $PROFILES; do
        c=${MED_COPY[$profile]}
        d=${MED_DAB[$profile]}
        r=$(ratio "$d" "$c")
        echo "profile $profile ($(profile_label "$profile"); $RUNS runs each; first consumed message to last delivery)"
        echo "  plain copy:  median $(fmt_int "$c") events/s (range $(rates_of copy "$profile" | range)), group join median $(joins_of copy "$profile" | median) s, missing in output: $(missing_of copy "$profile")"
        echo "  dab run:     median $(fmt_int "$d") events/s (range $(rates_of dab "$profile" | range)), first consumed at median $(joins_of dab "$profile" | median) s, missing in output: $(missing_of dab "$profile")"
        half=$(awk -v r="$r" 'BEGIN { print (r != "nan" && r >= 0.5) ? "yes" : "NO" }')
        abs=$(awk -v d="$d" -v t="$TARGET_EPS" 'BEGIN { print (d != "nan" && d >= t) ? "yes" : "NO" }')
        echo "  DAB/copy:    $r   (target >= 0.5: $half; DAB >= $(fmt_int $TARGET_EPS) events/s: $abs)"
    done
    if [[ -n $REC_LINE ]]; then
        echo
        echo "recovery (profile $REC_PROFILE): asked $(fmt_int "$base") / $(fmt_int "$burst") / $(fmt_int "$base") events/s; the producer reached $(fmt_int "$(field "$REC_PROD" base_rate_achieved)") events/s, burst $(fmt_int "$(field "$REC_PROD" burst_rate_achieved)") events/s for ${REC_BURST} s, then $(fmt_int "$(field "$REC_PROD" after_rate_achieved)") events/s; sent $(fmt_int "$(field "$REC_PROD" sent)") ($(fmt_int "$(field "$REC_PROD" shortfall_events)") behind its schedule and given up)"
        echo "  peak RSS:    $(awk -v k="$(field "$REC_LINE" peak_rss_kib)" 'BEGIN { printf "%.1f MiB", k / 1024 }') (before the burst $(awk -v k="$(field "$REC_LINE" pre_burst_rss_kib)" 'BEGIN { printf "%.1f MiB", k / 1024 }'))"
        echo "  peak lag:    $(fmt_int "$(field "$REC_LINE" peak_lag)") events committed-lag at the broker, $(field "$REC_LINE" peak_lag_after_burst_end_s) s after the burst's end; dab_kafka_consumer_lag peak $(fmt_int "$(field "$REC_LINE" peak_dab_lag)")"
        echo "  back near zero: $(field "$REC_LINE" recovered_s) s after the burst ended (committed lag <= $(fmt_int "$(field "$REC_LINE" near_zero_lag)"), the most seen before the burst, from then on; while the producer still ran: $(field "$REC_LINE" recovered_before_producer_end)); by dab_kafka_consumer_lag (<= $(fmt_int "$(field "$REC_LINE" near_zero_dab_lag)")): $(field "$REC_LINE" recovered_dab_lag_s) s"
        echo "  output check: $(field "$REC_LINE" read) read, $(field "$REC_LINE" missing) missing, $(field "$REC_LINE" repeated) repeated; dab CPU $(field "$REC_LINE" dab_cpu) s"
    fi
    if [[ $PERF == 1 && -f $TMP/perf.data ]]; then
        echo
        if [[ -n ${PERF_KEEP:-} ]]; then cp "$TMP/perf.data" "$PERF_KEEP"; fi
        echo "## profile of dab, first DAB run (perf, self time by thread, then by symbol, top 40)"
        { perf report -i "$TMP/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed 's/ *$//' | head -n 12; } || true
        echo
        { perf report -i "$TMP/perf.data" --no-children --sort symbol --percent-limit 0.5 --stdio -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//; s/ *$//' | cut -c1-160 | head -n 40; } || true
    fi
    echo
    echo "raw results:"
    sed 's/^/  /' "$RESULTS"
    if [[ -n $REC_LINE ]]; then echo "  RECOVERY $REC_LINE"; echo "  PRODUCER $REC_PROD"; fi
}
