#!/usr/bin/env bash
# Renders the seed blueprint's DAG into docs/ (dot source and SVG). Needs
# Graphviz, which ./scripts/setup.sh installs. tests/cli.rs checks that
# docs/murron.dot is what `dab graph blueprints/murron/murron.dab` prints today.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -- graph blueprints/murron/murron.dab > docs/murron.dot
dot -Tsvg docs/murron.dot > docs/murron.svg
echo "wrote docs/murron.dot and docs/murron.svg" >&2
