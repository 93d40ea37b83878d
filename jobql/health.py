"""`/healthz` and `/readyz`: what operators and orchestrators ask a web process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.responses import JSONResponse

from jobql.stats import WORKER_ALIVE_SECONDS, WORKERS_KEY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis


def healthz(run_id: str | None) -> Callable[[], Awaitable[dict[str, str]]]:
    """`/healthz`: the process is up and serving (says nothing of Redis or the workers);
    with `JOBQL_RUN_ID`, which run of it this is."""
    body = {"status": "ok"} | ({"run": run_id} if run_id else {})

    async def healthz() -> dict[str, str]:
        return body

    return healthz


class Health:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def readyz(self) -> JSONResponse:
        """Ready when Redis answers and at least one worker has said it is alive lately."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.ping()
                pipe.zcount(WORKERS_KEY, time.time() - WORKER_ALIVE_SECONDS, "+inf")
                _, workers = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            return JSONResponse({"redis": "unreachable", "workers": None}, status_code=503)
        body = {"redis": "ok", "workers": int(workers)}
        return JSONResponse(body, status_code=200 if workers else 503)
