#!/usr/bin/env bash
# Hot-reload figures for docs/PERFORMANCE.md ("## Hot reload"; issue 6:
# "time from file change to the new topology serving, for a 100-pipeline
# set: under 100 ms median").
#
# Builds dab in release, writes a set of $PIPELINES pipelines in $FILES
# files (one tcp NDJSON source read by every pipeline; FilterType, Filter
# and WithSampleRate stages; one `file` sink each), starts
# `dab run SET --watch --metrics ADDR`, streams probe events into it every
# $INTERVAL_MS ms, and makes $TRIALS editor-style edits per run (a
# temporary file renamed over a .dab): rebuild one pipeline (its FilterType
# keeps Q instead of P, or back), add a pipeline, remove it. Per edit it
# measures, from just before the write:
#   (a) the `reloaded` log line, and the `ms=` dab reports in it;
#   (b) "serving": the first event of the new behaviour in the sink file
#       (the figure the issue asks for);
#   and when the router switched (the send time of the first probe the
#   new topology handled), `dab_reload_duration_seconds`, and whether the
#   switch lost or duplicated a probe.
# scripts/bench-reload.py does the work; this script builds, records the
# machine, runs it $RUNS times (a fresh dab each time) and pools the
# trials: median, p90, max, and the ratio to the 100 ms target.
#
# Every wait is bounded; everything started here is stopped on exit.
#
# Usage: scripts/bench-reload.sh
# Knobs (environment): RUNS=3 TRIALS=24 PIPELINES=100 FILES=10
#   INTERVAL_MS=1 PAUSE=0.3 FSYNC=0 VALIDATE_RUNS=10 QUIET_WAIT=30
#   BURST_MS=0 BURST_FOR_MS=150 (probes every BURST_MS for BURST_FOR_MS
#   after each edit: "serving" then waits at most BURST_MS for a probe)
#   DAB_ARGS= DAB_BIN= CARGO_TARGET_DIR (default ~/.cache/dab/target)
#   KEEP=dir (keep the sets, sinks, dab logs and trial JSON there)

set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
TRIALS=${TRIALS:-24}
PIPELINES=${PIPELINES:-100}
FILES=${FILES:-10}
INTERVAL_MS=${INTERVAL_MS:-1}
BURST_MS=${BURST_MS:-0}
BURST_FOR_MS=${BURST_FOR_MS:-150}
PAUSE=${PAUSE:-0.3}
FSYNC=${FSYNC:-0}
VALIDATE_RUNS=${VALIDATE_RUNS:-10}
QUIET_WAIT=${QUIET_WAIT:-30}
DAB_ARGS=${DAB_ARGS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}

TARGET_MS=100
DEBOUNCE_MS=15 # QUIET in crates/dab-cli/src/reload.rs

DAB=${DAB_BIN:-$CARGO_TARGET_DIR/release/dab}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dab-bench-reload.XXXXXX")
STARTED=()

# Only our own children, by pid (a pid that ended may have been reused).
ours() { [[ $(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ') == "$$" ]]; }

cleanup() {
    local p
    for p in "${STARTED[@]}"; do
        # The driver stops its dab on SIGTERM.
        if ours "$p"; then kill "$p" 2>/dev/null || true; fi
    done
    for p in "${STARTED[@]}"; do
        if ours "$p"; then wait "$p" 2>/dev/null || true; fi
    done
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        cp -r "$TMP"/. "$KEEP"/
        log "kept the runs in $KEEP"
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
# machine_busy, wait_quiet
. scripts/lib/bench.sh  # (the script has cd'd to the repository root)



loadavg() { uptime | sed 's/.*load average: *//'; }

if [[ -z ${DAB_BIN:-} ]]; then
    log "== building dab (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release -q -p dab-cli
fi

echo "## machine"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "nproc: $(nproc)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
echo "rustc: $(rustc --version)"
echo "python: $(python3 --version 2>&1)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may be dirty)"
echo "load average at start (1, 5, 15 min): $(loadavg)"
echo "set: $PIPELINES pipelines in $FILES files, probes every $INTERVAL_MS ms (every $BURST_MS ms for $BURST_FOR_MS ms after each edit; 0: no burst), $TRIALS edits per run, $RUNS runs, fsync $FSYNC"

fsync_flag=()
if [[ $FSYNC == 1 ]]; then fsync_flag=(--fsync); fi

for ((r = 1; r <= RUNS; r++)); do
    # Listener and admin ports below the ephemeral range, fresh per run.
    port=$((20000 + RANDOM % 10000))
    vr=0
    if ((r == 1)); then vr=$VALIDATE_RUNS; fi
    busy=$(wait_quiet)
    echo
    echo "## run $r (machine busy before: $busy; load average $(loadavg))"
    mkdir -p "$TMP/run$r"
    python3 scripts/bench-reload.py run --dab "$DAB" --work "$TMP/run$r" \
        --port "$port" --metrics "127.0.0.1:$((port + 1))" \
        --pipelines "$PIPELINES" --files "$FILES" --trials "$TRIALS" \
        --interval-ms "$INTERVAL_MS" --burst-ms "$BURST_MS" --burst-for-ms "$BURST_FOR_MS" \
        --pause "$PAUSE" --validate-runs "$vr" \
        --dab-args "$DAB_ARGS" --label "$r" --out "$TMP/trials.jsonl" "${fsync_flag[@]}" &
    STARTED+=("$!")
    wait "$!"
done

echo
echo "load average at the end (1, 5, 15 min): $(loadavg)"
echo
echo "## summary (pooled over $RUNS runs)"
python3 scripts/bench-reload.py summary "$TMP/trials.jsonl" --target-ms "$TARGET_MS" --debounce-ms "$DEBOUNCE_MS"
