"""Per-user limits on mutations, counted in Redis so that every web process shares them."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from jobql.deadline import lag_free_timeout
from jobql.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis


class MutationRateLimit:
    """`per_minute` mutations per user (the token's `sub`), in a sliding window."""

    def __init__(self, redis: Redis, redis_url: str, per_minute: int, timeout: float) -> None:
        self.item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self.timeout = timeout  # for both Redis calls together, not counting the loop's lag
        # The storage borrows the web process's pool: no connections of its own.
        storage = RedisStorage(
            f"async+{redis_url}",
            implementation="redispy",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # a documented option
        )
        self.limiter = SlidingWindowCounterRateLimiter(storage)

    async def check(self, user_id: str) -> None:
        """Count one mutation; raise `RATE_LIMITED` with `retryAfter` once over the limit."""
        if self.item is None:
            return
        async with lag_free_timeout(self.timeout):
            if await self.limiter.hit(self.item, "mutation", user_id):
                return
            stats = await self.limiter.get_window_stats(self.item, "mutation", user_id)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"Too many requests: at most {self.item.amount} a minute. "
            f"Try again in {retry_after} s.",
            retryAfter=retry_after,
        )
