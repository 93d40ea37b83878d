"""The task envelope the web process pushes: it must be what Celery and Kombu would push."""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery
from celery.worker.request import Request
from kombu import Connection

from jobql.jobs import DEFAULT_QUEUE, new_job_id, task_name
from jobql.messages import task_message

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobql.redis_server import RedisServer

AVATAR_ARGS: dict[str, Any] = {
    "incoming_name": "incoming.jpg",
    "size": 128,
    "quality": 80,
    "image_format": "WEBP",
}
MAIL_ARGS: dict[str, Any] = {"recipient": "zoë@example.com", "username": "Zoë 名前"}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Values that are Celery's but need not be equal: who sent it, and how the kwargs are logged.
INFORMATIONAL_HEADERS = {"origin", "kwargsrepr"}


def envelope(task_name: str, task_id: str, args: dict[str, Any], queue: str) -> dict[str, Any]:
    decoded = json.loads(task_message(task_name, task_id, args, queue))
    assert isinstance(decoded, dict)
    return decoded


def body_of(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"], validate=True))


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    app = Celery("jobql-test", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[str]:
    """A queue name no other test uses; its list and Kombu's binding keys are removed after."""
    name = f"jobql-test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    finally:
        client.close()


# --- against Celery's own message builder -----------------------------------------------------


@pytest.mark.parametrize(("kind", "args"), [("avatar", AVATAR_ARGS), ("welcome_email", MAIL_ARGS)])
def test_headers_match_celery(celery_app: Celery, kind: str, args: dict[str, Any]) -> None:
    task_id = new_job_id()
    ours = envelope(task_name(kind), task_id, args, DEFAULT_QUEUE)["headers"]
    theirs = celery_app.amqp.as_task_v2(task_id, task_name(kind), (), args).headers
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for key in ("task", "id", "root_id", "retries", "lang", "ignore_result"):
        assert ours[key] == theirs[key], key
    assert ours["task"] == task_name(kind)
    assert ours["id"] == task_id
    assert ours["root_id"] == task_id
    assert ours["retries"] == 0
    assert ours["lang"] == "py"
    assert ours["ignore_result"] is False
    # Everything else is equal too, once through JSON (Celery's timelimit is a list as well).
    same = {key: value for key, value in ours.items() if key not in INFORMATIONAL_HEADERS}
    celery_json = json.loads(json.dumps(theirs))
    assert same == {k: v for k, v in celery_json.items() if k not in INFORMATIONAL_HEADERS}
    assert isinstance(ours["origin"], str)
    assert ours["origin"]
    assert isinstance(ours["kwargsrepr"], str)


def test_kwargsrepr_does_not_log_the_arguments() -> None:
    headers = envelope(task_name("welcome_email"), new_job_id(), MAIL_ARGS, "q")["headers"]
    assert "zoë@example.com" not in headers["kwargsrepr"]
    assert headers["kwargsrepr"] == "<2 kwargs>"
    assert headers["argsrepr"] == "()"


@pytest.mark.parametrize(
    "args", [AVATAR_ARGS, MAIL_ARGS, {}, {"a": None, "b": True, "c": 1.5, "d": {"k": [1]}}]
)
def test_body_matches_celery(celery_app: Celery, args: dict[str, Any]) -> None:
    task_id = new_job_id()
    message = envelope(task_name("avatar"), task_id, args, DEFAULT_QUEUE)
    theirs = celery_app.amqp.as_task_v2(task_id, task_name("avatar"), (), args).body
    assert body_of(message) == json.loads(json.dumps(theirs))
    assert body_of(message) == [[], args, EMBED]


def test_envelope_and_properties() -> None:
    task_id = new_job_id()
    message = envelope(task_name("avatar"), task_id, AVATAR_ARGS, "some-queue")
    assert set(message) == {"body", "content-encoding", "content-type", "headers", "properties"}
    assert message["content-type"] == "application/json"
    assert message["content-encoding"] == "utf-8"
    properties = message["properties"]
    assert properties["correlation_id"] == task_id
    assert properties["body_encoding"] == "base64"
    assert properties["delivery_info"]["routing_key"] == "some-queue"
    assert properties["priority"] == 0
    assert properties["delivery_mode"] == 2
    assert isinstance(properties["delivery_tag"], str)
    assert properties["delivery_tag"]


def test_the_delivery_tag_is_the_job_id() -> None:
    # Unique as job ids are; what recovery asks Kombu's unacknowledged index about.
    task_id = new_job_id()
    message = envelope(task_name("avatar"), task_id, AVATAR_ARGS, "q")
    assert message["properties"]["delivery_tag"] == task_id


def test_envelope_matches_what_celery_publishes_to_redis(
    redis_server: RedisServer, queue: str
) -> None:
    """Celery's `send_task` through Kombu's Redis transport, read raw off the list."""
    task_id = new_job_id()
    app = Celery("jobql-test", broker=redis_server.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    client = redis.Redis.from_url(redis_server.url)
    try:
        app.send_task(task_name("welcome_email"), kwargs=MAIL_ARGS, task_id=task_id, queue=queue)
        raw = client.lpop(queue)
    finally:
        client.close()
        app.close()
    assert isinstance(raw, bytes)
    theirs = json.loads(raw)
    ours = envelope(task_name("welcome_email"), task_id, MAIL_ARGS, queue)
    assert set(ours) == set(theirs)
    for key in ("body", "content-type", "content-encoding"):
        assert ours[key] == theirs[key], key
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for key in ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key], key


# --- a real round trip through Redis, consumed by Kombu and Celery -----------------------------


def push(url: str, queue: str, message: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.lpush(queue, message)
    finally:
        client.close()


def test_kombu_consumes_the_pushed_message(redis_server: RedisServer, queue: str) -> None:
    task_id = new_job_id()
    push(redis_server.url, queue, task_message(task_name("avatar"), task_id, AVATAR_ARGS, queue))
    with Connection(redis_server.url) as conn:
        simple = conn.SimpleQueue(queue)
        try:
            msg = simple.get(timeout=2)
            assert msg.headers["task"] == task_name("avatar")
            assert msg.headers["id"] == task_id
            assert msg.content_type == "application/json"
            assert msg.properties["correlation_id"] == task_id
            assert msg.delivery_info["routing_key"] == queue
            assert msg.decode() == [[], AVATAR_ARGS, EMBED]
            msg.ack()
            assert msg.acknowledged
            with pytest.raises(simple.Empty):
                simple.get(timeout=0.2)
        finally:
            simple.close()


def test_messages_are_consumed_in_push_order(redis_server: RedisServer, queue: str) -> None:
    ids = [new_job_id() for _ in range(3)]
    for task_id in ids:
        push(redis_server.url, queue, task_message(task_name("avatar"), task_id, {}, queue))
    with Connection(redis_server.url) as conn:
        simple = conn.SimpleQueue(queue)
        try:
            received = []
            for _ in ids:
                msg = simple.get(timeout=2)
                received.append(msg.headers["id"])
                msg.ack()
        finally:
            simple.close()
    assert received == ids


def test_celery_worker_request_runs_the_pushed_task(redis_server: RedisServer, queue: str) -> None:
    """The consumed message, handed to the request class a worker uses, runs the task in-process."""
    app = Celery("jobql-test", broker=redis_server.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    calls: list[tuple[str, str]] = []

    @app.task(name=task_name("welcome_email"), shared=False)
    def welcome_email(recipient: str, username: str) -> dict[str, str]:
        calls.append((recipient, username))
        return {"recipient": recipient}

    task_id = new_job_id()
    push(
        redis_server.url,
        queue,
        task_message(task_name("welcome_email"), task_id, MAIL_ARGS, queue),
    )
    try:
        with app.connection_for_read() as conn:
            simple = conn.SimpleQueue(queue)
            try:
                msg = simple.get(timeout=2)
                request = Request(msg, app=app, task=welcome_email)
                assert request.id == task_id
                assert request.name == task_name("welcome_email")
                assert request.args == []
                assert request.kwargs == MAIL_ARGS
                assert request.delivery_info["routing_key"] == queue
                retval = request.execute()
                msg.ack()
            finally:
                simple.close()
    finally:
        app.close()
    assert calls == [("zoë@example.com", "Zoë 名前")]
    assert retval == {"recipient": "zoë@example.com"}
