"""Faults with real processes: workers killed mid-job, Redis stopped, SMTP down or refusing.

Each test builds a private jobql (its own redis-server, SMTP server, workers and web
server), so that killing things never disturbs another test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
import uuid
from functools import cache
from typing import TYPE_CHECKING, Any

import pytest
from gql.transport.exceptions import TransportQueryError
from gql.transport.file_upload import FileVar
from PIL import Image
from redis import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY
from jobql.jobs import meta_key, record_key
from jobql.tasks.backend import CHECKPOINT
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.support import REJECTING_DOMAIN, SEND_WELCOME, UPLOAD_AVATAR

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Process, Stack, WebServer

pytestmark = pytest.mark.slow

VISIBILITY = 6  # seconds; short, so that redelivery after a lost worker is quick
FAULT_SETTINGS: dict[str, Any] = {
    "visibility_timeout": VISIBILITY,
    "task_time_limit": 5,
    "mail_retry_backoff": 0.5,
    "mail_max_retries": 8,
    "mail_timeout": 2.0,
    "redis_timeout": 0.5,
    "max_decoded_image_bytes": 200 * 1024 * 1024,  # heavy_png is 169 MB of pixels
}
USER = "faults"


@cache
def heavy_png() -> bytes:
    """56 megapixels that compress to little: about a second of decoding and resizing."""
    image = Image.linear_gradient("L").resize((7500, 7500)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


async def upload_heavy(web: WebServer) -> str:
    file = FileVar(io.BytesIO(heavy_png()), filename="heavy.png", content_type="image/png")
    result = await execute(
        http_client(web, token(USER)), UPLOAD_AVATAR, upload_files=True, file=file
    )
    return str(result["uploadAvatar"]["id"])


async def send_welcome(web: WebServer, address: str, **extra: Any) -> str:
    client = http_client(web, token(USER, SCOPE_SEND_EMAIL))
    result = await execute(client, SEND_WELCOME, email=address, username="F", **extra)
    return str(result["sendWelcomeEmail"]["id"])


def meta(stack: Stack, job_id: str) -> dict[str, Any]:
    with Redis.from_url(stack.settings.redis_url) as client:
        raw = client.get(meta_key(job_id))
    return json.loads(raw) if raw else {}


def deliveries(stack: Stack, job_id: str) -> int:
    with Redis.from_url(stack.settings.redis_url) as client:
        return int(client.hget(record_key(job_id), "deliveries:0") or 0)


def kill_running_task(stack: Stack, job_id: str) -> int:
    """SIGKILL the pool process that stored STARTED for the job; return its pid."""
    pid = int(meta(stack, job_id)["result"]["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_for_state(
    web: WebServer, job_id: str, states: set[str], on_event: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    events = []
    async for event in follow(ws_client(web, token(USER)), job_id):
        events.append(event)
        on_event(event)
        if event["state"] in states:
            break
    return events


async def follow_to_end(web: WebServer, job_id: str, within: float) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in follow(ws_client(web, token(USER)), job_id)]

    return await asyncio.wait_for(collect(), within)


async def test_pool_process_killed_mid_avatar_still_succeeds_once(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    job_id = await upload_heavy(web)

    killed: list[int] = []

    def kill_first_start(event: dict[str, Any]) -> None:
        if event["state"] == "STARTED" and not killed:
            killed.append(kill_running_task(stack, job_id))

    first = await wait_for_state(web, job_id, {"STARTED"}, kill_first_start)
    rest = await follow_to_end(web, job_id, within=VISIBILITY + 30)

    assert killed, first
    assert rest[-1]["state"] == "SUCCESS", rest[-1]
    assert deliveries(stack, job_id) == 2  # killed once, delivered again
    avatars = sorted(p.name for p in (stack.settings.media_root / "avatars").iterdir())
    assert avatars == [f"{job_id}.jpg"]  # exactly one file, no half-written leftover
    assert list((stack.settings.media_root / "incoming").iterdir()) == []


async def test_whole_worker_killed_its_jobs_finish_on_a_new_worker(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    worker = stack.add_worker(concurrency=1)
    web = stack.start_web()
    running = await upload_heavy(web)
    queued = [await send_welcome(web, f"q{n}-{uuid.uuid4().hex[:6]}@example.com") for n in range(3)]

    await wait_for_state(web, running, {"STARTED"}, lambda event: None)
    os.killpg(worker.popen.pid, signal.SIGKILL)  # the main process and its pool, at once
    worker.popen.wait()
    killed_at = time.monotonic()
    stack.add_worker(concurrency=1)

    final = await follow_to_end(web, running, within=VISIBILITY + 30)
    assert final[-1]["state"] == "SUCCESS"
    # Restored by the visibility timeout and the restore scan: about VISIBILITY seconds.
    assert time.monotonic() - killed_at < VISIBILITY + 25
    assert deliveries(stack, running) == 2
    for job_id in queued:
        assert (await follow_to_end(web, job_id, within=30))[-1]["state"] == "SUCCESS"
    sent = [m["Message-ID"] for m in stack.smtp.handler.messages]
    assert sorted(sent) == sorted(f"<{job_id}@jobql>" for job_id in queued)  # no duplicates


async def test_job_that_keeps_killing_its_worker_ends_as_worker_lost(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(max_attempts=2, **FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    job_id = await upload_heavy(web)

    kills: list[int] = []

    def kill_every_start(event: dict[str, Any]) -> None:
        if event["state"] == "STARTED" and len(kills) < 2:
            kills.append(kill_running_task(stack, job_id))

    events = await asyncio.wait_for(
        wait_for_state(web, job_id, {"SUCCESS", "FAILURE"}, kill_every_start), VISIBILITY + 60
    )

    assert len(kills) == 2
    assert events[-1]["state"] == "FAILURE"
    assert events[-1]["error"]["code"] == "WORKER_LOST"
    assert events[-1]["error"]["retryable"] is False
    assert deliveries(stack, job_id) == 3  # two kills, then refused without running
    assert list((stack.settings.media_root / "incoming").iterdir()) == []


async def test_redis_stopped_then_started_loses_no_accepted_job(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(persistent_redis=True, **FAULT_SETTINGS)
    web = stack.start_web()
    accepted = [
        await send_welcome(web, f"o{n}-{uuid.uuid4().hex[:6]}@example.com") for n in range(5)
    ]
    subscription = asyncio.create_task(follow_to_end(web, accepted[0], within=30))
    await asyncio.sleep(0.5)

    stack.redis.stop()

    started = time.monotonic()
    with pytest.raises(TransportQueryError) as raised:
        await asyncio.wait_for(send_welcome(web, "during@example.com"), 2)
    assert raised.value.errors
    assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    with pytest.raises(TransportQueryError) as raised:
        await asyncio.wait_for(execute(http_client(web, token(USER)), JOB_QUERY, id=accepted[1]), 2)
    assert raised.value.errors
    assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    with pytest.raises(TransportQueryError):
        await asyncio.wait_for(subscription, 5)  # ends with an error, does not hang
    assert time.monotonic() - started < 10

    stack.redis.start()
    stack.add_worker(concurrency=2)

    for job_id in accepted:
        assert (await follow_to_end(web, job_id, within=30))[-1]["state"] == "SUCCESS"
    assert len(stack.smtp.handler.messages) == len(accepted)


async def test_redis_that_stops_answering_is_service_unavailable_within_2_s(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    web = stack.start_web()
    job_id = await send_welcome(web, f"p-{uuid.uuid4().hex[:6]}@example.com", delaySeconds=0)
    subscription = asyncio.create_task(follow_to_end(web, job_id, within=30))  # no worker
    await asyncio.sleep(0.5)
    assert stack.redis.process is not None
    os.kill(stack.redis.process.pid, signal.SIGSTOP)  # connections hang rather than fail
    try:
        for attempt in (
            send_welcome(web, "hang@example.com"),
            execute(http_client(web, token(USER)), JOB_QUERY, id=job_id),
        ):
            with pytest.raises(TransportQueryError) as raised:
                await asyncio.wait_for(attempt, 2)
            assert raised.value.errors
            assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        # Those failures have the pub/sub connection checked: the subscription ends too.
        with pytest.raises(TransportQueryError) as raised:
            await asyncio.wait_for(subscription, 5)
        assert raised.value.errors
        assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    finally:
        os.kill(stack.redis.process.pid, signal.SIGCONT)
    answer = await execute(http_client(web, token(USER)), JOB_QUERY, id=job_id)
    assert answer["job"]["id"] == job_id  # the same web process serves again


async def test_smtp_down_retries_until_it_is_back(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    stack.smtp.stop()
    address = f"later-{uuid.uuid4().hex[:6]}@example.com"
    job_id = await send_welcome(web, address)

    await asyncio.wait_for(wait_for_state(web, job_id, {"RETRY"}, lambda e: None), 20)
    stack.smtp.start()
    events = await follow_to_end(web, job_id, within=60)

    assert events[-1]["state"] == "SUCCESS"
    assert len(stack.smtp.handler.to(address)) == 1


async def test_smtp_restarted_between_emails_costs_no_retry(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    before, after = (f"{n}-{uuid.uuid4().hex[:6]}@example.com" for n in ("before", "after"))
    events = await follow_to_end(web, await send_welcome(web, before), within=30)
    assert events[-1]["state"] == "SUCCESS"
    assert stack.smtp.handler.peers[before] not in stack.smtp.handler.quit_by  # kept open

    # The connection the worker kept open dies with the server it was open to.
    stack.smtp.stop()
    stack.smtp.start()
    events = await follow_to_end(web, await send_welcome(web, after), within=30)

    assert [event["state"] for event in events][-1] == "SUCCESS"
    assert "RETRY" not in [event["state"] for event in events]
    assert stack.smtp.handler.peers[before] != stack.smtp.handler.peers[after]


async def test_stopped_worker_quits_the_smtp_connection_it_kept(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    worker = stack.add_worker(concurrency=1)
    web = stack.start_web()
    addresses = [f"kept-{n}-{uuid.uuid4().hex[:6]}@example.com" for n in range(2)]
    for address in addresses:
        events = await follow_to_end(web, await send_welcome(web, address), within=30)
        assert events[-1]["state"] == "SUCCESS"
    [peer] = {stack.smtp.handler.peers[address] for address in addresses}
    assert peer not in stack.smtp.handler.quit_by

    worker.stop()

    assert peer in stack.smtp.handler.quit_by


async def test_email_an_earlier_delivery_sent_is_not_sent_again(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()  # FAULT_SETTINGS leave no room for a delay
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    address = f"once-{uuid.uuid4().hex[:6]}@example.com"
    job_id = await send_welcome(web, address, delaySeconds=2)
    # What a delivery leaves when the server accepted its message and it died before SUCCESS.
    with Redis.from_url(stack.settings.redis_url) as client:
        client.hset(record_key(job_id), CHECKPOINT, f"<{job_id}@jobql>")

    events = await follow_to_end(web, job_id, within=30)

    assert events[-1]["state"] == "SUCCESS"
    assert stack.smtp.handler.to(address) == []


async def test_smtp_5xx_fails_at_once_without_a_retry_storm(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**FAULT_SETTINGS)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    address = f"nobody-{uuid.uuid4().hex[:6]}@{REJECTING_DOMAIN}"
    job_id = await send_welcome(web, address)

    events = await follow_to_end(web, job_id, within=30)

    assert events[-1]["state"] == "FAILURE"
    assert events[-1]["error"]["code"] == "SMTP_REJECTED"
    assert "RETRY" not in [event["state"] for event in events]
    assert stack.smtp.handler.recipients_tried[address] == 1


async def test_worker_sweeps_orphaned_uploads(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        **{**FAULT_SETTINGS, "task_time_limit": 1}, sweep_interval=0.5, sweep_min_age=1
    )
    (stack.settings.media_root / "incoming").mkdir(parents=True)
    orphan = stack.settings.media_root / "incoming" / f"{uuid.uuid4()}.upload"
    orphan.write_bytes(b"left by a web process that died")
    waiting = stack.settings.media_root / "incoming" / f"{uuid.uuid4()}.upload"
    waiting.write_bytes(b"its job is still queued")
    with Redis.from_url(stack.settings.redis_url) as client:
        client.hset(record_key(waiting.stem), mapping={"owner": USER, "kind": "avatar"})

    worker: Process = stack.add_worker(concurrency=1)
    deadline = time.monotonic() + 15
    while orphan.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)

    assert not orphan.exists(), worker.log[-2000:]
    assert waiting.exists()
