#!/usr/bin/env python3
"""Generates a large, valid blueprint set for benchmarks (docs/PERFORMANCE.md).

    python3 scripts/gen-corpus.py OUT_DIR --files 100 --pipelines-per-file 100

writes OUT_DIR/f000.dab ... and OUT_DIR/dab.yaml. The set is meant to look
like what teams write, so that timings mean something: services with named
pipelines, queues linking pipelines across files (each written by one
pipeline, read by one or more later ones, so there is no cycle), every
operator of SPEC section 1 with its named arguments, fan-out, comments, and
bindings for tcp/http/generator sources, file/tcp/http/blackhole sinks,
memory queues and the declared `types:`. `dab validate OUT_DIR` must report
no error and no warning; scripts/bench-validate.sh checks that.

The output depends only on the arguments and `--seed`.
"""

import argparse
import os
import random
import sys

FIELDS_STR = ["host", "type", "message"]
ENVS = ["prod", "staging", "dev", "canary"]
REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"]
TYPE_WORDS = [
    "Login", "Logout", "Payment", "Refund", "Click", "View", "Search", "Signup",
    "Error", "Audit", "Metric", "Trace", "Order", "Shipment", "Invoice", "Chat",
]
SERVICE_WORDS = [
    "ingest", "billing", "auth", "search", "ledger", "audit", "gateway",
    "notify", "catalog", "orders", "shipping", "metrics", "tracing", "chat",
]


