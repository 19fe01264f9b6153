"""A minimal PostgreSQL wire-protocol client for the stand-in tests.

libpq (and so psycopg) does not expose the SQLSTATE of an error that ends a
connection attempt, nor which authentication request the server sent.  This
client speaks just enough of protocol 3.0 to see both: SSLRequest + TLS,
StartupMessage, the Authentication* request, an optional cleartext password,
and the final ErrorResponse or ReadyForQuery.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Optional

SSL_REQUEST_CODE = 80877103
PROTOCOL_3_0 = 196608

AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10


@dataclass
class LoginResult:
    """What happened during one login attempt."""

    tls: bool = False
    auth_requests: list = field(default_factory=list)  # Authentication codes, in order
    sasl_mechanisms: list = field(default_factory=list)
    error: Optional[dict] = None  # ErrorResponse fields: S, V, C, M, ...
    ready: bool = False  # ReadyForQuery seen: logged in

    @property
    def sqlstate(self) -> Optional[str]:
        return self.error.get("C") if self.error else None

    @property
    def message(self) -> Optional[str]:
        return self.error.get("M") if self.error else None

    @property
    def severity(self) -> Optional[str]:
        return self.error.get("V", self.error.get("S")) if self.error else None


def _recv_exact(sock, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def _read_message(sock):
    kind = _recv_exact(sock, 1)
    (length,) = struct.unpack("!I", _recv_exact(sock, 4))
    return kind, _recv_exact(sock, length - 4)


def _send(sock, kind: bytes, payload: bytes) -> None:
    sock.sendall(kind + struct.pack("!I", len(payload) + 4) + payload)


def _parse_error(payload: bytes) -> dict:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def _start_tls(sock, ca_file: str, server_hostname: str):
    sock.sendall(struct.pack("!II", 8, SSL_REQUEST_CODE))
    answer = _recv_exact(sock, 1)
    if answer != b"S":
        raise ConnectionError(f"server refused TLS: {answer!r}")
    context = ssl.create_default_context(cafile=ca_file)
    return context.wrap_socket(sock, server_hostname=server_hostname)


def _startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode("utf-8") + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def login(
    host: str,
    port: int,
    user: str,
    database: str,
    password: Optional[str] = None,
    *,
    tls: bool = True,
    ca_file: Optional[str] = None,
    server_hostname: str = "localhost",
    timeout: float = 30.0,
) -> LoginResult:
    """Try to log in; stop at the first request we will not answer.

    A cleartext password request is answered with ``password`` when given;
    SASL/MD5 requests are only recorded (the attempt stops there).
    """
    result = LoginResult(tls=tls)
    raw = socket.create_connection((host, port), timeout=timeout)
    sock = raw
    try:
        if tls:
            sock = _start_tls(raw, ca_file, server_hostname)
        sock.sendall(_startup_packet(user, database))
        while True:
            kind, payload = _read_message(sock)
            if kind == b"E":
                result.error = _parse_error(payload)
                return result
            if kind == b"Z":
                result.ready = True
                _send(sock, b"X", b"")
                return result
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            (code,) = struct.unpack("!I", payload[:4])
            result.auth_requests.append(code)
            if code == AUTH_SASL:
                result.sasl_mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
                return result
            if code == AUTH_CLEARTEXT_PASSWORD:
                if password is None:
                    return result
                _send(sock, b"p", password.encode("utf-8") + b"\0")
            elif code != AUTH_OK:
                return result
    finally:
        sock.close()
