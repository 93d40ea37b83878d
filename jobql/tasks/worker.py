"""The Celery app, and the one task adapter every kind's body runs in.

A kind's body is a plain function of a `TaskContext` and its payload. Here it becomes a
Celery task: `run_job` (at module level) registered once per kind, under the kind's
task name and with the payload's fields as its keyword-only parameters, so that Celery
knows the signature. What the bodies depend on (settings, the mailer, the
storage) is built once at worker start and handed to each call, as arq hands `ctx`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from celery import Celery, Task, bootsteps, signals
from celery.exceptions import Ignore
from kombu import Queue

from jobql.jobs import (
    CALLBACK_QUEUE,
    CALLBACK_TASK,
    DEFAULT_QUEUE,
    JobFailed,
    JobState,
    arguments_repr,
    utcnow,
)
from jobql.kinds import JobCancelled, Kind, RetryLater, TaskContext
from jobql.logs import configure_logging, current_job_id
from jobql.registry import check_agreement
from jobql.storage import JobFiles, create_storage, upload_name
from jobql.tasks.backend import backend_url
from jobql.tasks.callback import register_callback_task
from jobql.tasks.housekeeping import housekeeping_step
from jobql.tasks.mail import Mailer, create_mail_app

if TYPE_CHECKING:
    from jobql.registry import Kinds
    from jobql.settings import Settings
    from jobql.storage import Storage
    from jobql.tasks.backend import JobResultBackend


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What task bodies use, built once per worker."""

    settings: Settings
    mailer: Mailer
    storage: Storage


class JobTask(Task):  # type: ignore[type-arg]
    """A task that keeps its job record up to date, reports progress and refuses poison."""

    # Set per kind when the task is registered.
    kind: Kind[Any, Any]
    deps: Dependencies
    max_attempts: int
    # A job that ends with a code is an expected end: Celery logs it in one INFO line,
    # with no traceback.
    throws = (JobFailed,)
    # A result may be personal (an email's recipient): none of it goes into the worker's
    # log line or the `task-succeeded` event, which show Celery's repr of it cut to this.
    resultrepr_maxsize = 0

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Stamp the start time, count this delivery of this try, and say STARTED."""
        backend = cast("JobResultBackend", self.backend)
        delivery = backend.mark_as_started_delivery(
            task_id,
            self.request,
            queue=self.queue_name,
            started_at=utcnow().isoformat(),
            deliveries_field=f"deliveries:{self.request.retries}",
            pid=os.getpid(),
        )
        if delivery.attempt == 0:
            # Cancelled before any worker held it: drop the message, run nothing (its
            # upload is kept, for `retryJob`, until the job expires).
            raise Ignore
        self.request.attempt = delivery.attempt  # type: ignore[attr-defined]
        self.request.checkpoint = delivery.checkpoint  # type: ignore[attr-defined]
        self.request.owner = delivery.owner  # type: ignore[attr-defined]
        # Read by the backend when it stores the final state, to count the run time.
        self.request.started = time.monotonic()  # type: ignore[attr-defined]

    @property
    def queue_name(self) -> str:
        delivery_info = self.request.delivery_info or {}
        return str(delivery_info.get("routing_key") or DEFAULT_QUEUE)

    @property
    def attempt(self) -> int:
        return int(getattr(self.request, "attempt", 1))

    def report_progress(self, percent: int) -> None:
        self.update_state(
            state=JobState.PROGRESS.value, meta={"progress": percent, "attempt": self.attempt}
        )

    def save_checkpoint(self, value: str, progress: int) -> None:
        """Save `value` in the job record for any later delivery, and report `progress`."""
        backend = cast("JobResultBackend", self.backend)
        backend.mark_checkpoint(
            str(self.request.id), self.request, value, progress=progress, attempt=self.attempt
        )

    def check_cancelled(self) -> None:
        """A body's checkpoint: stop here if the job's owner has cancelled it."""
        backend = cast("JobResultBackend", self.backend)
        if backend.is_cancelled(str(self.request.id)):
            raise JobCancelled

    def drop_upload(self) -> None:
        """Remove what the job was given when its body will not run to remove it and no
        retry can use it: an upload is named after the job it was queued for."""
        self.deps.storage.remove_upload(upload_name(str(self.request.id)))

    def refuse_poison(self) -> None:
        """End a job that keeps killing its worker, instead of handing it on forever."""
        if self.attempt > self.max_attempts:
            raise JobFailed(
                "WORKER_LOST",
                f"The worker died {self.attempt - 1} times running this job; "
                "it is not tried again.",
                retryable=False,
            )

    def context(self) -> TaskContext:
        job_id = str(self.request.id)
        area = self.kind.files
        return TaskContext(
            job_id=job_id,
            owner=str(getattr(self.request, "owner", "")),
            attempt=self.attempt,
            settings=self.deps.settings,
            mailer=self.deps.mailer,
            redis=self.backend.client,  # type: ignore[attr-defined]
            storage=self.deps.storage,
            files=JobFiles(self.deps.storage, area, job_id) if area else None,
            checkpoint=getattr(self.request, "checkpoint", None),
            report_progress=self.report_progress,
            save_checkpoint=self.save_checkpoint,
            check_cancelled=self.check_cancelled,
        )

    def retry_later(self, later: RetryLater) -> BaseException:
        """Try again after the kind's backoff, or end the job once its retries are used up."""
        settings = self.deps.settings
        retries = self.request.retries
        policy = self.kind.retry
        if policy is None or retries >= policy.max_retries(settings):
            return JobFailed(
                later.code, f"Gave up after {retries + 1} tries: {later.message}.", True
            )
        countdown = policy.backoff(settings) * 2**retries
        # Each try has its own queue deadline, counted from when it is due (Celery would
        # give the retry the first message's). A number is seconds from now.
        expires = countdown + settings.queue_ttl
        # As in the web process's first message: Celery would show the arguments in full.
        argsrepr, kwargsrepr = arguments_repr(self.request.kwargs or {})
        return self.retry(  # type: ignore[call-arg]  # celery-types omits the two reprs
            countdown=countdown,
            expires=expires,
            throw=False,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
        )


