"""Removes files left behind by jobs that can no longer use them.

Folders are read as they are walked and jobs are looked up `BATCH` at a time: however
many files a backlog leaves, memory and each Redis call stay the size of a batch.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobql.jobs import TERMINAL_STATES, JobState, load_meta, meta_key, record_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from redis import Redis

BATCH = 500  # files whose jobs are looked up in one round trip


def sweep(
    incoming_dir: Path,
    result_dirs: Iterable[Path],
    min_age: float,
    jobs_over: Callable[[list[str]], set[str]],
    now: float | None = None,
) -> list[Path]:
    """Remove uploads whose job is over or unknown, and half-written result files.

    Only files older than `min_age` seconds are touched, so that an upload whose
    job is being queued right now is never taken for an orphan.
    """
    cutoff = (time.time() if now is None else now) - min_age
    removed = []
    for batch in _batches(_older(_named(incoming_dir, suffix=".upload"), cutoff)):
        over = jobs_over([path.stem for path in batch])
        removed += _remove(path for path in batch if path.stem in over)
    for folder in result_dirs:
        removed += _remove(_older(_named(folder, prefix=".", suffix=".tmp"), cutoff))
    return removed


def sweep_job_dirs(
    job_dirs: Iterable[Path],
    min_age: float,
    jobs_exist: Callable[[list[str]], set[str]],
    now: float | None = None,
) -> list[Path]:
    """Remove the private files of jobs that have expired (their folder is named by the job
    id): they can no longer be fetched by anyone."""
    cutoff = (time.time() if now is None else now) - min_age
    removed = []
    for batch in _batches(_older(job_dirs, cutoff)):
        alive = jobs_exist([folder.name for folder in batch])
        for folder in batch:
            if folder.name not in alive:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def jobs_over(client: Redis, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` with no record (expired or never written) or a terminal state."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(record_key(job_id))
            pipe.get(meta_key(job_id))
        replies = pipe.execute()
    return {
        job_id
        for job_id, exists, raw_meta in zip(job_ids, replies[::2], replies[1::2], strict=True)
        if not exists or _terminal(raw_meta)
    }


def jobs_exist(client: Redis, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` whose record is still there."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(record_key(job_id))
        found = pipe.execute()
    return {job_id for job_id, exists in zip(job_ids, found, strict=True) if exists}


def _terminal(raw_meta: bytes | None) -> bool:
    try:
        meta = load_meta(raw_meta)
        return meta is not None and JobState(meta["status"]) in TERMINAL_STATES
    except (ValueError, KeyError):
        return False  # a state jobql cannot read: keep the file rather than guess


def _batches(paths: Iterator[Path]) -> Iterator[list[Path]]:
    while batch := list(itertools.islice(paths, BATCH)):
        yield batch


def _named(directory: Path, suffix: str, prefix: str = "") -> Iterator[Path]:
    """The files in `directory` named so, read as the walk goes (not listed first)."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return  # nothing was ever written there
    with entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                yield Path(entry.path)


def _older(paths: Iterable[Path], cutoff: float) -> Iterator[Path]:
    for path in paths:
        try:
            if path.stat().st_mtime < cutoff:
                yield path
        except FileNotFoundError:
            continue


def _remove(paths: Iterable[Path]) -> list[Path]:
    removed = []
    for path in paths:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
