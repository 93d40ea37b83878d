"""Redis clients for the web process, tuned to fail fast rather than hang."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

if TYPE_CHECKING:
    from jobql.settings import Settings

POOL_SIZE = 3


def create_redis(settings: Settings) -> Redis:
    """A small shared pool for commands.

    Short connect and read timeouts, a single immediate retry of a refused
    connection, and a pool that waits (briefly) for a free connection instead of
    raising: together they make an unreachable Redis an answer within about one
    timeout, not a hang and not a spurious error under load.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE,
        client_name="jobql-web",
        timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


def text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless a client decodes them)."""
    return value.decode() if isinstance(value, bytes) else value