def run_job(self: JobTask, **kwargs: Any) -> dict[str, Any]:
    """Every kind's task: the payload from its keyword arguments, the body, the result."""
    try:
        self.refuse_poison()
    except JobFailed:
        self.drop_upload()
        raise
    payload = self.kind.load_payload(kwargs)
    try:
        result = self.kind.run(self.context(), payload)
    except RetryLater as later:
        # Once no retry is left, the job ends retryable: its upload stays for `retryJob`.
        retry_or_end = self.retry_later(later)
        # Not chained: the retry's traceback goes into the `task-retried` or `task-failed`
        # event, and the causes' text may quote the payload (smtplib's names the recipient).
        raise retry_or_end from None
    except JobCancelled:
        cast("JobResultBackend", self.backend).mark_cancelled(str(self.request.id))
        raise Ignore from None
    return self.kind.dump_result(result)


def task_function(kind: Kind[Any, Any]) -> types.FunctionType:
    """`run_job` with the signature of `kind`'s payload: Celery checks calls against it."""
    function = types.FunctionType(
        run_job.__code__, run_job.__globals__, kind.name, run_job.__defaults__
    )
    function.__doc__ = run_job.__doc__
    function.__module__ = __name__
    function.__qualname__ = kind.name
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY)
        for field in dataclasses.fields(kind.payload)
    ]
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return function


def create_worker_app(settings: Settings, kinds: Kinds) -> Celery:
    app = Celery("jobql", broker=settings.redis_url, backend=backend_url(settings.redis_url))
    _log_with_job_ids(settings)
    visibility = settings.visibility_timeout
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_expires=settings.result_expires,
        # Not the arguments in every state write: the backend stores what the API reads.
        result_extended=False,
        task_default_queue=DEFAULT_QUEUE,
        # A worker takes jobs and callback deliveries (`-Q` picks one, for workers of
        # their own); a delivery's retries go back to its queue.
        task_queues=[Queue(DEFAULT_QUEUE), Queue(CALLBACK_QUEUE)],
        task_routes={CALLBACK_TASK: {"queue": CALLBACK_QUEUE}},
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
    client = lambda: app.backend.client  # type: ignore[attr-defined]  # noqa: E731
    storage = create_storage(settings)
    app.steps["worker"].add(kinds_check_step(settings, kinds))
    app.steps["worker"].add(housekeeping_step(settings, kinds, storage, client))
    deps = Dependencies(
        settings, Mailer(create_mail_app(settings), keepalive=settings.mail_keepalive), storage
    )
    _close_on_exit(deps.mailer)
    register_callback_task(app, settings, kinds)
    for kind in kinds:
        app.task(
            bind=True,
            base=JobTask,
            name=kind.task_name,
            kind=kind,
            deps=deps,
            max_attempts=settings.max_attempts,
            max_retries=kind.retry.max_retries(settings) if kind.retry else 0,
        )(task_function(kind))
    return app


def kinds_check_step(settings: Settings, kinds: Kinds) -> type[bootsteps.StartStopStep]:
    """A step that stops the worker from starting when the web process accepts a kind of
    job this worker does not have."""

    class KindsCheck(bootsteps.StartStopStep):
        def start(self, worker: Any) -> None:
            check_agreement(settings, "worker", kinds)

    return KindsCheck


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
