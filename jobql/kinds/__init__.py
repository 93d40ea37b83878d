"""How to write a kind of job: everything a kind's module uses, and nothing else.

A kind is one module with one module-level `kind = Kind(...)`: its name, its payload (a
frozen dataclass that crosses to the worker as the task's keyword arguments), its result
(a Strawberry type, one member of the `JobResult` union), its task body (a plain function
of a `TaskContext` and the payload, testable without Celery), its mutation (a resolver
that checks the caller's input and calls `enqueue`), and what its failures mean: raise
`JobFailed` to end the job with a code, `RetryLater` to try again as `retry` says. The
built-in kinds (the other modules of this package) are written with this module only, as
a kind of your own would be.

Both processes import every kind's module: keep what only the task body needs (a
library that only the worker has) inside the body.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import time
import typing
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, TypeAlias, TypeVar, cast

from strawberry.types import Info

from jobql.errors import BadUserInput, Forbidden
from jobql.files import FileArea
from jobql.jobs import (
    RECORD_FIELDS,
    Dedupe,
    JobFailed,
    JobSnapshot,
    load_meta,
    meta_key,
    owner_key,
    record_key,
    snapshot,
    task_name,
)
from jobql.storage import JobFiles, StorageUnavailable

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Iterator
    from datetime import timedelta

    from redis import Redis

    from jobql.client import JobData, JobqlClient
    from jobql.resolvers.context import Context
    from jobql.settings import Settings
    from jobql.storage import Storage
    from jobql.tasks.mail import Mailer

__all__ = [
    "BadUserInput",
    "Command",
    "Dedupe",
    "DuplicateJob",
    "FileArea",
    "Forbidden",
    "JobCancelled",
    "JobFailed",
    "JobFiles",
    "JobSnapshot",
    "Kind",
    "MutationInfo",
    "RetryLater",
    "RetryPolicy",
    "StorageUnavailable",
    "TaskContext",
    "caller",
    "check_rate",
    "checked_delay",
    "count_owner_jobs",
    "enqueue",
    "existing_job",
    "fingerprint_of",
    "incoming_upload",
    "open_upload",
    "owner_jobs",
    "pseudonym",
    "upload_digest",
]

# Mixed into the secret key for `pseudonym`, so that its values are of no use elsewhere.
_PSEUDONYM_CONTEXT = b"jobql pseudonym"

P = TypeVar("P")
R = TypeVar("R")

# What a kind's mutation is given: Strawberry's Info. Its context is jobql's, reached
# through the functions below rather than directly.
MutationInfo: TypeAlias = Info[Any, None]


class DuplicateJob(Exception):
    """`enqueue` with a `Dedupe` whose key an earlier job of another user holds."""


class RetryLater(Exception):
    """Raised by a task body for a failure that may pass (a server that is down, say).

    The job is tried again after a pause, as the kind's `RetryPolicy` says; once the
    retries are used up it ends in FAILURE with `code`, marked retryable.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised by `TaskContext.check_cancelled` when the job's owner has cancelled it: the
    job ends REVOKED with CANCELLED. A body lets it pass (cleaning up in `finally`)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a `RetryLater` is tried again, read from the settings."""

    max_retries: Callable[[Settings], int]
    backoff: Callable[[Settings], float]  # seconds before the first retry; doubles each time


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task body is given besides its payload (the worker builds it, as arq's ctx).

    `checkpoint` is what an earlier delivery of the same job saved with `save_checkpoint`
    before it died: a body with an effect it must not repeat (an email sent) saves one
    as soon as the effect is done, and on redelivery finds it here.
    """

    job_id: str
    owner: str
    attempt: int  # this delivery's number within the current try
    settings: Settings
    mailer: Mailer
    redis: Redis
    storage: Storage  # where the job's upload is (`open_upload`, `remove_upload`)
    files: JobFiles | None  # the kind's files for this job, when it declares an area
    checkpoint: str | None
    report_progress: Callable[[int], None]
    save_checkpoint: Callable[[str, int], None]  # the value, and the progress to report
    # A checkpoint: raises `JobCancelled` if the owner has cancelled the job. Call it
    # between steps, and before an effect that cannot be undone (one round trip).
    check_cancelled: Callable[[], None] = lambda: None


