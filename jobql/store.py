"""The web process's view of jobs: queue one, read one.

Every call is one Redis round trip, shared with the calls of other requests made at the
same moment (`AutoPipeline`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from jobql.callbacks import CALLBACK_FIELDS, CallbackStatus, callback_status
from jobql.connections import AutoPipeline, text
from jobql.errors import IdempotencyKeyReused
from jobql.jobs import (
    CALLBACK_QUEUE,
    CALLBACK_TASK,
    CANCELLED,
    CANCELLED_FIELD,
    DEFAULT_QUEUE,
    QUEUE_CALLBACK,
    RECORD_FIELDS,
    TELL_OWNER,
    Dedupe,
    Idempotency,
    JobSnapshot,
    callback_key,
    inputs_key,
    is_job_id,
    load_meta,
    messages_key,
    meta_key,
    missing_key,
    new_job_id,
    new_record,
    owner_event,
    owner_events,
    owner_key,
    pending_key,
    record_key,
    revoked_meta,
    snapshot,
    task_name,
    utcnow,
)
from jobql.messages import task_message
from jobql.stats import STATS_KEY, accepted_field

if TYPE_CHECKING:
    from redis.asyncio import Redis


NO_SUCH_JOB = "00000000-0000-0000-0000-000000000000"

# Atomically: unless KEYS[8] (an idempotency key, when given) names a first job (then
# returned as {"<id> <fingerprint>"}) or KEYS[1] (a dedupe key, when given) names an
# earlier job, claim them,
# write the job record, note the job as pending with a copy of its message (kept until a
# worker starts the job, outside the record so that the record stays a small listpack),
# queue the task message, count it as accepted, add it to its owner's jobs and tell the
# owner's channel; with KEYS[9] (a callback hash), keep the callback URL and the message
# of its delivery task there, for the script that ends the job to queue; and keep what
# the job was given (ARGV[15]) in KEYS[10], for `retryJob`. Returns the
# earlier job's id, or false. A job whose record exists is queued already: a pipeline
# sent again after its connection broke must not queue it twice.
#
# The owner's index loses at most TRIM_BATCH expired entries per write: a write costs the
# same however long the owner was away, and `jobs` never reads below the cutoff anyway.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if KEYS[8] ~= '' then
  local first = redis.call('GET', KEYS[8])
  if first then return {first} end
end
if KEYS[1] ~= '' then
  local earlier = redis.call('GET', KEYS[1])
  if earlier then return earlier end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
if KEYS[8] ~= '' then redis.call('SET', KEYS[8], ARGV[1] .. ' ' .. ARGV[11], 'EX', ARGV[12]) end
if KEYS[9] ~= '' then
  redis.call('HSET', KEYS[9], 'url', ARGV[13], 'message', ARGV[14], 'attempts', 0)
  redis.call('EXPIRE', KEYS[9], ARGV[3])
end
redis.call('HSET', KEYS[2], unpack(ARGV, 16))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[10], ARGV[15], 'EX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])
local expired = redis.call('ZCOUNT', KEYS[6], '-inf', '(' .. ARGV[7])
if expired > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, math.min(expired, tonumber(ARGV[8])) - 1)
end
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('PUBLISH', ARGV[9], ARGV[10])
return false
"""
TRIM_BATCH = 100


# Atomically, for the owner ARGV[1] of the job whose record is KEYS[1]: nothing if the job
# is done; else mark the record cancelled (a worker that takes the message drops it; a
# running body stops at its next checkpoint) and, unless a worker holds it now (queued,
# delayed or waiting to retry), end it REVOKED at once: the meta ARGV[2] written and
# PUBLISHed, and recovery's copy of its message dropped. Returns 0 if the job is not
# the owner's, 1 otherwise. Decides every race with the worker's START script, which
# reads the same mark in the same way.
CANCEL_SCRIPT = (
    TELL_OWNER
    + QUEUE_CALLBACK
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[2])
local status = current and cjson.decode(current)['status'] or 'PENDING'
if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then return 1 end
redis.call('HSET', KEYS[1], ARGV[5], '1')
if status == 'PENDING' or status == 'RETRY' then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  tell_owner(KEYS[1], ARGV[2])
  queue_callback(KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[4], ARGV[3])
  redis.call('HDEL', KEYS[5], ARGV[3])
