"""Unit tests of the independent RDS IAM token verifier (no server needed)."""

from __future__ import annotations

import datetime
import functools
import json

import pytest

from standin_helpers import VECTORS, parse_rfc3339, presign, rds_token

import make_rds_tokens
import sigv4_verify as v

VECTOR_LIST = json.loads((VECTORS / "rds_tokens.json").read_text(encoding="utf-8"))
VECTOR_IDS = [vector["name"] for vector in VECTOR_LIST]


def signing_epoch(vector: dict) -> float:
    return parse_rfc3339(vector["signing_time"]).timestamp()


def keys_for(vector: dict) -> v.KeyStore:
    return v.KeyStore({vector["access_key_id"]: (vector["secret_access_key"], vector["session_token"])})


def check(vector: dict, *, token=None, user=None, keys=None, endpoints=None, region=None, now=None):
    """verify_token with the vector's settings, any of them overridden."""
    return v.verify_token(
        vector["token"] if token is None else token,
        vector["user"] if user is None else user,
        keys=keys_for(vector) if keys is None else keys,
        endpoints=[f"{vector['host']}:{vector['port']}"] if endpoints is None else endpoints,
        region=vector["region"] if region is None else region,
        now=signing_epoch(vector) + 1 if now is None else now,
    )


# ---------------------------------------------------------------------------
# The vectors themselves


def test_vector_file_covers_the_required_cases():
    names = set(VECTOR_IDS)
    assert {"static-keys-aurora-default-port", "session-credentials", "non-default-port", "china-region"} <= names
    users = {vector["user"] for vector in VECTOR_LIST}
    assert {"app@corp", "a&b=c", "with space", "dbüser", "user+plus", "x/y"} <= users
    assert any(len(vector["token"]) > 1000 for vector in VECTOR_LIST)
    assert all(not vector["token"].startswith("https://") for vector in VECTOR_LIST)


def test_vectors_are_reproducible_with_botocore():
    assert make_rds_tokens.render(make_rds_tokens.build_vectors()) == (VECTORS / "rds_tokens.json").read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize("vector", VECTOR_LIST, ids=VECTOR_IDS)
def test_every_vector_verifies(vector):
    assert check(vector) == (True, "ok")


@pytest.mark.parametrize("vector", VECTOR_LIST, ids=VECTOR_IDS)
def test_every_vector_is_refused_when_anything_differs(vector):
    signed_at = signing_epoch(vector)
    assert check(vector, user=vector["user"] + "x") == (False, v.R_WRONG_USER)
    assert check(vector, endpoints=[f"{vector['host']}:{vector['port'] + 1}"]) == (False, v.R_WRONG_ENDPOINT)
    assert check(vector, endpoints=[f"other.example.com:{vector['port']}"]) == (False, v.R_WRONG_ENDPOINT)
    assert check(vector, region="ap-south-1") == (False, v.R_WRONG_REGION)
    assert check(vector, now=signed_at + 900) == (True, v.R_OK)
    assert check(vector, now=signed_at + 901) == (False, v.R_EXPIRED)
    assert check(vector, now=signed_at - 300) == (True, v.R_OK)
    assert check(vector, now=signed_at - 301) == (False, v.R_NOT_YET_VALID)
    assert check(vector, keys=v.KeyStore()) == (False, v.R_UNKNOWN_KEY)
    wrong_secret = v.KeyStore({vector["access_key_id"]: ("x" * 40, vector["session_token"])})
    assert check(vector, keys=wrong_secret) == (False, v.R_BAD_SIGNATURE)
    other_session = v.KeyStore({vector["access_key_id"]: (vector["secret_access_key"], "other-session")})
    assert check(vector, keys=other_session) == (False, v.R_BAD_SESSION_TOKEN)
    last = vector["token"][-1]
    flipped = vector["token"][:-1] + ("0" if last != "0" else "1")
    assert check(vector, token=flipped) == (False, v.R_BAD_SIGNATURE)


