"""`/healthz` and `/readyz`: what operators and orchestrators ask a web process."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.responses import JSONResponse

from jobql.stats import WORKER_ALIVE_SECONDS, WORKERS_KEY
from jobql.storage import StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

    from jobql.storage import Storage

logger = logging.getLogger(__name__)

# How long a probe's answer stands: /readyz polled by many checkers costs one write a second.
PROBE_MAX_AGE = 1.0
# A file system that hangs (a lost network mount) counts as unwritable after this long.
PROBE_TIMEOUT = 2.0


def healthz(run_id: str | None) -> Callable[[], Awaitable[dict[str, str]]]:
    """`/healthz`: the process is up and serving (says nothing of Redis or the workers);
    with `JOBQL_RUN_ID`, which run of it this is."""
    body = {"status": "ok"} | ({"run": run_id} if run_id else {})

    async def healthz() -> dict[str, str]:
        return body

    return healthz


class MediaProbe:
    """Whether the media store takes a write (`Storage.probe`: a small file written and
    removed), asked in a thread at most once every `max_age` seconds however often it is
    asked (callers in between share the last answer, or the probe under way)."""

    def __init__(self, storage: Storage, max_age: float = PROBE_MAX_AGE) -> None:
        self.storage = storage
        self.max_age = max_age
        self._checked_at = -math.inf
        self._writable = False
        self._running: asyncio.Task[bool] | None = None

    async def writable(self) -> bool:
        if time.monotonic() - self._checked_at < self.max_age:
            return self._writable
        if self._running is None:
            self._running = asyncio.create_task(self._probe())
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return await asyncio.shield(self._running)
        except TimeoutError:
            return False

    async def _probe(self) -> bool:
        try:
            writable = await asyncio.to_thread(self._writable_now)
        finally:
            self._running = None
        self._checked_at = time.monotonic()
        self._writable = writable
        return writable

    def _writable_now(self) -> bool:
        try:
            self.storage.probe()
        except StorageUnavailable as exc:
            logger.warning("%s", exc)
            return False
        return True


class Health:
    def __init__(self, redis: Redis, media: MediaProbe) -> None:
        self.redis = redis
        self.media = media

    async def readyz(self) -> JSONResponse:
        """Ready when Redis answers, at least one worker has said it is alive lately, and
        the media store can be written."""
        media_writable = asyncio.create_task(self.media.writable())
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.ping()
                pipe.zcount(WORKERS_KEY, time.time() - WORKER_ALIVE_SECONDS, "+inf")
                _, workers = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            redis, workers = "unreachable", None
        else:
            redis, workers = "ok", int(workers)
        media = "ok" if await media_writable else "unwritable"
        body = {"redis": redis, "workers": workers, "media": media}
        ready = redis == "ok" and bool(workers) and media == "ok"
        return JSONResponse(body, status_code=200 if ready else 503)
