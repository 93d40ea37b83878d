"""Celery's Redis result backend, with each state write in one round trip.

Celery reads a task's stored state before each write, so that a late write from a
lost worker cannot replace SUCCESS, then writes and PUBLISHes the new one: two round
trips, with a gap between them. Here the check and the write are one script. The
same scripts keep the job record: the start of a delivery is counted with its
STARTED write (which also reads back the checkpoint an earlier delivery saved), and a
finished job is counted in the stats with its final write (and
only once, however often it is delivered).

A meta holds what the API reads and nothing more (`JobResultBackend._meta`): no task
arguments, no traceback, no exception text but a `JobFailed`'s. Of what a job was given,
only the result its body returns is stored.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timedelta
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError, TaskRevokedError

from jobql.jobs import (
    CANCELLED,
    CANCELLED_FIELD,
    QUEUE_CALLBACK,
    RECORD_FIELDS,
    TELL_OWNER,
    JobFailed,
    JobState,
    inputs_key,
    job_error,
    messages_key,
    missing_key,
    pending_key,
    record_key,
    revoked_meta,
    utcnow,
)
from jobql.stats import STATS_KEY, finished_increments, retried_field

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.commands.core import Script

FINISHED_STATES = frozenset({states.SUCCESS, states.FAILURE})
# The exceptions whose arguments a stored meta keeps (see `_readable_part`).
MESSAGES_KEPT = frozenset({JobFailed.__name__, TaskRevokedError.__name__})
CHECKPOINT = "checkpoint"  # in the job record: what a delivery saved of an effect it had
# Stands for the attempt number in a STARTED meta until the script knows it; random, so
# that nothing else in the meta can be taken for it.
ATTEMPT_MARK = f"attempt-{secrets.token_hex(16)}"

# `store` writes a meta unless the job has succeeded already, and PUBLISHes it on the
# job's channel and, with the job record's fields, on its owner's (`owner_event`); a meta
# that `ends` the job queues its callback, if it has one.
_STORE = (
    TELL_OWNER
    + QUEUE_CALLBACK
    + """
local function store(key, value, expires, record, ends)
    local current = redis.call('GET', key)
    -- A late write (from a lost worker, or a retry of a cancelled job) changes no end.
    if current then
        local status = cjson.decode(current)['status']
        if status == 'SUCCESS' or status == 'REVOKED' then return 0 end
    end
    if tonumber(expires) > 0 then
        redis.call('SET', key, value, 'EX', expires)
    else
        redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    tell_owner(record, value)
    if ends then queue_callback(record) end
    return 1
end
"""
)
assert RECORD_FIELDS[0] == "owner", "tell_owner reads the owner first"

# KEYS: the meta, the stats hash, the job record, what the job was given. ARGV: the meta,
# its expiry in seconds (0: none), how it ends the job ('0' not at all, '1' in a way that
# `retryJob` may retry, '2' for good: what the job was given is dropped with it), how
# many record fields follow, those field and value pairs (set whether or not the meta
# is, if the record is still there), then field and amount pairs to add to the stats if
# the meta was stored.
STORE_STATE = (
    _STORE
    + """
local stored = store(KEYS[1], ARGV[1], ARGV[2], KEYS[3], ARGV[3] ~= '0')
if stored == 1 and ARGV[3] == '2' then redis.call('DEL', KEYS[4]) end
local last_field = 4 + 2 * tonumber(ARGV[4])
if last_field > 4 and redis.call('EXISTS', KEYS[3]) == 1 then
    for i = 5, last_field, 2 do
        redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    end
end
if stored == 1 then
    for i = last_field + 1, #ARGV, 2 do
        redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
    end
