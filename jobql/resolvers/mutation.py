import asyncio
import logging
from datetime import timedelta
from typing import Annotated

import strawberry
from strawberry.file_uploads import Upload
from strawberry.types import Info

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.errors import BadUserInput, Forbidden
from jobql.jobs import ImageFormat, JobKind, JobSnapshot
from jobql.multipart import IncomingUpload
from jobql.resolvers.context import Context
from jobql.resolvers.validation import (
    checked_avatar_options,
    checked_delay,
    checked_email,
    checked_username,
)
from jobql.schema.types import DEFAULT_QUALITY, DEFAULT_SIZE, AvatarOptions, Job
from jobql.store import AlreadyQueued, Dedupe
from jobql.uploads import UploadRejected, sniff_image

WELCOME_ONCE_PER = timedelta(hours=24)
logger = logging.getLogger(__name__)


async def upload_avatar(
    info: Info[Context, None], file: Upload, options: AvatarOptions | None = None
) -> Job:
    """Queue a photo to become a square avatar; answers at once with the job."""
    context = info.context
    user_id = context.principal().user_id
    options = options or AvatarOptions()
    size = DEFAULT_SIZE if options.size is None else options.size
    quality = DEFAULT_QUALITY if options.quality is None else options.quality
    image_format = options.format or ImageFormat.JPEG
    checked_avatar_options(size, quality)
    if not isinstance(file, IncomingUpload):
        raise BadUserInput("'file' must be a file sent as a multipart upload.", field="file")
    if file.claimed:
        raise BadUserInput("Each uploaded file can be used for one job only.", field="file")
    with context.redis_errors_as_unavailable():
        await context.rate_limit.check(user_id)
    try:
        await asyncio.to_thread(sniff_image, file.path, context.settings.max_image_pixels)
    except UploadRejected as exc:
        raise BadUserInput(str(exc), field="file") from exc
    args = [file.path.name, size, quality, image_format.value]
    with context.redis_errors_as_unavailable():
        snapshot = await context.store.enqueue(JobKind.AVATAR, user_id, args, job_id=file.id)
    file.claimed = True
    logger.debug("Accepted an avatar job", extra={"job_id": snapshot.id})
    return Job.from_snapshot(snapshot)


async def send_welcome_email(
    info: Info[Context, None],
    email: str,
    username: str,
    delay_seconds: Annotated[
        int, strawberry.argument(description="Send no sooner than this many seconds from now.")
    ] = 0,
) -> Job:
    """Queue a welcome email; needs the `email:send` scope.

    One email per address per 24 hours: asking again returns the job already queued.
    """
    context = info.context
    principal = context.principal()
    if not principal.has_scope(SCOPE_SEND_EMAIL):
        raise Forbidden(f"Sending email needs the '{SCOPE_SEND_EMAIL}' scope.")
    address = checked_email(email)
    args = [address, checked_username(username)]
    delay = checked_delay(delay_seconds, context.settings.max_delay_seconds)
    with context.redis_errors_as_unavailable():
        await context.rate_limit.check(principal.user_id)
        snapshot = await _enqueue_welcome(context, principal.user_id, args, address, delay)
    logger.debug("Accepted a welcome email job", extra={"job_id": snapshot.id})
    return Job.from_snapshot(snapshot)


async def _enqueue_welcome(
    context: Context, user_id: str, args: list[str], address: str, delay: timedelta | None
) -> JobSnapshot:
    dedupe = Dedupe(f"jobql:welcome:{address.lower()}", WELCOME_ONCE_PER)
    try:
        return await context.store.enqueue(
            JobKind.WELCOME_EMAIL, user_id, args, delay=delay, dedupe=dedupe
        )
    except AlreadyQueued as earlier:
        existing = await context.store.get(earlier.job_id, owner=user_id)
    if existing is None:
        raise BadUserInput(
            "A welcome email to this address was already sent in the last 24 hours.",
            field="email",
        )
    return existing
