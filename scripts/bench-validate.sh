#!/usr/bin/env bash
# Wall time of `dab validate` on a generated set (docs/PERFORMANCE.md,
# "Validation"): builds the release binary, generates FILES x PER_FILE
# pipelines with scripts/gen-corpus.py, checks that the set is valid with no
# warning, then times `dab validate DIR` with hyperfine (or a plain loop when
# hyperfine cannot be had) and prints the median. In the same hyperfine run
# it times a ceiling: `cat` of the same blueprint and bindings files (reading
# the bytes, starting a process), and prints dab's median over it.
#
#   scripts/bench-validate.sh                 # 100 files x 100 pipelines
#   FILES=20 PER_FILE=500 RUNS=5 scripts/bench-validate.sh
#   TIMER=loop scripts/bench-validate.sh     # no hyperfine, a date loop
#   DAB_BIN=/path/to/dab scripts/bench-validate.sh   # another build, not rebuilt
#
# At most WARMUP + RUNS timed runs (2 + 10 by default; RUNS is capped at 20).
set -euo pipefail
cd "$(dirname "$0")/.."

FILES="${FILES:-100}"
PER_FILE="${PER_FILE:-100}"
RUNS="${RUNS:-10}"
WARMUP="${WARMUP:-2}"
SEED="${SEED:-42}"
TIMER="${TIMER:-hyperfine}"
if (( RUNS > 20 )); then RUNS=20; fi

target_dir="${CARGO_TARGET_DIR:-target}"
dab="${DAB_BIN:-$target_dir/release/dab}"
corpus="$target_dir/bench-corpus"
TARGET_MS=300

if [ -z "${DAB_BIN:-}" ]; then
    echo "== building $dab" >&2
    cargo build --release --quiet -p dab-cli
fi

echo "== generating the set into $corpus" >&2
rm -rf "$corpus"
python3 scripts/gen-corpus.py "$corpus" --files "$FILES" --pipelines-per-file "$PER_FILE" --seed "$SEED" >&2
bytes=$(cat "$corpus"/*.dab | wc -c)
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1e6 }')

# The timings only mean something for a set that passes: any diagnostic
# would add rendering to what is timed.
echo "== checking the set is valid (0 errors, 0 warnings)" >&2
if ! "$dab" validate --deny-warnings "$corpus" >/dev/null; then
    "$dab" validate "$corpus" | tail -n 20 >&2
    echo "error: dab validate did not exit 0 on the generated set" >&2
    exit 1
fi

if [ "$TIMER" = hyperfine ] && ! command -v hyperfine >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing hyperfine" >&2
    apt-get install -y -qq hyperfine >/dev/null 2>&1 || true
fi

cmd=("$dab" validate "$corpus")
if [ "$TIMER" = hyperfine ] && command -v hyperfine >/dev/null; then
    json="$target_dir/bench-validate.json"
    # hyperfine fails on a non-zero exit status, which is the assertion we want.
    ceiling="cat $corpus/*.dab $corpus/dab.yaml"
    hyperfine --warmup "$WARMUP" --runs "$RUNS" --export-json "$json" --style basic \
        "${cmd[*]}" "$ceiling > /dev/null" >&2
    read -r median_ms ceiling_ms < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"]; print(round(r[0]["median"] * 1000), "%.1f" % (r[1]["median"] * 1000))' "$json")
    tool="hyperfine, $WARMUP warmup + $RUNS runs; ceiling \`cat\` of the same files ${ceiling_ms} ms"
else
    echo "== no hyperfine: timing $RUNS runs with date" >&2
    for ((i = 0; i < WARMUP; i++)); do "${cmd[@]}" >/dev/null; done
    times=()
    for ((i = 0; i < RUNS; i++)); do
        start=$(date +%s%N)
        "${cmd[@]}" >/dev/null || { echo "error: dab validate failed on run $i" >&2; exit 1; }
        end=$(date +%s%N)
        times+=($(( (end - start) / 1000000 )))
    done
    median_ms=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }')
    tool="date loop, $WARMUP warmup + $RUNS runs"
fi

pipelines=$((FILES * PER_FILE))
verdict=$([ "$median_ms" -lt "$TARGET_MS" ] && echo "under" || echo "OVER")
echo "dab validate: $pipelines pipelines in $FILES files ($mb MB): median ${median_ms} ms ($tool); $verdict the $TARGET_MS ms target"
