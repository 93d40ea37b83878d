"""What every resolver is given: the caller's credentials and the process's services."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from strawberry.fastapi import BaseContext

from jobql.auth import InvalidToken, Principal, TokenVerifier
from jobql.errors import ServiceUnavailable, Unauthenticated
from jobql.watcher import WatchLost

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobql.rate_limit import MutationRateLimit
    from jobql.settings import Settings
    from jobql.store import JobStore
    from jobql.watcher import JobWatcher


@dataclass(frozen=True, slots=True)
class Services:
    """Built once per web process and shared by every request."""

    settings: Settings
    tokens: TokenVerifier
    store: JobStore
    watcher: JobWatcher
    rate_limit: MutationRateLimit


class Context(BaseContext):
    def __init__(self, services: Services, authorization: str | None) -> None:
        super().__init__()
        self.services = services
        self.authorization = authorization
        self._principal: Principal | None = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> JobStore:
        return self.services.store

    @property
    def watcher(self) -> JobWatcher:
        return self.services.watcher

    @property
    def rate_limit(self) -> MutationRateLimit:
        return self.services.rate_limit

    def authenticate(self, authorization: object) -> Principal:
        """Check credentials and remember who they name; raise `InvalidToken` if they are bad."""
        self._principal = self.services.tokens.principal(authorization)
        return self._principal

    @contextlib.contextmanager
    def redis_errors_as_unavailable(self) -> Iterator[None]:
        """Answer a failed Redis call as SERVICE_UNAVAILABLE, and have the watcher make sure
        its own connection still answers (open subscriptions end if it does not)."""
        try:
            yield
        except (RedisError, WatchLost, TimeoutError) as exc:
            self.watcher.suspect()
            raise ServiceUnavailable("The job store is unreachable; try again shortly.") from exc

    def principal(self) -> Principal:
        """The caller, or `UNAUTHENTICATED`: every operation needs a valid token."""
        if self._principal is not None:
            return self._principal
        try:
            return self.authenticate(self.authorization)
        except InvalidToken as exc:
            raise Unauthenticated(str(exc)) from exc
