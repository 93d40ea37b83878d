"""Counters both sides keep in Redis, so that every web process reports the same totals.

The web process counts accepted jobs, the workers count finished and retried ones and
their run times, and say every few seconds that they are alive and how many jobs they
are running; `/metrics/cluster` and `/readyz` read them.
"""

from __future__ import annotations

STATS_KEY = "jobql:stats"
WORKERS_KEY = "jobql:workers"  # sorted set: worker name, scored by its last heartbeat
RUNNING_KEY = "jobql:running"  # hash: worker name, jobs it was running at its last heartbeat
HEARTBEAT_SECONDS = 10
WORKER_ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def accepted_field(kind: str) -> str:
    return f"accepted:{kind}"


def retried_field(kind: str) -> str:
    return f"retried:{kind}"


def finished_increments(kind: str, state: str, seconds: float) -> dict[str, float]:
    """The fields to add to for one finished job (a cumulative histogram of run time)."""
    increments: dict[str, float] = {
        f"finished:{kind}:{state}": 1,
        f"duration_count:{kind}": 1,
        f"duration_sum:{kind}": seconds,
    }
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            increments[f"duration_bucket:{kind}:{bound}"] = 1
    return increments
