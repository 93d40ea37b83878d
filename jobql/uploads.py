"""The check an upload passes before a job is queued: its header must name an image.

Only the header is read; decoding is the worker's business.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from jobql.image_formats import READABLE_FORMATS, decoded_bytes

if TYPE_CHECKING:
    from jobql.images import Source


class UploadRejected(ValueError):
    """The upload is not something jobql will queue; the message says why."""


def sniff_image(source: Source, max_pixels: int, max_decoded_bytes: int) -> str:
    """The image format named by the file's header, if jobql accepts it. Blocking."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=READABLE_FORMATS) as image:
                width, height, image_format = image.width, image.height, image.format
                decoded = decoded_bytes(image)
        except Image.DecompressionBombError as exc:
            raise UploadRejected(f"The image has more than {max_pixels} pixels.") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UploadRejected(
                "The file is not an image jobql can read "
                f"(accepted: {', '.join(READABLE_FORMATS)})."
            ) from exc
    if width * height > max_pixels:
        raise UploadRejected(
            f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels."
        )
    # A JPEG is decoded at 1/2, 1/4 or 1/8 scale where that still covers the size asked for:
    # the worker checks the scaled size.
    if decoded > max_decoded_bytes and image_format not in ("JPEG", "MPO"):
        raise UploadRejected(
            f"The image would take {decoded} bytes once decoded ({width}x{height} pixels); "
            f"the limit is {max_decoded_bytes} bytes."
        )
    return str(image_format)
