"""The shared job layer: reading a job from its record and Celery's result meta."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from jobql.jobs import (
    META_PREFIX,
    TERMINAL_STATES,
    JobError,
    JobFailed,
    JobSnapshot,
    JobState,
    event_order,
    is_job_id,
    job_error,
    load_meta,
    meta_key,
    new_job_id,
    new_record,
    record_key,
    snapshot,
    task_name,
)
from jobql.registry import built_in_kinds
from jobql.tasks.backend import backend_url

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celery.backends.base import KeyValueStoreBackend

    from jobql.redis_server import RedisServer

CREATED = datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
EXPIRES = CREATED + timedelta(days=1)
OWNER = "user-1"
AVATAR_RESULT: dict[str, Any] = {
    "url": "/media/avatars/x.webp",
    "width": 128,
    "height": 128,
    "size_bytes": 2048,
    "format": "WEBP",
}
SECRET_TEXT = "password=hunter2 at db.internal:5432"


def record(kind: str = "avatar") -> dict[str, str]:
    return new_record(kind, OWNER, CREATED, EXPIRES)


def read(meta: dict[str, Any] | None, job_id: str | None = None) -> JobSnapshot:
    return snapshot(job_id or new_job_id(), record(), meta)


def meta(status: str, result: object = None, **extra: object) -> dict[str, Any]:
    """A result meta as jobql's backend stores it."""
    return {
        "status": status,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": "x",
        **extra,
    }


