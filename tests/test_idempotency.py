"""idempotencyKey through HTTP, with the session's real worker and SMTP server."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from gql.transport.exceptions import TransportQueryError
from gql.transport.file_upload import FileVar

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import with_job_fields
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.images import phone_photo

if TYPE_CHECKING:
    from tests.support import SmtpServer, WebServer

pytestmark = pytest.mark.usefixtures("worker")

SEND = with_job_fields(
    """mutation Send($email: String!, $username: String!, $key: String) {
        sendWelcomeEmail(email: $email, username: $username, idempotencyKey: $key) {
            ...JobFields
        }
    }"""
)
UPLOAD = with_job_fields(
    """mutation Upload($file: Upload!, $options: AvatarOptions, $key: String) {
        uploadAvatar(file: $file, options: $options, idempotencyKey: $key) { ...JobFields }
    }"""
)


def new_key() -> str:
    return f"order-{uuid.uuid4()}"


def new_address() -> str:
    return f"idem-{uuid.uuid4().hex[:8]}@example.com"


async def send(web: WebServer, user: str, email: str, key: str | None, name: str = "I") -> Any:
    client = http_client(web, token(user, SCOPE_SEND_EMAIL))
    result = await execute(client, SEND, email=email, username=name, key=key)
    return result["sendWelcomeEmail"]


async def upload(web: WebServer, user: str, data: bytes, key: str, size: int = 64) -> Any:
    file = FileVar(io.BytesIO(data), filename="me.jpg", content_type="image/jpeg")
    client = http_client(web, token(user))
    result = await execute(
        client, UPLOAD, upload_files=True, file=file, options={"size": size}, key=key
    )
    return result["uploadAvatar"]


def code_of(exc: TransportQueryError) -> str:
    assert exc.errors
    return str(exc.errors[0]["extensions"]["code"])


async def finish(web: WebServer, user: str, job_id: str) -> dict[str, Any]:
    async def last() -> dict[str, Any]:
        events = [e async for e in follow(ws_client(web, token(user)), job_id)]
        return dict(events[-1])

    return await asyncio.wait_for(last(), 30)


async def test_ten_racing_requests_with_one_key_make_one_job_and_one_email(
    web: WebServer, smtp_server: SmtpServer
) -> None:
    key, address = new_key(), new_address()

    jobs = await asyncio.gather(*(send(web, "idem", address, key) for _ in range(10)))

    assert len({job["id"] for job in jobs}) == 1
    assert (await finish(web, "idem", jobs[0]["id"]))["state"] == "SUCCESS"
    again = await send(web, "idem", address, key)
    assert again["id"] == jobs[0]["id"]
    assert again["state"] == "SUCCESS"
    assert len(smtp_server.handler.to(address)) == 1


async def test_same_key_with_other_arguments_is_refused(web: WebServer) -> None:
    key = new_key()
    await send(web, "idem2", new_address(), key)

    with pytest.raises(TransportQueryError) as other_address:
        await send(web, "idem2", new_address(), key)
    address = new_address()
    await send(web, "idem3", address, key, name="A")
    with pytest.raises(TransportQueryError) as other_name:
        await send(web, "idem3", address, key, name="B")

    assert code_of(other_address.value) == "IDEMPOTENCY_KEY_REUSED"
    assert code_of(other_name.value) == "IDEMPOTENCY_KEY_REUSED"


async def test_request_refused_for_bad_input_does_not_use_up_its_key(web: WebServer) -> None:
    key = new_key()
    with pytest.raises(TransportQueryError) as bad:
        await send(web, "idem4", "not an address", key)
    assert code_of(bad.value) == "BAD_USER_INPUT"

    job = await send(web, "idem4", new_address(), key)

    assert job["state"] == "PENDING"
    assert job["error"] is None


async def test_other_users_keys_are_separate(web: WebServer) -> None:
    key = new_key()
    mine = await send(web, "idem5", new_address(), key)
    theirs = await send(web, "idem6", new_address(), key)

    assert mine["id"] != theirs["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "ключ", "tab\there", "new\nline"])
async def test_malformed_key_is_bad_user_input(web: WebServer, key: str) -> None:
    with pytest.raises(TransportQueryError) as exc:
        await send(web, "idem7", new_address(), key)
    assert code_of(exc.value) == "BAD_USER_INPUT"
    assert exc.value.errors
    assert exc.value.errors[0]["extensions"]["field"] == "idempotencyKey"


async def test_longest_key_is_accepted(web: WebServer) -> None:
    key = "~" * 255
    first = await send(web, f"idem-{uuid.uuid4().hex[:6]}", new_address(), key)
    assert first["id"]


async def test_avatar_same_key_same_file_is_the_first_job(web: WebServer) -> None:
    key, photo = new_key(), phone_photo()
    first = await upload(web, "idem8", photo, key)

    again = await upload(web, "idem8", photo, key)

    assert again["id"] == first["id"]
    assert (await finish(web, "idem8", first["id"]))["state"] == "SUCCESS"


async def test_avatar_same_key_other_bytes_or_options_is_refused(web: WebServer) -> None:
    key, photo = new_key(), phone_photo()
    await upload(web, "idem9", photo, key)

    with pytest.raises(TransportQueryError) as other_bytes:
        await upload(web, "idem9", photo + b"\0", key)
    with pytest.raises(TransportQueryError) as other_size:
        await upload(web, "idem9", photo, key, size=128)

    assert code_of(other_bytes.value) == "IDEMPOTENCY_KEY_REUSED"
    assert code_of(other_size.value) == "IDEMPOTENCY_KEY_REUSED"
