"""Where uvicorn's log lines go once the app is built."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets
from gql.transport.exceptions import TransportError, TransportQueryError

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY, JOB_SUBSCRIPTION
from jobql.logs import configure_logging, current_job_id, route_uvicorn_logs_to_root
from tests.conftest import token
from tests.graphql_clients import follow, ws_client
from tests.images import phone_photo
from tests.support import DEFERRING_DOMAIN, REJECTING_DOMAIN, SEND_WELCOME, UPLOAD_AVATAR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.support import Stack, WebServer

ACCESS = logging.getLogger("uvicorn.access")


@pytest.fixture(autouse=True)
def restore_access_logger() -> Iterator[None]:
    handlers, propagate = list(ACCESS.handlers), ACCESS.propagate
    yield
    ACCESS.handlers[:], ACCESS.propagate = handlers, propagate


def test_access_log_goes_through_the_root_logger() -> None:
    ACCESS.handlers[:], ACCESS.propagate = [logging.StreamHandler()], False  # uvicorn's own
    route_uvicorn_logs_to_root()
    assert ACCESS.handlers == []
    assert ACCESS.propagate


def test_access_log_turned_off_stays_off() -> None:
    ACCESS.handlers[:], ACCESS.propagate = [], False  # what uvicorn does for --no-access-log
    route_uvicorn_logs_to_root()
    # uvicorn writes access lines only if the logger has somewhere to write them.
    assert not ACCESS.hasHandlers()


def test_json_lines_keep_every_extra_field_and_the_job_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(json_lines=True)
        logger = logging.getLogger("jobql.test")
        logger.info("refused", extra={"code": "BAD_USER_INPUT", "job_id": "j-1", "attempt": 2})
        # Celery's own lines name the job in their arguments.
        logger.info("Task %(name)s[%(id)s] received", {"name": "jobql.avatar", "id": "j-2"})
        token_ = current_job_id.set("j-3")
        try:
            logger.warning("inside a task")
        finally:
            current_job_id.reset(token_)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("a fault")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["code"] == "BAD_USER_INPUT" and lines[0]["attempt"] == 2
    assert [line.get("job_id") for line in lines] == ["j-1", "j-2", "j-3", None]
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "jobql.test"
    assert lines[0]["message"] == "refused" and lines[0]["time"].endswith("+00:00")
    assert "ValueError: boom" in lines[3]["exception"]


# --- End-to-end traffic, client errors included: what the logs say about it ---

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
BAD_TOKEN = "not-a-token"


async def post_json(web: WebServer, token_value: str, query: str, **variables: Any) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            web.http_url,
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token_value}"},
        )
    return response.json()


async def subscribe_and_hang_up(web: WebServer, token_value: str, job_id: str) -> list[Any]:
    """Follow a job over graphql-transport-ws and close the socket on the last `next`, before
    the server's `complete` (what clients that stop at `done` do)."""
    seen = []
    async with websockets.connect(web.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token_value}"}}
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": JOB_SUBSCRIPTION, "variables": {"id": job_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] != "next":
                break
            job = message["payload"]["data"]["job"]
            seen.append(job)
            if job["done"]:
                break
    return seen


async def hang_up_mid_upload(web: WebServer, token_value: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    head = (
        b'--b\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
        b'{"query":"mutation($f: Upload!) { uploadAvatar(file: $f) { id } }",'
        b'"variables":{"f":null}}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
        b'{"0":["variables.f"]}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="0"; filename="a.jpg"\r\n\r\n'
    )
    writer.write(
        b"POST /graphql HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer " + token_value.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000\r\n\r\n" + head + b"\xff\xd8\xff" + b"\0" * 50_000
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the server is reading the file part
    writer.transport.abort()  # no FIN: a reset, as a client that goes away does
    del reader


async def test_client_errors_are_one_line_each_and_no_traceback(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(mail_retry_backoff=0.2)
    worker = stack.add_worker(concurrency=2)
    web = stack.start_web()
    user = token("traffic", SCOPE_SEND_EMAIL)

    # What goes well: an email and an avatar, followed to the end.
    sent = await post_json(web, user, SEND_WELCOME, email="log@example.com", username="Log")
    email_id = sent["data"]["sendWelcomeEmail"]["id"]
    events = [event async for event in follow(ws_client(web, user), email_id)]
    assert events[-1]["state"] == "SUCCESS"
    async with httpx.AsyncClient(timeout=10) as client:
        files = {"0": ("a.jpg", phone_photo(64, 48), "image/jpeg")}
        operations = {"query": UPLOAD_AVATAR, "variables": {"file": None}}
        response = await client.post(
            web.http_url,
            headers={"Authorization": f"Bearer {user}"},
            data={"operations": json.dumps(operations), "map": '{"0": ["variables.file"]}'},
            files=files,
        )
    avatar_id = response.json()["data"]["uploadAvatar"]["id"]

    # Client errors.
    bad_token = await post_json(web, BAD_TOKEN, JOB_QUERY, id=UNKNOWN_ID)
    assert bad_token["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    with pytest.raises(TransportError):  # the socket is closed with 4403
        await anext(follow(ws_client(web, BAD_TOKEN), UNKNOWN_ID))
    bad_input = await post_json(web, user, SEND_WELCOME, email="not an address", username="x")
    assert bad_input["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    with pytest.raises(TransportQueryError):
        await anext(follow(ws_client(web, user), UNKNOWN_ID))  # NOT_FOUND
    rejected = await post_json(
        web, user, SEND_WELCOME, email=f"x@{REJECTING_DOMAIN}", username="Rejected"
    )
    rejected_id = rejected["data"]["sendWelcomeEmail"]["id"]
    deferred = await post_json(
        web, user, SEND_WELCOME, email=f"y@{DEFERRING_DOMAIN}", username="Deferred"
    )
    deferred_id = deferred["data"]["sendWelcomeEmail"]["id"]
    for _ in range(3):
        await hang_up_mid_upload(web, user)
    for job_id in (avatar_id, rejected_id, deferred_id):
        assert (await subscribe_and_hang_up(web, user, job_id))[-1]["done"]
    for _ in range(10):  # the race of a client that hangs up as the job ends
        again = await post_json(
            web, user, SEND_WELCOME, email=f"r{uuid.uuid4().hex[:8]}@example.com", username="R"
        )
        await subscribe_and_hang_up(web, user, again["data"]["sendWelcomeEmail"]["id"])
    await asyncio.sleep(1)

    web_log, worker_log = web.process.log, worker.log
    assert "Traceback" not in web_log, web_log[-6000:]
    assert "Traceback" not in worker_log, worker_log[-6000:]
    lines = web_log.splitlines()

    def about(code: str) -> list[str]:
        return [line for line in lines if code in line]

    # One line for each: the bad token over HTTP and over WebSocket, the bad address, the
    # subscription to no such job (with the job id it named).
    assert len(about("UNAUTHENTICATED")) == 2
    assert len(about("BAD_USER_INPUT")) == 1
    assert len(about("NOT_FOUND")) == 1 and UNKNOWN_ID in about("NOT_FOUND")[0]
    assert all(
        " INFO " in line
        for code in ("UNAUTHENTICATED", "BAD_USER_INPUT", "NOT_FOUND")
        for line in about(code)
    )
    assert any("disconnected" in line for line in lines)
    assert any("hung up" in line and "(job " in line for line in lines)
    failed = [
        line for line in worker_log.splitlines() if rejected_id in line and "SMTP_REJECTED" in line
    ]
    assert failed and " ERROR " not in failed[0]
