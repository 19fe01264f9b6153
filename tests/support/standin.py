#!/usr/bin/env python3
"""Local stand-in for "Aurora PostgreSQL with IAM database authentication".

One command starts a throwaway PostgreSQL 15 server that behaves, for IAM
users, like Aurora: members of ``rds_iam`` must use TLS, the server asks them
for a cleartext password (the RDS IAM auth token), and a refusal reads
``FATAL: PAM authentication failed for user "<user>"`` (SQLSTATE 28000).

How: pg_hba sends ``+rds_iam`` users to PAM; a PAM service file points at a
small PAM module (pam_iam_standin.c, compiled at start) which forwards user
and token over a unix socket to a verifier thread in this process
(sigv4_verify.py, an independent SigV4 implementation).  Every decision is
appended to ``decisions.jsonl`` as ``{"user", "ok", "reason"}``.

Usage::

    python3 tests/support/standin.py [--port N] [--sts] [--region us-east-1]

When ready it prints exactly one JSON line on stdout (see ``describe``),
then runs until stdin reaches EOF (a test that spawns it with a pipe tears it
down even if the test dies), SIGTERM or SIGINT; ``--ignore-stdin`` makes it
wait for a signal only.  Cleanup (stop postgres, remove the PAM service file
and the temp dir) also happens if this process is SIGKILLed: a small reaper
process, started first, waits for this one to go away and cleans up after it.

Control socket (``control_socket``, mode 0600): one JSON command per line,
reply ``{"ok": true}``:

* ``{"skew_seconds": N}`` - shift the verifier's clock by N seconds
* ``{"revoke_signed_before": EPOCH}`` - refuse otherwise valid tokens signed before EPOCH
* ``{"add_key": {"access_key_id": .., "secret_access_key": .., "session_token": ..}}``

``--cluster`` starts an Aurora-like cluster instead (a writer and a streaming replica, each
with its own certificate, token check and ``aurora_*`` functions, and a ``failover`` control
command): see standin_cluster.py.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sigv4_verify  # noqa: E402

log = logging.getLogger("standin")

PAM_SOURCE = HERE / "pam_iam_standin.c"
SERVER_USER = "postgres"
BOOTSTRAP_SUPERUSER = "postgres"
DATABASE = "labdb"
MASTER_USER = "labadmin"
IAM_USER = "iam_dbuser"
IAM_USER2 = "iam_other"
PLAIN_USER = "plain_user"

# Fixed, made-up credentials: the key store of the stand-in's "AWS account".
STATIC_ACCESS_KEY_ID = "AKIASTANDIN000000001"
STATIC_SECRET_ACCESS_KEY = "StandinStaticSecretKey/0123456789abcdefg"
TEMP_ACCESS_KEY_ID = "ASIASTANDIN000000002"
TEMP_SECRET_ACCESS_KEY = "StandinTempSecretKey+0123456789abcdefghi"
TEMP_SESSION_TOKEN = (
    "IQoJb3JpZ2luX2VjE"
    + base64.b64encode(hashlib.shake_256(b"pg-iam-standin session").digest(588)).decode()
    + "=="
)

MAX_FIELD_BYTES = 1024 * 1024
PAM_DIR = Path("/etc/pam.d")


# ---------------------------------------------------------------------------
# Running things as the server user


class ServerUser:
    """The OS user postgres runs as: ``postgres`` when we are root, else us."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            entry = pwd.getpwnam(SERVER_USER)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def argv(self, argv: list) -> list:
        """Prefix argv so it runs as the server user."""
        return ["runuser", "-u", SERVER_USER, "--", *argv] if self.as_root else list(argv)

    def chown(self, path: Path) -> None:
        """Give path to the server user (no-op when not root)."""
        if self.as_root:
            os.chown(path, self.uid, self.gid)


