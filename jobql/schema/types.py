"""The GraphQL types of jobql's public API. `Job` is built for the kinds loaded: its `kind`
is one of them (`JobKind`) and its `result` one of their result types (`JobResult`).

Every field of `Job` reads a `JobSnapshot`, which is what resolvers answer with.

No `from __future__ import annotations`: Strawberry reads these annotations at run time.
"""

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Optional, Union

import strawberry

from jobql.jobs import JobSnapshot, JobState

if TYPE_CHECKING:
    from jobql.registry import Kinds

strawberry.enum(JobState, description="A job's state, named as Celery names it.")


@strawberry.type(description="Why a job failed or was cancelled.")
class JobError:
    code: str
    message: str
    retryable: bool = strawberry.field(description="Whether the same request may succeed later.")


def job_type(kinds: "Kinds") -> type:
    """`Job`, whose `kind` and `result` cover exactly `kinds`."""
    job_kind = strawberry.enum(kinds.enum, name="JobKind", description="What a job does.")
    results = tuple(kind.result for kind in kinds)
    job_result = Annotated[Union[results], strawberry.union("JobResult")]  # type: ignore[valid-type]  # noqa: UP007

    def _kind(root: JobSnapshot) -> StrEnum:
        return kinds.enum(root.kind)

    def _result(root: JobSnapshot) -> Any:
        return None if root.result is None else kinds.load_result(root.kind, root.result)

    # No annotations: a field with one would come before those without in the schema.
    @strawberry.type(name="Job", description="A piece of slow work and where it has got to.")
    class Job:
        id = strawberry.field(resolver=_id, graphql_type=strawberry.ID)
        kind = strawberry.field(resolver=_kind, graphql_type=job_kind)
        state = strawberry.field(resolver=_state)
        done = strawberry.field(resolver=_done, description="SUCCESS, FAILURE or REVOKED.")
        progress = strawberry.field(
            resolver=_progress, description="0..100, when the task reports it."
        )
        created_at = strawberry.field(resolver=_created_at)
        started_at = strawberry.field(resolver=_started_at)
        finished_at = strawberry.field(resolver=_finished_at)
        result = strawberry.field(
            resolver=_result,
            graphql_type=Optional[job_result],  # noqa: UP045
            description="Set when SUCCESS.",
        )
        error = strawberry.field(resolver=_error, description="Set when FAILURE or REVOKED.")

    return Job


# Each field of `Job` reads the snapshot it is given.


def _id(root: JobSnapshot) -> str:
    return root.id


def _state(root: JobSnapshot) -> JobState:
    return root.state


def _done(root: JobSnapshot) -> bool:
    return root.done


def _progress(root: JobSnapshot) -> int | None:
    return root.progress


def _created_at(root: JobSnapshot) -> datetime:
    return root.created_at


def _started_at(root: JobSnapshot) -> datetime | None:
    return root.started_at


def _finished_at(root: JobSnapshot) -> datetime | None:
    return root.finished_at


def _error(root: JobSnapshot) -> JobError | None:
    error = root.error
    if error is None:
        return None
    return JobError(code=error.code, message=error.message, retryable=error.retryable)
