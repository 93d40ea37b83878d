"""Bearer tokens: issuing, checking, and reading them from an Authorization value."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import jwt
import pytest
from pydantic import SecretStr

from jobql.auth import (
    ALGORITHM,
    SCOPE_SEND_EMAIL,
    InvalidToken,
    Principal,
    TokenVerifier,
    decode_token,
    issue_token,
)
from jobql.errors import Unauthenticated
from jobql.jobs import utcnow
from jobql.resolvers.context import Context
from jobql.settings import MissingSecretKey, Settings

if TYPE_CHECKING:
    from jobql.resolvers.context import Services

SECRET = "unit-test-secret-key-that-is-long-enough-for-hs256"
OTHER_SECRET = "another-secret-key-that-is-also-long-enough-for-hs256"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, object], alg: str = "none") -> str:
    """A token with no signature, built by hand so no library can refuse to make it."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}."


def test_round_trip_keeps_user_and_scopes() -> None:
    token = issue_token(SECRET, "user-42", (SCOPE_SEND_EMAIL, "other:scope"))
    principal = decode_token(SECRET, token)
    assert principal == Principal("user-42", frozenset({SCOPE_SEND_EMAIL, "other:scope"}))
    assert principal.has_scope(SCOPE_SEND_EMAIL)
    assert principal.has_scope("other:scope")
    assert not principal.has_scope("admin")


def test_round_trip_without_scopes() -> None:
    principal = decode_token(SECRET, issue_token(SECRET, "user-1"))
    assert principal.user_id == "user-1"
    assert principal.scopes == frozenset()
    assert not principal.has_scope(SCOPE_SEND_EMAIL)


def test_issued_token_is_hs256_with_sub_scope_and_exp() -> None:
    token = issue_token(SECRET, "user-1", (SCOPE_SEND_EMAIL,), ttl=timedelta(minutes=5))
    assert jwt.get_unverified_header(token)["alg"] == ALGORITHM == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "user-1"
    assert claims["scope"] == SCOPE_SEND_EMAIL
    now = utcnow().timestamp()
    assert now + 240 < claims["exp"] <= now + 301
    assert claims["iat"] <= now + 1


def test_token_with_ttl_is_valid_before_it_expires() -> None:
    token = issue_token(SECRET, "user-1", ttl=timedelta(minutes=5))
    assert decode_token(SECRET, token).user_id == "user-1"


def test_expired_token_is_invalid() -> None:
    token = issue_token(SECRET, "user-1", (SCOPE_SEND_EMAIL,), ttl=timedelta(seconds=-1))
    with pytest.raises(InvalidToken, match="expired"):
        decode_token(SECRET, token)


def test_wrong_secret_is_invalid() -> None:
    token = issue_token(OTHER_SECRET, "user-1", (SCOPE_SEND_EMAIL,))
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_token_is_invalid(alg: str) -> None:
    token = unsigned_token({"sub": "admin", "scope": SCOPE_SEND_EMAIL}, alg)
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


def test_pyjwt_none_token_is_invalid() -> None:
    token = jwt.encode({"sub": "admin", "scope": SCOPE_SEND_EMAIL}, "", algorithm="none")
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


def test_other_algorithm_with_the_same_secret_is_invalid() -> None:
    token = jwt.encode({"sub": "user-1"}, SECRET, algorithm="HS384")
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


def test_tampered_payload_is_invalid() -> None:
    token = issue_token(SECRET, "user-1")
    header, _, signature = token.split(".")
    payload = b64url(json.dumps({"sub": "admin", "scope": SCOPE_SEND_EMAIL}).encode())
    with pytest.raises(InvalidToken):
        decode_token(SECRET, f"{header}.{payload}.{signature}")


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": SCOPE_SEND_EMAIL},
        {"sub": "", "scope": ""},
        {"sub": None},
        {"sub": 42},
        {"sub": ["user-1"]},
        {"sub": "user-1", "scope": ["email:send"]},
        {"sub": "user-1", "scope": 1},
    ],
)
def test_token_without_a_usable_sub_or_scope_is_invalid(claims: dict[str, object]) -> None:
    token = jwt.encode(claims, SECRET, algorithm=ALGORITHM)
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...."])
def test_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


def test_error_is_not_a_pyjwt_error() -> None:
    with pytest.raises(InvalidToken) as raised:
        decode_token(SECRET, "garbage")
    assert not isinstance(raised.value, jwt.PyJWTError)


# --- Authorization values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "", "   ", "Basic abc", "Bearer", "Bearer ", "Bearer    ", 123, {}]
)
def test_missing_or_wrong_authorization_is_invalid(authorization: object) -> None:
    with pytest.raises(InvalidToken):
        TokenVerifier(SECRET).principal(authorization)


