"""The web process's Redis clients, against a real Redis: the pool and the auto-pipeline."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from jobql.connections import POOL_SIZE, AutoPipeline, create_redis
from jobql.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from redis.asyncio import Redis

    from jobql.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Redis]:
    redis = create_redis(settings)
    yield redis
    await redis.aclose()


def key() -> str:
    return f"test-connections:{uuid.uuid4().hex}"


async def test_callers_of_one_turn_share_one_connection(client: Redis) -> None:
    pipeline = AutoPipeline(client)

    replies = await asyncio.gather(*(pipeline.execute(("CLIENT", "ID")) for _ in range(50)))

    assert len({reply[0] for reply in replies}) == 1


async def test_callers_far_outnumbering_the_pool_all_get_their_own_replies(
    client: Redis,
) -> None:
    pipeline = AutoPipeline(client)
    keys = [key() for _ in range(POOL_SIZE * 50)]

    async def set_and_get(name: str) -> list[object]:
        await asyncio.sleep(0)  # spread the callers over several turns
        return await pipeline.execute(("SET", name, name, "EX", 60), ("GET", name))

    replies = await asyncio.gather(*(set_and_get(name) for name in keys))

    assert replies == [[True, name.encode()] for name in keys]


async def test_a_failing_command_raises_for_its_caller_only(client: Redis) -> None:
    pipeline = AutoPipeline(client)
    text, counter = key(), key()
    await client.set(text, "not a number", ex=60)

    outcomes: list[list[object] | BaseException] = await asyncio.gather(
        pipeline.execute(("INCR", text)),
        pipeline.execute(("INCR", counter), ("EXPIRE", counter, 60)),
        return_exceptions=True,
    )

    assert isinstance(outcomes[0], ResponseError)
    assert outcomes[1] == [1, True]


async def test_a_caller_cancelled_before_its_turn_sends_nothing(client: Redis) -> None:
    pipeline = AutoPipeline(client)
    cancelled, kept = key(), key()

    doomed = asyncio.ensure_future(pipeline.execute(("SET", cancelled, "1", "EX", 60)))
    await asyncio.sleep(0)  # it is waiting for its turn now
    doomed.cancel()
    await pipeline.execute(("SET", kept, "1", "EX", 60))

    assert doomed.cancelled()
    assert await client.exists(cancelled) == 0
    assert await client.exists(kept) == 1


async def test_redis_unreachable_fails_every_caller_of_the_turn(
    make_settings: Callable[..., Settings],
) -> None:
    redis = create_redis(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    pipeline = AutoPipeline(redis)
    try:
        outcomes = await asyncio.gather(
            *(pipeline.execute(("GET", key())) for _ in range(3)), return_exceptions=True
        )
    finally:
        await redis.aclose()

    errors = [outcome for outcome in outcomes if isinstance(outcome, RedisConnectionError)]
    assert len(errors) == 3, outcomes
    # Each its own, so that no caller's traceback grows with the others' frames.
    assert len({id(error) for error in errors}) == 3
    assert len({id(error.__cause__) for error in errors}) == 1
