"""The Redis calls' timeout counts the time the event loop was free, not its lag."""

from __future__ import annotations

import asyncio
import time

import pytest

from jobql.deadline import lag_free_timeout


async def test_a_call_that_takes_too_long_times_out() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with lag_free_timeout(0.2):
            await asyncio.sleep(10)
    elapsed = loop.time() - started
    assert 0.2 <= elapsed < 1.0


async def test_a_call_that_finishes_in_time_is_left_alone() -> None:
    async with lag_free_timeout(0.2):
        await asyncio.sleep(0.05)


async def test_time_the_loop_spent_elsewhere_is_not_counted() -> None:
    """The loop is blocked for three times the timeout while a reply is already there: a plain
    `asyncio.timeout` gives up, this one does not."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()

    def busy_loop_then_reply() -> None:
        time.sleep(0.6)  # what a burst of handshakes does to everyone else
        reply.set_result("PONG")

    loop.call_soon(busy_loop_then_reply)
    async with lag_free_timeout(0.2):
        assert await asyncio.shield(reply) == "PONG"

    plain: asyncio.Future[str] = loop.create_future()

    def busy_loop_then_reply_later() -> None:
        time.sleep(0.6)
        loop.call_soon(plain.set_result, "PONG")

    loop.call_soon(busy_loop_then_reply_later)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await asyncio.shield(plain)
