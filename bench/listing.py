"""7. `jobs(first: 20)` for a user with 10,000 jobs, and what writing the owner index costs
enqueue throughput: jobql's enqueue script against the same script without the index."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from redis import Redis

from bench.harness import SECRET_KEY, Bench
from bench.measure import _median_run, flush, wrk
from jobql.auth import issue_token
from jobql.connections import create_redis
from jobql.jobs import owner_key
from jobql.listing import SCAN_BUDGET
from jobql.redis_server import free_port
from jobql.settings import Settings
from jobql.store import JobStore

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bench.measure import Size

LISTER = "lister"
PAGES = {"first20": "first: 20", "first20_state": "first: 20, state: SUCCESS"}


async def fill(bench: Bench, count: int) -> None:
    """`count` jobs for LISTER through the enqueue path, in pipelines of 500 (on a queue no
    worker reads: they stay PENDING)."""
    settings = Settings(redis_url=bench.redis.url)
    redis = create_redis(settings)
    store = JobStore(redis, result_expires=settings.result_expires, queue="listing-bench")
    for start in range(0, count, 500):
        batch = min(500, count - start)
        await asyncio.gather(*(store.enqueue("welcome_email", LISTER, {}) for _ in range(batch)))
    await redis.aclose()


def without_index(bench: Bench) -> tuple[Any, str]:
    port = free_port()
    command = [sys.executable, "-m", "bench.without_owner_index", "--port", str(port)]
    command += ["--no-access-log"]
    url = f"http://127.0.0.1:{port}"
    return bench.start("jobql-web-without-index", command, f"{url}/healthz"), url


async def listing(bench: Bench, size: Size) -> dict[str, Any]:
    figures: dict[str, Any] = {"jobs": size.listed_jobs, "scan_budget": SCAN_BUDGET}
    web, url = bench.jobql_web(workers=1)
    await fill(bench, size.listed_jobs)
    with Redis.from_url(bench.redis.url) as client:
        assert client.zcard(owner_key(LISTER)) == size.listed_jobs
    token = issue_token(SECRET_KEY, LISTER, ())
    for name, arguments in PAGES.items():
        with redis_time(bench) as script:
            figures[name] = wrk(
                url, "jobs.lua", size, token=token, connections=1, JOBS_ARGS=arguments
            )
        figures[name]["redis_us"] = script["usec_per_call"]
    web.stop()
    flush(bench)

    # Enqueue with and without the owner index, one process each, taking turns.
    ours, our_url = bench.jobql_web(workers=1)
    base, base_url = without_index(bench)
    runs: dict[str, list[dict[str, Any]]] = {"with_index": [], "without_index": []}
    for _ in range(size.rounds):
        with redis_time(bench) as script:
            runs["with_index"].append(wrk(our_url, "jobql.lua", size))
        runs["with_index"][-1]["redis_us"] = script["usec_per_call"]
        settle(bench)
        started = time.time()
        with redis_time(bench) as script:
            runs["without_index"].append(wrk(base_url, "jobql.lua", size))
        runs["without_index"][-1]["redis_us"] = script["usec_per_call"]
        with Redis.from_url(bench.redis.url) as client:
            written = client.zcount(owner_key("bench"), started, "+inf")
        assert not written, "the baseline wrote the owner index"
        settle(bench)
    ours.stop()
    base.stop()
    for side, side_runs in runs.items():
        figures[side] = _median_run(side_runs)
        figures[side]["redis_us"] = statistics.median(run["redis_us"] for run in side_runs)
    return figures


def settle(bench: Bench) -> None:
    """Let requests wrk left in flight finish, then empty Redis for the next run."""
    time.sleep(1)
    flush(bench)


@contextmanager
def redis_time(bench: Bench) -> Iterator[dict[str, float]]:
    """Yields a dict that holds, after the block, the Redis time of each EVAL in it (the
    one script of a page, or of an enqueue): a figure that other load on the machine
    moves far less than a latency."""
    figures: dict[str, float] = {}
    with Redis.from_url(bench.redis.url) as client:
        client.config_resetstat()
        yield figures
        stats: dict[str, Any] = client.info("commandstats")
    figures.update(stats.get("cmdstat_eval", {"usec_per_call": 0.0, "calls": 0}))
