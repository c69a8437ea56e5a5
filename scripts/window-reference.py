#!/usr/bin/env python3
"""Events for the window exactness tests, and the results DAB must give.

    window-reference.py gen --count N --seed S [--keys K] [--disorder-ms D] > events.jsonl
    window-reference.py expect --size-ms S [--every-ms E] events.jsonl > expected.jsonl

`gen` writes N events, one JSON object per line, in the order they are to be
sent: type `ApiCall`, hosts h0..h7, offsets 0..N-1 per host, timestamps one
millisecond apart from a fixed start plus a random jitter of up to D ms
either way (so events arrive out of order, at most 2 D apart from their
place), and a payload with `team` (K teams, skewed: team t_i has weight
1 / (i + 1)), `latency_ms` (an integer) and `user` (one of 5,000). The last
16 events are the end marker: team `__end__`, one hour after the rest, two
per host, so that every input partition's watermark passes every window.

`expect` computes, with nothing but Python, what a pipeline

    Window(tumbling = S)                    # or sliding = S, every = E
    .Aggregate(by = [fields.team], calls = Count(), total = Sum(fields.latency_ms),
               low = Min(fields.latency_ms), high = Max(fields.latency_ms),
               users = Distinct(fields.user))

must emit when no event is late: one line per (window, team), sorted, with
window_start, window_end (ns), team and the five aggregates. The end
marker's windows are left out.
"""

import argparse
import json
import random
import sys

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MS = 1_000_000
HOSTS = 8
END_TEAM = "__end__"


def gen(a):
    rng = random.Random(a.seed)
    weights = [1.0 / (i + 1) for i in range(a.keys)]
    teams = [f"t{i}" for i in range(a.keys)]
    offsets = [0] * HOSTS
    out = sys.stdout
    n = a.count
    for i in range(n + 2 * HOSTS):
        h = i % HOSTS
        if i < n:
            ts = START_NS + i * MS + rng.randint(-a.disorder_ms, a.disorder_ms) * MS
            team = rng.choices(teams, weights)[0]
            payload = {
                "team": team,
                "latency_ms": rng.randint(1, 5000),
                "user": f"u{rng.randint(0, 4999)}",
            }
        else:
            ts = START_NS + n * MS + 3600 * 1000 * MS + i
            payload = {"team": END_TEAM, "latency_ms": 0, "user": "end"}
        ev = {
            "timestamp": ts,
            "host": f"h{h}",
            "pid": 1,
            "type": "ApiCall",
            "offset": offsets[h],
            "message": json.dumps(payload, separators=(",", ":")),
        }
        offsets[h] += 1
        out.write(json.dumps(ev, separators=(",", ":")) + "\n")


def windows_of(ts, size, every):
    """Starts of the windows [k * every, k * every + size) holding ts."""
    last = (ts // every) * every
    start = last
    out = []
    while start > ts - size:
        out.append(start)
        start -= every
    return out


def expect(a):
    size = a.size_ms * MS
    every = (a.every_ms or a.size_ms) * MS
    groups = {}
    with open(a.events) as f:
        for line in f:
            ev = json.loads(line)
            p = json.loads(ev["message"])
            team = p["team"]
            if team == END_TEAM:
                continue
            lat = p["latency_ms"]
            for start in windows_of(ev["timestamp"], size, every):
                g = groups.get((start, team))
                if g is None:
                    g = groups[(start, team)] = [0, 0, None, None, set()]
                g[0] += 1
                g[1] += lat
                g[2] = lat if g[2] is None else min(g[2], lat)
                g[3] = lat if g[3] is None else max(g[3], lat)
                g[4].add(p["user"])
    for (start, team) in sorted(groups):
        calls, total, low, high, users = groups[(start, team)]
        row = {
            "window_start": start,
            "window_end": start + size,
            "team": team,
            "calls": calls,
            "total": total,
            "low": low,
            "high": high,
            "users": len(users),
        }
        sys.stdout.write(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--count", type=int, required=True)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--keys", type=int, default=50)
    g.add_argument("--disorder-ms", type=int, default=500)
    e = sub.add_parser("expect")
    e.add_argument("--size-ms", type=int, required=True)
    e.add_argument("--every-ms", type=int, default=0)
    e.add_argument("events")
    a = p.parse_args()
    if a.cmd == "gen":
        gen(a)
    else:
        expect(a)


if __name__ == "__main__":
    main()
