"""Sends the api-stats example's events to dab's HTTP source and writes
what the results must be (standard library only).

    python3 feed.py PORT EXPECTED_JSON [CALLS]

CALLS ApiCall events (default 3000) over 5 minutes of event time from
2026-12-01T09:00:00Z, one every 300 s / CALLS, from host `api-1`: a team id
(1 to 4, or 9: a team the table lacks), a method, a user (1 to 200),
`latency_ms` and `ok` (false for 1 in 20). Users 1 to 60 are in the
experiment `new-composer`: each gets one Exposure event (variant `a` or
`b`) at the start, from host `exp-1`. A seeded generator makes every run
send the same events. Last come the end markers, an hour later: a call of
user `__end__` and its exposure, which move both windows' watermarks past
every window (and close the join's bound).

All batches are POSTed at once, each from its own thread, and each is sent
again on 429 or 503: the join acknowledges an event only when its bound has
passed, which needs the later batches, so a client that waited for each
answer before sending the next would wait for the join's `idle`.

EXPECTED_JSON gets, per (minute, team name, method) and per (minute,
experiment, variant), the counts the pipelines must emit, computed here in
plain Python."""

import collections
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request

START_NS = 1_796_115_600 * 1_000_000_000  # 2026-12-01T09:00:00Z
MINUTE_NS = 60_000_000_000
SPAN_NS = 5 * MINUTE_NS
TEAMS = {1: "messaging", 2: "search", 3: "platform", 4: "identity"}
METHODS = ["chat.postMessage", "users.info", "search.messages"]
EXPOSED = 60
BATCH = 100


def call(i, n, rng):
    ts = START_NS + i * SPAN_NS // n
    team = rng.choice([1, 1, 2, 3, 4, 9])
    payload = {
        "team_id": team,
        "method": rng.choice(METHODS),
        "user_id": "u%d" % rng.randint(1, 200),
        "latency_ms": rng.randint(5, 900),
        "ok": rng.randrange(20) != 0,
    }
    return {"type": "ApiCall", "timestamp": ts, "host": "api-1", "pid": 1, "offset": i,
            "message": json.dumps(payload, separators=(",", ":"))}


def exposure(u, rng, ts=START_NS):
    variant = "__end__" if u == "__end__" else rng.choice(["a", "b"])
    experiment = "__end__" if u == "__end__" else "new-composer"
    payload = {"user_id": u, "experiment": experiment, "variant": variant}
    return {"type": "Exposure", "timestamp": ts, "host": "exp-1", "pid": 1,
            "offset": 1_000_000 if u == "__end__" else int(u[1:]),
            "message": json.dumps(payload, separators=(",", ":"))}


def post(port, batch, errors):
    body = json.dumps(batch).encode()
    url = "http://127.0.0.1:%d/v1/events" % port
    for _ in range(240):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                errors.append("POST answered %d: %s" % (e.code, e.read()[:200]))
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    errors.append("a batch was not accepted after 240 tries")


def main(argv):
    port, expected_path = int(argv[1]), argv[2]
    n = int(argv[3]) if len(argv) > 3 else 3000
    rng = random.Random(20261201)
    exposures = [exposure("u%d" % u, rng) for u in range(1, EXPOSED + 1)]
    variant_of = {json.loads(e["message"])["user_id"]: json.loads(e["message"])["variant"] for e in exposures}
    calls = [call(i, n, rng) for i in range(n)]
    end_ts = START_NS + 60 * MINUTE_NS
    end_call = {"type": "ApiCall", "timestamp": end_ts, "host": "api-1", "pid": 1, "offset": n,
                "message": json.dumps({"team_id": 0, "method": "__end__", "user_id": "__end__",
                                       "latency_ms": 0, "ok": True})}
    end_exposure = exposure("__end__", rng, end_ts)

    stats = collections.defaultdict(lambda: {"calls": 0, "errors": 0, "users": set()})
    variants = collections.defaultdict(lambda: {"calls": 0, "errors": 0})
    for c in calls:
        p = json.loads(c["message"])
        minute = (c["timestamp"] - START_NS) // MINUTE_NS
        s = stats[(minute, TEAMS.get(p["team_id"]), p["method"])]
        s["calls"] += 1
        s["errors"] += 0 if p["ok"] else 1
        s["users"].add(p["user_id"])
        v = variant_of.get(p["user_id"])
        if v is not None:
            variants[(minute, "new-composer", v)]["calls"] += 1
            variants[(minute, "new-composer", v)]["errors"] += 0 if p["ok"] else 1
    expected = {
        "api_stats": sorted(
            [{"minute": m, "team": t, "method": meth, "calls": s["calls"], "errors": s["errors"],
              "users": len(s["users"])} for (m, t, meth), s in stats.items()],
            key=lambda r: (r["minute"], str(r["team"]), r["method"])),
        "variant_stats": sorted(
            [{"minute": m, "experiment": x, "variant": v, **s} for (m, x, v), s in variants.items()],
            key=lambda r: (r["minute"], r["variant"])),
    }
    with open(expected_path, "w") as f:
        json.dump(expected, f, indent=1)

    # Exposures first, in their own batch; then the calls; the end markers last.
    batches = [exposures] + [calls[i:i + BATCH] for i in range(0, n, BATCH)]
    errors, threads = [], []
    for b in batches:
        t = threading.Thread(target=post, args=(port, b, errors))
        t.start()
        threads.append(t)
        time.sleep(0.01)
    time.sleep(1)
    for b in ([end_exposure], [end_call]):
        t = threading.Thread(target=post, args=(port, b, errors))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("feed: " + "; ".join(errors))
    print("feed: posted %d calls, %d exposures and the end markers" % (n, len(exposures)), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
