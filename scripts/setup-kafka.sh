#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker, tansu 0.6.0, is on this machine for the
# Kafka tests, examples and benchmarks (scripts/kafka-broker.sh,
# tests/kafka_support/broker.rs). Looks, in order, at $DAB_TANSU, `tansu` on
# the PATH and ~/.cache/dab/tansu-libsql/bin/tansu; when none is there it
# builds one with `cargo install`: the `dynostore` feature is what makes
# `--storage-engine memory://` work, `libsql` gives `sqlite://FILE`, storage
# that survives a broker restart (the broker-restart fault tests need it).
# Safe to run again: skipped when a binary is found. A cold build takes about
# 15-20 minutes.
#
# Usage: scripts/setup-kafka.sh [--print]   (--print: the binary's path on stdout)
set -euo pipefail

version=0.6.0
root="$HOME/.cache/dab/tansu-libsql"
print=0
case "${1:-}" in
  --print) print=1 ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

found() {
  echo "setup-kafka: tansu at $1" >&2
  if [ "$print" = 1 ]; then echo "$1"; fi
  exit 0
}

if [ -n "${DAB_TANSU:-}" ]; then
  [ -x "$DAB_TANSU" ] || { echo "setup-kafka: DAB_TANSU=$DAB_TANSU is not an executable" >&2; exit 1; }
  found "$DAB_TANSU"
fi
if [ -x "$root/bin/tansu" ]; then
  found "$root/bin/tansu"
fi

command -v cargo >/dev/null 2>&1 || { echo "setup-kafka: cargo is required (rustup.rs)" >&2; exit 1; }
echo "setup-kafka: building tansu $version into $root (a cold build takes ~15 min)" >&2
cargo install --locked tansu --version "$version" --features dynostore,libsql --root "$root"
[ -x "$root/bin/tansu" ] || { echo "setup-kafka: cargo install did not produce $root/bin/tansu" >&2; exit 1; }
found "$root/bin/tansu"
