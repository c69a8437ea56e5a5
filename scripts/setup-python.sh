#!/usr/bin/env bash
# Installs Python gRPC and confluent-kafka (tests/interop/requirements.txt)
# into a virtualenv under ~/.cache/dab/venv for the gRPC interop test
# (crates/dab-connectors/tests/murron_grpc.rs, `python_grpcio_client_interop`)
# the Kafka client of the Kafka tests (tests/kafka_support/client.py), and
# pyarrow and DuckDB, the readers of the parquet sink's test (tests/parquet.rs),
# and moto's S3-compatible server with boto3 for its s3:// paths.
# Safe to run again: skipped when the venv already imports grpc, grpc_tools
# and confluent_kafka at the pinned versions. DAB_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DAB_VENV:-$HOME/.cache/dab/venv}"
req="tests/interop/requirements.txt"
want_grpc="$(sed -n 's/^grpcio==//p' "$req")"
want_kafka="$(sed -n 's/^confluent-kafka==//p' "$req")"
want_pyarrow="$(sed -n 's/^pyarrow==//p' "$req")"
want_duckdb="$(sed -n 's/^duckdb==//p' "$req")"
want_moto="$(sed -n 's/^moto\[s3,server\]==//p' "$req")"

if [ -x "$venv/bin/python" ] &&
  "$venv/bin/python" -c "
import sys, grpc, grpc_tools, confluent_kafka, pyarrow, duckdb, moto, boto3, flask
sys.exit(grpc.__version__ != '$want_grpc' or confluent_kafka.__version__ != '$want_kafka'
         or pyarrow.__version__ != '$want_pyarrow' or duckdb.__version__ != '$want_duckdb'
         or moto.__version__ != '$want_moto')
" 2>/dev/null; then
  echo "setup-python: $venv has grpcio $want_grpc, confluent-kafka $want_kafka, pyarrow $want_pyarrow, duckdb $want_duckdb and moto $want_moto already" >&2
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
"$venv/bin/python" -c "
import grpc, grpc_tools, confluent_kafka, pyarrow, duckdb, moto, boto3, flask
print('setup-python: grpcio', grpc.__version__, '- confluent-kafka', confluent_kafka.__version__,
      '(librdkafka', confluent_kafka.libversion()[0] + ')', '- pyarrow', pyarrow.__version__,
      '- duckdb', duckdb.__version__, '- moto', moto.__version__, '- boto3', boto3.__version__)
" >&2
