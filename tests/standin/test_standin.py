"""End-to-end tests of the Aurora-IAM stand-in with real clients.

Tokens come from botocore (``generate_db_auth_token``); logins go through
libpq (psycopg) and, where the exact SQLSTATE or the authentication request
matters, through the small wire-protocol client in pgwire.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal

import psycopg
import pytest

import pgwire
from standin_helpers import (
    RunningStandin,
    control,
    pam_files_for,
    postmaster_pid,
    presign,
    rds_token,
    skewed_clock,
    wait_for_pid_exit,
)

EXPECTED_KEYS = {
    "dir", "host", "port", "socket_dir", "ca_file", "wrong_ca_file", "database", "iam_user", "iam_user2",
    "plain_user", "plain_password", "master_user", "master_password", "region", "access_key_id",
    "secret_access_key", "temp_access_key_id", "temp_secret_access_key", "temp_session_token", "sts_endpoint",
    "control_socket", "decisions_log", "pg_bindir", "server_log", "reaper_pid",
}
PAM_FAILED = 'PAM authentication failed for user "{}"'


# ---------------------------------------------------------------------------
# Helpers


def static_creds(info):
    return info["access_key_id"], info["secret_access_key"], None


def temp_creds(info):
    return info["temp_access_key_id"], info["temp_secret_access_key"], info["temp_session_token"]


def token_for(info, user=None, *, creds=None, host=None, port=None, region=None):
    """A botocore token for the stand-in, any part overridable."""
    akid, secret, session = creds or static_creds(info)
    return rds_token(
        akid, secret, session,
        host or info["host"],
        port or info["port"],
        user or info["iam_user"],
        region or info["region"],
    )


def connect(info, user, password, *, host=None, sslmode="verify-full", sslrootcert=None, **extra):
    """A psycopg connection to labdb."""
    return psycopg.connect(
        host=host or info["host"],
        port=info["port"],
        dbname=info["database"],
        user=user,
        password=password,
        sslmode=sslmode,
        sslrootcert=sslrootcert or info["ca_file"],
        connect_timeout=30,
        **extra,
    )


def wire_login(info, user, password, *, tls=True):
    return pgwire.login(
        "127.0.0.1", info["port"], user, info["database"], password, tls=tls, ca_file=info["ca_file"]
    )


def assert_pam_refusal(info, decisions, token, reason, user=None):
    """Log in with token: the server must answer like Aurora, the verifier say why."""
    user = user or info["iam_user"]
    mark = decisions.mark()
    result = wire_login(info, user, token)
    assert result.auth_requests == [pgwire.AUTH_CLEARTEXT_PASSWORD]
    assert not result.ready
    assert result.severity == "FATAL"
    assert result.sqlstate == "28000"
    assert result.message == PAM_FAILED.format(user)
    assert decisions.since(mark) == [{"user": user, "ok": False, "reason": reason}]


def current_user(conn) -> str:
    return conn.execute("select current_user").fetchone()[0]


# ---------------------------------------------------------------------------
# The JSON line


def test_json_line_has_the_documented_keys(info):
    assert set(info) == EXPECTED_KEYS
    assert info["host"] == "localhost"
    assert info["database"] == "labdb"
    assert (info["iam_user"], info["iam_user2"]) == ("iam_dbuser", "iam_other")
    assert info["sts_endpoint"].startswith("http://127.0.0.1:")
    assert len(info["temp_session_token"]) >= 800
    assert os.path.isdir(info["dir"]) and os.path.exists(info["control_socket"])


def test_nothing_but_the_json_line_is_printed_on_stdout(running_standin):
    import select

    ready, _, _ = select.select([running_standin.proc.stdout], [], [], 0)
    assert ready == []


# ---------------------------------------------------------------------------
# Successful IAM logins


def test_iam_login_with_static_key_over_verified_tls(info, decisions):
    mark = decisions.mark()
    with connect(info, info["iam_user"], token_for(info)) as conn:
        assert current_user(conn) == "iam_dbuser"
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("select count(*) from t").fetchone()[0] >= 3
        assert conn.execute("select 1 from pg_stat_ssl where pid = pg_backend_pid() and ssl").fetchone()
    assert decisions.since(mark) == [{"user": "iam_dbuser", "ok": True, "reason": "ok"}]


def test_iam_user_can_write_the_lab_table(info):
    with connect(info, info["iam_user"], token_for(info)) as conn:
        conn.execute("insert into t values (1000, 'x') on conflict (id) do update set v = excluded.v")
        assert conn.execute("select v from t where id = 1000").fetchone()[0] == "x"
        conn.execute("delete from t where id = 1000")


def test_iam_login_with_session_credentials_token_over_1000_bytes(info, decisions):
    token = token_for(info, creds=temp_creds(info))
    assert len(token.encode()) > 1000
    mark = decisions.mark()
    with connect(info, info["iam_user"], token) as conn:
        assert current_user(conn) == "iam_dbuser"
    assert decisions.since(mark) == [{"user": "iam_dbuser", "ok": True, "reason": "ok"}]


def test_iam_login_second_user(info):
    with connect(info, info["iam_user2"], token_for(info, info["iam_user2"])) as conn:
        assert current_user(conn) == "iam_other"


def test_token_for_127_0_0_1_is_accepted(info):
    token = token_for(info, host="127.0.0.1")
    with connect(info, info["iam_user"], token, host="127.0.0.1") as conn:
        assert current_user(conn) == "iam_dbuser"


def test_moto_assume_role_credentials_log_in(info, decisions, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", info["sts_endpoint"])
    sts = boto3.client("sts", region_name=info["region"], aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    creds = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/lab-iam-db", RoleSessionName="standin-test")[
        "Credentials"
    ]
    assert creds["AccessKeyId"].startswith("ASIA")
    token = token_for(info, creds=(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))
    mark = decisions.mark()
    with connect(info, info["iam_user"], token) as conn:
        assert current_user(conn) == "iam_dbuser"
    assert decisions.since(mark) == [{"user": "iam_dbuser", "ok": True, "reason": "ok"}]


def test_control_add_key_then_log_in(info):
    key = {"access_key_id": "AKIACONTROLADDED0001", "secret_access_key": "c" * 40, "session_token": None}
    creds = (key["access_key_id"], key["secret_access_key"], None)
    with pytest.raises(psycopg.OperationalError):
        connect(info, info["iam_user"], token_for(info, creds=creds)).close()
    assert control(info, {"add_key": key}) == {"ok": True}
    with connect(info, info["iam_user"], token_for(info, creds=creds)) as conn:
        assert current_user(conn) == "iam_dbuser"


def test_control_rejects_unknown_commands(info):
    assert control(info, {"frobnicate": 1})["ok"] is False


def test_concurrent_iam_logins(info, decisions):
    mark = decisions.mark()

    def one(_):
        with connect(info, info["iam_user"], token_for(info)) as conn:
            return current_user(conn)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(one, range(32))) == ["iam_dbuser"] * 32
    assert decisions.since(mark) == [{"user": "iam_dbuser", "ok": True, "reason": "ok"}] * 32


# ---------------------------------------------------------------------------
# What the server asks for


def test_server_asks_iam_user_for_a_cleartext_password_over_tls(info, decisions):
    mark = decisions.mark()
    result = wire_login(info, info["iam_user"], None)
    assert result.tls and result.auth_requests == [pgwire.AUTH_CLEARTEXT_PASSWORD]
    assert decisions.since(mark) == []


def test_wire_client_logs_in_with_a_good_token(info):
    result = wire_login(info, info["iam_user"], token_for(info))
    assert result.error is None and result.ready
    assert result.auth_requests == [pgwire.AUTH_CLEARTEXT_PASSWORD, pgwire.AUTH_OK]


def test_plain_user_is_asked_for_scram_not_pam(info, decisions):
    mark = decisions.mark()
    result = wire_login(info, info["plain_user"], None)
    assert result.auth_requests == [pgwire.AUTH_SASL]
    assert "SCRAM-SHA-256" in result.sasl_mechanisms
    plaintext = wire_login(info, info["plain_user"], None, tls=False)
    assert plaintext.auth_requests == [pgwire.AUTH_SASL]
    assert decisions.since(mark) == []


def test_plain_user_logs_in_with_its_password(info, decisions):
    mark = decisions.mark()
    with connect(info, info["plain_user"], info["plain_password"]) as conn:
        assert current_user(conn) == "plain_user"
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "plain_user"'):
        connect(info, info["plain_user"], "wrong-password")
    assert decisions.since(mark) == []


def test_master_user_logs_in_with_its_password(info, decisions):
    mark = decisions.mark()
    with connect(info, info["master_user"], info["master_password"]) as conn:
        assert current_user(conn) == "labadmin"
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]
        members = conn.execute(
            "select m.rolname from pg_auth_members a join pg_roles r on r.oid = a.roleid "
            "join pg_roles m on m.oid = a.member where r.rolname = 'rds_iam' order by 1"
        ).fetchall()
        assert [row[0] for row in members] == ["iam_dbuser", "iam_other"]
    assert decisions.since(mark) == []


# ---------------------------------------------------------------------------
# Refusals: Aurora's message and SQLSTATE, and the verifier's reason


def test_refusal_through_libpq_reads_like_aurora(info):
    with pytest.raises(psycopg.OperationalError) as caught:
        connect(info, info["iam_user"], "not-a-token")
    assert 'FATAL:  PAM authentication failed for user "iam_dbuser"' in str(caught.value)


def test_refused_bad_signature(info, decisions):
    token = token_for(info)
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert_pam_refusal(info, decisions, flipped, "bad_signature")


def test_refused_expired(info, decisions):
    token = token_for(info)
    with skewed_clock(info, 1000):
        assert_pam_refusal(info, decisions, token, "expired")
    with connect(info, info["iam_user"], token) as conn:  # the same token is fine again
        assert current_user(conn) == "iam_dbuser"


def test_refused_signed_in_the_future(info, decisions):
    with skewed_clock(info, -1000):
        assert_pam_refusal(info, decisions, token_for(info), "not_yet_valid")


def test_refused_token_for_another_port(info, decisions):
    assert_pam_refusal(info, decisions, token_for(info, port=info["port"] + 1), "wrong_endpoint")


def test_refused_token_for_another_host(info, decisions):
    assert_pam_refusal(info, decisions, token_for(info, host="db.cluster-other.us-east-1.rds.amazonaws.com"),
                       "wrong_endpoint")
    assert_pam_refusal(info, decisions, token_for(info, host="127.0.0.2"), "wrong_endpoint")


def test_refused_token_for_another_user(info, decisions):
    assert_pam_refusal(info, decisions, token_for(info, info["iam_user2"]), "wrong_user")


def test_refused_token_for_another_region(info, decisions):
    assert_pam_refusal(info, decisions, token_for(info, region="eu-west-1"), "wrong_region")


def test_refused_token_for_another_service(info, decisions):
    token = presign(*static_creds(info), info["host"], info["port"], info["iam_user"], info["region"],
                    service="rds")
    assert_pam_refusal(info, decisions, token, "wrong_service")


def test_refused_unknown_key(info, decisions):
    creds = ("AKIAUNKNOWN000000009", "u" * 40, None)
    assert_pam_refusal(info, decisions, token_for(info, creds=creds), "unknown_key")


def test_refused_unsigned_payload(info, decisions):
    token = presign(*static_creds(info), info["host"], info["port"], info["iam_user"], info["region"],
                    unsigned_payload=True)
    assert_pam_refusal(info, decisions, token, "unsigned_payload")


def test_refused_wrong_session_token(info, decisions):
    akid, secret, _ = temp_creds(info)
    assert_pam_refusal(info, decisions, token_for(info, creds=(akid, secret, "another-session-token")),
                       "bad_session_token")
    assert_pam_refusal(info, decisions, token_for(info, creds=(akid, secret, None)), "bad_session_token")


def test_refused_expiry_longer_than_900_seconds(info, decisions):
    token = presign(*static_creds(info), info["host"], info["port"], info["iam_user"], info["region"],
                    expires=3600)
    assert_pam_refusal(info, decisions, token, "expires_too_long")


def test_refused_other_action(info, decisions):
    token = presign(*static_creds(info), info["host"], info["port"], info["iam_user"], info["region"],
                    action="disconnect")
    assert_pam_refusal(info, decisions, token, "wrong_action")


def test_refused_garbage_and_scheme_prefixed_tokens(info, decisions):
    assert_pam_refusal(info, decisions, "hunter2", "malformed")
    assert_pam_refusal(info, decisions, "https://" + token_for(info), "malformed")


def test_refused_plaintext_iam_login(info, decisions):
    mark = decisions.mark()
    result = wire_login(info, info["iam_user"], token_for(info), tls=False)
    assert result.auth_requests == []
    assert result.sqlstate == "28000"
    assert result.message.startswith('pg_hba.conf rejects connection for host "127.0.0.1", user "iam_dbuser"')
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
        connect(info, info["iam_user"], token_for(info), sslmode="disable")
    assert decisions.since(mark) == []


# ---------------------------------------------------------------------------
# TLS


def test_wrong_ca_is_refused_by_the_client(info):
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(info, info["iam_user"], token_for(info), sslrootcert=info["wrong_ca_file"])


def test_127_0_0_2_is_served_but_not_named_in_the_certificate(info):
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(info, info["iam_user"], token_for(info), host="127.0.0.2")
    with connect(info, info["iam_user"], token_for(info), host="127.0.0.2", sslmode="require") as conn:
        assert current_user(conn) == "iam_dbuser"


# ---------------------------------------------------------------------------
# Lifecycle (each starts its own stand-in, without --sts)


def test_closing_stdin_tears_everything_down():
    standin = RunningStandin()
    info = standin.info
    assert info["sts_endpoint"] is None
    assert len(pam_files_for(info)) == 1
    postmaster = postmaster_pid(info)
    with connect(info, info["iam_user"], token_for(info)) as conn:
        assert current_user(conn) == "iam_dbuser"
    assert standin.close_stdin_and_wait() == 0
    assert standin.stdout_rest() == b""
    assert wait_for_pid_exit(postmaster, 30)
    assert wait_for_pid_exit(info["reaper_pid"], 30)
    assert not os.path.exists(info["dir"])
    assert pam_files_for(info) == []


def test_sigkill_is_cleaned_up_by_the_reaper():
    standin = RunningStandin()
    info = standin.info
    postmaster = postmaster_pid(info)
    standin.proc.send_signal(signal.SIGKILL)
    standin.proc.wait(timeout=30)
    assert wait_for_pid_exit(info["reaper_pid"], 120)
    assert wait_for_pid_exit(postmaster, 30)
    assert not os.path.exists(info["dir"])
    assert pam_files_for(info) == []
