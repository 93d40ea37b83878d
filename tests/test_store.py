"""JobStore against a real Redis: the record and the task message land together."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from jobql.connections import create_redis
from jobql.jobs import JobState, messages_key, meta_key, owner_key, pending_key, record_key
from jobql.store import TRIM_BATCH, JobStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from jobql.settings import Settings

EXPIRES = 600


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[JobStore]:
    redis = create_redis(settings)
    # A queue of its own, so that the suite's worker never takes these messages.
    yield JobStore(redis, result_expires=EXPIRES, queue=f"test-{uuid.uuid4()}")
    await redis.aclose()


async def test_enqueue_writes_record_and_message(store: JobStore, redis: Redis) -> None:
    job = await store.enqueue(
        "welcome_email", "u1", {"recipient": "a@example.com", "username": "A"}
    )

    assert job.state is JobState.PENDING
    record = await redis.hgetall(record_key(job.id))
    assert record[b"owner"] == b"u1" and record[b"kind"] == b"welcome_email"
    assert 0 < await redis.ttl(record_key(job.id)) <= EXPIRES
    expires_at = (job.created_at + timedelta(seconds=EXPIRES)).isoformat()
    assert record[b"expires_at"] == expires_at.encode()
    assert job.expires_at == job.created_at + timedelta(seconds=EXPIRES)
    [raw] = await redis.lrange(store.queue, 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == "jobql.welcome_email"
    assert envelope["headers"]["id"] == job.id
    assert envelope["headers"]["eta"] is None
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([], {"recipient": "a@example.com", "username": "A"})


async def test_enqueue_sent_again_queues_the_job_once(store: JobStore, redis: Redis) -> None:
    # What a pipeline retried after its connection broke would do.
    job_id = str(uuid.uuid4())
    for _ in range(2):
        await store.enqueue(
            "welcome_email", "u1", {"recipient": "a@example.com", "username": "A"}, job_id=job_id
        )

    assert await redis.llen(store.queue) == 1
    assert await redis.zcard(pending_key(store.queue)) == 1


async def test_enqueue_keeps_the_message_copy_beside_a_compact_record(
    store: JobStore, redis: Redis
) -> None:
    job = await store.enqueue(
        "welcome_email",
        "u1",
        {"recipient": "a@example.com", "username": "A"},
        delay=timedelta(seconds=30),
    )

    [raw] = await redis.lrange(store.queue, 0, -1)
    record = await redis.hgetall(record_key(job.id))
    assert set(record) == {b"owner", b"kind", b"created_at", b"expires_at"}
    # Small fields only: Redis keeps the record in its compact encoding.
    assert await redis.object("encoding", record_key(job.id)) in (b"ziplist", b"listpack")
    assert await redis.hget(messages_key(store.queue), job.id) == raw
    # Pending from when its message was pushed, not from when it may start.
    score = await redis.zscore(pending_key(store.queue), job.id)
    assert score == pytest.approx(job.created_at.timestamp())


async def test_delayed_job_carries_an_eta(store: JobStore, redis: Redis) -> None:
    job = await store.enqueue("welcome_email", "u1", {}, delay=timedelta(seconds=30))
    [raw] = await redis.lrange(store.queue, 0, -1)
    eta = json.loads(raw)["headers"]["eta"]
    assert eta == (job.created_at + timedelta(seconds=30)).isoformat()


async def test_get_hides_other_owners_unknown_and_malformed_ids(store: JobStore) -> None:
    job = await store.enqueue(
        "avatar",
        "owner",
        {"incoming_name": "x.upload", "size": 64, "quality": 80, "image_format": "PNG"},
    )

    assert (await store.get(job.id, "owner")) == job
    assert await store.get(job.id, "someone-else") is None
    assert await store.get(str(uuid.uuid4()), "owner") is None
    assert await store.get("not-a-uuid", "owner") is None
    assert await store.get(job.id.upper(), "owner") is None


async def test_get_reads_the_state_from_celerys_meta(store: JobStore, redis: Redis) -> None:
    job = await store.enqueue("welcome_email", "u2", {})
    meta = {"status": "PROGRESS", "result": {"progress": 60, "attempt": 1}, "retries": 0}
    await redis.set(meta_key(job.id), json.dumps(meta))

    current = await store.get(job.id, "u2")

    assert current is not None
    assert (current.state, current.progress) == (JobState.PROGRESS, 60)


async def test_owner_index_loses_expired_entries_a_bounded_batch_per_write(
    store: JobStore, redis: Redis
) -> None:
    owner = f"hoarder-{uuid.uuid4()}"
    stale = time.time() - EXPIRES - 60
    await redis.zadd(owner_key(owner), {f"gone-{i}": stale + i / 1000 for i in range(250)})

    kept = []
    for expected_left in (250 - TRIM_BATCH, 250 - 2 * TRIM_BATCH, 0):
        kept.append((await store.enqueue("welcome_email", owner, {})).id)
        assert await redis.zcount(owner_key(owner), "-inf", stale + 1) == expected_left

    assert set(await redis.zrange(owner_key(owner), 0, -1)) == {i.encode() for i in kept}
    assert 0 < await redis.ttl(owner_key(owner)) <= EXPIRES
