"""`jobs`, `waitForJob` and `Subscription.jobs` end to end: HTTP and WebSocket clients, a
real worker, a real Redis and SMTP server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from gql import gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.file_upload import FileVar
from redis.asyncio import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.connections import create_redis
from jobql.jobs import owner_events
from jobql.listing import SCAN_BUDGET
from jobql.store import JobStore
from tests.conftest import token
from tests.graphql_clients import http_client, ws_client
from tests.images import phone_photo
from tests.support import SEND_WELCOME, UPLOAD_AVATAR, start_web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from jobql.redis_server import RedisServer
    from jobql.settings import Settings
    from tests.support import Stack, WebServer

pytestmark = pytest.mark.usefixtures("worker")

JOBS = """
query Jobs($first: Int, $after: String, $state: JobState, $kind: JobKind) {
  jobs(first: $first, after: $after, state: $state, kind: $kind) {
    edges { cursor node { id kind state done attempts createdAt startedAt expiresAt } }
    pageInfo { hasNextPage endCursor }
  }
}"""
WAIT = """
query Wait($id: ID!, $timeout: Int) {
  waitForJob(id: $id, timeoutSeconds: $timeout) { id state done attempts expiresAt }
}"""
FEED = """
subscription Feed($kind: JobKind) {
  jobs(kind: $kind) { id kind state done attempts }
}"""
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def send(web: WebServer, user: str, document: str, **variables: Any) -> dict[str, Any]:
    """`document` over HTTP as `user` (variables that are None are left out)."""
    request = gql(document)
    request.variable_values = {k: v for k, v in variables.items() if v is not None}
    async with http_client(web, token(user, SCOPE_SEND_EMAIL)) as session:
        result: dict[str, Any] = await session.execute(request)
    return result


async def refused(web: WebServer, user: str, document: str, **variables: Any) -> str:
    """The error code `document` is refused with."""
    with pytest.raises(TransportQueryError) as raised:
        await send(web, user, document, **variables)
    assert raised.value.errors, raised.value
    return str(raised.value.errors[0]["extensions"]["code"])


CANCEL_JOB = "mutation Cancel($id: ID!) { cancelJob(id: $id) { id state } }"


async def email_job(web: WebServer, user: str, delay: int = 0) -> dict[str, Any]:
    address = f"{uuid.uuid4().hex[:10]}@example.com"
    done = await send(web, user, SEND_WELCOME, email=address, username="U", delaySeconds=delay)
    job: dict[str, Any] = done["sendWelcomeEmail"]
    return job


async def avatar_job(web: WebServer, user: str) -> dict[str, Any]:
    file = FileVar(io.BytesIO(phone_photo()), filename="p.jpg", content_type="image/jpeg")
    request = gql(UPLOAD_AVATAR)
    request.variable_values = {"file": file, "options": {"size": 64}}
    async with http_client(web, token(user)) as session:
        result = await session.execute(request, upload_files=True)
    job: dict[str, Any] = result["uploadAvatar"]
    return job


async def page(web: WebServer, user: str, **variables: Any) -> dict[str, Any]:
    jobs: dict[str, Any] = (await send(web, user, JOBS, **variables))["jobs"]
    return jobs


async def wait(web: WebServer, user: str, job_id: str, timeout: int = 30) -> dict[str, Any]:
    job: dict[str, Any] = (await send(web, user, WAIT, id=job_id, timeout=timeout))["waitForJob"]
    return job


def ids(listed: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in listed["edges"]]


class Feed:
    """`Subscription.jobs` over a WebSocket, its events collected by a task."""

    def __init__(self, web: WebServer, user: str, kind: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self._client = ws_client(web, token(user, SCOPE_SEND_EMAIL))
        self._kind = kind
        self._task: asyncio.Task[None] | None = None
        self.error: TransportQueryError | None = None  # what the server ended it with
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Feed:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self.ended.is_set():
            await self._task
            return
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        request = gql(FEED)
        request.variable_values = {"kind": self._kind} if self._kind else {}
        try:
            async with self._client as session:
                async for result in session.subscribe(request):
                    self.events.append(result["jobs"])
                    self.arrived.set()
        except TransportQueryError as exc:
            self.error = exc
        self.ended.set()

    async def until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> None:
        async with asyncio.timeout(timeout):
            while not done(self.events):
                self.arrived.clear()
                await self.arrived.wait()

    async def listening(self, make_job: Callable[[], Any]) -> None:
        """Make jobs until one shows on the feed: from then on it hears everything."""
        for _ in range(20):
            job_id = (await make_job())["id"]
            try:
                await self.until(partial(_has, job_id), 1)
                return
            except TimeoutError:
                continue
        raise AssertionError("the feed never heard a job")

    def of(self, job_id: str) -> list[str]:
        return [event["state"] for event in self.events if event["id"] == job_id]


def _has(job_id: str, events: list[dict[str, Any]]) -> bool:
    return any(event["id"] == job_id for event in events)


# --- jobs --------------------------------------------------------------------------------


async def test_pages_follow_cursors_newest_first(web: WebServer) -> None:
    user = new_user()
    created = [(await email_job(web, user, delay=60))["id"] for _ in range(7)]

    first = await page(web, user, first=3)
    second = await page(web, user, first=3, after=first["pageInfo"]["endCursor"])
    third = await page(web, user, first=3, after=second["pageInfo"]["endCursor"])

    assert ids(first) + ids(second) + ids(third) == created[::-1]
    assert [p["pageInfo"]["hasNextPage"] for p in (first, second, third)] == [True, True, False]
    # Each edge's cursor continues right after it.
    middle = await page(web, user, first=2, after=first["edges"][0]["cursor"])
    assert ids(middle) == created[::-1][1:3]
    nodes = [edge["node"] for edge in first["edges"]]
    assert [n["createdAt"] for n in nodes] == sorted((n["createdAt"] for n in nodes), reverse=True)
    everything = await page(web, user)  # first: 20 by default
    assert ids(everything) == created[::-1]
    assert everything["pageInfo"]["hasNextPage"] is False


async def test_filters_by_state_and_kind(web: WebServer) -> None:
    user = new_user()
    avatar = await avatar_job(web, user)
    finished = await email_job(web, user)
    queued = await email_job(web, user, delay=60)
    assert (await wait(web, user, finished["id"]))["state"] == "SUCCESS"
    assert (await wait(web, user, avatar["id"]))["state"] == "SUCCESS"

    assert ids(await page(web, user, kind="AVATAR")) == [avatar["id"]]
    assert ids(await page(web, user, kind="WELCOME_EMAIL")) == [queued["id"], finished["id"]]
    assert ids(await page(web, user, state="PENDING")) == [queued["id"]]
    assert ids(await page(web, user, state="SUCCESS")) == [finished["id"], avatar["id"]]
    assert ids(await page(web, user, state="SUCCESS", kind="AVATAR")) == [avatar["id"]]
    assert ids(await page(web, user, state="FAILURE")) == []
    # A filtered page follows its cursor too.
    one = await page(web, user, state="SUCCESS", first=1)
    assert one["pageInfo"]["hasNextPage"] is True
    rest = await page(web, user, state="SUCCESS", first=1, after=one["pageInfo"]["endCursor"])
    assert ids(one) + ids(rest) == [finished["id"], avatar["id"]]
    assert rest["pageInfo"]["hasNextPage"] is False


async def test_jobs_carry_attempts_and_expiry(web: WebServer, settings: Settings) -> None:
    user = new_user()
    queued = await email_job(web, user, delay=60)
    finished = await email_job(web, user)
    await wait(web, user, finished["id"])

    nodes = {edge["node"]["id"]: edge["node"] for edge in (await page(web, user))["edges"]}

    kept = timedelta(seconds=settings.result_expires)
    waiting, done = nodes[queued["id"]], nodes[finished["id"]]
    assert waiting["attempts"] == 0
    created = datetime.fromisoformat(waiting["createdAt"])
    assert datetime.fromisoformat(waiting["expiresAt"]) == created + kept
    assert done["attempts"] == 1
    # The record is kept for the whole time from the start of its last delivery.
    started = datetime.fromisoformat(done["startedAt"])
    assert datetime.fromisoformat(done["expiresAt"]) == started + kept


async def test_first_out_of_range_is_bad_user_input(web: WebServer) -> None:
    user = new_user()
    for first in (0, -1, 101):
        assert await refused(web, user, JOBS, first=first) == "BAD_USER_INPUT"
    assert (await page(web, user, first=100))["edges"] == []


async def test_bad_cursors_are_bad_user_input(web: WebServer) -> None:
    alice, bob = new_user(), new_user()
    for user in (alice, bob):
        for _ in range(2):
            await email_job(web, user, delay=60)
    theirs = (await page(web, bob, first=1))["pageInfo"]["endCursor"]
    mine = (await page(web, alice, first=1))["pageInfo"]["endCursor"]
    raw = bytearray(base64.urlsafe_b64decode(mine + "=" * (-len(mine) % 4)))
    raw[-1] ^= 1  # the last character of the job id it names
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    forged = base64.urlsafe_b64encode(b"\0" * 16 + f"1e12|{UNKNOWN_ID}".encode()).decode()

    for cursor in ("garbage", "", "%%%", theirs, tampered, forged, mine + "A", "x" * 5000):
        assert await refused(web, alice, JOBS, first=1, after=cursor) == "BAD_USER_INPUT", cursor
    assert len(ids(await page(web, alice, first=1, after=mine))) == 1


async def test_another_users_jobs_are_never_listed(web: WebServer) -> None:
    alice, bob = new_user(), new_user()
    mine = [(await email_job(web, alice, delay=60))["id"] for _ in range(3)]
    theirs = [(await email_job(web, bob, delay=60))["id"] for _ in range(3)]

    assert ids(await page(web, alice, first=100)) == mine[::-1]
    assert ids(await page(web, bob, first=100)) == theirs[::-1]
    assert ids(await page(web, new_user())) == []


# --- waitForJob --------------------------------------------------------------------------


async def test_wait_answers_as_soon_as_the_job_is_done(web: WebServer) -> None:
    user = new_user()
    job = await email_job(web, user, delay=1)
    timeout = 60

    started = time.monotonic()
    done = await wait(web, user, job["id"], timeout=timeout)
    took = time.monotonic() - started

    assert done["id"] == job["id"]
    assert (done["state"], done["done"], done["attempts"]) == ("SUCCESS", True, 1)
    assert took < timeout / 4, took
    # A job already done is answered at once, as it is.
    assert (await wait(web, user, job["id"], timeout=1))["state"] == "SUCCESS"


async def test_wait_times_out_with_the_job_as_it_is(web: WebServer) -> None:
    user = new_user()
    job = await email_job(web, user, delay=60)
    timeout = 2

    started = time.monotonic()
    current = await wait(web, user, job["id"], timeout=timeout)
    took = time.monotonic() - started

    assert (current["id"], current["state"], current["done"]) == (job["id"], "PENDING", False)
    assert timeout <= took < 3 * timeout, took


async def test_wait_is_null_for_missing_and_other_users_jobs(web: WebServer) -> None:
    alice, bob = new_user(), new_user()
    theirs = await email_job(web, bob, delay=60)
    for job_id in (theirs["id"], UNKNOWN_ID, "not-a-job-id"):
        assert await wait(web, alice, job_id, timeout=1) is None


async def test_wait_timeout_out_of_range_is_bad_user_input(web: WebServer) -> None:
    user = new_user()
    job = await email_job(web, user, delay=60)
    for timeout in (0, -5, 61):
        assert await refused(web, user, WAIT, id=job["id"], timeout=timeout) == "BAD_USER_INPUT"


# --- Subscription.jobs -------------------------------------------------------------------


async def test_feed_pushes_jobs_created_after_subscribing(web: WebServer) -> None:
    alice, bob = new_user(), new_user()
    async with Feed(web, alice) as feed:
        await feed.listening(lambda: email_job(web, alice, delay=60))
        job = await email_job(web, alice)
        others = await email_job(web, bob)
        await feed.until(lambda events: "SUCCESS" in feed.of(job["id"]))
        await wait(web, bob, others["id"])

    states = feed.of(job["id"])
    assert list(dict.fromkeys(states)) == ["PENDING", "STARTED", "PROGRESS", "SUCCESS"], states
    assert states == sorted(states, key=["PENDING", "STARTED", "PROGRESS", "SUCCESS"].index)
    assert feed.of(others["id"]) == []
    assert all(event["kind"] == "WELCOME_EMAIL" for event in feed.events)


async def test_feed_of_a_kind_skips_the_other_kinds(web: WebServer) -> None:
    user = new_user()
    async with Feed(web, user, kind="AVATAR") as feed:
        await feed.listening(lambda: avatar_job(web, user))
        email = await email_job(web, user)
        assert (await wait(web, user, email["id"]))["state"] == "SUCCESS"
        avatar = await avatar_job(web, user)
        await feed.until(lambda events: "SUCCESS" in feed.of(avatar["id"]))

    assert feed.of(email["id"]) == []
    assert {event["kind"] for event in feed.events} == {"AVATAR"}
    assert feed.of(avatar["id"])[0] == "PENDING"


async def test_state_writes_are_published_per_owner(web: WebServer, settings: Settings) -> None:
    """What the feed is made of: each write on the owner's channel, record fields with it."""
    user = new_user()
    client = Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(owner_events(user), owner_events(new_user()))
    try:
        job = await email_job(web, user)
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not events or events[-1]["meta"] is None or "SUCCESS" not in events[-1]["meta"]:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    events.append({**json.loads(message["data"]), "channel": message["channel"]})
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()

    assert {event["channel"] for event in events} == {owner_events(user).encode()}
    assert {event["id"] for event in events} == {job["id"]}
    assert events[0]["meta"] is None  # queued: nothing stored by Celery yet
    assert events[0]["record"]["owner"] == user
    assert events[0]["record"]["kind"] == "welcome_email"
    assert json.loads(events[-1]["meta"])["status"] == "SUCCESS"
    assert events[-1]["record"]["attempts"] == "1"


