"""`jobql web` with an enqueue script that leaves out the owner index and its channel:
the baseline the listing benchmark compares enqueue throughput with. One process."""

from __future__ import annotations

import sys

import jobql.store
from jobql.cli import main

# jobql.store.ENQUEUE_SCRIPT less the owner's index (ZADD, trim, EXPIRE) and PUBLISH (and
# the idempotency keys and callbacks the benchmark does not use); the arguments are the
# same, so the same JobStore calls it.
WITHOUT_OWNER_INDEX = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if KEYS[1] ~= '' then
  local earlier = redis.call('GET', KEYS[1])
  if earlier then return earlier end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('HSET', KEYS[2], unpack(ARGV, 16))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[10], ARGV[15], 'EX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
return false
"""

if __name__ == "__main__":
    jobql.store.ENQUEUE_SCRIPT = WITHOUT_OWNER_INDEX
    sys.exit(main(["web", *sys.argv[1:]]))
