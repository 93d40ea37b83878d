"""Removes files left behind by jobs that can no longer use them.

The store lists them as it walks (`Storage.leftovers`) and jobs are looked up a batch at
a time: however many files a backlog leaves, memory and each Redis call stay the size
of a batch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, assert_never

from jobql.jobs import TERMINAL_STATES, JobState, job_error, load_meta, meta_key, record_key
from jobql.storage import LeftoverKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from redis import Redis

    from jobql.files import FileArea
    from jobql.storage import Leftover, Storage


def sweep(
    storage: Storage,
    areas: Iterable[FileArea],
    min_age: float,
    jobs_over: Callable[[list[str]], set[str]],
    jobs_exist: Callable[[list[str]], set[str]],
    now: float | None = None,
    uploads_only: bool = False,
) -> list[Leftover]:
    """Remove uploads whose job is over or unknown, half-written result files, and the
    private files of jobs that have expired (they can no longer be fetched by anyone).

    Only what is older than `min_age` seconds is touched, so that an upload whose job is
    being queued right now is never taken for an orphan. `uploads_only`: leave the rest
    (a result file being written now may be younger than a task's time limit).
    """
    cutoff = (time.time() if now is None else now) - min_age
    removed = []
    for batch in storage.leftovers(areas, older_than=cutoff):
        if uploads_only:
            batch = [leftover for leftover in batch if leftover.kind is LeftoverKind.UPLOAD]
        for leftover in _removable(batch, jobs_over, jobs_exist):
            storage.remove(leftover)
            removed.append(leftover)
    return removed


def _removable(
    batch: list[Leftover],
    jobs_over: Callable[[list[str]], set[str]],
    jobs_exist: Callable[[list[str]], set[str]],
) -> list[Leftover]:
    uploads = [leftover.job_id for leftover in batch if leftover.kind is LeftoverKind.UPLOAD]
    kept = [leftover.job_id for leftover in batch if leftover.kind is LeftoverKind.JOB_FILES]
    over = jobs_over(uploads) if uploads else set()
    alive = jobs_exist(kept) if kept else set()
    removable = []
    for leftover in batch:
        match leftover.kind:
            case LeftoverKind.UPLOAD:
                gone = leftover.job_id in over
            case LeftoverKind.PARTIAL:
                gone = True
            case LeftoverKind.JOB_FILES:
                gone = leftover.job_id not in alive
            case _:
                assert_never(leftover.kind)
        if gone:
            removable.append(leftover)
    return removable


def jobs_over(client: Redis, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` that no longer need their upload: with no record (expired or never
    written), or ended for good (SUCCESS, or a FAILURE that is not retryable). A job that
    `retryJob` may retry keeps its upload until it expires."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(record_key(job_id))
            pipe.get(meta_key(job_id))
        replies = pipe.execute()
    return {
        job_id
        for job_id, exists, raw_meta in zip(job_ids, replies[::2], replies[1::2], strict=True)
        if not exists or _ended_for_good(raw_meta)
    }


def jobs_exist(client: Redis, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` whose record is still there."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(record_key(job_id))
        found = pipe.execute()
    return {job_id for job_id, exists in zip(job_ids, found, strict=True) if exists}


def _ended_for_good(raw_meta: bytes | None) -> bool:
    try:
        meta = load_meta(raw_meta)
        if meta is None:
            return False
        state = JobState(meta["status"])
    except (ValueError, KeyError):
        return False  # a state jobql cannot read: keep the file rather than guess
    if state not in TERMINAL_STATES:
        return False
    error = job_error(state, meta.get("result"))
    return error is None or not error.retryable
