"""The terminal client (`jobql upload-avatar`, `send-welcome`, `jobs get`), run as a user runs
it: the real command in a subprocess, against the suite's running server and worker."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.redis_server import free_port
from tests.conftest import token
from tests.images import phone_photo
from tests.support import REJECTING_DOMAIN

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.support import SmtpServer, Stack, WebServer

pytestmark = pytest.mark.usefixtures("worker")

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
JOB_LINE = re.compile(r"^job (?P<id>[0-9a-f-]{36}) (?P<state>[A-Z]+)$", re.MULTILINE)
JOB_JSON_FIELDS = {
    "id",
    "kind",
    "state",
    "done",
    "progress",
    "createdAt",
    "startedAt",
    "finishedAt",
    "result",
    "error",
}


def client_env(**variables: str) -> dict[str, str]:
    """This process's environment without any JOBQL_ variable, plus `variables`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBQL_")}
    return {**env, **variables}


def jobql(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobql", *args],
        env=client_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def server(web: WebServer, user: str, *scopes: str) -> list[str]:
    return ["--url", web.http_url, "--token", token(user, *scopes)]


def job_lines(stdout: str) -> list[tuple[str, str]]:
    return [(m["id"], m["state"]) for m in JOB_LINE.finditer(stdout)]


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex}@example.com"


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(phone_photo())
    return path


def test_upload_avatar_waits_and_prints_the_avatar_url(web: WebServer, photo: Path) -> None:
    done = jobql("upload-avatar", str(photo), "--wait", *server(web, "cli-alice"))

    assert done.returncode == 0, done.stderr
    no_traceback(done)
    lines = job_lines(done.stdout)
    assert lines[0][1] == "PENDING", done.stdout
    assert lines[-1] == (lines[0][0], "SUCCESS"), done.stdout
    match = re.search(r"^avatar: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    url = match[1]
    assert url.startswith(web.url("/media/avatars/")), url
    assert "256x256 JPEG" in done.stdout

    response = httpx.get(url)
    assert response.status_code == 200
    avatar = Image.open(io.BytesIO(response.content))
    assert avatar.size == (256, 256)
    assert avatar.format == "JPEG"
    assert f"{len(response.content)} bytes" in done.stdout


def test_upload_avatar_passes_size_and_format(web: WebServer, photo: Path) -> None:
    done = jobql(
        "upload-avatar",
        str(photo),
        "--size",
        "64",
        "--format",
        "webp",
        "--wait",
        *server(web, "cli-alice"),
    )

    assert done.returncode == 0, done.stderr
    assert "64x64 WEBP" in done.stdout
    url = re.search(r"^avatar: (\S+)$", done.stdout, re.MULTILINE)
    assert url, done.stdout
    avatar = Image.open(io.BytesIO(httpx.get(url[1]).content))
    assert (avatar.size, avatar.format) == ((64, 64), "WEBP")


def test_upload_avatar_without_wait_prints_the_accepted_job(web: WebServer, photo: Path) -> None:
    done = jobql("upload-avatar", str(photo), *server(web, "cli-alice"))

    assert done.returncode == 0, done.stderr
    [(job_id, state)] = job_lines(done.stdout)
    assert state == "PENDING"
    shown = jobql("jobs", "get", job_id, *server(web, "cli-alice"))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["kind"] == "AVATAR"


def test_upload_of_a_file_that_is_not_an_image_is_bad_user_input(
    web: WebServer, tmp_path: Path
) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all\n")
    done = jobql("upload-avatar", str(text), "--wait", *server(web, "cli-alice"))

    assert done.returncode == 2
    assert "BAD_USER_INPUT" in done.stderr
    assert done.stdout == ""
    no_traceback(done)


def test_upload_of_a_missing_file_is_a_usage_error(web: WebServer, tmp_path: Path) -> None:
    done = jobql("upload-avatar", str(tmp_path / "nope.jpg"), *server(web, "cli-alice"))
    assert done.returncode == 2
    assert "nope.jpg" in done.stderr
    no_traceback(done)


def test_send_welcome_waits_and_prints_the_message_id(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    address = unique_email()
    done = jobql(
        "send-welcome", address, "Ann", "--wait", *server(web, "cli-backend", SCOPE_SEND_EMAIL)
    )

    assert done.returncode == 0, done.stderr
    no_traceback(done)
    assert job_lines(done.stdout)[-1][1] == "SUCCESS"
    [received] = smtp_server.handler.to(address)
    assert f"message-id: {received['Message-ID']}" in done.stdout.splitlines()
    assert f"recipient: {address}" in done.stdout.splitlines()


def test_send_welcome_that_fails_exits_1_with_the_error_code(web: WebServer) -> None:
    address = f"user-{uuid.uuid4().hex}@{REJECTING_DOMAIN}"
    done = jobql(
        "send-welcome", address, "Ann", "--wait", *server(web, "cli-backend", SCOPE_SEND_EMAIL)
    )

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert job_lines(done.stdout)[-1][1] == "FAILURE"
    assert "SMTP_REJECTED" in done.stderr
    no_traceback(done)


def test_bad_email_is_bad_user_input(web: WebServer) -> None:
    done = jobql(
        "send-welcome", "not-an-email", "Ann", *server(web, "cli-backend", SCOPE_SEND_EMAIL)
    )

    assert done.returncode == 2
    assert "BAD_USER_INPUT" in done.stderr
    assert done.stdout == ""
    no_traceback(done)


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ([], "UNAUTHENTICATED"),
        (["--token", "not.a.token"], "UNAUTHENTICATED"),
        (["--token", token("cli-nobody")], "FORBIDDEN"),  # no email:send scope
    ],
    ids=["no-token", "invalid-token", "missing-scope"],
)
def test_refused_credentials_exit_2_with_the_code(
    web: WebServer, credentials: list[str], code: str
) -> None:
    done = jobql("send-welcome", unique_email(), "Ann", "--url", web.http_url, *credentials)

    assert done.returncode == 2
    assert f": {code}: " in done.stderr
    no_traceback(done)


