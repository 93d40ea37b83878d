"""What operators see: health and readiness, Prometheus metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from gql.transport.exceptions import TransportError
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.messages import task_message
from jobql.stats import HEARTBEAT_SECONDS
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.support import DEFERRING_DOMAIN, SEND_WELCOME, start_web

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from jobql.settings import Settings
    from tests.support import Process, Stack, WebServer

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def get(web: WebServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(web.url(path))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def send(web: WebServer, user: str, email: str | None = None, **extra: Any) -> str:
    client = http_client(web, token(user, SCOPE_SEND_EMAIL))
    address = email or f"ops-{uuid.uuid4().hex[:8]}@example.com"
    result = await execute(client, SEND_WELCOME, email=address, username="Ops", **extra)
    return str(result["sendWelcomeEmail"]["id"])


async def test_ready_with_redis_and_a_live_worker(web: WebServer, worker: Process) -> None:
    assert (await get(web, "/healthz")).json() == {"status": "ok"}
    ready = await get(web, "/readyz")
    assert ready.status_code == 200
    assert ready.json()["redis"] == "ok"
    assert ready.json()["workers"] >= 1


async def test_not_ready_without_workers_or_redis(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    web = stack.start_web()
    no_worker = await get(web, "/readyz")
    assert no_worker.status_code == 503
    assert no_worker.json() == {"redis": "ok", "workers": 0, "media": "ok"}

    stack.redis.stop()
    no_redis = await get(web, "/readyz")
    assert no_redis.status_code == 503
    assert no_redis.json()["redis"] == "unreachable"
    assert (await get(web, "/healthz")).status_code == 200  # the process itself is fine


async def test_cluster_metrics_count_jobs_durations_and_retries(
    web: WebServer, worker: Process
) -> None:
    before = samples((await get(web, "/metrics/cluster")).text)
    job_id = await send(web, "metrics")
    events = [event async for event in follow(ws_client(web, token("metrics")), job_id)]
    assert events[-1]["state"] == "SUCCESS"
    deferred = await send(web, "metrics", email=f"m{uuid.uuid4().hex[:8]}@{DEFERRING_DOMAIN}")
    events = [event async for event in follow(ws_client(web, token("metrics")), deferred)]
    assert [e["state"] for e in events if e["state"] == "RETRY"] and events[-1]["done"]
    after = samples((await get(web, "/metrics/cluster")).text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("jobql_jobs_accepted_total", kind="welcome_email") == 2
    assert grew("jobql_jobs_finished_total", kind="welcome_email", state="SUCCESS") == 2
    assert grew("jobql_job_duration_seconds_count", kind="welcome_email") == 2
    assert grew("jobql_job_retries_total", kind="welcome_email") == 1
    assert ("jobql_queue_depth", (("queue", "celery"),)) in after
    assert ("jobql_jobs_running", ()) in after


async def test_json_logs_carry_the_job_id(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(log_json=True)
    worker = stack.add_worker()
    web = stack.start_web()
    job_id = await send(web, "logs")
    events = [event async for event in follow(ws_client(web, token("logs")), job_id)]
    assert events[-1]["state"] == "SUCCESS"
    await asyncio.sleep(0.5)

    web_lines = [json.loads(line) for line in web.process.log.splitlines() if line.strip()]
    assert any("POST /graphql" in line["message"] for line in web_lines)  # the access log
    worker_lines = [json.loads(line) for line in worker.log.splitlines() if line.startswith("{")]
    about_job = [line for line in worker_lines if job_id in line["message"]]
    assert len(about_job) >= 2  # received, succeeded
    assert all(line.get("job_id") == job_id for line in about_job)


def total(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def refused(web: WebServer, user_token: str, job_id: str) -> None:
    with pytest.raises(TransportError):
        await anext(follow(ws_client(web, user_token), job_id))


async def test_metrics_of_two_web_processes_add_up(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack()
    stack.add_worker()
    first = stack.start_web()
    second = start_web(stack.settings, tmp_path / "second.log")
    try:
        jobs = [await send(web, "sums", delaySeconds=60) for web in (first, first, second)]
        subscriptions = [
            follow(ws_client(web, token("sums")), job_id)
            for web, job_id in zip((first, first, second), jobs, strict=True)
        ]
        for subscription in subscriptions:
            await anext(subscription)  # open: its first snapshot arrived
        await refused(first, token("sums"), UNKNOWN_ID)
        await refused(second, token("sums"), UNKNOWN_ID)
        await refused(second, token("someone else"), jobs[0])
        await refused(second, "not-a-token", UNKNOWN_ID)

        scraped = [(await get(web, "/metrics")).text for web in (first, second)]
        open_now = [total(text, "jobql_open_subscriptions") for text in scraped]
        assert open_now == [2, 1]

        def refusals(cause: str) -> float:
            return sum(
                total(text, "jobql_subscription_refusals_total", cause=cause) for text in scraped
            )

        assert refusals("NOT_FOUND") == 3
        assert refusals("UNAUTHENTICATED") == 1

        # The totals kept in Redis: the same from either process, counted once.
        clusters = [(await get(web, "/metrics/cluster")).text for web in (first, second)]
        accepted = [total(t, "jobql_jobs_accepted_total", kind="welcome_email") for t in clusters]
        assert accepted == [3, 3]

        for subscription in subscriptions:
            await subscription.aclose()
        await asyncio.sleep(0.3)
        scraped = [(await get(web, "/metrics")).text for web in (first, second)]
        assert [total(text, "jobql_open_subscriptions") for text in scraped] == [0, 0]
    finally:
        second.process.stop()


async def test_processes_behind_one_port_each_answer_for_all(
    settings: Settings, worker: Process, tmp_path: Path
) -> None:
    """`jobql web --workers 2`: a scrape reaches either process, and either reports the sum."""
    web = start_web(settings, tmp_path / "web.log", workers=2)
    try:
        jobs = [await send(web, "one-port", delaySeconds=60) for _ in range(4)]
        # New connections are handed to the two processes in turn: two subscriptions each.
        subscriptions = [follow(ws_client(web, token("one-port")), job_id) for job_id in jobs]
        for subscription in subscriptions:
            await anext(subscription)
        await refused(web, token("one-port"), UNKNOWN_ID)
        await refused(web, token("one-port"), UNKNOWN_ID)
        scrapes = [(await get(web, "/metrics")).text for _ in range(6)]
        assert [total(text, "jobql_open_subscriptions") for text in scrapes] == [4] * 6
        assert {
            total(text, "jobql_subscription_refusals_total", cause="NOT_FOUND") for text in scrapes
        } == {2}
        for subscription in subscriptions:
            await subscription.aclose()
    finally:
        web.process.stop()


async def test_queue_depth_age_and_jobs_running(make_stack: Callable[..., Stack]) -> None:
    # An SMTP server that takes the connection and never says a word: the job runs until
    # the mail timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    stack = make_stack(mail_port=silent.getsockname()[1], mail_timeout=30.0)
    web = stack.start_web()
    try:
        started = time.time()
        for _ in range(3):
            await send(web, "queue")
        await asyncio.sleep(1.0)
        before_scrape = time.time()
        queued = (await get(web, "/metrics/cluster")).text
        assert total(queued, "jobql_queue_depth", queue="celery") == 3
        age = total(queued, "jobql_queue_oldest_age_seconds", queue="celery")
        assert before_scrape - started - 0.5 <= age <= time.time() - started + 0.5
        assert total(queued, "jobql_jobs_running") == 0

        stack.add_worker(concurrency=1)
        deadline = time.monotonic() + 3 * HEARTBEAT_SECONDS
        while True:  # the worker reports what it runs at its heartbeat
            running = (await get(web, "/metrics/cluster")).text
            if total(running, "jobql_jobs_running") == 1:
                break
            assert time.monotonic() < deadline, running
            await asyncio.sleep(0.5)
        # One job taken off the queue, one more held by the worker's prefetch at most.
        assert total(running, "jobql_queue_depth", queue="celery") in (1, 2)
    finally:
        silent.close()


async def scrape_cost(web: WebServer, redis: Redis) -> dict[str, int]:
    """The Redis commands one scrape of /metrics/cluster sent, by name."""
    await redis.config_resetstat()
    assert (await get(web, "/metrics/cluster")).status_code == 200
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))  # the test's own
    }


async def test_a_scrape_costs_the_same_whatever_the_backlog(
    make_stack: Callable[..., Stack],
) -> None:
    """Queue depth is LLEN and the oldest job's age is read from the head message: a
    backlog of thousands costs a scrape no more commands than one of a few."""
    stack = make_stack()
    web = stack.start_web()
    redis = Redis.from_url(stack.settings.redis_url)
    try:
        for _ in range(3):
            await send(web, "backlog")
        small = await scrape_cost(web, redis)
        message = task_message(
            "jobql.welcome_email",
            str(uuid.uuid4()),
            {"recipient": "a@b.c", "username": "A"},
            "celery",
        )
        await redis.lpush("celery", *([message] * 5000))
        large = await scrape_cost(web, redis)
        assert (
            total((await get(web, "/metrics/cluster")).text, "jobql_queue_depth", queue="celery")
            == 5003
        )
    finally:
        await redis.aclose()
    assert large == small
    assert "lrange" not in large and "llen" in large
