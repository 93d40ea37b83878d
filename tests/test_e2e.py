"""The whole service through real clients: gql over HTTP and WebSocket, a real worker and SMTP."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from gql import Client
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.file_upload import FileVar
from gql.transport.websockets import WebsocketsTransport
from PIL import Image

from jobql.auth import SCOPE_SEND_EMAIL, issue_token
from jobql.client import JOB_QUERY
from jobql.storage import create_storage
from tests.conftest import SECRET_KEY, token
from tests.graphql_clients import (
    GRAPHQL_TRANSPORT_WS,
    GRAPHQL_WS,
    execute,
    follow,
    http_client,
    ws_client,
)
from tests.images import is_blue, is_red, phone_photo, truncated_jpeg
from tests.support import DEFERRING_DOMAIN, REJECTING_DOMAIN, SEND_WELCOME, UPLOAD_AVATAR

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from jobql.settings import Settings
    from tests.support import Process, SmtpServer, WebServer

pytestmark = pytest.mark.usefixtures("worker")

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def error_code(exc: TransportQueryError) -> str:
    assert exc.errors, exc
    return str(exc.errors[0]["extensions"]["code"])


async def upload(web: WebServer, user: str, data: bytes, name: str, **options: Any) -> Any:
    file = FileVar(io.BytesIO(data), filename=name, content_type="application/octet-stream")
    result = await execute(
        http_client(web, token(user)),
        UPLOAD_AVATAR,
        upload_files=True,
        file=file,
        options=options or None,
    )
    return result["uploadAvatar"]


async def collect(events: AsyncIterator[Any], into: list[Any]) -> None:
    async for event in events:
        into.append(event)


async def follow_to_end(web: WebServer, user: str, job_id: str, protocol: str) -> list[Any]:
    return [job async for job in follow(ws_client(web, token(user), protocol), job_id)]


@dataclass(frozen=True)
class AvatarStack:
    """A web process and a worker whose media is in one backend."""

    web: WebServer
    worker: Process
    settings: Settings

    def uploads_left(self) -> list[str]:
        storage = create_storage(self.settings)
        return [
            leftover.job_id
            for batch in storage.leftovers([], older_than=time.time() + 3600)
            for leftover in batch
        ]

    def fetch_url(self, url: str) -> str:
        """A result's URL to fetch: a path on this API, or a full one (a presigned URL)."""
        return url if url.startswith(("http://", "https://")) else self.web.url(url)


@pytest.fixture(params=["filesystem", "s3"])
def avatars(request: pytest.FixtureRequest) -> AvatarStack:
    """Each avatar test runs with media on the filesystem and in S3."""
    if request.param == "s3":
        names = ("s3_web", "s3_worker", "s3_settings")
    else:
        names = ("web", "worker", "settings")
    return AvatarStack(*(request.getfixturevalue(name) for name in names))


async def test_avatar_upload_followed_to_success(avatars: AvatarStack) -> None:
    web, worker = avatars.web, avatars.worker
    events: list[Any] = []
    with worker.paused():  # so the subscription is open before the work starts
        job = await upload(web, "alice", phone_photo(), "IMG_0001.JPG", size=256)
        assert job["state"] == "PENDING"
        assert job["kind"] == "AVATAR"
        assert job["done"] is False
        following = asyncio.create_task(
            collect(follow(ws_client(web, token("alice"), GRAPHQL_TRANSPORT_WS), job["id"]), events)
        )
        while not events and not following.done():
            await asyncio.sleep(0.01)
    await following

    states = [event["state"] for event in events]
    assert states[-1] == "SUCCESS", events
    assert "PROGRESS" in states
    assert [e["progress"] for e in events if e["state"] == "PROGRESS"] == sorted(
        e["progress"] for e in events if e["state"] == "PROGRESS"
    )
    final = events[-1]
    assert final["done"] is True
    assert final["startedAt"] is not None
    assert final["finishedAt"] >= final["startedAt"] >= final["createdAt"]
    result = final["result"]
    assert result["__typename"] == "AvatarResult"
    assert (result["width"], result["height"], result["format"]) == (256, 256, "JPEG")

    async with httpx.AsyncClient() as client:
        response = await client.get(avatars.fetch_url(result["url"]))
    assert response.status_code == 200
    assert len(response.content) == result["sizeBytes"]
    avatar = Image.open(io.BytesIO(response.content))
    assert avatar.size == (256, 256)
    assert not avatar.getexif(), "EXIF (GPS included) must not leave the server"
    assert not {"exif", "icc_profile", "xmp"} & set(avatar.info)
    rgb = avatar.convert("RGB")
    # Upright, the photo is red above blue: the orientation tag was applied.
    assert is_red(rgb.getpixel((64, 20))) and is_red(rgb.getpixel((192, 20)))  # type: ignore[arg-type]
    assert is_blue(rgb.getpixel((64, 236))) and is_blue(rgb.getpixel((192, 236)))  # type: ignore[arg-type]
    assert avatars.uploads_left() == []


