"""Queries the warehouse example's archive with DuckDB.

    python query.py ENDPOINT BUCKET PREFIX

Run it with the venv's python (~/.cache/dab/venv, made by
scripts/setup-python.sh: boto3 and duckdb). The credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as for dab.

DuckDB reads s3:// paths through its httpfs extension, which it downloads
on first use; this machine is offline, so the script copies the objects
under PREFIX with boto3 into a temporary directory (kept in $QUERY_DIR
when that is set) and reads that directory with
read_parquet('DIR/**/*.parquet', hive_partitioning = true,
union_by_name = true, hive_types = {...}). With httpfs installed, the same queries run on
's3://BUCKET/PREFIX/**/*.parquet' directly."""

import os
import sys
import tempfile

import boto3
import duckdb


def download(endpoint, bucket, prefix, out):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):].lstrip("/")
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, o["Key"], path)
            n += 1
    return n


def table(title, header, rows):
    print(title)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, *rows]:
        print("  " + "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths))))
    print()


def query(dir, objects):
    con = duckdb.connect()
    files = os.path.join(dir, "**", "*.parquet").replace("'", "''")
    con.execute(
        f"CREATE VIEW server_logs AS SELECT * FROM read_parquet('{files}', "
        "hive_partitioning = true, union_by_name = true, "
        # '08' would otherwise be read as a string, '12' as a number.
        "hive_types = {'year': INTEGER, 'month': INTEGER, 'day': INTEGER, 'hour': INTEGER})"
    )
    print(f"{objects} objects downloaded\n")

    # The hour comes from the partition directories (year=/month=/day=/hour=).
    rows = con.execute(
        """
        SELECT printf('%04d-%02d-%02d %02d:00', year, month, day, hour) AS hour,
               count(*) AS events,
               count(*) FILTER (WHERE level = 'DEBUG') AS debug,
               count(*) FILTER (WHERE level = 'INFO') AS info,
               count(*) FILTER (WHERE level = 'WARN') AS warn,
               count(*) FILTER (WHERE level = 'ERROR') AS error
        FROM server_logs
        GROUP BY ALL ORDER BY hour
        """
    ).fetchall()
    table("events per hour and level", ["hour (UTC)", "events", "DEBUG", "INFO", "WARN", "ERROR"], rows)

    # median() and quantile_cont() skip NULLs: requests without a latency.
    rows = con.execute(
        """
        SELECT service, count(*) AS events, count(latency_ms) AS timed,
               round(median(latency_ms), 1) AS p50,
               round(quantile_cont(latency_ms, 0.99), 1) AS p99
        FROM server_logs GROUP BY service ORDER BY service
        """
    ).fetchall()
    table("latency per service (ms)", ["service", "events", "timed", "p50", "p99"], rows)

    # A nested struct column and a map column.
    rows = con.execute(
        """
        SELECT coalesce(user.team, '(none)') AS team,
               count(*) FILTER (WHERE user.id IS NULL) AS anonymous,
               count(*) FILTER (WHERE status >= 500) AS errors_5xx,
               count(*) FILTER (WHERE labels['region'] = 'eu-west-1') AS eu_west_1
        FROM server_logs GROUP BY ALL ORDER BY team
        """
    ).fetchall()
    table("by team", ["team", "anonymous", "5xx", "eu-west-1"], rows)

    null_status, total = con.execute(
        "SELECT count(*) FILTER (WHERE status IS NULL), count(*) FROM server_logs"
    ).fetchone()
    print(f"NULL status: {null_status} of {total} rows")
    print(f"total rows: {total}")


def main(argv):
    endpoint, bucket, prefix = argv[1:4]
    keep = os.environ.get("QUERY_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        query(keep, download(endpoint, bucket, prefix, keep))
        return
    with tempfile.TemporaryDirectory(prefix="dab-warehouse-") as dir:
        query(dir, download(endpoint, bucket, prefix, dir))


if __name__ == "__main__":
    main(sys.argv)
