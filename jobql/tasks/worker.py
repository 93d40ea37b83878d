"""The Celery app and its tasks: thin adapters around `avatar` and `mail`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.states import STARTED

from jobql.jobs import (
    DEFAULT_QUEUE,
    ImageFormat,
    JobFailed,
    JobKind,
    JobState,
    record_key,
    utcnow,
)
from jobql.tasks.avatar import InvalidImage, make_avatar
from jobql.tasks.mail import MailRejected, MailTemporarilyFailed, create_mail_app, send_welcome

if TYPE_CHECKING:
    from jobql.settings import Settings

AVATARS_URL = "/media/avatars"


class JobTask(Task):  # type: ignore[type-arg]
    """A task that keeps its job record up to date and reports progress."""

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Stamp the start time and count the attempt, then say STARTED."""
        key = record_key(task_id)
        expires = self.app.conf.result_expires
        with self.backend.client.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
            pipe.hsetnx(key, "started_at", utcnow().isoformat())
            pipe.hincrby(key, "attempts", 1)
            pipe.expire(key, expires)
            _, attempt, _ = pipe.execute()
        self.request.attempt = attempt  # type: ignore[attr-defined]
        self.update_state(state=STARTED, meta={"attempt": attempt})

    def report_progress(self, percent: int) -> None:
        self.update_state(
            state=JobState.PROGRESS.value,
            meta={"progress": percent, "attempt": getattr(self.request, "attempt", 0)},
        )


def create_worker_app(settings: Settings) -> Celery:
    app = Celery("jobql", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_expires=settings.result_expires,
        # Extended meta carries the retry count, which orders a job's state writes.
        result_extended=True,
        task_default_queue=DEFAULT_QUEUE,
        task_time_limit=settings.task_time_limit,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    mail_app = create_mail_app(settings)

    @app.task(bind=True, base=JobTask, name=JobKind.AVATAR.task_name)
    def avatar(
        self: JobTask, incoming_name: str, size: int, quality: int, image_format: str
    ) -> dict[str, Any]:
        incoming = settings.incoming_dir / Path(incoming_name).name
        fmt = ImageFormat(image_format)
        name = f"{self.request.id}.{fmt.extension}"
        try:
            made = make_avatar(
                incoming,
                settings.avatars_dir / name,
                size=size,
                quality=quality,
                image_format=fmt,
                max_pixels=settings.max_image_pixels,
                progress=self.report_progress,
            )
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
    )
    def welcome_email(self: JobTask, recipient: str, username: str) -> dict[str, Any]:
        try:
            message_id = send_welcome(
                mail_app, str(self.request.id), recipient, username, self.report_progress
            )
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
