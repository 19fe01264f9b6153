"""The stand-in in cluster mode (``standin.py --cluster``): two real PostgreSQL 15
instances, each with its own certificate and token check, Aurora's functions reading one
topology, and a failover that promotes the replica and brings the old writer back read-only.

Clients reach an instance by its Aurora name with libpq's ``hostaddr`` (the name is what
the certificate and the token are checked against; the address is where TCP goes).
"""

from __future__ import annotations

import os

import psycopg
import pytest

from standin_helpers import Decisions, RunningStandin, control, rds_token

MASTER = "MASTER_SESSION_ID"


@pytest.fixture(scope="module")
def cluster():
    standin = RunningStandin("--cluster")
    yield standin.info
    assert standin.close_stdin_and_wait() == 0
    assert not os.path.exists(standin.info["dir"])


def instance(info, ident):
    return next(i for i in info["cluster"]["instances"] if i["id"] == ident)


def connect(info, ident, *, name=None, signed_for=None, **extra):
    """An IAM login to instance ident, by name (default: its instance endpoint) with a token
    signed for signed_for (default: the same name) at the cluster's port."""
    inst = instance(info, ident)
    name = name or inst["host"]
    port = info["cluster"]["virtual_port"]
    token = rds_token(info["access_key_id"], info["secret_access_key"], None,
                      signed_for or name, port, info["iam_user"], info["region"])
    return psycopg.connect(host=name, hostaddr="127.0.0.1", port=inst["port"], dbname=info["database"],
                           user=info["iam_user"], password=token, sslmode="verify-full",
                           sslrootcert=info["ca_file"], connect_timeout=30, autocommit=True, **extra)


def who(conn):
    return conn.execute("select aurora_db_instance_identifier(), pg_is_in_recovery()").fetchone()


def topology(conn):
    rows = conn.execute("select server_id, session_id from aurora_replica_status() order by 1").fetchall()
    return {server: session == MASTER for server, session in rows}


def test_each_instance_answers_to_its_own_name_and_the_cluster_names(cluster):
    c = cluster["cluster"]
    for ident in ("inst-1", "inst-2"):
        for name in (instance(cluster, ident)["host"], c["cluster_host"], c["reader_host"]):
            with connect(cluster, ident, name=name) as conn:
                assert who(conn)[0] == ident


def test_a_token_signed_for_another_instance_is_refused(cluster):
    decisions = Decisions(cluster["decisions_log"])
    mark = decisions.mark()
    other = instance(cluster, "inst-2")["host"]
    with pytest.raises(psycopg.OperationalError, match="PAM authentication failed"):
        connect(cluster, "inst-1", signed_for=other)
    assert decisions.since(mark) == [{"user": cluster["iam_user"], "ok": False, "reason": "wrong_endpoint"}]


def test_the_certificate_names_only_its_own_instance(cluster):
    other = instance(cluster, "inst-2")["host"]
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(cluster, "inst-1", name=other)


def test_aurora_functions_show_one_topology_and_the_replica_streams(cluster):
    with connect(cluster, "inst-1") as writer, connect(cluster, "inst-2") as reader:
        assert who(writer) == ("inst-1", False)
        assert who(reader) == ("inst-2", True)
        assert writer.execute("select aurora_version()").fetchone()[0].startswith("15")
        assert topology(writer) == topology(reader) == {"inst-1": True, "inst-2": False}
        writer.execute("insert into t values (100, 'replicated')")
        row = None
        for _ in range(200):  # bounded wait for replay
            row = reader.execute("select v from t where id = 100").fetchone()
            if row:
                break
            reader.execute("select pg_sleep(0.02)")
        assert row == ("replicated",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("insert into t values (101, 'no')")


def test_failover_promotes_the_replica_and_brings_the_old_writer_back_read_only(cluster):
    with connect(cluster, "inst-1") as writer:
        writer.execute("insert into t values (200, 'before failover')")
    reply = control(cluster, {"failover": True})
    assert reply["ok"], reply
    assert (reply["failover"]["old_writer"], reply["failover"]["new_writer"]) == ("inst-1", "inst-2")
    with connect(cluster, "inst-2") as new, connect(cluster, "inst-1") as old:
        assert who(new) == ("inst-2", False)
        assert who(old) == ("inst-1", True)
        assert topology(new) == topology(old) == {"inst-1": False, "inst-2": True}
        assert new.execute("select v from t where id = 200").fetchone() == ("before failover",)
        new.execute("insert into t values (201, 'after failover')")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            old.execute("insert into t values (202, 'stale writer')")
    # And back: the old writer, now a replica, can be promoted again.
    reply = control(cluster, {"failover": {"target": "inst-1"}})
    assert reply["failover"]["new_writer"] == "inst-1", reply
    with connect(cluster, "inst-1") as writer:
        assert who(writer) == ("inst-1", False)
        assert writer.execute("select v from t where id = 201").fetchone() == ("after failover",)


def test_failover_to_the_writer_itself_is_refused(cluster):
    def is_writer(ident):
        with connect(cluster, ident) as conn:
            return who(conn)[1] is False

    writer = next(i for i in ("inst-1", "inst-2") if is_writer(i))
    reply = control(cluster, {"failover": {"target": writer}})
    assert reply["ok"] is False and "already the writer" in reply["error"], reply


def test_sigkill_of_a_cluster_is_cleaned_up_by_the_reaper():
    import signal
    from pathlib import Path

    from standin_helpers import wait_for_pid_exit

    standin = RunningStandin("--cluster")
    info = standin.info
    pids = [int(p.read_text().split()[0]) for p in Path(info["dir"]).glob("inst-*/postmaster.pid")]
    assert len(pids) == 2
    pam = [p for p in Path("/etc/pam.d").iterdir() if info["dir"] in p.read_text(errors="replace")]
    assert len(pam) == 2
    standin.proc.send_signal(signal.SIGKILL)
    standin.proc.wait(timeout=30)
    assert wait_for_pid_exit(info["reaper_pid"], 120)
    assert all(wait_for_pid_exit(pid, 30) for pid in pids)
    assert not os.path.exists(info["dir"])
    assert not any(p.exists() for p in pam)
