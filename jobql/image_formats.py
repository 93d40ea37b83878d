"""The image formats jobql reads, shared by the upload check and the worker."""

from __future__ import annotations

import pillow_heif

# HEIC is what iPhones send; pillow-heif teaches Pillow to read it.
pillow_heif.register_heif_opener()

READABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "HEIF")
