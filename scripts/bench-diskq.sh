#!/usr/bin/env bash
# Disk queue figures for docs/PERFORMANCE.md (issue 14, "Speed"): write +
# read through dab-diskq with `fsync: 100ms` and with `fsync: always`
# (200-byte records, batches of 1,024, one reader acknowledging as it
# goes), against this disk's own ceiling measured in the same run and the
# same directory: `dd if=/dev/zero bs=1M count=$MIB conv=fdatasync`.
# Prints each round, the medians, events/s, MB/s and the ratio to dd.
# The target: fsync 100ms reaches at least 0.5 of dd.
#
# Usage: scripts/bench-diskq.sh
# Knobs (environment): DIR= (default: a fresh directory under $TMPDIR,
#   removed on exit) MIB=256 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-256}
ROUNDS=${ROUNDS:-3}
if [[ -n "${DIR:-}" ]]; then
  mkdir -p "$DIR"
else
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/dab-diskq-bench.XXXXXX")
  trap 'rm -rf "$DIR"' EXIT
fi
command -v dd >/dev/null || { echo "bench-diskq: dd is missing" >&2; exit 1; }
cargo build --release -q -p dab-diskq --example bench
target=${CARGO_TARGET_DIR:-target}
df -h "$DIR" | tail -1 | awk '{print "filesystem: " $1 " mounted on " $6}'
"$target/release/examples/bench" "$DIR" "$MIB" "$ROUNDS"
