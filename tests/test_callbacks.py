"""callbackUrl end to end: real Redis, workers, SMTP, GraphQL over HTTP, and a small HTTP
receiver on loopback that fails, hangs or redirects."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from gql.transport.exceptions import TransportQueryError
from redis import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.jobs import CALLBACK_QUEUE
from jobql.redis_server import free_port
from jobql.tasks.purge import purge_queue
from tests.conftest import token
from tests.graphql_clients import execute, http_client
from tests.support import settings_env

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.support import Stack, WebServer

CALLBACK_SECRET = "callback-secret-that-is-long-enough-0123456789"
USER = "hooked"
SEND = """
mutation Send($email: String!, $url: String, $delaySeconds: Int! = 0, $key: String) {
    sendWelcomeEmail(email: $email, username: "Hook", delaySeconds: $delaySeconds,
                     idempotencyKey: $key, callbackUrl: $url) { id state }
}"""
JOB = """
query Job($id: ID!) {
    job(id: $id) {
        id kind state done progress createdAt startedAt finishedAt attempts expiresAt
        result {
            __typename
            ... on EmailResult { recipient messageId }
            ... on AvatarResult { url width height sizeBytes format }
        }
        error { code message retryable }
        callback { url attempts deliveredAt lastError }
    }
}"""
CANCEL = "mutation Cancel($id: ID!) { cancelJob(id: $id) { id state } }"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on loopback. `/flaky` answers 500 to its first POST and 204 after;
    `/silent` never answers (it holds the connection until the server stops); `/redirect`
    answers 302 to `/ok`; `/ok` answers 200."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def serve(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.partition("?")[0]
                with receiver.lock:
                    receiver.received.append(
                        Received(path, dict(self.headers.items()), body, time.monotonic())
                    )
                    earlier = sum(1 for r in receiver.received if r.path == path)
                if path == "/silent":
                    receiver.stopping.wait()
                    return
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{receiver.base()}/ok")
                elif path == "/flaky" and earlier == 1:
                    self.send_response(500)
                else:
                    self.send_response(204 if path == "/flaky" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = found.serve()
    yield found
    found.stopping.set()
    server.shutdown()
    server.server_close()


def callback_settings(receiver: Receiver, **overrides: object) -> dict[str, object]:
    return {
        "callback_allowed_hosts": f"http://127.0.0.1:{receiver.port}, hooks.example.com",
        "callback_secret": CALLBACK_SECRET,
        "callback_timeout": 2.0,
        "callback_retry_backoff": 0.5,
        "callback_max_attempts": 3,
        **overrides,
    }


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """What the README shows a receiver doing."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"])


