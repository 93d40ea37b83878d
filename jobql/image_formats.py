"""The image formats jobql reads, and what decoding one costs: shared by the upload check and the
worker."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pillow_heif
from PIL import ImageFile, ImageMode

if TYPE_CHECKING:
    from PIL import Image

# HEIC is what iPhones send; pillow-heif teaches Pillow to read it.
pillow_heif.register_heif_opener()

READABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "HEIF")

# A truncated image is an invalid one, never one padded out to the size its header claims.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decoded_bytes(image: Image.Image) -> int:
    """The memory the image's pixels take once decoded, by its header: pixels x bytes per pixel
    of its mode (a 16-bit greyscale pixel is 2 bytes, an RGB one 3)."""
    mode = ImageMode.getmode(image.mode)
    return image.width * image.height * len(mode.bands) * int(mode.typestr[-1])


def too_short_for_its_size(image: Image.Image, file_size: int) -> bool:
    """Whether a JPEG file has fewer bytes than the size its header claims needs.

    In a Huffman-coded JPEG every 8x8 block of a full-resolution component costs at least one
    bit (its DC code). libjpeg pads an image whose data ends early with grey and says nothing
    Pillow hears: this is how a 64x64 JPEG whose header claims 8000x8000 is told from a real one.
    `image` is as opened, before `draft` scales it down.
    """
    if image.format not in ("JPEG", "MPO"):
        return False
    blocks = math.ceil(image.width / 8) * math.ceil(image.height / 8)
    return file_size * 8 < blocks
