"""Empties a queue and ends each job that was waiting on it REVOKED.

`celery purge` only deletes the queue's list: the jobs' records and the copies of their
messages stay, and recovery, finding the messages gone, would queue the jobs again.
Here each batch of messages is taken off the queue's tail and its jobs are ended in the
same script, so that no job is ever off the queue and still pending, and a client
following one sees it end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobql.jobs import (
    DEFAULT_QUEUE,
    META_PREFIX,
    QUEUE_CALLBACK,
    RECORD_PREFIX,
    messages_key,
    missing_key,
    pending_key,
    utcnow,
)
from jobql.stats import STATS_KEY
from jobql.tasks.recovery import MESSAGE_PROPERTY

if TYPE_CHECKING:
    from redis import Redis

BATCH = 500

# KEYS: queue, pending index, message copies, stats, missing marks. ARGV: how many to
# take, meta prefix, record prefix, the meta's expiry in seconds, the time it ends.
# Returns {messages taken, jobs revoked}. A job already over, or whose record expired,
# is left as it is.
PURGE_SCRIPT = (
    MESSAGE_PROPERTY
    + QUEUE_CALLBACK
    + """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then return {0, 0} end
local revoked = 0
for _, item in ipairs(items) do
  local id = job_id(item)
  if id then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[5], id)
    local key, kind = ARGV[2] .. id, redis.call('HGET', ARGV[3] .. id, 'kind')
    local current = redis.call('GET', key)
    local status = current and cjson.decode(current)['status']
    if kind and status ~= 'SUCCESS' and status ~= 'FAILURE' and status ~= 'REVOKED' then
      local meta = '{"status": "REVOKED", "result": null, "traceback": null, '
        .. '"children": [], "date_done": "' .. ARGV[5] .. '", "task_id": "' .. id .. '"}'
      redis.call('SET', key, meta, 'EX', ARGV[4])
      redis.call('PUBLISH', key, meta)
      queue_callback(ARGV[3] .. id)
      redis.call('HINCRBY', KEYS[4], 'finished:' .. kind .. ':REVOKED', 1)
      revoked = revoked + 1
    end
  end
end
return {#items, revoked}
"""
)


@dataclass(frozen=True, slots=True)
class Purged:
    messages: int  # taken off the queue
    revoked: int  # jobs ended REVOKED


def purge_queue(
    client: Redis, expires: int, queue: str = DEFAULT_QUEUE, batch: int = BATCH
) -> Purged:
    """Take what is on `queue` now off it, `batch` messages a script call; jobs queued
    meanwhile may go too. Jobs a worker holds already (a delayed email) are left alone."""
    left = int(client.llen(queue))
    messages = revoked = 0
    while left > 0:
        taken, ended = client.eval(
            PURGE_SCRIPT,
            5,
            queue,
            pending_key(queue),
            messages_key(queue),
            STATS_KEY,
            missing_key(queue),
            min(batch, left),
            META_PREFIX,
            RECORD_PREFIX,
            expires,
            utcnow().isoformat(),
        )
        if not taken:
            break  # the workers took the rest
        messages, revoked, left = messages + int(taken), revoked + int(ended), left - int(taken)
    return Purged(messages, revoked)
