"""Unit tests for storing and sniffing uploads."""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING

import pytest
from PIL import Image, PngImagePlugin

from jobql.uploads import CHUNK_BYTES, UploadRejected, UploadTooLarge, store_upload
from tests.images import phone_photo, transparent_png

if TYPE_CHECKING:
    from pathlib import Path

MAX_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 40_000_000


def encoded(image_format: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format=image_format)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims `width` x `height`, with a valid CRC."""
    data = bytearray(encoded("PNG", (1, 1)))
    # Signature (8) + IHDR length (4) + type (4); then width, height and 5 more bytes.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29]))
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def store(
    tmp_path: Path, data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> str:
    return store_upload(io.BytesIO(data), destination(tmp_path), max_bytes, max_pixels)


def destination(tmp_path: Path) -> Path:
    return tmp_path / "incoming" / "upload-1234"


def assert_nothing_left(tmp_path: Path) -> None:
    folder = destination(tmp_path).parent
    assert not folder.exists() or list(folder.iterdir()) == []


# --- accepted images ------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_accepted_format_returns_its_name(tmp_path: Path, image_format: str) -> None:
    data = encoded(image_format)

    assert store(tmp_path, data) == image_format
    assert destination(tmp_path).read_bytes() == data


def test_phone_photo_and_transparent_png_are_accepted(tmp_path: Path) -> None:
    assert store(tmp_path, phone_photo(600, 400)) == "JPEG"
    assert store(tmp_path, transparent_png()) == "PNG"


def test_copy_spans_several_chunks_intact(tmp_path: Path) -> None:
    # A PNG with a long text chunk so the file is larger than one read chunk.
    image = Image.new("RGB", (10, 10))
    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "x" * (CHUNK_BYTES + 12345))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    assert len(data) > CHUNK_BYTES

    assert store(tmp_path, data, max_bytes=len(data)) == "PNG"
    assert destination(tmp_path).read_bytes() == data


def test_source_is_read_from_the_start(tmp_path: Path) -> None:
    data = encoded("PNG")
    source = io.BytesIO(data)
    source.seek(len(data))  # e.g. already read once to compute something

    assert store_upload(source, destination(tmp_path), MAX_BYTES, MAX_PIXELS) == "PNG"
    assert destination(tmp_path).read_bytes() == data


def test_exactly_max_bytes_is_accepted(tmp_path: Path) -> None:
    data = encoded("PNG")

    assert store(tmp_path, data, max_bytes=len(data)) == "PNG"


def test_exactly_max_pixels_is_accepted(tmp_path: Path) -> None:
    assert store(tmp_path, encoded("PNG", (40, 30)), max_pixels=40 * 30) == "PNG"


# --- rejected files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Hello, this is just a text file.\n" * 10, id="text"),
        pytest.param(
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"'
            b' height="10"><script>alert(1)</script></svg>\n',
            id="svg",
        ),
        pytest.param(
            b"<!doctype html><html><body><script>alert(1)</script></body></html>\n", id="html"
        ),
        pytest.param(encoded("BMP"), id="bmp"),
        pytest.param(encoded("TIFF"), id="tiff"),
        pytest.param(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", id="pdf"),
    ],
)
def test_non_images_named_jpg_are_rejected_and_removed(tmp_path: Path, data: bytes) -> None:
    target = tmp_path / "incoming" / "avatar.jpg"

    with pytest.raises(UploadRejected) as raised:
        store_upload(io.BytesIO(data), target, MAX_BYTES, MAX_PIXELS)

    assert type(raised.value) is UploadRejected
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_empty_file_is_rejected_and_removed(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="empty"):
        store(tmp_path, b"")

    assert_nothing_left(tmp_path)


def test_file_over_max_bytes_is_too_large_and_removed(tmp_path: Path) -> None:
    data = encoded("PNG")

    with pytest.raises(UploadTooLarge):
        store(tmp_path, data, max_bytes=len(data) - 1)

    assert_nothing_left(tmp_path)


def test_file_over_max_bytes_across_chunks_is_too_large_and_removed(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * (CHUNK_BYTES * 2)

    with pytest.raises(UploadTooLarge):
        store(tmp_path, data, max_bytes=CHUNK_BYTES + 10)

    assert_nothing_left(tmp_path)


def test_too_large_is_a_kind_of_rejection() -> None:
    assert issubclass(UploadTooLarge, UploadRejected)


def test_header_declaring_more_than_max_pixels_is_rejected(tmp_path: Path) -> None:
    data = png_declaring(20_000, 20_000)
    assert len(data) < 200
    assert struct.unpack(">II", data[16:24]) == (20_000, 20_000)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]

    with pytest.raises(UploadRejected) as raised:
        store(tmp_path, data)

    assert type(raised.value) is UploadRejected
    assert_nothing_left(tmp_path)


def test_header_over_max_pixels_but_below_pillow_bomb_limit_is_rejected(tmp_path: Path) -> None:
    # 10000x10000 = 100M pixels: over max_pixels; Pillow itself only warns about it.
    data = png_declaring(10_000, 10_000)
    with (
        pytest.warns(Image.DecompressionBombWarning),
        Image.open(io.BytesIO(data)) as image,  # the patched header is valid
    ):
        assert image.size == (10_000, 10_000)

    with pytest.raises(UploadRejected, match="10000x10000"):
        store(tmp_path, data, max_pixels=MAX_PIXELS)

    assert_nothing_left(tmp_path)


def test_one_pixel_over_max_pixels_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="pixels"):
        store(tmp_path, encoded("PNG", (40, 30)), max_pixels=40 * 30 - 1)

    assert_nothing_left(tmp_path)


def test_rejection_does_not_remove_other_uploads(tmp_path: Path) -> None:
    kept = tmp_path / "incoming" / "earlier"
    store_upload(io.BytesIO(encoded("PNG")), kept, MAX_BYTES, MAX_PIXELS)

    with pytest.raises(UploadRejected):
        store(tmp_path, b"not an image")

    assert [path.name for path in kept.parent.iterdir()] == ["earlier"]
