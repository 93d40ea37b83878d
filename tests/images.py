"""Test images made on the spot: a phone-like photo with GPS and orientation, and broken files."""

from __future__ import annotations

import io

from PIL import ExifTags, Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
ORIENTATION_ROTATE_90_CW = 6


def phone_photo(width: int = 3000, height: int = 2000, image_format: str = "JPEG") -> bytes:
    """Stored landscape, left half red and right half blue, tagged to display rotated
    90 degrees clockwise (so upright it is red on top), with GPS coordinates in EXIF."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = ORIENTATION_ROTATE_90_CW
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (51.0, 30.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "W",
        ExifTags.GPS.GPSLongitude: (0.0, 7.0, 40.0),
    }
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, exif=exif, quality=90)
    return buffer.getvalue()


def transparent_png(size: int = 400) -> bytes:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((0, 200, 0, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG whose header is fine and whose pixel data stops a third of the way in."""
    data = phone_photo(600, 400)
    return data[: len(data) // 3]


def is_red(pixel: tuple[int, ...]) -> bool:
    return pixel[0] > 150 and pixel[1] < 90 and pixel[2] < 90


def is_blue(pixel: tuple[int, ...]) -> bool:
    return pixel[2] > 150 and pixel[0] < 90 and pixel[1] < 90
