"""The job layer both sides share: states, kinds, the job record and how to read a job.

The web process writes a small record (owner, kind, creation time) before it
queues a task; the worker adds the start time and the attempt count; the state
itself lives where Celery keeps it, in the result backend's
`celery-task-meta-<id>` key, which Celery also PUBLISHes on a channel of the
same name at every write.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

RECORD_PREFIX = "jobql:job:"
META_PREFIX = "celery-task-meta-"
DEFAULT_QUEUE = "celery"
# Per queue, the jobs queued but not started yet, scored by when their message was pushed
# onto the queue (what recovery watches); a copy of each one's message, by job id, kept
# until a worker starts the job; and when recovery first found a job's message missing.
PENDING_PREFIX = "jobql:pending:"
MESSAGES_PREFIX = "jobql:messages:"
MISSING_PREFIX = "jobql:missing:"
# What a snapshot needs of a job record (not the fields only the worker and recovery use).
# `attempts` counts the deliveries a worker started; `expires_at` is when the record
# expires, rewritten whenever its expiry is; `retry_of` is the job a `retryJob` made this
# one from.
RECORD_FIELDS = (
    "owner", "kind", "created_at", "started_at", "attempts", "expires_at", "retry_of",
)  # fmt: skip
# Per owner, their jobs scored by creation time: what `jobs` and a kind read to list a
# user's jobs.
OWNER_PREFIX = "jobql:owner:"
# Per job, what it was given (its task's keyword arguments, as JSON), so that `retryJob`
# can queue it again: kept as long as the record, and dropped when the job ends in a way
# no retry would change (SUCCESS, or a FAILURE that is not retryable). Beside the record,
# not in it, so that the record stays a small listpack.
INPUTS_PREFIX = "jobql:inputs:"
# Per job that a `retryJob` has retried: the retry's id (a second `retryJob` answers with it).
RETRIED_PREFIX = "jobql:retried:"
# Per owner, a pub/sub channel that carries every state write of each of their jobs (as
# an `owner_event`), besides the job's own channel.
OWNER_EVENTS_PREFIX = "jobql:owner-events:"

# In the job record, once its owner has cancelled it: a worker that starts it drops it, and
# a running body stops at its next checkpoint.
CANCELLED_FIELD = "cancelled"
# Per job given a callbackUrl, a hash: its `url`, the `message` of its delivery task (until
# the job's end queues it), and how delivery went (`attempts`, `delivered_at`,
# `last_error`). Kept beside the record, not in it, so that the record stays a small
# listpack however long the URL. Delivery tasks have a queue of their own, so that a slow
# receiver never holds a job's message behind it.
CALLBACK_PREFIX = "jobql:callback:"
CALLBACK_QUEUE = "jobql-callbacks"
# Not of the form `jobql.<kind>`: a kind's name is a GraphQL name, which has no "-".
CALLBACK_TASK = "jobql.callback-delivery"
CANCELLED = "CANCELLED"  # the error code of a job its owner cancelled
EXPIRED = "EXPIRED"  # the error code of a job no worker started within the queue deadline


class JobState(StrEnum):
    PENDING = "PENDING"  # accepted, waiting for a worker
    STARTED = "STARTED"  # a worker has begun
    PROGRESS = "PROGRESS"  # a worker reports how far it is
    RETRY = "RETRY"  # failed for now; will be tried again after a pause
    SUCCESS = "SUCCESS"  # finished; the result is set
    FAILURE = "FAILURE"  # finished with an error
    REVOKED = "REVOKED"  # cancelled before it finished


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})


def arguments_repr(kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """What Celery's events and log lines show of a task's arguments (the message's
    `argsrepr` and `kwargsrepr`): not the values, which may be personal (an address)."""
    return "()", f"<{len(kwargs)} kwargs>"


def task_name(kind: str) -> str:
    """The Celery task that runs jobs of `kind` (a kind's name, as the job record keeps it)."""
    return f"jobql.{kind}"


class JobFailed(Exception):
    """Raised by a task to end its job in FAILURE with a code a client can act on.

    The three values travel as the exception's args, because that is all of an
    exception that Celery's JSON result meta keeps.
    """

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(code, message, retryable)
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Dedupe:
    """At most one job per `key` for `ttl`: a second request gets the first job instead."""

    key: str
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A client's idempotency key, as stored: the same key with the same `fingerprint`
    (of the request's arguments) within `ttl` gets the first job."""

    key: str  # the Redis key: per owner and mutation
    fingerprint: str
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class JobError:
    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    id: str
    kind: str  # the kind's name
    owner: str
    state: JobState
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: int | None = None
    attempts: int = 0
    retry_of: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def retryable(self) -> bool:
        """Whether it ended in a way that `retryJob` may try again (FAILURE marked
        retryable, or REVOKED)."""
        return self.error is not None and self.error.retryable


def record_key(job_id: str) -> str:
    return f"{RECORD_PREFIX}{job_id}"


def meta_key(job_id: str) -> str:
    return f"{META_PREFIX}{job_id}"


def pending_key(queue: str) -> str:
    return f"{PENDING_PREFIX}{queue}"


def messages_key(queue: str) -> str:
    return f"{MESSAGES_PREFIX}{queue}"


def missing_key(queue: str) -> str:
    return f"{MISSING_PREFIX}{queue}"


def inputs_key(job_id: str) -> str:
    return f"{INPUTS_PREFIX}{job_id}"


def retried_key(job_id: str) -> str:
    return f"{RETRIED_PREFIX}{job_id}"


def owner_key(owner: str) -> str:
    return f"{OWNER_PREFIX}{owner}"


# Lua: `tell_owner(record key, meta)` PUBLISHes an `owner_event` on the owner's channel,
# with the record's `RECORD_FIELDS` (nothing when the record is gone). Shared by every
# script that writes a job's state.
TELL_OWNER = f"""
local record_fields = {{{", ".join(f"'{name}'" for name in RECORD_FIELDS)}}}
local function tell_owner(record, value)
    local values = redis.call('HMGET', record, unpack(record_fields))
    local owner = values[1]
    if not owner then return end
    local fields = {{}}
    for i, name in ipairs(record_fields) do
        if values[i] then fields[name] = values[i] end
    end
    local id = string.sub(record, {len(RECORD_PREFIX) + 1})
    local event = cjson.encode({{id = id, record = fields, meta = value}})
    redis.call('PUBLISH', '{OWNER_EVENTS_PREFIX}' .. owner, event)
end
"""


# Lua: `queue_callback(record key)` pushes the job's callback delivery message, once, when
# a script has just ended the job (nothing for a job without a callback);
# `keep_callback(record key, seconds)` keeps its callback hash as long as the record.
QUEUE_CALLBACK = f"""
local function callback_of(record)
    return '{CALLBACK_PREFIX}' .. string.sub(record, {len(RECORD_PREFIX) + 1})
end
local function queue_callback(record)
    local key = callback_of(record)
    local message = redis.call('HGET', key, 'message')
    if message then
        redis.call('HDEL', key, 'message')
        redis.call('LPUSH', '{CALLBACK_QUEUE}', message)
    end
end
local function keep_callback(record, seconds)
    redis.call('EXPIRE', callback_of(record), seconds)
end
"""


def callback_key(job_id: str) -> str:
    return f"{CALLBACK_PREFIX}{job_id}"


def owner_events(owner: str) -> str:
    return f"{OWNER_EVENTS_PREFIX}{owner}"


def owner_event(job_id: str, record: dict[str, str], meta: str | None) -> str:
    """What an owner's channel carries for one state write: the job's id, its record's
    `RECORD_FIELDS` and Celery's meta as written (null before the first write)."""
    return json.dumps({"id": job_id, "record": record, "meta": meta})


def read_owner_event(payload: bytes | str) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """The job id, record and meta of an `owner_event`."""
    event = json.loads(payload)
    return event["id"], event["record"], load_meta(event["meta"])


def new_job_id() -> str:
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_record(
    kind: str, owner: str, created_at: datetime, expires_at: datetime, retry_of: str | None = None
) -> dict[str, str]:
    record = {
        "owner": owner,
        "kind": kind,
        "created_at": created_at.isoformat(),
        "expires_at": expires_at.isoformat(),
    }
    if retry_of is not None:
        record["retry_of"] = retry_of
    return record


def load_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    meta = json.loads(raw)
    return meta if isinstance(meta, dict) else None


def snapshot(job_id: str, record: dict[str, str], meta: dict[str, Any] | None) -> JobSnapshot:
    """Combine a job record with Celery's result meta (None while nothing is stored)."""
    created_at = datetime.fromisoformat(record["created_at"])
    base = JobSnapshot(
        id=job_id,
        kind=record["kind"],
        owner=record["owner"],
        state=JobState.PENDING,
        created_at=created_at,
        # A record written before it kept its expiry says nothing better than its creation.
        expires_at=_parse_time(record.get("expires_at")) or created_at,
        started_at=_parse_time(record.get("started_at")),
        attempts=int(record.get("attempts") or 0),
        retry_of=record.get("retry_of") or None,
    )
    if meta is None:
        return base
    state = JobState(meta["status"])
    result = meta.get("result")
    return JobSnapshot(
        id=base.id,
        kind=base.kind,
        owner=base.owner,
        state=state,
        created_at=base.created_at,
        expires_at=base.expires_at,
        started_at=base.started_at,
        attempts=base.attempts,
        retry_of=base.retry_of,
        finished_at=_parse_time(meta.get("date_done")) if state in TERMINAL_STATES else None,
        progress=_progress(state, result),
        result=result if state is JobState.SUCCESS and isinstance(result, dict) else None,
        error=job_error(state, result),
    )


def revoked_meta(job_id: str, code: str, message: str) -> str:
    """The REVOKED result meta jobql writes itself (Celery's fields, as `snapshot` reads them)."""
    meta: dict[str, Any] = {
        "status": JobState.REVOKED.value,
        "result": {"code": code, "message": message},
        "traceback": None,
        "children": [],
        "date_done": utcnow().isoformat(),
        "task_id": job_id,
    }
    return json.dumps(meta)


def job_error(state: JobState, result: object) -> JobError | None:
    """The client-facing error of a FAILURE or REVOKED meta; never a traceback."""
    if state is JobState.REVOKED:
        return _revoked_error(result)
    if state is not JobState.FAILURE:
        return None
    if isinstance(result, dict):
        args = result.get("exc_message")
        if (
            result.get("exc_type") == JobFailed.__name__
            and isinstance(args, list | tuple)  # a tuple before it is JSON
            and len(args) == 3
        ):
            return JobError(str(args[0]), str(args[1]), bool(args[2]))
        if result.get("exc_type") in ("TimeLimitExceeded", "SoftTimeLimitExceeded"):
            return JobError("TIMEOUT", "The job took longer than its time limit.", retryable=True)
        if result.get("exc_type") == "WorkerLostError":
            return JobError("WORKER_LOST", "The worker running the job died.", retryable=True)
    return JobError("INTERNAL", "The job failed unexpectedly.", retryable=False)


def _revoked_error(result: object) -> JobError:
    if isinstance(result, dict):
        code = result.get("code")
        if isinstance(code, str):
            return JobError(code, str(result.get("message", "")), retryable=True)
        # Celery's own mark for a message past its `expires`.
        if result.get("exc_type") == "TaskRevokedError" and result.get("exc_message") == [
            "expired"
        ]:
            return JobError(EXPIRED, "No worker started the job before its deadline.", True)
    return JobError("REVOKED", "The job was cancelled.", retryable=True)


def event_order(meta: dict[str, Any] | None) -> tuple[float, ...]:
    """A key that grows with every state write of one job.

    Used to drop an event a subscriber may receive after a newer snapshot: the
    retry count (the worker's backend writes it in every meta) orders tries, the
    attempt number the worker stamps on STARTED and PROGRESS orders redeliveries of
    one try, and progress orders the steps within an attempt.
    """
    if meta is None:
        return (-1.0,)
    state = JobState(meta["status"])
    if state in TERMINAL_STATES:
        return (math.inf,)
    retries = float(meta.get("retries") or 0)
    if state is JobState.RETRY:
        return (retries, 2.0)
    result = meta.get("result")
    attempt = float(result.get("attempt", 0)) if isinstance(result, dict) else 0.0
    progress = _progress(state, result)
    return (retries, 1.0, attempt, float(progress if progress is not None else -1))


def _progress(state: JobState, result: object) -> int | None:
    if state is JobState.SUCCESS:
        return 100
    if state is not JobState.PROGRESS or not isinstance(result, dict):
        return None
    value = result.get("progress")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(0, min(100, int(value)))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
