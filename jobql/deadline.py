"""A timeout that does not count the event loop's own lag.

A Redis call that takes longer than `JOBQL_REDIS_TIMEOUT` means Redis is in trouble, unless the
time went by while the event loop was busy elsewhere: under a burst of thousands of WebSocket
handshakes one turn of the loop can take a second, and a reply that arrived in a millisecond
waits for it. `asyncio.timeout` counts that wait, and so answered a healthy Redis with
SERVICE_UNAVAILABLE. Here the time is counted in ticks: a check every quarter of the timeout
adds the time since the last one, but never more than one tick, however late the loop ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TICKS = 4
# redis-py's own timeouts count the event loop's lag: where a lag-free deadline covers a call,
# they are only a backstop, this many times longer.
BACKSTOP_FACTOR = 10


@contextlib.asynccontextmanager
async def lag_free_timeout(seconds: float) -> AsyncIterator[None]:
    """Raise `TimeoutError` once the body has taken `seconds` of the loop's responsive time."""
    loop = asyncio.get_running_loop()
    tick = seconds / TICKS
    spent = 0.0
    last = loop.time()
    handle: asyncio.TimerHandle | None = None
    async with asyncio.timeout(None) as timeout:

        def check() -> None:
            nonlocal spent, last, handle
            now = loop.time()
            spent += min(now - last, tick)  # a late check was the loop's lag, not the call's
            last = now
            if spent >= seconds - 1e-9:
                timeout.reschedule(now)  # expires now: the body gets TimeoutError
            else:
                handle = loop.call_later(tick, check)

        handle = loop.call_later(tick, check)
        try:
            yield
        finally:
            if handle is not None:
                handle.cancel()
