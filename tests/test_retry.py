"""retryJob, end to end: real Redis, workers, SMTP and GraphQL clients.

Each test builds a private jobql, so that what it stops or cancels disturbs no other test.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from gql.transport.exceptions import TransportQueryError
from gql.transport.file_upload import FileVar
from redis import Redis

from jobql.client import with_job_fields
from jobql.jobs import inputs_key
from tests.conftest import token
from tests.graphql_clients import execute, http_client
from tests.images import phone_photo
from tests.support import REJECTING_DOMAIN, UPLOAD_AVATAR
from tests.test_cancel import USER, address, cancel, follow_to_end, get, send

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Stack, WebServer

pytestmark = pytest.mark.slow

RETRY_JOB = with_job_fields(
    "mutation Retry($id: ID!) { retryJob(id: $id) { ...JobFields retryOf } }"
)


async def retry(web: WebServer, job_id: str, user: str = USER) -> dict[str, Any]:
    result = await execute(http_client(web, token(user)), RETRY_JOB, id=job_id)
    return dict(result["retryJob"])


async def refusal(web: WebServer, job_id: str, user: str = USER) -> tuple[str, str]:
    """The code and message retryJob answers `job_id` with (it must refuse)."""
    with pytest.raises(TransportQueryError) as raised:
        await retry(web, job_id, user)
    assert raised.value.errors
    [error] = raised.value.errors
    return str(error["extensions"]["code"]), str(error["message"])


def inputs_kept(stack: Stack, job_id: str) -> bool:
    with Redis.from_url(stack.settings.redis_url) as client:
        return bool(client.exists(inputs_key(job_id)))


async def test_a_cancelled_email_is_retried_once_as_a_new_job_that_sends(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    web = stack.start_web()  # no worker yet: the job stays queued
    to = address("retried")
    job = await send(web, to)
    assert (await cancel(web, job["id"]) or {})["state"] == "REVOKED"

    first = await retry(web, job["id"])
    # Asked again, at once and many times over: the same retry, nothing more queued.
    again = await asyncio.gather(*(retry(web, job["id"]) for _ in range(10)))

    assert first["id"] != job["id"]
    assert (first["retryOf"], first["kind"], first["state"]) == (job["id"], job["kind"], "PENDING")
    assert {answer["id"] for answer in again} == {first["id"]}
    stack.add_worker(concurrency=1)
    events = await follow_to_end(web, first["id"])
    assert events[-1]["state"] == "SUCCESS", events
    assert events[-1]["result"]["recipient"] == to
    assert len(stack.smtp.handler.to(to)) == 1
    assert (await get(web, job["id"]))["state"] == "REVOKED"  # the old job stays as it ended
    # What the retry was given goes with its success; the cancelled job's stays, for now.
    assert not inputs_kept(stack, first["id"])
    assert inputs_kept(stack, job["id"])


async def test_an_email_that_gave_up_while_smtp_was_down_succeeds_once_retried(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(mail_max_retries=0)
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    stack.smtp.stop()
    to = address("down")
    job = await send(web, to)
    failed = (await follow_to_end(web, job["id"]))[-1]
    assert failed["state"] == "FAILURE"
    assert (failed["error"]["code"], failed["error"]["retryable"]) == ("SMTP_UNAVAILABLE", True)
    stack.smtp.start()

    retried = await retry(web, job["id"])

    events = await follow_to_end(web, retried["id"])
    assert events[-1]["state"] == "SUCCESS", events
    assert len(stack.smtp.handler.to(to)) == 1


async def test_what_cannot_be_retried_is_refused_and_says_why(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.add_worker(concurrency=1)
    web = stack.start_web()
    sent = await send(web, address("sent"))
    rejected = await send(web, f"{uuid.uuid4().hex[:8]}@{REJECTING_DOMAIN}")
    for job in (sent, rejected):
        await follow_to_end(web, job["id"])
    queued = await send(web, address("later"), delay=600)
    cancelled = await send(web, address("forgotten"), delay=600)
    await cancel(web, cancelled["id"])
    with Redis.from_url(stack.settings.redis_url) as client:
        client.delete(inputs_key(cancelled["id"]))  # as when they expire

    for missing in (str(uuid.uuid4()), "not-an-id"):
        assert (await refusal(web, missing))[0] == "NOT_FOUND"
    assert (await refusal(web, cancelled["id"], user="mallory"))[0] == "NOT_FOUND"
    for job, says in (
        (queued, "has not ended"),
        (sent, "succeeded"),
        (rejected, "failed for good (SMTP_REJECTED)"),
        (cancelled, "inputs are gone"),
    ):
        code, message = await refusal(web, job["id"])
        assert code == "BAD_USER_INPUT"
        assert says in message
    # A job that ended for good keeps nothing of what it was given.
    assert not inputs_kept(stack, sent["id"])
    assert not inputs_kept(stack, rejected["id"])
    assert inputs_kept(stack, queued["id"])


async def test_a_retry_counts_against_the_rate_limit(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(rate_limit_per_minute=2)
    web = stack.start_web()
    job = await send(web, address("limited"))
    await cancel(web, job["id"])

    await retry(web, job["id"])
    code, _ = await refusal(web, job["id"])

    assert code == "RATE_LIMITED"


async def test_a_cancelled_avatar_keeps_its_upload_and_its_retry_makes_the_avatar(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    web = stack.start_web()
    uploader = http_client(web, token(USER))
    photo = FileVar(io.BytesIO(phone_photo(600, 400)), filename="me.jpg", content_type="image/jpeg")
    job = (await execute(uploader, UPLOAD_AVATAR, upload_files=True, file=photo))["uploadAvatar"]
    upload = stack.settings.media_root / "incoming" / f"{job['id']}.upload"
    assert (await cancel(web, job["id"]) or {})["state"] == "REVOKED"
    stack.add_worker(concurrency=1)
    await asyncio.sleep(1)  # the worker has dropped the cancelled job's message by now
    assert upload.exists()  # kept for a retry

    retried = await retry(web, job["id"])

    events = await follow_to_end(web, retried["id"])
    assert events[-1]["state"] == "SUCCESS", events
    avatars = stack.settings.media_root / "avatars"
    assert [path.stem for path in avatars.iterdir()] == [retried["id"]]
    assert not upload.exists()  # used, and removed with the retry's success
