#!/usr/bin/env python3
"""A second Python grpcio client for tests/grpc.rs: mixed event types, so a
FilterType downstream drops some of every batch, and the answers recorded
batch by batch instead of checked here.

Stubs are generated from proto/murron.proto when it runs
(python -m grpc_tools.protoc into a temporary folder). It sends
--unary-batches batches with unary Send, then --stream-batches batches on one
bidirectional Stream, and prints one JSON line:

    {"unary_acks": [n, ...], "stream_acks": [n, ...], "errors": ["..."]}

Each list holds Ack.accepted in the order received; an RPC error is recorded
in "errors" (code and details) and ends that phase. Exit status 0 whenever
the JSON line was printed; the Rust test judges it.

Event i (0-based, across both phases) is: host=--host, pid=77,
type="PyEvent" unless i % 4 == 3 (then "Noise"), offset=i,
timestamp=1_700_000_000_000_000_000 + i,
message=f"héllo {i} \"quoted\"\\n" (UTF-8), tags={"i": str(i), "city": "zürich"}.
Unary batches hold --events events; stream batch k holds
--events - (k % 5) events (at least 1), so an Ack out of order shows.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def generate_stubs(proto_dir, out_dir):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, "murron.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, out_dir)
    import murron_pb2  # noqa: E402  (generated just now)
    import murron_pb2_grpc  # noqa: E402

    return murron_pb2, murron_pb2_grpc


def event(pb2, host, i):
    return pb2.Event(
        timestamp=1_700_000_000_000_000_000 + i,
        host=host,
        type="Noise" if i % 4 == 3 else "PyEvent",
        offset=i,
        pid=77,
        message=f'héllo {i} "quoted"\n'.encode("utf-8"),
        tags={"i": str(i), "city": "zürich"},
    )


def batch(pb2, host, first, count):
    return pb2.Batch(events=[event(pb2, host, i) for i in range(first, first + count)])


def describe(err):
    return f"{err.code().name}: {err.details()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--unary-batches", type=int, default=10)
    ap.add_argument("--stream-batches", type=int, default=10)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--host", default="py-mixed")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    import grpc

    result = {"unary_acks": [], "stream_acks": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="murron-mixed-") as out_dir:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, out_dir)
        channel = grpc.insecure_channel(args.target)
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
        stub = pb2_grpc.MurronStub(channel)

        i = 0
        try:
            for _ in range(args.unary_batches):
                ack = stub.Send(batch(pb2, args.host, i, args.events), timeout=args.timeout)
                result["unary_acks"].append(ack.accepted)
                i += args.events
        except grpc.RpcError as err:
            result["errors"].append("unary: " + describe(err))

        sizes = [max(1, args.events - (k % 5)) for k in range(args.stream_batches)]
        firsts = []
        for size in sizes:
            firsts.append(i)
            i += size
        requests = (batch(pb2, args.host, f, s) for f, s in zip(firsts, sizes))
        try:
            for ack in stub.Stream(requests, timeout=args.timeout * 5):
                result["stream_acks"].append(ack.accepted)
        except grpc.RpcError as err:
            result["errors"].append("stream: " + describe(err))
        channel.close()

    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
