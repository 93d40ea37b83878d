"""Recovery of a job whose message the broker lost, against a real Redis."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, cast

import pytest
from celery import Celery
from redis import Redis

from jobql.connections import create_redis
from jobql.jobs import messages_key, missing_key, pending_key, record_key
from jobql.store import JobStore
from jobql.tasks.backend import backend_url
from jobql.tasks.recovery import (
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    Recovered,
    recover_lost_jobs,
    take_lease,
)
from tests.support import file_as_held

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
    assert client.lrem(store.queue, 1, copy(client, store.queue, job.id).decode()) == 1
    return job.id


def copy(client: Redis, queue: str, job_id: str) -> bytes:
    """The copy of a pending job's message that recovery keeps."""
    message = client.hget(messages_key(queue), job_id)
    assert isinstance(message, bytes)
    return message


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
    file_as_held(client, json.loads(copy(client, queue, unacked)), queue)
    try:
        for _ in range(3):
            assert recover(client, queue) == (0, 0)
        assert client.llen(queue) == 1
        assert missing_since(client, queue, [queued.id, unacked]) == []
    finally:
        client.delete(UNACKED_KEY, UNACKED_INDEX_KEY)


async def test_expired_jobs_and_jobs_with_a_state_leave_the_pending_set(
    store: JobStore, client: Redis, queue: str, settings: Settings
) -> None:
    app = Celery("recovery-test", backend=backend_url(settings.redis_url), set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"])
    finished = await lost_job(store, client)
    app.backend.store_result(finished, {}, "SUCCESS")
    # Celery marks a job revoked with `celery control revoke` so when its message comes.
    revoked = await lost_job(store, client)
    app.backend.store_result(revoked, None, "REVOKED")
    expired = await lost_job(store, client)
    client.delete(record_key(expired))

    assert recover(client, queue) == (0, 0)
    for gone in (finished, revoked, expired):
        assert client.zscore(pending_key(queue), gone) is None
        assert client.hget(messages_key(queue), gone) is None
    assert client.llen(queue) == 0


async def test_a_job_not_yet_due_is_not_looked_at(
    store: JobStore, client: Redis, queue: str
) -> None:
    await lost_job(store, client)
    found = recover_lost_jobs(client, older_than=3600, confirm_after=0, queue=queue)
    assert (found.missing, found.requeued) == (0, 0)


def take(client: Redis, queue: str, count: int, lose: int) -> tuple[list[str], list[str]]:
    """A worker takes the `count` oldest messages off the queue and files all but `lose` of
    them as unacknowledged, as Kombu does; the ids of the filed ones and of the lost ones."""
    filed: list[str] = []
    lost: list[str] = []
    for n in range(count):
        raw = client.rpop(queue)
        assert isinstance(raw, bytes)
        message = json.loads(raw)
        job_id = message["properties"]["correlation_id"]
        if n % (count // lose) == 0 and len(lost) < lose:
            lost.append(job_id)
            continue
        file_as_held(client, message, queue)
        filed.append(job_id)
    return filed, lost


async def backlog(store: JobStore, count: int) -> list[str]:
    jobs = [
        await store.enqueue(
            "welcome_email", "u", {"recipient": f"{n}@example.com", "username": "A"}
        )
        for n in range(count)
    ]
    return [job.id for job in jobs]


def missing_since(client: Redis, queue: str, job_ids: list[str]) -> list[str]:
    """Those of `job_ids` that recovery has seen missing (once)."""
    marks = client.hmget(missing_key(queue), job_ids) if job_ids else []
    return [job_id for job_id, since in zip(job_ids, marks, strict=True) if since]


async def test_behind_a_deep_backlog_only_the_taken_jobs_are_looked_at(
    store: JobStore, client: Redis, queue: str
) -> None:
    queued = await backlog(store, 300)
    filed, lost = take(client, queue, 30, lose=3)
    try:
        first = recover_lost_jobs(client, 0, 0, queue=queue, batch=20, batches=10)
        # The taken ones and the one at the queue's tail; the 269 pushed after it are still
        # on the queue: not looked at.
        assert first == Recovered(missing=3, requeued=0, looked_at=30 + 1)
        assert missing_since(client, queue, queued) == lost

        second = recover_lost_jobs(client, 0, 0, queue=queue, batch=20, batches=10)

        assert (second.missing, second.requeued) == (0, 3)
        assert client.llen(queue) == 270 + 3
        requeued = {
            json.loads(m)["properties"]["correlation_id"] for m in client.lrange(queue, 0, 2)
        }
        assert requeued == set(lost)
        assert missing_since(client, queue, queued) == []
    finally:
        client.delete(UNACKED_KEY, UNACKED_INDEX_KEY)
    assert filed  # they stay pending, and unacknowledged


async def test_the_cursor_walks_a_batch_a_call_and_goes_round(
    store: JobStore, client: Redis, queue: str
) -> None:
    await backlog(store, 40)
    _, lost = take(client, queue, 30, lose=3)
    try:
        looked = [
            recover_lost_jobs(client, 0, 3600, queue=queue, batch=10).looked_at for _ in range(5)
        ]
        assert looked == [10, 10, 10, 1, 10]  # 30 taken and the tail's
        # Each lost job was seen missing (and is not queued again before an hour has passed).
        assert missing_since(client, queue, lost) == lost
    finally:
        client.delete(UNACKED_KEY, UNACKED_INDEX_KEY)


async def test_messages_put_back_at_the_tail_out_of_order_are_not_taken_for_lost(
    store: JobStore, client: Redis, queue: str
) -> None:
    older, newer, *_ = await backlog(store, 4)
    taken = [json.loads(cast("bytes", raw)) for raw in client.rpop(queue, 2) or []]
    # Kombu puts back a dead worker's unacknowledged messages at the tail (RPUSH), written
    # by its own JSON encoder: the newer one may end up nearer the tail than the older.
    for message in taken:
        message["headers"]["redelivered"] = True
        client.rpush(queue, json.dumps(message))

    found = recover_lost_jobs(client, 0, 0, queue=queue)

    assert found == Recovered(missing=0, requeued=0, looked_at=2)
    assert missing_since(client, queue, [older, newer]) == []


async def test_with_no_pending_job_at_the_tail_nothing_is_looked_at(
    store: JobStore, client: Redis, queue: str
) -> None:
    lost = await lost_job(store, client)
    client.rpush(queue, json.dumps({"properties": {"correlation_id": str(uuid.uuid4())}}))

    assert recover_lost_jobs(client, 0, 0, queue=queue) == Recovered(0, 0, 0)
    assert missing_since(client, queue, [lost]) == []


def test_one_holder_at_a_time_has_the_lease(client: Redis, queue: str) -> None:
    assert take_lease(client, "worker-1", 0.2, queue=queue)
    assert not take_lease(client, "worker-2", 0.2, queue=queue)
    time.sleep(0.3)  # the lease lapses on its own: a holder that died holds nothing
    assert take_lease(client, "worker-2", 0.2, queue=queue)
