#!/usr/bin/env bash
# Installs Python gRPC (tests/interop/requirements.txt) into a virtualenv
# under ~/.cache/dab/venv for the gRPC interop test
# (crates/dab-connectors/tests/murron_grpc.rs, `python_grpcio_client_interop`).
# Safe to run again: skipped when the venv already imports grpc and
# grpc_tools at the pinned versions. DAB_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DAB_VENV:-$HOME/.cache/dab/venv}"
req="tests/interop/requirements.txt"
want_grpc="$(sed -n 's/^grpcio==//p' "$req")"

if [ -x "$venv/bin/python" ] &&
  "$venv/bin/python" -c "import grpc, grpc_tools, sys; sys.exit(grpc.__version__ != '$want_grpc')" 2>/dev/null; then
  echo "setup-python: $venv has grpcio $want_grpc already" >&2
  exit 0
fi

command -v python3 >/dev/null 2>&1 || {
  echo "setup-python: python3 is required (apt-get install python3 python3-venv)" >&2
  exit 1
}
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-python: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" || {
    echo "setup-python: python3 -m venv failed; on Debian: apt-get install python3-venv" >&2
    exit 1
  }
fi
echo "setup-python: installing $req" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c "import grpc, grpc_tools; print('setup-python: grpcio', grpc.__version__)" >&2
