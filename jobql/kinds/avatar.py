"""The `avatar` kind: an uploaded photo becomes a small square image, served publicly.

No `from __future__ import annotations`: Strawberry reads these annotations at run time.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.file_uploads import Upload

from jobql.images import Avatar, ImageFormat, InvalidImage, existing_avatar, make_avatar
from jobql.kinds import (
    BadUserInput,
    Command,
    FileArea,
    JobFailed,
    JobFiles,
    JobSnapshot,
    Kind,
    MutationInfo,
    RetryLater,
    RetryPolicy,
    StorageUnavailable,
    TaskContext,
    caller,
    check_rate,
    enqueue,
    fingerprint_of,
    incoming_upload,
    open_upload,
    upload_digest,
)
from jobql.uploads import UploadRejected, sniff_image

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from jobql.client import JobData, JobqlClient

SIZES = range(32, 1025)
QUALITIES = range(1, 101)
DEFAULT_SIZE = 256
DEFAULT_QUALITY = 85
SIZES_TEXT = f"{SIZES.start}..{SIZES.stop - 1}"
QUALITIES_TEXT = f"{QUALITIES.start}..{QUALITIES.stop - 1}"
logger = logging.getLogger(__name__)

strawberry.enum(ImageFormat, description="The format of an avatar file.")


@dataclass(frozen=True, slots=True)
class AvatarPayload:
    incoming_name: str  # the upload's name in the store
    size: int
    quality: int
    image_format: ImageFormat


@strawberry.type(description="A finished avatar, served by this API at `url`.")
class AvatarResult:
    url: str
    width: int
    height: int
    size_bytes: int
    format: ImageFormat


@strawberry.input(description="How to make the avatar.")
class AvatarOptions:
    size: int | None = strawberry.field(
        default=DEFAULT_SIZE, description=f"Side of the square, {SIZES_TEXT} pixels."
    )
    quality: int | None = strawberry.field(
        default=DEFAULT_QUALITY, description=f"Encoder quality, {QUALITIES_TEXT}."
    )
    format: ImageFormat | None = ImageFormat.JPEG


def checked_avatar_options(size: int, quality: int) -> None:
    if size not in SIZES:
        raise BadUserInput(f"options.size must be {SIZES_TEXT}.", field="size")
    if quality not in QUALITIES:
        raise BadUserInput(f"options.quality must be {QUALITIES_TEXT}.", field="quality")


async def upload_avatar(
    info: MutationInfo,
    file: Upload,
    options: AvatarOptions | None = None,
    idempotency_key: Annotated[
        str | None,
        strawberry.argument(
            description="Sent again with the same file and options within 24 hours: the first job."
        ),
    ] = None,
) -> JobSnapshot:
    """Queue a photo to become a square avatar; answers at once with the job."""
    caller(info)  # who asks comes before what they ask
    options = options or AvatarOptions()
    size = DEFAULT_SIZE if options.size is None else options.size
    quality = DEFAULT_QUALITY if options.quality is None else options.quality
    checked_avatar_options(size, quality)
    upload_id, name = incoming_upload(info, file)
    await check_rate(info)  # before the upload is read
    try:
        await asyncio.to_thread(_sniff, info, name)
    except UploadRejected as exc:
        raise BadUserInput(str(exc), field="file") from exc
    payload = AvatarPayload(name, size, quality, options.format or ImageFormat.JPEG)
    job = await enqueue(
        info,
        kind,
        payload,
        job_id=upload_id,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint_of(
            upload_digest(info, file), size, quality, payload.image_format.value
        ),
    )
    logger.debug("Accepted an avatar job", extra={"job_id": job.id})
    return job


def _sniff(info: MutationInfo, name: str) -> None:
    """Whether the upload is an image the worker will take (its header only). Blocking."""
    settings = info.context.settings
    with open_upload(info, name) as upload:
        sniff_image(upload, settings.max_image_pixels, settings.max_decoded_image_bytes)


def make(ctx: TaskContext, payload: AvatarPayload) -> AvatarResult:
    """Make the avatar; a redelivery whose upload is gone finds what an earlier one made.

    An avatar the media store cannot take (full, read-only, gone) is tried again later
    (`JOBQL_STORAGE_MAX_RETRIES`, `JOBQL_STORAGE_RETRY_BACKOFF`). The upload is removed
    once the avatar is made or the photo found unusable; after any other end (cancelled,
    out of time, out of retries) it is kept for `retryJob`, and the sweep removes it once
    the job has expired.
    """
    files = ctx.files
    assert files is not None, "the kind declares a file area"
    name = f"{ctx.job_id}.{payload.image_format.extension}"
    keep_upload = True
    try:
        try:
            upload = ctx.storage.open_upload(payload.incoming_name)
        except FileNotFoundError:
            made = _made_earlier(files, name, payload.image_format)
        else:
            with upload:
                made = make_avatar(
                    upload,
                    lambda write: files.publish(name, write, after_a_lost_delivery=ctx.attempt > 1),
                    size=payload.size,
                    quality=payload.quality,
                    image_format=payload.image_format,
                    max_pixels=ctx.settings.max_image_pixels,
                    max_decoded_bytes=ctx.settings.max_decoded_image_bytes,
                    progress=lambda percent: _step(ctx, percent),
                )
        keep_upload = False
    except InvalidImage as exc:
        keep_upload = False
        raise JobFailed("INVALID_IMAGE", str(exc), retryable=False) from None
    except StorageUnavailable as exc:
        raise RetryLater("STORAGE_UNAVAILABLE", f"The avatar could not be stored ({exc})") from exc
    finally:
        if not keep_upload:
            ctx.storage.remove_upload(payload.incoming_name)
    return AvatarResult(
        url=files.url(name),
        width=made.width,
        height=made.height,
        size_bytes=made.size_bytes,
        format=made.format,
    )


AVATAR_WRITTEN = 90


def _made_earlier(files: JobFiles, name: str, image_format: ImageFormat) -> Avatar:
    """What an earlier delivery of the job made before it died, its upload removed."""
    try:
        with files.open(name) as earlier:
            made = existing_avatar(earlier, image_format)
    except FileNotFoundError:
        made = None
    if made is None:
        raise JobFailed(
            "UPLOAD_LOST", "The uploaded file is gone; upload it again.", retryable=True
        )
    return made


def _step(ctx: TaskContext, percent: int) -> None:
    """Between decode, resize and encode: a checkpoint, then the progress report. Once the
    avatar is written (90) there is nothing left to stop."""
    if percent < AVATAR_WRITTEN:
        ctx.check_cancelled()
    ctx.report_progress(percent)


# --- the terminal client: `jobql upload-avatar` -----------------------------------------------

UPLOAD_AVATAR = """
mutation UploadAvatar($file: Upload!, $options: AvatarOptions) {
    uploadAvatar(file: $file, options: $options) { ...JobFields }
}"""


def _arguments(parser: "argparse.ArgumentParser") -> None:
    from pathlib import Path

    parser.add_argument("photo", type=Path, help="the photo (JPEG, PNG, WebP or GIF)")
    parser.add_argument(
        "--size", type=int, default=None, help=f"side in pixels, {SIZES_TEXT} ({DEFAULT_SIZE})"
    )
    parser.add_argument(
        "--format", dest="image_format", type=str.upper, choices=list(ImageFormat), default=None
    )


def _check(args: "argparse.Namespace") -> str | None:
    try:
        with args.photo.open("rb"):
            return None
    except OSError as exc:
        return f"cannot read {args.photo}: {exc.strerror}"


async def _queue(client: "JobqlClient", args: "argparse.Namespace") -> "JobData":
    options: dict[str, Any] = {}
    if args.size is not None:
        options["size"] = args.size
    if args.image_format is not None:
        options["format"] = args.image_format
    return await client.mutate_with_file(
        UPLOAD_AVATAR, "UploadAvatar", {"options": options or None}, "file", args.photo
    )


def _describe(result: dict[str, Any], absolute: "Callable[[str], str]") -> list[str]:
    return [
        f"avatar: {absolute(result['url'])}",
        f"size: {result['width']}x{result['height']} {result['format']}, "
        f"{result['sizeBytes']} bytes",
    ]


kind = Kind(
    name="avatar",
    payload=AvatarPayload,
    result=AvatarResult,
    run=make,
    mutation=upload_avatar,
    files=FileArea("avatars"),
    retry=RetryPolicy(
        max_retries=lambda settings: settings.storage_max_retries,
        backoff=lambda settings: settings.storage_retry_backoff,
    ),
    command=Command(
        name="upload-avatar",
        help="upload a photo to a running server, to become a square avatar",
        add_arguments=_arguments,
        queue=_queue,
        check=_check,
    ),
    describe=_describe,
)
