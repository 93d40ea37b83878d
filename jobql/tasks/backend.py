"""Celery's Redis result backend, storing a state in one round trip instead of two.

Celery reads a task's stored state before each write, so that a late write from a
lost worker cannot replace SUCCESS, then writes and PUBLISHes the new one. Here the
check and the write are one script: a single round trip, and no gap between them.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

if TYPE_CHECKING:
    from redis.commands.core import Script

STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['status'] == 'SUCCESS' then
    return 0
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def backend_url(redis_url: str) -> str:
    """The `result_backend` that selects this backend, in Celery's `backend+url` form."""
    return f"{__name__}:JobResultBackend+{redis_url}"


class JobResultBackend(RedisBackend):
    if TYPE_CHECKING:  # what celery-types leaves out of RedisBackend
        _MAX_STR_VALUE_SIZE: int
        expires: int | None
        failure_expires: int | None

        def _get_result_meta(self, **fields: Any) -> dict[str, Any]: ...

    @cached_property
    def _store_script(self) -> Script:
        return self.client.register_script(STORE_UNLESS_SUCCEEDED)  # type: ignore[no-any-return]

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            message = "value too large for Redis backend"
            raise BackendStoreError(message, state=state, task_id=task_id)  # type: ignore[call-arg]
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        self.ensure(self._store_script, ([key], [value, int(expires or 0)]))
        return result