class Backend:
    """Writes result metas with Celery's own Redis backend code, configured as the worker's is,
    and reads them back raw from Redis the way the web process does."""

    def __init__(self, url: str) -> None:
        self.app = Celery("jobql-test", backend=backend_url(url), set_as_current=False)
        self.app.conf.update(
            result_serializer="json", accept_content=["json"], result_extended=False
        )
        self.backend: KeyValueStoreBackend = self.app.backend  # type: ignore[assignment]
        self.redis = redis.Redis.from_url(url)

    def request(self, job_id: str, retries: int) -> Context:
        return Context(
            id=job_id,
            task=task_name("avatar"),
            retries=retries,
            args=["in.jpg", 128, 80, "WEBP"],
            kwargs={},
            hostname="worker@test",
            delivery_info={"routing_key": "celery", "exchange": ""},
        )

    def raw(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(meta_key(job_id))
        assert raw is None or isinstance(raw, bytes)
        return load_meta(raw)

    def update_state(
        self, job_id: str, state: str, result: dict[str, Any], retries: int = 0
    ) -> dict[str, Any] | None:
        """What `Task.update_state` in the worker does."""
        self.backend.store_result(job_id, result, state, request=self.request(job_id, retries))
        return self.raw(job_id)

    def retry(self, job_id: str, exc: Exception, retries: int) -> dict[str, Any] | None:
        self.backend.mark_as_retry(job_id, exc, request=self.request(job_id, retries))
        return self.raw(job_id)

    def done(self, job_id: str, result: dict[str, Any], retries: int = 0) -> dict[str, Any] | None:
        self.backend.mark_as_done(job_id, result, request=self.request(job_id, retries))
        return self.raw(job_id)

    def fail(self, job_id: str, exc: Exception, retries: int = 0) -> dict[str, Any] | None:
        self.backend.mark_as_failure(job_id, exc, request=self.request(job_id, retries))
        return self.raw(job_id)

    def revoke(self, job_id: str) -> dict[str, Any] | None:
        self.backend.mark_as_revoked(job_id, "revoked", request=self.request(job_id, 0))
        return self.raw(job_id)


@pytest.fixture
def celery_backend(redis_server: RedisServer) -> Iterator[Backend]:
    backend = Backend(redis_server.url)
    yield backend
    backend.redis.close()
    backend.app.close()


# --- snapshot ---------------------------------------------------------------------------


def test_no_meta_is_pending_without_progress() -> None:
    job_id = new_job_id()
    job = snapshot(job_id, record(), None)
    assert job.id == job_id
    assert job.kind == "avatar"
    assert job.owner == OWNER
    assert job.state is JobState.PENDING
    assert job.created_at == CREATED
    assert job.created_at.tzinfo is not None
    assert job.progress is None
    assert job.result is None
    assert job.error is None
    assert job.started_at is None
    assert job.finished_at is None
    assert job.done is False


def test_record_round_trips_kind_owner_and_time() -> None:
    rec = new_record("welcome_email", "someone", CREATED, EXPIRES)
    assert all(isinstance(value, str) for value in rec.values())
    job = snapshot(new_job_id(), rec, None)
    assert job.kind == "welcome_email"
    assert job.owner == "someone"
    assert job.created_at == CREATED
    assert (job.expires_at, job.attempts) == (EXPIRES, 0)


def test_started_at_comes_from_the_record() -> None:
    started = CREATED + timedelta(seconds=3)
    rec = {**record(), "started_at": started.isoformat(), "attempts": "1"}
    job = snapshot(new_job_id(), rec, meta("STARTED", {"attempt": 1}))
    assert job.started_at == started
    assert job.attempts == 1


def test_naive_started_at_is_taken_as_utc() -> None:
    rec = {**record(), "started_at": "2025-01-02T03:04:08"}
    job = snapshot(new_job_id(), rec, None)
    assert job.started_at == datetime(2025, 1, 2, 3, 4, 8, tzinfo=UTC)


def test_started() -> None:
    job = read(meta("STARTED", {"attempt": 1}, retries=0))
    assert job.state is JobState.STARTED
    assert job.progress is None
    assert job.result is None
    assert job.error is None
    assert job.finished_at is None
    assert job.done is False


def test_progress() -> None:
    job = read(meta("PROGRESS", {"progress": 40, "attempt": 1}))
    assert job.state is JobState.PROGRESS
    assert job.progress == 40
    assert job.result is None
    assert job.done is False


@pytest.mark.parametrize(
    ("reported", "shown"),
    [(-5, 0), (0, 0), (100, 100), (101, 100), (250, 100), (40.7, 40), (-0.5, 0)],
)
def test_progress_is_clamped_to_0_100(reported: float, shown: int) -> None:
    assert read(meta("PROGRESS", {"progress": reported})).progress == shown


@pytest.mark.parametrize("result", [None, {}, {"progress": "40"}, {"progress": None}, [40], 40])
def test_progress_without_a_number_is_unknown(result: object) -> None:
    job = read(meta("PROGRESS", result))
    assert job.state is JobState.PROGRESS
    assert job.progress is None


def test_success() -> None:
    job = read(meta("SUCCESS", AVATAR_RESULT, date_done="2025-01-02T03:05:00.123456+00:00"))
    assert job.state is JobState.SUCCESS
    assert job.result == AVATAR_RESULT
    assert job.progress == 100
    assert job.error is None
    assert job.finished_at == datetime(2025, 1, 2, 3, 5, 0, 123456, tzinfo=UTC)
    assert job.finished_at.tzinfo is not None
    assert job.done is True


def test_success_with_naive_date_done_is_utc() -> None:
    job = read(meta("SUCCESS", AVATAR_RESULT, date_done="2025-01-02T03:05:00"))
    assert job.finished_at == datetime(2025, 1, 2, 3, 5, tzinfo=UTC)
    assert job.finished_at.tzinfo is not None


def test_success_with_offset_date_done_keeps_the_instant() -> None:
    job = read(meta("SUCCESS", AVATAR_RESULT, date_done="2025-01-02T05:05:00+02:00"))
    assert job.finished_at == datetime(2025, 1, 2, 3, 5, tzinfo=UTC)


def test_success_with_a_non_dict_result_has_no_result() -> None:
    job = read(meta("SUCCESS", "not a dict", date_done="2025-01-02T03:05:00+00:00"))
    assert job.state is JobState.SUCCESS
    assert job.result is None
    assert job.progress == 100


def test_running_states_have_no_finish_time_even_if_meta_has_one() -> None:
    job = read(meta("PROGRESS", {"progress": 10}, date_done="2025-01-02T03:05:00+00:00"))
    assert job.finished_at is None


def test_failure_with_job_failed() -> None:
    result = {
        "exc_type": "JobFailed",
        "exc_message": ["INVALID_IMAGE", "msg", False],
        "exc_module": "jobql.jobs",
    }
    job = read(meta("FAILURE", result, date_done="2025-01-02T03:05:00+00:00"))
    assert job.state is JobState.FAILURE
    assert job.error == JobError("INVALID_IMAGE", "msg", retryable=False)
    assert job.result is None
    assert job.progress is None
    assert job.finished_at == datetime(2025, 1, 2, 3, 5, tzinfo=UTC)
    assert job.done is True


def test_failure_with_retryable_job_failed() -> None:
    result = {
        "exc_type": "JobFailed",
        "exc_message": ["SMTP_UNAVAILABLE", "Gave up after 4 tries.", True],
        "exc_module": "jobql.jobs",
    }
    assert read(meta("FAILURE", result)).error == JobError(
        "SMTP_UNAVAILABLE", "Gave up after 4 tries.", retryable=True
    )


@pytest.mark.parametrize(
    "result",
    [
        {"exc_type": "ValueError", "exc_message": [SECRET_TEXT], "exc_module": "builtins"},
        {"exc_type": "KeyError", "exc_message": ["INVALID_IMAGE", SECRET_TEXT, False]},
        {"exc_type": "JobFailed", "exc_message": [SECRET_TEXT], "exc_module": "jobql.jobs"},
        {"exc_type": "JobFailed", "exc_message": SECRET_TEXT, "exc_module": "jobql.jobs"},
        SECRET_TEXT,
        None,
        [SECRET_TEXT],
    ],
)
def test_failure_of_anything_else_is_internal_and_leaks_nothing(result: object) -> None:
    job = read(meta("FAILURE", result, traceback=f"Traceback ...\n{SECRET_TEXT}"))
    assert job.state is JobState.FAILURE
    assert job.error is not None
    assert job.error.code == "INTERNAL"
    assert job.error.retryable is False
    assert SECRET_TEXT not in job.error.message
    assert "hunter2" not in job.error.message
    assert job.result is None


@pytest.mark.parametrize("exc_type", ["TimeLimitExceeded", "SoftTimeLimitExceeded"])
def test_time_limit_is_timeout(exc_type: str) -> None:
    result = {"exc_type": exc_type, "exc_message": ["300"], "exc_module": "billiard.exceptions"}
    job = read(meta("FAILURE", result))
    assert job.error is not None
    assert job.error.code == "TIMEOUT"
    assert job.error.retryable is True


def test_worker_lost() -> None:
    result = {"exc_type": "WorkerLostError", "exc_message": ["x"], "exc_module": "billiard"}
    error = read(meta("FAILURE", result)).error
    assert error is not None
    assert error.code == "WORKER_LOST"


def test_revoked() -> None:
    job = read(meta("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["revoked"]}))
    assert job.state is JobState.REVOKED
    assert job.error is not None
    assert job.error.code == "REVOKED"
    assert job.error.retryable is True
    assert job.done is True


def test_retry_is_not_an_error_and_not_done() -> None:
    result = {"exc_type": "MailTemporarilyFailed", "exc_message": [SECRET_TEXT]}
    job = read(meta("RETRY", result, retries=0))
    assert job.state is JobState.RETRY
    assert job.error is None
    assert job.progress is None
    assert job.result is None
    assert job.done is False


def test_job_error_only_for_failure_and_revoked() -> None:
    job_failed = {"exc_type": "JobFailed", "exc_message": ["X", "m", True]}
    for state in JobState:
        error = job_error(state, job_failed)
        if state is JobState.FAILURE:
            assert error == JobError("X", "m", retryable=True)
        elif state is JobState.REVOKED:
            assert error is not None
            assert error.code == "REVOKED"
        else:
            assert error is None


def test_done_is_exactly_the_terminal_states() -> None:
    assert {JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED} == TERMINAL_STATES
    for state in JobState:
        job = read(None if state is JobState.PENDING else meta(state.value))
        assert job.state is state
        assert job.done is (state in TERMINAL_STATES)


def test_load_meta() -> None:
    stored = meta("PROGRESS", {"progress": 40})
    assert load_meta(json.dumps(stored).encode()) == stored
    assert load_meta(json.dumps(stored)) == stored
    assert load_meta(None) is None
    assert load_meta(b"[1, 2]") is None
    assert load_meta(b'"text"') is None


# --- JobFailed through Celery's own exception serialisation -------------------------------


def test_job_failed_keeps_its_values() -> None:
    exc = JobFailed("X", "m", True)
    assert (exc.code, exc.message, exc.retryable) == ("X", "m", True)
    assert exc.args == ("X", "m", True)
    assert JobFailed("Y", "n").retryable is False


@pytest.mark.parametrize("retryable", [True, False])
def test_job_failed_round_trips_through_celery_prepare_exception(retryable: bool) -> None:
    app = Celery(set_as_current=False)
    app.conf.result_serializer = "json"
    backend = app.backend
    prepared = backend.prepare_exception(JobFailed("X", "m", retryable))
    assert prepared["exc_type"] == "JobFailed"
    assert prepared["exc_module"] == "jobql.jobs"
    # What is stored is JSON; what the web process reads is that JSON decoded.
    stored = json.loads(backend.encode(prepared))
    assert stored["exc_message"] == ["X", "m", retryable]
    assert job_error(JobState.FAILURE, stored) == JobError("X", "m", retryable)
    job = read(meta("FAILURE", stored))
    assert job.error == JobError("X", "m", retryable)


def test_job_failed_stored_by_celery_backend(celery_backend: Backend) -> None:
    job_id = new_job_id()
    stored = celery_backend.fail(job_id, JobFailed("INVALID_IMAGE", "Not an image.", False))
    assert stored is not None
    assert stored["status"] == "FAILURE"
    job = read(stored, job_id)
    assert job.state is JobState.FAILURE
    assert job.error == JobError("INVALID_IMAGE", "Not an image.", retryable=False)
    assert job.finished_at is not None
    assert job.finished_at.tzinfo is not None
    assert job.done is True


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeLimitExceeded(300), "TIMEOUT"),
        (SoftTimeLimitExceeded(), "TIMEOUT"),
        (WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."), "WORKER_LOST"),
        (RuntimeError(SECRET_TEXT), "INTERNAL"),
        (OSError(13, SECRET_TEXT), "INTERNAL"),
    ],
)
def test_celery_stored_failures(celery_backend: Backend, exc: Exception, code: str) -> None:
    job_id = new_job_id()
    stored = celery_backend.fail(job_id, exc)
    job = read(stored, job_id)
    assert job.state is JobState.FAILURE
    assert job.error is not None
    assert job.error.code == code
    assert SECRET_TEXT not in job.error.message


def test_celery_stored_success(celery_backend: Backend) -> None:
    job_id = new_job_id()
    before = datetime.now(UTC)
    stored = celery_backend.done(job_id, AVATAR_RESULT)
    job = read(stored, job_id)
    assert job.state is JobState.SUCCESS
    assert job.result == AVATAR_RESULT
    assert job.progress == 100
    assert job.finished_at is not None
    assert job.finished_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= job.finished_at <= datetime.now(UTC)


def test_celery_stored_revoked(celery_backend: Backend) -> None:
    job_id = new_job_id()
    job = read(celery_backend.revoke(job_id), job_id)
    assert job.state is JobState.REVOKED
    assert job.error is not None
    assert job.error.code == "REVOKED"


def test_keys_match_celery(celery_backend: Backend) -> None:
    job_id = new_job_id()
    celery_key: object = celery_backend.backend.get_key_for_task(job_id)  # bytes, despite the stub
    assert celery_key == meta_key(job_id).encode()
    assert meta_key(job_id) == f"{META_PREFIX}{job_id}"
    assert record_key(job_id) != meta_key(job_id)
    assert record_key(job_id).endswith(job_id)


# --- event_order ----------------------------------------------------------------------------


def written_sequence(backend: Backend, job_id: str) -> list[dict[str, Any] | None]:
    """Every meta a mail job writes: a try that progresses and is retried, then a second try."""
    return [
        None,
        backend.update_state(job_id, "STARTED", {"attempt": 1}, retries=0),
        backend.update_state(job_id, "PROGRESS", {"progress": 40, "attempt": 1}, retries=0),
        backend.update_state(job_id, "PROGRESS", {"progress": 70, "attempt": 1}, retries=0),
        backend.retry(job_id, ConnectionRefusedError(111, "refused"), retries=0),
        backend.update_state(job_id, "STARTED", {"attempt": 2}, retries=1),
        backend.update_state(job_id, "PROGRESS", {"progress": 40, "attempt": 2}, retries=1),
        backend.done(job_id, {"recipient": "a@example.com", "message_id": "<1@x>"}, retries=1),
    ]


def assert_strictly_increasing(metas: list[dict[str, Any] | None]) -> None:
    keys = [event_order(m) for m in metas]
    for (earlier_meta, earlier), (later_meta, later) in zip(
        zip(metas, keys, strict=True), zip(metas[1:], keys[1:], strict=True), strict=False
    ):
        assert earlier < later, (earlier_meta, later_meta)


def test_event_order_of_celery_written_sequence(celery_backend: Backend) -> None:
    metas = written_sequence(celery_backend, new_job_id())
    assert [m["status"] if m else None for m in metas] == [
        None,
        "STARTED",
        "PROGRESS",
        "PROGRESS",
        "RETRY",
        "STARTED",
        "PROGRESS",
        "SUCCESS",
    ]
    # Celery's extended meta is what carries the retry count.
    assert [m.get("retries") for m in metas if m] == [0, 0, 0, 0, 1, 1, 1]
    assert_strictly_increasing(metas)


def test_event_order_of_hand_written_sequence() -> None:
    metas: list[dict[str, Any] | None] = [
        None,
        meta("STARTED", {"attempt": 1}, retries=0),
        meta("PROGRESS", {"progress": 40, "attempt": 1}, retries=0),
        meta("PROGRESS", {"progress": 70, "attempt": 1}, retries=0),
        meta("RETRY", {"exc_type": "OSError", "exc_message": ["x"]}, retries=0),
        meta("STARTED", {"attempt": 2}, retries=1),
        meta("PROGRESS", {"progress": 40, "attempt": 2}, retries=1),
        meta("RETRY", {"exc_type": "OSError", "exc_message": ["x"]}, retries=1),
        meta("STARTED", {"attempt": 3}, retries=2),
        meta("SUCCESS", AVATAR_RESULT, retries=2, date_done="2025-01-02T03:05:00+00:00"),
    ]
    assert_strictly_increasing(metas)


def test_event_order_is_independent_of_the_attempt_counter_across_retries() -> None:
    # The retry count decides between tries, even if the attempt counter was not advanced.
    last_of_first_try = meta("PROGRESS", {"progress": 90, "attempt": 5}, retries=0)
    start_of_second_try = meta("STARTED", {"attempt": 1}, retries=1)
    assert event_order(last_of_first_try) < event_order(start_of_second_try)


def test_redelivery_orders_after_the_lost_attempt(celery_backend: Backend) -> None:
    job_id = new_job_id()
    progress_70 = celery_backend.update_state(
        job_id, "PROGRESS", {"progress": 70, "attempt": 1}, retries=0
    )
    redelivered = celery_backend.update_state(job_id, "STARTED", {"attempt": 2}, retries=0)
    assert redelivered is not None
    assert redelivered["retries"] == 0
    assert event_order(progress_70) < event_order(redelivered)
    redelivered_progress = meta("PROGRESS", {"progress": 40, "attempt": 2}, retries=0)
    assert event_order(redelivered) < event_order(redelivered_progress)
    assert event_order(progress_70) < event_order(redelivered_progress)


def test_retry_orders_after_every_step_of_its_try_and_before_the_next() -> None:
    retry = meta("RETRY", None, retries=0)
    for progress in (0, 40, 100):
        step = meta("PROGRESS", {"progress": progress, "attempt": 9}, retries=0)
        assert event_order(step) < event_order(retry)
    assert event_order(meta("STARTED", {"attempt": 9}, retries=0)) < event_order(retry)
    assert event_order(retry) < event_order(meta("STARTED", {"attempt": 1}, retries=1))


@pytest.mark.parametrize(
    "terminal",
    [
        meta("SUCCESS", AVATAR_RESULT, retries=0),
        meta("FAILURE", {"exc_type": "JobFailed", "exc_message": ["X", "m", False]}, retries=0),
        meta("REVOKED", None),
    ],
)
def test_terminal_states_order_after_everything(terminal: dict[str, Any]) -> None:
    others: list[dict[str, Any] | None] = [
        None,
        meta("PENDING", None),
        meta("STARTED", {"attempt": 99}, retries=50),
        meta("PROGRESS", {"progress": 100, "attempt": 99}, retries=50),
        meta("PROGRESS", {"progress": 1000, "attempt": 10**6}, retries=10**6),
        meta("RETRY", None, retries=10**6),
    ]
    for other in others:
        assert event_order(other) < event_order(terminal), other


def test_nothing_orders_before_no_meta() -> None:
    assert event_order(None) < event_order(meta("PENDING", None))
    assert event_order(None) < event_order(meta("STARTED", None))


def test_missing_retries_count_as_zero() -> None:
    assert event_order(meta("STARTED", {"attempt": 1})) == event_order(
        meta("STARTED", {"attempt": 1}, retries=None)
    )
    assert event_order(meta("STARTED", {"attempt": 1})) == event_order(
        meta("STARTED", {"attempt": 1}, retries=0)
    )


# --- ids and kinds ---------------------------------------------------------------------------


def test_new_job_ids_are_job_ids_and_unique() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_job_id(job_id) for job_id in ids)


@pytest.mark.parametrize(
    "value",
    [
        "12345678-1234-5678-1234-567812345678",
        "00000000-0000-0000-0000-000000000000",
        str(uuid.uuid4()),
        str(uuid.uuid1()),
    ],
)
def test_is_job_id_accepts_canonical_uuids(value: str) -> None:
    assert is_job_id(value) is True


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        "12345678-1234-5678-1234-56781234567",
        "12345678-1234-5678-1234-5678123456789",
        "12345678123456781234567812345678",
        "12345678-1234-5678-1234-56781234567G",
        "12345678-1234-5678-1234-567812345678 ",
        " 12345678-1234-5678-1234-567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "ABCDEF01-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-567812345678\n",
        "../../12345678-1234-5678-1234-567812345678",
        "*",
    ],
)
def test_is_job_id_rejects_everything_else(value: str) -> None:
    assert is_job_id(value) is False


def test_task_names() -> None:
    assert task_name("avatar") == "jobql.avatar"
    assert task_name("welcome_email") == "jobql.welcome_email"
    assert built_in_kinds().names == ["avatar", "welcome_email"]
