"""Unit tests for the sweeper: leftover uploads and half-written avatars are removed."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from jobql.files import FileArea
from jobql.jobs import JobState, meta_key, new_job_id, new_record, record_key, utcnow
from jobql.storage import BATCH, FilesystemStorage
from jobql.tasks import sweep as sweeping
from jobql.tasks.sweep import jobs_over

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from jobql.redis_server import RedisServer

AVATARS = FileArea("avatars")
NOW = 1_750_000_000.0
MIN_AGE = 600.0
OLD = NOW - MIN_AGE - 60
YOUNG = NOW - MIN_AGE + 60


def touch(path: Path, mtime: float, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    incoming, avatars = tmp_path / "incoming", tmp_path / "avatars"
    incoming.mkdir()
    avatars.mkdir()
    return incoming, avatars


# --- sweep ----------------------------------------------------------------------------------


def sweep(
    incoming: Path,
    result_dirs: list[Path],
    min_age: float,
    are_over: Callable[[list[str]], set[str]],
    now: float | None = None,
) -> list[Path]:
    """The sweep of a filesystem store whose media root holds `incoming` and one public
    area (`avatars`); what it removed, as paths."""
    assert result_dirs == [incoming.parent / AVATARS.folder]
    storage = FilesystemStorage(incoming.parent)
    removed = sweeping.sweep(storage, [AVATARS], min_age, are_over, every, now=now)
    return [Path(leftover.location) for leftover in removed]


def every(job_ids: list[str]) -> set[str]:
    return set(job_ids)


def test_sweep_removes_old_uploads_of_jobs_that_are_over(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    over, running, young_over = new_job_id(), new_job_id(), new_job_id()
    old_done = touch(incoming / f"{over}.upload", OLD)
    old_running = touch(incoming / f"{running}.upload", OLD)
    young = touch(incoming / f"{young_over}.upload", YOUNG)
    asked: list[str] = []

    def are_over(job_ids: list[str]) -> set[str]:
        asked.extend(job_ids)
        return set(job_ids) & {over, young_over}

    removed = sweep(incoming, [avatars], MIN_AGE, are_over, now=NOW)

    assert removed == [old_done]
    assert not old_done.exists()
    assert old_running.exists() and young.exists()
    # The job id is the file's stem; young files are not even looked up.
    assert sorted(asked) == sorted([over, running])


def test_sweep_removes_old_temp_avatars_and_keeps_the_rest(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    job_id = new_job_id()
    old_tmp = touch(avatars / f".{job_id}.webp.tmp", OLD)
    young_tmp = touch(avatars / f".{new_job_id()}.jpg.tmp", YOUNG)
    finished = touch(avatars / f"{job_id}.webp", OLD)
    not_hidden = touch(avatars / f"{new_job_id()}.tmp", OLD)

    removed = sweep(incoming, [avatars], MIN_AGE, every, now=NOW)

    assert removed == [old_tmp]
    assert not old_tmp.exists()
    assert young_tmp.exists() and finished.exists() and not_hidden.exists()


def test_sweep_touches_only_upload_files_in_incoming(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    other = touch(incoming / "notes.txt", OLD)
    hidden_tmp = touch(incoming / ".something.tmp", OLD)
    upload = touch(incoming / f"{new_job_id()}.upload", OLD)

    removed = sweep(incoming, [avatars], MIN_AGE, every, now=NOW)

    assert removed == [upload]
    assert other.exists() and hidden_tmp.exists()


def test_sweep_of_both_kinds_returns_everything_it_removed(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    uploads = {touch(incoming / f"{new_job_id()}.upload", OLD) for _ in range(3)}
    temps = {touch(avatars / f".{new_job_id()}.png.tmp", OLD) for _ in range(2)}

    removed = sweep(incoming, [avatars], MIN_AGE, every, now=NOW)

    assert len(removed) == 5
    assert set(removed) == uploads | temps
    assert list(incoming.iterdir()) == [] and list(avatars.iterdir()) == []


def test_sweep_with_nothing_to_do_removes_nothing(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    young = touch(incoming / f"{new_job_id()}.upload", YOUNG)

    assert sweep(incoming, [avatars], MIN_AGE, every, now=NOW) == []
    assert young.exists()


def test_sweep_uses_the_clock_when_now_is_not_given(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    old = touch(incoming / f"{new_job_id()}.upload", time.time() - MIN_AGE - 60)
    fresh = touch(incoming / f"{new_job_id()}.upload", time.time())

    removed = sweep(incoming, [avatars], MIN_AGE, every)

    assert removed == [old]
    assert fresh.exists()


# --- jobs_over ------------------------------------------------------------------------------


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


@pytest.fixture
def job_id(client: redis.Redis) -> Iterator[str]:
    job_id = new_job_id()
    yield job_id
    client.delete(record_key(job_id), meta_key(job_id))


def write_record(client: redis.Redis, job_id: str) -> None:
    now = utcnow()
    for name, value in new_record("avatar", "alice", now, now + timedelta(hours=1)).items():
        client.hset(record_key(job_id), name, value)


def write_meta(client: redis.Redis, job_id: str, state: JobState, result: object = None) -> None:
    meta = {"status": state.value, "result": result, "task_id": job_id, "traceback": None}
    client.set(meta_key(job_id), json.dumps(meta))


def test_job_without_a_record_is_over(client: redis.Redis, job_id: str) -> None:
    assert client.exists(record_key(job_id)) == 0

    assert jobs_over(client, [job_id]) == {job_id}


def test_job_without_a_record_but_with_running_meta_is_over(
    client: redis.Redis, job_id: str
) -> None:
    # The record expired: nobody can ask for this job any more.
    write_meta(client, job_id, JobState.PROGRESS, {"progress": 50})

    assert jobs_over(client, [job_id]) == {job_id}


def test_job_with_a_record_and_no_meta_is_not_over(client: redis.Redis, job_id: str) -> None:
    write_record(client, job_id)

    assert jobs_over(client, [job_id]) == set()


@pytest.mark.parametrize(
    ("state", "result"),
    [
        (JobState.STARTED, {"attempt": 1}),
        (JobState.PROGRESS, {"progress": 50, "attempt": 1}),
        (JobState.RETRY, {"exc_type": "ConnectionError", "exc_message": ["down"]}),
        (JobState.PENDING, None),
    ],
)
def test_job_with_a_record_and_running_meta_is_not_over(
    client: redis.Redis, job_id: str, state: JobState, result: object
) -> None:
    write_record(client, job_id)
    write_meta(client, job_id, state, result)

    assert jobs_over(client, [job_id]) == set()


@pytest.mark.parametrize(
    ("state", "result"),
    [
        (JobState.SUCCESS, {"url": "/media/avatars/x.webp"}),
        (JobState.FAILURE, {"exc_type": "JobFailed", "exc_message": ["BAD", "bad", False]}),
        (JobState.FAILURE, {"exc_type": "ValueError", "exc_message": []}),  # INTERNAL
    ],
)
def test_job_that_ended_for_good_is_over(
    client: redis.Redis, job_id: str, state: JobState, result: object
) -> None:
    write_record(client, job_id)
    write_meta(client, job_id, state, result)

    assert jobs_over(client, [job_id]) == {job_id}


@pytest.mark.parametrize(
    ("state", "result"),
    [
        (JobState.REVOKED, None),
        (JobState.REVOKED, {"code": "CANCELLED", "message": "The job was cancelled."}),
        (JobState.FAILURE, {"exc_type": "JobFailed", "exc_message": ["DOWN", "down", True]}),
        (JobState.FAILURE, {"exc_type": "TimeLimitExceeded", "exc_message": []}),
    ],
)
def test_job_that_retryjob_may_retry_keeps_its_upload_until_it_expires(
    client: redis.Redis, job_id: str, state: JobState, result: object
) -> None:
    write_record(client, job_id)
    write_meta(client, job_id, state, result)

    assert jobs_over(client, [job_id]) == set()
    client.delete(record_key(job_id))  # expired
    assert jobs_over(client, [job_id]) == {job_id}


def test_jobs_over_drives_sweep(client: redis.Redis, job_id: str, dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    running = touch(incoming / f"{job_id}.upload", OLD)
    orphan = touch(incoming / f"{new_job_id()}.upload", OLD)  # no record at all
    write_record(client, job_id)
    write_meta(client, job_id, JobState.PROGRESS, {"progress": 10})

    removed = sweep(incoming, [avatars], MIN_AGE, lambda ids: jobs_over(client, ids), now=NOW)

    assert removed == [orphan]
    assert running.exists()

    write_meta(client, job_id, JobState.SUCCESS, {"url": "/media/avatars/x.webp"})
    assert sweep(incoming, [avatars], MIN_AGE, lambda ids: jobs_over(client, ids), now=NOW) == [
        running
    ]


def test_sweep_looks_jobs_up_a_batch_at_a_time(dirs: tuple[Path, Path]) -> None:
    incoming, avatars = dirs
    uploads = {touch(incoming / f"{new_job_id()}.upload", OLD) for _ in range(2 * BATCH + 1)}
    batches: list[int] = []

    def are_over(job_ids: list[str]) -> set[str]:
        batches.append(len(job_ids))
        return set(job_ids)

    removed = sweep(incoming, [avatars], MIN_AGE, are_over, now=NOW)

    assert set(removed) == uploads
    assert batches == [BATCH, BATCH, 1]


def test_jobs_over_answers_for_many_jobs_in_one_call(client: redis.Redis) -> None:
    running, finished, unknown = new_job_id(), new_job_id(), new_job_id()
    for job_id in (running, finished):
        write_record(client, job_id)
    write_meta(client, running, JobState.PROGRESS, {"progress": 10})
    write_meta(client, finished, JobState.FAILURE, None)
    try:
        assert jobs_over(client, [running, finished, unknown]) == {finished, unknown}
    finally:
        client.delete(*(key(j) for j in (running, finished) for key in (record_key, meta_key)))


def test_sweep_of_folders_that_do_not_exist_removes_nothing(tmp_path: Path) -> None:
    assert sweep(tmp_path / "incoming", [tmp_path / "avatars"], MIN_AGE, every, now=NOW) == []
