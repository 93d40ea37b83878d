"""Test images made on the spot: a phone-like photo with GPS and orientation, and broken files."""

from __future__ import annotations

import io
import zlib

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


def heic_photo(width: int = 640, height: int = 480) -> bytes:
    """What an iPhone sends: HEIC, with GPS in its EXIF."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (51.0, 30.0, 12.0),
    }
    buffer = io.BytesIO()
    image.save(buffer, format="HEIF", exif=exif, quality=80)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels: a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # IHDR: length (4) + type (4) + width (4) + height (4) + 5 bytes, then its CRC.
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


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


def sixteen_bit_png(width: int = 8000, height: int = 8000) -> bytes:
    """A real 16-bit greyscale PNG, all black: 124 KB for 8000x8000, 128 MB once decoded."""
    row = b"\0" * (1 + 2 * width)  # filter byte, then 2 bytes a pixel
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data).to_bytes(4, "big")
    return len(data).to_bytes(4, "big") + kind + data + crc


def jpeg_claiming(width: int, height: int) -> bytes:
    """A whole 64x64 JPEG whose frame header claims `width` x `height`: libjpeg pads it out."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height, width
    data[frame + 5 : frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)
