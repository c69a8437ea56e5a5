#!/usr/bin/env python3
"""An outside Kafka client for DAB's Kafka tests, examples and benchmarks.

Built on confluent-kafka (librdkafka), installed into ~/.cache/dab/venv by
scripts/setup-python.sh; run against a tansu broker (scripts/kafka-broker.sh,
tests/kafka_support/broker.rs). Every wait is bounded. On success each
command prints exactly one JSON line on stdout (its summary); librdkafka's
own log and this script's complaints go to stderr.

Exit codes: 0 the summary is complete; 3 a summary was printed but the run
fell short (produce: delivery errors or undelivered messages; consume: fewer
than --expect events before --timeout-s); 1 a failure before any summary
(broker unreachable, fatal client error), with a message on stderr;
2 bad arguments.

Events (one JSON object per message value, DAB's NDJSON field names, so
that DAB's codec decodes them as they are)::

    {"timestamp": <send time, ns since the epoch>, "host": "h1", "pid": 1,
     "type": "A", "offset": <seq>, "message": "xxxx..."}

produce --brokers B --topic T --count N [--start S] [--types A,B]
        [--payload-bytes P] [--rate R] [--bad-every K] [--key none|host|offset|type]
        [--json-payload]
        [--host H] [--pid P] [--message-timeout-ms MS] [--linger-ms MS]
        [--no-idempotence] [--resend-failed]
    Sends N messages with acks=all and idempotence on (unless
    --no-idempotence), then flushes. --resend-failed sends a message whose
    delivery failed again (a broker that answers errors while it shuts
    down), until each is delivered once or the flush deadline passes; it
    may duplicate, never lose. An idempotent producer's error is
    fatal (exit 1, no summary) when the broker forgets its producer id, as
    a tansu with memory storage does when it restarts.
    Good events get consecutive offsets S, S+1, ... and their types in turn
    (the i-th good event has type TYPES[i % len(TYPES)]). With --bad-every K
    every K-th message (the K-th, 2K-th, ...) is the undecodable value
    `not json {` instead; it uses no offset, so the good events' offsets stay
    consecutive. --rate R paces the sends at R messages/s (0: flat out).
    --key picks the message key (default none: no key, librdkafka spreads
    messages over partitions). Summary:
        {"produced": <messages acked by the broker, bad ones included>,
         "good": <good events sent>, "bad": <bad messages sent>,
         "errors": <delivery failures>, "resent": <messages sent again>,
         "pending": <not delivered at the end>,
         "first_offset": S, "next_offset": S + good,
         "first_error": "<text>" | null, "seconds": <wall time>}

consume --brokers B --topic T [--group G] [--expect N] [--expect-range START:END]
        [--idle-ms MS] [--timeout-s S] [--session-timeout-ms MS] [--dump FILE]
    Joins a consumer group (default: a fresh random name, so it reads the
    topic from the earliest offset) and reads until it has --expect N
    distinct events and then --idle-ms (default 1000) of quiet, or, without
    --expect, until every assigned partition reported its end (librdkafka's
    partition EOF) and --idle-ms of quiet followed; in any case no longer
    than --timeout-s (default 60). The session timeout
    is 6000 ms (a group joins in about 3 s on tansu). --dump FILE writes every
    value received, one per line. Summary:
        {"messages": <values received>, "decoded": <JSON objects among them>,
         "distinct": <distinct (host, pid, type, offset)>,
         "duplicates": decoded - distinct, "undecodable": <values not a JSON object>,
         "by_type": {type: distinct count}, "by_partition": {partition: messages},
         "key_partitions": {key: [partitions it was found in]},
         "missing": [first 20 missing offsets], "missing_count": K,
         "range": [START, END] | null, "reached_expect": bool,
         "timed_out": bool, "assigned_after_s": <seconds to the first assignment>,
         "latency_ms": {"p50": .., "p99": .., "max": ..} | null, "seconds": <wall time>}
    Missing offsets are the values of the `offset` field (of any host, pid and
    type) in the half-open range START..END of --expect-range, or else
    0..N of --expect, that no decoded event carried; without either, none.
    latency_ms is receive time minus the event's `timestamp`, meaningful only
    when producer and consumer share a clock (this machine).

create-topic --brokers B --topic T [--partitions P] [--timeout-s S]
    Creates the topic with the AdminClient (replication factor 1), succeeds
    when it already exists, and waits until metadata shows it. Summary:
        {"topic": T, "created": bool, "partitions": <as metadata shows>}

metadata --brokers B [--timeout-s S]
    Lists topics and their partition counts: {"brokers": [...], "topics": {T: P}}.

committed --brokers B --topic T --group G [--timeout-s S]
    The group's committed offset of each partition of T, without joining
    the group: {"committed": {partition: offset, -1 when none}, "total":
    sum of the commits (0 for none)}. On a topic whose offsets start at 0,
    "total" equals the number of messages once the group committed all of
    them. (tansu 0.6 answers watermark queries with wrong high offsets, so
    this does not ask for them.)
"""

