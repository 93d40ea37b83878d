"""A worker bootstep that, on timers, sweeps leftover files and recovers lost jobs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from jobql.tasks.recovery import recover_lost_jobs
from jobql.tasks.sweep import job_is_over, sweep

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import Redis

    from jobql.settings import Settings

logger = logging.getLogger(__name__)


def housekeeping_step(
    settings: Settings, client: Callable[[], Redis]
) -> type[bootsteps.StartStopStep]:
    class Housekeeping(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Timer",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.timer_entries: list[Any] = []

        def start(self, worker: Any) -> None:
            self.timer_entries = [
                worker.timer.call_repeatedly(settings.sweep_interval, self.sweep),
                worker.timer.call_repeatedly(settings.recover_after / 2, self.recover),
            ]

        def stop(self, worker: Any) -> None:
            for entry in self.timer_entries:
                entry.cancel()

        def sweep(self) -> None:
            try:
                removed = sweep(
                    settings.incoming_dir,
                    settings.avatars_dir,
                    settings.sweep_min_age,
                    lambda job_id: job_is_over(client(), job_id),
                )
            except Exception:  # tried again at the next tick
                logger.exception("Sweeping leftover files failed")
                return
            if removed:
                logger.info("Swept %d leftover files", len(removed))

        def recover(self) -> None:
            try:
                recovered = recover_lost_jobs(
                    client(),
                    older_than=settings.recover_after,
                    confirm_after=settings.recover_after / 2,
                )
            except Exception:  # tried again at the next tick
                logger.exception("Looking for lost jobs failed")
                return
            if recovered.requeued:
                logger.warning("Queued %d lost jobs again", recovered.requeued)

    return Housekeeping
