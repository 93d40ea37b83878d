"""Mutations on a job that exists already, whatever its kind."""

import strawberry
from strawberry.types import Info

from jobql.jobs import JobSnapshot
from jobql.resolvers.context import Context


async def cancel_job(info: Info[Context, None], id: strawberry.ID) -> JobSnapshot | None:
    """Cancel the job: one that no worker holds ends REVOKED (CANCELLED) at once and never
    runs; a running one stops at its next checkpoint. Answers with the job as it is then
    (a finished job as it is); null if it does not exist or belongs to someone else."""
    user_id = info.context.principal().user_id
    with info.context.redis_errors_as_unavailable():
        job = await info.context.store.cancel(str(id), owner=user_id)
    return info.context.services.kinds.known(job) if job else None
