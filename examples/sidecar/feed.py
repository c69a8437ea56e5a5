"""Feeds the sidecar example over its four inputs at once, at a steady
pace, and records every answer. Run it with the venv's python
(~/.cache/dab/venv, made by scripts/setup-python.sh: grpcio, grpcio-tools).

    python feed.py --grpc PORT --http PORT --tcp PORT --unix PATH \
        --proto-dir DIR --out DIR --stop-file FILE --late-file FILE \
        [--every 0.25] [--batch 4] [--max-seconds 150]

One client per input, each in its own thread, sends a batch of BATCH
events every EVERY seconds until STOP-FILE exists (at most MAX-SECONDS):

- grpc: a unary `Send` (proto/murron.proto); the answer is its `Ack`.
- http: `POST /v1/events` with a JSON array; the answer is a 200.
- tcp, unix: NDJSON lines on one connection. These protocols have no
  answer; the "answer" is the write returning (a sidecar that pushed back
  would make it wait). dab counts what it acknowledged in
  `dab_source_acked_events_total`, which run.sh reads.

A refused gRPC or HTTP batch (UNAVAILABLE, RESOURCE_EXHAUSTED, 429, 503, a
timeout or a refused connection) is sent again, unchanged, after 0.2 s,
until it is answered; the report counts the refusals.

The events of input X have host `app-X`, pid 1, offsets 0, 1, 2, ... and
types in turn Login, Message, ApiCall, Message, Trace (Trace has no route:
it belongs in the dead letter topic); once LATE-FILE exists (run.sh makes
it when it kills the broker) the second Message of each five is a Signup,
a type whose topic the sidecar has not written before. The payload is a
JSON object.

Writes, in OUT:
- accepted.ndjson: one line per accepted event, {"host", "type", "offset"};
- answers.ndjson: one line per answer, {"input", "sent_ns", "answered_ns",
  "events", "tries"} (times in ns since the epoch, wall clock);
and prints one JSON summary line on stdout. Exits 1 if a client failed
(an answer that is not a refusal, a broken TCP or unix connection)."""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TYPES = ["Login", "Message", "ApiCall", "Message", "Trace"]
# Once the late file exists, offset i with i % 5 == 3 is a Signup instead:
# a routed type whose topic the sidecar first writes while the broker is
# down.
LATE_TYPE = "Signup"
INPUTS = ["grpc", "http", "tcp", "unix"]


class Recorder:
    """Collects answers and accepted events from every client thread."""

    def __init__(self, out):
        self.lock = threading.Lock()
        self.accepted = open(os.path.join(out, "accepted.ndjson"), "w")
        self.answers = open(os.path.join(out, "answers.ndjson"), "w")
        self.errors = []
        self.refused = {name: 0 for name in INPUTS}

    def answer(self, name, sent_ns, events, tries):
        answered = time.time_ns()
        with self.lock:
            for e in events:
                self.accepted.write(
                    json.dumps({"host": e["host"], "type": e["type"], "offset": e["offset"]}) + "\n"
                )
            self.answers.write(
                json.dumps(
                    {
                        "input": name,
                        "sent_ns": sent_ns,
                        "answered_ns": answered,
                        "events": len(events),
                        "tries": tries,
                    }
                )
                + "\n"
            )

    def refusal(self, name):
        with self.lock:
            self.refused[name] += 1

    def error(self, name, msg):
        with self.lock:
            self.errors.append(f"{name}: {msg}")

    def close(self):
        self.accepted.close()
        self.answers.close()


def type_of(i, late):
    if late and i % len(TYPES) == 3:
        return LATE_TYPE
    return TYPES[i % len(TYPES)]


def make_events(name, first, count, late_file):
    late = os.path.exists(late_file)
    return [
        {
            "timestamp": time.time_ns(),
            "host": f"app-{name}",
            "pid": 1,
            "type": type_of(i, late),
            "offset": i,
            "message": json.dumps({"input": name, "seq": i}),
        }
        for i in range(first, first + count)
    ]


