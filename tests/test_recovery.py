"""Recovery of a job whose message the broker lost, against a real Redis."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pytest
from redis import Redis

from jobql.connections import create_redis
from jobql.jobs import meta_key, pending_key, record_key
from jobql.store import JobStore
from jobql.tasks.recovery import UNACKED_KEY, recover_lost_jobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from jobql.settings import Settings


@pytest.fixture
def queue() -> str:
    return f"recovery-{uuid.uuid4()}"


@pytest.fixture
async def store(settings: Settings, queue: str) -> AsyncIterator[JobStore]:
    redis = create_redis(settings)
    yield JobStore(redis, result_expires=600, queue=queue)
    await redis.aclose()


@pytest.fixture
def client(settings: Settings) -> Iterator[Redis]:
    with Redis.from_url(settings.redis_url) as client:
        yield client


async def lost_job(store: JobStore, client: Redis) -> str:
    """A job whose message a worker took off the queue and died before filing it."""
    job = await store.enqueue("welcome_email", "u", {"recipient": "a@example.com", "username": "A"})
    message = client.hget(record_key(job.id), "message")
    assert message is not None
    assert (
        client.lrem(store.queue, 1, message.decode() if isinstance(message, bytes) else message)
        == 1
    )
    return job.id


def recover(client: Redis, queue: str) -> tuple[int, int]:
    found = recover_lost_jobs(client, older_than=0, confirm_after=0, queue=queue)
    return found.missing, found.requeued


async def test_a_lost_message_is_queued_again_after_two_looks(
    store: JobStore, client: Redis, queue: str
) -> None:
    job_id = await lost_job(store, client)

    assert recover(client, queue) == (1, 0)  # first look: only noted as missing
    assert client.llen(queue) == 0
    assert recover(client, queue) == (0, 1)  # second look: queued again

    [message] = client.lrange(queue, 0, -1)
    assert json.loads(message)["headers"]["id"] == job_id
    assert client.hget(record_key(job_id), "requeued") == b"1"


async def test_a_message_on_the_queue_or_unacknowledged_is_left_alone(
    store: JobStore, client: Redis, queue: str
) -> None:
    queued = await store.enqueue("welcome_email", "u", {})
    unacked = await lost_job(store, client)
    message = client.hget(record_key(unacked), "message")
    assert message is not None
    tag = json.loads(message)["properties"]["delivery_tag"]
    client.hset(UNACKED_KEY, tag, json.dumps([json.loads(message), "", queue]))
    try:
        for _ in range(3):
            assert recover(client, queue) == (0, 0)
        assert client.llen(queue) == 1
        assert client.hget(record_key(queued.id), "missing_since") is None
    finally:
        client.hdel(UNACKED_KEY, tag)


async def test_started_expired_and_finished_jobs_leave_the_pending_set(
    store: JobStore, client: Redis, queue: str
) -> None:
    finished = await lost_job(store, client)
    client.set(meta_key(finished), json.dumps({"status": "SUCCESS"}))
    expired = await lost_job(store, client)
    client.delete(record_key(expired))

    assert recover(client, queue) == (0, 0)
    assert client.zscore(pending_key(queue), finished) is None
    assert client.zscore(pending_key(queue), expired) is None
    assert client.llen(queue) == 0


async def test_a_job_not_yet_due_is_not_looked_at(
    store: JobStore, client: Redis, queue: str
) -> None:
    await lost_job(store, client)
    found = recover_lost_jobs(client, older_than=3600, confirm_after=0, queue=queue)
    assert (found.missing, found.requeued) == (0, 0)
