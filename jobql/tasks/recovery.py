"""Queues again a job whose message the broker lost before any worker started it.

Kombu's Redis transport takes a message off the queue (BRPOP) and only then, in a
second round trip, files it as unacknowledged under its delivery tag: a worker killed
between the two loses the message, and no visibility timeout brings it back. The web
process keeps a copy of each message, and notes the job in the queue's pending index
(scored by when the message was pushed), until a worker starts the job. A pending job
whose message is in neither the queue nor the unacknowledged hash, on two looks at
least `confirm_after` seconds apart, is queued again from that copy.

Every look costs Redis the same however deep the backlog: no scan of the queue or of
the unacknowledged hash. Workers take messages from the queue's tail, in the order
they were pushed, so a job pushed after the tail's job is still on the queue and need
not be looked at; one pushed before it was taken off (or is one of the few that were
put back at the tail, which a look at the last `WINDOW` messages finds). Whether the
taken ones are held by a worker is one ZMSCORE on Kombu's index of unacknowledged
delivery tags (a message's tag is its job id), and the pending jobs are walked in
batches from a cursor that each look moves on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobql.jobs import (
    DEFAULT_QUEUE,
    META_PREFIX,
    RECORD_PREFIX,
    messages_key,
    missing_key,
    pending_key,
)

if TYPE_CHECKING:
    from redis import Redis

# Kombu's Redis transport's defaults: the messages workers hold, by delivery tag, and
# the same tags scored by when they were taken.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
BATCH = 250  # pending jobs looked at in one call
WINDOW = 32  # messages read at the queue's tail
CURSOR_PREFIX = "jobql:recover:cursor:"  # per queue: the rank the next look starts at
LEASE_PREFIX = "jobql:recover:lease:"  # per queue: the worker that may look now

# A property of a message (Lua): found by a plain search first, several times faster than
# a pattern tried at every position.
MESSAGE_PROPERTY = """
local function property(text, name)
  local at = string.find(text, '"' .. name .. '":', 1, true)
  return at and string.match(text, '^"[^"]+": *"([^"]+)"', at)
end
local function job_id(text)
  return property(text, 'correlation_id')
end
"""

# KEYS: pending index, message copies, unacked index, queue, cursor, missing marks. ARGV:
# cutoff, now, confirm_after, batch, record prefix, meta prefix, window. Returns {newly
# missing, queued again, looked at}.
RECOVER_SCRIPT = (
    MESSAGE_PROPERTY
    + """
-- Scores stay strings: Lua would round them to 14 digits.
local limit, window = ARGV[1], tonumber(ARGV[7])
-- LINDEX from the tail, not LRANGE: Redis 6 walks a negative LRANGE from the head.
local function from_tail(i)
  return redis.call('LINDEX', KEYS[4], -i)
end
if from_tail(1) then
  -- The newest push a worker may have taken: that of the pending job nearest the tail.
  local reached
  for i = 1, window do
    local item = from_tail(i)
    if not item then break end
    local id = job_id(item)
    reached = id and redis.call('ZSCORE', KEYS[1], id)
    if reached then break end
  end
  -- None of the tail's jobs is pending: where the workers are cannot be told; look later.
  if not reached then return {0, 0, 0} end
  if tonumber(reached) < tonumber(limit) then limit = reached end
end
-- The jobs of the last `window` messages, read only if a job is neither held nor started.
local near_tail
local function on_queue(id)
  if not near_tail then
    near_tail = {}
    for i = 1, window do
      local item = from_tail(i)
      if not item then break end
      near_tail[job_id(item) or ''] = true
    end
  end
  return near_tail[id]
end
-- The candidates are the lowest ranks: counted first (O(log n)), so that no more rows than
-- are wanted come back.
local candidates = redis.call('ZCOUNT', KEYS[1], '-inf', limit)
local start = tonumber(redis.call('GET', KEYS[5]) or '0')
local last = math.min(start + tonumber(ARGV[4]), candidates) - 1
local ids = last >= start and redis.call('ZRANGE', KEYS[1], start, last) or {}
local finished = last >= candidates - 1
local now, gone, missing, requeued = tonumber(ARGV[2]), 0, 0, 0
if #ids > 0 then
  -- A message a worker holds is filed under its delivery tag, the job id: one call asks
  -- for the whole batch.
  local held = redis.call('ZMSCORE', KEYS[3], unpack(ids))
  local marked = redis.call('HLEN', KEYS[6]) > 0
  for n, id in ipairs(ids) do
    if held[n] or on_queue(id) then
      if marked then redis.call('HDEL', KEYS[6], id) end
    elseif redis.call('EXISTS', ARGV[6] .. id) == 1
        or redis.call('EXISTS', ARGV[5] .. id) == 0 then
      -- It has a state (Celery revoked it when its message came, say), or it expired.
      redis.call('ZREM', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[6], id)
      gone = gone + 1
    else
      local since = redis.call('HGET', KEYS[6], id)
      if not since then
        redis.call('HSET', KEYS[6], id, now)
        missing = missing + 1
      elseif now - tonumber(since) >= tonumber(ARGV[3]) then
        local message = redis.call('HGET', KEYS[2], id)
        redis.call('HDEL', KEYS[6], id)
        if message then
          redis.call('HINCRBY', ARGV[5] .. id, 'requeued', 1)
          redis.call('ZADD', KEYS[1], now, id)
          redis.call('LPUSH', KEYS[4], message)
          requeued = requeued + 1
        else
          redis.call('ZREM', KEYS[1], id)
        end
        gone = gone + 1
      end
    end
  end
end
-- Jobs that left the looked-at ranks moved the rest down by as many.
redis.call('SET', KEYS[5], finished and 0 or start + #ids - gone)
return {missing, requeued, #ids}
"""
)


@dataclass(frozen=True, slots=True)
class Recovered:
    missing: int  # seen missing for the first time
    requeued: int  # missing twice, and queued again
    looked_at: int  # pending jobs looked at


def recover_lost_jobs(
    client: Redis,
    older_than: float,
    confirm_after: float,
    queue: str = DEFAULT_QUEUE,
    batch: int = BATCH,
    batches: int = 1,
) -> Recovered:
    """Look at pending jobs queued more than `older_than` seconds ago: up to `batches`
    script calls of `batch` jobs each, every one short, so Redis serves others between."""
    totals = [0, 0, 0]
    for _ in range(batches):
        now = time.time()
        found = [
            int(n)
            for n in client.eval(
                RECOVER_SCRIPT,
                6,
                pending_key(queue),
                messages_key(queue),
                UNACKED_INDEX_KEY,
                queue,
                f"{CURSOR_PREFIX}{queue}",
                missing_key(queue),
                now - older_than,
                now,
                confirm_after,
                batch,
                RECORD_PREFIX,
                META_PREFIX,
                WINDOW,
            )
        ]
        totals = [total + n for total, n in zip(totals, found, strict=True)]
        if found[2] < batch:
            break  # the cursor went round
    return Recovered(*totals)


def take_lease(client: Redis, holder: str, seconds: float, queue: str = DEFAULT_QUEUE) -> bool:
    """Whether `holder` may look for lost jobs now: one worker a period, however many run."""
    return bool(client.set(f"{LEASE_PREFIX}{queue}", holder, nx=True, px=int(seconds * 1000)))