def paced(args, stop):
    """Yields the batch numbers 0, 1, ... at the pace, until the stop file
    appears or MAX-SECONDS pass."""
    start = time.monotonic()
    k = 0
    while not stop.is_set():
        if os.path.exists(args.stop_file) or time.monotonic() - start > args.max_seconds:
            return
        yield k
        k += 1
        delay = start + k * args.every - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def retrying(name, rec, send, events):
    """Sends until answered; returns False when the client must give up."""
    sent_ns = time.time_ns()
    deadline = time.monotonic() + 120
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        outcome = send(events)
        if outcome is True:
            rec.answer(name, sent_ns, events, tries)
            return True
        if outcome is not None:  # a failure that is not a refusal
            rec.error(name, outcome)
            return False
        rec.refusal(name)
        time.sleep(0.2)
    rec.error(name, "a batch was not answered within 120 s")
    return False


def http_client(args, rec, stop):
    url = f"http://127.0.0.1:{args.http}/v1/events"

    def send(events):
        req = urllib.request.Request(
            url, data=json.dumps(events).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return True if r.status == 200 else f"answered {r.status}"
        except urllib.error.HTTPError as e:
            if e.code in (408, 429, 503):
                return None
            return f"answered {e.code}: {e.read()[:200]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    for k in paced(args, stop):
        if not retrying("http", rec, send, make_events("http", k * args.batch, args.batch, args.late_file)):
            stop.set()
            return


def grpc_client(args, rec, stop, pb2, pb2_grpc):
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{args.grpc}")
    stub = pb2_grpc.MurronStub(channel)
    retry = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }

    def send(events):
        batch = pb2.Batch(
            events=[
                pb2.Event(
                    timestamp=e["timestamp"],
                    host=e["host"],
                    type=e["type"],
                    offset=e["offset"],
                    pid=e["pid"],
                    message=e["message"].encode(),
                )
                for e in events
            ]
        )
        try:
            ack = stub.Send(batch, timeout=10)
        except grpc.RpcError as e:
            if e.code() in retry:
                return None
            return f"{e.code()}: {e.details()}"
        if ack.accepted != len(events):
            return f"Ack.accepted {ack.accepted} for a batch of {len(events)}"
        return True

    try:
        for k in paced(args, stop):
            if not retrying("grpc", rec, send, make_events("grpc", k * args.batch, args.batch, args.late_file)):
                stop.set()
                return
    finally:
        channel.close()


def stream_client(name, connect, args, rec, stop):
    """tcp and unix: NDJSON on one connection; a write is taken when sendall
    returns."""
    try:
        sock = connect()
    except OSError as e:
        rec.error(name, f"cannot connect: {e}")
        stop.set()
        return
    sock.settimeout(30)
    try:
        for k in paced(args, stop):
            events = make_events(name, k * args.batch, args.batch, args.late_file)
            sent_ns = time.time_ns()
            try:
                sock.sendall("".join(json.dumps(e) + "\n" for e in events).encode())
            except OSError as e:
                # What part of the batch dab read is unknown: nothing of it
                # counts as accepted, and the run fails.
                rec.error(name, f"write failed: {e}")
                stop.set()
                return
            rec.answer(name, sent_ns, events, 1)
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()


def unix_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grpc", type=int, required=True)
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--tcp", type=int, required=True)
    ap.add_argument("--unix", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--late-file", required=True)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=150)
    args = ap.parse_args()

    rec = Recorder(args.out)
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="sidecar-stubs-") as stubs:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, stubs)
        threads = [
            threading.Thread(target=grpc_client, args=(args, rec, stop, pb2, pb2_grpc)),
            threading.Thread(target=http_client, args=(args, rec, stop)),
            threading.Thread(
                target=stream_client,
                args=("tcp", lambda: socket.create_connection(("127.0.0.1", args.tcp), 10), args, rec, stop),
            ),
            threading.Thread(
                target=stream_client, args=("unix", lambda: unix_connect(args.unix), args, rec, stop)
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rec.close()
    print(json.dumps({"refused": rec.refused, "errors": rec.errors}), flush=True)
    if rec.errors:
        for e in rec.errors:
            print(f"feed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
