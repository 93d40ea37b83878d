"""Hostile clients against a real web process: what one client sends must not be done to every
other client of the process."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from jobql.client import JOB_QUERY
from tests.conftest import token
from tests.hostile_documents import NORMAL, fragment_fan, hostile_documents

if TYPE_CHECKING:
    from tests.support import WebServer

# The slowest answer, to the attacker or to anyone else, in normal answers' median time.
LATENCY_RATIO_BOUND = 50
GRAPHQL_RESPONSE = "application/graphql-response+json"


async def post(
    client: httpx.AsyncClient, web: WebServer, query: str, user_token: str | None, **extra: Any
) -> tuple[float, httpx.Response]:
    headers = {"Authorization": f"Bearer {user_token}"} if user_token else {}
    started = time.perf_counter()
    response = await client.post(
        web.http_url, json={"query": query, **extra}, headers=headers, timeout=30
    )
    return time.perf_counter() - started, response


def codes(response: httpx.Response) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in response.json()["errors"]]


async def normal_latency(client: httpx.AsyncClient, web: WebServer, runs: int = 30) -> float:
    job_query = {"variables": {"id": "x"}}
    timings = [
        (await post(client, web, JOB_QUERY, token("bystander"), **job_query))[0]
        for _ in range(runs)
    ]
    return statistics.median(timings)


async def test_fragment_fan_is_answered_at_once_and_others_are_served(web: WebServer) -> None:
    async with httpx.AsyncClient() as client:
        normal = await normal_latency(client, web)
        served: list[float] = []
        attacking = True

        async def bystander() -> None:
            while attacking:
                elapsed, response = await post(
                    client, web, JOB_QUERY, token("bystander"), variables={"id": "x"}
                )
                assert response.json() == {"data": {"job": None}}
                served.append(elapsed)

        other = asyncio.create_task(bystander())
        await asyncio.sleep(0)
        fan = fragment_fan(40)
        anonymous_time, anonymous = await post(client, web, fan, None)
        refused_time, refused = await post(client, web, fan, token("attacker"))
        largest_time, largest = await post(client, web, fragment_fan(31), token("attacker"))
        attacking = False
        await other

    print(
        f"\nnormal query {normal * 1000:.1f} ms; 40-level fan without a token "
        f"{anonymous_time * 1000:.1f} ms, with one {refused_time * 1000:.1f} ms; 31-level fan "
        f"run {largest_time * 1000:.1f} ms; another client's slowest answer meanwhile "
        f"{max(served) * 1000:.1f} ms over {len(served)} queries"
    )
    assert codes(anonymous) == ["UNAUTHENTICATED"]
    assert "more than 32 fragments" in refused.json()["errors"][0]["message"]
    assert largest.json() == {"data": {"__typename": "Query"}}
    assert served
    slowest = max(anonymous_time, refused_time, largest_time, *served)
    assert slowest <= LATENCY_RATIO_BOUND * normal


async def test_a_document_is_not_parsed_for_a_caller_without_a_token(web: WebServer) -> None:
    unparsable = "{ job(id: "
    async with httpx.AsyncClient() as client:
        _, anonymous = await post(client, web, unparsable, None)
        _, forged = await post(client, web, unparsable, "not.a.token")
        _, known = await post(client, web, unparsable, token("reader"))

    assert codes(anonymous) == ["UNAUTHENTICATED"]
    assert codes(forged) == ["UNAUTHENTICATED"]
    assert "Syntax Error" in known.json()["errors"][0]["message"]


@pytest.mark.parametrize(("name", "document"), list(hostile_documents()), ids=lambda v: v[:30])
async def test_hostile_documents_without_a_token_are_unauthenticated(
    web: WebServer, name: str, document: str
) -> None:
    async with httpx.AsyncClient() as client:
        _, response = await post(client, web, document, None)
    assert codes(response) == ["UNAUTHENTICATED"], name


async def test_hostile_documents_with_a_token_are_refused_or_cheap(web: WebServer) -> None:
    async with httpx.AsyncClient() as client:
        normal = await normal_latency(client, web)
        timings = {}
        for name, document in hostile_documents(salt="_e2e"):
            elapsed, response = await post(client, web, document, token("attacker"))
            assert response.status_code == 200, (name, response.text)
            timings[name] = elapsed

    print(f"\nnormal query {normal * 1000:.1f} ms; hostile documents with a token:")
    for name, elapsed in timings.items():
        print(f"  {name:40} {elapsed * 1000:7.1f} ms")
    assert max(timings.values()) <= LATENCY_RATIO_BOUND * normal, timings


async def test_unauthenticated_is_401_for_graphql_response_json(web: WebServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            web.http_url, json={"query": NORMAL}, headers={"Accept": GRAPHQL_RESPONSE}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "data" not in response.json()
    assert codes(response) == ["UNAUTHENTICATED"]
