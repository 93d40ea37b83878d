"""What operators see: health and readiness, Prometheus metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from jobql.auth import SCOPE_SEND_EMAIL
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.support import SEND_WELCOME

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Process, Stack, WebServer


async def get(web: WebServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(web.url(path))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def send(web: WebServer, user: str, **extra: Any) -> str:
    client = http_client(web, token(user, SCOPE_SEND_EMAIL))
    address = f"ops-{uuid.uuid4().hex[:8]}@example.com"
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
    assert no_worker.json() == {"redis": "ok", "workers": 0}

    stack.redis.stop()
    no_redis = await get(web, "/readyz")
    assert no_redis.status_code == 503
    assert no_redis.json()["redis"] == "unreachable"
    assert (await get(web, "/healthz")).status_code == 200  # the process itself is fine


async def test_metrics_count_jobs_durations_and_subscriptions(
    web: WebServer, worker: Process
) -> None:
    before = samples((await get(web, "/metrics")).text)
    job_id = await send(web, "metrics")
    events = [event async for event in follow(ws_client(web, token("metrics")), job_id)]
    assert events[-1]["state"] == "SUCCESS"

    waiting = await send(web, "metrics", delaySeconds=60)
    open_subscription = follow(ws_client(web, token("metrics")), waiting)
    await anext(open_subscription)  # the first snapshot arrived: the subscription is open
    after = samples((await get(web, "/metrics")).text)
    await open_subscription.aclose()
    open_now = sum(v for (name, _), v in after.items() if name == "jobql_open_subscriptions")

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("jobql_jobs_accepted_total", kind="welcome_email") >= 2
    assert grew("jobql_jobs_finished_total", kind="welcome_email", state="SUCCESS") >= 1
    assert grew("jobql_job_duration_seconds_count", kind="welcome_email") >= 1
    assert open_now >= 1


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
