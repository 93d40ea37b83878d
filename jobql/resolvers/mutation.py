"""Mutations on a job that exists already, whatever its kind; and the `callbackUrl` every
kind's mutation takes."""

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from jobql.jobs import JobSnapshot
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
