"""Clients that behave as an attacker would, or as plainly as the protocol allows: raw sockets
for HTTP (to send what a client library won't, as slowly as we like) and raw WebSockets for both
GraphQL subscription protocols."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import websockets
from websockets.typing import Subprotocol

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_SUBSCRIPTION
from tests.conftest import token
from tests.graphql_clients import GRAPHQL_TRANSPORT_WS, GRAPHQL_WS
from tests.support import SEND_WELCOME

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from tests.support import WebServer

SUBSCRIBE = {GRAPHQL_TRANSPORT_WS: "subscribe", GRAPHQL_WS: "start"}
RESULT = {GRAPHQL_TRANSPORT_WS: "next", GRAPHQL_WS: "data"}


async def pending_job(web: WebServer, user: str) -> str:
    """A job of `user`'s that stays PENDING for ten minutes: something to subscribe to."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            web.http_url,
            json={
                "query": SEND_WELCOME,
                "variables": {
                    "email": f"w-{uuid.uuid4().hex[:10]}@example.com",
                    "username": "W",
                    "delaySeconds": 600,
                },
            },
            headers={"Authorization": f"Bearer {token(user, SCOPE_SEND_EMAIL)}"},
        )
    return str(response.json()["data"]["sendWelcomeEmail"]["id"])


async def connect(
    web: WebServer, protocol: str, bearer: str | None, open_timeout: float = 30
) -> ClientConnection:
    """A WebSocket of `protocol` that sent `connection_init` with `bearer` (none if None)."""
    ws = await websockets.connect(
        web.ws_url,
        subprotocols=[Subprotocol(protocol)],
        open_timeout=open_timeout,
        max_size=None,
        ping_interval=None,
    )
    payload = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    return ws


async def receive(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    """The next protocol message, skipping graphql-ws keep-alives."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("type") != "ka":
            return dict(message)


async def receive_for(ws: ClientConnection, op_id: str, timeout: float = 30) -> dict[str, Any]:
    """The next message about operation `op_id`, skipping the others'."""
    while True:
        message = await receive(ws, timeout)
        if message.get("id") == op_id:
            return message


async def accepted(web: WebServer, protocol: str, bearer: str) -> ClientConnection:
    ws = await connect(web, protocol, bearer)
    ack = await receive(ws)
    assert ack["type"] == "connection_ack", ack
    return ws


async def subscribe(ws: ClientConnection, protocol: str, op_id: str, job_id: str) -> None:
    message = {
        "type": SUBSCRIBE[protocol],
        "id": op_id,
        "payload": {"query": JOB_SUBSCRIPTION, "variables": {"id": job_id}},
    }
    await ws.send(json.dumps(message))


def error_code(message: dict[str, Any]) -> str | None:
    """The `extensions.code` of an operation's error, however the protocol carries it."""
    payload = message.get("payload")
    errors = payload.get("errors") if isinstance(payload, dict) else payload
    if isinstance(payload, dict) and "extensions" in payload:
        errors = [payload]
    if not errors:
        return None
    return str(errors[0].get("extensions", {}).get("code"))


async def close_code(ws: ClientConnection, timeout: float = 30) -> int | None:
    """Read until the server closes; its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def raw_http(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader, timeout: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (or the timeout)."""
    answer = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                answer += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return answer
