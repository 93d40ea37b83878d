"""ASGI middleware: caps request bodies as they stream, answers a refused body, and removes
uploads nobody claimed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from jobql.multipart import FormRejected, IncomingUpload

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOADS = "jobql.uploads"
MULTIPART_OVERHEAD_BYTES = 256 * 1024


class BodyTooLarge(FormRejected):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than {limit} bytes.", code="PAYLOAD_TOO_LARGE", status=413
        )


class RequestGuard:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_other_bytes: int) -> None:
        self.app = app
        self.max_multipart_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.max_other_bytes = max_other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        uploads: list[IncomingUpload] = []
        scope.setdefault("state", {})[UPLOADS] = uploads

        async def send_after_cleanup(message: Message) -> None:
            # By the time an answer starts, every resolver has claimed what it queued: the
            # rest goes before the client hears anything.
            if message["type"] == "http.response.start":
                _remove_unclaimed(uploads)
            await send(message)

        try:
            await self.app(scope, self._limited(scope, receive), send_after_cleanup)
        except FormRejected as exc:
            await _refusal(exc)(scope, receive, send_after_cleanup)
        finally:
            _remove_unclaimed(uploads)  # and when no answer was sent at all

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        # Only a real upload gets the upload limit (Strawberry reads any content type that
        # mentions application/json as JSON, whatever comes before it).
        multipart = media_type == "multipart/form-data"
        limit = self.max_multipart_bytes if multipart else self.max_other_bytes
        declared = headers.get("content-length", "")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            # Refuse a declared size before reading a byte of it.
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


def _refusal(exc: FormRejected) -> JSONResponse:
    """A body refused before any GraphQL ran, answered the way GraphQL clients read errors."""
    body = {"errors": [{"message": str(exc), "extensions": {"code": exc.code}}]}
    return JSONResponse(body, status_code=exc.status)


def _remove_unclaimed(uploads: list[IncomingUpload]) -> None:
    for upload in uploads:
        if not upload.claimed:
            upload.path.unlink(missing_ok=True)
