"""jobql's handlers of the two GraphQL WebSocket protocols, on top of Strawberry's.

What they add:
- A frame that is not a protocol message (a JSON array, `{}`, `start` or `subscribe` without a
  payload and a string query) closes the connection with 4400, the protocol's code for it, and
  its other operations end in order; Strawberry's own handlers raise on some of these.
- The legacy `graphql-ws` gets the `connection_init` deadline `graphql-transport-ws` has
  (`JOBQL_WS_INIT_TIMEOUT`, then 4408).
- A connection refused for the user's connection cap is closed with 4429, its reason starting
  `RATE_LIMITED` (`graphql-ws` also sends a `connection_error` with `extensions.code`).
- When the token a connection was opened with expires, the connection is closed with 4403,
  by a timer set at its `exp`.
- A client that ends an operation (`complete`, or by hanging up) just as the server completes
  it is one INFO line: Strawberry forgot the operation id twice (a `KeyError`) or sent
  `complete` down a closed socket, and logged a traceback for a client doing nothing wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from jobql.errors import RateLimited

if TYPE_CHECKING:
    from collections.abc import Mapping

    from strawberry.http.async_base_view import AsyncWebSocketAdapter
    from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
        ConnectionInitMessage as TransportInitMessage,
    )
    from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message
    from strawberry.subscriptions.protocols.graphql_ws.types import (
        ConnectionInitMessage,
        OperationMessage,
    )

    from jobql.resolvers.context import Context

logger = logging.getLogger(__name__)

INVALID_MESSAGE = 4400
TOKEN_EXPIRED = 4403
INIT_TIMEOUT = 4408
RATE_LIMITED_CLOSE = 4429
MAX_CLOSE_REASON_BYTES = 123  # what a close frame has room for


class ClosingWebSocketAdapter(ASGIWebSocketAdapter):
    """Drops what is sent after the connection was closed (by a timer or a bad frame) instead of
    raising it in every operation still running."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        await super().send_json(message)


def malformed(message: object, operations: tuple[str, ...]) -> str | None:
    """What is wrong with a frame, or None if it is a message jobql can act on. Messages of the
    types in `operations` need a string `id` and a `payload` object with a string `query`."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "A message must be a JSON object with a string 'type'."
    if message["type"] not in operations:
        return None
    payload = message.get("payload")
    if not isinstance(message.get("id"), str):
        return f"A '{message['type']}' message needs a string 'id'."
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return f"A '{message['type']}' message needs a payload with a string 'query'."
    if not isinstance(payload.get("variables"), dict | None):
        return "'variables' must be an object."
    return None


class ExpiryTimer:
    """Closes a connection with 4403 when its token expires."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    def start(self, context: Context, adapter: ASGIWebSocketAdapter) -> None:
        self.cancel()  # a second connection_init (graphql-ws allows it) sets it again
        expires_at = context.principal().expires_at
        if expires_at is None:
            return
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), self._expire, adapter
        )

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self, adapter: ASGIWebSocketAdapter) -> None:
        self._closing = asyncio.ensure_future(
            adapter.close(code=TOKEN_EXPIRED, reason="The token has expired.")
        )


def _adapter(websocket: AsyncWebSocketAdapter) -> ASGIWebSocketAdapter:
    assert isinstance(websocket, ASGIWebSocketAdapter)  # the view's `websocket_adapter_class`
    return websocket


def _rate_limited_reason(exc: RateLimited) -> str:
    return f"RATE_LIMITED: {exc}".encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


class TransportWSHandler(BaseGraphQLTransportWSHandler["Context", None]):
    """`graphql-transport-ws`."""

    expiry: ExpiryTimer

    async def handle(self) -> None:
        self.expiry = ExpiryTimer()
        try:
            await super().handle()
        finally:
            self.expiry.cancel()

    async def handle_message(self, message: Message) -> None:
        problem = malformed(message, ("subscribe",))
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: TransportInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except RateLimited as exc:
            await self.websocket.close(code=RATE_LIMITED_CLOSE, reason=_rate_limited_reason(exc))
            return
        if self.connection_acknowledged:
            self.expiry.start(self.context, _adapter(self.websocket))

    def forget_id(self, id: str) -> None:
        self.operations.pop(id, None)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        try:
            await super().run_operation(operation)
        except WebSocketDisconnected:
            job_id = (operation.variables or {}).get("id")
            about = f" (job {job_id})" if isinstance(job_id, str) else ""
            logger.info(
                "Client hung up before its subscription completed%s",
                about,
                extra={"job_id": job_id if about else None},
            )

    async def handle_task_exception(self, error: Exception) -> None:
        if not isinstance(error, WebSocketDisconnected):  # that one is logged above
            await super().handle_task_exception(error)


class LegacyWSHandler(BaseGraphQLWSHandler["Context", None]):
    """The legacy `graphql-ws` (subscriptions-transport-ws)."""

    expiry: ExpiryTimer

    async def handle(self) -> None:
        self.expiry = ExpiryTimer()
        deadline = asyncio.get_running_loop().call_later(
            self.view.connection_init_wait_timeout.total_seconds(), self._init_timed_out
        )
        self._timing_out: asyncio.Task[None] | None = None
        try:
            await super().handle()
        finally:
            deadline.cancel()
            self.expiry.cancel()

    def _init_timed_out(self) -> None:
        if not self.connection_acknowledged:
            self._timing_out = asyncio.ensure_future(
                self.websocket.close(code=INIT_TIMEOUT, reason="Connection initialisation timeout")
            )

    async def handle_message(self, message: OperationMessage) -> None:
        problem = malformed(message, ("start",))
        if problem is None and message["type"] == "stop" and not isinstance(message.get("id"), str):
            problem = "A 'stop' message needs a string 'id'."
        if problem is not None:
            await self.websocket.close(code=INVALID_MESSAGE, reason=problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except RateLimited as exc:
            error: dict[str, Any] = {"message": str(exc), "extensions": exc.extensions}
            await self.send_message({"type": "connection_error", "payload": error})
            await self.websocket.close(code=RATE_LIMITED_CLOSE, reason=_rate_limited_reason(exc))
            return
        if self.connection_acknowledged:
            self.expiry.start(self.context, _adapter(self.websocket))
