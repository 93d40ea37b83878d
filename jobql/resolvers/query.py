import strawberry
from strawberry.types import Info

from jobql.jobs import JobSnapshot
from jobql.resolvers.context import Context


async def job(info: Info[Context, None], id: strawberry.ID) -> JobSnapshot | None:
    """The job, or null if it does not exist, has expired or belongs to someone else."""
    user_id = info.context.principal().user_id
    with info.context.redis_errors_as_unavailable():
        job = await info.context.store.get(str(id), owner=user_id)
    return info.context.services.kinds.known(job) if job else None
