"""cancelJob and the queue deadline, end to end: real Redis, workers, SMTP and GraphQL clients.

Each test builds a private jobql, so that what it stops or delays disturbs no other test.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from redis import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY, with_job_fields
from jobql.jobs import pending_key, record_key
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.test_faults import FAULT_SETTINGS, heavy_png, upload_heavy, wait_for_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Stack, WebServer

pytestmark = pytest.mark.slow

# Delays up to 14 s allowed (they must fit within the visibility timeout).
DELAY_SETTINGS = {**FAULT_SETTINGS, "visibility_timeout": 20}
USER = "faults"  # the user test_faults' helpers queue jobs as
CANCEL_JOB = with_job_fields("mutation Cancel($id: ID!) { cancelJob(id: $id) { ...JobFields } }")
SEND = with_job_fields(
    """mutation Send($email: String!, $delaySeconds: Int! = 0) {
        sendWelcomeEmail(email: $email, username: "C", delaySeconds: $delaySeconds) {
            ...JobFields
        }
    }"""
)


def address(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


async def send(web: WebServer, to: str, delay: int = 0) -> dict[str, Any]:
    client = http_client(web, token(USER, SCOPE_SEND_EMAIL))
    result = await execute(client, SEND, email=to, delaySeconds=delay)
    return dict(result["sendWelcomeEmail"])


async def cancel(web: WebServer, job_id: str, user: str = USER) -> dict[str, Any] | None:
    result = await execute(http_client(web, token(user)), CANCEL_JOB, id=job_id)
    answer = result["cancelJob"]
    return None if answer is None else dict(answer)


async def get(web: WebServer, job_id: str) -> dict[str, Any]:
    return dict((await execute(http_client(web, token(USER)), JOB_QUERY, id=job_id))["job"])


async def follow_to_end(web: WebServer, job_id: str, within: float = 60) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in follow(ws_client(web, token(USER)), job_id)]

    return await asyncio.wait_for(collect(), within)


async def drain(stack: Stack, web: WebServer, delay: int = 0) -> None:
    """Queue an email behind everything else and wait for it: the worker has taken every
    message queued before it (and every delayed one due before it)."""
    marker = address("marker")
    job = await send(web, marker, delay)
    events = await follow_to_end(web, job["id"])
    assert events[-1]["state"] == "SUCCESS", events
    assert len(stack.smtp.handler.to(marker)) == 1


def record(stack: Stack, job_id: str) -> set[bytes]:
    """The fields of the job record."""
    with Redis.from_url(stack.settings.redis_url) as client:
        return set(client.hkeys(record_key(job_id)))


def is_pending(stack: Stack, job_id: str) -> bool:
    with Redis.from_url(stack.settings.redis_url) as client:
        return client.zscore(pending_key("celery"), job_id) is not None


async def test_queued_job_cancelled_ends_revoked_at_once_and_never_runs(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    web = stack.start_web()  # no worker yet: the job stays queued
    to = address("queued")
    job = await send(web, to)

    cancelled = await cancel(web, job["id"])

    assert cancelled is not None
    assert cancelled["state"] == "REVOKED"
    assert cancelled["done"] is True
    assert cancelled["error"]["code"] == "CANCELLED"
    # Recovery's copy of the message is gone with it: nothing queues it again.
    assert b"message" not in record(stack, job["id"])
    assert not is_pending(stack, job["id"])
    stack.add_worker(concurrency=1)
    await drain(stack, web)
    assert stack.smtp.handler.to(to) == []
    assert stack.smtp.handler.recipients_tried[to] == 0
    assert (await get(web, job["id"]))["state"] == "REVOKED"
    # Cancelling again answers with the job as it is.
    again = await cancel(web, job["id"])
    assert again is not None
    assert again["state"] == "REVOKED"
    assert again["finishedAt"] == cancelled["finishedAt"]


async def test_cancel_is_seen_by_a_subscription_of_the_job(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    web = stack.start_web()
    job = await send(web, address("watched"))
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        await wait_for_state(web, job["id"], {"REVOKED"}, events.append)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.5)  # the subscription has sent the job's current state by now
    await cancel(web, job["id"])
    await asyncio.wait_for(watching, 20)

    assert events[0]["state"] == "PENDING"
    assert events[-1]["state"] == "REVOKED"
    assert events[-1]["error"]["code"] == "CANCELLED"


async def test_someone_elses_or_a_missing_job_is_null_and_left_alone(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    web = stack.start_web()
    job = await send(web, address("mine"))

    assert await cancel(web, job["id"], user="mallory") is None
    assert await cancel(web, str(uuid.uuid4())) is None
    assert await cancel(web, "not-an-id") is None
    assert (await get(web, job["id"]))["state"] == "PENDING"
    assert b"cancelled" not in record(stack, job["id"])


async def test_finished_job_is_returned_as_it_is(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    to = address("done")
    job = await send(web, to)
    final = (await follow_to_end(web, job["id"]))[-1]
    assert final["state"] == "SUCCESS"

    answer = await cancel(web, job["id"])

    assert answer == final
    assert len(stack.smtp.handler.to(to)) == 1


async def test_delayed_email_cancelled_before_its_time_never_sends(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**DELAY_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    to = address("delayed")
    job = await send(web, to, delay=2)

    cancelled = await cancel(web, job["id"])

    assert cancelled is not None
    assert cancelled["state"] == "REVOKED"
    await drain(stack, web, delay=3)  # due after the cancelled one
    assert stack.smtp.handler.recipients_tried[to] == 0
    assert (await get(web, job["id"]))["state"] == "REVOKED"


async def test_job_cancelled_in_retry_sends_nothing_when_smtp_is_back(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**{**DELAY_SETTINGS, "mail_retry_backoff": 2.0})
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    stack.smtp.stop()
    to = address("retrying")
    job = await send(web, to)
    await asyncio.wait_for(wait_for_state(web, job["id"], {"RETRY"}, lambda e: None), 20)

    cancelled = await cancel(web, job["id"])

    assert cancelled is not None
    assert cancelled["state"] == "REVOKED"
    assert cancelled["error"]["code"] == "CANCELLED"
    stack.smtp.start()
    # The marker is due after the cancelled job's retry: the worker has dropped it by then.
    await drain(stack, web, delay=5)
    assert stack.smtp.handler.to(to) == []
    assert (await get(web, job["id"]))["state"] == "REVOKED"


async def test_running_avatar_stops_at_its_next_checkpoint(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    worker = stack.add_worker(concurrency=1)
    web = stack.start_web()
    heavy_png()  # made before the clock matters
    job_id = await upload_heavy(web)
    await asyncio.wait_for(wait_for_state(web, job_id, {"STARTED"}, lambda e: None), 30)

    answer = await cancel(web, job_id)

    assert answer is not None
    assert answer["done"] is False  # running: it ends at its next checkpoint
    events = await follow_to_end(web, job_id)
    assert events[-1]["state"] == "REVOKED", events
    assert events[-1]["error"]["code"] == "CANCELLED"
    assert events[-1]["result"] is None
    avatars = stack.settings.media_root / "avatars"
    assert not avatars.exists() or not any(avatars.glob(f"{job_id}.*"))
    # The upload is kept, for retryJob, until the job expires.
    assert (stack.settings.media_root / "incoming" / f"{job_id}.upload").exists()
    # No worker process was killed: the same worker serves the next job.
    assert worker.popen.poll() is None
    await drain(stack, web)


async def test_cancel_racing_the_workers_start_ends_revoked_or_done_never_both(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    heavy_png()  # made before the race
    ends = []
    for round_ in range(3):
        # The worker is busy with an avatar while the emails queue behind it, and is
        # through the emails in milliseconds once it is free: the cancellations, sent one
        # after another, land before, during and after their starts and ends.
        blocker = await upload_heavy(web)
        addresses = [address(f"race{round_}") for _ in range(16)]
        jobs = await asyncio.gather(*(send(web, to) for to in addresses))
        for job in jobs:
            await cancel(web, job["id"])
        await follow_to_end(web, blocker)
        finals = await asyncio.gather(*(follow_to_end(web, job["id"], 30) for job in jobs))
        await asyncio.sleep(0.2)  # whatever comes later must change nothing
        for job, to, events in zip(jobs, addresses, finals, strict=True):
            final = events[-1]
            ends.append(final["state"])
            sent = len(stack.smtp.handler.to(to))
            match final["state"]:
                case "REVOKED":
                    assert final["error"]["code"] == "CANCELLED"
                    assert sent == 0, final
                case "SUCCESS":
                    assert sent == 1, final
                case other:
                    pytest.fail(f"round {round_} ended {other}: {final}")
            assert (await get(web, job["id"]))["state"] == final["state"]
    assert "REVOKED" in ends, ends


async def test_job_not_started_within_the_queue_ttl_expires_unrun(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS, queue_ttl=1)
    web = stack.start_web()  # no worker: nothing takes the job in time
    to = address("expired")
    job = await send(web, to)
    await asyncio.sleep(1.5)
    stack.add_worker(concurrency=1)

    events = await follow_to_end(web, job["id"], within=30)

    assert events[-1]["state"] == "REVOKED", events
    assert events[-1]["error"]["code"] == "EXPIRED"
    await drain(stack, web)  # a job queued now is within its deadline
    assert stack.smtp.handler.recipients_tried[to] == 0
    # Recovery does not bring it back: its pending entry is gone once housekeeping ran.
    assert (await get(web, job["id"]))["state"] == "REVOKED"
