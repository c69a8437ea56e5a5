#!/usr/bin/env python3
"""A Murron client nobody in this repository wrote: Python grpcio, with stubs
generated from proto/murron.proto when it runs (python3 -m grpc_tools.protoc).

It sends batches to a murron_grpc source, first with unary Send, then on one
bidirectional Stream, checks that every batch got its Ack (in order on the
stream, each counting the batch's events), and prints one JSON line:

    {"sent_events": N, "acked_events": N, "unary_acks": U, "stream_acks": S}

Events are host=HOST, type="PyEvent", pid=4242, offsets 0..N-1 (unary first),
timestamp 1700000000000000000 + offset, a binary message, tags
{"client": "grpcio", "seq": "<offset>"}. Exit status 0 only if all is well.

    murron_client.py --target 127.0.0.1:50051 --proto-dir proto \
        [--unary-batches 20] [--stream-batches 20] [--events 50] [--host py-1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc on murron.proto; returns (pb2, pb2_grpc)."""
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


def make_batch(pb2, host, first, count):
    events = []
    for offset in range(first, first + count):
        events.append(
            pb2.Event(
                timestamp=1_700_000_000_000_000_000 + offset,
                host=host,
                type="PyEvent",
                offset=offset,
                pid=4242,
                message=b"\x00\xffpython " + str(offset).encode(),
                tags={"client": "grpcio", "seq": str(offset)},
            )
        )
    return pb2.Batch(events=events)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="host:port of the source")
    ap.add_argument("--proto-dir", required=True, help="folder of murron.proto")
    ap.add_argument("--unary-batches", type=int, default=20)
    ap.add_argument("--stream-batches", type=int, default=20)
    ap.add_argument("--events", type=int, default=50, help="events per batch")
    ap.add_argument("--host", default="py-1")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    args = ap.parse_args()

    import grpc

    with tempfile.TemporaryDirectory(prefix="murron-stubs-") as out_dir:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, out_dir)
        channel = grpc.insecure_channel(args.target)
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
        stub = pb2_grpc.MurronStub(channel)

        n = args.events
        offset = 0
        sent = acked = unary_acks = 0
        for _ in range(args.unary_batches):
            ack = stub.Send(make_batch(pb2, args.host, offset, n), timeout=args.timeout)
            if ack.accepted != n:
                sys.exit(f"unary Send at offset {offset}: Ack.accepted {ack.accepted}, expected {n}")
            offset += n
            sent += n
            acked += ack.accepted
            unary_acks += 1

        # Batch i of the stream holds n - (i % 3) events, so an ack out of
        # order would show a wrong count.
        sizes = [max(1, n - (i % 3)) for i in range(args.stream_batches)]
        firsts = []
        for size in sizes:
            firsts.append(offset)
            offset += size
        requests = (
            make_batch(pb2, args.host, first, size) for first, size in zip(firsts, sizes)
        )
        stream_acks = 0
        for i, ack in enumerate(stub.Stream(requests, timeout=args.timeout * 5)):
            if i >= len(sizes):
                sys.exit(f"stream: more acks than batches ({i + 1})")
            if ack.accepted != sizes[i]:
                sys.exit(f"stream ack {i}: accepted {ack.accepted}, expected {sizes[i]}")
            sent += sizes[i]
            acked += ack.accepted
            stream_acks += 1
        if stream_acks != len(sizes):
            sys.exit(f"stream: {stream_acks} acks for {len(sizes)} batches")
        channel.close()

    print(
        json.dumps(
            {
                "sent_events": sent,
                "acked_events": acked,
                "unary_acks": unary_acks,
                "stream_acks": stream_acks,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