# --- cost ----------------------------------------------------------------------------------


async def commands(client: Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def cost_of(web: WebServer, client: Redis, user: str, **variables: Any) -> dict[str, int]:
    """The Redis commands one page costs (a private Redis: nothing else talks to it)."""
    before = await commands(client)
    await page(web, user, **variables)
    after = await commands(client)
    spent = {name: calls - before.get(name, 0) for name, calls in after.items()}
    spent.pop("info", None)
    return {name: calls for name, calls in spent.items() if calls}


@pytest.fixture
async def private(make_stack: Callable[..., Stack]) -> AsyncIterator[tuple[Stack, Redis]]:
    # No look for data loss (a SET and a GET a second) among the commands a page is
    # counted by.
    stack = make_stack(data_loss_check=3600)
    stack.start_web()
    client = Redis.from_url(stack.settings.redis_url)
    yield stack, client
    await client.aclose()


async def add_jobs(settings: Settings, user: str, count: int) -> None:
    """`count` jobs for `user` through the enqueue path, in pipelines of 500."""
    redis = create_redis(settings)
    store = JobStore(redis, result_expires=settings.result_expires, queue="hoard")
    for start in range(0, count, 500):
        batch = min(500, count - start)
        await asyncio.gather(*(store.enqueue("welcome_email", user, {}) for _ in range(batch)))
    await redis.aclose()


async def test_page_cost_does_not_grow_with_the_users_jobs(
    private: tuple[Stack, Redis],
) -> None:
    stack, client = private
    assert stack.web is not None
    user = new_user()
    await add_jobs(stack.settings, user, 30)
    await page(stack.web, user)  # the web process's connections are open from here on
    small = await cost_of(stack.web, client, user, first=20)
    small_filtered = await cost_of(stack.web, client, user, first=20, state="SUCCESS")

    await add_jobs(stack.settings, user, 3000)
    big = await cost_of(stack.web, client, user, first=20)
    big_filtered = await cost_of(stack.web, client, user, first=20, state="SUCCESS")
    await add_jobs(stack.settings, user, 3000)
    bigger = await cost_of(stack.web, client, user, first=20)
    bigger_filtered = await cost_of(stack.web, client, user, first=20, state="SUCCESS")

    # One round trip a page, and the same work inside it however many jobs there are.
    assert small["eval"] == 1 and small == big == bigger, (small, big, bigger)
    assert small["hmget"] == 21  # the page and one more, to tell whether there is a next
    # A filtered page with nothing to find reads up to its budget, then stops.
    assert small_filtered["hmget"] == 30
    assert big_filtered == bigger_filtered, (big_filtered, bigger_filtered)
    assert big_filtered["eval"] == 1 and big_filtered["hmget"] == SCAN_BUDGET
    listed = await page(stack.web, user, first=20, state="SUCCESS")
    assert listed["edges"] == [] and listed["pageInfo"]["hasNextPage"] is True
    # Whose cursor goes on from where the budget ran out.
    after = listed["pageInfo"]["endCursor"]
    assert (await page(stack.web, user, first=20, after=after))["edges"]


async def test_lost_pubsub_ends_waits_and_feeds_as_service_unavailable(
    own_redis: RedisServer,
    make_settings: Callable[..., Settings],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = make_settings(redis_url=own_redis.url, redis_timeout=0.5)
    web = start_web(settings, tmp_path_factory.mktemp("logs") / "lost-web.log")
    try:
        user = new_user()
        job = await email_job(web, user, delay=60)  # no worker here: it stays PENDING
        feed = Feed(web, user)
        async with feed:
            await feed.listening(lambda: email_job(web, user, delay=60))
            waiting = asyncio.create_task(wait(web, user, job["id"], timeout=60))
            await asyncio.sleep(0.5)  # the wait is watching the job's channel

            own_redis.stop()

            with pytest.raises(TransportQueryError) as raised:
                await asyncio.wait_for(waiting, 10)
            assert raised.value.errors
            assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
            await asyncio.wait_for(feed.ended.wait(), 10)
        assert feed.error is not None and "SERVICE_UNAVAILABLE" in str(feed.error)
    finally:
        web.process.stop()


async def test_feeds_and_waits_count_against_the_subscription_cap(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(max_subscriptions_per_user=1)
    web = stack.start_web()
    user = new_user()
    job = await email_job(web, user, delay=60)  # no worker here: it stays PENDING
    async with Feed(web, user) as first:
        await first.listening(lambda: email_job(web, user, delay=60))
        second = Feed(web, user)
        async with second:
            await asyncio.wait_for(second.ended.wait(), 10)
        assert second.error is not None and "RATE_LIMITED" in str(second.error.errors)
        assert await refused(web, user, WAIT, id=job["id"], timeout=1) == "RATE_LIMITED"
        # Another user is not held back.
        assert await wait(web, new_user(), job["id"], timeout=1) is None
    # The feed's place is given back once the server has seen its WebSocket close.
    async with asyncio.timeout(10):
        while True:
            try:
                current = await wait(web, user, job["id"], timeout=1)
                break
            except TransportQueryError as exc:
                codes = [error["extensions"]["code"] for error in exc.errors or []]
            assert codes == ["RATE_LIMITED"]
            await asyncio.sleep(0.1)
    assert current["state"] == "PENDING"


async def test_feed_pushes_a_cancellation(web: WebServer) -> None:
    user = new_user()
    async with Feed(web, user) as feed:
        await feed.listening(lambda: email_job(web, user, delay=60))
        job = await email_job(web, user, delay=60)
        cancelled = await send(web, user, CANCEL_JOB, id=job["id"])
        await feed.until(lambda events: "REVOKED" in feed.of(job["id"]))

    assert cancelled["cancelJob"]["state"] == "REVOKED"
    assert feed.of(job["id"]) == ["PENDING", "REVOKED"]
