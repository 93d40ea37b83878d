"""The caller's jobs a page at a time (`jobs`), and one job awaited (`waitForJob`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from jobql.errors import BadUserInput, ServiceUnavailable
from jobql.jobs import TERMINAL_STATES, JobState, is_job_id, load_meta, meta_key
from jobql.listing import MAX_FIRST, MAX_WAIT_SECONDS, BadCursor
from jobql.resolvers.subscription import raise_if_lost
from jobql.watcher import DataLost, WatchLost

if TYPE_CHECKING:
    from enum import StrEnum

    from strawberry.types import Info

    from jobql.jobs import JobSnapshot
    from jobql.listing import Page
    from jobql.resolvers.context import Context
    from jobql.store import JobStore
    from jobql.watcher import Mailbox

DEFAULT_FIRST = 20
DEFAULT_WAIT_SECONDS = 30


async def jobs(
    info: Info[Context, None],
    first: int | None,
    after: str | None,
    state: JobState | None,
    kind: StrEnum | None,
) -> Page:
    """The caller's jobs, newest first; `BAD_USER_INPUT` for `first` out of 1..100 or a
    cursor that is not one this API gave the caller."""
    context = info.context
    user_id = context.principal().user_id
    first = DEFAULT_FIRST if first is None else first
    if not 1 <= first <= MAX_FIRST:
        raise BadUserInput(f"first must be 1..{MAX_FIRST}.", field="first")
    try:
        position = None if after is None else context.services.listing.position(user_id, after)
    except BadCursor as exc:
        raise BadUserInput("after is not a cursor from this API.", field="after") from exc
    kinds = [kind.value] if kind is not None else context.services.kinds.names
    with context.redis_errors_as_unavailable():
        return await context.services.listing.page(
            user_id, first, position, kinds, state.value if state else None
        )


async def wait_for_job(
    info: Info[Context, None], job_id: str, timeout_seconds: int | None
) -> JobSnapshot | None:
    """The job once it is done, or as it is after `timeout_seconds`; None if it does not
    exist or is someone else's. Waits on the process's pub/sub fan-out: no polling."""
    context = info.context
    user_id = context.principal().user_id
    timeout = DEFAULT_WAIT_SECONDS if timeout_seconds is None else timeout_seconds
    if not 1 <= timeout <= MAX_WAIT_SECONDS:
        raise BadUserInput(f"timeoutSeconds must be 1..{MAX_WAIT_SECONDS}.", field="timeoutSeconds")
    services = context.services
    kinds = services.kinds
    # A wait holds a watch as a subscription does, and counts against the same cap.
    with services.subscriptions.hold(user_id), context.redis_errors_as_unavailable():
        if not is_job_id(job_id):
            return await context.store.get(job_id, owner=user_id)  # None, in the same time
        # Subscribe before reading the job, so that its end cannot fall between the two.
        async with context.watcher.watch(meta_key(job_id)) as events:
            job = await context.store.get(job_id, owner=user_id)
            if job is None or job.done:
                return kinds.known(job) if job else None
            try:
                async with asyncio.timeout(timeout):
                    await _until_done(context.store, job_id, events)
            except TimeoutError:
                pass  # answered with the job as it is now
            job = await context.store.get(job_id, owner=user_id)
            if job is None:  # it was there a moment ago
                await raise_if_lost(context.store, job_id)
    return kinds.known(job) if job else None


async def _until_done(store: JobStore, job_id: str, events: Mailbox) -> None:
    while True:
        event = await events.get()
        if isinstance(event, WatchLost):
            await raise_if_lost(store, job_id)
            raise ServiceUnavailable("Lost the connection to the job store; ask again.")
        if isinstance(event, DataLost):
            await raise_if_lost(store, job_id)
            continue
        meta = load_meta(event)
        if meta is not None and JobState(meta["status"]) in TERMINAL_STATES:
            return