def test_session_vector_refused_when_the_store_has_no_session_token():
    vector = next(x for x in VECTOR_LIST if x["name"] == "session-credentials")
    keys = v.KeyStore({vector["access_key_id"]: (vector["secret_access_key"], None)})
    assert check(vector, keys=keys) == (False, v.R_BAD_SESSION_TOKEN)


def test_static_vector_refused_when_the_store_expects_a_session_token():
    vector = VECTOR_LIST[0]
    keys = v.KeyStore({vector["access_key_id"]: (vector["secret_access_key"], "expected-session")})
    assert check(vector, keys=keys) == (False, v.R_BAD_SESSION_TOKEN)


# ---------------------------------------------------------------------------
# Canonicalisation details (what botocore does)


def test_uri_encoding_matches_sigv4():
    assert v.uri_encode("dbüser") == "db%C3%BCser"
    assert v.uri_encode("with space") == "with%20space"
    assert v.uri_encode("a&b=c") == "a%26b%3Dc"
    assert v.uri_encode("x/y+z@w") == "x%2Fy%2Bz%40w"
    assert v.uri_encode("Az09-_.~") == "Az09-_.~"


def test_botocore_encodes_the_user_like_sigv4_in_the_token():
    by_user = {vector["user"]: vector["token"] for vector in VECTOR_LIST if vector["port"] == 5432}
    assert "&DBUser=db%C3%BCser&" in by_user["dbüser"]
    assert "&DBUser=with%20space&" in by_user["with space"]
    assert "&DBUser=a%26b%3Dc&" in by_user["a&b=c"]
    assert "&DBUser=user%2Bplus&" in by_user["user+plus"]
    assert "&DBUser=x%2Fy&" in by_user["x/y"]
    assert "&DBUser=app%40corp&" in by_user["app@corp"]


def test_session_token_is_percent_encoded_in_the_token():
    vector = next(x for x in VECTOR_LIST if x["name"] == "session-credentials")
    encoded = v.uri_encode(vector["session_token"])
    assert "%2B" in encoded and "%2F" in encoded and "%3D" in encoded
    assert f"&X-Amz-Security-Token={encoded}&" in vector["token"]


def test_signed_host_header_keeps_the_port_except_443():
    assert v.canonical_host_header("Db.Example.COM", 5432) == "db.example.com:5432"
    assert v.canonical_host_header("db.example.com", 443) == "db.example.com"
    vector = next(x for x in VECTOR_LIST if x["port"] == 443)
    parsed = v.parse_token(vector["token"])
    params = parsed.params
    with_port = v.canonical_request(params, f"{vector['host']}:443", v.EMPTY_PAYLOAD_SHA256)
    without_port = v.canonical_request(params, vector["host"], v.EMPTY_PAYLOAD_SHA256)
    assert with_port != without_port
    assert v.compute_signature(vector["secret_access_key"], params, vector["host"], 443) == params["X-Amz-Signature"]


def test_upper_case_host_is_kept_in_the_token_but_signed_lower_case():
    vector = next(x for x in VECTOR_LIST if x["name"] == "upper-case-host")
    assert vector["token"].startswith(vector["host"] + ":5432/?")
    assert check(vector, endpoints=[f"{vector['host'].lower()}:5432"]) == (True, v.R_OK)


def test_signing_key_matches_the_aws_documentation_example():
    key = v.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_payload_hash_is_sha256_of_the_empty_string():
    assert v.EMPTY_PAYLOAD_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ---------------------------------------------------------------------------
# Variants made with botocore's SigV4QueryAuth

WHEN = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
AKID, SECRET = "AKIAUNITTEST00000001", "unit/test/secret/key/0000000000000000000"
HOST, PORT, USER, REGION = "db.cluster-abc.us-east-1.rds.amazonaws.com", 5432, "iam_dbuser", "us-east-1"


def verify_variant(token: str, user: str = USER):
    return v.verify_token(
        token,
        user,
        keys=v.KeyStore({AKID: (SECRET, None)}),
        endpoints=[f"{HOST}:{PORT}"],
        region=REGION,
        now=WHEN.timestamp() + 1,
    )


