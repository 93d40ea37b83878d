"""Redis clients for the web process, tuned to fail fast rather than hang."""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from jobql.deadline import BACKSTOP_FACTOR, lag_free_timeout

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jobql.settings import Settings

    Command = Sequence[Any]
    Caller = tuple[Sequence[Command], asyncio.Future[list[Any]]]

POOL_SIZE = 3


def create_redis(settings: Settings) -> Redis:
    """A small shared pool for commands.

    A single immediate retry of a refused connection, and a pool that waits for a free
    connection instead of raising; the time a whole call may take (connecting and waiting for
    a connection included) is the caller's lag-free deadline (`AutoPipeline`,
    `MutationRateLimit`): together they make an unreachable Redis an answer within about one
    timeout, not a hang and not a spurious error under load.
    """
    backstop = settings.redis_timeout * BACKSTOP_FACTOR
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE,
        client_name="jobql-web",
        protocol=3,  # said, not left to redis-py's default (which changed in redis-py 8)
        timeout=backstop,
        socket_connect_timeout=backstop,
        socket_timeout=backstop,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


def text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless a client decodes them)."""
    return value.decode() if isinstance(value, bytes) else value


class AutoPipeline:
    """Sends the commands of concurrent callers to Redis together, in one pipeline.

    A caller's commands wait for the event loop's current turn to end, then go with those
    of every caller that came in the same turn: one round trip on one connection, however
    many requests are in flight. Without it, a small pool serving many concurrent requests
    has them queue for its connections, and that wait sets the tail latency. At most
    `max_in_flight` pipelines (the pool's size) are out at once: callers that come while
    they all are wait together for the next one, so that when the event loop is slow to turn
    (a burst of connections) pipelines don't queue behind each other for the pool. A caller
    cancelled before its turn sends nothing. With a `timeout`, a round trip that takes longer,
    not counting the event loop's lag, raises `TimeoutError` to its callers.
    """

    def __init__(
        self, redis: Redis, timeout: float | None = None, max_in_flight: int = POOL_SIZE
    ) -> None:
        self.redis = redis
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._waiting: list[Caller] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def execute(self, *commands: Command) -> list[Any]:
        """Each command's reply, in order; a command that failed raises its error."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[Any]] = loop.create_future()
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send_waiting)
        self._waiting.append((commands, reply))
        return await reply

    def _send_waiting(self) -> None:
        self._scheduled = False
        if len(self._sending) >= self.max_in_flight:
            return  # the next to finish sends them
        callers = [caller for caller in self._waiting if not caller[1].done()]
        self._waiting = []
        if callers:
            task = asyncio.ensure_future(self._send(callers))
            self._sending.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._waiting and not self._scheduled:
            self._send_waiting()

    async def _send(self, callers: list[Caller]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for commands, _ in callers:
                    for command in commands:
                        pipe.execute_command(*command)
                if self.timeout is None:
                    replies = await pipe.execute(raise_on_error=False)
                else:
                    async with lag_free_timeout(self.timeout):
                        replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, reply in callers:
                if not reply.done():
                    reply.set_exception(_own_copy(exc))
            return
        except asyncio.CancelledError:
            for _, reply in callers:
                reply.cancel()
            raise
        start = 0
        for commands, reply in callers:
            mine = replies[start : start + len(commands)]
            start += len(commands)
            if reply.done():
                continue
            error = next((each for each in mine if isinstance(each, Exception)), None)
            if error is None:
                reply.set_result(mine)
            else:
                reply.set_exception(error)


def _own_copy(error: Exception) -> Exception:
    """`error` for one caller: every caller that raised one shared error would add its
    frames to that one traceback."""
    mine = copy.copy(error)
    mine.__cause__ = error
    return mine
