"""One Redis pub/sub connection per web process, fanned out to every subscription.

Celery's Redis result backend PUBLISHes each state write on a channel named
like the key it writes (`celery-task-meta-<id>`). A subscription asks the
watcher for a channel; the watcher subscribes once per channel, however many
subscriptions share it, and hands every message to each of their mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from typing import TYPE_CHECKING

from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from jobql.deadline import BACKSTOP_FACTOR, lag_free_timeout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio.connection import AbstractConnection

logger = logging.getLogger(__name__)

# Probe an idle connection after 10 s, every 5 s, and give up after 3 unanswered probes.
KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}


class WatchLost(ConnectionError):
    """The pub/sub connection failed: a subscription can no longer hear its job."""


class DataLost(Exception):
    """Redis lost its data (`jobql.epoch`): the job watched may be gone with it."""


Event = bytes | WatchLost | DataLost


class Mailbox:
    """The events sent to one watch and not read yet: a one-reader `asyncio.Queue`, at a
    tenth of its size (a watch is held for every open subscription)."""

    __slots__ = ("_events", "_waiter")

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: Event) -> None:
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event:
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.pop(0)

    def empty(self) -> bool:
        return not self._events


class JobWatcher:
    def __init__(self, redis_url: str, timeout: float) -> None:
        self._pool = ConnectionPool.from_url(
            # RESP2: pub/sub messages arrive as ordinary replies, not RESP3 push frames.
            redis_url,
            protocol=2,
            client_name="jobql-watch",
            # The watcher's own deadlines don't count the event loop's lag; redis-py's would.
            socket_connect_timeout=timeout * BACKSTOP_FACTOR,
            # A Redis host that vanished is found by the kernel's probes, which are not
            # Redis commands: a watcher with nothing to hear sends Redis nothing.
            socket_keepalive=True,
            socket_keepalive_options=KEEPALIVE,
        )
        self._timeout = timeout
        self._probe: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._mailboxes: dict[bytes, set[Mailbox]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._last_reply = 0.0
        self._closing: asyncio.Future[None] | None = None

    @property
    def channels(self) -> int:
        return len(self._mailboxes)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Mailbox]:
        """Yield a mailbox of the channel's messages, once Redis has confirmed the subscription.

        The mailbox receives each message's payload, then a `WatchLost` if the
        connection fails. Raises `RedisError` if Redis cannot be reached.
        """
        key = channel.encode()
        mailbox = Mailbox()
        try:
            async with self._lock:
                connection = await self._connect()
                listeners = self._mailboxes.setdefault(key, set())
                listeners.add(mailbox)
                if len(listeners) == 1:
                    self._confirmations[key] = asyncio.get_running_loop().create_future()
                    await self._send(connection, "SUBSCRIBE", key)
                confirmation = self._confirmations.get(key)
            if confirmation is not None:
                async with lag_free_timeout(self._timeout):
                    await asyncio.shield(confirmation)
            yield mailbox
        finally:
            await self._forget(key, mailbox)

    def data_lost(self) -> None:
        """Tell every watch that Redis lost its data: each asks after its own job once."""
        for listeners in self._mailboxes.values():
            for mailbox in listeners:
                mailbox.put_nowait(DataLost())

    async def close(self) -> None:
        async with self._lock:
            self._fail(WatchLost("the web process is shutting down"))
        await self._pool.aclose()

    async def _forget(self, key: bytes, mailbox: Mailbox) -> None:
        async with self._lock:
            listeners = self._mailboxes.get(key)
            if listeners is None or mailbox not in listeners:
                return
            listeners.discard(mailbox)
            if listeners:
                return
            del self._mailboxes[key]
            self._confirmations.pop(key, None)
            if self._connection is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._send(self._connection, "UNSUBSCRIBE", key)

    async def _connect(self) -> AbstractConnection:
        if self._connection is not None:
            return self._connection
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        async with lag_free_timeout(self._timeout):
            await connection.connect()  # type: ignore[no-untyped-call]
        self._connection = connection
        self._last_reply = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read(connection), name="jobql-watcher-reader")
        return connection

    async def _send(self, connection: AbstractConnection, *args: bytes | str) -> None:
        async with lag_free_timeout(self._timeout):
            await connection.send_command(*args, check_health=False)

    async def _read(self, connection: AbstractConnection) -> None:
        try:
            while True:
                reply = await connection.read_response(timeout=math.inf)
                self._last_reply = asyncio.get_running_loop().time()
                self._dispatch(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the connection ends every watch on it
            logger.warning("Redis pub/sub connection lost: %s", exc)
            async with self._lock:
                if self._connection is connection:
                    self._fail(WatchLost(f"lost the Redis pub/sub connection: {exc}"))

    def suspect(self) -> None:
        """Another Redis call failed: PING, and drop the connection if no answer comes.

        A Redis that hangs keeps its connections open; this is how open subscriptions
        learn of it, as soon as anyone's query or mutation does.
        """
        connection = self._connection
        if connection is None or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.create_task(self._ping(connection), name="jobql-watcher-probe")

    async def _ping(self, connection: AbstractConnection) -> None:
        sent = asyncio.get_running_loop().time()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._send(connection, "PING")
            await asyncio.sleep(self._timeout)
        if self._last_reply < sent and self._connection is connection:
            await connection.disconnect(nowait=True)

    def _dispatch(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel, payload = reply[0], reply[1], reply[2]
        if kind == b"message":
            for mailbox in self._mailboxes.get(channel, ()):
                mailbox.put_nowait(payload)
        elif kind == b"subscribe":
            confirmation = self._confirmations.get(channel)
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(None)

    def _fail(self, error: WatchLost) -> None:
        """Tell every watch its connection is gone, and start afresh on the next one."""
        for listeners in self._mailboxes.values():
            for mailbox in listeners:
                mailbox.put_nowait(error)
        for confirmation in self._confirmations.values():
            if not confirmation.done():
                confirmation.set_exception(error)
        current = asyncio.current_task()
        for task in (self._reader, self._probe):
            if task is not None and task is not current:
                task.cancel()
        self._reader = self._probe = None
        self._mailboxes.clear()
        self._confirmations.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            self._closing = asyncio.ensure_future(connection.disconnect(nowait=True))
