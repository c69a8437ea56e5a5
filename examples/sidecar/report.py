"""Checks the sidecar example's run: reads every per-type topic and the dead
letter topic back from Kafka and compares them with what the clients had
accepted. Run it with the venv's python (confluent-kafka).

    python report.py --work DIR --brokers HOST:PORT --down-ns NS --up-ns NS \
        [--max-gap-s 5]

DIR is run.sh's work directory: feed.py's accepted.ndjson and
answers.ndjson, and the metrics dab exported when the broker went down
(metrics-down.txt), when it came back (metrics-up.txt) and at the end
(metrics-end.txt). The outage is DOWN-NS to UP-NS (ns since the epoch).

Prints, per input, the answers before, during and after the outage, the
slowest answer and the longest wait between two answers during it; then
each topic's events, and the verdict. Every accepted event must be in
exactly one topic: `events.<type>` for the routed types (Login, Message,
ApiCall, Signup), `sidecar.dead-letter` for the others, which must carry the tag
`dead_letter` or `dab.error`. An event more than once in its topic is a
duplicate (delivery is at least once): counted, not a failure. Exits 1 on
a missing event, one in a wrong topic or in two topics, an input that was
not answered during the outage or waited longer than MAX-GAP-S for an
answer, or TCP and unix events dab did not acknowledge."""

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

ROUTED = ["Login", "Message", "ApiCall", "Signup"]
DEAD_LETTER = "sidecar.dead-letter"
INPUTS = ["grpc", "http", "tcp", "unix"]
# The source names in dab.yaml.
SOURCES = {"grpc": "Grpc", "http": "Http", "tcp": "Tcp", "unix": "Unix"}


def want_topic(ty):
    return f"events.{ty}" if ty in ROUTED else DEAD_LETTER


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def metric(path, name):
    """The value of the sample `name` (with its labels) in a metrics file."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == name:
                    return float(parts[1])
    except OSError:
        pass
    return 0.0


def read_topics(brokers, timeout_s=60, idle_s=1.0):
    """Every message of the `events.*` topics and the dead letter topic,
    from the first offset of each partition to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"sidecar-report-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 2,
        }
    )
    try:
        meta = consumer.list_topics(timeout=10)
    except KafkaException as e:
        sys.exit(f"report: cannot list the topics on {brokers}: {e}\nverdict: FAILED")
    names = sorted(t for t in meta.topics if t.startswith("events.") or t == DEAD_LETTER)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in names for p in meta.topics[t].partitions]
    consumer.assign(parts)
    pending = {(tp.topic, tp.partition) for tp in parts}
    messages = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            if not pending and time.monotonic() - quiet_since >= idle_s:
                break
            continue
        quiet_since = time.monotonic()
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                pending.discard((msg.topic(), msg.partition()))
                continue
            sys.exit(f"report: reading {msg.topic()}: {msg.error()}")
        messages[msg.topic()].append(msg.value())
    consumer.close()
    if pending:
        sys.exit(f"report: partitions not read to their end within {timeout_s} s: {sorted(pending)}")
    return names, messages


