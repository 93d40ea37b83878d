"""`jobql purge`: queued jobs end REVOKED and recovery does not bring them back."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest
from redis import Redis

from jobql.connections import create_redis
from jobql.jobs import JobState, messages_key, meta_key, pending_key
from jobql.stats import STATS_KEY
from jobql.store import JobStore
from jobql.tasks.purge import Purged, purge_queue
from jobql.tasks.recovery import UNACKED_INDEX_KEY, UNACKED_KEY, recover_lost_jobs
from tests.support import file_as_held, settings_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from jobql.settings import Settings

REVOKED_FIELD = "finished:welcome_email:REVOKED"


@pytest.fixture
def queue() -> str:
    return f"purge-{uuid.uuid4()}"


@pytest.fixture
async def store(settings: Settings, queue: str) -> AsyncIterator[JobStore]:
    redis = create_redis(settings)
    yield JobStore(redis, result_expires=600, queue=queue)
    await redis.aclose()


@pytest.fixture
def client(settings: Settings) -> Iterator[Redis]:
    with Redis.from_url(settings.redis_url) as client:
        yield client


async def queued(store: JobStore, count: int) -> list[str]:
    jobs = [
        await store.enqueue(
            "welcome_email", "u", {"recipient": f"{n}@example.com", "username": "A"}
        )
        for n in range(count)
    ]
    return [job.id for job in jobs]


def hold(client: Redis, queue: str) -> str:
    """A worker takes the oldest message and holds it (a delayed email waiting for its time)."""
    raw = client.rpop(queue)
    assert isinstance(raw, bytes)
    message = json.loads(raw)
    file_as_held(client, message, queue)
    return str(message["properties"]["correlation_id"])


def state(client: Redis, job_id: str) -> str | None:
    raw = client.get(meta_key(job_id))
    return None if raw is None else str(json.loads(raw)["status"])


def recover_twice(client: Redis, queue: str) -> int:
    looks = [recover_lost_jobs(client, 0, 0, queue=queue) for _ in range(2)]
    return sum(look.requeued for look in looks)


async def test_purge_ends_queued_jobs_revoked_and_they_do_not_come_back(
    store: JobStore, client: Redis, queue: str
) -> None:
    held, *waiting = await queued(store, 6)
    assert hold(client, queue) == held
    done = waiting.pop()
    client.set(meta_key(done), json.dumps({"status": "SUCCESS", "result": {}}))
    revoked_before = float(client.hget(STATS_KEY, REVOKED_FIELD) or 0)
    watcher = client.pubsub()  # type: ignore[no-untyped-call]
    watcher.subscribe(meta_key(waiting[0]))
    try:
        purged = purge_queue(client, expires=600, queue=queue, batch=2)

        assert purged == Purged(messages=5, revoked=4)
        assert client.llen(queue) == 0
        assert [state(client, job_id) for job_id in waiting] == ["REVOKED"] * 4
        assert state(client, done) == "SUCCESS" and state(client, held) is None
        assert float(client.hget(STATS_KEY, REVOKED_FIELD) or 0) == revoked_before + 4
        # A client following the job hears of it.
        heard = [watcher.get_message(timeout=1) for _ in range(2)]
        assert any(m and m["type"] == "message" and b"REVOKED" in m["data"] for m in heard)
        # Only the job a worker holds is still pending; recovery leaves everything alone.
        assert client.zrange(pending_key(queue), 0, -1) == [held.encode()]
        assert client.hkeys(messages_key(queue)) == [held.encode()]
        assert recover_twice(client, queue) == 0
        assert client.llen(queue) == 0

        job = await store.get(waiting[0], "u")
        assert job is not None and job.state is JobState.REVOKED
        assert job.error is not None and job.error.code == "REVOKED"
    finally:
        watcher.close()
        client.delete(UNACKED_KEY, UNACKED_INDEX_KEY)


async def test_emptying_the_queue_alone_is_undone_by_recovery(
    store: JobStore, client: Redis, queue: str
) -> None:
    # What `celery purge` does: the jobs are still pending, with a copy of their message.
    jobs = await queued(store, 3)
    client.delete(queue)

    assert recover_twice(client, queue) == 3
    assert client.llen(queue) == 3
    assert all(state(client, job_id) is None for job_id in jobs)


def purge_command(settings: Settings, queue: str, *args: str, answer: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jobql", "purge", "--queue", queue, *args],
        env=settings_env(settings),
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_purge_command_asks_first_unless_forced(
    store: JobStore, client: Redis, queue: str, settings: Settings
) -> None:
    jobs = await queued(store, 3)

    purge_command(settings, queue, answer="n\n")
    assert client.llen(queue) == 3

    out = purge_command(settings, queue, "--force")
    assert "Took 3 messages" in out and "3 jobs ended REVOKED" in out
    assert [state(client, job_id) for job_id in jobs] == ["REVOKED"] * 3
