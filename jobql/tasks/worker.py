"""The Celery app and its tasks: thin adapters around `avatar` and `mail`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from celery import Celery, Task, signals

from jobql.jobs import (
    DEFAULT_QUEUE,
    ImageFormat,
    JobFailed,
    JobKind,
    JobState,
    pending_key,
    utcnow,
)
from jobql.logs import configure_logging, current_job_id
from jobql.tasks.avatar import InvalidImage, existing_avatar, make_avatar, remove_leftovers
from jobql.tasks.backend import backend_url
from jobql.tasks.housekeeping import housekeeping_step
from jobql.tasks.mail import Mailer, MailRejected, MailTemporarilyFailed, create_mail_app

if TYPE_CHECKING:
    from jobql.settings import Settings
    from jobql.tasks.backend import JobResultBackend

AVATARS_URL = "/media/avatars"


class JobTask(Task):  # type: ignore[type-arg]
    """A task that keeps its job record up to date, reports progress and refuses poison."""

    max_attempts = 3

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Stamp the start time, count this delivery of this try, and say STARTED."""
        backend = cast("JobResultBackend", self.backend)
        delivery = backend.mark_as_started_delivery(
            task_id,
            self.request,
            pending=pending_key(self.queue_name),
            started_at=utcnow().isoformat(),
            deliveries_field=f"deliveries:{self.request.retries}",
            pid=os.getpid(),
        )
        self.request.attempt = delivery.attempt  # type: ignore[attr-defined]
        self.request.sent_message_id = delivery.sent_message_id  # type: ignore[attr-defined]
        # Read by the backend when it stores the final state, to count the run time.
        self.request.started = time.monotonic()  # type: ignore[attr-defined]

    @property
    def queue_name(self) -> str:
        delivery_info = self.request.delivery_info or {}
        return str(delivery_info.get("routing_key") or DEFAULT_QUEUE)

    def report_progress(self, percent: int) -> None:
        self.update_state(
            state=JobState.PROGRESS.value,
            meta={"progress": percent, "attempt": getattr(self.request, "attempt", 0)},
        )

    def record_sent(self, message_id: str) -> None:
        """Note in the job record that its email was accepted, so that no delivery sends
        it again, and tell the client (PROGRESS 90: only the final write is left)."""
        backend = cast("JobResultBackend", self.backend)
        attempt = getattr(self.request, "attempt", 0)
        backend.mark_as_sent(
            str(self.request.id), self.request, message_id, progress=90, attempt=attempt
        )

    def refuse_poison(self) -> None:
        """End a job that keeps killing its worker, instead of handing it on forever."""
        attempt = getattr(self.request, "attempt", 1)
        if attempt > self.max_attempts:
            raise JobFailed(
                "WORKER_LOST",
                f"The worker died {attempt - 1} times running this job; it is not tried again.",
                retryable=False,
            )


def create_worker_app(settings: Settings) -> Celery:
    app = Celery("jobql", broker=settings.redis_url, backend=backend_url(settings.redis_url))
    _log_with_job_ids(settings)
    visibility = settings.visibility_timeout
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_expires=settings.result_expires,
        # Extended meta carries the retry count, which orders a job's state writes.
        result_extended=True,
        task_default_queue=DEFAULT_QUEUE,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_time_limit * 0.9,
        # At least once: a message is acknowledged only when its task has ended, and one
        # whose worker died goes back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One visibility timeout everywhere, as Celery's Redis documentation asks. A dead
        # worker's unacknowledged messages are restored by the scan of a live one:
        # run it often enough that redelivery follows the timeout closely.
        visibility_timeout=visibility,
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.steps["worker"].add(housekeeping_step(settings, lambda: app.backend.client))  # type: ignore[attr-defined]
    mailer = Mailer(create_mail_app(settings), keepalive=settings.mail_keepalive)
    _close_on_exit(mailer)

    @app.task(
        bind=True,
        base=JobTask,
        name=JobKind.AVATAR.task_name,
        max_attempts=settings.max_attempts,
    )
    def avatar(
        self: JobTask, incoming_name: str, size: int, quality: int, image_format: str
    ) -> dict[str, Any]:
        incoming = settings.incoming_dir / Path(incoming_name).name
        fmt = ImageFormat(image_format)
        name = f"{self.request.id}.{fmt.extension}"
        destination = settings.avatars_dir / name
        try:
            self.refuse_poison()
            made = existing_avatar(destination, fmt) if not incoming.exists() else None
            if made is None:
                made = make_avatar(
                    incoming,
                    destination,
                    size=size,
                    quality=quality,
                    image_format=fmt,
                    max_pixels=settings.max_image_pixels,
                    progress=self.report_progress,
                )
            if getattr(self.request, "attempt", 1) > 1:
                remove_leftovers(destination)
        except FileNotFoundError:
            raise JobFailed(
                "UPLOAD_LOST", "The uploaded file is gone; upload it again.", retryable=True
            ) from None
        except InvalidImage as exc:
            raise JobFailed("INVALID_IMAGE", str(exc), retryable=False) from None
        finally:
            incoming.unlink(missing_ok=True)
        return {
            "url": f"{AVATARS_URL}/{name}",
            "width": made.width,
            "height": made.height,
            "size_bytes": made.size_bytes,
            "format": made.format.value,
        }

    @app.task(
        bind=True,
        base=JobTask,
        name=JobKind.WELCOME_EMAIL.task_name,
        max_retries=settings.mail_max_retries,
        max_attempts=settings.max_attempts,
    )
    def welcome_email(self: JobTask, recipient: str, username: str) -> dict[str, Any]:
        self.refuse_poison()
        sent = getattr(self.request, "sent_message_id", None)
        if sent is not None:  # an earlier delivery sent it, then died before it could say so
            return {"recipient": recipient, "message_id": sent}
        job_id = str(self.request.id)
        try:
            message_id = mailer.send_welcome(job_id, recipient, username, self.record_sent)
        except MailRejected as exc:
            raise JobFailed("SMTP_REJECTED", f"The mail server refused: {exc}.") from None
        except MailTemporarilyFailed as exc:
            retries = self.request.retries
            if retries >= settings.mail_max_retries:
                raise JobFailed(
                    "SMTP_UNAVAILABLE", f"Gave up after {retries + 1} tries: {exc}.", True
                ) from None
            raise self.retry(countdown=settings.mail_retry_backoff * 2**retries) from exc
        return {"recipient": recipient, "message_id": message_id}

    return app


def _close_on_exit(mailer: Mailer) -> None:
    """QUIT the SMTP connection a pool process kept open (the solo pool has no pool
    processes: its worker's own shutdown does it)."""

    def close(**kwargs: Any) -> None:
        mailer.close()

    signals.worker_process_shutdown.connect(close, weak=False)
    signals.worker_shutdown.connect(close, weak=False)


def _log_with_job_ids(settings: Settings) -> None:
    """Take over Celery's logging setup, and tag each line a task logs with its job id."""

    def setup_logging(loglevel: int | str | None = None, **kwargs: Any) -> None:
        configure_logging(settings.log_json, level=loglevel or logging.INFO)

    def task_started(task_id: str, **kwargs: Any) -> None:
        current_job_id.set(task_id)

    def task_ended(**kwargs: Any) -> None:
        current_job_id.set(None)

    signals.setup_logging.connect(setup_logging, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
