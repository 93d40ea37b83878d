"""JobWatcher against a real Redis: one pub/sub connection, fanned out, failing loudly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobql.watcher import KEEPALIVE, JobWatcher, Mailbox, WatchLost

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from jobql.redis_server import RedisServer


@pytest.fixture
async def watcher(own_redis: RedisServer) -> AsyncIterator[JobWatcher]:
    watcher = JobWatcher(own_redis.url, timeout=1.0)
    yield watcher
    await watcher.close()


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


def channel() -> str:
    return f"celery-task-meta-{uuid.uuid4()}"


async def subscribers(client: Redis, name: str) -> int:
    [(_, count)] = await client.pubsub_numsub(name)
    return int(count)


async def test_message_reaches_every_watch_of_a_channel_over_one_subscription(
    watcher: JobWatcher, client: Redis
) -> None:
    name = channel()
    async with watcher.watch(name) as first, watcher.watch(name) as second:
        assert await subscribers(client, name) == 1
        await client.publish(name, b'{"status": "STARTED"}')
        assert await asyncio.wait_for(first.get(), 2) == b'{"status": "STARTED"}'
        assert await asyncio.wait_for(second.get(), 2) == b'{"status": "STARTED"}'
    await asyncio.sleep(0.1)
    assert await subscribers(client, name) == 0
    assert watcher.channels == 0


async def test_other_channels_are_not_delivered(watcher: JobWatcher, client: Redis) -> None:
    mine, other = channel(), channel()
    async with watcher.watch(mine) as events, watcher.watch(other):
        await client.publish(other, b"not for me")
        await client.publish(mine, b"for me")
        assert await asyncio.wait_for(events.get(), 2) == b"for me"
        assert events.empty()


async def test_many_channels_share_one_connection(watcher: JobWatcher, client: Redis) -> None:
    names = [channel() for _ in range(50)]
    before = len(await client.client_list())
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            await stack.enter_async_context(watcher.watch(name))
        assert len(await client.client_list()) == before + 1
        assert watcher.channels == 50


async def test_watch_lost_when_redis_dies(
    watcher: JobWatcher, own_redis: RedisServer, client: Redis
) -> None:
    async with watcher.watch(channel()) as events:
        own_redis.stop()
        event = await asyncio.wait_for(events.get(), 5)
    assert isinstance(event, WatchLost)

    with pytest.raises((RedisError, OSError, TimeoutError)):
        async with watcher.watch(channel()):
            pass

    own_redis.start()
    name = channel()
    async with watcher.watch(name) as events:
        await client.publish(name, b"back")
        assert await asyncio.wait_for(events.get(), 2) == b"back"


async def test_a_hung_redis_ends_the_watches_once_another_call_fails(
    watcher: JobWatcher, own_redis: RedisServer
) -> None:
    assert own_redis.process is not None
    async with watcher.watch(channel()) as events:
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            # Nothing is sent while nothing happens: the watch waits...
            await asyncio.sleep(1.5)
            assert events.empty()
            # ...until a query or mutation finds Redis unresponsive; then it ends.
            watcher.suspect()
            event = await asyncio.wait_for(events.get(), 5)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
    assert isinstance(event, WatchLost)


async def test_an_idle_watcher_sends_redis_nothing(watcher: JobWatcher, client: Redis) -> None:
    async with watcher.watch(channel()):
        before = (await client.info("stats"))["total_commands_processed"]
        await asyncio.sleep(2)
        after = (await client.info("stats"))["total_commands_processed"]
    assert after - before == 1  # the INFO that took the first count


async def test_the_pub_sub_connection_has_tcp_keepalive(watcher: JobWatcher) -> None:
    async with watcher.watch(channel()):
        connection = watcher._connection
        assert connection is not None
        assert connection._writer is not None
        sock = connection._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        for option, value in KEEPALIVE.items():
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == value


async def test_mailbox_hands_over_events_in_order_and_waits_for_the_next() -> None:
    mailbox = Mailbox()
    mailbox.put_nowait(b"first")
    mailbox.put_nowait(b"second")
    assert await mailbox.get() == b"first"
    assert await mailbox.get() == b"second"
    assert mailbox.empty()
    waiting = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    mailbox.put_nowait(b"third")
    assert await asyncio.wait_for(waiting, 1) == b"third"


async def test_mailbox_stays_usable_after_a_cancelled_get() -> None:
    mailbox = Mailbox()
    waiting = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    mailbox.put_nowait(b"later")
    assert await asyncio.wait_for(mailbox.get(), 1) == b"later"
