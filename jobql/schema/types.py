"""The GraphQL types of jobql's public API. `Job` is built for the kinds loaded: its `kind`
is one of them (`JobKind`) and its `result` one of their result types (`JobResult`).

`Job` reads a `JobSnapshot`, which is what resolvers answer with.

No `from __future__ import annotations`: Strawberry reads these annotations at run time.
"""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Optional, Union

import strawberry
from strawberry.types import Info

from jobql.jobs import JobSnapshot, JobState

if TYPE_CHECKING:
    from jobql.registry import Kinds

strawberry.enum(JobState, description="A job's state, named as Celery names it.")


@strawberry.type(description="Why a job failed or was cancelled.")
class JobError:
    code: str
    message: str
    retryable: bool = strawberry.field(description="Whether the same request may succeed later.")


@strawberry.type(description="How the POST of a job to its callbackUrl went.")
class CallbackDelivery:
    url: str
    attempts: int = strawberry.field(description="POSTs tried so far.")
    delivered_at: datetime | None = strawberry.field(description="When a 2xx answered one.")
    last_error: str | None = strawberry.field(description="Why the last POST failed.")


async def _callback(root: JobSnapshot, info: Info) -> Optional[CallbackDelivery]:  # noqa: UP045
    context = info.context
    with context.redis_errors_as_unavailable():
        status = await context.store.callback(root.id)
    if status is None:
        return None
    return CallbackDelivery(
        url=status.url,
        attempts=status.attempts,
        delivered_at=status.delivered_at,
        last_error=status.last_error,
    )


def job_type(kinds: "Kinds") -> type:
    """`Job`, whose `kind` and `result` cover exactly `kinds`."""
    job_kind = strawberry.enum(kinds.enum, name="JobKind", description="What a job does.")
    results = tuple(kind.result for kind in kinds)
    job_result = Annotated[Union[results], strawberry.union("JobResult")]  # type: ignore[valid-type]  # noqa: UP007

    def load_result(root: JobSnapshot) -> Any:
        return None if root.result is None else kinds.load_result(root.kind, root.result)

    # The fields but the last three are the snapshot's own attributes, read as they are
    # (a kind's name is its JobKind value). `result`, `error` and `callback` need a resolver, and
    # fields with one come after those without, in the schema too: keep them last.
    @strawberry.type(name="Job", description="A piece of slow work and where it has got to.")
    class Job:
        id: strawberry.ID
        kind: str = strawberry.field(graphql_type=job_kind)
        state: JobState
        done: bool = strawberry.field(description="SUCCESS, FAILURE or REVOKED.")
        progress: int | None = strawberry.field(description="0..100, when the task reports it.")
        created_at: datetime
        started_at: datetime | None
        finished_at: datetime | None
        attempts: int = strawberry.field(
            description="Deliveries of this job that a worker started (0 while queued)."
        )
        expires_at: datetime = strawberry.field(
            description="When the job and its result are forgotten."
        )
        retry_of: strawberry.ID | None = strawberry.field(
            description="The job this one retries, if any."
        )
        result = strawberry.field(
            resolver=load_result,
            graphql_type=Optional[job_result],  # noqa: UP045
            description="Set when SUCCESS.",
        )
        error = strawberry.field(resolver=_error, description="Set when FAILURE or REVOKED.")
        callback = strawberry.field(
            resolver=_callback, description="Set when the job was given a callbackUrl."
        )

    return Job


def _error(root: JobSnapshot) -> JobError | None:
    error = root.error
    if error is None:
        return None
    return JobError(code=error.code, message=error.message, retryable=error.retryable)
