#!/usr/bin/env bash
# The fault matrix of docs/RELIABILITY.md (issue 10): the rows of
# tests/faults.rs run one at a time at full size (DAB_FAULTS_SIZE=full:
# the sink peer down 10 s, one poison event among 100,000, more events and
# longer faults everywhere), then printed as one Markdown table: events
# offered, acknowledged, delivered, missing among acknowledged (always 0:
# each row asserts it), duplicates, and time to recover.
#
# Real processes, real peers, real faults: the built `dab` binary, HTTP
# peers and clients on 127.0.0.1, a tmpfs mounted small (so it needs root,
# as CI has), a tansu broker with sqlite storage, and confluent-kafka
# clients. Missing tansu or the Python venv are installed by the setup
# scripts (a cold tansu build takes 15-20 minutes).
#
# Usage: scripts/faults.sh [ROW...]   (rows are the test names; default all)
# Knobs (environment): SIZE=full|test  PROFILE=dev|release
#   CARGO_TARGET_DIR (default ~/.cache/dab/target)
# Exit status: 0 when every row passed, 1 otherwise (the table still
# prints the rows that passed; the failures are named after it).

set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-full}
PROFILE=${PROFILE:-dev}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}

# In the order of the issue's list.
ALL=(
    sink_peer_down
    slow_sink_at_1000_events_per_second
    full_disk_then_freed
    poison_events_go_to_on_error_and_the_rest_is_delivered
    kill_9_of_dab_on_a_kafka_source
    kill_9_of_the_downstream_dab_of_a_grpc_relay
    broker_restart_after_kill_9
    rebalance_join_leave_kill
    twenty_reloads_under_load
    sigterm_under_load
    reconnect_storm_of_1000_clients
)
if (($#)); then ROWS=("$@"); else ROWS=("${ALL[@]}"); fi

log() { printf '%s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || {
    log "faults: the full-disk row mounts a tmpfs and needs root (CI runs as root)"
    exit 1
}
scripts/setup-python.sh >&2
DAB_TANSU=$(scripts/setup-kafka.sh --print)
export DAB_TANSU

log "faults: building the test binary ($PROFILE)"
cargo test -q -p dab-cli --profile "$PROFILE" --test faults --no-run >&2

rows=$(mktemp)
logs=$(mktemp -d)
trap 'rm -rf "$rows" "$logs"' EXIT

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
failed=()
for row in "${ROWS[@]}"; do
    log "faults: $row ($SIZE)"
    t0=$SECONDS
    if DAB_FAULTS_SIZE=$SIZE DAB_FAULTS_ROWS=$rows \
        cargo test -q -p dab-cli --profile "$PROFILE" --test faults -- \
        --exact "$row" --test-threads=1 >"$logs/$row.log" 2>&1; then
        log "  passed in $((SECONDS - t0)) s"
    else
        log "  FAILED in $((SECONDS - t0)) s; the end of its output:"
        tail -40 "$logs/$row.log" >&2
        failed+=("$row")
    fi
done

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
echo "Fault matrix, size $SIZE, $PROFILE build of $(git rev-parse --short HEAD), $started"
echo "Machine: $(nproc) cores ($cpu), $mem, Linux $(uname -r); load average before: $load_before"
echo
echo "| Fault | Offered | Acknowledged | Delivered | Missing among acknowledged | Duplicates | Time to recover | Notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
cat "$rows"
if ((${#failed[@]})); then
    echo
    echo "FAILED: ${failed[*]}"
    exit 1
fi
