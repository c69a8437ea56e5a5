#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, golden,
# conformance and end-to-end tests. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# A target dir outside the clone keeps CI's warm cache between fresh clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dab/target}"

# Python gRPC for the interop test (a client nobody here wrote); skipped
# when the venv is already there.
./scripts/setup-python.sh
# A Kafka-protocol broker (tansu) for tests/kafka.rs; built once (about
# 15 minutes cold), then reused from ~/.cache/dab/tansu.
./scripts/setup-kafka.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# A short coverage-guided pass over every decoder (scripts/fuzz.sh; the
# full run is 1,000,000 inputs per target), and every kept input that once
# failed.
RUNS=20000 MAX_TIME=120 ./scripts/fuzz.sh
cargo test --workspace --quiet
