"""The web process's view of jobs: queue one, read one. Every call is one Redis round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobql.jobs import (
    DEFAULT_QUEUE,
    JobKind,
    JobSnapshot,
    is_job_id,
    load_meta,
    meta_key,
    new_job_id,
    new_record,
    record_key,
    snapshot,
    utcnow,
)
from jobql.messages import task_message

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import timedelta

    from redis.asyncio import Redis


class JobStore:
    def __init__(self, redis: Redis, result_expires: int, queue: str = DEFAULT_QUEUE) -> None:
        self.redis = redis
        self.result_expires = result_expires
        self.queue = queue

    async def enqueue(
        self,
        kind: JobKind,
        owner: str,
        args: list[Any],
        job_id: str | None = None,
        delay: timedelta | None = None,
    ) -> JobSnapshot:
        """Write the job record and queue its task in one transaction: both or neither.

        With `delay`, a worker starts the task no sooner than that from now.
        """
        job_id = job_id or new_job_id()
        created_at = utcnow()
        eta = created_at + delay if delay else None
        record = new_record(kind, owner, created_at)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(record_key(job_id), items=[part for pair in record.items() for part in pair])
            pipe.expire(record_key(job_id), self.result_expires)
            pipe.lpush(self.queue, task_message(kind.task_name, job_id, args, self.queue, eta))
            await pipe.execute()
        return snapshot(job_id, record, None)

    async def get(self, job_id: str, owner: str) -> JobSnapshot | None:
        """The job, or None when it does not exist, has expired or is not `owner`'s."""
        if not is_job_id(job_id):
            return None
        record, meta = await self.load(job_id)
        if record.get("owner") != owner:
            return None
        return snapshot(job_id, record, meta)

    async def load(self, job_id: str) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The job record (empty if there is none) and Celery's result meta (None if none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(record_key(job_id))
            pipe.get(meta_key(job_id))
            raw_record, raw_meta = await pipe.execute()
        return _decode(raw_record), load_meta(raw_meta)

    async def record(self, job_id: str) -> dict[str, str]:
        return _decode(await self.redis.hgetall(record_key(job_id)))


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