end
return 1
"""
)


class AlreadyQueued(Exception):
    """An earlier job holds the dedupe key; `job_id` is that job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobStore:
    def __init__(
        self,
        redis: Redis,
        result_expires: int,
        queue: str = DEFAULT_QUEUE,
        timeout: float | None = None,
        queue_ttl: int = 3600,
    ) -> None:
        self.result_expires = result_expires
        self.queue_ttl = queue_ttl
        self.queue = queue
        self._pipeline = AutoPipeline(redis, timeout)

    @property
    def pipeline(self) -> AutoPipeline:
        """The pipeline the store's calls go in, for other reads to share."""
        return self._pipeline

    async def enqueue(
        self,
        kind: str,
        owner: str,
        kwargs: dict[str, Any],
        job_id: str | None = None,
        delay: timedelta | None = None,
        dedupe: Dedupe | None = None,
        idempotency: Idempotency | None = None,
        callback_url: str | None = None,
        retry_of: str | None = None,
    ) -> JobSnapshot:
        """Write the job record and queue its task, both or neither, in one round trip.

        With `delay`, a worker starts the task no sooner than that from now. With
        `dedupe`, raises `AlreadyQueued` when an earlier job holds the key. With
        `callback_url` (checked already), the job's end queues a task that POSTs it there.
        `retry_of` is the job this one retries.
        """
        job_id = job_id or new_job_id()
        created_at = utcnow()
        eta = created_at + delay if delay else None
        kept = timedelta(seconds=self.result_expires)
        record = new_record(kind, owner, created_at, created_at + kept, retry_of)
        # Past this, a worker that takes the message marks the job REVOKED (Celery's
        # `expires`): a backlog that clears late does not run stale jobs.
        expires = (eta or created_at) + timedelta(seconds=self.queue_ttl)
        message = task_message(task_name(kind), job_id, kwargs, self.queue, eta, expires)
        keys = [
            dedupe.key if dedupe else "",
            record_key(job_id),
            self.queue,
            pending_key(self.queue),
            STATS_KEY,
            owner_key(owner),
            messages_key(self.queue),
            idempotency.key if idempotency else "",
            callback_key(job_id) if callback_url else "",
            inputs_key(job_id),
        ]
        # The delivery's id is its task's: the same on every attempt.
        delivery = (
            task_message(CALLBACK_TASK, new_job_id(), {"job_id": job_id}, CALLBACK_QUEUE)
            if callback_url
            else ""
        )
        args = [
            job_id,
            int(dedupe.ttl.total_seconds()) if dedupe else 0,
            self.result_expires,
            message,
            created_at.timestamp(),  # when the message is pushed, eta or not
            accepted_field(kind),
            (created_at - kept).timestamp(),
            TRIM_BATCH,
            owner_events(owner),
            owner_event(job_id, record, None),
            idempotency.fingerprint if idempotency else "",
            int(idempotency.ttl.total_seconds()) if idempotency else 0,
            callback_url or "",
            delivery,
            json.dumps(kwargs),
            *(part for pair in record.items() for part in pair),
        ]
        # EVAL rather than EVALSHA: Redis keeps the compiled script either way, and a
        # pipeline cannot load a script it finds missing.
        [earlier] = await self._pipeline.execute(("EVAL", ENQUEUE_SCRIPT, len(keys), *keys, *args))
        if isinstance(earlier, list):
            first_id, _, fingerprint = text(earlier[0]).partition(" ")
            if idempotency is not None and fingerprint != idempotency.fingerprint:
                raise IdempotencyKeyReused(
                    "This idempotency key was used for a request with other arguments."
                )
            raise AlreadyQueued(first_id)
        if earlier:
            raise AlreadyQueued(text(earlier))
        return snapshot(job_id, record, None)

    async def cancel(self, job_id: str, owner: str) -> JobSnapshot | None:
        """Cancel `owner`'s job (see CANCEL_SCRIPT) and answer with it as it is then; None
        when it does not exist, has expired or is not `owner`'s."""
        job_id = job_id if is_job_id(job_id) else NO_SUCH_JOB
        meta = revoked_meta(job_id, CANCELLED, "The job was cancelled.")
        keys = [record_key(job_id), meta_key(job_id), pending_key(self.queue)]
        keys += [messages_key(self.queue), missing_key(self.queue)]
        args = [owner, meta, job_id, self.result_expires, CANCELLED_FIELD]
        [mine] = await self._pipeline.execute(("EVAL", CANCEL_SCRIPT, len(keys), *keys, *args))
        return await self.get(job_id, owner) if mine else None

    async def inputs(self, job_id: str) -> dict[str, Any] | None:
        """What the job was given (its task's keyword arguments), while they are kept."""
        [raw] = await self._pipeline.execute(("GET", inputs_key(job_id)))
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def get(self, job_id: str, owner: str) -> JobSnapshot | None:
        """The job, or None when it does not exist, has expired or is not `owner`'s."""
        # A malformed id costs the same round trip as a real one: the answer's timing
        # must not tell a caller which ids exist.
        record, meta = await self.load(job_id if is_job_id(job_id) else NO_SUCH_JOB)
        if record.get("owner") != owner:
            return None
        return snapshot(job_id, record, meta)

    async def load(self, job_id: str) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The job record (empty if there is none) and Celery's result meta (None if none)."""
        values, raw_meta = await self._pipeline.execute(
            ("HMGET", record_key(job_id), *RECORD_FIELDS), ("GET", meta_key(job_id))
        )
        record = {
            field: text(value) for field, value in zip(RECORD_FIELDS, values, strict=True) if value
        }
        return record, load_meta(raw_meta)

    async def callback(self, job_id: str) -> CallbackStatus | None:
        """How the job's callback went; None if it was given no callbackUrl."""
        [values] = await self._pipeline.execute(("HMGET", callback_key(job_id), *CALLBACK_FIELDS))
        return callback_status(values)

    async def record(self, job_id: str) -> dict[str, str]:
        return (await self.load(job_id))[0]
