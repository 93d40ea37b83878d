"""Bearer tokens: JWT with claims `sub` (the user) and `scope`; signed by jobql with HS256 and
`JOBQL_SECRET_KEY`, or by an identity provider with RS256 or ES256 and a key it publishes."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import jwt

from jobql.jobs import utcnow

if TYPE_CHECKING:
    from jobql.provider_keys import ProviderKeys

ALGORITHM = "HS256"
PROVIDER_ALGORITHMS = ("RS256", "ES256")
SCOPE_SEND_EMAIL = "email:send"
ALL_SCOPES = (SCOPE_SEND_EMAIL,)
DEFAULT_TTL = timedelta(hours=1)
MAX_USER_ID_LENGTH = 255


class InvalidToken(Exception):
    """The credentials are missing, malformed, badly signed or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    scopes: frozenset[str]
    # A Unix time; None for a token without `exp` (accepted only where allowed).
    expires_at: float | None = field(default=None, compare=False)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


def issue_token(
    secret_key: str,
    user_id: str,
    scopes: tuple[str, ...] = (),
    ttl: timedelta | None = DEFAULT_TTL,
) -> str:
    """A token for `user_id`; `ttl=None` makes one without `exp`, which jobql refuses unless
    `JOBQL_ALLOW_NON_EXPIRING_TOKENS` is set."""
    claims: dict[str, object] = {"sub": user_id, "scope": " ".join(scopes), "iat": utcnow()}
    if ttl is not None:
        claims["exp"] = utcnow() + ttl
    return jwt.encode(claims, secret_key, algorithm=ALGORITHM)


def decode_token(secret_key: str, token: str, require_exp: bool = True) -> Principal:
    return TokenVerifier(secret_key, require_exp=require_exp).verify(token)


class TokenVerifier:
    """Checks bearer tokens for one web process.

    A token seen before is not verified again (a signature check and a JSON decode each time)
    until it expires: the answer for a given token string cannot change otherwise.
    """

    def __init__(
        self,
        secret_key: str,
        *,
        require_exp: bool = True,
        provider: ProviderKeys | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.secret_key = secret_key
        self.require_exp = require_exp
        self.provider = provider
        self.issuer = issuer
        self.audience = audience
        self.cache_size = cache_size
        self._known: OrderedDict[str, Principal] = OrderedDict()

    def principal(self, authorization: object) -> Principal:
        """The caller named by an `Authorization: Bearer <token>` value."""
        return self.verify(_bearer(authorization))

    async def prepare(self, authorization: object) -> None:
        """Fetch the provider's key a token names, if it is not known yet, so that `principal`
        (which never waits) can check it."""
        if self.provider is None:
            return
        try:
            token = _bearer(authorization)
            if token in self._known:
                return
            header = jwt.get_unverified_header(token)
        except (InvalidToken, jwt.PyJWTError):
            return
        key_id = header.get("kid")
        if header.get("alg") in PROVIDER_ALGORITHMS and isinstance(key_id, str):
            await self.provider.ensure(key_id)

    def verify(self, token: str) -> Principal:
        known = self._known.get(token)
        if known is not None:
            if not known.expired():
                self._known.move_to_end(token)
                return known
            del self._known[token]
            raise InvalidToken("The token has expired.")
        principal = self._decode(token)
        self._known[token] = principal
        if len(self._known) > self.cache_size:
            self._known.popitem(last=False)
        return principal

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, **self._verification(token))
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("The token has expired.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"The token has no '{exc.claim}' claim.") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("The token is not valid.") from exc
        user_id, scope, expires = claims["sub"], claims.get("scope", ""), claims.get("exp")
        if not isinstance(scope, str):
            raise InvalidToken("The token is not valid.")
        _check_user_id(user_id)
        try:
            # PyJWT accepts anything int() takes, a string included; so does this.
            expires_at = None if expires is None else float(int(expires))
        except (TypeError, ValueError) as exc:
            raise InvalidToken("The token is not valid.") from exc
        return Principal(user_id, frozenset(scope.split()), expires_at)

    def _verification(self, token: str) -> dict[str, Any]:
        """The key, algorithm and claims a token must be checked with, by its header's `alg`:
        jobql's secret for HS256 only, a provider's key for the algorithm of that key only."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("The token is not valid.") from exc
        required = ["sub", "exp"] if self.require_exp else ["sub"]
        if header.get("alg") == ALGORITHM:
            return {
                "key": self.secret_key,
                "algorithms": [ALGORITHM],
                "options": {"require": required, "verify_aud": False},
            }
        key_id = header.get("kid")
        key = self.provider.get(key_id) if self.provider and isinstance(key_id, str) else None
        algorithm = header.get("alg")
        if key is None or algorithm != key.algorithm_name or algorithm not in PROVIDER_ALGORITHMS:
            raise InvalidToken("The token is not signed by a key jobql knows.")
        if self.issuer is not None:
            required.append("iss")
        if self.audience is not None:
            required.append("aud")
        return {
            "key": key.key,
            "algorithms": [key.algorithm_name],
            "issuer": self.issuer,
            "audience": self.audience,
            "options": {"require": required, "verify_aud": self.audience is not None},
        }


def _bearer(authorization: object) -> str:
    if not isinstance(authorization, str) or not authorization.strip():
        raise InvalidToken("No token: send 'Authorization: Bearer <token>'.")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Send the token as 'Authorization: Bearer <token>'.")
    return token.strip()


def _check_user_id(user_id: object) -> None:
    """`sub` names a user in job records and rate-limit keys: 1..255 printable characters."""
    if (
        not isinstance(user_id, str)
        or not 1 <= len(user_id) <= MAX_USER_ID_LENGTH
        or not user_id.isprintable()
        or not user_id.strip()
    ):
        raise InvalidToken(
            f"The token's 'sub' must be 1 to {MAX_USER_ID_LENGTH} printable characters."
        )
