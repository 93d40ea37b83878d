"""A worker bootstep that, on timers, sweeps leftover files and recovers lost jobs."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from celery.worker import state

from jobql.epoch import DataEpoch
from jobql.stats import HEARTBEAT_SECONDS, RUNNING_KEY, WORKERS_KEY
from jobql.tasks.recovery import recover_lost_jobs, take_lease
from jobql.tasks.sweep import jobs_exist, jobs_over, sweep

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import Redis

    from jobql.registry import Kinds
    from jobql.settings import Settings
    from jobql.storage import Storage

logger = logging.getLogger(__name__)

# Of the recovery period, how long a worker's lease lasts: shorter than the period, so
# that the worker whose timer fires next finds it free.
LEASE_SHARE = 0.9
RECOVER_BATCHES = 40  # at most this many short script calls a period


def housekeeping_step(
    settings: Settings, kinds: Kinds, storage: Storage, client: Callable[[], Redis]
) -> type[bootsteps.StartStopStep]:
    class Housekeeping(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Timer",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.timer_entries: list[Any] = []
            self.worker_name = ""
            self.epoch = DataEpoch()

        def start(self, worker: Any) -> None:
            self.worker_name = str(worker.hostname)
            self.heartbeat()
            self.timer_entries = [
                worker.timer.call_repeatedly(HEARTBEAT_SECONDS, self.heartbeat),
                worker.timer.call_repeatedly(settings.sweep_interval, self.sweep),
                worker.timer.call_repeatedly(settings.recover_after / 2, self.recover),
                worker.timer.call_repeatedly(settings.data_loss_check, self.look_for_data_loss),
            ]

        def stop(self, worker: Any) -> None:
            for entry in self.timer_entries:
                entry.cancel()
            try:
                with client().pipeline(transaction=False) as pipe:
                    pipe.zrem(WORKERS_KEY, self.worker_name)
                    pipe.hdel(RUNNING_KEY, self.worker_name)
                    pipe.execute()
            except Exception:  # the worker is going away either way
                logger.warning("Could not take this worker off the list of live workers")

        def heartbeat(self) -> None:
            """Say this worker is alive (what /readyz counts), and how many jobs it runs."""
            now = time.time()
            try:
                with client().pipeline(transaction=False) as pipe:
                    pipe.zadd(WORKERS_KEY, {self.worker_name: now})
                    pipe.hset(RUNNING_KEY, self.worker_name, len(state.active_requests))
                    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 3600)
                    pipe.execute()
            except Exception:  # tried again at the next beat
                logger.warning("Worker heartbeat failed")

        def look_for_data_loss(self) -> None:
            """Redis lost its data: the uploads of the jobs lost with it go now, not after
            `JOBQL_SWEEP_MIN_AGE`. Any older than a whole request may take
            (`JOBQL_REQUEST_TIMEOUT`) with no job record is an orphan: its request ended."""
            try:
                lost = self.epoch.lost_now(client())
            except Exception:  # looked at again next time
                logger.warning("Could not look for Redis having lost its data")
                return
            if lost:
                logger.error("Redis lost its data: sweeping the uploads of the jobs lost")
                self.sweep(min_age=settings.request_timeout, uploads_only=True)

        def sweep(self, min_age: float | None = None, uploads_only: bool = False) -> None:
            try:
                removed = sweep(
                    storage,
                    kinds.file_areas,
                    settings.sweep_min_age if min_age is None else min_age,
                    lambda job_ids: jobs_over(client(), job_ids),
                    lambda job_ids: jobs_exist(client(), job_ids),
                    uploads_only=uploads_only,
                )
            except Exception:  # tried again at the next tick
                logger.exception("Sweeping leftover files failed")
                return
            if removed:
                logger.info("Swept %d leftover files", len(removed))

        def recover(self) -> None:
            period = settings.recover_after / 2
            try:
                # One worker a period does it: the cost does not grow with the workers.
                if not take_lease(client(), self.worker_name, period * LEASE_SHARE):
                    return
                recovered = recover_lost_jobs(
                    client(),
                    older_than=settings.recover_after,
                    confirm_after=period,
                    batches=RECOVER_BATCHES,
                )
            except Exception:  # tried again at the next tick
                logger.exception("Looking for lost jobs failed")
                return
            if recovered.requeued:
                logger.warning("Queued %d lost jobs again", recovered.requeued)

    return Housekeeping