class Corpus:
    """The whole set, planned first so that every queue and binding is used."""

    def __init__(self, rng, files, per_file):
        self.rng = rng
        self.files = files
        self.per_file = per_file
        total = files * per_file
        # Binding pools scale with the set; only used ones are written out.
        self.tcp_sources = [f"TcpIn{i:03d}" for i in range(max(1, min(40, total // 250)))]
        self.http_sources = [f"HttpIn{i:03d}" for i in range(max(1, min(20, total // 500)))]
        self.gen_sources = [f"Gen{i:03d}" for i in range(max(1, min(20, total // 500)))]
        self.file_sinks = [f"FileOut{i:03d}" for i in range(max(1, min(40, total // 250)))]
        self.tcp_sinks = [f"TcpOut{i:03d}" for i in range(max(1, min(10, total // 1000)))]
        self.http_sinks = [f"HttpOut{i:03d}" for i in range(max(1, min(10, total // 1000)))]
        self.hole_sinks = [f"Drop{i:02d}" for i in range(max(1, min(5, total // 2000)))]
        self.types = [
            f"{w}{suffix}" for suffix in ("Event", "V2") for w in TYPE_WORDS
        ] + ["chat.message", "audit.v1"]
        self.used = set()
        self.used_types = set()
        self.sources = self.tcp_sources + self.http_sources + self.gen_sources
        self.sinks = self.file_sinks + self.tcp_sinks + self.http_sinks + self.hole_sinks
        self.unused_sources = list(self.sources)
        self.unused_sinks = list(self.sinks)
        self.pending = []  # queues written, not read yet
        self.readable = []  # queues read at least once; may get more readers
        self.bound_queues = []
        self.queue_count = 0

    def pick(self, pool, unused):
        # Every binding gets used before any is chosen at random.
        name = unused.pop(0) if unused else self.rng.choice(pool)
        self.used.add(name)
        return name

    def source(self):
        r = self.rng.random()
        if r < 0.03:
            return "Generator"
        return self.pick(self.sources, self.unused_sources)

    def sink(self):
        r = self.rng.random()
        if r < 0.04:
            return self.rng.choice(["Blackhole", "Stdout"])
        return self.pick(self.sinks, self.unused_sinks)

    def new_queue(self, file_no):
        self.queue_count += 1
        name = f"Q{file_no:03d}_{self.queue_count:05d}"
        if self.rng.random() < 0.2:
            self.bound_queues.append(name)
        self.pending.append(name)
        return name

    def input(self, remaining):
        """The `In` name for a pipeline; `remaining` counts it and later ones."""
        if self.pending and (len(self.pending) >= remaining or self.rng.random() < 0.6):
            # A random pending queue, usually one written in an earlier file.
            q = self.pending.pop(self.rng.randrange(len(self.pending)))
            self.readable.append(q)
            return q
        if self.readable and self.rng.random() < 0.1:
            return self.rng.choice(self.readable)  # one more reader: every reader gets every event
        return self.source()

    def outputs(self, file_no, remaining):
        n = 2 if self.rng.random() < 0.2 else 1
        out = []
        for _ in range(n):
            # Later pipelines must be able to read every queue written so far.
            room = len(self.pending) + 1 <= remaining - 1
            if room and self.rng.random() < 0.5:
                out.append(self.new_queue(file_no))
            else:
                sink = self.sink()
                while sink in out:  # each output once: a repeat is W002
                    sink = self.sink()
                out.append(sink)
        return out

    def type_name(self):
        t = self.rng.choice(self.types)
        self.used_types.add(t)
        return t if "." not in t else f'"{t}"'


def comparison(rng):
    r = rng.random()
    if r < 0.2:
        return f'tags.env == "{rng.choice(ENVS)}"'
    if r < 0.3:
        return f'tags["aws-region"] != "{rng.choice(REGIONS)}"'
    if r < 0.45:
        hosts = ", ".join(f'"web-{rng.randrange(100)}"' for _ in range(rng.randrange(2, 5)))
        return f"host in [{hosts}]"
    if r < 0.55:
        return f'host != "canary-{rng.randrange(10)}"'
    if r < 0.65:
        return f"pid > {rng.randrange(1, 5000)}"
    if r < 0.75:
        return f"offset >= {rng.randrange(0, 1000000)}"
    if r < 0.85:
        return f"timestamp < {1700000000000 + rng.randrange(10**9)}"
    if r < 0.92:
        return '!(message == "")'
    return f'type in ["{rng.choice(TYPE_WORDS)}Event", "{rng.choice(TYPE_WORDS)}V2"]'


def expression(rng, depth=0):
    n = rng.randrange(1, 4)
    parts = []
    for _ in range(n):
        if depth == 0 and rng.random() < 0.2:
            parts.append(f"({expression(rng, depth + 1)})")
        else:
            parts.append(comparison(rng))
    out = parts[0]
    for p in parts[1:]:
        out += f" {rng.choice(['&&', '&&', '||'])} {p}"
    return out


def stages(rng, corpus):
    """Filters and rate stages between `In` and `Out`."""
    out = []
    if rng.random() < 0.7:
        k = 1 if rng.random() < 0.7 else rng.randrange(2, 4)
        out.append(f"FilterType({', '.join(corpus.type_name() for _ in range(k))})")
    if rng.random() < 0.6:
        out.append(f"Filter({expression(rng)})")
    if rng.random() < 0.3:
        out.append(f"WithSampleRate({rng.choice([2, 5, 10, 100, 1000])})")
    if rng.random() < 0.3:
        out.append(rate_limit(rng, corpus))
    return out


def rate_limit(rng, corpus):
    op = rng.choice(["WithRateLimitPerSecond", "WithRateLimit"])
    rate = rng.choice(["100", "1000", "5000", "0.5", "2.5", "20000"])
    args = [rate]
    r = rng.random()
    if r < 0.3:
        args.append(f"burst = {rng.choice([10, 100, 1000])}")
    if r < 0.15:
        args.append("on_limit = drop")
    elif r < 0.25:
        args.append(f"on_limit = overflow, overflow = {corpus.sink()}")
    elif r < 0.3:
        args.append("on_limit = wait")
    return f"{op}({', '.join(args)})"


def pipeline_text(rng, corpus, file_no, service, name, remaining):
    head = f'{service}.NewPipeline("{name}")' if name else f"{service}.NewPipeline()"
    ops = [f"In({corpus.input(remaining)})"] + stages(rng, corpus)
    outs = corpus.outputs(file_no, remaining)
    out_args = ", ".join(outs)
    if len(outs) > 1 and rng.random() < 0.2:
        out_args += ", when_full = drop_newest"
    ops.append(f"Out({out_args})")
    if rng.random() < 0.1:
        # The short form: modifiers after `Out` apply to each output.
        ops.append(f"WithSampleRate({rng.choice([2, 4, 8])})")
    lines = []
    if rng.random() < 0.3:
        lines.append(f"// {name or service}: {rng.choice(['ingestion', 'fan-out', 'hot path', 'audit trail', 'sampled'])}")
    if rng.random() < 0.5:
        lines.append(head + ".")
        lines.extend(f"    {op}{'.' if i + 1 < len(ops) else ''}" for i, op in enumerate(ops))
    else:
        lines.append(head + "".join(f".{op}" for op in ops))
    if rng.random() < 0.1:
        lines[-1] += ";"
    if rng.random() < 0.05:
        lines.insert(0, "/* owned by the platform team;\n   see the runbook before changing rates */")
    return "\n".join(lines)


def file_text(rng, corpus, file_no, done):
    total = corpus.files * corpus.per_file
    n_services = max(1, corpus.per_file // 20)
    services = [
        f"{rng.choice(SERVICE_WORDS)}_{file_no:03d}_{s}" for s in range(n_services)
    ]
    parts = [f"// Generated by scripts/gen-corpus.py: file {file_no} of {corpus.files}\n"]
    for i in range(corpus.per_file):
        service = services[i % n_services]
        # The first pipeline of a service has no name: its id is the service.
        name = None if i < n_services else f"p{i:03d}"
        remaining = total - done - i
        parts.append(pipeline_text(rng, corpus, file_no, service, name, remaining) + "\n")
    return "\n".join(parts)


def bindings_text(corpus, rng):
    def used(names):
        return [n for n in names if n in corpus.used]

    lines = ["# Generated by scripts/gen-corpus.py; every binding is used.", "sources:"]
    port = 20000
    for n in used(corpus.tcp_sources):
        lines.append(f'  {n}: {{ kind: tcp, listen: "127.0.0.1:{port}", framing: ndjson }}')
        port += 1
    for n in used(corpus.http_sources):
        lines.append(f'  {n}: {{ kind: http, listen: "127.0.0.1:{port}" }}')
        port += 1
    for i, n in enumerate(used(corpus.gen_sources)):
        types = ", ".join(sorted(corpus.used_types)[i % 5 : i % 5 + 2]) or "A"
        lines.append(
            f"  {n}: {{ kind: generator, rate: {1000 * (i + 1)}, count: 100000, "
            f"types: [{types}], payload_bytes: 200, seed: {i + 1} }}"
        )
    lines.append("sinks:")
    for n in used(corpus.file_sinks):
        lines.append(f'  {n}: {{ kind: file, path: "out/{n.lower()}.ndjson" }}')
    for i, n in enumerate(used(corpus.tcp_sinks)):
        lines.append(f'  {n}: {{ kind: tcp, connect: "127.0.0.1:{30000 + i}", framing: ndjson }}')
    for i, n in enumerate(used(corpus.http_sinks)):
        lines.append(f'  {n}: {{ kind: http, endpoint: "http://127.0.0.1:{31000 + i}/ingest" }}')
    for n in used(corpus.hole_sinks):
        lines.append(f"  {n}: {{ kind: blackhole }}")
    if corpus.bound_queues:
        lines.append("queues:")
        for q in corpus.bound_queues:
            lines.append(f"  {q}: {{ kind: memory, capacity: {rng.choice([1000, 10000, 50000])} }}")
    lines.append("types:")
    for t in sorted(corpus.used_types):
        key = t if "." not in t else f'"{t}"'
        lines.append(f"  {key}: {{}}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--pipelines-per-file", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    if args.files < 1 or args.pipelines_per_file < 1:
        sys.exit("--files and --pipelines-per-file must be at least 1")

    rng = random.Random(args.seed)
    corpus = Corpus(rng, args.files, args.pipelines_per_file)
    os.makedirs(args.out_dir, exist_ok=True)
    total_bytes = 0
    for f in range(args.files):
        text = file_text(rng, corpus, f, f * args.pipelines_per_file)
        with open(os.path.join(args.out_dir, f"f{f:03d}.dab"), "w", encoding="utf-8") as fh:
            fh.write(text)
        total_bytes += len(text.encode("utf-8"))
    assert not corpus.pending, f"queues never read: {corpus.pending[:5]}"
    yaml = bindings_text(corpus, rng)
    with open(os.path.join(args.out_dir, "dab.yaml"), "w", encoding="utf-8") as fh:
        fh.write(yaml)
    print(
        f"{args.files * args.pipelines_per_file} pipelines in {args.files} files, "
        f"{corpus.queue_count} queues, {total_bytes / 1e6:.2f} MB of blueprints "
        f"+ {len(yaml) / 1e3:.1f} kB of bindings in {args.out_dir}"
    )


if __name__ == "__main__":
    main()