def make_variant(**kwargs) -> str:
    return presign(AKID, SECRET, None, HOST, PORT, kwargs.pop("user", USER), kwargs.pop("region", REGION),
                   when=WHEN, **kwargs)


def test_presign_helper_equals_generate_db_auth_token():
    for user in (USER, "dbüser", "a&b=c"):
        expected = rds_token(AKID, SECRET, None, HOST, PORT, user, REGION, when=WHEN)
        assert make_variant(user=user) == expected
        assert verify_variant(expected, user) == (True, v.R_OK)


@pytest.mark.parametrize(
    "variant, reason",
    [
        ({"unsigned_payload": True}, v.R_UNSIGNED_PAYLOAD),
        ({"service": "rds"}, v.R_WRONG_SERVICE),
        ({"action": "disconnect"}, v.R_WRONG_ACTION),
        ({"expires": 901}, v.R_EXPIRES_TOO_LONG),
        ({"expires": 3600}, v.R_EXPIRES_TOO_LONG),
        ({"region": "us-west-2"}, v.R_WRONG_REGION),
    ],
)
def test_variants_are_refused_with_their_reason(variant, reason):
    assert verify_variant(make_variant(**variant)) == (False, reason)


def test_shorter_expiry_is_accepted_and_enforced():
    token = make_variant(expires=60)
    assert verify_variant(token) == (True, v.R_OK)
    assert v.verify_token(token, USER, keys=v.KeyStore({AKID: (SECRET, None)}), endpoints=[f"{HOST}:{PORT}"],
                          region=REGION, now=WHEN.timestamp() + 61) == (False, v.R_EXPIRED)


@functools.lru_cache(maxsize=None)
def good_token() -> str:
    return make_variant()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "not a token",
        lambda t: "https://" + t,
        lambda t: t.replace(f":{PORT}/", "/", 1),
        lambda t: t.replace("/?", "?", 1),
        lambda t: t.replace("X-Amz-Date=", "X-Amz-Dates=", 1),
        lambda t: t + "&Action=connect",
        lambda t: t.replace("DBUser=iam_dbuser", "DBUser=iam%zzdbuser", 1),
        lambda t: t.replace("DBUser=iam_dbuser", "DBUser=iam%FFdbuser", 1),
        lambda t: t.replace("X-Amz-Expires=900", "X-Amz-Expires=abc", 1),
        lambda t: t.replace("%2Faws4_request", "%2Faws5_request", 1),
        lambda t: t.replace("&X-Amz-Signature=", "&X-Amz-Signature=zz", 1),
        lambda t: t + " ",
        lambda t: t.replace("iam_dbuser", "iam_dbüser", 1),
    ],
    ids=[
        "empty", "garbage", "with-scheme", "no-port", "no-path", "missing-date", "duplicate-param",
        "bad-percent", "invalid-utf8", "bad-expires", "bad-scope-terminator", "bad-signature-format",
        "trailing-space", "raw-non-ascii",
    ],
)
def test_malformed_tokens_are_refused(mangle):
    assert verify_variant(mangle(good_token())) == (False, v.R_MALFORMED)


def test_equivalent_percent_encodings_verify():
    """The verifier decodes and re-encodes (as AWS does), so lower-case hex escapes verify too."""
    token = make_variant(user="dbüser")
    assert "db%C3%BCser" in token
    assert verify_variant(token.replace("db%C3%BCser", "db%c3%bcser"), "dbüser") == (True, v.R_OK)


def test_moto_assumed_role_credentials_are_found_in_process():
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        creds = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/lab", RoleSessionName="unit")["Credentials"]
        store = v.KeyStore(use_moto=True)
        assert store.lookup(creds["AccessKeyId"]) == (creds["SecretAccessKey"], creds["SessionToken"])
        assert store.lookup("ASIANOTFROMMOTO00000") is None
        assert v.KeyStore(use_moto=False).lookup(creds["AccessKeyId"]) is None
