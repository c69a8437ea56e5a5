#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of outside input (fuzz/): NDJSON
# lines, length-delimited protobuf frames, the Murron gRPC batch wire, HTTP
# bodies, Kafka message values, the bindings YAML and blueprint text.
#
# libFuzzer (libfuzzer-sys) on stable Rust: the targets are built with
# LLVM's sanitizer-coverage passes (`-Cpasses=sancov-module`), debug
# assertions and overflow checks, for the host target only, so build
# scripts stay plain. No nightly and no cargo-fuzz are needed.
#
# For each target: first every kept input in fuzz/regressions/TARGET/ (each
# one once failed; they must all pass now), then RUNS fresh inputs, mutated
# from fuzz/seeds/TARGET/ and a working corpus, under an RSS limit. Prints
# per target the inputs tried, crashes, peak RSS and seconds, then a table.
# A crash leaves its input in $WORK/artifacts/TARGET/; copy it into
# fuzz/regressions/TARGET/ once fixed. Exits 1 on any crash or failed
# regression. Every run is bounded in count and time.
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: all seven)
# Knobs: RUNS=1000000 MAX_TIME=900 (s per target) RSS_MB=1024 MAX_LEN=65536
#        WORK=$CARGO_TARGET_DIR/fuzz-work (the corpora; kept between runs)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1000000}
MAX_TIME=${MAX_TIME:-900}
RSS_MB=${RSS_MB:-1024}
MAX_LEN=${MAX_LEN:-65536}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"
FUZZ_TARGET_DIR="$CARGO_TARGET_DIR/fuzz"
WORK=${WORK:-$CARGO_TARGET_DIR/fuzz-work}
ALL=(ndjson proto_frames grpc_batch http_body kafka_message bindings_yaml blueprint)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
for t in "${TARGETS[@]}"; do
  [[ -f "fuzz/fuzz_targets/$t.rs" ]] || { echo "fuzz: no target $t (have: ${ALL[*]})" >&2; exit 2; }
done

host=$(rustc -vV | sed -n 's/^host: //p')
echo "fuzz: building ${#TARGETS[@]} target(s) for $host with sanitizer coverage ($FUZZ_TARGET_DIR)" >&2
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$host" \
  --target-dir "$FUZZ_TARGET_DIR" $(printf -- '--bin %s ' "${TARGETS[@]}")
bin_dir="$FUZZ_TARGET_DIR/$host/release"

failed=0
rows=()
for t in "${TARGETS[@]}"; do
  bin="$bin_dir/$t"
  corpus="$WORK/corpus/$t"
  artifacts="$WORK/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$WORK/$t.log"
  # Kept inputs that once failed: each is run once and must pass.
  regress=0
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    regress=$(find "fuzz/regressions/$t" -type f | wc -l)
    if ! timeout 300 "$bin" -rss_limit_mb="$RSS_MB" fuzz/regressions/"$t"/* >"$log.regress" 2>&1; then
      echo "fuzz: $t: a kept regression input fails again; see $log.regress" >&2
      tail -n 30 "$log.regress" >&2
      failed=1
    fi
  fi
  before=$(find "$artifacts" -type f | wc -l)
  start=$SECONDS
  set +e
  timeout $((MAX_TIME + 60)) "$bin" -runs="$RUNS" -max_total_time="$MAX_TIME" \
    -rss_limit_mb="$RSS_MB" -max_len="$MAX_LEN" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" "fuzz/seeds/$t" >"$log" 2>&1
  rc=$?
  set -e
  secs=$((SECONDS - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  crashes=$(( $(find "$artifacts" -type f | wc -l) - before ))
  if [[ $rc -ne 0 || $crashes -gt 0 || -z "$runs" ]]; then
    failed=1
    echo "fuzz: $t failed (exit $rc, $crashes new crash input(s) in $artifacts); the end of $log:" >&2
    tail -n 40 "$log" >&2
  fi
  echo "fuzz: $t: ${runs:-?} inputs, $crashes crashes, peak RSS ${rss:-?} MiB, ${secs} s, $regress regression input(s)" >&2
  rows+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$t" "${runs:-?}" "$crashes" "${rss:-?}" "$secs" "$regress")")
done

echo
echo "fuzz summary ($(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg), RUNS=$RUNS)"
echo "| target | inputs tried | crashes | peak RSS (MiB) | seconds | regression inputs |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [[ $failed -ne 0 ]]; then
  echo "fuzz: FAILED" >&2
  exit 1
fi
echo "fuzz: $(( ${#TARGETS[@]} )) passed, 0 failed"
