#!/usr/bin/env bash
# Installs what DAB needs on a fresh Debian machine of this kind, then builds
# it. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)          # docs/murron.svg
command -v hyperfine >/dev/null 2>&1 || need_apt+=(hyperfine)    # scripts/bench-validate.sh
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: optional tools missing (${need_apt[*]}); install them with apt-get for docs and benchmarks" >&2
  fi
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
# Python gRPC for the interop tests (a venv under ~/.cache/dab).
./scripts/setup-python.sh
cargo build --release --quiet
echo "setup: ok" >&2
