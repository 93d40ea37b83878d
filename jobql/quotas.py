"""What one user may hold at once in a web process: subscriptions, connections, uploads.

Counted in the process's memory: the counts cost nothing per request and go when the process
does. With several web processes (`jobql web --workers N`) a user may hold up to N times each
limit in all; each process is protected all the same, which is what the limits are for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from jobql.errors import RateLimited

if TYPE_CHECKING:
    from collections.abc import Iterator


class UserQuota:
    """At most `limit` of one thing (`what`, plural) held by each user at once."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self._held: dict[str, int] = {}

    def held(self, user_id: str) -> int:
        return self._held.get(user_id, 0)

    def acquire(self, user_id: str) -> None:
        """Count one more, or raise `RATE_LIMITED` if the user already holds `limit`."""
        held = self._held.get(user_id, 0)
        if held >= self.limit:
            raise RateLimited(
                f"Too many open {self.what}: at most {self.limit} per user. "
                f"Close one and try again."
            )
        self._held[user_id] = held + 1

    def release(self, user_id: str) -> None:
        held = self._held.get(user_id, 0) - 1
        if held > 0:
            self._held[user_id] = held
        else:
            # Nothing is kept for a user who holds nothing: memory goes with the last one.
            self._held.pop(user_id, None)

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        self.acquire(user_id)
        try:
            yield
        finally:
            self.release(user_id)
