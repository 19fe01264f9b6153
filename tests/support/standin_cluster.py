"""The stand-in as an Aurora-like cluster (``standin.py --cluster``).

Two real PostgreSQL 15 instances, ``inst-1`` (writer) and ``inst-2`` (a streaming replica made
with ``pg_basebackup -R``), each

* with its own TLS certificate naming its instance endpoint
  (``inst-1.<id>.<region>.rds.amazonaws.com``) and the cluster endpoints
  (``<name>.cluster-<id>...`` and ``<name>.cluster-ro-<id>...``);
* accepting IAM tokens only when they are signed for one of those names at the cluster's
  port (``virtual_port``, 5432: the port clients and the proxy believe they connect to; tests
  reach the real ports through ``--connect-to``);
* answering Aurora's functions: ``aurora_version()``, ``aurora_db_instance_identifier()`` (a
  setting of the instance, ``aurora.instance_id``) and ``aurora_replica_status()`` (rows
  ``server_id``, ``session_id`` -- ``MASTER_SESSION_ID`` for the writer --,
  ``last_update_timestamp``, ``replica_lag_in_msec``), all in ``pg_catalog`` of every
  database. The topology is one JSON file both instances read (``pg_read_file`` in a
  SECURITY DEFINER function), so every instance sees the same topology, also after a failover.

Control command ``{"failover": true}`` (or ``{"failover": {"target": "inst-2", "pause_s": 1.5}}``:
which instance to promote, how long the cluster stays without a writer first) does what
Aurora does: stop the writer, promote the replica, update the topology, then bring the old
writer back as a read-only replica of the new one (``pg_rewind``, re-basebackup if that
fails). The cluster names are not moved anywhere: whatever a test maps them to with
``--connect-to`` (the first writer's port) is now stale DNS. The reply carries the timings.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import sigv4_verify
from standin import (
    BOOTSTRAP_SUPERUSER, DATABASE, IAM_USER, LISTEN_ADDRESSES, PAM_DIR, STATIC_ACCESS_KEY_ID,
    STATIC_SECRET_ACCESS_KEY, TEMP_ACCESS_KEY_ID, TEMP_SECRET_ACCESS_KEY, TEMP_SESSION_TOKEN,
    ControlServer, DecisionLog, Standin, VerifierServer, _make_ca, _make_server_cert, _write_cert,
    _write_key, free_port, labdb_sql, pg_hba_conf, postgresql_conf, run, serve_in_thread,
    setup_sql, stop_postgres, write_root_file,
)

CLUSTER_NAME = "standin"
CLUSTER_ID = "c0standin0001"
VIRTUAL_PORT = 5432
MASTER = "MASTER_SESSION_ID"

log = logging.getLogger("standin")


def aurora_sql(topology_file: Path) -> str:
    """Aurora's functions, in pg_catalog (create in template1 before CREATE DATABASE)."""
    return f"""
CREATE FUNCTION pg_catalog.aurora_version() RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT '15.4.standin' $$;
CREATE FUNCTION pg_catalog.aurora_db_instance_identifier() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT pg_catalog.current_setting('aurora.instance_id') $$;
CREATE FUNCTION pg_catalog.aurora_replica_status()
  RETURNS TABLE(server_id text, session_id text, last_update_timestamp timestamptz,
                replica_lag_in_msec float8)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT r->>'server_id', r->>'session_id', now(),
           CASE WHEN r->>'session_id' = '{MASTER}' THEN NULL ELSE 5.0 END
      FROM json_array_elements(pg_read_file('{topology_file}')::json) AS r
  $$;
"""


class Instance:
    """One PostgreSQL instance of the cluster."""

    def __init__(self, cluster: "ClusterStandin", ident: str):
        self.id = ident
        self.port = free_port()
        self.data = cluster.dir / ident
        self.log = cluster.dir / f"{ident}.log"
        self.pam_file = PAM_DIR / f"pg-iam-standin-{os.getpid()}-{ident}-{secrets.token_hex(4)}"
        self.host = f"{ident}.{CLUSTER_ID}.{cluster.region}.rds.amazonaws.com"
        self.cert = cluster.dir / f"{ident}.crt"
        self.key = cluster.dir / f"{ident}.key"


