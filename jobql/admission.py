"""Admission control: a web process holds at most `JOBQL_MAX_CONNECTIONS` GraphQL requests and
WebSockets at once, and tells the next one it is overloaded (HTTP 503 with `Retry-After`,
WebSocket close 1013 "try again later") instead of taking on more than its event loop can turn
around in time, which would show as timeouts to everyone (Redis calls included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

TRY_AGAIN_LATER = 1013
RETRY_AFTER_SECONDS = 2


class Admission:
    def __init__(self, app: ASGIApp, max_connections: int) -> None:
        self.app = app
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.open >= self.max_connections:
            self.refused += 1
            await _overloaded(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


async def _overloaded(scope: Scope, receive: Receive, send: Send) -> None:
    message = f"The server is overloaded; try again in {RETRY_AFTER_SECONDS} s."
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        # Accepted only to be closed with a code a client can act on (a refused handshake is
        # a bare HTTP 403); the first subprotocol offered is echoed so that clients proceed.
        subprotocols = scope.get("subprotocols") or [None]
        await send({"type": "websocket.accept", "subprotocol": subprotocols[0]})
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": message})
        return
    body = {
        "errors": [
            {
                "message": message,
                "extensions": {"code": "OVERLOADED", "retryAfter": RETRY_AFTER_SECONDS},
            }
        ]
    }
    response = JSONResponse(
        body,
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
    )
    await response(scope, receive, send)
