"""Prints the api-stats example's results and checks them against
feed.py's (standard library only).

    python3 report.py EXPECTED_JSON OUT_DIR [--quiet]

Reads OUT_DIR/api_stats.ndjson and OUT_DIR/variant_stats.ndjson (result
events; a result written twice after a restart has the same UID and is
counted once), leaves out the end markers' windows, and compares calls,
errors and distinct users per (minute, team, method), and calls and errors
per (minute, experiment, variant). Exit 0 when every result is there and
equal; 1 otherwise (with --quiet, silently: run.sh polls with it)."""

import json
import os
import sys

START_NS = 1_796_115_600 * 1_000_000_000
MINUTE_NS = 60_000_000_000


def results(path):
    seen = {}
    if not os.path.exists(path):
        return []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            ev = json.loads(line)
            uid = (ev["host"], ev.get("pid", 0), ev["type"], ev["offset"])
            p = json.loads(ev["message"])
            if uid in seen and seen[uid] != p:
                raise SystemExit("report: result %r emitted twice with different values" % (uid,))
            seen[uid] = p
    return [p for p in seen.values() if p.get("final")]


def main(argv):
    expected = json.load(open(argv[1]))
    out, quiet = argv[2], "--quiet" in argv
    stats = [
        {"minute": (p["window_start"] - START_NS) // MINUTE_NS, "team": p["name"], "method": p["method"],
         "calls": p["calls"], "errors": p["errors"], "users": p["users"], "p99_ms": p["p99_ms"]}
        for p in results(os.path.join(out, "api_stats.ndjson"))
        if p["method"] != "__end__"
    ]
    variants = [
        {"minute": (p["window_start"] - START_NS) // MINUTE_NS, "experiment": p["experiment"],
         "variant": p["variant"], "calls": p["calls"], "errors": p["errors"], "mean_ms": p["mean_ms"]}
        for p in results(os.path.join(out, "variant_stats.ndjson"))
        if p["experiment"] != "__end__"
    ]
    key = lambda r: (r["minute"], str(r.get("team", r.get("variant"))), r.get("method", ""))
    stats.sort(key=key)
    variants.sort(key=key)
    strip = lambda rows, drop: [{k: v for k, v in r.items() if k not in drop} for r in rows]
    ok_stats = strip(stats, {"p99_ms"}) == expected["api_stats"]
    ok_variants = strip(variants, {"mean_ms"}) == expected["variant_stats"]
    if quiet:
        return 0 if ok_stats and ok_variants else 1
    print("API statistics per minute, team and method (%d results):" % len(stats))
    print("  min  team        method              calls  errors  users  p99_ms")
    for r in stats:
        print("  %3d  %-10s  %-18s  %5d  %6d  %5d  %6s" % (
            r["minute"], r["team"] or "(none)", r["method"], r["calls"], r["errors"], r["users"],
            "-" if r["p99_ms"] is None else round(r["p99_ms"])))
    print("Experiment new-composer per minute and variant (%d results):" % len(variants))
    print("  min  variant  calls  errors  mean_ms")
    for r in variants:
        print("  %3d  %-7s  %5d  %6d  %7.1f" % (r["minute"], r["variant"], r["calls"], r["errors"], r["mean_ms"]))
    for name, ok, want, have in (("API statistics", ok_stats, expected["api_stats"], strip(stats, {"p99_ms"})),
                                 ("variant statistics", ok_variants, expected["variant_stats"],
                                  strip(variants, {"mean_ms"}))):
        if ok:
            print("%s: all %d results equal the reference" % (name, len(want)))
        else:
            missing = [r for r in want if r not in have][:5]
            extra = [r for r in have if r not in want][:5]
            print("%s DIFFER from the reference: %d expected, %d emitted; missing %s; unexpected %s"
                  % (name, len(want), len(have), missing, extra))
    return 0 if ok_stats and ok_variants else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
