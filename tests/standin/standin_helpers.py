"""Helpers shared by the stand-in tests: start/stop, tokens, log, control."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
VECTORS = REPO / "tests" / "vectors"
STANDIN = SUPPORT / "standin.py"
for extra in (SUPPORT, VECTORS):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

STARTUP_TIMEOUT = 120


# ---------------------------------------------------------------------------
# Starting and stopping a stand-in


class RunningStandin:
    """A stand-in process started with a stdin pipe, and its JSON line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.info = self._read_json_line()

    def _read_json_line(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], STARTUP_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("stand-in did not print its JSON line (see stderr)")
        return json.loads(line)

    def close_stdin_and_wait(self, timeout: float = 120) -> int:
        """The normal teardown: EOF on stdin; returns the exit code."""
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def stdout_rest(self) -> bytes:
        """Whatever the stand-in printed after the JSON line (must be nothing)."""
        return self.proc.stdout.read()


def wait_for_pid_exit(pid: int, timeout: float) -> bool:
    """Wait (no polling) until any process, not only a child, has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def postmaster_pid(info: dict) -> int:
    """The stand-in's postmaster pid (first line of postmaster.pid)."""
    return int((Path(info["dir"]) / "data" / "postmaster.pid").read_text().split()[0])


def pam_files_for(info: dict) -> list:
    """/etc/pam.d files that point at this stand-in's verifier socket."""
    needle = f"socket={info['dir']}/verifier.sock"
    found = []
    for path in Path("/etc/pam.d").iterdir():
        try:
            if needle in path.read_text(errors="replace"):
                found.append(path)
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------------
# Decisions log and control socket


class Decisions:
    """Read the verifier's decisions.jsonl from a remembered offset."""

    def __init__(self, path: str):
        self.path = Path(path)

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, mark: int) -> list:
        with open(self.path, "rb") as log:
            log.seek(mark)
            return [json.loads(line) for line in log.read().splitlines() if line.strip()]


def control(info: dict, command: dict) -> dict:
    """Send one command to the control socket and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(info["control_socket"])
        sock.sendall((json.dumps(command) + "\n").encode())
        with sock.makefile("rb") as reply:
            return json.loads(reply.readline())


@contextlib.contextmanager
def skewed_clock(info: dict, seconds: float):
    """Shift the verifier's clock for the duration of the block."""
    assert control(info, {"skew_seconds": seconds}) == {"ok": True}
    try:
        yield
    finally:
        assert control(info, {"skew_seconds": 0}) == {"ok": True}


# ---------------------------------------------------------------------------
# Tokens


def rds_token(access_key_id, secret_access_key, session_token, host, port, user, region, when=None) -> str:
    """A token from botocore's own generate_db_auth_token."""
    client = _rds_client(access_key_id, secret_access_key, session_token, region)
    with _frozen_botocore_clock(when):
        return client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region)


@functools.lru_cache(maxsize=64)
def _rds_client(access_key_id, secret_access_key, session_token, region):
    """botocore clients are slow to create (model loading): reuse them."""
    import botocore.session

    return botocore.session.Session().create_client(
        "rds",
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
    )


def presign(
    access_key_id,
    secret_access_key,
    session_token,
    host,
    port,
    user,
    region,
    *,
    service: str = "rds-db",
    action: str = "connect",
    expires: int = 900,
    unsigned_payload: bool = False,
    when: Optional[datetime.datetime] = None,
) -> str:
    """A token signed by botocore's SigV4QueryAuth with chosen variations.

    With the defaults this equals generate_db_auth_token (a test checks it);
    the keyword arguments make tokens real RDS would refuse.
    """
    from urllib.parse import quote

    from botocore.auth import UNSIGNED_PAYLOAD, SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Signer(SigV4QueryAuth):
        def payload(self, request):
            return UNSIGNED_PAYLOAD if unsigned_payload else super().payload(request)

    query = f"Action={quote(action, safe='-_.~')}&DBUser={quote(user, safe='-_.~')}"
    request = AWSRequest(method="GET", url=f"https://{host}:{port}/?{query}")
    signer = Signer(Credentials(access_key_id, secret_access_key, session_token), service, region, expires=expires)
    with _frozen_botocore_clock(when):
        signer.add_auth(request)
    return request.url[len("https://"):]


@contextlib.contextmanager
def _frozen_botocore_clock(when: Optional[datetime.datetime]):
    """botocore.auth reads the time through get_current_datetime (naive UTC)."""
    if when is None:
        yield
        return
    naive = when.astimezone(datetime.timezone.utc).replace(tzinfo=None) if when.tzinfo else when
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive):
        yield


def parse_rfc3339(text: str) -> datetime.datetime:
    """'2026-03-04T05:06:07Z' -> aware UTC datetime."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)

