"""The GraphQL types of jobql's public API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from jobql.jobs import ImageFormat, JobKind, JobState

if TYPE_CHECKING:
    from jobql.jobs import JobSnapshot

DEFAULT_SIZE = 256
DEFAULT_QUALITY = 85

strawberry.enum(JobState, description="A job's state, named as Celery names it.")
strawberry.enum(JobKind, description="What a job does.")
strawberry.enum(ImageFormat, description="The format of an avatar file.")


@strawberry.type(description="A finished avatar, served by this API at `url`.")
class AvatarResult:
    url: str
    width: int
    height: int
    size_bytes: int
    format: ImageFormat


@strawberry.type(description="A welcome email the SMTP server accepted.")
class EmailResult:
    recipient: str
    message_id: str


JobResult = Annotated[AvatarResult | EmailResult, strawberry.union("JobResult")]


@strawberry.type(description="Why a job failed or was cancelled.")
class JobError:
    code: str
    message: str
    retryable: bool = strawberry.field(description="Whether the same request may succeed later.")


@strawberry.type(description="A piece of slow work and where it has got to.")
class Job:
    id: strawberry.ID
    kind: JobKind
    state: JobState
    done: bool = strawberry.field(description="SUCCESS, FAILURE or REVOKED.")
    progress: int | None = strawberry.field(description="0..100, when the task reports it.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: JobResult | None = strawberry.field(description="Set when SUCCESS.")
    error: JobError | None = strawberry.field(description="Set when FAILURE or REVOKED.")

    @classmethod
    def from_snapshot(cls, snapshot: JobSnapshot) -> Job:
        return cls(
            id=strawberry.ID(snapshot.id),
            kind=snapshot.kind,
            state=snapshot.state,
            done=snapshot.done,
            progress=snapshot.progress,
            created_at=snapshot.created_at,
            started_at=snapshot.started_at,
            finished_at=snapshot.finished_at,
            result=_result(snapshot.kind, snapshot.result),
            error=JobError(
                code=snapshot.error.code,
                message=snapshot.error.message,
                retryable=snapshot.error.retryable,
            )
            if snapshot.error
            else None,
        )


@strawberry.input(description="How to make the avatar.")
class AvatarOptions:
    size: int | None = strawberry.field(
        default=DEFAULT_SIZE, description="Side of the square, 32..1024 pixels."
    )
    quality: int | None = strawberry.field(
        default=DEFAULT_QUALITY, description="Encoder quality, 1..100."
    )
    format: ImageFormat | None = ImageFormat.JPEG


def _result(kind: JobKind, result: dict[str, Any] | None) -> AvatarResult | EmailResult | None:
    if result is None:
        return None
    if kind is JobKind.AVATAR:
        return AvatarResult(
            url=result["url"],
            width=result["width"],
            height=result["height"],
            size_bytes=result["size_bytes"],
            format=ImageFormat(result["format"]),
        )
    return EmailResult(recipient=result["recipient"], message_id=result["message_id"])
