"""Kafka side and watcher of scripts/bench-parquet.sh (issue 12, "Speed"),
with the venv's confluent-kafka (librdkafka) and the standard library.

    bench-parquet.py produce --brokers B --topic T --count N --hours H
    bench-parquet.py consume --brokers B --topic T --count N --group G [--set k=v ...]
    bench-parquet.py watch --metrics HOST:PORT --rows N --pid PID --timeout S
    bench-parquet.py rows --endpoint URL --bucket B --prefix P

`produce` writes N DAB events (JSON, type ServerLogs) whose `message` is a
server_logs payload as a string, event i in hour i % H (from
2024-11-23T00:00Z), so every batch touches H hours (H open writers).
`consume` is the plain consumer: reads the whole topic (N messages) and
prints events/s from the first message to the last. `watch` polls `dab run
--metrics` until dab_source_events_total reaches N, stops dab with SIGTERM
(its drain commits every open file) and prints N over the time from the
first poll where dab_source_events_total > 0 to dab's exit, and the peak
RSS (VmHWM) of PID. `rows` counts the rows and files under an S3 prefix. Results are key=value lines; every loop
is bounded in time."""

import argparse
import io
import json
import os
import signal
import sys
import time
import urllib.request

HOUR_NS = 3_600_000_000_000
BASE_NS = 1_732_320_000_000_000_000
SERVICES = ["api", "auth", "billing", "search"]
PATHS = [
    "/api/chat.postMessage",
    "/api/conversations.history",
    "/api/users.info",
    "/oauth/token",
    "/api/files.upload",
]


def payload(i, ts_ns):
    secs, ns = divmod(ts_ns, 1_000_000_000)
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%06dZ" % (ns // 1000)
    p = {
        "ts": t,
        "level": ["info", "info", "info", "warn", "error"][i % 5],
        "service": SERVICES[i % 4],
        "method": "POST",
        "path": PATHS[i % 5],
        "status": [200, 200, 201, 404, 500][i % 5],
        "user_id": None if i % 4 == 0 else 100_000 + i * 7919 % 50_000,
        "latency_ms": round((i % 997) * 0.731, 3),
        "client": {
            "ip": "10.%d.%d.%d" % (i % 256, i // 256 % 256, i % 7),
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Slack/4.%d" % (i % 40),
        },
    }
    if i % 3:
        p["labels"] = {"env": "prod", "region": "eu-west-%d" % (i % 3 + 1), "shard": "s%d" % (i % 64)}
    return json.dumps(p, separators=(",", ":"))


def produce(a):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": a.brokers, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 500000})
    delivered = [0]

    def done(err, _msg):
        if err is None:
            delivered[0] += 1

    t0 = time.monotonic()
    step = HOUR_NS // max(a.count // a.hours, 1)
    nbytes = 0
    for i in range(a.count):
        ts = BASE_NS + (i % a.hours) * HOUR_NS + (i // a.hours) * step
        ev = json.dumps({"timestamp": ts, "host": "web-%d" % (i % 17), "type": "ServerLogs",
                         "offset": i, "pid": 31102, "message": payload(i, ts)}, separators=(",", ":"))
        nbytes += len(ev)
        while True:
            try:
                p.produce(a.topic, ev.encode(), on_delivery=done)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
        if time.monotonic() - t0 > a.timeout:
            break
    p.flush(a.timeout)
    secs = time.monotonic() - t0
    print("delivered=%d" % delivered[0])
    print("event_bytes=%d" % (nbytes // max(a.count, 1)))
    print("delivered_rate=%.0f" % (delivered[0] / secs if secs else 0))
    return 0 if delivered[0] == a.count else 1


def consume(a):
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": a.brokers, "group.id": a.group, "auto.offset.reset": "earliest",
            "enable.auto.commit": True}
    for kv in a.set:
        k, _, v = kv.partition("=")
        conf[k] = v
    c = Consumer(conf)
    c.subscribe([a.topic])
    t_start = time.monotonic()
    first = last = None
    n = 0
    try:
        while n < a.count and time.monotonic() - t_start < a.timeout:
            msgs = c.consume(num_messages=10000, timeout=0.5)
            for m in msgs:
                if m.error() is None:
                    n += 1
            if msgs:
                now = time.monotonic()
                if first is None:
                    first = now
                last = now
    finally:
        c.close()
    secs = (last - first) if first is not None and last > first else 0
    print("read=%d" % n)
    print("first_consumed_secs=%.2f" % ((first - t_start) if first else -1))
    print("rate=%.0f" % (n / secs if secs else 0))
    return 0 if n >= a.count else 1


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def hwm_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def watch(a):
    """Polls dab's /metrics until its source has read N events, then stops
    dab with SIGTERM (a drain: every open file is committed, whatever its
    age) and waits for it to exit. The rate is N over the time from the
    first poll where dab_source_events_total > 0 to the exit; rows are
    counted afterwards from S3 (`rows`), not here."""
    t0 = time.monotonic()
    first = None
    hwm = 0
    stopped = None
    exited = False
    while time.monotonic() - t0 < a.timeout:
        h = hwm_kib(a.pid)
        if h is None:
            exited = True
            break
        hwm = max(hwm, h)
        if stopped is None:
            try:
                with urllib.request.urlopen("http://%s/metrics" % a.metrics, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(a.every_ms / 1000)
                continue
            now = time.monotonic()
            consumed = metric_sum(text, "dab_source_events_total")
            if first is None and consumed > 0:
                first = now
            if consumed >= a.rows:
                os.kill(a.pid, signal.SIGTERM)
                stopped = now
                continue
            time.sleep(a.every_ms / 1000)
        else:
            time.sleep(0.01)
    end = time.monotonic()
    secs = end - first if first is not None else 0
    print("exited=%d" % exited)
    print("first_consumed_secs=%.2f" % ((first - t0) if first is not None else -1))
    print("drain_secs=%.2f" % ((end - stopped) if stopped is not None else -1))
    print("rate=%.0f" % (a.rows / secs if secs > 0 and exited else 0))
    print("peak_rss_kib=%d" % hwm)
    return 0 if exited else 1


def rows(a):
    """Counts the rows and files of the Parquet objects under a prefix
    (their footers, read with pyarrow)."""
    import boto3
    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=a.endpoint, region_name="us-east-1")
    n = files = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=a.prefix):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=a.bucket, Key=o["Key"])["Body"].read()
            n += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
            files += 1
            size += o["Size"]
    print("rows=%d" % n)
    print("files=%d" % files)
    print("file_mib=%.1f" % (size / files / 1048576 if files else 0))
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--hours", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600)
    c = sub.add_parser("consume")
    c.add_argument("--brokers", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--set", action="append", default=[], help="librdkafka setting k=v")
    c.add_argument("--timeout", type=float, default=300)
    w = sub.add_parser("watch")
    w.add_argument("--metrics", required=True)
    w.add_argument("--rows", type=int, required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--every-ms", type=int, default=100)
    w.add_argument("--timeout", type=float, default=300)
    r = sub.add_parser("rows")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--bucket", required=True)
    r.add_argument("--prefix", required=True)
    a = ap.parse_args(argv[1:])
    return {"produce": produce, "consume": consume, "watch": watch, "rows": rows}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