@dataclass(frozen=True, slots=True)
class Command:
    """A `jobql` subcommand that queues a job of the kind on a running server."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # Queues the job (checking local arguments first); answers with the job the server sent.
    queue: Callable[[JobqlClient, argparse.Namespace], Awaitable[JobData]]
    check: Callable[[argparse.Namespace], str | None] = lambda args: None  # a usage error


@dataclass(frozen=True, slots=True)
class Kind(Generic[P, R]):
    """One kind of job, declared once."""

    name: str  # the job record's `kind`; `JobKind` in the schema is its upper case
    payload: type[P]
    result: type[R]
    run: Callable[[TaskContext, P], R]
    mutation: Callable[..., Awaitable[JobSnapshot]]
    retry: RetryPolicy | None = None
    files: FileArea | None = None
    command: Command | None = None
    # The lines the terminal client prints for a result (given as the API answers it, and
    # a function that makes a path absolute); by default `field: value` lines.
    describe: Callable[[dict[str, Any], Callable[[str], str]], list[str]] | None = None

    @property
    def task_name(self) -> str:
        return task_name(self.name)

    @property
    def graphql_name(self) -> str:
        return self.name.upper()

    def dump_payload(self, payload: P) -> dict[str, Any]:
        return _fields_of(payload)

    def load_payload(self, kwargs: dict[str, Any]) -> P:
        return _from_fields(self.payload, kwargs)

    def dump_result(self, result: R) -> dict[str, Any]:
        return _fields_of(result)

    def load_result(self, data: dict[str, Any]) -> R:
        return _from_fields(self.result, data)


def _fields_of(value: object) -> dict[str, Any]:
    return {
        field.name: _plain(getattr(value, field.name))
        for field in dataclasses.fields(cast("Any", value))
    }


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _from_fields(cls: type[P], data: dict[str, Any]) -> P:
    """`cls(**data)`, with each enum field's value made a member of its enum."""
    hints = _type_hints(cast("type", cls))
    values = {}
    for name, value in data.items():
        hint = hints.get(name)
        is_enum = isinstance(hint, type) and issubclass(hint, Enum)
        values[name] = hint(value) if is_enum and value is not None else value  # type: ignore[misc]
    return cls(**values)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A class's type hints, worked out once (each job's payload and result reads them)."""
    return typing.get_type_hints(cls)


def owner_jobs(ctx: TaskContext, batch: int = 200) -> Iterator[list[JobSnapshot]]:
    """The job owner's jobs that are still kept, oldest first, `batch` at a time (one
    round trip each). Costs in proportion to that owner's jobs only."""
    key = owner_key(ctx.owner)
    cutoff = time.time() - ctx.settings.result_expires
    start = 0
    while True:
        found = ctx.redis.zrangebyscore(key, cutoff, "+inf", start, batch)
        ids = [_text(cast("bytes", i)) for i in found]
        if not ids:
            return
        with ctx.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(record_key(job_id), *RECORD_FIELDS)
                pipe.get(meta_key(job_id))
            replies = pipe.execute()
        jobs = []
        for job_id, values, raw_meta in zip(ids, replies[::2], replies[1::2], strict=True):
            record = {f: _text(v) for f, v in zip(RECORD_FIELDS, values, strict=True) if v}
            if record.get("owner") == ctx.owner:  # not expired in between
                jobs.append(snapshot(job_id, record, load_meta(raw_meta)))
        yield jobs
        start += len(ids)


