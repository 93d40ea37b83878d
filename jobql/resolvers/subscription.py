import asyncio
import math
from collections.abc import AsyncGenerator
from enum import StrEnum
from typing import Any

import strawberry
from redis.exceptions import RedisError
from strawberry.types import Info

from jobql.errors import JobLost, NotFound, ServiceUnavailable
from jobql.jobs import (
    JobSnapshot,
    JobState,
    event_order,
    is_job_id,
    load_meta,
    meta_key,
    owner_events,
    read_owner_event,
    snapshot,
)
from jobql.resolvers.context import Context
from jobql.store import JobStore
from jobql.watcher import DataLost, Mailbox, WatchLost

BEFORE_ANY = (-math.inf,)  # orders before any write of a job
LOST_WITHIN = 5.0  # seconds a broken watch waits for Redis to tell whether its job is gone
LOST_RETRY = 0.25


async def job(info: Info[Context, None], id: strawberry.ID) -> AsyncGenerator[JobSnapshot, None]:
    """The job now, then again at every change of state; completes once it is done."""
    context = info.context
    user_id = context.principal().user_id
    job_id = str(id)
    if not is_job_id(job_id):
        raise NotFound("No such job.")
    services = context.services
    with (
        # Over every connection and transport of this process; RATE_LIMITED past the cap.
        services.subscriptions.hold(user_id),
        services.reclaimer.counted(),
        context.redis_errors_as_unavailable(),
    ):
        # Subscribe before reading the key, so that no change falls between the two.
        async with (
            context.watcher.watch(meta_key(job_id)) as events,
            context.metrics.subscription(),
        ):
            record, meta = await context.store.load(job_id)
            if record.get("owner") != user_id:
                raise NotFound("No such job.")
            async for current in _changes(context.store, job_id, record, meta, events):
                yield context.services.kinds.known(current)


async def _changes(
    store: JobStore,
    job_id: str,
    record: dict[str, str],
    meta: dict[str, Any] | None,
    events: Mailbox,
) -> AsyncGenerator[JobSnapshot, None]:
    current = snapshot(job_id, record, meta)
    yield current
    last_order = event_order(meta)
    while not current.done:
        event = await events.get()
        if isinstance(event, WatchLost):
            await raise_if_lost(store, job_id)
            raise ServiceUnavailable("Lost the connection to the job store; subscribe again.")
        if isinstance(event, DataLost):
            await raise_if_lost(store, job_id)
            continue  # made after the loss: it is there
        meta = load_meta(event)
        order = event_order(meta)
        if order <= last_order:
            continue  # a write older than one already sent
        last_order = order
        if "started_at" not in record or (meta is not None and meta["status"] == JobState.STARTED):
            # A delivery started: the record has its start time, attempt count and expiry.
            record = await store.record(job_id) or record
        current = snapshot(job_id, record, meta)
        yield current


async def raise_if_lost(store: JobStore, job_id: str, within: float = LOST_WITHIN) -> None:
    """`JobLost` if the job's record is gone. Asked when Redis lost its data, or when the
    pub/sub connection broke (a Redis restarted without persistence): then Redis is asked
    again for up to `within` seconds while it comes back; if it does not, the caller's
    own error stands."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            record = await store.record(job_id)
        except (RedisError, OSError, TimeoutError):
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(LOST_RETRY)
            continue
        if not record:
            raise JobLost(
                "The job store lost this job (Redis lost its data); it will not run: "
                "submit it again."
            )
        return


async def jobs(
    info: Info[Context, None], kind: StrEnum | None
) -> AsyncGenerator[JobSnapshot, None]:
    """Every state change of every job of the caller's (of `kind`, if given), from now on,
    jobs created later included, until the client stops.

    One pub/sub channel per owner carries them (the watcher subscribes to it once per
    process, however many subscriptions share it); a write older than one already sent
    for the same job is dropped.
    """
    context = info.context
    user_id = context.principal().user_id
    services = context.services
    kinds = {kind.value} if kind is not None else set(services.kinds.names)
    with (
        # Over every connection and transport of this process; RATE_LIMITED past the cap.
        services.subscriptions.hold(user_id),
        services.reclaimer.counted(),
        context.redis_errors_as_unavailable(),
    ):
        async with (
            context.watcher.watch(owner_events(user_id)) as events,
            context.metrics.subscription(),
        ):
            # The last write sent of each job not yet done.
            sent: dict[str, tuple[float, ...]] = {}
            while True:
                event = await events.get()
                if isinstance(event, WatchLost):
                    raise ServiceUnavailable(
                        "Lost the connection to the job store; subscribe again."
                    )
                if isinstance(event, DataLost):
                    raise JobLost(
                        "The job store lost its data, and jobs of yours with it: list them "
                        "again (`jobs`), and subscribe again."
                    )
                job_id, record, meta = read_owner_event(event)
                if record.get("owner") != user_id or record.get("kind") not in kinds:
                    continue
                order = event_order(meta)
                if order <= sent.get(job_id, BEFORE_ANY):
                    continue
                current = snapshot(job_id, record, meta)
                if current.done:
                    sent.pop(job_id, None)
                else:
                    sent[job_id] = order
                yield current
