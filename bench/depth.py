"""7. A deep backlog: Redis memory per queued job, and how long Redis makes a client wait
while a worker's timers run over it.

The jobs are welcome emails queued as the mutation queues them (`JobStore.enqueue` with
the once-a-day key, many at once, which the AutoPipeline sends in pipelines), with no
worker consuming them. A worker has taken the oldest off the queue and died holding
them, a few lost before it filed them, so that recovery has jobs to look at on every
pass. A worker that consumes another queue runs its timers with `JOBQL_RECOVER_AFTER` =
1 s, while a probe process PINGs Redis every 10 ms.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from redis import Redis

from bench.harness import SECRET_KEY, Bench
from jobql.connections import create_redis
from jobql.jobs import (
    DEFAULT_QUEUE,
    Dedupe,
    inputs_key,
    messages_key,
    owner_key,
    pending_key,
    record_key,
)
from jobql.settings import Settings
from jobql.store import JobStore
from jobql.tasks.recovery import UNACKED_INDEX_KEY, UNACKED_KEY

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from bench.measure import Size

AT_ONCE = 5_000
TAKEN = 2_000
LOST = 10
PING_EVERY = 0.010
OWNER = "bench"  # one owner: all the jobs in one owner index


async def fill(url: str, count: int) -> list[str]:
    settings = Settings(redis_url=url, secret_key=SecretStr(SECRET_KEY), redis_timeout=30)
    redis = create_redis(settings)
    store = JobStore(redis, settings.result_expires)
    ids: list[str] = []
    for first in range(0, count, AT_ONCE):
        jobs = await asyncio.gather(
            *(
                store.enqueue(
                    "welcome_email",
                    OWNER,
                    {"recipient": f"deep-{n}@example.com", "username": "Deep"},
                    dedupe=Dedupe(f"jobql:welcome:deep-{n}@example.com", timedelta(hours=24)),
                )
                for n in range(first, min(count, first + AT_ONCE))
            )
        )
        ids += [job.id for job in jobs]
    await redis.aclose()
    return ids


def take_and_die(client: Redis, count: int, lose: int) -> None:
    """A worker takes the `count` oldest messages, files all but `lose` of them as
    unacknowledged, as Kombu does, and dies."""
    with client.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.rpop(DEFAULT_QUEUE)
        messages = [json.loads(raw) for raw in pipe.execute()]
    with client.pipeline(transaction=False) as pipe:
        for n, message in enumerate(messages):
            if n % (count // lose):
                tag = message["properties"]["delivery_tag"]
                pipe.zadd(UNACKED_INDEX_KEY, {tag: time.time()})
                pipe.hset(UNACKED_KEY, tag, json.dumps([message, "", DEFAULT_QUEUE]))
        pipe.execute()


def probe(url: str, seconds: float, out: Queue[float]) -> None:
    """The longest a PING waited, sent every PING_EVERY seconds for `seconds`."""
    client = Redis.from_url(url)
    client.ping()
    longest = 0.0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < deadline:
        started = time.perf_counter()
        client.ping()
        longest = max(longest, time.perf_counter() - started)
        next_at += PING_EVERY
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.put(longest)


def longest_wait(url: str, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    results: Queue[float] = context.Queue()
    pinger = context.Process(target=probe, args=(url, seconds, results))
    pinger.start()
    longest = results.get(timeout=seconds + 60)
    pinger.join(timeout=10)
    return longest


def per_job(client: Redis, key: str, count: int) -> float:
    return (client.memory_usage(key) or 0) / count


async def depth(bench: Bench, size: Size) -> dict[str, Any]:
    url = bench.redis.url
    with Redis.from_url(url) as client:
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        job_ids = await fill(url, size.backlog)
        filled = time.perf_counter() - started
        used = int(client.info("memory")["used_memory"]) - before
        memory = {
            "per_job_bytes": used / size.backlog,
            "record_bytes": client.memory_usage(record_key(job_ids[-1])) or 0,
            "inputs_bytes": client.memory_usage(inputs_key(job_ids[-1])) or 0,
            "dedupe_bytes": client.memory_usage(
                f"jobql:welcome:deep-{size.backlog - 1}@example.com"
            )
            or 0,
            "message_copy_bytes": per_job(client, messages_key(DEFAULT_QUEUE), size.backlog),
            "pending_index_bytes": per_job(client, pending_key(DEFAULT_QUEUE), size.backlog),
            "message_bytes": per_job(client, DEFAULT_QUEUE, size.backlog),
            "owner_index_bytes": per_job(client, owner_key(OWNER), size.backlog),
        }
        taken = min(TAKEN, size.backlog // 10)
        take_and_die(client, taken, LOST)
        quiet_ms = longest_wait(url, size.stall_seconds / 3) * 1000
        command = [sys.executable, "-m", "jobql", "worker", "--concurrency", "1", "-Q", "idle"]
        worker = bench.start("jobql-idle-worker", command, " ready.", JOBQL_RECOVER_AFTER="1")
        client.config_resetstat()
        busy_ms = longest_wait(url, size.stall_seconds) * 1000
        recovery = client.info("commandstats").get("cmdstat_eval", {})
        worker.stop()
        client.flushdb(asynchronous=True)  # a million jobs take seconds to free
    return {
        "jobs": size.backlog,
        "fill_seconds": filled,
        "taken": taken,
        "longest_ping_ms": busy_ms,
        "longest_ping_without_worker_ms": quiet_ms,
        "recovery_calls": int(recovery.get("calls", 0)),
        "recovery_call_us": float(recovery.get("usec_per_call", 0)),
        **memory,
    }
