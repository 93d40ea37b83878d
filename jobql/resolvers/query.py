import strawberry
from strawberry.types import Info

from jobql.resolvers.context import Context
from jobql.schema.types import Job


async def job(info: Info[Context, None], id: strawberry.ID) -> Job | None:
    """The job, or null if it does not exist, has expired or belongs to someone else."""
    user_id = info.context.principal().user_id
    with info.context.redis_errors_as_unavailable():
        snapshot = await info.context.store.get(str(id), owner=user_id)
    return Job.from_snapshot(snapshot) if snapshot else None
