"""What every resolver is given: the caller's credentials and the process's services."""

from __future__ import annotations

import contextlib
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from strawberry.fastapi import BaseContext

from jobql.auth import InvalidToken, Principal, TokenVerifier
from jobql.callbacks import CallbackUrlRefused, checked_callback_url
from jobql.errors import BadUserInput, ServiceUnavailable, Unauthenticated
from jobql.jobs import Idempotency
from jobql.multipart import IncomingUpload
from jobql.store import AlreadyQueued
from jobql.watcher import WatchLost

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobql.jobs import Dedupe, JobSnapshot
    from jobql.listing import JobListing
    from jobql.metrics import WebMetrics
    from jobql.quotas import UserQuota
    from jobql.rate_limit import MutationRateLimit
    from jobql.reclaim import Reclaimer
    from jobql.registry import Kinds
    from jobql.settings import Settings
    from jobql.storage import Storage
    from jobql.store import JobStore
    from jobql.watcher import JobWatcher


# The `callbackUrl` of the mutation being resolved: the schema adds the argument to every
# kind's mutation and sets this around its resolver, so that `enqueue` finds it.
requested_callback_url: ContextVar[str | None] = ContextVar(
    "jobql_requested_callback_url", default=None
)


@dataclass(frozen=True, slots=True)
class Services:
    """Built once per web process and shared by every request."""

    settings: Settings
    tokens: TokenVerifier
    store: JobStore
    listing: JobListing
    watcher: JobWatcher
    rate_limit: MutationRateLimit
    kinds: Kinds
    subscriptions: UserQuota  # JOBQL_MAX_SUBSCRIPTIONS_PER_USER
    connections: UserQuota  # JOBQL_MAX_CONNECTIONS_PER_USER
    reclaimer: Reclaimer
    metrics: WebMetrics
    storage: Storage


class Context(BaseContext):
    def __init__(self, services: Services, authorization: str | None) -> None:
        super().__init__()
        self.services = services
        self.authorization = authorization
        self._principal: Principal | None = None
        self._rate_checked = False
        self._uploads: list[IncomingUpload] = []
        # The user a WebSocket counts against in `Services.connections`, once accepted.
        self.connection_user: str | None = None

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
    def metrics(self) -> WebMetrics:
        return self.services.metrics

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
        """The caller, or `UNAUTHENTICATED`: every operation needs a valid token, unexpired
        (a WebSocket's token is checked again at each operation)."""
        if self._principal is not None:
            if self._principal.expired():
                raise Unauthenticated("The token has expired.")
            return self._principal
        try:
            return self.authenticate(self.authorization)
        except InvalidToken as exc:
            raise Unauthenticated(str(exc)) from exc

    # --- what `jobql.kinds` offers a kind's mutation -----------------------------------------

    async def check_rate(self) -> None:
        """Count this request against the caller's rate limit, once."""
        if self._rate_checked:
            return
        user_id = self.principal().user_id
        with self.redis_errors_as_unavailable():
            await self.rate_limit.check(user_id)
        self._rate_checked = True

    def incoming_upload(self, file: object, field: str) -> tuple[str, str]:
        if not isinstance(file, IncomingUpload):
            raise BadUserInput(f"'{field}' must be a file sent as a multipart upload.", field=field)
        if file.claimed:
            raise BadUserInput("Each uploaded file can be used for one job only.", field=field)
        self._uploads.append(file)
        return file.id, file.name

    def upload_digest(self, file: object) -> str:
        assert isinstance(file, IncomingUpload), "checked by incoming_upload"
        return str(file.digest.hexdigest())

    def checked_delay(self, seconds: int, field: str) -> timedelta | None:
        limit = self.settings.max_delay_seconds
        if not 0 <= seconds <= limit:
            raise BadUserInput(f"{field} must be 0..{limit}.", field=field)
        return timedelta(seconds=seconds) if seconds else None

    async def enqueue(
        self,
        kind: str,
        kwargs: dict[str, Any],
        *,
        job_id: str | None,
        delay: timedelta | None,
        dedupe: Dedupe | None,
        idempotency: tuple[str, str] | None = None,
        retry_of: str | None = None,
    ) -> JobSnapshot | None:
        """The queued job; with `dedupe`, the caller's earlier job, or None if the earlier
        job is someone else's (or has expired). `retry_of`: the job this one retries."""
        user_id = self.principal().user_id
        callback_url = requested_callback_url.get()
        if callback_url is not None:
            try:
                checked_callback_url(callback_url, self.settings.callback_endpoints)
            except CallbackUrlRefused as exc:
                raise BadUserInput(str(exc), field="callbackUrl") from None
            if idempotency is not None:  # another URL is another request
                key, fingerprint = idempotency
                digest = hashlib.sha256(f"{fingerprint}\n{callback_url}".encode()).hexdigest()
                idempotency = (key, digest)
        await self.check_rate()
        # Kept no longer than the job it answers with.
        ttl = min(IDEMPOTENCY_TTL, timedelta(seconds=self.settings.result_expires))
        stored = stored_idempotency(user_id, kind, *idempotency, ttl) if idempotency else None
        with self.redis_errors_as_unavailable():
            try:
                queued = await self.store.enqueue(
                    kind,
                    user_id,
                    kwargs,
                    job_id=job_id,
                    delay=delay,
                    dedupe=dedupe,
                    idempotency=stored,
                    callback_url=callback_url,
                    retry_of=retry_of,
                )
            except AlreadyQueued as earlier:
                return await self.store.get(earlier.job_id, owner=user_id)
        for upload in self._uploads:
            if upload.id == queued.id:
                upload.claimed = True
        return queued

    async def existing_job(self, job_id: str) -> JobSnapshot | None:
        with self.redis_errors_as_unavailable():
            return await self.store.get(job_id, owner=self.principal().user_id)


IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_KEY_MAX = 255


def stored_idempotency(
    owner: str, kind: str, key: str, fingerprint: str, ttl: timedelta
) -> Idempotency:
    """A client's key as kept: per owner and kind of job (each kind has one mutation),
    hashed so that any printable key makes a Redis key of the same small size."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not all(" " <= ch <= "~" for ch in key):
        raise BadUserInput(
            f"idempotencyKey must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters.",
            field="idempotencyKey",
        )
    digest = hashlib.sha256(f"{owner}\n{kind}\n{key}".encode()).hexdigest()
    return Idempotency(f"jobql:idempotency:{digest}", fingerprint, ttl)