def child_env() -> dict:
    """Our environment without libpq's PG* variables (PGOPTIONS etc. would leak in)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def run(argv: list, *, cwd: Path, input_text: Optional[str] = None, timeout: int = 120) -> str:
    """Run a command quietly; raise with its output if it fails."""
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=child_env(),
        input=input_text,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(map(str, argv))}\n{proc.stdout}")
    return proc.stdout


def write_root_file(path: Path, text: str) -> None:
    """Write a file in a root-owned directory (directly as root, else sudo -n)."""
    if os.geteuid() == 0:
        path.write_text(text)
        os.chmod(path, 0o644)
    else:
        subprocess.run(["sudo", "-n", "tee", str(path)], input=text, text=True, stdout=subprocess.DEVNULL, check=True)


def remove_root_file(path: Path) -> None:
    """Remove a file written by write_root_file, if present."""
    if not path.exists():
        return
    if os.geteuid() == 0:
        path.unlink(missing_ok=True)
    else:
        subprocess.run(["sudo", "-n", "rm", "-f", str(path)], check=False)


# ---------------------------------------------------------------------------
# Certificates


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _make_ca(common_name: str):
    """A self-signed CA certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(ca_cert, ca_key, dns_names=("localhost",), ips=("127.0.0.1",)):
    """Server certificate for dns_names and ips (default DNS:localhost and IP:127.0.0.1, not
    127.0.0.2)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns_names]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_certificates(directory: Path, server_user: ServerUser) -> dict:
    """Write ca.crt, wrong_ca.crt, server.crt and server.key (0600, server user)."""
    ca_cert, ca_key = _make_ca("pg-iam-standin test CA")
    wrong_ca_cert, _ = _make_ca("pg-iam-standin unrelated CA")
    server_cert, server_key = _make_server_cert(ca_cert, ca_key)
    paths = {
        "ca_file": directory / "ca.crt",
        "wrong_ca_file": directory / "wrong_ca.crt",
        "cert_file": directory / "server.crt",
        "key_file": directory / "server.key",
    }
    _write_cert(paths["ca_file"], ca_cert)
    _write_cert(paths["wrong_ca_file"], wrong_ca_cert)
    _write_cert(paths["cert_file"], server_cert)
    _write_key(paths["key_file"], server_key)
    server_user.chown(paths["key_file"])
    return paths


# ---------------------------------------------------------------------------
# Verifier and control servers (unix sockets, threads in this process)


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 65536))
        if not chunk:
            raise ConnectionError("short read")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _recv_field(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _recv_exact(sock, 4))
    if length > MAX_FIELD_BYTES:
        raise ConnectionError("field too long")
    return _recv_exact(sock, length)


class DecisionLog:
    """Append-only JSON-lines log of verifier decisions (never the token)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.touch(mode=0o644)

    def record(self, user: Optional[str], ok: bool, reason: str) -> None:
        line = json.dumps({"user": user, "ok": ok, "reason": reason}, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()


class VerifierHandler(socketserver.BaseRequestHandler):
    """One PAM conversation: read user and token, answer one byte."""

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(30)
        try:
            user_raw = _recv_field(sock)
            token_raw = _recv_field(sock)
        except (OSError, struct.error) as exc:
            log.warning("verifier: bad request from PAM module: %s", exc)
            self.server.decisions.record(None, False, "protocol_error")
            return
        ok, reason, user = self.server.decide(user_raw, token_raw)
        self.server.decisions.record(user, ok, reason)
        try:
            sock.sendall(b"Y" if ok else b"N")
        except OSError as exc:
            log.warning("verifier: could not answer PAM module: %s", exc)


class VerifierServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Unix-socket server the PAM module asks; one thread per login."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, path: Path, verifier: sigv4_verify.Verifier, decisions: DecisionLog):
        self.verifier = verifier
        self.decisions = decisions
        super().__init__(str(path), VerifierHandler)

    def decide(self, user_raw: bytes, token_raw: bytes):
        """Return (ok, reason, user) for raw bytes from the PAM module."""
        try:
            user = user_raw.decode("utf-8")
        except UnicodeDecodeError:
            return False, sigv4_verify.R_MALFORMED, user_raw.decode("utf-8", "replace")
        token = token_raw.decode("utf-8", "replace")
        ok, reason = self.verifier.verify(token, user)
        return ok, reason, user


class ControlHandler(socketserver.StreamRequestHandler):
    """Line-based JSON commands that adjust the verifier."""

    def handle(self) -> None:
        for line in self.rfile:
            if not line.strip():
                continue
            try:
                extra = self.server.apply(json.loads(line))
                reply = {"ok": True, **(extra or {})}
            except Exception as exc:  # report any bad command to the client
                reply = {"ok": False, "error": str(exc)}
            self.wfile.write((json.dumps(reply) + "\n").encode())
            self.wfile.flush()


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Control socket: skew the verifier clock, add keys."""

    daemon_threads = True

    def __init__(self, path: Path, verifiers, commands: Optional[dict] = None):
        self.verifiers = verifiers if isinstance(verifiers, list) else [verifiers]
        self.commands = commands or {}
        super().__init__(str(path), ControlHandler)

    def apply(self, command: dict) -> Optional[dict]:
        """Apply one command (to every verifier); raise ValueError for anything unknown.
        Commands in ``self.commands`` (the cluster's ``failover``) may return reply fields."""
        if not isinstance(command, dict) or not command:
            raise ValueError("expected a JSON object")
        extra = {}
        for name, value in command.items():
            if name in self.commands:
                extra.update(self.commands[name](value) or {})
            elif name == "skew_seconds":
                for v in self.verifiers:
                    v.skew_seconds = float(value)
            elif name == "revoke_signed_before":
                for v in self.verifiers:
                    v.revoked_before = None if value is None else float(value)
            elif name == "add_key":
                for v in self.verifiers:
                    v.keys.add(value["access_key_id"], value["secret_access_key"], value.get("session_token"))
            else:
                raise ValueError(f"unknown command {name!r}")
        return extra


def serve_in_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    """Run server.serve_forever in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# PostgreSQL


LISTEN_ADDRESSES = ("127.0.0.1", "127.0.0.2")


def port_is_free(port: int) -> bool:
    """True when port can be bound on every listen address."""
    for address in LISTEN_ADDRESSES:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A TCP port free on both 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((LISTEN_ADDRESSES[0], 0))
            port = probe.getsockname()[1]
        if port_is_free(port):
            return port
    raise RuntimeError("no free port")


def postgresql_conf(directory: Path, port: int, certs: dict, max_connections: int = 2200) -> str:
    """Settings appended to postgresql.conf (later lines win)."""
    return f"""
# --- pg-iam-standin ---
listen_addresses = '{",".join(LISTEN_ADDRESSES)}'
port = {port}
unix_socket_directories = '{directory}'
max_connections = {max_connections}
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '{certs["cert_file"]}'
ssl_key_file = '{certs["key_file"]}'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""


def pg_hba_conf(pam_service: str) -> str:
    """Aurora-like rules: rds_iam members only over TLS and only via PAM."""
    return f"""# pg-iam-standin
local     all  all      trust
hostnossl all  +rds_iam all reject
hostssl   all  +rds_iam all pam pamservice={pam_service}
host      all  all      all scram-sha-256
"""


def setup_sql(master_password: str, plain_password: str) -> str:
    """Roles and database as on RDS / the AWS lab."""
    return f"""
CREATE ROLE rds_iam NOLOGIN;
CREATE ROLE {MASTER_USER} LOGIN SUPERUSER PASSWORD '{master_password}';
CREATE ROLE {IAM_USER} LOGIN;
GRANT rds_iam TO {IAM_USER};
CREATE ROLE {IAM_USER2} LOGIN;
GRANT rds_iam TO {IAM_USER2};
CREATE ROLE {PLAIN_USER} LOGIN PASSWORD '{plain_password}';
CREATE DATABASE {DATABASE} OWNER {MASTER_USER};
GRANT CONNECT ON DATABASE {DATABASE} TO {IAM_USER}, {IAM_USER2};
"""


def labdb_sql() -> str:
    """The lab table, owned by the master user."""
    return f"""
SET ROLE {MASTER_USER};
CREATE TABLE public.t (id int PRIMARY KEY, v text);
INSERT INTO public.t VALUES (1, 'one'), (2, 'two'), (3, 'three');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.t TO {IAM_USER};
"""


def pg_bindir() -> Path:
    """PostgreSQL's bin directory (pg_config --bindir, else Debian's 15)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found (run scripts/install-test-deps)")


def stop_postgres(bindir: Path, data_dir: Path, server_user: ServerUser, cwd: Path) -> None:
    """pg_ctl stop -m fast, falling back to immediate and then SIGKILL."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    for mode in ("fast", "immediate"):
        argv = server_user.argv([str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", mode, "-w", "-t", "60"])
        if subprocess.run(argv, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            return
    try:
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def remove_everything(directory: Path, pam_files, bindir: Optional[Path]) -> None:
    """Stop every postgres under directory, remove the PAM service files and the temp dir.
    Idempotent."""
    pam_files = [pam_files] if isinstance(pam_files, Path) else list(pam_files)
    try:
        if bindir is not None and directory.exists():
            for pid_file in sorted(directory.glob("*/postmaster.pid")):
                stop_postgres(bindir, pid_file.parent, ServerUser(), Path("/"))
    finally:
        for pam_file in pam_files:
            remove_root_file(pam_file)
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------
# The stand-in


class Standin:
    """Owns every resource of one stand-in; ``cleanup`` releases them all."""

    def __init__(self, port: Optional[int], region: str, sts: bool, max_connections: int = 2200):
        self.requested_port = port
        self.region = region
        self.sts = sts
        self.max_connections = max_connections
        self.server_user = ServerUser()
        self.bindir = pg_bindir()
        self.dir: Optional[Path] = None
        self.pam_file = PAM_DIR / f"pg-iam-standin-{os.getpid()}-{secrets.token_hex(4)}"
        self.reaper: Optional[subprocess.Popen] = None
        self.servers: list = []
        self.moto = None
        self.master_password = secrets.token_hex(16)
        self.plain_password = secrets.token_hex(16)
        self.info: dict = {}
        self._cleaned = False
        self._cleanup_lock = threading.Lock()

    # -- start ------------------------------------------------------------
    def start(self) -> dict:
        """Bring everything up; return the description printed as JSON."""
        self._make_dir()
        self._start_reaper()
        certs = make_certificates(self.dir, self.server_user)
        pam_module = self._compile_pam_module()
        port = self._choose_port()
        self._start_verifier(port)
        write_root_file(
            self.pam_file,
            f"# pg-iam-standin (pid {os.getpid()})\n"
            f"auth    required {pam_module} socket={self.dir / 'verifier.sock'}\n"
            "account required pam_permit.so\n",
        )
        self._start_postgres(certs, port)
        self._create_roles(port)
        sts_endpoint = self._start_moto() if self.sts else None
        return self._describe(port, certs, sts_endpoint)

    def _make_dir(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-iam-standin-"))
        os.chmod(self.dir, 0o755)
        self.server_user.chown(self.dir)

    def pam_files(self) -> list:
        """Every PAM service file this stand-in writes."""
        return [self.pam_file]

    def _start_reaper(self) -> None:
        """Start the process that cleans up if this one dies without doing so."""
        pam_args = [a for f in self.pam_files() for a in ("--reap-pam-file", str(f))]
        self.reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reap", str(self.dir),
             *pam_args, "--reap-bindir", str(self.bindir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _compile_pam_module(self) -> Path:
        out = self.dir / "pam_iam_standin.so"
        run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(PAM_SOURCE), "-lpam"], cwd=self.dir)
        os.chmod(out, 0o755)
        return out

    def _choose_port(self) -> int:
        port = self.requested_port or free_port()
        if not port_is_free(port):
            raise RuntimeError(f"port {port} is in use on {' or '.join(LISTEN_ADDRESSES)}")
        return port

    def _start_verifier(self, port: int) -> None:
        """Verifier and control sockets; tokens must name localhost or 127.0.0.1 and port."""
        keys = sigv4_verify.KeyStore(
            {
                STATIC_ACCESS_KEY_ID: (STATIC_SECRET_ACCESS_KEY, None),
                TEMP_ACCESS_KEY_ID: (TEMP_SECRET_ACCESS_KEY, TEMP_SESSION_TOKEN),
            },
            use_moto=self.sts,
        )
        verifier = sigv4_verify.Verifier(keys, [f"localhost:{port}", f"127.0.0.1:{port}"], self.region)
        decisions = DecisionLog(self.dir / "decisions.jsonl")
        verifier_sock = self.dir / "verifier.sock"
        server = VerifierServer(verifier_sock, verifier, decisions)
        self.server_user.chown(verifier_sock)
        os.chmod(verifier_sock, 0o600)
        control_sock = self.dir / "control.sock"
        control = ControlServer(control_sock, verifier)
        os.chmod(control_sock, 0o600)
        for srv, name in ((server, "verifier"), (control, "control")):
            self.servers.append(srv)
            serve_in_thread(srv, name)

    def _start_postgres(self, certs: dict, port: int) -> None:
        data = self.dir / "data"
        run(self.server_user.argv([
            str(self.bindir / "initdb"), "-D", str(data), "-U", BOOTSTRAP_SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]), cwd=self.dir)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(postgresql_conf(self.dir, port, certs, self.max_connections))
        (data / "pg_hba.conf").write_text(pg_hba_conf(self.pam_file.name))
        run(self.server_user.argv([
            str(self.bindir / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60",
            "-l", str(self.dir / "server.log"),
        ]), cwd=self.dir)
        # postgres starts even if only some listen addresses could be bound.
        if "could not bind" in (self.dir / "server.log").read_text(errors="replace"):
            raise RuntimeError(f"postgres could not bind every address on port {port}; see server.log")

    def _psql(self, port: int, database: str, sql: str) -> None:
        run(self.server_user.argv([
            str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
            "-p", str(port), "-U", BOOTSTRAP_SUPERUSER, "-d", database,
        ]), cwd=self.dir, input_text=sql)

    def _create_roles(self, port: int) -> None:
        self._psql(port, "postgres", setup_sql(self.master_password, self.plain_password))
        self._psql(port, DATABASE, labdb_sql())

    def _start_moto(self) -> str:
        from moto.server import ThreadedMotoServer

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        return f"http://{host}:{port}"

    def _describe(self, port: int, certs: dict, sts_endpoint: Optional[str]) -> dict:
        self.info = {
            "dir": str(self.dir),
            "host": "localhost",
            "port": port,
            "socket_dir": str(self.dir),
            "ca_file": str(certs["ca_file"]),
            "wrong_ca_file": str(certs["wrong_ca_file"]),
            "database": DATABASE,
            "iam_user": IAM_USER,
            "iam_user2": IAM_USER2,
            "plain_user": PLAIN_USER,
            "plain_password": self.plain_password,
            "master_user": MASTER_USER,
            "master_password": self.master_password,
            "region": self.region,
            "access_key_id": STATIC_ACCESS_KEY_ID,
            "secret_access_key": STATIC_SECRET_ACCESS_KEY,
            "temp_access_key_id": TEMP_ACCESS_KEY_ID,
            "temp_secret_access_key": TEMP_SECRET_ACCESS_KEY,
            "temp_session_token": TEMP_SESSION_TOKEN,
            "sts_endpoint": sts_endpoint,
            "control_socket": str(self.dir / "control.sock"),
            "decisions_log": str(self.dir / "decisions.jsonl"),
            "pg_bindir": str(self.bindir),
            "server_log": str(self.dir / "server.log"),
            "reaper_pid": self.reaper.pid,
        }
        return self.info

    # -- stop -------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop everything and remove every file we made. Safe to call twice."""
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
        if self.moto is not None:
            try:
                self.moto.stop()
            except Exception as exc:
                log.warning("stopping moto: %s", exc)
        for server in self.servers:
            server.shutdown()
            server.server_close()
        if self.dir is not None:
            remove_everything(self.dir, self.pam_files(), self.bindir)
        else:
            for pam_file in self.pam_files():
                remove_root_file(pam_file)
        if self.reaper is not None:
            self.reaper.stdin.close()  # reaper finds nothing left and exits
            self.reaper.wait(timeout=120)


# ---------------------------------------------------------------------------
# Entry points


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived before the stand-in was ready."""


def reap(directory: Path, pam_files: list, bindir: Path) -> int:
    """Reaper mode: wait for stdin EOF (the stand-in is gone), then clean up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.buffer.read()
    if directory.exists() or any(f.exists() for f in pam_files):
        remove_everything(directory, pam_files, bindir)
    return 0


def watch_stdin(stop: threading.Event) -> None:
    """Set stop when stdin reaches EOF."""

    def reader() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered
        # reader aborts interpreter shutdown.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=reader, name="stdin-watch", daemon=True).start()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Local stand-in for Aurora PostgreSQL with IAM database authentication."
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--sts", action="store_true", help="also run moto's STS in-process")
    parser.add_argument("--max-connections", type=int, default=2200,
                        help="the server's max_connections (default 2200)")
    parser.add_argument("--region", default="us-east-1", help="region tokens must be signed for")
    parser.add_argument("--cluster", action="store_true",
                        help="an Aurora-like cluster: writer + streaming replica, failover (standin_cluster.py)")
    parser.add_argument("--instances", type=int, default=2, help="--cluster: how many instances (default 2)")
    parser.add_argument("--ignore-stdin", action="store_true", help="run until SIGTERM/SIGINT only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--reap", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reap-pam-file", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--reap-bindir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                        format="standin: %(message)s")
    if args.reap:
        return reap(args.reap, args.reap_pam_file, args.reap_bindir)

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # nothing but the JSON line may reach stdout
    stop = threading.Event()
    ready = False

    def on_signal(signum, _frame):
        stop.set()
        if not ready:
            raise Interrupted(signal.Signals(signum).name)

    if args.cluster:
        import standin_cluster

        standin = standin_cluster.ClusterStandin(args.region, args.sts, args.instances)
    else:
        standin = Standin(args.port, args.region, args.sts, args.max_connections)
    atexit.register(standin.cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        info = standin.start()
        ready = True
        log.info("ready on port %s (dir %s)", info["port"], info["dir"])
        real_stdout.write(json.dumps(info) + "\n")
        real_stdout.flush()
        if not args.ignore_stdin:
            watch_stdin(stop)
        while not stop.wait(1.0):
            pass
        return 0
    except Interrupted as exc:
        log.warning("interrupted by %s during startup", exc)
        return 1
    except BrokenPipeError:
        return 0
    except Exception:
        log.exception("stand-in failed")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        standin.cleanup()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