import argparse
import json
import sys
import time
import uuid

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"client.py: confluent-kafka is not installed ({e}); run scripts/setup-python.sh\n"
    )
    sys.exit(1)

MISSING_SHOWN = 20


def die(msg, code=1):
    sys.stderr.write(f"client.py: {msg}\n")
    sys.exit(code)


_noted = set()


def note(msg):
    """Writes `msg` to stderr the first time it is seen (librdkafka repeats
    its transient errors on every reconnect)."""
    if msg not in _noted and len(_noted) < 100:
        _noted.add(msg)
        sys.stderr.write(f"client.py: {msg}\n")


def base_conf(brokers, what, verbose=False):
    """Settings every client shares: librdkafka's own log only at level
    critical (unless --verbose), errors through `note`, a fatal one ends
    the run."""

    def on_error(err):
        if err.fatal():
            die(f"fatal {what} error: {err}")
        note(f"{what}: {err}")

    return {
        "bootstrap.servers": brokers,
        "log_level": 7 if verbose else 2,
        "socket.connection.setup.timeout.ms": 10000,
        "error_cb": on_error,
    }


def summary(obj, short=False, why=None):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()
    if short:
        sys.stderr.write(f"client.py: fell short: {why}\n")
        sys.exit(3)
    sys.exit(0)


def check_reachable(conf, timeout_s):
    """Raises SystemExit(1) when no broker answers a metadata request in time."""
    admin = AdminClient(dict(conf, error_cb=lambda _err: None))
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        die(f"no metadata from {conf['bootstrap.servers']} within {timeout_s} s: {e}")


# ---------------------------------------------------------------- produce


def cmd_produce(a):
    types = [t for t in a.types.split(",") if t]
    if not types:
        die("--types is empty", 2)
    if a.count < 0 or a.bad_every < 0 or a.rate < 0 or a.payload_bytes < 0:
        die("--count, --bad-every, --rate and --payload-bytes must not be negative", 2)
    state = {"ok": 0, "errors": 0, "first_error": None, "resent": 0}
    # Messages whose delivery failed, to send again (--resend-failed).
    failed = []

    def on_delivery(err, msg):
        if err is None:
            state["ok"] += 1
        else:
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = str(err)
            if a.resend_failed:
                failed.append((msg.value(), msg.key()))

    # Transient errors (broker down, paused) are retried by librdkafka
    # until message.timeout.ms; a fatal one ends the run.
    conf = base_conf(a.brokers, "producer", a.verbose)
    check_reachable(conf, a.connect_timeout_s)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": not a.no_idempotence,
            "linger.ms": a.linger_ms,
            "message.timeout.ms": a.message_timeout_ms,
        }
    )
    producer = Producer(conf)

    def send(value, key):
        while True:
            try:
                producer.produce(a.topic, value=value, key=key, on_delivery=on_delivery)
                return
            except BufferError:
                # The local queue is full: serve delivery reports and retry.
                producer.poll(0.05)

    last_resend = [0.0]

    def resend():
        # At most every 100 ms: a broker that fails everything at once
        # would otherwise be asked again in a tight loop.
        if not failed or time.monotonic() - last_resend[0] < 0.1:
            return
        last_resend[0] = time.monotonic()
        while failed:
            value, key = failed.pop(0)
            state["resent"] += 1
            send(value, key)

    payload = "x" * a.payload_bytes
    good = bad = 0
    t0 = time.monotonic()
    if a.from_file:
        # Values as written, one JSON event per line, in order.
        with open(a.from_file, "rb") as f:
            for line in f:
                line = line.rstrip(b"\n")
                if not line:
                    continue
                key = None
                if a.key.startswith("fields."):
                    msg = json.loads(line).get("message", "{}")
                    payload = json.loads(msg) if isinstance(msg, str) else msg
                    key = str(payload.get(a.key[len("fields."):], "")).encode()
                elif a.key != "none":
                    key = str(json.loads(line).get(a.key, "")).encode()
                send(line, key)
                good += 1
                producer.poll(0)
                resend()
        a.count = 0
    for i in range(a.count):
        if a.rate > 0:
            ahead = t0 + i / a.rate - time.monotonic()
            if ahead > 0:
                producer.poll(ahead)
                # poll may return early; make sure the pace holds.
                rest = t0 + i / a.rate - time.monotonic()
                if rest > 0:
                    time.sleep(rest)
        if a.bad_every and (i + 1) % a.bad_every == 0:
            value = b"not json {"
            key_src = {"host": a.host, "offset": f"bad-{i}", "type": "bad"}
            bad += 1
        else:
            off = a.start + good
            ty = types[good % len(types)]
            value = json.dumps(
                {
                    "timestamp": time.time_ns(),
                    "host": a.host,
                    "pid": a.pid,
                    "type": ty,
                    "offset": off,
                    "message": json.dumps({"n": off, "note": payload}) if a.json_payload else payload,
                },
                separators=(",", ":"),
            ).encode()
            key_src = {"host": a.host, "offset": str(off), "type": ty}
            good += 1
        key = None if a.key == "none" else key_src[a.key].encode()
        send(value, key)
        producer.poll(0)
        resend()
    pending = producer.flush(a.message_timeout_ms / 1000 + 10)
    # With --resend-failed, until every message is delivered or the
    # deadline passes.
    deadline = time.monotonic() + a.message_timeout_ms / 1000 + 30
    while a.resend_failed and (failed or pending) and time.monotonic() < deadline:
        if failed:
            time.sleep(0.2)
            resend()
        pending = producer.flush(1)
    pending += len(failed)
    out = {
        "produced": state["ok"],
        "good": good,
        "bad": bad,
        "errors": state["errors"],
        "resent": state["resent"],
        "pending": pending,
        "first_offset": a.start,
        "next_offset": a.start + good,
        "first_error": state["first_error"],
        "seconds": round(time.monotonic() - t0, 3),
    }
    short = (state["errors"] > 0 and not a.resend_failed) or pending > 0
    summary(out, short, f"{state['errors']} delivery errors, {pending} undelivered")


