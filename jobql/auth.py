"""Bearer tokens: JWT signed with HS256, claims `sub` (the user) and `scope`."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt

from jobql.jobs import utcnow

if TYPE_CHECKING:
    from datetime import timedelta

ALGORITHM = "HS256"
SCOPE_SEND_EMAIL = "email:send"
ALL_SCOPES = (SCOPE_SEND_EMAIL,)


class InvalidToken(Exception):
    """The credentials are missing, malformed, badly signed or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    scopes: frozenset[str]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def issue_token(
    secret_key: str, user_id: str, scopes: tuple[str, ...] = (), ttl: timedelta | None = None
) -> str:
    claims: dict[str, object] = {"sub": user_id, "scope": " ".join(scopes), "iat": utcnow()}
    if ttl is not None:
        claims["exp"] = utcnow() + ttl
    return jwt.encode(claims, secret_key, algorithm=ALGORITHM)


def decode_token(secret_key: str, token: str) -> Principal:
    return _decode(secret_key, token)[0]


def _decode(secret_key: str, token: str) -> tuple[Principal, float | None]:
    """The principal and the expiry time (a Unix time, None if the token has none)."""
    try:
        claims = jwt.decode(token, secret_key, algorithms=[ALGORITHM], options={"require": ["sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("The token has expired.") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("The token is not valid.") from exc
    user_id, scope, expires = claims["sub"], claims.get("scope", ""), claims.get("exp")
    if not isinstance(user_id, str) or not user_id or not isinstance(scope, str):
        raise InvalidToken("The token is not valid.")
    try:
        # PyJWT accepts anything int() takes, a string included; so does this.
        expires_at = None if expires is None else float(int(expires))
    except (TypeError, ValueError) as exc:
        raise InvalidToken("The token is not valid.") from exc
    return Principal(user_id=user_id, scopes=frozenset(scope.split())), expires_at


class TokenVerifier:
    """Checks bearer tokens for one web process.

    A token seen before is not verified again (an HMAC and a JSON decode each time)
    until it expires: the answer for a given token string cannot change otherwise.
    """

    def __init__(self, secret_key: str, cache_size: int = 4096) -> None:
        self.secret_key = secret_key
        self.cache_size = cache_size
        self._known: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()

    def principal(self, authorization: object) -> Principal:
        """The caller named by an `Authorization: Bearer <token>` value."""
        if not isinstance(authorization, str) or not authorization.strip():
            raise InvalidToken("No token: send 'Authorization: Bearer <token>'.")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("Send the token as 'Authorization: Bearer <token>'.")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        known = self._known.get(token)
        if known is not None:
            principal, expires_at = known
            if expires_at is None or time.time() < expires_at:
                self._known.move_to_end(token)
                return principal
            del self._known[token]
            raise InvalidToken("The token has expired.")
        principal, expires_at = _decode(self.secret_key, token)
        self._known[token] = (principal, expires_at)
        if len(self._known) > self.cache_size:
            self._known.popitem(last=False)
        return principal