end
return stored
"""
)

# KEYS: the job record, its queue's pending set, the meta, its queue's message copies and missing
# marks, what the job was given (kept as long as the record). ARGV: the start time, this try's
# deliveries field, the record's expiry, the job id, the meta before and after its attempt number,
# the meta's expiry, the record's checkpoint field, its cancelled field, a REVOKED meta, and the
# time the record now expires. Returns the attempt number, the checkpoint an earlier delivery saved
# ('' if none) and the owner; an attempt number of 0 for a job its owner cancelled, which ends
# REVOKED here if it had not yet (a running job's redelivery). The record's `attempts` counts
# deliveries over all tries.
START = (
    _STORE
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[9]) == 1 then
    store(KEYS[3], ARGV[10], ARGV[7], KEYS[1], true)
    redis.call('ZREM', KEYS[2], ARGV[4])
    redis.call('HDEL', KEYS[4], ARGV[4])
    redis.call('HDEL', KEYS[5], ARGV[4])
    return {0, '', ''}
end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
local attempt = redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
keep_callback(KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('HSET', KEYS[1], 'expires_at', ARGV[11])
-- A worker holds the message now: recovery's copy of it is not needed.
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('HDEL', KEYS[5], ARGV[4])
store(KEYS[3], ARGV[5] .. attempt .. ARGV[6], ARGV[7], KEYS[1], false)
local checkpoint = redis.call('HGET', KEYS[1], ARGV[8]) or ''
return {attempt, checkpoint, redis.call('HGET', KEYS[1], 'owner') or ''}
"""
)


class Delivery(NamedTuple):
    attempt: int  # this delivery's number among those of the job's current try; 0: cancelled
    checkpoint: str | None  # what an earlier delivery saved with `mark_checkpoint`
    owner: str = ""  # the job's owner, from its record


def backend_url(redis_url: str) -> str:
    """The `result_backend` that selects this backend, in Celery's `backend+url` form."""
    return f"{__name__}:JobResultBackend+{redis_url}"


