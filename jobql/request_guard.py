"""ASGI middleware in front of GraphQL over HTTP: nothing is held for long for a client that does
not deserve it.

- A body is capped as it streams, and must arrive within `JOBQL_REQUEST_TIMEOUT` of the
  headers (which `jobql.http_deadline` holds to the same time); an upload must also keep up
  `JOBQL_MIN_UPLOAD_RATE` once it is a few seconds old.
- An upload's token is checked before a byte of its body is read, and each user may have
  `JOBQL_MAX_UPLOADS_PER_USER` uploads in flight (the process, `JOBQL_MAX_UPLOADS`).
- A refused body is answered the way GraphQL clients read errors, and uploads nobody claimed
  are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from jobql.admission import RETRY_AFTER_SECONDS
from jobql.auth import InvalidToken
from jobql.errors import RateLimited
from jobql.multipart import FormRejected, IncomingUpload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from jobql.auth import TokenVerifier
    from jobql.quotas import UserQuota

UPLOADS = "jobql.uploads"
MULTIPART_OVERHEAD_BYTES = 256 * 1024
# An upload's rate is judged from this age on (or a quarter of the request's deadline, if that
# is sooner): a connection's first seconds say little.
MIN_RATE_AFTER_SECONDS = 5.0

logger = logging.getLogger(__name__)


class Refused(FormRejected):
    """A request answered before (or instead of) GraphQL, with the headers that go with it."""

    def __init__(
        self, message: str, code: str, status: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.headers = headers or {}


class BodyTooLarge(Refused):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than {limit} bytes.", code="PAYLOAD_TOO_LARGE", status=413
        )


class TooSlow(Refused):
    def __init__(self, message: str) -> None:
        # The connection goes with the answer: what is left of the body is not waited for.
        super().__init__(
            message, code="REQUEST_TIMEOUT", status=408, headers={"Connection": "close"}
        )


class Overloaded(Refused):
    """The process is at a limit of its own: try again shortly."""

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message} Try again in {RETRY_AFTER_SECONDS} s.",
            code="OVERLOADED",
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_upload_bytes: int,
        max_other_bytes: int,
        tokens: TokenVerifier,
        uploads_per_user: UserQuota,
        max_uploads: int,
        request_timeout: float,
        min_upload_rate: int,
    ) -> None:
        self.app = app
        self.max_multipart_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.max_other_bytes = max_other_bytes
        self.tokens = tokens
        self.uploads_per_user = uploads_per_user
        self.max_uploads = max_uploads
        self.request_timeout = request_timeout
        self.min_upload_rate = min_upload_rate
        self.uploads_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        # Only a real upload gets the upload limits (Strawberry reads any content type that
        # mentions application/json as JSON, whatever comes before it).
        multipart = media_type == "multipart/form-data"
        try:
            if not multipart:
                await self._serve(scope, receive, send, headers, multipart)
                return
            user_id = await self._uploader(headers)
            with self._upload_slot(user_id):
                await self._serve(scope, receive, send, headers, multipart)
        except Refused as exc:
            await _refusal(exc)(scope, receive, send)

    async def _uploader(self, headers: Headers) -> str:
        """The user an upload is from: checked before its body is read, so that nothing is
        written to disk for a stranger."""
        authorization = headers.get("authorization")
        await self.tokens.prepare(authorization)
        try:
            return self.tokens.principal(authorization).user_id
        except InvalidToken as exc:
            raise Refused(
                str(exc), "UNAUTHENTICATED", 401, headers={"WWW-Authenticate": "Bearer"}
            ) from exc

    @contextlib.contextmanager
    def _upload_slot(self, user_id: str) -> Iterator[None]:
        """An upload in flight, counted for its user and for the process."""
        if self.uploads_in_flight >= self.max_uploads:
            raise Overloaded(f"The server has {self.max_uploads} uploads in flight.")
        try:
            self.uploads_per_user.acquire(user_id)
        except RateLimited as exc:
            raise Refused(
                str(exc), "RATE_LIMITED", 429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            ) from exc
        self.uploads_in_flight += 1
        try:
            yield
        finally:
            self.uploads_in_flight -= 1
            self.uploads_per_user.release(user_id)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, multipart: bool
    ) -> None:
        uploads: list[IncomingUpload] = []
        scope.setdefault("state", {})[UPLOADS] = uploads

        async def send_after_cleanup(message: Message) -> None:
            # By the time an answer starts, every resolver has claimed what it queued: the
            # rest goes before the client hears anything.
            if message["type"] == "http.response.start":
                await _remove_unclaimed(uploads)
            await send(message)

        try:
            await self.app(scope, self._limited(receive, headers, multipart), send_after_cleanup)
        except FormRejected as exc:
            await _refusal(exc)(scope, receive, send_after_cleanup)
        except ClientDisconnect:
            # Nobody is left to answer, and nothing went wrong here.
            logger.info("Client disconnected before its request was read (%s)", scope["path"])
        finally:
            await _remove_unclaimed(uploads)  # and when no answer was sent at all

    def _limited(self, receive: Receive, headers: Headers, multipart: bool) -> Receive:
        limit = self.max_multipart_bytes if multipart else self.max_other_bytes
        min_rate = self.min_upload_rate if multipart else 0
        declared = headers.get("content-length", "")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.request_timeout
        judged_after = min(MIN_RATE_AFTER_SECONDS, self.request_timeout / 4)
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows is waiting for a disconnect
                return await receive()
            # Refuse a declared size before reading a byte of it.
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            # The time by which the next chunk must come: the request's deadline, or the
            # moment an upload's average rate would fall below the minimum.
            slow_at = started + max(judged_after, received / min_rate) if min_rate else deadline
            try:
                async with asyncio.timeout_at(min(deadline, slow_at)):
                    message = await receive()
            except TimeoutError:
                if loop.time() >= deadline:
                    raise TooSlow(
                        f"The request did not arrive within {self.request_timeout:g} s."
                    ) from None
                raise TooSlow(
                    f"The upload is arriving at less than {min_rate} bytes a second."
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        return limited_receive


def _refusal(exc: FormRejected) -> JSONResponse:
    """A request refused before any GraphQL ran, answered the way GraphQL clients read errors.
    uvicorn reads and drops what is left of the body (so that the client reads the answer, not
    a reset), for at most `JOBQL_REQUEST_TIMEOUT` (`jobql.http_deadline`)."""
    extensions: dict[str, object] = {"code": exc.code}
    headers: dict[str, str] = {}
    if isinstance(exc, Refused):
        headers.update(exc.headers)
        if "Retry-After" in exc.headers:
            extensions["retryAfter"] = int(exc.headers["Retry-After"])
    body = {"errors": [{"message": str(exc), "extensions": extensions}]}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _remove_unclaimed(uploads: list[IncomingUpload]) -> None:
    for upload in uploads:
        if not upload.claimed:
            await upload.remove()
