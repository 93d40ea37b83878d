"""Real GraphQL clients (gql) over HTTP and WebSocket, pointed at a test web server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gql import Client, gql
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

# The documents the terminal client sends; the tests send the same ones.
from jobql.client import JOB_SUBSCRIPTION

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from tests.support import WebServer

GRAPHQL_TRANSPORT_WS = "graphql-transport-ws"
GRAPHQL_WS = "graphql-ws"


def http_client(web: WebServer, token: str | None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = HTTPXAsyncTransport(url=web.http_url, headers=headers, timeout=30)
    return Client(transport=transport)


def ws_client(web: WebServer, token: str | None, protocol: str = GRAPHQL_TRANSPORT_WS) -> Client:
    payload = {"Authorization": f"Bearer {token}"} if token else {}
    transport = WebsocketsTransport(url=web.ws_url, init_payload=payload, subprotocols=[protocol])
    return Client(transport=transport)


async def execute(
    client: Client, document: str, upload_files: bool = False, **variables: Any
) -> dict[str, Any]:
    request = gql(document)
    request.variable_values = variables
    async with client as session:
        result: dict[str, Any] = await session.execute(request, upload_files=upload_files)
    return result


async def follow(client: Client, job_id: str) -> AsyncGenerator[dict[str, Any], None]:
    request = gql(JOB_SUBSCRIPTION)
    request.variable_values = {"id": job_id}
    async with client as session:
        async for result in session.subscribe(request):
            yield result["job"]
