"""Removes files left behind by jobs that can no longer use them."""

from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

from jobql.jobs import TERMINAL_STATES, JobState, load_meta, meta_key, record_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from redis import Redis


def sweep(
    incoming_dir: Path,
    result_dirs: Iterable[Path],
    min_age: float,
    job_is_over: Callable[[str], bool],
    now: float | None = None,
) -> list[Path]:
    """Remove uploads whose job is over or unknown, and half-written result files.

    Only files older than `min_age` seconds are touched, so that an upload whose
    job is being queued right now is never taken for an orphan.
    """
    cutoff = (time.time() if now is None else now) - min_age
    doomed = [
        *(p for p in _older(incoming_dir.glob("*.upload"), cutoff) if job_is_over(p.stem)),
        *(p for folder in result_dirs for p in _older(folder.glob(".*.tmp"), cutoff)),
    ]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def sweep_job_dirs(
    job_dirs: Iterable[Path],
    min_age: float,
    job_exists: Callable[[str], bool],
    now: float | None = None,
) -> list[Path]:
    """Remove the private files of jobs that have expired (their folder is named by the job
    id): they can no longer be fetched by anyone."""
    cutoff = (time.time() if now is None else now) - min_age
    doomed = [folder for folder in _older(job_dirs, cutoff) if not job_exists(folder.name)]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def job_is_over(client: Redis, job_id: str) -> bool:
    """No record (expired or never written), or a terminal state."""
    with client.pipeline(transaction=False) as pipe:
        pipe.exists(record_key(job_id))
        pipe.get(meta_key(job_id))
        exists, raw_meta = pipe.execute()
    if not exists:
        return True
    try:
        meta = load_meta(raw_meta)
        return meta is not None and JobState(meta["status"]) in TERMINAL_STATES
    except (ValueError, KeyError):
        return False  # a state jobql cannot read: keep the file rather than guess


def job_exists(client: Redis, job_id: str) -> bool:
    return bool(client.exists(record_key(job_id)))


def _older(paths: Iterable[Path], cutoff: float) -> list[Path]:
    old = []
    for path in paths:
        try:
            if path.stat().st_mtime < cutoff:
                old.append(path)
        except FileNotFoundError:
            continue
    return old