def answers_report(work, down_ns, up_ns, max_gap_s):
    answers = read_lines(os.path.join(work, "answers.ndjson"))
    ok = True
    print(f"answers per input (outage: {(up_ns - down_ns) / 1e9:.1f} s, broker killed -9)")
    print("  input  before  during  after  slowest during (ms)  longest wait during (s)  refused")
    feed = {}
    try:
        with open(os.path.join(work, "feed.json")) as f:
            feed = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        pass
    for name in INPUTS:
        mine = sorted((a for a in answers if a["input"] == name), key=lambda a: a["answered_ns"])
        before = [a for a in mine if a["answered_ns"] < down_ns]
        during = [a for a in mine if down_ns <= a["answered_ns"] < up_ns]
        after = [a for a in mine if a["answered_ns"] >= up_ns]
        slowest = max(((a["answered_ns"] - a["sent_ns"]) / 1e6 for a in during), default=0.0)
        # The longest time the input went without an answer in the outage,
        # its edges included.
        times = [down_ns] + [a["answered_ns"] for a in during] + [up_ns]
        gap = max(b - a for a, b in zip(times, times[1:])) / 1e9
        refused = feed.get("refused", {}).get(name, 0)
        print(
            f"  {name:<5}  {len(before):>6}  {len(during):>6}  {len(after):>5}"
            f"  {slowest:>19.1f}  {gap:>23.2f}  {refused:>7}"
        )
        if not during:
            print(f"NOT ANSWERED: {name} had no answer while the broker was down")
            ok = False
        elif gap > max_gap_s:
            print(f"STALLED: {name} waited {gap:.1f} s for an answer during the outage (at most {max_gap_s} s)")
            ok = False
    # tcp and unix have no answer channel: dab's own count of what it
    # acknowledged (written to the spool) shows they were served too.
    for name in ["tcp", "unix"]:
        src = SOURCES[name]
        key = f'dab_source_acked_events_total{{source="{src}",outcome="delivered"}}'
        n = metric(os.path.join(work, "metrics-up.txt"), key) - metric(os.path.join(work, "metrics-down.txt"), key)
        print(f"  {name}: dab acknowledged {n:.0f} events during the outage")
    up = os.path.join(work, "metrics-up.txt")
    held = metric(up, 'dab_diskq_appended_records_total{queue="Spool"}') - metric(
        up, 'dab_diskq_reader_acked_records_total{queue="Spool",reader="ship"}'
    )
    age = metric(up, 'dab_diskq_oldest_unacked_age_seconds{queue="Spool"}')
    print(f"  in the spool when the broker came back: {held:.0f} events not yet in Kafka, the oldest {age:.1f} s old")
    print()
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--down-ns", type=int, required=True)
    ap.add_argument("--up-ns", type=int, required=True)
    ap.add_argument("--max-gap-s", type=float, default=5.0)
    args = ap.parse_args()

    ok = answers_report(args.work, args.down_ns, args.up_ns, args.max_gap_s)

    accepted = {}
    by_input = Counter()
    for e in read_lines(os.path.join(args.work, "accepted.ndjson")):
        accepted[(e["host"], e["type"], e["offset"])] = want_topic(e["type"])
        by_input[e["host"].removeprefix("app-")] += 1

    for name in ["tcp", "unix"]:
        src = SOURCES[name]
        end = os.path.join(args.work, "metrics-end.txt")
        delivered = metric(end, f'dab_source_acked_events_total{{source="{src}",outcome="delivered"}}')
        failed = metric(end, f'dab_source_acked_events_total{{source="{src}",outcome="failed"}}')
        if delivered != by_input[name] or failed:
            print(f"NOT ACKNOWLEDGED: {name}: {by_input[name]} events written, dab acknowledged {delivered:.0f}, failed {failed:.0f}")
            ok = False

    names, messages = read_topics(args.brokers)
    found = defaultdict(Counter)  # uid -> topic -> copies
    dead_reasons = Counter()
    undecodable = 0
    print(f"events accepted: {len(accepted)} (" + ", ".join(f"{n} {by_input[n]}" for n in INPUTS) + ")")
    print("  topic                 messages  distinct  duplicates")
    for topic in names:
        uids = Counter()
        for value in messages.get(topic, []):
            try:
                e = json.loads(value)
                uid = (e["host"], e["type"], e["offset"])
            except (ValueError, TypeError, KeyError):
                undecodable += 1
                continue
            uids[uid] += 1
            found[uid][topic] += 1
            if topic == DEAD_LETTER:
                tags = e.get("tags") or {}
                if "dab.error" in tags:
                    dead_reasons["refused: " + tags["dab.error"]] += 1
                elif "dead_letter" in tags:
                    dead_reasons[tags["dead_letter"]] += 1
                else:
                    dead_reasons["(no reason tag)"] += 1
        n = sum(uids.values())
        print(f"  {topic:<20}  {n:>8}  {len(uids):>8}  {n - len(uids):>10}")
    for reason, n in sorted(dead_reasons.items()):
        print(f"  dead letter reason {reason!r}: {n}")

    missing = [u for u in accepted if u not in found]
    wrong = [u for u, t in accepted.items() if u in found and t not in found[u]]
    doubled = [u for u in found if len(found[u]) > 1]
    unexpected = [u for u in found if u not in accepted]
    duplicates = sum(sum(c.values()) - len(c) for c in found.values())
    untagged = dead_reasons.get("(no reason tag)", 0)
    print(
        f"missing: {len(missing)}; in a wrong topic: {len(wrong)}; in two topics: {len(doubled)}; "
        f"duplicates: {duplicates}; not accepted but found: {len(unexpected)}; undecodable: {undecodable}"
    )
    for what, uids in [("missing", missing), ("in a wrong topic", wrong), ("in two topics", doubled)]:
        for u in sorted(uids)[:10]:
            print(f"  {what}: host={u[0]} type={u[1]} offset={u[2]} (in {dict(found.get(u, {}))})")
    if missing or wrong or doubled or untagged or undecodable:
        ok = False
    if ok:
        print(f"verdict: all {len(accepted)} accepted events delivered, each in its own topic; every input answered through the outage")
    else:
        print("verdict: FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
