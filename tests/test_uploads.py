"""Unit tests for sniffing uploads: only a readable image header gets a job queued."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import warnings
import zlib
from typing import TYPE_CHECKING

import pillow_heif
import pytest
from PIL import Image

from jobql.uploads import UploadRejected, sniff_image
from tests.images import phone_photo, transparent_png

if TYPE_CHECKING:
    from pathlib import Path

MAX_PIXELS = 40_000_000


def encoded(image_format: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format=image_format)
    return buffer.getvalue()


def heic(size: tuple[int, int] = (40, 30)) -> bytes:
    pillow_heif.register_heif_opener()
    return encoded("HEIF", size)


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims `width` x `height`, with a valid CRC."""
    data = bytearray(encoded("PNG", (1, 1)))
    # Signature (8) + IHDR length (4) + type (4); then width, height and 5 more bytes.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29]))
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def sniff(tmp_path: Path, data: bytes, max_pixels: int = MAX_PIXELS, name: str = "a.upload") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return sniff_image(path, max_pixels, max_decoded_bytes=100 * 1024 * 1024)


# --- accepted images ------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_accepted_format_returns_its_name(tmp_path: Path, image_format: str) -> None:
    data = encoded(image_format)

    assert sniff(tmp_path, data) == image_format
    assert (tmp_path / "a.upload").read_bytes() == data  # sniffing leaves the file alone


def test_heic_from_a_phone_is_accepted_as_heif(tmp_path: Path) -> None:
    data = heic()
    assert data[4:12] == b"ftypheic"

    assert sniff(tmp_path, data) == "HEIF"


def test_jobql_reads_heic_without_the_caller_registering_anything(tmp_path: Path) -> None:
    # In this process the opener is already registered (to write the file); a fresh
    # interpreter shows that importing jobql.uploads is enough.
    path = tmp_path / "photo.upload"
    path.write_bytes(heic())
    code = (
        "import sys; from jobql.uploads import sniff_image; "
        "print(sniff_image(sys.argv[1], 10**6, 10**8))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )

    assert (done.returncode, done.stdout.strip()) == (0, "HEIF"), done.stderr


def test_phone_photo_and_transparent_png_are_accepted(tmp_path: Path) -> None:
    assert sniff(tmp_path, phone_photo(600, 400), name="photo.jpg") == "JPEG"
    assert sniff(tmp_path, transparent_png(), name="logo.png") == "PNG"


def test_exactly_max_pixels_is_accepted(tmp_path: Path) -> None:
    assert sniff(tmp_path, encoded("PNG", (40, 30)), max_pixels=40 * 30) == "PNG"


def test_heic_exactly_max_pixels_is_accepted(tmp_path: Path) -> None:
    assert sniff(tmp_path, heic((64, 32)), max_pixels=64 * 32) == "HEIF"


# --- rejected files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Hello, this is just a text file.\n" * 10, id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"'
            b' height="10"><script>alert(1)</script></svg>\n',
            id="svg",
        ),
        pytest.param(
            b"<!doctype html><html><body><script>alert(1)</script></body></html>\n", id="html"
        ),
        pytest.param(b"<?php echo shell_exec($_GET['cmd']); ?>\n", id="php"),
        pytest.param(encoded("BMP"), id="bmp"),
        pytest.param(encoded("TIFF"), id="tiff"),
        pytest.param(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", id="pdf"),
    ],
)
def test_non_images_named_jpg_are_rejected(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UploadRejected, match="not an image") as raised:
        sniff(tmp_path, data, name="avatar.jpg")

    assert type(raised.value) is UploadRejected


def test_bmp_and_tiff_are_images_pillow_reads_but_jobql_does_not(tmp_path: Path) -> None:
    # The rejections above come from the format allow-list, not from Pillow failing.
    for image_format in ("BMP", "TIFF"):
        with Image.open(io.BytesIO(encoded(image_format))) as image:
            assert image.format == image_format
        with pytest.raises(UploadRejected):
            sniff(tmp_path, encoded(image_format), name=f"x.{image_format.lower()}")


def test_header_declaring_a_huge_image_is_rejected_without_decoding(tmp_path: Path) -> None:
    data = png_declaring(20_000, 20_000)
    assert len(data) < 200
    assert struct.unpack(">II", data[16:24]) == (20_000, 20_000)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]

    started = time.perf_counter()
    with pytest.raises(UploadRejected) as raised:
        sniff(tmp_path, data)
    elapsed = time.perf_counter() - started

    assert type(raised.value) is UploadRejected
    # Decoding 400 megapixels would take seconds and more than a gigabyte.
    assert elapsed < 1.0


def test_header_over_max_pixels_but_below_pillow_bomb_limit_is_rejected(tmp_path: Path) -> None:
    # 10000x10000 = 100M pixels: over max_pixels; Pillow itself only warns about it.
    data = png_declaring(10_000, 10_000)
    with (
        pytest.warns(Image.DecompressionBombWarning),
        Image.open(io.BytesIO(data)) as image,  # the patched header is valid
    ):
        assert image.size == (10_000, 10_000)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UploadRejected, match="10000x10000"):
            sniff(tmp_path, data, max_pixels=MAX_PIXELS)

    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_one_pixel_over_max_pixels_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="40x30 pixels"):
        sniff(tmp_path, encoded("PNG", (40, 30)), max_pixels=40 * 30 - 1)


def test_heic_one_pixel_over_max_pixels_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="64x32 pixels"):
        sniff(tmp_path, heic((64, 32)), max_pixels=64 * 32 - 1)


def test_upload_rejected_is_a_value_error() -> None:
    assert issubclass(UploadRejected, ValueError)
