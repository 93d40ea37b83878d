"""Bearer tokens: JWT signed with HS256, claims `sub` (the user) and `scope`."""

from __future__ import annotations

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
    try:
        claims = jwt.decode(token, secret_key, algorithms=[ALGORITHM], options={"require": ["sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("The token has expired.") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("The token is not valid.") from exc
    user_id, scope = claims["sub"], claims.get("scope", "")
    if not isinstance(user_id, str) or not user_id or not isinstance(scope, str):
        raise InvalidToken("The token is not valid.")
    return Principal(user_id=user_id, scopes=frozenset(scope.split()))


def principal_from_authorization(secret_key: str, authorization: object) -> Principal:
    """Check an `Authorization: Bearer <token>` value (from a header or `connection_init`)."""
    if not isinstance(authorization, str) or not authorization.strip():
        raise InvalidToken("No token: send 'Authorization: Bearer <token>'.")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Send the token as 'Authorization: Bearer <token>'.")
    return decode_token(secret_key, token.strip())