def count_owner_jobs(ctx: TaskContext) -> int:
    """How many jobs `owner_jobs` will go through (about: some may expire meanwhile)."""
    cutoff = time.time() - ctx.settings.result_expires
    return int(ctx.redis.zcount(owner_key(ctx.owner), cutoff, "+inf"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- what a kind's mutation uses (in the web process) -----------------------------------------


def caller(info: MutationInfo, scope: str | None = None) -> str:
    """The caller's user id; `FORBIDDEN` unless their token has `scope` (when one is named)."""
    principal = _context(info).principal()
    if scope is not None and not principal.has_scope(scope):
        raise Forbidden(f"This needs the '{scope}' scope.")
    return principal.user_id


async def check_rate(info: MutationInfo) -> None:
    """`RATE_LIMITED` if the caller has queued too many jobs lately; `enqueue` checks too,
    so call this only to refuse before expensive checks of the input."""
    await _context(info).check_rate()


def incoming_upload(info: MutationInfo, file: object, field: str = "file") -> tuple[str, str]:
    """The id and the name in the store of a file sent as a multipart upload
    (`BAD_USER_INPUT` if it was not, or was used for a job already). Queue with `job_id`
    the id, and give the task the name: it opens the upload with `ctx.storage`."""
    return _context(info).incoming_upload(file, field)


def open_upload(info: MutationInfo, name: str) -> BinaryIO:
    """The upload `name`, for reading (to check what it is before queueing). Blocking:
    call it, and read, in a thread."""
    return _context(info).services.storage.open_upload(name)


def upload_digest(info: MutationInfo, file: object) -> str:
    """The SHA-256 (hex) of an upload's bytes, computed as they streamed in (call after
    `incoming_upload`): for an idempotency key's fingerprint."""
    return _context(info).upload_digest(file)


def fingerprint_of(*values: object) -> str:
    """A fingerprint of a mutation's arguments, for `enqueue`'s idempotency key."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def pseudonym(info: MutationInfo, value: str) -> str:
    """A stand-in for a personal value where Redis would show it (a `Dedupe` key's name):
    the same for the same value, and not to be traced back to it without the server's
    secret key (a plain hash of an address is undone by hashing candidate addresses)."""
    secret = _context(info).settings.require_secret_key()
    key = hmac.new(secret.encode(), _PSEUDONYM_CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def checked_delay(
    info: MutationInfo, seconds: int, field: str = "delaySeconds"
) -> timedelta | None:
    """A delay the caller asked for, within what the worker's settings allow."""
    return _context(info).checked_delay(seconds, field)


async def enqueue(
    info: MutationInfo,
    kind: Kind[P, Any],
    payload: P,
    *,
    job_id: str | None = None,
    delay: timedelta | None = None,
    dedupe: Dedupe | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> JobSnapshot:
    """Queue a job of `kind` for the caller; its payload goes to the task by keyword.

    With `dedupe`, answers with the earlier job that holds the key if it is the caller's,
    and raises `DuplicateJob` if it is someone else's. With `idempotency_key` (the
    client's, 1..255 printable ASCII, else `BAD_USER_INPUT`), the caller's first job of
    this kind with that key in the last 24 hours is the answer and nothing is queued;
    `IDEMPOTENCY_KEY_REUSED` if that job's `fingerprint` (of the arguments: a digest of
    everything the mutation was given) differs. A Redis failure is `SERVICE_UNAVAILABLE`.
    """
    if not isinstance(payload, kind.payload):
        raise TypeError(f"A {kind.name} job's payload is a {kind.payload.__name__}")
    queued = await _context(info).enqueue(
        kind.name,
        kind.dump_payload(payload),
        job_id=job_id,
        delay=delay,
        dedupe=dedupe,
        idempotency=(idempotency_key, fingerprint) if idempotency_key is not None else None,
    )
    if queued is None:
        raise DuplicateJob(dedupe.key if dedupe else "")
    return queued


async def existing_job(info: MutationInfo, job_id: str) -> JobSnapshot | None:
    """The caller's job `job_id`, or None."""
    return await _context(info).existing_job(job_id)


def _context(info: MutationInfo) -> Context:
    return cast("Context", info.context)
