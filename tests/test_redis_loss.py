"""Redis that loses its data under a running jobql: FLUSHALL (as a failover to an empty
replica looks), and a restart without persistence.

Jobs are queued with no worker to take them; subscriptions (`job`, `jobs`) and a
`waitForJob` follow them when Redis loses everything. Each ends with `JOB_LOST`, within
the bound the README gives (a look every `JOBQL_DATA_LOSS_CHECK` seconds, then one read
of the job), and jobs queued afterwards run as usual.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from gql import gql
from gql.transport.exceptions import TransportQueryError
from redis import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.epoch import EPOCH_KEY
from jobql.jobs import record_key
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.images import phone_photo
from tests.support import SEND_WELCOME, Process, settings_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Stack, WebServer

pytestmark = pytest.mark.slow

USER = "loss"
WAIT = "query($id: ID!) { waitForJob(id: $id, timeoutSeconds: 60) { id state } }"
FEED = "subscription { jobs { id state } }"
UPLOAD = json.dumps(
    {
        "query": "mutation($file: Upload!) { uploadAvatar(file: $file) { id } }",
        "variables": {"file": None},
    }
)
# How long an end may take: the look's period (0.5 s here), the read, and a loaded machine.
BOUND = 10.0


async def send(web: WebServer, address: str) -> str:
    client = http_client(web, token(USER, SCOPE_SEND_EMAIL))
    result = await execute(client, SEND_WELCOME, email=address, username="Loss")
    return str(result["sendWelcomeEmail"]["id"])


def code(exc: BaseException) -> str:
    assert isinstance(exc, TransportQueryError), repr(exc)
    assert exc.errors, exc
    return str(exc.errors[0]["extensions"]["code"])


async def followed(web: WebServer, job_id: str, seen: list[Any]) -> BaseException | None:
    """Follow the job, noting what arrives; the error it ended with, if any."""
    try:
        async for job in follow(ws_client(web, token(USER)), job_id):
            seen.append(job)
    except Exception as exc:
        return exc
    return None


async def fed(web: WebServer, seen: list[Any]) -> BaseException | None:
    request = gql(FEED)
    try:
        async with ws_client(web, token(USER)) as session:
            async for result in session.subscribe(request):
                seen.append(result["jobs"])
    except Exception as exc:
        return exc
    return None


async def waited(web: WebServer, job_id: str) -> BaseException | None:
    try:
        await execute(http_client(web, token(USER)), WAIT, id=job_id)
    except Exception as exc:
        return exc
    return None


async def until(condition: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(data_loss_check=0.5)
    stack.start_web()
    return stack


async def follow_then_lose(stack: Stack, lose: Callable[[], object]) -> dict[str, Any]:
    """Queue two jobs, follow them three ways, lose Redis's data: how each follower ended,
    and how long after the loss."""
    web = stack.web
    assert web is not None
    first, second = await send(web, "a@example.com"), await send(web, "b@example.com")
    job_seen: list[Any] = []
    feed_seen: list[Any] = []
    job_task = asyncio.create_task(followed(web, first, job_seen))
    feed_task = asyncio.create_task(fed(web, feed_seen))
    wait_task = asyncio.create_task(waited(web, second))
    await until(lambda: bool(job_seen))
    await asyncio.sleep(1.0)  # the feed and the wait are open by now
    lost_at = time.monotonic()
    await asyncio.to_thread(lose)
    ends: dict[str, Any] = {}
    for name, task in (("job", job_task), ("jobs", feed_task), ("waitForJob", wait_task)):
        async with asyncio.timeout(BOUND + 10):
            ends[name] = await task
        ends[f"{name}_after"] = time.monotonic() - lost_at
    ends["job_states"] = [job["state"] for job in job_seen]
    return ends


async def test_a_flushall_ends_every_follower_with_job_lost(stack: Stack) -> None:
    client = Redis.from_url(stack.settings.redis_url)
    ends = await follow_then_lose(stack, client.flushall)

    print({name: value for name, value in ends.items() if name.endswith("_after")})
    assert ends["job_states"] == ["PENDING"]
    for name in ("job", "jobs", "waitForJob"):
        assert code(ends[name]) == "JOB_LOST", ends[name]
        assert ends[f"{name}_after"] < BOUND
    assert client.exists(EPOCH_KEY)  # made again

    # Jobs queued after the loss run as usual, and are followed to their end.
    web = stack.web
    assert web is not None
    stack.add_worker()
    job_id = await send(web, "after@example.com")
    seen: list[Any] = []
    assert await followed(web, job_id, seen) is None
    assert seen[-1]["state"] == "SUCCESS"
    assert len(stack.smtp.handler.to("after@example.com")) == 1
    client.close()


async def test_a_restart_without_persistence_ends_every_follower_with_job_lost(
    stack: Stack,
) -> None:
    def restart() -> None:
        stack.redis.stop()
        stack.redis.start()

    ends = await follow_then_lose(stack, restart)

    print({name: value for name, value in ends.items() if name.endswith("_after")})
    assert code(ends["job"]) == "JOB_LOST", ends["job"]
    assert code(ends["waitForJob"]) == "JOB_LOST", ends["waitForJob"]
    # The feed follows no one job: its connection broke, and it says so.
    assert code(ends["jobs"]) in {"JOB_LOST", "SERVICE_UNAVAILABLE"}, ends["jobs"]
    assert ends["job_after"] < BOUND and ends["waitForJob_after"] < BOUND


async def test_a_job_made_after_the_loss_is_not_taken_for_lost(stack: Stack) -> None:
    """A job queued between the loss and the look that finds it keeps its subscription.

    The look is held back by putting the old epoch back at once, and let through (the key
    changed) once the new job is followed."""
    web = stack.web
    assert web is not None
    client = Redis.from_url(stack.settings.redis_url)
    await send(web, "before@example.com")
    await until(lambda: client.exists(EPOCH_KEY) == 1)
    await asyncio.sleep(1.0)  # the web process has seen this epoch
    epoch = client.get(EPOCH_KEY)
    assert epoch is not None
    with client.pipeline() as pipe:
        pipe.flushall()
        pipe.set(EPOCH_KEY, epoch)
        pipe.execute()
    job_id = await send(web, "between@example.com")
    seen: list[Any] = []
    following = asyncio.create_task(followed(web, job_id, seen))
    await until(lambda: bool(seen))
    client.set(EPOCH_KEY, b"another")
    await until(lambda: "Redis lost its data" in web.process.log)
    await asyncio.sleep(1.0)  # the subscription has asked after its job
    assert not following.done(), await following
    stack.add_worker()
    async with asyncio.timeout(60):
        assert await following is None
    assert seen[-1]["state"] == "SUCCESS"
    client.close()


async def test_the_uploads_of_lost_jobs_are_swept_at_once(
    make_stack: Callable[..., Stack],
) -> None:
    """Not after `JOBQL_SWEEP_MIN_AGE` (600 s here): once a worker sees the loss, any
    upload older than a whole request may take and with no job record goes."""
    stack = make_stack(data_loss_check=0.5, request_timeout=2.0, recover_after=600.0)
    web = stack.start_web()
    # A worker whose timers run, on a queue of its own: the avatar job stays queued.
    command = [sys.executable, "-m", "jobql", "worker", "--concurrency", "1", "-Q", "idle"]
    worker = Process(command, settings_env(stack.settings), stack.logs / "idle-worker.log")
    stack.workers.append(worker)
    worker.wait_for_log(" ready.")
    incoming = stack.settings.media_root / "incoming"
    answer = httpx.post(
        web.http_url,
        headers={"Authorization": f"Bearer {token(USER)}"},
        data={"operations": UPLOAD, "map": '{"0": ["variables.file"]}'},
        files={"0": ("photo.jpg", phone_photo(), "image/jpeg")},
        timeout=30,
    )
    job_id = answer.json()["data"]["uploadAvatar"]["id"]
    assert len(list(incoming.iterdir())) == 1
    await asyncio.sleep(4.0)  # older than a request may take; its job is queued: kept
    assert len(list(incoming.iterdir())) == 1

    client = Redis.from_url(stack.settings.redis_url)
    client.flushall()
    await until(lambda: not list(incoming.iterdir()), within=BOUND)
    assert "sweeping the uploads of the jobs lost" in worker.log
    assert not client.exists(record_key(job_id))
    client.close()
