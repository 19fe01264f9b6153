#!/usr/bin/env python3
"""Make known-answer vectors for RDS IAM auth tokens with botocore.

Writes ``rds_tokens.json`` next to this file: a list of objects
``{name, access_key_id, secret_access_key, session_token, signing_time, host,
port, user, region, token}`` where ``token`` is exactly what
``boto3.client("rds").generate_db_auth_token(...)`` returns for those inputs
at ``signing_time``.

botocore reads the clock through ``botocore.auth.get_current_datetime``
(imported from ``botocore.compat``; it returns a naive UTC datetime), so the
signing time is fixed by patching that name.  Re-running gives identical JSON.

Usage: python3 tests/vectors/make_rds_tokens.py [--check]
  --check  do not write; exit 1 if the file differs from what would be written
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import sys
from pathlib import Path
from unittest import mock

OUT = Path(__file__).with_name("rds_tokens.json")
SIGNING_TIME = "2026-03-04T05:06:07Z"

STATIC_KEY = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
TEMP_KEY = ("ASIAIOSFODNN7EXAMPLE", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY")
AURORA_HOST = "mydb.cluster-c1a2b3.us-east-1.rds.amazonaws.com"


def example_session_token(length: int = 800) -> str:
    """A deterministic, realistic-looking STS session token (base64 alphabet, has + / =)."""
    body = base64.b64encode(hashlib.shake_256(b"pg-iam-proxy vectors").digest(length)).decode()
    token = "IQoJb3JpZ2luX2VjE" + body
    return token[: length - 2] + "=="


SESSION_TOKEN = example_session_token()


def case(name, host=AURORA_HOST, port=5432, user="iam_dbuser", region="us-east-1", key=STATIC_KEY, token=None):
    """One vector's inputs."""
    return {
        "name": name,
        "access_key_id": key[0],
        "secret_access_key": key[1],
        "session_token": token,
        "signing_time": SIGNING_TIME,
        "host": host,
        "port": port,
        "user": user,
        "region": region,
    }


CASES = [
    case("static-keys-aurora-default-port"),
    case("session-credentials", key=TEMP_KEY, token=SESSION_TOKEN),
    case("non-default-port", port=6543),
    case(
        "china-region",
        host="db.cluster-abc.cn-north-1.rds.amazonaws.com.cn",
        region="cn-north-1",
    ),
    case("other-region", host="db.cluster-xyz.eu-west-1.rds.amazonaws.com", region="eu-west-1"),
    case("user-at-sign", user="app@corp"),
    case("user-ampersand-equals", user="a&b=c"),
    case("user-with-space", user="with space"),
    case("user-non-ascii", user="dbüser"),
    case("user-plus", user="user+plus"),
    case("user-slash", user="x/y"),
    case("user-unreserved-chars", user="Mixed.Case_~-user"),
    case("localhost", host="localhost", port=5432),
    case("ipv4-host", host="127.0.0.1", port=15432),
    case("session-credentials-non-ascii-user", key=TEMP_KEY, token=SESSION_TOKEN, user="dbüser", port=6543),
    # botocore lower-cases the signed host header but keeps the case in the token.
    case("upper-case-host", host="MyDB.Cluster-C1A2B3.us-east-1.rds.amazonaws.com"),
    # botocore leaves the default https port out of the signed host header.
    case("port-443-host-header-without-port", port=443),
]


def _signing_datetime(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


def make_token(vector: dict) -> str:
    """Run botocore's generate_db_auth_token for one vector at its signing time."""
    import botocore.session

    session = botocore.session.Session()
    client = session.create_client(
        "rds",
        region_name=vector["region"],
        aws_access_key_id=vector["access_key_id"],
        aws_secret_access_key=vector["secret_access_key"],
        aws_session_token=vector["session_token"],
    )
    fixed = _signing_datetime(vector["signing_time"])
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        return client.generate_db_auth_token(
            DBHostname=vector["host"],
            Port=vector["port"],
            DBUsername=vector["user"],
            Region=vector["region"],
        )


def build_vectors() -> list:
    """All vectors with their tokens."""
    return [dict(vector, token=make_token(vector)) for vector in CASES]


def render(vectors: list) -> str:
    """Stable JSON text."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render(build_vectors())
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs", file=sys.stderr)
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
