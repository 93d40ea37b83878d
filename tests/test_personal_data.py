"""An email job's address and username are found only where the README says they are kept.

A real stack (Redis, a worker sending task events, the web server, SMTP) runs one welcome
email that the server defers once (so it is retried), one it refuses, and one it always
defers (so it is given up after its retries). Meanwhile the
test captures every Celery event (with Celery's own event receiver) and every pub/sub
message (PSUBSCRIBE *), and reads every Redis key of every type at three moments: with
the jobs queued, with the deferred one waiting for its retry, and after both ended. Then
it reads the web and worker logs.

The places allowed (README, "Personal data"): a job's task message, in its queue, in
`jobql:messages:<queue>` until a worker starts it, and in Kombu's `unacked` hash while a
worker holds it; and the recipient (not the username) in a succeeded job's result meta,
`celery-task-meta-<id>`, and the two PUBLISHes of that write.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY
from jobql.jobs import DEFAULT_QUEUE, inputs_key, messages_key, meta_key, owner_events
from jobql.tasks.recovery import UNACKED_KEY
from tests.conftest import token
from tests.graphql_clients import execute, http_client
from tests.support import BUSY_DOMAIN, DEFERRING_DOMAIN, REJECTING_DOMAIN, SEND_WELCOME

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from tests.support import Stack

OWNER = "backend"
WAIT = 60.0  # seconds; generous, the machine is shared
# Kombu's Redis transport keeps a queue's messages of priority n in `<queue>\x06\x16<n>`.
PRIORITY_SEPARATOR = "\x06\x16"
# The message places: where a job's task message is while it waits or is held.
MESSAGE_KEYS = frozenset({DEFAULT_QUEUE, messages_key(DEFAULT_QUEUE), UNACKED_KEY})
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def found(data: bytes | str, needles: Iterable[str]) -> set[str]:
    """The needles in `data`, in any case, also inside the base64 runs it holds (a Kombu
    message's body is base64), however deep."""
    raw = data.encode() if isinstance(data, str) else data
    texts = [raw]
    seen = 0
    while seen < len(texts):
        for run in BASE64_RUN.findall(texts[seen]):
            try:
                texts.append(base64.b64decode(run, validate=True))
            except (binascii.Error, ValueError):
                continue
        seen += 1
    lowered = b"\n".join(texts).lower()
    return {needle for needle in needles if needle.lower().encode() in lowered}


def key_is_a_queue(key: str) -> bool:
    return key == DEFAULT_QUEUE or key.startswith(DEFAULT_QUEUE + PRIORITY_SEPARATOR)


def read_every_key(client: redis.Redis) -> dict[str, bytes]:
    """Every key's name and content (as one text), whatever its type."""
    contents: dict[str, bytes] = {}
    for raw_key in client.scan_iter(count=500):
        key = raw_key.decode()
        kind = client.type(raw_key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = client.get(raw_key)
        elif kind == "hash":
            value = client.hgetall(raw_key)
        elif kind == "list":
            value = client.lrange(raw_key, 0, -1)
        elif kind == "set":
            value = client.smembers(raw_key)
        elif kind == "zset":
            value = client.zrange(raw_key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(raw_key)
        elif kind == "none":  # expired between SCAN and TYPE
            continue
        else:
            pytest.fail(f"a key of a type this test cannot read: {key} ({kind})")
        contents[key] = key.encode() + b"\n" + repr(value).encode()
    return contents


def places(contents: dict[str, bytes], needles: Iterable[str]) -> dict[str, set[str]]:
    """For each key that holds any of the needles, which."""
    needles = list(needles)
    return {key: hit for key, text in contents.items() if (hit := found(text, needles))}


class EventCapture:
    """Every Celery event sent on the stack's broker, received as Flower receives them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("personal-data-events", broker=broker_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> EventCapture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)

    def of(self, job_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == job_id]


class PubSubCapture:
    """Every message PUBLISHed on the stack's Redis, on any channel."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
        self.messages: list[tuple[str, bytes]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "pmessage":
                self.messages.append((message["channel"].decode(), message["data"]))

    def __enter__(self) -> PubSubCapture:
        self.pubsub.psubscribe("*")
        confirmation = self.pubsub.get_message(timeout=10)
        assert confirmation is not None and confirmation["type"] == "psubscribe"
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.pubsub.close()
        self.client.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}")
        time.sleep(0.05)


def status(client: redis.Redis, job_id: str) -> str | None:
    raw = client.get(meta_key(job_id))
    return None if raw is None else str(json.loads(raw)["status"])


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    # A retry waits long enough for the test to look at Redis in between.
    return make_stack(mail_retry_backoff=3.0, mail_max_retries=1)


async def test_addresses_and_names_are_only_where_the_readme_says(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:10]
    deferred = f"ada.{tag}@{DEFERRING_DOMAIN}"  # 451 once, then accepted
    refused = f"grace.{tag}@{REJECTING_DOMAIN}"  # 550
    given_up = f"alan.{tag}@{BUSY_DOMAIN}"  # 451 every time
    deferred_name, refused_name, given_up_name = f"Ada-{tag}", f"Grace-{tag}", f"Alan-{tag}"
    everything = (deferred, refused, given_up, deferred_name, refused_name, given_up_name)
    names = {deferred: deferred_name, refused: refused_name, given_up: given_up_name}
    client = redis.Redis.from_url(stack.settings.redis_url)

    with (
        EventCapture(stack.settings.redis_url) as events,
        PubSubCapture(stack.settings.redis_url) as published,
    ):
        worker = stack.add_worker(concurrency=1, extra=["-E"])
        wait_until(
            lambda: any(e["type"].startswith("worker-") for e in list(events.events)),
            "the event receiver to hear the worker",
        )
        web = stack.start_web()
        sender = http_client(web, token(OWNER, SCOPE_SEND_EMAIL))

        # 1. Queued, no worker taking anything yet: in the task messages only.
        with worker.paused():
            jobs = {}
            for address, name in names.items():
                answer = await execute(sender, SEND_WELCOME, email=address, username=name)
                jobs[address] = answer["sendWelcomeEmail"]["id"]
            queued = places(read_every_key(client), everything)
        deferred_id, refused_id, given_up_id = jobs[deferred], jobs[refused], jobs[given_up]
        # And in what each job was given, kept for retryJob.
        inputs = {inputs_key(job_id) for job_id in jobs.values()}
        assert {k for k in queued if not key_is_a_queue(k)} <= MESSAGE_KEYS | inputs, queued
        # The search does find them where they are (inside the messages' base64 bodies).
        assert set().union(*queued.values()) == set(everything), queued

        # 2. The deferred job waiting for its retry: its message is held, or queued again.
        wait_until(lambda: status(client, deferred_id) == "RETRY", "the deferred job's RETRY")
        with worker.paused():
            waiting = places(read_every_key(client), everything)
            assert status(client, deferred_id) == "RETRY", "the retry ran before the look"
        assert {k for k in waiting if not key_is_a_queue(k)} <= MESSAGE_KEYS | inputs, waiting
        assert {deferred, deferred_name} <= set().union(*waiting.values()), waiting

        # 3. Both ended.
        wait_until(lambda: status(client, deferred_id) == "SUCCESS", "the deferred job's end")
        wait_until(lambda: status(client, refused_id) == "FAILURE", "the refused job's end")
        wait_until(
            lambda: (
                "task-succeeded" in events.of(deferred_id)
                and "task-failed" in events.of(refused_id)
            ),
            "the final task events",
        )
        # A message is acknowledged (taken off `unacked`) just after its end is told.
        wait_until(lambda: client.hlen(UNACKED_KEY) == 0, "the last message's acknowledgement")
        ended = places(read_every_key(client), everything)
        answer = await execute(sender, JOB_QUERY, id=deferred_id)
        given_up_answer = await execute(sender, JOB_QUERY, id=given_up_id)

    # The address is kept where the API reads it (EmailResult.recipient), and in what a job
    # that retryJob may retry was given (SMTP_UNAVAILABLE is retryable): nowhere else.
    assert answer["job"]["result"]["recipient"] == deferred
    assert ended == {
        meta_key(deferred_id): {deferred},
        inputs_key(given_up_id): {given_up, given_up_name},
    }, ended
    assert 0 < client.ttl(inputs_key(given_up_id)) <= stack.settings.result_expires
    ttl = client.ttl(meta_key(deferred_id))
    assert 0 < ttl <= stack.settings.result_expires
    assert len(stack.smtp.handler.to(deferred)) == 1

    # Every task event of both jobs was seen, the retry's included, and none names anyone.
    assert events.of(deferred_id).count("task-received") == 2
    for expected in ("task-started", "task-retried", "task-succeeded"):
        assert expected in events.of(deferred_id)
    assert "task-failed" in events.of(refused_id)
    assert events.of(given_up_id).count("task-retried") == 1
    assert "task-failed" in events.of(given_up_id)
    assert given_up_answer["job"]["error"]["code"] == "SMTP_UNAVAILABLE"
    for event in events.events:
        assert not found(json.dumps(event, default=str), everything), event

    # Pub/sub: the SUCCESS write of the deferred job, on its channel and its owner's.
    assert any(channel.startswith("/") for channel, _ in published.messages)  # events too
    allowed_channels = {meta_key(deferred_id), owner_events(OWNER)}
    for channel, data in published.messages:
        hits = found(data, everything)
        if not hits:
            continue
        assert channel in allowed_channels, (channel, data)
        assert hits == {deferred}, (channel, data)
        assert b'\\"SUCCESS\\"' in data or b'"SUCCESS"' in data, (channel, data)

    # The logs, with the worker's at INFO: neither the addresses nor the names.
    assert not found(worker.log, everything), worker.log
    assert stack.web is not None
    assert not found(stack.web.process.log, everything), stack.web.process.log
    client.close()
