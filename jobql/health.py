"""`/healthz`, `/readyz` and `/metrics`: what operators and Prometheus ask a web process."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from jobql.connections import text
from jobql.stats import DURATION_BUCKETS, STATS_KEY, WORKER_ALIVE_SECONDS, WORKERS_KEY

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis

    from jobql.watcher import JobWatcher


async def healthz() -> dict[str, str]:
    """The process is up and serving (says nothing of Redis or the workers)."""
    return {"status": "ok"}


class Health:
    def __init__(self, redis: Redis, watcher: JobWatcher) -> None:
        self.redis = redis
        self.watcher = watcher

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

    async def metrics(self) -> Response:
        try:
            raw = await self.redis.hgetall(STATS_KEY)
        except (RedisError, OSError, TimeoutError):
            raw = {}
        stats = {text(key): float(value) for key, value in raw.items()}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(list(_families(stats, self.watcher.watches))))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Snapshot:
    """A collector that hands over metric families already read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _families(stats: dict[str, float], watches: int) -> Iterator[Metric]:
    accepted = CounterMetricFamily("jobql_jobs_accepted", "Jobs accepted", labels=["kind"])
    finished = CounterMetricFamily("jobql_jobs_finished", "Jobs finished", labels=["kind", "state"])
    kinds = set()
    for field, value in sorted(stats.items()):
        name, _, rest = field.partition(":")
        if name == "accepted":
            accepted.add_metric([rest], value)
        elif name == "finished":
            kind, _, state = rest.partition(":")
            finished.add_metric([kind, state], value)
        elif name == "duration_count":
            kinds.add(rest)
    yield accepted
    yield finished
    durations = HistogramMetricFamily(
        "jobql_job_duration_seconds", "Time a task ran, by kind", labels=["kind"]
    )
    for kind in sorted(kinds):
        buckets = [
            (str(bound), stats.get(f"duration_bucket:{kind}:{bound}", 0.0))
            for bound in DURATION_BUCKETS
        ]
        buckets.append(("+Inf", stats[f"duration_count:{kind}"]))
        durations.add_metric([kind], buckets, stats.get(f"duration_sum:{kind}", 0.0))
    yield durations
    open_subscriptions = GaugeMetricFamily(
        "jobql_open_subscriptions", "Subscriptions open in this web process", labels=["pid"]
    )
    open_subscriptions.add_metric([str(os.getpid())], watches)
    yield open_subscriptions
