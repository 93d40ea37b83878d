import asyncio
from typing import TYPE_CHECKING, Annotated, cast

import strawberry
from strawberry.file_uploads import Upload
from strawberry.types import Info

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.errors import BadUserInput, Forbidden, PayloadTooLarge
from jobql.jobs import ImageFormat, JobKind, new_job_id
from jobql.resolvers.context import Context, redis_errors_as_unavailable
from jobql.resolvers.validation import (
    checked_avatar_options,
    checked_delay,
    checked_email,
    checked_username,
)
from jobql.schema.types import AvatarOptions, Job
from jobql.uploads import UploadRejected, UploadTooLarge, store_upload

if TYPE_CHECKING:
    from starlette.datastructures import UploadFile


async def upload_avatar(
    info: Info[Context, None], file: Upload, options: AvatarOptions | None = None
) -> Job:
    """Queue a photo to become a square avatar; answers at once with the job."""
    context = info.context
    user_id = context.principal().user_id
    options = options or AvatarOptions()
    size = 256 if options.size is None else options.size
    quality = 85 if options.quality is None else options.quality
    image_format = options.format or ImageFormat.JPEG
    checked_avatar_options(size, quality)
    settings = context.settings
    job_id = new_job_id()
    incoming = settings.incoming_dir / f"{job_id}.upload"
    upload = cast("UploadFile", file)
    try:
        await asyncio.to_thread(
            store_upload,
            upload.file,
            incoming,
            settings.max_upload_bytes,
            settings.max_image_pixels,
        )
    except UploadTooLarge as exc:
        raise PayloadTooLarge(str(exc), maxBytes=settings.max_upload_bytes) from exc
    except UploadRejected as exc:
        raise BadUserInput(str(exc), field="file") from exc
    args = [incoming.name, size, quality, image_format.value]
    try:
        with redis_errors_as_unavailable():
            snapshot = await context.store.enqueue(JobKind.AVATAR, user_id, args, job_id=job_id)
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    return Job.from_snapshot(snapshot)


async def send_welcome_email(
    info: Info[Context, None],
    email: str,
    username: str,
    delay_seconds: Annotated[
        int, strawberry.argument(description="Send no sooner than this many seconds from now.")
    ] = 0,
) -> Job:
    """Queue a welcome email; needs the `email:send` scope."""
    principal = info.context.principal()
    if not principal.has_scope(SCOPE_SEND_EMAIL):
        raise Forbidden(f"Sending email needs the '{SCOPE_SEND_EMAIL}' scope.")
    args = [checked_email(email), checked_username(username)]
    delay = checked_delay(delay_seconds)
    with redis_errors_as_unavailable():
        snapshot = await info.context.store.enqueue(
            JobKind.WELCOME_EMAIL, principal.user_id, args, delay=delay
        )
    return Job.from_snapshot(snapshot)
