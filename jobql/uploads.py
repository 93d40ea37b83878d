"""Uploaded files: copied to the incoming folder under a server-made name, then sniffed.

Only the header is read here, to refuse what is not an image before a job is
queued; decoding is the worker's business.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from pathlib import Path

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
CHUNK_BYTES = 1024 * 1024


class UploadRejected(ValueError):
    """The upload is not something jobql will queue; the message says why."""


class UploadTooLarge(UploadRejected):
    pass


def store_upload(source: BinaryIO, destination: Path, max_bytes: int, max_pixels: int) -> str:
    """Copy `source` to `destination` and check it is an image; return its format.

    Blocking: run it in a thread. On any rejection the copy is removed.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        _copy_at_most(source, destination, max_bytes)
        return sniff_image(destination, max_pixels)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise


def sniff_image(path: Path, max_pixels: int) -> str:
    """The image format named by the file's header, if jobql accepts it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=ACCEPTED_FORMATS) as image:
                width, height, image_format = image.width, image.height, image.format
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise UploadRejected(
                "The file is not an image jobql can read "
                f"(accepted: {', '.join(ACCEPTED_FORMATS)})."
            ) from exc
    if width * height > max_pixels:
        raise UploadRejected(
            f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels."
        )
    return str(image_format)


def _copy_at_most(source: BinaryIO, destination: Path, max_bytes: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        source.seek(0)
    copied = 0
    with destination.open("wb") as target:
        while chunk := source.read(CHUNK_BYTES):
            copied += len(chunk)
            if copied > max_bytes:
                raise UploadTooLarge(f"The file is larger than {max_bytes} bytes.")
            target.write(chunk)
    if copied == 0:
        raise UploadRejected("The file is empty.")