async def test_welcome_email_delivered_over_legacy_protocol(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email="new.user@example.com", username="Ann"))[
        "sendWelcomeEmail"
    ]

    events = await follow_to_end(web, "backend", job["id"], GRAPHQL_WS)

    final = events[-1]
    assert final["state"] == "SUCCESS", events
    assert final["result"] == {
        "__typename": "EmailResult",
        "recipient": "new.user@example.com",
        "messageId": f"<{job['id']}@jobql>",
    }
    [message] = smtp_server.handler.to("new.user@example.com")
    assert message["Subject"] == "Welcome to Testsite"
    assert message["Message-ID"] == f"<{job['id']}@jobql>"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and "Hello Ann" in plain.get_content()
    assert html is not None and "<strong>Testsite</strong>" in html.get_content()


async def test_delayed_job_is_seen_through_every_state(web: WebServer) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (
        await execute(
            sender, SEND_WELCOME, email="slow@example.com", username="Slow", delaySeconds=2
        )
    )["sendWelcomeEmail"]

    events = await follow_to_end(web, "backend", job["id"], GRAPHQL_TRANSPORT_WS)

    states = [event["state"] for event in events]
    assert list(dict.fromkeys(states)) == ["PENDING", "STARTED", "PROGRESS", "SUCCESS"], states
    created = datetime.fromisoformat(job["createdAt"])
    started = datetime.fromisoformat(events[-1]["startedAt"])
    assert started - created >= timedelta(seconds=2)


async def test_delay_out_of_range_is_bad_user_input(web: WebServer) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    with pytest.raises(TransportQueryError) as raised:
        await execute(sender, SEND_WELCOME, email="a@example.com", username="A", delaySeconds=-1)
    assert error_code(raised.value) == "BAD_USER_INPUT"


async def test_username_is_escaped_in_the_html_body(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email="html@example.com", username="<b>x</b>"))[
        "sendWelcomeEmail"
    ]
    assert (await follow_to_end(web, "backend", job["id"], GRAPHQL_TRANSPORT_WS))[-1][
        "state"
    ] == "SUCCESS"
    [message] = smtp_server.handler.to("html@example.com")
    html = message.get_body(("html",))
    assert html is not None and "&lt;b&gt;x&lt;/b&gt;" in html.get_content()


async def test_smtp_4xx_retries_then_succeeds(web: WebServer, smtp_server: SmtpServer) -> None:
    address = f"later@{DEFERRING_DOMAIN}"
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email=address, username="Later"))["sendWelcomeEmail"]

    states = [e["state"] for e in await follow_to_end(web, "backend", job["id"], GRAPHQL_WS)]

    assert "RETRY" in states
    assert states[-1] == "SUCCESS"
    assert len(smtp_server.handler.to(address)) == 1


async def test_smtp_5xx_fails_without_retrying(web: WebServer, smtp_server: SmtpServer) -> None:
    address = f"nobody@{REJECTING_DOMAIN}"
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email=address, username="Nobody"))[
        "sendWelcomeEmail"
    ]

    events = await follow_to_end(web, "backend", job["id"], GRAPHQL_TRANSPORT_WS)

    assert "RETRY" not in [e["state"] for e in events]
    assert events[-1]["state"] == "FAILURE"
    assert events[-1]["error"]["code"] == "SMTP_REJECTED"
    assert events[-1]["error"]["retryable"] is False
    assert smtp_server.handler.to(address) == []


async def test_corrupt_image_fails_with_invalid_image(avatars: AvatarStack) -> None:
    job = await upload(avatars.web, "carol", truncated_jpeg(), "broken.jpg")

    events = await follow_to_end(avatars.web, "carol", job["id"], GRAPHQL_TRANSPORT_WS)

    assert events[-1]["state"] == "FAILURE"
    assert events[-1]["error"]["code"] == "INVALID_IMAGE"
    assert events[-1]["error"]["retryable"] is False
    assert "RETRY" not in [e["state"] for e in events]
    assert avatars.uploads_left() == []