# ---------------------------------------------------------------- consume


def parse_range(text):
    try:
        lo, hi = text.split(":")
        lo, hi = int(lo), int(hi)
    except ValueError:
        die(f"--expect-range wants START:END, got {text!r}", 2)
    if hi < lo:
        die(f"--expect-range {text}: END is below START", 2)
    return lo, hi


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return round(sorted_vals[i], 3)


def cmd_consume(a):
    rng = parse_range(a.expect_range) if a.expect_range else None
    if rng is None and a.expect is not None:
        rng = (0, a.expect)
    group = a.group or f"dab-test-{uuid.uuid4().hex[:12]}"
    state = {"assigned_at": None, "assigned": set(), "at_end": set()}
    t0 = time.monotonic()

    def on_assign(_consumer, partitions):
        state["assigned"] = {p.partition for p in partitions}
        state["at_end"] &= state["assigned"]
        if partitions and state["assigned_at"] is None:
            state["assigned_at"] = time.monotonic()

    def on_revoke(_consumer, _partitions):
        state["assigned"] = set()
        state["at_end"] = set()

    conf = base_conf(a.brokers, "consumer", a.verbose)
    check_reachable(conf, min(a.timeout_s, a.connect_timeout_s))
    conf.update(
        {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.partition.eof": True,
            "session.timeout.ms": a.session_timeout_ms,
            "heartbeat.interval.ms": max(100, a.session_timeout_ms // 6),
        }
    )
    consumer = Consumer(conf)
    consumer.subscribe([a.topic], on_assign=on_assign, on_revoke=on_revoke)
    dump = open(a.dump, "wb") if a.dump else None  # noqa: SIM115
    messages = decoded = undecodable = 0
    seen = set()
    offsets = set()
    by_type = {}
    by_partition = {}
    # The partitions each message key was found in (keyed messages only).
    key_partitions = {}
    latencies = []
    last_msg = None
    reached = False
    timed_out = False
    deadline = t0 + a.timeout_s
    idle_s = a.idle_ms / 1000
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            quiet_since = last_msg or state["assigned_at"]
            if a.expect is None:
                # Caught up: every assigned partition reported its end.
                enough = bool(state["assigned"]) and state["at_end"] >= state["assigned"]
            else:
                enough = len(seen) >= a.expect
            if enough and quiet_since is not None and now - quiet_since >= idle_s:
                break
            msg = consumer.poll(min(0.1, deadline - now))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    state["at_end"].add(msg.partition())
                    continue
                if msg.error().fatal():
                    die(f"fatal consumer error: {msg.error()}")
                note(f"consume: {msg.error()}")
                continue
            recv_ns = time.time_ns()
            last_msg = time.monotonic()
            state["at_end"].discard(msg.partition())
            messages += 1
            part = str(msg.partition())
            by_partition[part] = by_partition.get(part, 0) + 1
            if msg.key() is not None:
                key = msg.key().decode("utf-8", "replace")
                key_partitions.setdefault(key, set()).add(msg.partition())
            value = msg.value() or b""
            if dump:
                dump.write(value.rstrip(b"\n") + b"\n")
            try:
                ev = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                ev = None
            if not isinstance(ev, dict):
                undecodable += 1
                continue
            decoded += 1
            off = ev.get("offset")
            uid = (ev.get("host"), ev.get("pid"), ev.get("type"), off)
            if uid in seen:
                continue
            seen.add(uid)
            if isinstance(off, int):
                offsets.add(off)
            ty = str(ev.get("type"))
            by_type[ty] = by_type.get(ty, 0) + 1
            ts = ev.get("timestamp")
            if isinstance(ts, int) and ts > 0:
                latencies.append((recv_ns - ts) / 1e6)
            if a.expect is not None and len(seen) >= a.expect:
                reached = True
    finally:
        if dump:
            dump.close()
        if a.group:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException:
                pass  # nothing to commit
        consumer.close()
    if a.expect is not None and len(seen) >= a.expect:
        reached = True
    missing = []
    missing_count = 0
    if rng is not None:
        for o in range(rng[0], rng[1]):
            if o not in offsets:
                missing_count += 1
                if len(missing) < MISSING_SHOWN:
                    missing.append(o)
    latencies.sort()
    out = {
        "messages": messages,
        "decoded": decoded,
        "distinct": len(seen),
        "duplicates": decoded - len(seen),
        "undecodable": undecodable,
        "by_type": by_type,
        "by_partition": by_partition,
        "key_partitions": {k: sorted(v) for k, v in key_partitions.items()},
        "missing": missing,
        "missing_count": missing_count,
        "range": list(rng) if rng else None,
        "reached_expect": reached if a.expect is not None else None,
        "timed_out": timed_out,
        "group": group,
        "assigned_after_s": (
            round(state["assigned_at"] - t0, 3) if state["assigned_at"] is not None else None
        ),
        "latency_ms": (
            {
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": round(latencies[-1], 3),
            }
            if latencies
            else None
        ),
        "seconds": round(time.monotonic() - t0, 3),
    }
    short = a.expect is not None and not reached
    if state["assigned_at"] is None:
        sys.stderr.write(f"client.py: no partitions assigned within {a.timeout_s} s\n")
    summary(out, short, f"{len(seen)} of {a.expect} events within {a.timeout_s} s")


# ---------------------------------------------------------------- admin


def topic_partitions(admin, topic, timeout_s):
    md = admin.list_topics(topic=topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


def cmd_create_topic(a):
    if a.partitions < 1:
        die("--partitions must be at least 1", 2)
    deadline = time.monotonic() + a.timeout_s
    conf = base_conf(a.brokers, "admin", a.verbose)
    check_reachable(conf, a.timeout_s)
    admin = AdminClient(conf)
    created = False
    futures = admin.create_topics(
        [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1)],
        request_timeout=a.timeout_s,
    )
    try:
        futures[a.topic].result(timeout=a.timeout_s)
        created = True
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            die(f"create topic {a.topic}: {e}")
    except Exception as e:  # noqa: BLE001 - futures raise timeouts as plain exceptions
        die(f"create topic {a.topic}: {type(e).__name__}: {e}")
    # Wait until metadata shows the topic with its partitions.
    parts = None
    while time.monotonic() < deadline:
        try:
            parts = topic_partitions(admin, a.topic, max(1.0, deadline - time.monotonic()))
        except KafkaException:
            parts = None
        if parts:
            break
        time.sleep(0.1)
    if not parts:
        die(f"topic {a.topic} does not show in metadata within {a.timeout_s} s")
    summary({"topic": a.topic, "created": created, "partitions": parts})


def cmd_metadata(a):
    md = check_reachable(base_conf(a.brokers, "admin", a.verbose), a.timeout_s)
    summary(
        {
            "brokers": sorted(f"{b.host}:{b.port}" for b in md.brokers.values()),
            "topics": {name: len(t.partitions) for name, t in sorted(md.topics.items())},
        }
    )


def cmd_committed(a):
    conf = base_conf(a.brokers, "consumer", a.verbose)
    check_reachable(conf, a.timeout_s)
    admin = AdminClient(conf)
    parts = topic_partitions(admin, a.topic, a.timeout_s)
    if not parts:
        die(f"topic {a.topic} not found")
    c = Consumer(dict(conf, **{"group.id": a.group, "enable.auto.commit": False}))
    tps = [TopicPartition(a.topic, p) for p in range(parts)]
    got = c.committed(tps, timeout=a.timeout_s)
    c.close()
    committed = {str(tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in got}
    summary({"committed": committed, "total": sum(max(o, 0) for o in committed.values())})


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(
        description="confluent-kafka client for DAB's Kafka tests (see the module docstring)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--brokers", required=True, help="host:port[,host:port]")
        sp.add_argument("--verbose", action="store_true", help="librdkafka's full log")
        sp.add_argument(
            "--connect-timeout-s",
            type=float,
            default=15,
            help="how long the first metadata request may take (default 15)",
        )

    sp = sub.add_parser("produce", help="send JSON events")
    common(sp)
    sp.add_argument("--topic", required=True)
    sp.add_argument("--count", type=int, required=True, help="ignored with --from")
    sp.add_argument("--from", dest="from_file", help="send the lines of this file (JSON events) instead")
    sp.add_argument("--start", type=int, default=0, help="first offset (default 0)")
    sp.add_argument("--types", default="A", help="comma-separated, used in turn (default A)")
    sp.add_argument("--payload-bytes", type=int, default=100, help="length of `message`")
    sp.add_argument("--rate", type=float, default=0, help="messages/s, 0 = flat out")
    sp.add_argument("--bad-every", type=int, default=0, help="every K-th value is not JSON")
    sp.add_argument(
        "--key",
        default="none",
        help="none, host, offset, type, or (with --from) fields.NAME: a payload field",
    )
    sp.add_argument("--host", default="h1")
    sp.add_argument("--pid", type=int, default=1)
    sp.add_argument("--message-timeout-ms", type=int, default=30000)
    sp.add_argument("--linger-ms", type=int, default=5)
    sp.add_argument(
        "--json-payload",
        action="store_true",
        help='`message` is the object {"n": <offset>, "note": "xxx..."} as JSON text (typed sinks)',
    )
    sp.add_argument(
        "--no-idempotence",
        action="store_true",
        help="plain acks=all producer (idempotence dies on a restarted memory broker)",
    )
    sp.add_argument(
        "--resend-failed",
        action="store_true",
        help="send a message again when its delivery failed, until delivered",
    )
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("consume", help="read JSON events and summarise them")
    common(sp)
    sp.add_argument("--topic", required=True)
    sp.add_argument("--group", help="consumer group (default: a fresh random one)")
    sp.add_argument("--expect", type=int, help="distinct events to wait for")
    sp.add_argument("--expect-range", help="START:END, half-open, for the missing offsets")
    sp.add_argument("--idle-ms", type=int, default=1000)
    sp.add_argument("--timeout-s", type=float, default=60)
    sp.add_argument("--session-timeout-ms", type=int, default=6000)
    sp.add_argument("--dump", help="write every value received to this file")
    sp.set_defaults(func=cmd_consume)

    sp = sub.add_parser("create-topic", help="create a topic (ok when it exists)")
    sp.add_argument("--brokers", required=True)
    sp.add_argument("--verbose", action="store_true")
    sp.add_argument("--topic", required=True)
    sp.add_argument("--partitions", type=int, default=3)
    sp.add_argument("--timeout-s", type=float, default=15)
    sp.set_defaults(func=cmd_create_topic)

    sp = sub.add_parser("metadata", help="list topics and partition counts")
    sp.add_argument("--brokers", required=True)
    sp.add_argument("--verbose", action="store_true")
    sp.add_argument("--timeout-s", type=float, default=10)
    sp.set_defaults(func=cmd_metadata)

    sp = sub.add_parser("committed", help="a group's committed offsets")
    sp.add_argument("--brokers", required=True)
    sp.add_argument("--verbose", action="store_true")
    sp.add_argument("--topic", required=True)
    sp.add_argument("--group", required=True)
    sp.add_argument("--timeout-s", type=float, default=10)
    sp.set_defaults(func=cmd_committed)

    a = p.parse_args()
    try:
        a.func(a)
    except KafkaException as e:
        die(f"{a.cmd}: {e}")
    except KeyboardInterrupt:
        die(f"{a.cmd}: interrupted")


if __name__ == "__main__":
    main()
