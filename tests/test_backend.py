"""JobResultBackend against a real Redis: one round trip a write, SUCCESS final, stats once."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis
from celery import Celery
from celery.app.task import Context

from jobql.jobs import (
    JobFailed,
    messages_key,
    meta_key,
    missing_key,
    pending_key,
    record_key,
    task_name,
)
from jobql.stats import STATS_KEY
from jobql.tasks.backend import (
    ATTEMPT_MARK,
    CHECKPOINT,
    Delivery,
    JobResultBackend,
    backend_url,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobql.redis_server import RedisServer

RESULT_EXPIRES = 600


@pytest.fixture
def backend(redis_server: RedisServer) -> JobResultBackend:
    app = Celery("jobql-test", backend=backend_url(redis_server.url), set_as_current=False)
    app.conf.update(
        result_serializer="json",
        accept_content=["json"],
        result_expires=RESULT_EXPIRES,
    )
    return cast("JobResultBackend", app.backend)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


def request(job_id: str, *args: Any, started: float | None = None) -> Context:
    context = Context(
        id=job_id,
        task=task_name("welcome_email"),
        retries=0,
        args=list(args),
        kwargs={},
        delivery_info={"routing_key": "celery"},
    )
    if started is not None:
        context.started = started  # type: ignore[attr-defined]
    return context


def stored(client: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = client.get(meta_key(job_id))
    assert isinstance(raw, bytes)
    return cast("dict[str, Any]", json.loads(raw))


def start(backend: JobResultBackend, job_id: str, *args: Any, **result: Any) -> Delivery:
    """A delivery of `job_id` starting, as JobTask.before_start reports it."""
    return backend.mark_as_started_delivery(
        job_id,
        request(job_id, *args),
        queue="celery",
        started_at="2026-01-01T00:00:00+00:00",
        deliveries_field="deliveries:0",
        **result,
    )


def test_a_write_is_stored_and_published_on_the_job_channel(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    with client.pubsub() as pubsub:  # type: ignore[no-untyped-call]
        pubsub.subscribe(meta_key(job_id))
        pubsub.get_message(timeout=1)  # the subscription's confirmation
        backend.store_result(job_id, {"progress": 40}, "PROGRESS", request=request(job_id))
        message = pubsub.get_message(timeout=2)
    assert message is not None
    assert json.loads(message["data"])["result"] == {"progress": 40}
    assert stored(client, job_id)["status"] == "PROGRESS"
    assert 0 < client.ttl(meta_key(job_id)) <= RESULT_EXPIRES


def test_nothing_replaces_success(backend: JobResultBackend, client: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    backend.mark_as_done(job_id, {"recipient": "a@example.com"}, request=request(job_id))
    backend.store_result(job_id, {"progress": 50}, "PROGRESS", request=request(job_id))
    assert stored(client, job_id)["status"] == "SUCCESS"
    assert stored(client, job_id)["result"] == {"recipient": "a@example.com"}


def test_a_finished_job_is_counted_once_however_often_it_is_stored(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    before = float(client.hget(STATS_KEY, "finished:welcome_email:SUCCESS") or 0)
    for _ in range(2):  # a redelivered job finishing again
        started = time.monotonic() - 0.2
        backend.mark_as_done(job_id, {}, request=request(job_id, started=started))
    after = float(client.hget(STATS_KEY, "finished:welcome_email:SUCCESS") or 0)
    assert after - before == 1
    # Writes that do not finish the job count nothing.
    backend.store_result(str(uuid.uuid4()), {}, "PROGRESS", request=request(job_id, started=0))
    assert float(client.hget(STATS_KEY, "finished:welcome_email:SUCCESS") or 0) == after


def test_start_counts_the_delivery_and_stores_started_with_its_attempt(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    record, pending = record_key(job_id), pending_key("celery")
    copies, missing = messages_key("celery"), missing_key("celery")
    client.hset(record, mapping={"owner": "u"})
    client.zadd(pending, {job_id: 1})
    client.hset(copies, job_id, "{}")
    client.hset(missing, job_id, "1")
    args = ("a@example.com", ATTEMPT_MARK)

    attempts = [start(backend, job_id, *args, pid=1234) for _ in range(2)]

    assert attempts == [Delivery(1, None, "u"), Delivery(2, None, "u")]
    meta = stored(client, job_id)
    assert meta["status"] == "STARTED"
    assert meta["result"] == {"attempt": 2, "pid": 1234}
    # Not the task's arguments (they may be personal), nor anything else of the request.
    assert set(meta) == {"status", "result", "traceback", "children", "date_done", "task_id"} | {
        "retries"
    }
    assert "a@example.com" not in json.dumps(meta)
    assert client.hget(record, "deliveries:0") == b"2"
    assert client.hget(record, "started_at") == b"2026-01-01T00:00:00+00:00"
    assert client.zscore(pending, job_id) is None
    assert client.hget(copies, job_id) is client.hget(missing, job_id) is None


def test_a_late_start_does_not_replace_success(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    backend.mark_as_done(job_id, {"done": True}, request=request(job_id))
    assert start(backend, job_id).attempt == 1
    assert stored(client, job_id)["status"] == "SUCCESS"


def test_start_hands_back_the_message_id_an_earlier_delivery_sent(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    client.hset(record_key(job_id), CHECKPOINT, f"<{job_id}@jobql>")
    assert start(backend, job_id) == Delivery(1, f"<{job_id}@jobql>")


def test_sent_is_noted_in_the_record_with_its_progress(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    client.hset(record_key(job_id), "owner", "u")
    backend.mark_checkpoint(job_id, request(job_id), f"<{job_id}@jobql>", progress=90, attempt=1)
    assert client.hget(record_key(job_id), CHECKPOINT) == f"<{job_id}@jobql>".encode()
    meta = stored(client, job_id)
    assert (meta["status"], meta["result"]) == ("PROGRESS", {"progress": 90, "attempt": 1})


def test_sent_does_not_bring_back_a_record_that_is_gone(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    backend.mark_checkpoint(job_id, request(job_id), f"<{job_id}@jobql>", progress=90)
    assert not client.exists(record_key(job_id))


def test_a_meta_keeps_of_an_exception_what_the_api_reads(
    backend: JobResultBackend, client: redis.Redis
) -> None:
    """No traceback, and no exception's text but a JobFailed's and a revocation's: a
    traceback or a message may quote the payload (smtplib's names the recipient)."""
    job_id = str(uuid.uuid4())
    context = request(job_id, "a@example.com")
    context.retries = 2
    personal = KeyError("a@example.com")
    backend.mark_as_retry(job_id, personal, "Traceback ... a@example.com", request=context)
    meta = stored(client, job_id)
    assert meta["status"] == "RETRY"
    assert meta["retries"] == 2  # what orders a job's state writes across tries
    assert meta["traceback"] is None
    assert meta["result"] == {"exc_type": "KeyError", "exc_message": [], "exc_module": "builtins"}

    backend.mark_as_failure(job_id, personal, "Traceback ... a@example.com", request=context)
    assert "a@example.com" not in json.dumps(stored(client, job_id))

    job_id = str(uuid.uuid4())
    failed = JobFailed("SMTP_REJECTED", "The mail server refused.", False)
    backend.mark_as_failure(job_id, failed, "Traceback", request=request(job_id))
    assert stored(client, job_id)["result"]["exc_message"] == list(failed.args)

    job_id = str(uuid.uuid4())
    backend.mark_as_revoked(job_id, "expired", request=request(job_id))
    assert stored(client, job_id)["result"]["exc_message"] == ["expired"]
