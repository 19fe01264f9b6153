"""Independent verifier for RDS IAM database authentication tokens.

Written from the AWS Signature Version 4 specification (presigned/query
string form), using only the standard library.  It deliberately does not use
botocore's signer: botocore is only used by the tests to *make* tokens, so a
token that passes here was checked by a second, separate implementation.

Token shape (no scheme; exactly what ``generate_db_auth_token`` returns)::

    <host>:<port>/?Action=connect&DBUser=<user>&X-Amz-Algorithm=AWS4-HMAC-SHA256
        &X-Amz-Credential=<AKID>%2F<yyyymmdd>%2F<region>%2Frds-db%2Faws4_request
        &X-Amz-Date=<yyyymmddThhmmssZ>&X-Amz-Expires=900
        [&X-Amz-Security-Token=<session token>]
        &X-Amz-SignedHeaders=host&X-Amz-Signature=<64 hex>

What is signed (SigV4):

* canonical request = ``GET\\n/\\n<canonical query>\\nhost:<host header>\\n\\nhost\\n<payload hash>``
  where the canonical query is every parameter except X-Amz-Signature, each
  key and value URI-encoded (unreserved ``A-Za-z0-9-_.~`` kept, everything
  else ``%XX`` upper case, UTF-8), sorted; the host header is the lower-case
  host followed by ``:<port>`` unless the port is 443 (botocore leaves the
  default https port out); the payload hash is SHA-256 of the empty string.
* string to sign = ``AWS4-HMAC-SHA256\\n<X-Amz-Date>\\n<scope>\\n<hex sha256(canonical request)>``
* signing key = HMAC chain ``"AWS4"+secret -> date -> region -> service -> "aws4_request"``.

``verify_token`` returns ``(ok, reason)``; every refusal has its own reason
(see the ``R_*`` constants) so the tests can tell them apart.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Tuple
from urllib.parse import quote, unquote

# ---------------------------------------------------------------------------
# Reasons (stable strings: the stand-in writes them to decisions.jsonl).
R_OK = "ok"
R_MALFORMED = "malformed"
R_WRONG_ACTION = "wrong_action"
R_BAD_ALGORITHM = "bad_algorithm"
R_BAD_SIGNED_HEADERS = "bad_signed_headers"
R_WRONG_SERVICE = "wrong_service"
R_WRONG_REGION = "wrong_region"
R_WRONG_ENDPOINT = "wrong_endpoint"
R_WRONG_USER = "wrong_user"
R_EXPIRES_TOO_LONG = "expires_too_long"
R_EXPIRED = "expired"
R_REVOKED = "revoked"
R_NOT_YET_VALID = "not_yet_valid"
R_UNKNOWN_KEY = "unknown_key"
R_BAD_SESSION_TOKEN = "bad_session_token"
R_UNSIGNED_PAYLOAD = "unsigned_payload"
R_BAD_SIGNATURE = "bad_signature"

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "rds-db"
MAX_EXPIRES_SECONDS = 900
DEFAULT_MAX_FUTURE_SKEW_SECONDS = 300
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

REQUIRED_PARAMS = (
    "Action",
    "DBUser",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_PORT = re.compile(r"^\d{1,5}$")


class TokenError(Exception):
    """A token was refused; ``reason`` is one of the ``R_*`` constants."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Key store


class KeyStore:
    """Access key id -> (secret access key, session token or None).

    With ``use_moto=True`` keys that moto's in-process STS backend handed out
    through AssumeRole (ASIA... keys) are found too, but only when moto is
    already imported in this process (the stand-in's ``--sts`` mode).
    """

    def __init__(
        self,
        keys: Optional[Mapping[str, Tuple[str, Optional[str]]]] = None,
        use_moto: bool = False,
    ):
        self._lock = threading.Lock()
        self._keys = dict(keys or {})
        self._use_moto = use_moto

    def add(self, access_key_id: str, secret: str, session_token: Optional[str] = None) -> None:
        """Add or replace one key."""
        with self._lock:
            self._keys[access_key_id] = (secret, session_token)

    def lookup(self, access_key_id: str) -> Optional[Tuple[str, Optional[str]]]:
        """Return (secret, session_token) or None when the key is unknown."""
        with self._lock:
            found = self._keys.get(access_key_id)
        if found is None and self._use_moto:
            found = moto_assumed_role_lookup(access_key_id)
        return found


def moto_assumed_role_lookup(access_key_id: str) -> Optional[Tuple[str, Optional[str]]]:
    """Find credentials handed out by moto's STS AssumeRole in this process.

    moto 5 keeps them as ``AssumedRole`` objects (access_key_id,
    secret_access_key, session_token) in ``STSBackend.assumed_roles``, where
    ``moto.sts.models.sts_backends[account_id][partition]`` is the backend.
    The plain ``dict`` views are used so no backend gets created on lookup.
    """
    models = sys.modules.get("moto.sts.models")
    if models is None:
        return None
    for account_backends in list(dict.values(models.sts_backends)):
        for backend in list(dict.values(account_backends)):
            for role in list(getattr(backend, "assumed_roles", [])):
                if role.access_key_id == access_key_id:
                    return role.secret_access_key, role.session_token
    return None