def test_basic_with_a_valid_token_is_still_invalid() -> None:
    token = issue_token(SECRET, "user-1")
    with pytest.raises(InvalidToken):
        TokenVerifier(SECRET).principal(f"Basic {token}")


def test_token_without_scheme_is_invalid() -> None:
    with pytest.raises(InvalidToken):
        TokenVerifier(SECRET).principal(issue_token(SECRET, "user-1"))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    token = issue_token(SECRET, "user-7", (SCOPE_SEND_EMAIL,))
    principal = TokenVerifier(SECRET).principal(f"{scheme} {token}")
    assert principal == Principal("user-7", frozenset({SCOPE_SEND_EMAIL}))


def test_surrounding_whitespace_is_ignored() -> None:
    token = issue_token(SECRET, "user-7")
    assert TokenVerifier(SECRET).principal(f"  Bearer   {token}  ").user_id == "user-7"


def test_bearer_with_a_bad_token_is_invalid() -> None:
    token = issue_token(OTHER_SECRET, "user-7")
    with pytest.raises(InvalidToken):
        TokenVerifier(SECRET).principal(f"Bearer {token}")


def test_cached_token_with_a_string_exp_still_expires() -> None:
    expires = int(time.time()) + 1
    token = jwt.encode({"sub": "u", "scope": "", "exp": str(expires)}, SECRET, algorithm="HS256")
    verifier = TokenVerifier(SECRET)
    assert verifier.verify(token).user_id == "u"

    time.sleep(max(0.0, expires - time.time()) + 0.2)

    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_a_token_seen_before_is_answered_from_the_cache_until_it_expires() -> None:
    token = issue_token(SECRET, "cached", (SCOPE_SEND_EMAIL,), ttl=timedelta(seconds=60))
    verifier = TokenVerifier(SECRET)
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    assert verifier.principal(f"Bearer {token}") is first


# --- expiry, subjects, keys -----------------------------------------------------------------


def test_a_token_without_exp_is_refused_unless_allowed() -> None:
    token = issue_token(SECRET, "forever", ttl=None)
    with pytest.raises(InvalidToken, match="'exp'"):
        TokenVerifier(SECRET).verify(token)
    principal = TokenVerifier(SECRET, require_exp=False).verify(token)
    assert principal.user_id == "forever"
    assert principal.expires_at is None


def test_issued_tokens_expire_after_an_hour_by_default() -> None:
    claims = jwt.decode(issue_token(SECRET, "u"), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


def test_the_principal_knows_when_its_token_expires() -> None:
    principal = TokenVerifier(SECRET).verify(issue_token(SECRET, "u", ttl=timedelta(seconds=90)))
    assert principal.expires_at is not None
    assert 80 < principal.expires_at - time.time() <= 90
    assert not principal.expired()


@pytest.mark.parametrize(
    "user_id",
    ["", " ", "   ", "x" * 256, "x" * 10_000, "a\x00b", "line\nbreak", "tab\there", "\u202e"],
    ids=["empty", "space", "spaces", "256", "10k", "nul", "newline", "tab", "rlo"],
)
def test_a_sub_that_is_not_1_to_255_printable_characters_is_refused(user_id: str) -> None:
    with pytest.raises(InvalidToken, match="1 to 255 printable"):
        TokenVerifier(SECRET).verify(issue_token(SECRET, user_id))


@pytest.mark.parametrize("user_id", ["a", "x" * 255, "user 42", "ünïcode"])
def test_a_sub_of_1_to_255_printable_characters_is_accepted(user_id: str) -> None:
    assert TokenVerifier(SECRET).verify(issue_token(SECRET, user_id)).user_id == user_id


@pytest.mark.parametrize("key", ["x", "short-key", "k" * 31, "é" * 15])
def test_a_secret_key_under_32_bytes_is_refused(key: str) -> None:
    with pytest.raises(MissingSecretKey, match="at least 32"):
        Settings(secret_key=SecretStr(key)).require_secret_key()


def test_a_secret_key_of_32_bytes_is_accepted() -> None:
    assert Settings(secret_key=SecretStr("k" * 32)).require_secret_key() == "k" * 32


def test_a_connections_token_is_checked_for_expiry_at_every_operation() -> None:
    """A WebSocket authenticates once, at connection_init; each operation on it asks again."""
    services = cast("Services", SimpleNamespace(tokens=TokenVerifier(SECRET)))
    context = Context(services, authorization=None)
    context.authenticate(f"Bearer {issue_token(SECRET, 'ws-user', ttl=timedelta(seconds=1))}")
    assert context.principal().user_id == "ws-user"

    time.sleep(1.1)

    with pytest.raises(Unauthenticated, match="expired"):
        context.principal()
