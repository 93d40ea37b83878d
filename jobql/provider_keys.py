"""The signing keys of an identity provider, from its JSON Web Key Set (`JOBQL_JWKS_URL`).

Keys are fetched with PyJWT's `PyJWKClient` in a thread (it is synchronous) and kept by key
id. A token naming an unknown key id triggers a refresh, at most one every `min_interval`
seconds however many such tokens arrive: random key ids cost an attacker's requests, not one
fetch each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from jwt import PyJWKClient, PyJWTError

if TYPE_CHECKING:
    from jwt import PyJWK

logger = logging.getLogger(__name__)

MIN_REFRESH_INTERVAL = 30.0
FETCH_TIMEOUT = 5.0


class ProviderKeys:
    def __init__(
        self,
        url: str,
        min_interval: float = MIN_REFRESH_INTERVAL,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        # jobql keeps the keys itself: the client's own cache would refetch on its own timer.
        self.client = PyJWKClient(url, cache_jwk_set=False, timeout=fetch_timeout)
        self.min_interval = min_interval
        self.fetches = 0
        self._keys: dict[str, PyJWK] = {}
        self._refreshed_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None

    def get(self, key_id: str) -> PyJWK | None:
        return self._keys.get(key_id)

    async def ensure(self, key_id: str) -> None:
        """Make sure a key the provider publishes under `key_id` is known, if there is one."""
        if key_id in self._keys:
            return
        if self._refreshing is None:
            if time.monotonic() - self._refreshed_at < self.min_interval:
                return
            self._refreshed_at = time.monotonic()
            self._refreshing = asyncio.create_task(self._refresh(), name="jobql-jwks-refresh")
            self._refreshing.add_done_callback(self._refreshed)
        # One fetch for every request waiting on it; a cancelled request does not cancel it.
        await asyncio.shield(self._refreshing)

    async def refresh(self) -> None:
        """Fetch the key set now (at start-up), whatever the interval."""
        self._refreshed_at = time.monotonic()
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            keys = await asyncio.to_thread(self._fetch)
        except (PyJWTError, OSError, ValueError) as exc:  # unreachable, or no key set
            logger.warning("Cannot fetch the identity provider's keys: %s", exc)
            return
        self._keys = keys

    def _fetch(self) -> dict[str, PyJWK]:
        self.fetches += 1
        key_set = self.client.get_jwk_set(refresh=True)
        return {
            key.key_id: key
            for key in key_set.keys
            if key.key_id and key.public_key_use in (None, "sig")
        }

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
