"""Reads a parquet sink's directory with readers nobody here wrote
(tests/parquet.rs): pyarrow, file by file, and DuckDB over the hive
partitions. Prints one JSON object: {"rows": [...], "duckdb": [...],
"metadata": [...], "field_ids": [...]}. Fails (exit 1) if a reader is
missing: the test must not pass without them."""

import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

root = sys.argv[1]

rows, metadata, field_ids = [], [], []
for dirpath, _dirs, names in sorted(os.walk(root)):
    for name in sorted(names):
        if not name.endswith(".parquet"):
            continue
        path = os.path.join(dirpath, name)
        f = pq.ParquetFile(path)
        kv = f.metadata.metadata or {}
        metadata.append({k.decode(): v.decode() for k, v in kv.items() if k.startswith(b"dab.")})
        field_ids.append([f.schema.column(i).path for i in range(0)] +
                         [[fld.name, fld.metadata.get(b"PARQUET:field_id", b"").decode()]
                          for fld in f.schema_arrow])
        table = f.read()
        for i, fld in enumerate(table.schema):
            if pa.types.is_timestamp(fld.type):
                table = table.set_column(i, fld.name, table.column(i).cast(pa.int64()))
        rel = os.path.relpath(dirpath, root)
        for row in table.to_pylist():
            row["dir"] = rel
            rows.append(row)


def plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


glob = os.path.join(root, "**", "*.parquet")
con = duckdb.connect()
by_hour = con.execute(
    """SELECT year, month, day, hour, count(*), count(visitor_id), count(tags_seen),
              count(user_agent), count(client.version), count(body),
              count(*) FILTER (WHERE visitor_id = ''), sum(retries)
       FROM read_parquet(?, hive_partitioning = true)
       GROUP BY ALL ORDER BY ALL""",
    [glob],
).fetchall()
print(json.dumps({
    "rows": plain(rows),
    "duckdb": [[int(x) for x in r] for r in by_hour],
    "metadata": metadata,
    "field_ids": field_ids,
}))
