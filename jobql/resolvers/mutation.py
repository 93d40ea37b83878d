"""Mutations on a job that exists already, whatever its kind; and the `callbackUrl` every
kind's mutation takes."""

import functools
import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from jobql.errors import BadUserInput, NotFound
from jobql.jobs import Dedupe, JobSnapshot, JobState, retried_key
from jobql.resolvers.context import Context, requested_callback_url

CALLBACK_URL = "callback_url"
CallbackUrl = Annotated[
    str | None,
    strawberry.argument(
        description="POSTed the job, signed, when it ends (SUCCESS, FAILURE or REVOKED); its "
        "host must be on the server's allow-list."
    ),
]


def with_callback_url(
    mutation: Callable[..., Awaitable[JobSnapshot]],
) -> Callable[..., Awaitable[JobSnapshot]]:
    """A kind's mutation with one more argument, `callbackUrl`, last: `enqueue` reads it (a
    kind's own code never sees it)."""

    @functools.wraps(mutation)
    async def resolve(*args: Any, callback_url: str | None = None, **kwargs: Any) -> JobSnapshot:
        token = requested_callback_url.set(callback_url)
        try:
            return await mutation(*args, **kwargs)
        finally:
            requested_callback_url.reset(token)

    signature = inspect.signature(mutation)
    added = inspect.Parameter(
        CALLBACK_URL, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CallbackUrl
    )
    resolve.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), added]
    )
    return resolve


async def cancel_job(info: Info[Context, None], id: strawberry.ID) -> JobSnapshot | None:
    """Cancel the job: one that no worker holds ends REVOKED (CANCELLED) at once and never
    runs; a running one stops at its next checkpoint. Answers with the job as it is then
    (a finished job as it is); null if it does not exist or belongs to someone else."""
    user_id = info.context.principal().user_id
    with info.context.redis_errors_as_unavailable():
        job = await info.context.store.cancel(str(id), owner=user_id)
    return info.context.services.kinds.known(job) if job else None


async def retry_job(info: Info[Context, None], id: strawberry.ID) -> JobSnapshot:
    """Queue again a job that ended FAILURE (retryable) or REVOKED: a new job of the same
    kind with the same inputs, whose `retryOf` is this one. Asked again, answers with the
    same retry. NOT_FOUND if it does not exist or belongs to someone else."""
    context = info.context
    user_id = context.principal().user_id
    await context.check_rate()
    job_id = str(id)
    with context.redis_errors_as_unavailable():
        job = await context.store.get(job_id, owner=user_id)
        if job is None:
            raise NotFound("No such job.", field="id")
        refusal = _why_not_retryable(job)
        if refusal is not None:
            raise BadUserInput(refusal, field="id")
        inputs = await context.store.inputs(job_id)
    if inputs is None:
        raise BadUserInput("The job's inputs are gone; it cannot be retried.", field="id")
    kind = context.services.kinds.known(job).kind
    # One retry per job, however often (or however many at once) it is asked for.
    once = Dedupe(retried_key(job_id), timedelta(seconds=context.settings.result_expires))
    retry = await context.enqueue(
        kind, inputs, job_id=None, delay=None, dedupe=once, retry_of=job_id
    )
    if retry is None:  # the retry has expired meanwhile
        raise BadUserInput("The job's inputs are gone; it cannot be retried.", field="id")
    return retry


def _why_not_retryable(job: JobSnapshot) -> str | None:
    if not job.done:
        return "The job has not ended; only a job that failed or was cancelled can be retried."
    if job.state is JobState.SUCCESS:
        return "The job succeeded; there is nothing to retry."
    if not job.retryable:
        code = job.error.code if job.error else "INTERNAL"
        return f"The job failed for good ({code}); the same inputs would fail again."
    return None
