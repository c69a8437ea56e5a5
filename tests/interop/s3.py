"""S3 client side of the parquet sink's s3:// tests (tests/s3_support),
with boto3, a client nobody here wrote, against the loopback S3-compatible
server the tests start (moto's). Credentials come from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as for dab.

    s3.py mkbucket ENDPOINT BUCKET
    s3.py download ENDPOINT BUCKET PREFIX DIR

`download` copies every object under PREFIX into DIR (keys relative to
PREFIX become paths) and prints the keys as a JSON list, so the caller can
check that nothing but final names exists."""

import json
import os
import sys

import boto3


def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def main(argv):
    cmd = argv[1]
    if cmd == "mkbucket":
        client(argv[2]).create_bucket(Bucket=argv[3])
        return 0
    if cmd == "download":
        endpoint, bucket, prefix, out = argv[2:6]
        s3 = client(endpoint)
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        for key in keys:
            rel = key[len(prefix):].lstrip("/")
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, key, path)
        print(json.dumps(sorted(keys)))
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
