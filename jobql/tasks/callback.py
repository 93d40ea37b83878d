"""The task that POSTs a finished job to its callback URL, signed, until a 2xx answers.

The script that ends a job (in the worker, the web process's cancel or `jobql purge`)
queues this task's message, once; its task id is the delivery's id, the same on every
attempt (a retry is the same task again, a redelivery the same message). Each attempt
reads the job as it is, POSTs it, and counts itself in the job's callback hash; anything
but a 2xx is tried again after `JOBQL_CALLBACK_RETRY_BACKOFF` seconds, doubling, up to
`JOBQL_CALLBACK_MAX_ATTEMPTS` POSTs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import httpx
from celery import Task

from jobql.callbacks import (
    CALLBACK_FIELDS,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    CallbackUrlRefused,
    callback_body,
    callback_status,
    checked_callback_url,
    signature,
)
from jobql.jobs import (
    CALLBACK_TASK,
    RECORD_FIELDS,
    callback_key,
    load_meta,
    meta_key,
    record_key,
    snapshot,
    utcnow,
)
from jobql.logs import current_job_id

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from jobql.registry import Kinds
    from jobql.settings import Settings

logger = logging.getLogger(__name__)

# KEYS: the callback hash. ARGV: when it was delivered ('' if it was not), the error ('' if
# none). Counts one attempt and notes how it went, if the hash is still there (an HSET on
# an expired one would make one that never expires). Returns the attempts so far, 0 if
# the hash is gone.
RECORD_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'delivered_at', ARGV[1])
    redis.call('HDEL', KEYS[1], 'last_error')
else
    redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
end
return attempts
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    error: str | None = None


class CallbackTask(Task):  # type: ignore[type-arg]
    """Delivers callbacks; its result is not stored (the callback hash says how it went)."""

    settings: Settings
    kinds: Kinds
    ignore_result = True
    resultrepr_maxsize = 0

    @property
    def redis(self) -> Redis:
        return cast("Redis", self.backend.client)  # type: ignore[attr-defined]

    def record_attempt(self, job_id: str, outcome: Outcome) -> int:
        """Count the attempt in the callback hash (see RECORD_ATTEMPT); the attempts so far."""
        delivered_at = utcnow().isoformat() if outcome.delivered else ""
        keys, argv = [callback_key(job_id)], [delivered_at, outcome.error or ""]
        return int(self.redis.eval(RECORD_ATTEMPT, len(keys), *keys, *argv))


def deliver_callback(self: CallbackTask, *, job_id: str) -> None:
    """POST the job to its callback URL, once more."""
    current_job_id.set(job_id)
    settings = self.settings
    with self.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(record_key(job_id), *RECORD_FIELDS)
        pipe.get(meta_key(job_id))
        pipe.hmget(callback_key(job_id), *CALLBACK_FIELDS)
        values, raw_meta, callback = pipe.execute()
    status = callback_status(callback)
    if status is None or status.delivered_at is not None:
        return  # expired, or delivered already (this is a redelivery of a done task)
    record = {f: v.decode() for f, v in zip(RECORD_FIELDS, values, strict=True) if v}
    meta = load_meta(raw_meta)
    if "owner" not in record or meta is None:
        logger.warning("The job expired before its callback could be delivered")
        return
    try:
        url = checked_callback_url(status.url, settings.callback_endpoints)
    except CallbackUrlRefused as exc:
        self.record_attempt(job_id, Outcome(False, f"Not sent: {exc}"))
        return
    body = callback_body(snapshot(job_id, record, meta), self.kinds)
    outcome = post(url, body, str(self.request.id), settings)
    attempts = self.record_attempt(job_id, outcome)
    if outcome.delivered or attempts == 0:
        return
    if attempts >= settings.callback_max_attempts:
        logger.warning("Gave up on the job's callback after %d attempts", attempts)
        return
    countdown = settings.callback_retry_backoff * 2 ** (attempts - 1)
    raise self.retry(countdown=countdown, max_retries=None, throw=False)


def post(url: str, body: bytes, delivery_id: str, settings: Settings) -> Outcome:
    """One signed POST. A 2xx is delivery; a redirect is not followed; the answer's body is
    not read. The environment's proxies and .netrc are not used."""
    assert settings.callback_secret is not None, "the settings require it with hosts"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "jobql",
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(settings.callback_secret.get_secret_value(), timestamp, body),
    }
    timeout = settings.callback_timeout
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            code = response.status_code
    except httpx.TimeoutException:
        return Outcome(False, f"No answer within {timeout:g} s.")
    except httpx.ConnectError as exc:
        return Outcome(False, f"Could not connect: {exc}")
    except httpx.HTTPError as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}")
    if 200 <= code < 300:
        logger.info("Delivered the job's callback (HTTP %d)", code)
        return Outcome(True)
    if 300 <= code < 400:
        return Outcome(False, f"HTTP {code}: redirects are not followed.")
    return Outcome(False, f"HTTP {code}.")


def register_callback_task(app: Celery, settings: Settings, kinds: Kinds) -> None:
    app.task(
        bind=True,
        base=CallbackTask,
        name=CALLBACK_TASK,
        settings=settings,
        kinds=kinds,
    )(deliver_callback)