class ClusterStandin(Standin):
    """A writer and a replica behind Aurora-like names; ``cleanup`` releases everything."""

    def __init__(self, region: str, sts: bool, instances: int = 2):
        super().__init__(None, region, sts, max_connections=200)
        self.count = instances
        self.instances: list = []
        self.writer: str = "inst-1"
        self.cluster_host = f"{CLUSTER_NAME}.cluster-{CLUSTER_ID}.{region}.rds.amazonaws.com"
        self.reader_host = f"{CLUSTER_NAME}.cluster-ro-{CLUSTER_ID}.{region}.rds.amazonaws.com"
        self.lock = threading.Lock()

    def pam_files(self) -> list:
        return [i.pam_file for i in self.instances]

    # -- start ------------------------------------------------------------
    def start(self) -> dict:
        self._make_dir()
        self.instances = [Instance(self, f"inst-{n + 1}") for n in range(self.count)]
        self._start_reaper()
        ca = self._certificates()
        module = self._compile_pam_module()
        self._verifiers(module)
        self._write_topology()
        first, *rest = self.instances
        self._init_writer(first)
        for inst in rest:
            self._clone(inst, first)
            self._start_first(inst)
        for inst in rest:
            self._wait_streaming(first, inst)
        sts_endpoint = self._start_moto() if self.sts else None
        return self._describe_cluster(ca, sts_endpoint)

    def _certificates(self) -> Path:
        ca_cert, ca_key = _make_ca("pg-iam-standin cluster CA")
        wrong_ca, _ = _make_ca("pg-iam-standin unrelated CA")
        _write_cert(self.dir / "ca.crt", ca_cert)
        _write_cert(self.dir / "wrong_ca.crt", wrong_ca)
        for inst in self.instances:
            names = (inst.host, self.cluster_host, self.reader_host, "localhost")
            cert, key = _make_server_cert(ca_cert, ca_key, names, ("127.0.0.1",))
            _write_cert(inst.cert, cert)
            _write_key(inst.key, key)
            self.server_user.chown(inst.key)
        return self.dir / "ca.crt"

    def _verifiers(self, module: Path) -> None:
        """One verifier per instance (the names it answers to), one control socket for all."""
        keys = sigv4_verify.KeyStore(
            {
                STATIC_ACCESS_KEY_ID: (STATIC_SECRET_ACCESS_KEY, None),
                TEMP_ACCESS_KEY_ID: (TEMP_SECRET_ACCESS_KEY, TEMP_SESSION_TOKEN),
            },
            use_moto=self.sts,
        )
        decisions = DecisionLog(self.dir / "decisions.jsonl")
        verifiers = []
        for inst in self.instances:
            names = (inst.host, self.cluster_host, self.reader_host)
            verifier = sigv4_verify.Verifier(keys, [f"{n}:{VIRTUAL_PORT}" for n in names], self.region)
            sock = self.dir / f"verifier-{inst.id}.sock"
            server = VerifierServer(sock, verifier, decisions)
            self.server_user.chown(sock)
            os.chmod(sock, 0o600)
            self.servers.append(server)
            serve_in_thread(server, f"verifier-{inst.id}")
            verifiers.append(verifier)
            write_root_file(
                inst.pam_file,
                f"# pg-iam-standin cluster {inst.id} (pid {os.getpid()})\n"
                f"auth    required {module} socket={sock}\n"
                "account required pam_permit.so\n",
            )
        control = ControlServer(self.dir / "control.sock", verifiers, {"failover": self._failover_command})
        os.chmod(self.dir / "control.sock", 0o600)
        self.servers.append(control)
        serve_in_thread(control, "control")

    def _configure(self, inst: Instance) -> None:
        """The instance's own settings and pg_hba (pg_basebackup and pg_rewind copy the
        other instance's files)."""
        certs = {"cert_file": inst.cert, "key_file": inst.key}
        base = (self.dir / "postgresql.base.conf").read_text()
        (inst.data / "postgresql.conf").write_text(
            base + postgresql_conf(self.dir, inst.port, certs, self.max_connections) + f"""
wal_level = replica
max_wal_senders = 10
wal_log_hints = on
full_page_writes = on
hot_standby = on
wal_receiver_status_interval = 1s
aurora.instance_id = '{inst.id}'
"""
        )
        hba = pg_hba_conf(inst.pam_file.name) + "local     replication all trust\n"
        (inst.data / "pg_hba.conf").write_text(hba)
        self.server_user.chown(inst.data / "postgresql.conf")
        self.server_user.chown(inst.data / "pg_hba.conf")

    def _init_writer(self, inst: Instance) -> None:
        run(self.server_user.argv([
            str(self.bindir / "initdb"), "-D", str(inst.data), "-U", BOOTSTRAP_SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]), cwd=self.dir)
        (self.dir / "postgresql.base.conf").write_text((inst.data / "postgresql.conf").read_text())
        self._configure(inst)
        self._start_first(inst)
        functions = aurora_sql(self.dir / "topology.json")
        self._psql(inst.port, "template1", functions)
        self._psql(inst.port, "postgres", functions)
        self._psql(inst.port, "postgres", setup_sql(self.master_password, self.plain_password))
        self._psql(inst.port, DATABASE, labdb_sql())

    def _start_first(self, inst: Instance, attempts: int = 5) -> None:
        """The first start of an instance: a port that another process took between
        free_port() and the server's bind (tests start clusters in parallel) is replaced by a
        new one. Later starts keep their port: clients were told it."""
        for attempt in range(attempts):
            try:
                return self._start(inst)
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt + 1 == attempts:
                    raise
                inst.port = free_port()
                self._configure(inst)

    def _start(self, inst: Instance) -> None:
        try:
            run(self.server_user.argv([
                str(self.bindir / "pg_ctl"), "start", "-D", str(inst.data), "-w", "-t", "60", "-l", str(inst.log),
            ]), cwd=self.dir)
        except RuntimeError as exc:
            tail = inst.log.read_text(errors="replace")[-1500:] if inst.log.exists() else ""
            raise RuntimeError(f"{exc}\n{inst.id}.log:\n{tail}") from None

    def _follow(self, inst: Instance, primary: Instance) -> None:
        """Make inst a standby of primary (settings, standby.signal)."""
        self._configure(inst)
        (inst.data / "postgresql.auto.conf").write_text(
            f"primary_conninfo = 'host={self.dir} port={primary.port} user={BOOTSTRAP_SUPERUSER} "
            f"application_name={inst.id}'\nrecovery_target_timeline = 'latest'\n"
        )
        (inst.data / "standby.signal").touch()
        for f in ("postgresql.auto.conf", "standby.signal"):
            self.server_user.chown(inst.data / f)

    def _clone(self, inst: Instance, primary: Instance) -> None:
        run(["rm", "-rf", str(inst.data)], cwd=self.dir)
        run(self.server_user.argv([
            str(self.bindir / "pg_basebackup"), "-D", str(inst.data), "-h", str(self.dir),
            "-p", str(primary.port), "-U", BOOTSTRAP_SUPERUSER, "-X", "stream", "-c", "fast", "--no-sync",
        ]), cwd=self.dir)
        self._follow(inst, primary)

    def _wait_streaming(self, primary: Instance, inst: Instance, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        sql = f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{inst.id}' AND state = 'streaming'"
        while self._query(primary, sql) != "1":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{inst.id} is not streaming from {primary.id}")
            time.sleep(0.05)

    def _query(self, inst: Instance, sql: str) -> str:
        return run(self.server_user.argv([
            str(self.bindir / "psql"), "-X", "-A", "-t", "-h", str(self.dir), "-p", str(inst.port),
            "-U", BOOTSTRAP_SUPERUSER, "-d", "postgres", "-c", sql,
        ]), cwd=self.dir).strip()

    def _write_topology(self) -> None:
        rows = [
            {"server_id": i.id, "session_id": MASTER if i.id == self.writer else f"{i.id}-{secrets.token_hex(4)}"}
            for i in self.instances
        ]
        tmp = self.dir / "topology.json.tmp"
        tmp.write_text(json.dumps(rows))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dir / "topology.json")

    # -- failover ---------------------------------------------------------
    def _failover_command(self, value) -> dict:
        options = value if isinstance(value, dict) else {}
        with self.lock:
            return {"failover": self.failover(options.get("target"), float(options.get("pause_s", 0)))}

    def failover(self, target=None, pause_s: float = 0.0) -> dict:
        """Stop the writer, promote target (default: the first other instance), update the
        topology, bring the old writer back as a replica. Returns timings in seconds."""
        by_id = {i.id: i for i in self.instances}
        old = by_id[self.writer]
        new = by_id[target] if target else next(i for i in self.instances if i.id != self.writer)
        if new is old:
            raise ValueError(f"{target} is already the writer")
        t0 = time.monotonic()
        stop_postgres(self.bindir, old.data, self.server_user, self.dir)
        stopped = time.monotonic() - t0
        time.sleep(pause_s)  # the cluster without a writer for a while, as Aurora's detection
        run(self.server_user.argv([str(self.bindir / "pg_ctl"), "promote", "-D", str(new.data), "-w", "-t", "60"]),
            cwd=self.dir)
        self.writer = new.id
        self._write_topology()
        promoted = time.monotonic() - t0
        for other in self.instances:
            if other is not new and other is not old:
                self._follow(other, new)
                run(self.server_user.argv([str(self.bindir / "pg_ctl"), "restart", "-D", str(other.data),
                                           "-w", "-t", "60", "-l", str(other.log)]), cwd=self.dir)
        self._rejoin(old, new)
        return {"old_writer": old.id, "new_writer": new.id, "stopped_s": stopped,
                "promoted_s": promoted, "rejoined_s": time.monotonic() - t0}

    def _rejoin(self, old: Instance, new: Instance) -> None:
        """The old writer back as a read-only replica of the new one."""
        try:
            run(self.server_user.argv([
                str(self.bindir / "pg_rewind"), "-D", str(old.data), "--no-sync",
                f"--source-server=host={self.dir} port={new.port} user={BOOTSTRAP_SUPERUSER} dbname=postgres",
            ]), cwd=self.dir)
            self._follow(old, new)
            self._start(old)
        except RuntimeError as exc:
            log.info("rejoining %s by pg_rewind failed (%s); taking a new base backup", old.id, exc)
            stop_postgres(self.bindir, old.data, self.server_user, self.dir)
            self._clone(old, new)
            self._start(old)
        self._wait_streaming(new, old)

    # -- describe ---------------------------------------------------------
    def _describe_cluster(self, ca: Path, sts_endpoint) -> dict:
        first = self.instances[0]
        connect_to = [f"{self.cluster_host}:{VIRTUAL_PORT}:127.0.0.1:{first.port}",
                      f"{self.reader_host}:{VIRTUAL_PORT}:127.0.0.1:{self.instances[-1].port}"]
        connect_to += [f"{i.host}:{VIRTUAL_PORT}:127.0.0.1:{i.port}" for i in self.instances]
        info = self._describe(VIRTUAL_PORT, {"ca_file": ca, "wrong_ca_file": self.dir / "wrong_ca.crt"},
                              sts_endpoint)
        info.update({
            "host": self.cluster_host,
            "server_log": str(first.log),
            "cluster": {
                "id": CLUSTER_ID,
                "cluster_host": self.cluster_host,
                "reader_host": self.reader_host,
                "virtual_port": VIRTUAL_PORT,
                "writer": self.writer,
                "instances": [{"id": i.id, "host": i.host, "port": i.port, "log": str(i.log)}
                              for i in self.instances],
                "connect_to": connect_to,
                "topology_file": str(self.dir / "topology.json"),
                "listen_addresses": list(LISTEN_ADDRESSES),
                "iam_user": IAM_USER,
            },
        })
        self.info = info
        return info