def test_no_token_is_unauthenticated_for_every_command(web: WebServer, photo: Path) -> None:
    for args in (["upload-avatar", str(photo), "--wait"], ["jobs", "get", UNKNOWN_ID]):
        done = jobql(*args, "--url", web.http_url)
        assert done.returncode == 2, args
        assert "UNAUTHENTICATED" in done.stderr, args
        no_traceback(done)


def test_jobs_get_prints_the_job_as_json(web: WebServer) -> None:
    queued = jobql(
        "send-welcome", unique_email(), "Ann", *server(web, "cli-backend", SCOPE_SEND_EMAIL)
    )
    assert queued.returncode == 0, queued.stderr
    [(job_id, _)] = job_lines(queued.stdout)

    done = jobql("jobs", "get", job_id, *server(web, "cli-backend"))

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert set(job) == JOB_JSON_FIELDS
    assert job["id"] == job_id
    assert job["kind"] == "WELCOME_EMAIL"
    assert job["state"] in {"PENDING", "STARTED", "PROGRESS", "SUCCESS"}


def test_jobs_get_of_an_unknown_or_someone_elses_job_exits_1(web: WebServer) -> None:
    queued = jobql(
        "send-welcome", unique_email(), "Ann", *server(web, "cli-backend", SCOPE_SEND_EMAIL)
    )
    [(job_id, _)] = job_lines(queued.stdout)

    for user, wanted in (("cli-backend", UNKNOWN_ID), ("cli-mallory", job_id)):
        done = jobql("jobs", "get", wanted, *server(web, user))
        assert done.returncode == 1, (user, done.stdout, done.stderr)
        assert done.stdout == ""
        assert wanted in done.stderr
        no_traceback(done)


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "get", UNKNOWN_ID],
        ["send-welcome", "ann@example.com", "Ann", "--wait"],
        ["upload-avatar", "PHOTO", "--wait"],
    ],
    ids=["jobs-get", "send-welcome", "upload-avatar"],
)
def test_unreachable_server_exits_3_quickly(photo: Path, args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/graphql"
    args = [str(photo) if arg == "PHOTO" else arg for arg in args]
    started = time.monotonic()
    done = jobql(*args, "--url", url, "--token", token("cli-alice", SCOPE_SEND_EMAIL))

    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 10
    assert "cannot connect" in done.stderr
    no_traceback(done)


def test_service_unavailable_exits_3(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    web = stack.start_web()
    stack.redis.stop()

    started = time.monotonic()
    done = jobql("jobs", "get", UNKNOWN_ID, *server(web, "cli-alice"))

    assert done.returncode == 3, done.stderr
    assert "SERVICE_UNAVAILABLE" in done.stderr
    assert time.monotonic() - started < 15
    no_traceback(done)


def test_url_and_token_from_the_environment(web: WebServer) -> None:
    env = client_env(JOBQL_URL=web.http_url, JOBQL_TOKEN=token("cli-env", SCOPE_SEND_EMAIL))
    address = unique_email()

    done = jobql("send-welcome", address, "Env", "--wait", env=env)

    assert done.returncode == 0, done.stderr
    assert job_lines(done.stdout)[-1][1] == "SUCCESS"
    assert f"recipient: {address}" in done.stdout
    [(job_id, _), *_] = job_lines(done.stdout)
    shown = jobql("jobs", "get", job_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"]["recipient"] == address


def test_flags_win_over_the_environment(web: WebServer) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/graphql"
    env = client_env(JOBQL_URL=unreachable, JOBQL_TOKEN="not.a.token")

    done = jobql("jobs", "get", UNKNOWN_ID, *server(web, "cli-env"), env=env)

    assert done.returncode == 1, done.stderr  # reached the server, with a valid token
    assert "no job" in done.stderr


async def test_follow_with_a_refused_token_is_unauthenticated(web: WebServer) -> None:
    from jobql.client import ApiError, JobqlClient

    async with JobqlClient(web.http_url, "not.a.token") as client:
        with pytest.raises(ApiError) as refused:
            await anext(client.follow(UNKNOWN_ID))
    assert refused.value.code == "UNAUTHENTICATED"


async def test_follow_opens_a_dropped_subscription_again() -> None:
    """A WebSocket that drops mid-job is opened again; the job is followed to its end."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.typing import Subprotocol

    from jobql.client import JobqlClient

    connections: list[dict[str, object]] = []

    async def handler(websocket: ServerConnection) -> None:
        init = json.loads(await websocket.recv())
        await websocket.send(json.dumps({"type": "connection_ack"}))
        subscribe = json.loads(await websocket.recv())
        connections.append({"init": init, "subscribe": subscribe})
        state, done = ("PROGRESS", False) if len(connections) == 1 else ("SUCCESS", True)
        job = {"id": UNKNOWN_ID, "state": state, "done": done, "progress": 50}
        next_message = {"id": subscribe["id"], "type": "next", "payload": {"data": {"job": job}}}
        await websocket.send(json.dumps(next_message))
        if done:
            await websocket.send(json.dumps({"id": subscribe["id"], "type": "complete"}))
            await websocket.wait_closed()
        else:
            await websocket.close(code=1011)  # the server went away mid-job

    protocols = [Subprotocol("graphql-transport-ws")]
    async with serve(handler, "127.0.0.1", 0, subprotocols=protocols) as ws:
        port = ws.sockets[0].getsockname()[1]
        async with JobqlClient(f"http://127.0.0.1:{port}/graphql", "the-token") as client:
            states = [job["state"] async for job in client.follow(UNKNOWN_ID)]

    assert states == ["PROGRESS", "SUCCESS"]
    assert len(connections) == 2
    assert connections[0]["init"] == {
        "type": "connection_init",
        "payload": {"Authorization": "Bearer the-token"},
    }
    subscribe = connections[1]["subscribe"]
    assert isinstance(subscribe, dict) and subscribe["type"] == "subscribe"
    assert subscribe["payload"]["variables"] == {"id": UNKNOWN_ID}
    assert subscribe["payload"]["query"].startswith("subscription FollowJob")


async def test_follow_waits_for_complete_before_hanging_up() -> None:
    """The last `next` is followed by the server's `complete`: the client closes only after
    it (closing on the `next` raced the server's end of the operation)."""
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.typing import Subprotocol

    from jobql.client import JobqlClient

    open_when_complete_was_sent: list[bool] = []

    async def handler(websocket: ServerConnection) -> None:
        await websocket.recv()
        await websocket.send(json.dumps({"type": "connection_ack"}))
        subscribe = json.loads(await websocket.recv())
        job = {"id": UNKNOWN_ID, "state": "SUCCESS", "done": True}
        await websocket.send(
            json.dumps({"id": subscribe["id"], "type": "next", "payload": {"data": {"job": job}}})
        )
        await asyncio.sleep(0.3)  # a client that does not wait is gone by now
        open_when_complete_was_sent.append(websocket.state.name == "OPEN")
        await websocket.send(json.dumps({"id": subscribe["id"], "type": "complete"}))
        await websocket.wait_closed()

    protocols = [Subprotocol("graphql-transport-ws")]
    async with serve(handler, "127.0.0.1", 0, subprotocols=protocols) as ws:
        port = ws.sockets[0].getsockname()[1]
        async with JobqlClient(f"http://127.0.0.1:{port}/graphql", "the-token") as client:
            async for job in client.follow(UNKNOWN_ID):
                if job["done"]:
                    break  # as `--wait` does
        await asyncio.sleep(0.1)

    assert open_when_complete_was_sent == [True]


# --- jobs list, cancel, wait ----------------------------------------------------------------------


def delayed_email(web: WebServer, user: str, seconds: int = 600) -> str:
    """A welcome email queued to go in `seconds`: a job that stays queued."""
    document = (
        'mutation($email: String!) { sendWelcomeEmail(email: $email, username: "Ann", '
        f"delaySeconds: {seconds}) {{ id }} }}"
    )
    answer = httpx.post(
        web.http_url,
        json={"query": document, "variables": {"email": unique_email()}},
        headers={"Authorization": f"Bearer {token(user, SCOPE_SEND_EMAIL)}"},
    )
    return str(answer.json()["data"]["sendWelcomeEmail"]["id"])


def list_lines(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_jobs_list_prints_the_callers_jobs_newest_first(web: WebServer) -> None:
    user = f"cli-list-{uuid.uuid4().hex[:6]}"
    sent = []
    for _ in range(3):
        queued = jobql("send-welcome", unique_email(), "Ann", *server(web, user, SCOPE_SEND_EMAIL))
        [(job_id, _)] = job_lines(queued.stdout)
        sent.append(job_id)
    queued_late = delayed_email(web, user)
    jobql("send-welcome", unique_email(), "Bob", *server(web, "cli-someone-else", SCOPE_SEND_EMAIL))

    everything = jobql("jobs", "list", *server(web, user))
    assert everything.returncode == 0, everything.stderr
    rows = list_lines(everything.stdout)
    assert [row[0] for row in rows] == [queued_late, *reversed(sent)]
    assert {row[1] for row in rows} == {"WELCOME_EMAIL"}

    two = jobql("jobs", "list", "--limit", "2", *server(web, user))
    assert [row[0] for row in list_lines(two.stdout)] == [queued_late, sent[-1]]
    pending = jobql(
        "jobs", "list", "--state", "pending", "--kind", "welcome_email", *server(web, user)
    )
    assert [row[0] for row in list_lines(pending.stdout)] == [queued_late]
    assert jobql("jobs", "list", "--kind", "AVATAR", *server(web, user)).stdout == ""


def test_jobs_list_pages_past_a_hundred(web: WebServer) -> None:
    user = f"cli-many-{uuid.uuid4().hex[:6]}"
    made = [delayed_email(web, user) for _ in range(103)]
    done = jobql("jobs", "list", "--limit", "500", *server(web, user))
    assert done.returncode == 0, done.stderr
    assert sorted(row[0] for row in list_lines(done.stdout)) == sorted(made)


@pytest.mark.parametrize(
    "args",
    [["list", "--limit", "0"], ["list", "--state", "LOST"], ["list", "--kind", "FAX"],
     ["wait", UNKNOWN_ID, "--timeout", "61"], ["wait", UNKNOWN_ID, "--timeout", "0"],
     ["cancel"], ["wait"], ["retry"]],
)  # fmt: skip
def test_jobs_commands_with_bad_arguments_exit_2(web: WebServer, args: list[str]) -> None:
    done = jobql("jobs", *args, *server(web, "cli-backend"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "usage:" in done.stderr
    no_traceback(done)


def test_jobs_cancel_ends_a_queued_job_revoked(web: WebServer) -> None:
    job_id = delayed_email(web, "cli-cancel")

    done = jobql("jobs", "cancel", job_id, *server(web, "cli-cancel"))

    assert done.returncode == 0, done.stderr
    assert job_lines(done.stdout) == [(job_id, "REVOKED")]
    again = jobql("jobs", "cancel", job_id, *server(web, "cli-cancel"))
    assert (again.returncode, job_lines(again.stdout)) == (0, [(job_id, "REVOKED")])


def test_jobs_cancel_of_a_finished_unknown_or_someone_elses_job_exits_1(web: WebServer) -> None:
    sent = jobql(
        "send-welcome",
        unique_email(),
        "Ann",
        "--wait",
        *server(web, "cli-cancel", SCOPE_SEND_EMAIL),
    )
    [(finished, _), *_] = job_lines(sent.stdout)
    queued = delayed_email(web, "cli-cancel")

    done = jobql("jobs", "cancel", finished, *server(web, "cli-cancel"))
    assert (done.returncode, job_lines(done.stdout)) == (1, [(finished, "SUCCESS")])
    for user, wanted in (("cli-cancel", UNKNOWN_ID), ("cli-mallory", queued)):
        refused = jobql("jobs", "cancel", wanted, *server(web, user))
        assert refused.returncode == 1, refused.stderr
        assert wanted in refused.stderr
        no_traceback(refused)
    assert jobql("jobs", "get", queued, *server(web, "cli-cancel")).returncode == 0
    assert (
        json.loads(jobql("jobs", "get", queued, *server(web, "cli-cancel")).stdout)["state"]
        == "PENDING"
    )


def test_jobs_retry_queues_a_cancelled_job_again_and_waits_for_it(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    address = unique_email()
    document = (
        'mutation($email: String!) { sendWelcomeEmail(email: $email, username: "Ann", '
        "delaySeconds: 600) { id } }"
    )
    answer = httpx.post(
        web.http_url,
        json={"query": document, "variables": {"email": address}},
        headers={"Authorization": f"Bearer {token('cli-retry', SCOPE_SEND_EMAIL)}"},
    )
    job_id = str(answer.json()["data"]["sendWelcomeEmail"]["id"])
    assert jobql("jobs", "cancel", job_id, *server(web, "cli-retry")).returncode == 0

    done = jobql("jobs", "retry", job_id, "--wait", *server(web, "cli-retry"))

    assert done.returncode == 0, done.stderr
    no_traceback(done)
    lines = job_lines(done.stdout)
    retry_id = lines[0][0]
    assert lines == [(retry_id, "PENDING"), (retry_id, "SUCCESS")], done.stdout
    assert retry_id != job_id
    assert len(smtp_server.handler.to(address)) == 1
    retry = json.loads(jobql("jobs", "get", retry_id, *server(web, "cli-retry")).stdout)
    assert retry["state"] == "SUCCESS"


def test_jobs_retry_of_what_cannot_be_retried_exits_1_or_2(web: WebServer) -> None:
    queued = delayed_email(web, "cli-retry")
    for user, wanted in (("cli-retry", UNKNOWN_ID), ("cli-mallory", queued)):
        missing = jobql("jobs", "retry", wanted, *server(web, user))
        assert missing.returncode == 1, missing.stderr
        assert wanted in missing.stderr
        no_traceback(missing)

    running = jobql("jobs", "retry", queued, *server(web, "cli-retry"))

    assert running.returncode == 2, running.stderr
    assert "BAD_USER_INPUT" in running.stderr and "has not ended" in running.stderr
    no_traceback(running)


def test_jobs_wait_prints_the_end_and_exits_as_wait_does(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    address = unique_email()
    queued = jobql("send-welcome", address, "Ann", *server(web, "cli-wait", SCOPE_SEND_EMAIL))
    [(job_id, _)] = job_lines(queued.stdout)
    done = jobql("jobs", "wait", job_id, "--timeout", "30", *server(web, "cli-wait"))
    assert done.returncode == 0, done.stderr
    assert job_lines(done.stdout) == [(job_id, "SUCCESS")]
    [received] = smtp_server.handler.to(address)
    assert f"message-id: {received['Message-ID']}" in done.stdout.splitlines()

    rejected = jobql(
        "send-welcome", f"wait-{uuid.uuid4().hex}@{REJECTING_DOMAIN}", "Ann",
        *server(web, "cli-wait", SCOPE_SEND_EMAIL),
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    [(failing, _)] = job_lines(rejected.stdout)
    failed = jobql("jobs", "wait", failing, *server(web, "cli-wait"))
    assert failed.returncode == 1
    assert "SMTP_REJECTED" in failed.stderr


def test_jobs_wait_for_a_job_still_queued_exits_4(web: WebServer) -> None:
    job_id = delayed_email(web, "cli-wait")
    started = time.monotonic()
    done = jobql("jobs", "wait", job_id, "--timeout", "1", *server(web, "cli-wait"))
    assert done.returncode == 4, done.stderr
    assert job_lines(done.stdout) == [(job_id, "PENDING")]
    assert "not done after 1 s" in done.stderr
    assert time.monotonic() - started >= 1
    unknown = jobql("jobs", "wait", UNKNOWN_ID, "--timeout", "1", *server(web, "cli-wait"))
    assert unknown.returncode == 1