async def test_another_user_cannot_see_a_job(web: WebServer) -> None:
    sender = http_client(web, token("owner", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email="own@example.com", username="Own"))[
        "sendWelcomeEmail"
    ]

    mine = await execute(http_client(web, token("owner")), JOB_QUERY, id=job["id"])
    theirs = await execute(http_client(web, token("intruder")), JOB_QUERY, id=job["id"])
    unknown = await execute(http_client(web, token("intruder")), JOB_QUERY, id=UNKNOWN_ID)
    assert mine["job"]["id"] == job["id"]
    assert theirs == {"job": None}
    assert unknown == {"job": None}

    with pytest.raises(TransportQueryError) as raised:
        await follow_to_end(web, "intruder", job["id"], GRAPHQL_TRANSPORT_WS)
    assert error_code(raised.value) == "NOT_FOUND"


async def test_no_token_is_unauthenticated(web: WebServer) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await execute(http_client(web, None), JOB_QUERY, id=UNKNOWN_ID)
    assert error_code(raised.value) == "UNAUTHENTICATED"

    with pytest.raises(TransportQueryError) as raised:
        await execute(http_client(web, "not-a-jwt"), JOB_QUERY, id="x")
    assert error_code(raised.value) == "UNAUTHENTICATED"


@pytest.mark.parametrize("protocol", [GRAPHQL_TRANSPORT_WS, GRAPHQL_WS])
@pytest.mark.parametrize(
    "bad_token",
    [None, "not-a-jwt", issue_token(SECRET_KEY, "late", (), ttl=timedelta(seconds=-30))],
    ids=["none", "garbage", "expired"],
)
async def test_websocket_without_valid_token_is_refused(
    web: WebServer, protocol: str, bad_token: str | None
) -> None:
    received: list[Any] = []
    with pytest.raises(TransportError):
        await collect(follow(ws_client(web, bad_token, protocol), UNKNOWN_ID), received)
    assert received == []


async def test_websocket_token_may_come_in_the_upgrade_header(web: WebServer) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    job = (await execute(sender, SEND_WELCOME, email="hdr@example.com", username="Hdr"))[
        "sendWelcomeEmail"
    ]
    transport = WebsocketsTransport(
        url=web.ws_url, headers={"Authorization": f"Bearer {token('backend')}"}
    )
    events = [event async for event in follow(Client(transport=transport), job["id"])]
    assert events[-1]["state"] == "SUCCESS"


async def test_sending_email_needs_the_scope(web: WebServer) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await execute(
            http_client(web, token("someone")), SEND_WELCOME, email="a@example.com", username="A"
        )
    assert error_code(raised.value) == "FORBIDDEN"


@pytest.mark.parametrize(
    ("address", "username"),
    [
        ("not-an-address", "Ann"),
        ("a@example.com\r\nBcc: victim@example.com", "Ann"),
        ("a@example.com", ""),
        ("a@example.com", "Ann\r\nBcc: victim@example.com"),
        ("a@example.com", "x" * 65),
    ],
)
async def test_bad_email_or_username_is_bad_user_input(
    web: WebServer, address: str, username: str
) -> None:
    sender = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    with pytest.raises(TransportQueryError) as raised:
        await execute(sender, SEND_WELCOME, email=address, username=username)
    assert error_code(raised.value) == "BAD_USER_INPUT"


async def test_text_file_as_avatar_is_bad_user_input(avatars: AvatarStack) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await upload(avatars.web, "dave", b"just some text, not a photo\n" * 10, "photo.jpg")
    assert error_code(raised.value) == "BAD_USER_INPUT"
    assert avatars.uploads_left() == []


@pytest.mark.parametrize("options", [{"size": 16}, {"size": 2048}, {"quality": 0}])
async def test_avatar_options_out_of_range_are_bad_user_input(
    avatars: AvatarStack, options: dict[str, int]
) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await upload(avatars.web, "erin", phone_photo(300, 200), "p.jpg", **options)
    assert error_code(raised.value) == "BAD_USER_INPUT"
    assert avatars.uploads_left() == []


async def test_graphiql_sends_headers_as_connection_init(web: WebServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(web.http_url, headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "wsConnectionParams: headers" in response.text


async def test_worker_is_a_real_process(worker: Process) -> None:
    assert worker.popen.poll() is None
    assert "jobql.avatar" in worker.log and "jobql.welcome_email" in worker.log
