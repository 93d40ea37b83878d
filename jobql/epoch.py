"""Finds out that Redis lost its data: restarted without persistence, flushed, or failed
over to an empty replica.

Every web process keeps one key, `jobql:epoch`, in Redis (made once, with no expiry, by
whichever process comes first) and remembers its value. A look is one round trip, at
most every `JOBQL_DATA_LOSS_CHECK` seconds, whatever the number of jobs or subscribers:
`SET NX` of a new value and `GET`. The key gone or changed means the data went with it,
and the watcher tells every open watch, each of which then asks once after its own job
(`jobql.resolvers.subscription`), which ends `JOB_LOST` if its record is gone. Workers
look too, and sweep the uploads of lost jobs at once (`jobql.tasks.housekeeping`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis import Redis

    from jobql.store import JobStore
    from jobql.watcher import JobWatcher

EPOCH_KEY = "jobql:epoch"
logger = logging.getLogger(__name__)


class DataEpoch:
    """The epoch this process has seen, and whether Redis still holds it."""

    def __init__(self) -> None:
        self._seen: bytes | None = None

    async def lost(self, store: JobStore) -> bool:
        """Whether Redis lost its data since the last look (False at the first)."""
        _, current = await store.pipeline.execute(
            ("SET", EPOCH_KEY, _new_epoch(), "NX"), ("GET", EPOCH_KEY)
        )
        return self._changed(current)

    def lost_now(self, client: Redis) -> bool:
        """`lost`, with a blocking client (the worker's timers)."""
        with client.pipeline(transaction=False) as pipe:
            pipe.set(EPOCH_KEY, _new_epoch(), nx=True)
            pipe.get(EPOCH_KEY)
            _, current = pipe.execute()
        return self._changed(current)

    def _changed(self, current: bytes | None) -> bool:
        seen, self._seen = self._seen, current
        return seen is not None and current != seen


def _new_epoch() -> bytes:
    return secrets.token_hex(16).encode()


async def watch_for_data_loss(
    store: JobStore, watcher: JobWatcher, every: float, epoch: DataEpoch | None = None
) -> None:
    """Look every `every` seconds until cancelled; a Redis that cannot be reached is
    looked at again next time (its faults are answered where they are met)."""
    epoch = epoch or DataEpoch()
    while True:
        try:
            if await epoch.lost(store):
                logger.error("Redis lost its data: jobs accepted before now are gone")
                watcher.data_lost()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("The data-loss check could not reach Redis: %s", exc)
        await asyncio.sleep(every)
