"""Generates the warehouse example's server_logs events and POSTs them to
the ingest's HTTP source (standard library only).

    python3 feed.py EVENTS PORT [HOURS]

Event i (0 to EVENTS-1) happens at 2026-12-01T08:00:00Z plus
i * HOURS h / EVENTS (rounded down to the ns), so the events span HOURS
hours (default 6), in order. Every 11th event (i % 11 == 0) is a request
the client gave up on: no `status` key and `latency_ms: null`. The other fields are drawn from a seeded
random generator, so every run sends the same events. Each batch of 500 is
sent again on 429 or 503 (the runtime's back pressure), at most 120 times,
every 0.5 s; a 200 means the events are in Kafka."""

import json
import random
import sys
import time
import urllib.error
import urllib.request

BASE_NS = 1_796_083_200 * 1_000_000_000  # 2026-12-01T00:00:00Z
START_NS = BASE_NS + 8 * 3_600_000_000_000  # 08:00 UTC
HOUR_NS = 3_600_000_000_000

SERVICES = {
    "api": (["/v1/chat.postMessage", "/v1/users.info", "/v1/conversations.list"], 35.0),
    "auth": (["/login", "/oauth/token", "/logout"], 12.0),
    "search": (["/search", "/search/suggest"], 80.0),
    "worker": ([], 250.0),  # background jobs: no request path
}
TEAMS = ["core", "growth", "infra", None]  # None: the user has no team
REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"]


def timestamp_ns(i, n, hours):
    return START_NS + i * hours * HOUR_NS // n


def rfc3339(ns):
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + ".%09dZ" % frac


def event(i, n, hours, rng):
    ts = timestamp_ns(i, n, hours)
    service = rng.choice(sorted(SERVICES))
    paths, typical_ms = SERVICES[service]
    host = "%s-%d" % (service, rng.randint(1, 3))
    level = rng.choices(["DEBUG", "INFO", "WARN", "ERROR"], weights=[3, 80, 12, 5])[0]
    payload = {"ts": rfc3339(ts), "host": host, "service": service, "level": level}
    if i % 11 == 0:
        payload["latency_ms"] = None  # and no "status" key at all
    else:
        if level == "ERROR":
            payload["status"] = rng.choice([500, 502, 503])
        elif level == "WARN":
            payload["status"] = rng.choice([404, 429])
        else:
            payload["status"] = rng.choice([200, 200, 200, 201, 204, 304])
        payload["latency_ms"] = round(rng.lognormvariate(0, 0.6) * typical_ms, 3)
    if paths:
        payload["path"] = rng.choice(paths)
    if i % 5 == 0:
        payload["user"] = {}  # anonymous
    else:
        user = {"id": rng.randint(1, 2000)}
        team = rng.choice(TEAMS)
        if team is not None:
            user["team"] = team
        payload["user"] = user
    if i % 3 != 0:
        payload["labels"] = {"region": rng.choice(REGIONS), "build": "b%d" % rng.randint(100, 105)}
    return {
        "type": "ServerLog",
        "timestamp": ts,
        "host": host,
        "pid": 4000 + rng.randint(0, 9),
        "offset": i,
        "tags": {"env": "prod"},
        "message": json.dumps(payload, separators=(",", ":")),
    }


def post(port, batch):
    body = json.dumps(batch).encode()
    url = "http://127.0.0.1:%d/v1/events" % port
    for _ in range(120):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                raise SystemExit("feed: POST answered %d: %s" % (e.code, e.read()[:200]))
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise SystemExit("feed: a batch was not accepted after 120 tries")


def main(argv):
    n, port = int(argv[1]), int(argv[2])
    hours = int(argv[3]) if len(argv) > 3 else 6
    rng = random.Random(20261201)
    batch = []
    for i in range(n):
        batch.append(event(i, n, hours, rng))
        if len(batch) == 500:
            post(port, batch)
            batch = []
    if batch:
        post(port, batch)
    print("feed: posted %d events over %d hours" % (n, hours), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
