"""Bad input over real HTTP and WebSocket: each gets the code a client can act on, and
nothing is left on disk."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets
from gql.transport.exceptions import TransportQueryError
from gql.transport.file_upload import FileVar
from PIL import Image

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY
from jobql.jobs import record_key
from tests.conftest import token
from tests.graphql_clients import GRAPHQL_TRANSPORT_WS, execute, follow, http_client, ws_client
from tests.images import heic_photo, phone_photo, png_declaring
from tests.support import SEND_WELCOME, UPLOAD_AVATAR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from redis.asyncio import Redis

    from jobql.settings import Settings
    from tests.support import WebServer

pytestmark = pytest.mark.usefixtures("worker")

MiB = 1024 * 1024
SMALL_LIMIT = 1 * MiB
RATE_LIMIT = 3


@pytest.fixture(scope="module")
def strict_settings(make_settings: Callable[..., Settings], settings: Settings) -> Settings:
    """Small limits, sharing the suite's Redis, media folder and worker."""
    return make_settings(
        media_root=settings.media_root,
        max_upload_bytes=SMALL_LIMIT,
        rate_limit_per_minute=RATE_LIMIT,
        ws_init_timeout=1.0,
        introspection=False,
    )


@pytest.fixture(scope="module")
def strict_web(
    strict_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    from tests.support import start_web

    server = start_web(strict_settings, tmp_path_factory.mktemp("logs") / "strict-web.log")
    yield server
    server.process.stop()


def user() -> str:
    return f"user-{uuid.uuid4()}"


def code_of(exc: TransportQueryError) -> str:
    assert exc.errors
    return str(exc.errors[0]["extensions"]["code"])


def incoming_files(settings: Settings) -> list[str]:
    return sorted(path.name for path in (settings.media_root / "incoming").iterdir())


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "jobqlboundary") -> bytes:
    """Encode (name, filename, content) parts by hand, to send what a client library won't."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


UPLOAD_OPERATIONS = json.dumps(
    {"query": "mutation($f: Upload!) { uploadAvatar(file: $f) { id } }", "variables": {"f": None}}
).encode()
UPLOAD_MAP = json.dumps({"0": ["variables.f"]}).encode()


async def post_multipart(web: WebServer, who: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            web.http_url,
            content=body,
            headers={
                "Authorization": f"Bearer {token(who)}",
                "Content-Type": "multipart/form-data; boundary=jobqlboundary",
            },
        )


async def upload(web: WebServer, who: str, data: bytes, filename: str) -> dict[str, Any]:
    file = FileVar(io.BytesIO(data), filename=filename, content_type="image/jpeg")
    result = await execute(
        http_client(web, token(who)), UPLOAD_AVATAR, upload_files=True, file=file
    )
    return result["uploadAvatar"]  # type: ignore[no-any-return]


def read_response(sock: socket.socket, start: bytes = b"") -> bytes:
    """One whole HTTP response (headers and a Content-Length body) from a raw socket."""
    data = start
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


# Uploads: size, shape, names


async def test_upload_over_the_limit_is_payload_too_large(
    strict_web: WebServer, strict_settings: Settings
) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await upload(strict_web, user(), b"\xff\xd8\xff" + b"\0" * (SMALL_LIMIT + 1), "big.jpg")
    assert code_of(raised.value) == "PAYLOAD_TOO_LARGE"
    assert incoming_files(strict_settings) == []


def test_declared_oversize_body_is_refused_before_it_is_sent(strict_web: WebServer) -> None:
    with socket.create_connection(("127.0.0.1", strict_web.port), timeout=10) as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + token(user()).encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=jobqlboundary\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        response = read_response(sock).decode(errors="replace")
    assert response.startswith("HTTP/1.1 413"), response
    assert '"code":"PAYLOAD_TOO_LARGE"' in response


def test_streamed_upload_is_cut_off_while_it_streams(
    strict_web: WebServer, strict_settings: Settings
) -> None:
    """Chunked, with no declared length: the server must stop reading near the limit."""
    head = (
        multipart(
            [("operations", None, UPLOAD_OPERATIONS), ("map", None, UPLOAD_MAP)]
        ).removesuffix(b"--jobqlboundary--\r\n")
        + b'--jobqlboundary\r\nContent-Disposition: form-data; name="0"; filename="x.jpg"\r\n\r\n'
    )
    chunk = b"\0" * (64 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", strict_web.port), timeout=10) as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + token(user()).encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=jobqlboundary\r\n\r\n"
        )
        sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        sock.settimeout(0.05)
        response = b""
        while sent < 100 * SMALL_LIMIT and not response:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                response = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(10)
        response = read_response(sock, response)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 10 * SMALL_LIMIT  # it stopped reading long before the body's end
    time.sleep(0.2)
    assert incoming_files(strict_settings) == []


async def test_json_dressed_as_multipart_gets_the_json_limit(strict_web: WebServer) -> None:
    body = json.dumps({"query": "{ __typename }", "padding": "x" * (2 * MiB)})
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            strict_web.http_url,
            content=body,
            headers={
                "Authorization": f"Bearer {token(user())}",
                "Content-Type": "multipart/application/json",
            },
        )
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize(
    ("parts", "why"),
    [
        (
            [
                ("operations", None, UPLOAD_OPERATIONS),
                ("map", None, UPLOAD_MAP),
                ("0", "a.jpg", phone_photo(64, 64)),
                ("1", "b.jpg", phone_photo(64, 64)),
            ],
            "two files",
        ),
        (
            [
                ("operations", None, UPLOAD_OPERATIONS),
                ("map", None, UPLOAD_MAP),
                ("extra", None, b"x"),
                ("0", "a.jpg", phone_photo(64, 64)),
            ],
            "a third field",
        ),
        (
            [
                ("operations", None, UPLOAD_OPERATIONS + b" " * (70 * 1024)),
                ("map", None, UPLOAD_MAP),
                ("0", "a.jpg", phone_photo(64, 64)),
            ],
            "a huge field",
        ),
        (
            [
                ("operations", None, UPLOAD_OPERATIONS),
                ("map", None, UPLOAD_MAP),
                ("0", "../../etc/passwd.jpg", phone_photo(64, 64)),
            ],
            "a path in the file name",
        ),
    ],
    ids=["two-files", "three-fields", "huge-field", "dotdot-name"],
)
async def test_malformed_multipart_is_bad_user_input(
    web: WebServer, settings: Settings, parts: list[tuple[str, str | None, bytes]], why: str
) -> None:
    response = await post_multipart(web, user(), multipart(parts))
    assert response.status_code == 400, why
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", why
    assert incoming_files(settings) == []


@pytest.mark.parametrize(
    "content",
    [
        b"<?php system($_GET['c']); ?>",
        b"<!doctype html><html><script>alert(1)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    ],
    ids=["php", "html", "svg"],
)
async def test_non_images_named_jpg_are_bad_user_input(
    web: WebServer, settings: Settings, content: bytes
) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await upload(web, user(), content, "photo.jpg")
    assert code_of(raised.value) == "BAD_USER_INPUT"
    assert incoming_files(settings) == []


async def test_decompression_bomb_is_refused_at_upload(web: WebServer, settings: Settings) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await upload(web, user(), png_declaring(20000, 20000), "bomb.png")
    assert code_of(raised.value) == "BAD_USER_INPUT"
    assert "pixels" in str(raised.value)
    assert incoming_files(settings) == []


def encoded(image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (30, 160, 60)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (encoded("GIF"), "a.gif"),
        (encoded("PNG"), "a.png"),
        (encoded("WEBP"), "a.webp"),
        (phone_photo(640, 480, "JPEG"), "a.jpg"),
        (heic_photo(), "IMG_0001.HEIC"),
    ],
    ids=["gif", "png", "webp", "jpeg", "heic"],
)
async def test_every_accepted_format_becomes_an_avatar_without_metadata(
    web: WebServer, settings: Settings, data: bytes, name: str
) -> None:
    who = user()
    job = await upload(web, who, data, name)
    events = [event async for event in follow(ws_client(web, token(who)), job["id"])]
    assert events[-1]["state"] == "SUCCESS", events[-1]
    async with httpx.AsyncClient() as client:
        response = await client.get(web.url(events[-1]["result"]["url"]))
    avatar = Image.open(io.BytesIO(response.content))
    assert avatar.size == (256, 256)
    assert not avatar.getexif()
    assert not {"exif", "icc_profile", "xmp"} & set(avatar.info)
    assert incoming_files(settings) == []


# Email input


@pytest.mark.parametrize(
    ("address", "username"),
    [
        ("a@example.com\nBcc: x@example.com", "Ann"),
        ("a@example.com\x00", "Ann"),
        ("@example.com", "Ann"),
        ("a@example.com", "Ann\rBcc: x@example.com"),
        ("a@example.com", "Ann\x07"),
        ("a@example.com", "x" * 10_000),
    ],
    ids=["lf-in-email", "nul-in-email", "no-local-part", "cr-in-name", "bell", "10k-name"],
)
async def test_bad_email_input_is_bad_user_input(
    web: WebServer, address: str, username: str
) -> None:
    sender = http_client(web, token(user(), SCOPE_SEND_EMAIL))
    with pytest.raises(TransportQueryError) as raised:
        await execute(sender, SEND_WELCOME, email=address, username=username)
    assert code_of(raised.value) == "BAD_USER_INPUT"


async def test_second_welcome_to_an_address_returns_the_first_job(web: WebServer) -> None:
    who = user()
    address = f"once-{uuid.uuid4().hex[:8]}@example.com"
    sender = http_client(web, token(who, SCOPE_SEND_EMAIL))
    first = (await execute(sender, SEND_WELCOME, email=address, username="A"))["sendWelcomeEmail"]
    again = (await execute(sender, SEND_WELCOME, email=address.upper(), username="B"))[
        "sendWelcomeEmail"
    ]
    assert again["id"] == first["id"]

    other = http_client(web, token(user(), SCOPE_SEND_EMAIL))
    with pytest.raises(TransportQueryError) as raised:
        await execute(other, SEND_WELCOME, email=address, username="C")
    assert code_of(raised.value) == "BAD_USER_INPUT"
    assert first["id"] not in str(raised.value)


# GraphQL abuse


ALIASES = "{ " + " ".join(f'a{i}: job(id: "x") {{ id }}' for i in range(11)) + " }"
TOKENS = '{ job(id: "x") { ' + " ".join(["id"] * 1200) + " } }"


@pytest.mark.parametrize(
    ("query", "word"),
    [(ALIASES, "aliases"), (TOKENS, "token")],
    ids=["aliases", "tokens"],
)
async def test_abusive_documents_are_refused(web: WebServer, query: str, word: str) -> None:
    with pytest.raises(TransportQueryError) as raised:
        await execute(http_client(web, token(user())), query)
    assert raised.value.errors
    assert word in raised.value.errors[0]["message"].lower()


async def test_batched_requests_are_refused(web: WebServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            web.http_url,
            json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}],
            headers={"Authorization": f"Bearer {token(user())}"},
        )
    assert response.status_code == 400
    assert "batching" in response.text.lower()


async def test_introspection_is_a_setting(web: WebServer, strict_web: WebServer) -> None:
    query = "{ __schema { queryType { name } } }"
    allowed = await execute(http_client(web, token(user())), query)
    assert allowed == {"__schema": {"queryType": {"name": "Query"}}}
    with pytest.raises(TransportQueryError) as raised:
        await execute(http_client(strict_web, token(user())), query)
    assert raised.value.errors
    assert "introspection" in raised.value.errors[0]["message"].lower()


async def test_unexpected_errors_are_masked(web: WebServer, redis: Redis) -> None:
    who = user()
    sender = http_client(web, token(who, SCOPE_SEND_EMAIL))
    job = (
        await execute(
            sender,
            SEND_WELCOME,
            email=f"m-{uuid.uuid4().hex[:8]}@example.com",
            username="M",
            delaySeconds=60,
        )
    )["sendWelcomeEmail"]
    await redis.hset(record_key(job["id"]), "kind", "no-such-kind")

    with pytest.raises(TransportQueryError) as raised:
        await execute(http_client(web, token(who)), JOB_QUERY, id=job["id"])
    assert raised.value.errors
    error = raised.value.errors[0]
    assert error["message"] == "Unexpected error."
    assert "no-such-kind" not in json.dumps(raised.value.errors)
    assert "Traceback" not in json.dumps(raised.value.errors)


@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.uuid4()), "'; DROP TABLE jobs; --"])
async def test_ids_that_are_not_yours_all_answer_null(web: WebServer, job_id: str) -> None:
    assert await execute(http_client(web, token(user())), JOB_QUERY, id=job_id) == {"job": None}


# Abuse limits


async def test_mutations_are_rate_limited_per_user(strict_web: WebServer) -> None:
    who = user()
    sender = http_client(strict_web, token(who, SCOPE_SEND_EMAIL))
    for n in range(RATE_LIMIT):
        await execute(
            sender, SEND_WELCOME, email=f"r{n}-{uuid.uuid4().hex[:6]}@example.com", username="R"
        )

    with pytest.raises(TransportQueryError) as raised:
        await execute(sender, SEND_WELCOME, email="r-last@example.com", username="R")
    assert code_of(raised.value) == "RATE_LIMITED"
    assert raised.value.errors
    assert 1 <= raised.value.errors[0]["extensions"]["retryAfter"] <= 60

    # Another user is not affected: the limit is per token subject.
    other = http_client(strict_web, token(user(), SCOPE_SEND_EMAIL))
    await execute(other, SEND_WELCOME, email=f"o-{uuid.uuid4().hex[:6]}@example.com", username="O")


# WebSocket


async def test_websocket_without_connection_init_is_closed_4408(strict_web: WebServer) -> None:
    async with websockets.connect(strict_web.ws_url, subprotocols=[GRAPHQL_TRANSPORT_WS]) as ws:  # type: ignore[list-item]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408
