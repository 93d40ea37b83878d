"""Redis goes away under a running web process, then comes back."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from gql.transport.exceptions import TransportQueryError

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import JOB_QUERY
from tests.conftest import token
from tests.graphql_clients import execute, follow, http_client, ws_client
from tests.support import SEND_WELCOME, start_web

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from jobql.redis_server import RedisServer
    from jobql.settings import Settings
    from tests.support import WebServer

ANSWER_WITHIN = 5  # seconds; the client gives up after this, so a hang fails the test


@pytest.fixture
def outage_web(
    own_redis: RedisServer,
    make_settings: Callable[..., Settings],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebServer]:
    settings = make_settings(redis_url=own_redis.url, redis_timeout=0.5)
    server = start_web(settings, tmp_path_factory.mktemp("logs") / "outage-web.log")
    yield server
    server.process.stop()


async def send(web: WebServer, address: str) -> dict[str, object]:
    client = http_client(web, token("backend", SCOPE_SEND_EMAIL))
    result = await asyncio.wait_for(
        execute(client, SEND_WELCOME, email=address, username="U"), ANSWER_WITHIN
    )
    return result["sendWelcomeEmail"]  # type: ignore[no-any-return]


async def test_redis_down_is_service_unavailable_then_recovers(
    outage_web: WebServer, own_redis: RedisServer
) -> None:
    job = await send(outage_web, "before@example.com")
    subscription = asyncio.create_task(anext(aiter_skip_first(outage_web, str(job["id"]))))
    await asyncio.sleep(0.5)  # the subscription is open and waiting

    own_redis.stop()

    for attempt in (send(outage_web, "during@example.com"), query(outage_web, str(job["id"]))):
        with pytest.raises(TransportQueryError) as raised:
            await attempt
        assert raised.value.errors
        assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    with pytest.raises(TransportQueryError) as raised:
        await asyncio.wait_for(subscription, ANSWER_WITHIN)
    assert raised.value.errors
    assert raised.value.errors[0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"

    own_redis.start()

    after = await send(outage_web, "after@example.com")
    assert (await query(outage_web, str(after["id"])))["job"]["state"] == "PENDING"


async def query(web: WebServer, job_id: str) -> dict[str, dict[str, object]]:
    client = http_client(web, token("backend"))
    return await asyncio.wait_for(execute(client, JOB_QUERY, id=job_id), ANSWER_WITHIN)


async def aiter_skip_first(web: WebServer, job_id: str):  # type: ignore[no-untyped-def]
    """The events after the first snapshot (no worker runs here, so none should come)."""
    first = True
    async for event in follow(ws_client(web, token("backend")), job_id):
        if first:
            first = False
            continue
        yield event
