"""The fields that read many jobs or wait for one: `Query.jobs`, `Query.waitForJob` and
`Subscription.jobs`, with the connection types `jobs` answers with (Relay's shape).

No `from __future__ import annotations`: Strawberry reads these annotations at run time,
and `JobKind` is the enum of the kinds loaded.
"""

from typing import TYPE_CHECKING, Any, Optional

import strawberry
from strawberry.types import Info

from jobql.jobs import JobState
from jobql.listing import Page
from jobql.resolvers import listing, subscription
from jobql.resolvers.context import Context

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from jobql.jobs import JobSnapshot
    from jobql.registry import Kinds


@strawberry.type(description="Where a page of jobs ends.")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="Whether there may be more jobs after this page (a filtered page that "
        "reached its scan budget says true: ask again from endCursor)."
    )
    end_cursor: Optional[str] = strawberry.field(  # noqa: UP045
        description="Where the next page starts: `after` for it."
    )


def listing_fields(kinds: "Kinds", job: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The query fields and the subscription field, for `Job` as built for `kinds`."""
    job_kind: Any = kinds.enum  # made a Strawberry enum by `job_type`

    @strawberry.type(name="JobEdge", description="A job in a page, and its place there.")
    class JobEdge:
        cursor: str
        node: Any = strawberry.field(graphql_type=job)

    @strawberry.type(name="JobConnection", description="A page of the caller's jobs.")
    class JobConnection:
        edges: list[JobEdge]
        page_info: PageInfo

    async def jobs(
        info: Info[Context, None],
        first: Optional[int] = listing.DEFAULT_FIRST,  # noqa: UP045
        after: Optional[str] = None,  # noqa: UP045
        state: Optional[JobState] = None,  # noqa: UP045
        kind: Optional[job_kind] = None,  # noqa: UP045
    ) -> Page:
        return await listing.jobs(info, first, after, state, kind)

    async def wait_for_job(
        info: Info[Context, None],
        id: strawberry.ID,
        timeout_seconds: Optional[int] = listing.DEFAULT_WAIT_SECONDS,  # noqa: UP045
    ) -> Optional["JobSnapshot"]:
        return await listing.wait_for_job(info, str(id), timeout_seconds)

    async def jobs_feed(
        info: Info[Context, None],
        kind: Optional[job_kind] = None,  # noqa: UP045
    ) -> "AsyncGenerator[JobSnapshot, None]":
        async for current in subscription.jobs(info, kind):
            yield current

    query = {
        "jobs": strawberry.field(
            resolver=jobs,
            graphql_type=JobConnection,
            description="The caller's jobs, newest first (by createdAt), `first` (1..100) at "
            "a time, after the cursor `after`; `state` and `kind` filter.",
        ),
        "wait_for_job": strawberry.field(
            resolver=wait_for_job,
            graphql_type=Optional[job],  # noqa: UP045
            description="The job as soon as it is done, or as it is after timeoutSeconds "
            "(1..60); null if it does not exist or is someone else's.",
        ),
    }
    feed = {
        "jobs": strawberry.subscription(
            resolver=jobs_feed,
            graphql_type=job,
            description="Every state change of every job of the caller's (of `kind`, if "
            "given), from now on, jobs created later included.",
        )
    }
    return query, feed