def address(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


async def send(web: WebServer, to: str, url: str | None, **variables: Any) -> dict[str, Any]:
    client = http_client(web, token(USER, SCOPE_SEND_EMAIL))
    return dict((await execute(client, SEND, email=to, url=url, **variables))["sendWelcomeEmail"])


async def get(web: WebServer, job_id: str) -> dict[str, Any]:
    return dict((await execute(http_client(web, token(USER)), JOB, id=job_id))["job"])


async def until(check: Callable[[], Any], within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, "waited too long"
        await asyncio.sleep(0.05)
    return found


async def until_done(web: WebServer, job_id: str, within: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        while not (job := await get(web, job_id))["done"]:
            await asyncio.sleep(0.05)
        return job

    return await asyncio.wait_for(done(), within)


async def test_a_failed_delivery_is_tried_again_with_the_same_id_and_a_valid_signature(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    stack.add_worker(concurrency=2)
    web = stack.start_web()
    url = f"{receiver.base()}/flaky?job=1"
    job = await send(web, address("flaky"), url)

    posts = await until(lambda: len(receiver.to("/flaky")) >= 2 and receiver.to("/flaky"))
    answer = await until_done(web, job["id"])
    final = await get(web, job["id"])

    assert len({post.headers["Jobql-Delivery"] for post in posts}) == 1
    assert uuid.UUID(posts[0].headers["Jobql-Delivery"])
    for post in posts:
        assert post.headers["Content-Type"] == "application/json"
        assert verify(CALLBACK_SECRET, post.headers["Jobql-Signature"], post.body)
        assert not verify("another-secret" * 3, post.headers["Jobql-Signature"], post.body)
        assert not verify(CALLBACK_SECRET, post.headers["Jobql-Signature"], post.body + b" ")
    # The body is the job as the API answers it.
    sent = json.loads(posts[-1].body)["job"]
    expected = {name: value for name, value in answer.items() if name != "callback"}
    assert sent == expected
    assert sent["state"] == "SUCCESS"
    assert sent["result"]["__typename"] == "EmailResult"
    # Backed off between the two.
    assert posts[1].at > posts[0].at
    assert final["callback"]["url"] == url
    assert final["callback"]["attempts"] == 2
    assert final["callback"]["deliveredAt"] is not None
    assert final["callback"]["lastError"] is None
    await asyncio.sleep(1.5)  # longer than the next backoff: nothing more is sent
    assert len(receiver.to("/flaky")) == 2


async def test_a_redirect_is_not_followed_and_delivery_gives_up_after_the_last_attempt(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    stack.add_worker(concurrency=2)
    web = stack.start_web()
    job = await send(web, address("redirected"), f"{receiver.base()}/redirect")

    await until(lambda: len(receiver.to("/redirect")) >= 3)

    async def given_up() -> dict[str, Any]:
        while (callback := (await get(web, job["id"]))["callback"])["attempts"] < 3:
            await asyncio.sleep(0.05)
        return dict(callback)

    callback = await asyncio.wait_for(given_up(), 30)
    assert callback["deliveredAt"] is None
    assert "302" in callback["lastError"] and "redirect" in callback["lastError"]
    await asyncio.sleep(3)  # twice the last backoff: no fourth attempt
    assert len(receiver.to("/redirect")) == 3
    assert receiver.to("/ok") == []
    posts = receiver.to("/redirect")
    assert len({post.headers["Jobql-Delivery"] for post in posts}) == 1


async def test_a_receiver_that_never_answers_holds_up_no_job(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    """Deliveries on workers of their own (`-Q jobql-callbacks`), as the README advises:
    jobs end, and other jobs run, while a delivery waits for its timeout."""
    stack = make_stack(**callback_settings(receiver, callback_timeout=30.0))
    stack.add_worker(concurrency=1, extra=["-Q", "celery"])
    stack.add_worker(concurrency=1, extra=["-Q", CALLBACK_QUEUE])
    web = stack.start_web()
    # A normal job, measured in the same test.
    started = time.monotonic()
    await until_done(web, (await send(web, address("plain"), None))["id"])
    normal = time.monotonic() - started

    started = time.monotonic()
    hooked = await send(web, address("silent"), f"{receiver.base()}/silent")
    answer = await until_done(web, hooked["id"])
    with_callback = time.monotonic() - started
    await until(lambda: receiver.to("/silent"))
    # While the delivery waits on the silent receiver, another job runs.
    started = time.monotonic()
    other = await until_done(web, (await send(web, address("after"), None))["id"])
    meanwhile = time.monotonic() - started

    assert answer["state"] == "SUCCESS" and other["state"] == "SUCCESS"
    # The delivery waits 30 s for an answer; the jobs took a small share of that, and
    # about as long as the normal one.
    assert with_callback < max(10 * normal, 5.0) < 30
    assert meanwhile < max(10 * normal, 5.0) < 30
    callback = (await get(web, hooked["id"]))["callback"]
    assert callback["deliveredAt"] is None
    assert callback["attempts"] == 0  # still waiting on its first POST


async def test_a_job_cancelled_while_queued_calls_back_revoked(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    stack.add_worker(concurrency=2)
    web = stack.start_web()
    job = await send(web, address("cancelled"), f"{receiver.base()}/ok", delaySeconds=20)
    await execute(http_client(web, token(USER)), CANCEL, id=job["id"])

    [post] = await until(lambda: receiver.to("/ok"))

    sent = json.loads(post.body)["job"]
    assert sent["id"] == job["id"]
    assert sent["state"] == "REVOKED"
    assert sent["error"]["code"] == "CANCELLED"
    assert verify(CALLBACK_SECRET, post.headers["Jobql-Signature"], post.body)


HOSTILE_URLS = [
    "",
    "ftp://hooks.example.com/x",
    "file:///etc/passwd",
    "gopher://hooks.example.com:70/x",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "//hooks.example.com/x",
    "hooks.example.com/x",
    "https:hooks.example.com/x",
    "http://hooks.example.com/x",  # listed for https only
    "https://evil.example.com/x",
    "https://hooks.example.com.evil.example.com/x",
    "https://evilhooks.example.com/x",
    "https://hooks.example.com./x",
    "https://hooks.example.com:8443/x",  # a port not listed
    "https://hooks.example.com:0/x",
    "https://hooks.example.com:99999/x",
    "https://hooks.example.com:-1/x",
    "https://hooks.example.com:443abc/x",
    "https://user:pass@hooks.example.com/x",
    "https://hooks.example.com@169.254.169.254/x",
    "https://hooks.example.com:443@127.0.0.1/x",
    "https://hooks.example.com\\@127.0.0.1/x",
    "https://127.0.0.1\\@hooks.example.com/x",
    "https://hooks.example.com#@127.0.0.1/",
    "https://hooks.example.com/x#fragment",
    "https://hooks.example.com%2eevil.example.com/x",
    "https://hooks%2eexample.com/x",
    "https://hooks.example.com /x",
    "https://hooks.example.com\t/x",
    "https://hooks.example.com/x\r\nHost: evil",
    "https://hooks.example.com/\x00",
    # Fullwidth letters, which IDNA folds to ASCII.
    "https://\uff48\uff4f\uff4f\uff4b\uff53.example.com/x",
    "https://hooks\u3002example\u3002com/x",  # ideographic full stops
    "https://xn--hooks-example.com/x",
    "https://localhost/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/x",
    "https://0/x",
    # The receiver's address, listed for http on its port, in other spellings.
    "http://127.1:{port}/x",
    "http://2130706433:{port}/x",
    "http://0x7f000001:{port}/x",
    "http://0177.0.0.1:{port}/x",
    "http://127.0.0.01:{port}/x",
    "http://[::ffff:127.0.0.1]:{port}/x",
    "http://localhost:{port}/x",
    "http://127.0.0.1/x",  # its host, without the port listed
    "http://127.0.0.1:{other}/x",
    "https://127.0.0.1:{port}/x",  # listed for http; https is another endpoint
    "https://hooks.example.com/" + "a" * 2100,
]


async def test_every_hostile_callback_url_is_bad_user_input_and_queues_nothing(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    web = stack.start_web()
    client = http_client(web, token(USER, SCOPE_SEND_EMAIL))
    answers = {}
    for template in HOSTILE_URLS:
        url = template.replace("{port}", str(receiver.port)).replace("{other}", str(free_port()))
        try:
            await execute(client, SEND, email=address("hostile"), url=url)
            answers[url] = "accepted"
        except TransportQueryError as exc:
            [error] = exc.errors or [{}]
            extensions = error.get("extensions", {})
            answers[url] = (
                f"{extensions.get('code')} {extensions.get('field')} {error.get('message')}"
            )
    accepted = {
        url: answer
        for url, answer in answers.items()
        if not answer.startswith("BAD_USER_INPUT callbackUrl ")
    }
    assert accepted == {}
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert redis.llen("celery") == 0
        assert list(redis.scan_iter("jobql:callback:*")) == []
    # The listed spellings are accepted.
    for url in (
        f"{receiver.base()}/x",
        "https://hooks.example.com/x",
        "HTTPS://Hooks.Example.com:443/x",
    ):
        job = await send(web, address("fine"), url)
        assert (await get(web, job["id"]))["callback"] == {
            "url": url,
            "attempts": 0,
            "deliveredAt": None,
            "lastError": None,
        }


async def test_an_idempotency_key_with_another_callback_url_is_reused(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    web = stack.start_web()
    to = address("idempotent")
    first = await send(web, to, f"{receiver.base()}/a", key="k-1")
    again = await send(web, to, f"{receiver.base()}/a", key="k-1")
    assert again["id"] == first["id"]
    with pytest.raises(TransportQueryError) as refused:
        await send(web, to, f"{receiver.base()}/b", key="k-1")
    assert refused.value.errors is not None
    assert refused.value.errors[0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_callbacks_are_off_by_default(web: WebServer, worker: object) -> None:
    with pytest.raises(TransportQueryError) as refused:
        await send(web, address("off"), "https://hooks.example.com/x")
    assert refused.value.errors is not None
    assert refused.value.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "not enabled" in refused.value.errors[0]["message"]
    job = await send(web, address("none"), None)
    assert (await until_done(web, job["id"]))["callback"] is None


@pytest.mark.parametrize(
    ("hosts", "secret", "says"),
    [
        ("hooks.example.com", None, "JOBQL_CALLBACK_SECRET"),
        ("hooks.example.com", "short", "at least 32 bytes"),
        ("hooks.example.com/path", CALLBACK_SECRET, "is not [http://|https://]host[:port]"),
        ("ftp://hooks.example.com", CALLBACK_SECRET, "is not [http://|https://]host[:port]"),
        ("user@hooks.example.com", CALLBACK_SECRET, "is not [http://|https://]host[:port]"),
    ],
)
def test_web_and_worker_refuse_to_start_with_bad_callback_settings(
    make_settings: Callable[..., Any], hosts: str, secret: str | None, says: str
) -> None:
    env = settings_env(make_settings())
    env["JOBQL_CALLBACK_ALLOWED_HOSTS"] = hosts
    if secret is not None:
        env["JOBQL_CALLBACK_SECRET"] = secret
    for command in ("web", "worker"):
        done = subprocess.run(
            [sys.executable, "-m", "jobql", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert says in done.stderr
        assert "Traceback" not in done.stderr
        if secret:
            assert secret not in done.stderr


async def test_a_job_past_its_queue_deadline_calls_back_expired(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver), queue_ttl=1)
    web = stack.start_web()  # no worker: nothing takes the job in time
    job = await send(web, address("expired"), f"{receiver.base()}/ok")
    await asyncio.sleep(1.5)
    stack.add_worker(concurrency=1)

    [post] = await until(lambda: receiver.to("/ok"))

    sent = json.loads(post.body)["job"]
    assert sent["id"] == job["id"]
    assert sent["state"] == "REVOKED"
    assert sent["error"]["code"] == "EXPIRED"
    assert (await get(web, job["id"]))["callback"]["deliveredAt"] is not None


async def test_a_job_purged_from_the_queue_calls_back_revoked(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(**callback_settings(receiver))
    web = stack.start_web()  # no worker: the job waits on the queue
    job = await send(web, address("purged"), f"{receiver.base()}/ok")
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert purge_queue(redis, stack.settings.result_expires).revoked == 1
    stack.add_worker(concurrency=1)

    [post] = await until(lambda: receiver.to("/ok"))

    sent = json.loads(post.body)["job"]
    assert (sent["id"], sent["state"]) == (job["id"], "REVOKED")