# ---------------------------------------------------------------------------
# SigV4 primitives


def uri_encode(text: str) -> str:
    """SigV4 URI encoding: keep A-Za-z0-9-_.~, %XX (upper case) the rest."""
    return quote(text.encode("utf-8"), safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted, encoded ``k=v`` pairs joined with '&' (signature excluded)."""
    pairs = sorted(
        (uri_encode(k), uri_encode(v)) for k, v in params.items() if k != "X-Amz-Signature"
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_host_header(host: str, port: int) -> str:
    """Value of the signed ``host`` header: lower-case host, port unless 443."""
    host = host.lower()
    return host if port == 443 else f"{host}:{port}"


def canonical_request(params: Mapping[str, str], host_header: str, payload_hash: str) -> str:
    """The SigV4 canonical request for the token's GET / request."""
    return "\n".join(
        [
            "GET",
            "/",
            canonical_query(params),
            f"host:{host_header}",
            "",
            "host",
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The SigV4 string to sign."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join([ALGORITHM, amz_date, scope, digest])


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date8: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
    k_date = _hmac(("AWS4" + secret).encode("utf-8"), date8)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def compute_signature(
    secret: str,
    params: Mapping[str, str],
    host: str,
    port: int,
    payload_hash: str = EMPTY_PAYLOAD_SHA256,
) -> str:
    """Hex signature for decoded token params (X-Amz-Credential etc. included)."""
    _akid, date8, region, service, _term = params["X-Amz-Credential"].split("/")
    scope = f"{date8}/{region}/{service}/aws4_request"
    canonical = canonical_request(params, canonical_host_header(host, port), payload_hash)
    sts = string_to_sign(params["X-Amz-Date"], scope, canonical)
    return hmac.new(signing_key(secret, date8, region, service), sts.encode("utf-8"), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------
# Parsing


@dataclass
class ParsedToken:
    """A syntactically valid token, query values percent-decoded."""

    host: str
    port: int
    params: dict

    @property
    def endpoint(self) -> str:
        return f"{self.host.lower()}:{self.port}"


def _split_authority(authority: str) -> Tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0 or authority[end + 1 : end + 2] != ":":
            raise TokenError(R_MALFORMED, "bad IPv6 authority")
        host, port_text = authority[: end + 1], authority[end + 2 :]
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            raise TokenError(R_MALFORMED, "no port")
    if not host or not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise TokenError(R_MALFORMED, "bad host or port")
    return host, int(port_text)


def _decode_component(text: str) -> str:
    if _BAD_PERCENT.search(text):
        raise TokenError(R_MALFORMED, "bad percent escape")
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise TokenError(R_MALFORMED, "invalid UTF-8") from exc


def _parse_query(query: str) -> dict:
    params: dict = {}
    for pair in query.split("&"):
        key_raw, eq, value_raw = pair.partition("=")
        if not eq or not key_raw:
            raise TokenError(R_MALFORMED, "bad query parameter")
        key = _decode_component(key_raw)
        if key in params:
            raise TokenError(R_MALFORMED, f"duplicate parameter {key}")
        params[key] = _decode_component(value_raw)
    missing = [p for p in REQUIRED_PARAMS if p not in params]
    if missing:
        raise TokenError(R_MALFORMED, f"missing {', '.join(missing)}")
    return params


def parse_token(token: str) -> ParsedToken:
    """Split ``host:port/?query`` and decode the query; raise TokenError."""
    if not token or not token.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in token):
        raise TokenError(R_MALFORMED, "empty, non-ASCII or whitespace")
    if "://" in token.split("?", 1)[0]:
        raise TokenError(R_MALFORMED, "token must not carry a scheme")
    authority, slash, rest = token.partition("/")
    if not slash or not rest.startswith("?") or "#" in rest:
        raise TokenError(R_MALFORMED, "expected host:port/?query")
    host, port = _split_authority(authority)
    return ParsedToken(host=host, port=port, params=_parse_query(rest[1:]))


def _parse_amz_date(amz_date: str) -> int:
    if not _AMZ_DATE.match(amz_date):
        raise TokenError(R_MALFORMED, "bad X-Amz-Date")
    try:
        parsed = time.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError as exc:
        raise TokenError(R_MALFORMED, "bad X-Amz-Date") from exc
    return calendar.timegm(parsed)


# ---------------------------------------------------------------------------
# Verification


def _check_scope(params: dict, region: str) -> Tuple[str, str]:
    """Validate X-Amz-Credential; return (access key id, date8)."""
    parts = params["X-Amz-Credential"].split("/")
    if len(parts) != 5 or not all(parts) or parts[4] != "aws4_request":
        raise TokenError(R_MALFORMED, "bad X-Amz-Credential")
    akid, date8, scope_region, service, _ = parts
    if service != SERVICE:
        raise TokenError(R_WRONG_SERVICE, service)
    if scope_region != region:
        raise TokenError(R_WRONG_REGION, scope_region)
    if params["X-Amz-Date"][:8] != date8:
        raise TokenError(R_MALFORMED, "credential scope date differs from X-Amz-Date")
    return akid, date8


def _check_time(params: dict, now: float, max_future_skew: int) -> None:
    expires_text = params["X-Amz-Expires"]
    if not expires_text.isdigit() or int(expires_text) <= 0:
        raise TokenError(R_MALFORMED, "bad X-Amz-Expires")
    expires = int(expires_text)
    if expires > MAX_EXPIRES_SECONDS:
        raise TokenError(R_EXPIRES_TOO_LONG, str(expires))
    signed_at = _parse_amz_date(params["X-Amz-Date"])
    if signed_at > now + max_future_skew:
        raise TokenError(R_NOT_YET_VALID, "signed in the future")
    if now > signed_at + expires:
        raise TokenError(R_EXPIRED, "")


def _check_credentials(params: dict, akid: str, keys: KeyStore) -> str:
    """Look the key up and check the session token; return the secret."""
    found = keys.lookup(akid)
    if found is None:
        raise TokenError(R_UNKNOWN_KEY, akid)
    secret, session_token = found
    if params.get("X-Amz-Security-Token") != session_token:
        raise TokenError(R_BAD_SESSION_TOKEN, "")
    return secret


def _check_signature(parsed: ParsedToken, secret: str) -> None:
    given = parsed.params["X-Amz-Signature"]
    if not _SIGNATURE.match(given):
        raise TokenError(R_MALFORMED, "bad X-Amz-Signature")
    expected = compute_signature(secret, parsed.params, parsed.host, parsed.port)
    if hmac.compare_digest(given, expected):
        return
    unsigned = compute_signature(secret, parsed.params, parsed.host, parsed.port, UNSIGNED_PAYLOAD)
    if hmac.compare_digest(given, unsigned):
        raise TokenError(R_UNSIGNED_PAYLOAD, "signed with UNSIGNED-PAYLOAD")
    raise TokenError(R_BAD_SIGNATURE, "")


def check_token(
    token: str,
    login_user: str,
    *,
    keys: KeyStore,
    endpoints: Iterable[str],
    region: str,
    now: float,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
) -> None:
    """Raise TokenError unless ``token`` lets ``login_user`` connect."""
    parsed = parse_token(token)
    params = parsed.params
    if params["Action"] != "connect":
        raise TokenError(R_WRONG_ACTION, params["Action"])
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise TokenError(R_BAD_ALGORITHM, params["X-Amz-Algorithm"])
    if params["X-Amz-SignedHeaders"] != "host":
        raise TokenError(R_BAD_SIGNED_HEADERS, params["X-Amz-SignedHeaders"])
    akid, _date8 = _check_scope(params, region)
    if parsed.endpoint not in {e.lower() for e in endpoints}:
        raise TokenError(R_WRONG_ENDPOINT, parsed.endpoint)
    if params["DBUser"] != login_user:
        raise TokenError(R_WRONG_USER, "")
    _check_time(params, now, max_future_skew)
    secret = _check_credentials(params, akid, keys)
    _check_signature(parsed, secret)


def verify_token(
    token: str,
    login_user: str,
    *,
    keys: KeyStore,
    endpoints: Iterable[str],
    region: str,
    now: Optional[float] = None,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
) -> Tuple[bool, str]:
    """Return ``(True, "ok")`` or ``(False, reason)``; never raises on bad input."""
    try:
        check_token(
            token,
            login_user,
            keys=keys,
            endpoints=endpoints,
            region=region,
            now=time.time() if now is None else now,
            max_future_skew=max_future_skew,
        )
    except TokenError as exc:
        return False, exc.reason
    return True, R_OK


class Verifier:
    """A configured verifier with an adjustable clock (for expiry tests)."""

    def __init__(
        self,
        keys: KeyStore,
        endpoints: Iterable[str],
        region: str,
        clock: Callable[[], float] = time.time,
    ):
        self.keys = keys
        self.endpoints = frozenset(e.lower() for e in endpoints)
        self.region = region
        self._clock = clock
        self.skew_seconds = 0.0
        self.revoked_before: Optional[float] = None

    def now(self) -> float:
        """The verifier's notion of the current time (real clock + skew)."""
        return self._clock() + self.skew_seconds

    def verify(self, token: str, login_user: str) -> Tuple[bool, str]:
        """Verify one login attempt; valid tokens signed before ``revoked_before`` are refused
        as ``revoked`` (how tests make a cached token go bad while fresh ones work)."""
        ok, reason = verify_token(
            token, login_user, keys=self.keys, endpoints=self.endpoints, region=self.region, now=self.now()
        )
        if ok and self.revoked_before is not None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit("//" + token).query)
            signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
            if signed < self.revoked_before:
                return False, R_REVOKED
        return ok, reason
