"""Queues again a job whose message the broker lost before any worker started it.

Kombu's Redis transport takes a message off the queue (BRPOP) and only then, in a
second round trip, files it as unacknowledged: a worker killed between the two
loses the message, and no visibility timeout brings it back. The web process keeps
a copy of each message in the job record until a worker starts the job; a pending
job whose message is in neither the queue nor the unacknowledged set, on two looks
at least `confirm_after` seconds apart, is queued again from that copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobql.jobs import DEFAULT_QUEUE, META_PREFIX, RECORD_PREFIX, pending_key

if TYPE_CHECKING:
    from redis import Redis

UNACKED_KEY = "unacked"  # Kombu's Redis transport's default
BATCH = 500

# KEYS: pending set, unacked hash, queue. ARGV: cutoff, now, confirm_after, batch,
# record prefix, meta prefix. Returns {newly missing, queued again}.
RECOVER_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
if #ids == 0 then return {0, 0} end
local present = {}
local function note(text)
  local id = string.match(text, '"correlation_id": *"([^"]+)"')
  if id then present[id] = true end
end
for _, item in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do note(item) end
for _, item in ipairs(redis.call('HVALS', KEYS[2])) do note(item) end
local missing, requeued = 0, 0
for _, id in ipairs(ids) do
  local record = ARGV[5] .. id
  local message = redis.call('HGET', record, 'message')
  if (not message) or redis.call('EXISTS', ARGV[6] .. id) == 1 then
    redis.call('ZREM', KEYS[1], id)
  elseif present[id] then
    redis.call('HDEL', record, 'missing_since')
  else
    local since = redis.call('HGET', record, 'missing_since')
    if not since then
      redis.call('HSET', record, 'missing_since', ARGV[2])
      missing = missing + 1
    elseif tonumber(ARGV[2]) - tonumber(since) >= tonumber(ARGV[3]) then
      redis.call('HDEL', record, 'missing_since')
      redis.call('HINCRBY', record, 'requeued', 1)
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      redis.call('LPUSH', KEYS[3], message)
      requeued = requeued + 1
    end
  end
end
return {missing, requeued}
"""


@dataclass(frozen=True, slots=True)
class Recovered:
    missing: int  # seen missing for the first time
    requeued: int  # missing twice, and queued again


def recover_lost_jobs(
    client: Redis, older_than: float, confirm_after: float, queue: str = DEFAULT_QUEUE
) -> Recovered:
    """Look at pending jobs due more than `older_than` seconds ago."""
    now = time.time()
    missing, requeued = client.eval(
        RECOVER_SCRIPT,
        3,
        pending_key(queue),
        UNACKED_KEY,
        queue,
        now - older_than,
        now,
        confirm_after,
        BATCH,
        RECORD_PREFIX,
        META_PREFIX,
    )
    return Recovered(int(missing), int(requeued))
