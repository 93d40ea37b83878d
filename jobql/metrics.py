"""Prometheus metrics, from two endpoints that add up differently.

`/metrics` is this web process's own series (open subscriptions, refused subscriptions):
Prometheus's `sum()` over every target gives the whole. Under `jobql web --workers N`
the processes behind one port write their series to files in a shared directory
(prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`) and any of them
answers for all: one target per host.

`/metrics/cluster` is the totals kept in Redis (jobs accepted, finished and retried,
run times, queues, jobs running): every process answers the same, so it is scraped
from one target only. A scrape costs a fixed handful of Redis commands, whatever the
backlog: LLEN for a queue's depth, its head message for the oldest job's age.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from starlette.responses import Response

from jobql.connections import text
from jobql.jobs import record_key
from jobql.stats import (
    DURATION_BUCKETS,
    RUNNING_KEY,
    STATS_KEY,
    WORKER_ALIVE_SECONDS,
    WORKERS_KEY,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from types import TracebackType

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis

# prometheus_client's own variable, which it reads when it is imported: set, the series
# of every process sharing the directory are added up.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class WebMetrics:
    """The series a web process keeps of its own."""

    def __init__(self) -> None:
        # Not registered anywhere global: `exposition` collects them, or their files.
        self.open_subscriptions = Gauge(
            "jobql_open_subscriptions",
            "Subscriptions open",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.subscription_refusals = Counter(
            "jobql_subscription_refusals",
            "Subscriptions refused before their first result, by the error code that refused them",
            ["cause"],
            registry=None,
        )

    def refused_subscription(self, cause: str) -> None:
        self.subscription_refusals.labels(cause).inc()

    def subscription(self) -> OpenSubscription:
        """Counts a subscription as open for as long as the `async with` lasts."""
        return OpenSubscription(self.open_subscriptions)

    def exposition(self) -> Response:
        # A plain function: FastAPI calls it in its thread pool, where reading the other
        # processes' files does not hold up the event loop.
        registry = CollectorRegistry(auto_describe=False)
        directory = os.environ.get(MULTIPROCESS_DIR)
        if directory:
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry.register(self.open_subscriptions)
            registry.register(self.subscription_refusals)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class OpenSubscription:
    __slots__ = ("gauge",)

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge

    async def __aenter__(self) -> None:
        self.gauge.inc()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.gauge.dec()


class ClusterMetrics:
    """The totals in Redis, read in one round trip (two when a queue is not empty)."""

    def __init__(self, redis: Redis, queues: Sequence[str]) -> None:
        self.redis = redis
        self.queues = tuple(queues)

    async def exposition(self) -> Response:
        try:
            families = await self.read()
        except (RedisError, OSError, TimeoutError):
            return Response("Redis is unreachable\n", status_code=503, media_type="text/plain")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def read(self) -> list[Metric]:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATS_KEY)
            pipe.zrangebyscore(WORKERS_KEY, now - WORKER_ALIVE_SECONDS, "+inf")
            pipe.hgetall(RUNNING_KEY)
            for queue in self.queues:
                pipe.llen(queue)
                pipe.lindex(queue, -1)  # Kombu pushes on the left and pops on the right
            stats_raw, alive, running_raw, *queue_replies = await pipe.execute()
        stats = {text(key): float(value) for key, value in stats_raw.items()}
        running_by_worker = {text(key): int(value) for key, value in running_raw.items()}
        running = sum(running_by_worker.get(text(name), 0) for name in alive)
        depths = [int(depth) for depth in queue_replies[0::2]]
        ages = await self._ages([_head(raw) for raw in queue_replies[1::2]], now)
        families = list(_job_families(stats))
        families.extend(_queue_families(self.queues, depths, ages))
        jobs_running = GaugeMetricFamily(
            "jobql_jobs_running", "Jobs a live worker is running (as of its last heartbeat)"
        )
        jobs_running.add_metric([], running)
        families.append(jobs_running)
        return families

    async def _ages(self, heads: list[tuple[str, str | None] | None], now: float) -> list[float]:
        """Seconds each queue's oldest job has waited since it was accepted (or since its
        ETA, if later); 0 for an empty queue."""
        ids = [head[0] for head in heads if head is not None]
        created: dict[str, Any] = {}
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(record_key(job_id), "created_at")
                created = dict(zip(ids, await pipe.execute(), strict=True))
        ages = []
        for head in heads:
            if head is None:
                ages.append(0.0)
                continue
            job_id, eta = head
            since = [_timestamp(value) for value in (created.get(job_id), eta) if value]
            ages.append(max(0.0, now - max(since)) if since else 0.0)
        return ages


class _Snapshot:
    """A collector that hands over metric families already read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _head(raw: bytes | str | None) -> tuple[str, str | None] | None:
    """The job id and ETA of a queued Kombu message."""
    if raw is None:
        return None
    try:
        headers = json.loads(raw)["headers"]
        return str(headers["id"]), headers.get("eta")
    except (ValueError, KeyError, TypeError):
        return None


def _timestamp(value: bytes | str) -> float:
    return datetime.fromisoformat(text(value)).timestamp()


def _queue_families(
    queues: Sequence[str], depths: list[int], ages: list[float]
) -> Iterator[Metric]:
    depth = GaugeMetricFamily("jobql_queue_depth", "Jobs waiting in the queue", labels=["queue"])
    oldest = GaugeMetricFamily(
        "jobql_queue_oldest_age_seconds",
        "How long the queue's oldest job has waited (0 when it is empty)",
        labels=["queue"],
    )
    for queue, count, age in zip(queues, depths, ages, strict=True):
        depth.add_metric([queue], count)
        oldest.add_metric([queue], age)
    yield depth
    yield oldest


def _job_families(stats: dict[str, float]) -> Iterator[Metric]:
    accepted = CounterMetricFamily("jobql_jobs_accepted", "Jobs accepted", labels=["kind"])
    finished = CounterMetricFamily("jobql_jobs_finished", "Jobs finished", labels=["kind", "state"])
    retried = CounterMetricFamily(
        "jobql_job_retries", "Retries scheduled (a temporary failure)", labels=["kind"]
    )
    # Callbacks that fail belong here too, counted by the worker in the same hash
    # (`callback_failed:<kind>`), once jobs can have callbacks.
    kinds = set()
    for field, value in sorted(stats.items()):
        name, _, rest = field.partition(":")
        if name == "accepted":
            accepted.add_metric([rest], value)
        elif name == "finished":
            kind, _, state = rest.partition(":")
            finished.add_metric([kind, state], value)
        elif name == "retried":
            retried.add_metric([rest], value)
        elif name == "duration_count":
            kinds.add(rest)
    yield accepted
    yield finished
    yield retried
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