class JobResultBackend(RedisBackend):
    if TYPE_CHECKING:  # what celery-types leaves out of RedisBackend
        _MAX_STR_VALUE_SIZE: int
        expires: int | None
        failure_expires: int | None

    @cached_property
    def _store_state(self) -> Script:
        return self.client.register_script(STORE_STATE)  # type: ignore[no-any-return]

    @cached_property
    def _start(self) -> Script:
        return self.client.register_script(START)  # type: ignore[no-any-return]

    def mark_as_started_delivery(
        self,
        task_id: str,
        request: Any,
        *,
        queue: str,
        started_at: str,
        deliveries_field: str,
        **result: Any,
    ) -> Delivery:
        """Count this delivery in the job record and store STARTED with its attempt number
        and `result`, in one round trip."""
        result = {"attempt": ATTEMPT_MARK, **result}
        meta = self._meta(task_id, result, states.STARTED, None, request)
        before, mark, after = self._encode_text(meta).partition(json.dumps(ATTEMPT_MARK))
        assert mark, "the STARTED meta lost its attempt mark"
        keys = [record_key(task_id), pending_key(queue), self.get_key_for_task(task_id)]
        keys += [messages_key(queue), missing_key(queue), inputs_key(task_id)]
        argv = [started_at, deliveries_field, int(self.expires or 0), task_id, before, after]
        expires_at = datetime.fromisoformat(started_at) + timedelta(seconds=self.expires or 0)
        argv += [int(self.expires or 0), CHECKPOINT, CANCELLED_FIELD]
        argv += [revoked_meta(task_id, CANCELLED, "The job was cancelled.")]
        argv += [expires_at.isoformat()]
        attempt, checkpoint, owner = self.ensure(self._start, (keys, argv))
        return Delivery(int(attempt), checkpoint.decode() or None, owner.decode())

    def is_cancelled(self, task_id: str) -> bool:
        """Whether the job's owner has cancelled it (one round trip)."""
        return bool(self.client.hexists(record_key(task_id), CANCELLED_FIELD))

    def mark_cancelled(self, task_id: str) -> None:
        """End a running job REVOKED with CANCELLED (unless it has ended already)."""
        meta = json.loads(revoked_meta(task_id, CANCELLED, "The job was cancelled."))
        self._store(task_id, meta, self.expires)

    def mark_checkpoint(self, task_id: str, request: Any, value: str, **result: Any) -> None:
        """Store PROGRESS with `result`, and save `value` in the job record for any later
        delivery of the job (an effect it must not repeat), in one round trip."""
        meta = self._meta(task_id, result, JobState.PROGRESS.value, None, request)
        self._store(task_id, meta, self.expires, fields={CHECKPOINT: value})

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._meta(task_id, result, state, traceback, request)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self._store(task_id, meta, expires, stats=_finished(state, request))
        return result

    def _store(
        self,
        task_id: str,
        meta: dict[str, Any],
        expires: int | None,
        fields: Mapping[str, str] = MappingProxyType({}),
        stats: Mapping[str, float] = MappingProxyType({}),
    ) -> None:
        value = self._encode_text(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            message = "value too large for Redis backend"
            raise BackendStoreError(message, state=meta["status"], task_id=task_id)  # type: ignore[call-arg]
        ends = _how_it_ends(meta)
        argv: list[str | int | float] = [value, int(expires or 0), ends, len(fields)]
        for field, text in fields.items():
            argv += [field, text]
        for field, amount in stats.items():
            argv += [field, amount]
        keys = [self.get_key_for_task(task_id), STATS_KEY, record_key(task_id)]
        keys += [inputs_key(task_id)]
        self.ensure(self._store_state, (keys, argv))

    def _encode_text(self, meta: dict[str, Any]) -> str:
        # JSON comes out as text (celery-types says bytes).
        return cast("str", self.encode(meta))

    def _meta(
        self, task_id: str, result: Any, state: str, traceback: str | None, request: Any
    ) -> dict[str, Any]:
        """The meta of one state write: what `jobql.jobs.snapshot` and `event_order` read,
        nothing more. Not the task's arguments (Celery's `result_extended` would add them),
        not a traceback, and of an exception only what the API reads (a traceback or an
        exception's message may quote the job's personal data)."""
        return {
            "status": state,
            "result": _readable_part(result) if state in states.EXCEPTION_STATES else result,
            "traceback": None,
            "children": [],
            "date_done": utcnow().isoformat() if state in states.READY_STATES else None,
            "task_id": task_id,
            # Orders a job's state writes across its tries.
            "retries": int(getattr(request, "retries", None) or 0),
        }


def _how_it_ends(meta: dict[str, Any]) -> str:
    """STORE_STATE's ARGV[3] for a meta: '0' if it does not end the job, '1' if it ends it
    in a way `retryJob` may retry (what the job was given is kept), '2' if for good."""
    if meta["status"] not in states.READY_STATES:
        return "0"
    error = job_error(JobState(meta["status"]), meta["result"])
    return "1" if error is not None and error.retryable else "2"


def _readable_part(result: Any) -> Any:
    """Of an exception as Celery encodes it, what `jobql.jobs.job_error` reads: every
    exception's type, and the arguments only of those whose arguments are meant for the
    client (a `JobFailed`'s code and message) or are Celery's own mark (a revocation's
    reason, `expired` for a job past its queue deadline)."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return result
    kept = result["exc_type"] in MESSAGES_KEPT
    return {
        "exc_type": result["exc_type"],
        "exc_message": result.get("exc_message") if kept else [],
        "exc_module": result.get("exc_module"),
    }


def _finished(state: str, request: Any) -> dict[str, float]:
    """What a job's final write, or a retry, adds to the stats (nothing for other writes)."""
    started = getattr(request, "started", None)
    if started is None:
        return {}
    kind = str(request.task).removeprefix("jobql.")
    if state == states.RETRY:
        return {retried_field(kind): 1}
    if state not in FINISHED_STATES:
        return {}
    return finished_increments(kind, state, time.monotonic() - started)
