"""Unit tests for the avatar maker, on images generated on the spot."""

from __future__ import annotations

import io
import itertools
import resource
from typing import TYPE_CHECKING

import pytest
from PIL import Image, ImageCms

from jobql.images import (
    Avatar,
    ImageFormat,
    InvalidImage,
    existing_avatar,
    make_avatar,
)
from jobql.storage import remove_partials, write_atomically
from tests.images import (
    is_blue,
    is_red,
    jpeg_claiming,
    phone_photo,
    sixteen_bit_png,
    transparent_png,
    truncated_jpeg,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import BinaryIO

SIZE = 128
MAX_PIXELS = 50_000_000
MAX_DECODED_BYTES = 100 * 1024 * 1024
METADATA_KEYS = ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment")


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def to(destination: Path) -> Callable[[Callable[[BinaryIO], None]], int]:
    """Publishes to a file, as the filesystem store does (its folder made first)."""

    def publish(write: Callable[[BinaryIO], None]) -> int:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(destination, write)

    return publish


def avatar(
    source: Path,
    destination: Path,
    size: int = SIZE,
    image_format: ImageFormat = ImageFormat.JPEG,
    max_pixels: int = MAX_PIXELS,
) -> Avatar:
    return make_avatar(
        source,
        to(destination),
        size=size,
        quality=85,
        image_format=image_format,
        max_pixels=max_pixels,
        max_decoded_bytes=MAX_DECODED_BYTES,
    )


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def assert_upright(image: Image.Image) -> None:
    """Red on top and blue at the bottom, across the whole width."""
    size = image.width
    rgb = image.convert("RGB")
    for x in (size // 4, 3 * size // 4):
        assert is_red(pixel(rgb, (x, 10))), (x, pixel(rgb, (x, 10)))
        assert is_blue(pixel(rgb, (x, size - 10))), (x, pixel(rgb, (x, size - 10)))


def assert_no_metadata(path: Path) -> None:
    with Image.open(path) as reopened:
        assert len(reopened.getexif()) == 0
        present = [key for key in METADATA_KEYS if key in reopened.info]
        assert present == []


def icc_photo() -> bytes:
    """A JPEG carrying an sRGB ICC profile, an XMP packet, a comment and EXIF."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (300, 200), (220, 20, 20))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    buffer = io.BytesIO()
    image.save(
        buffer,
        format="JPEG",
        icc_profile=profile,
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret</x:xmpmeta>',
        comment=b"taken at home",
        exif=exif,
    )
    return buffer.getvalue()


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- size and orientation -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 64, 128, 333])
def test_output_is_exactly_size_by_size(tmp_path: Path, size: int) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    destination = tmp_path / "out" / "avatar.jpg"

    made = avatar(source, destination, size=size)

    with Image.open(destination) as reopened:
        assert reopened.size == (size, size)
    assert (made.width, made.height) == (size, size)


def test_non_square_input_is_centre_cropped_not_squashed(tmp_path: Path) -> None:
    # A wide image: green stripes at both ends, grey in the middle square.
    image = Image.new("RGB", (900, 300), (0, 200, 0))
    image.paste((128, 128, 128), (300, 0, 600, 300))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    source = write(tmp_path, "wide.png", buffer.getvalue())
    destination = tmp_path / "avatar.png"

    avatar(source, destination, size=64, image_format=ImageFormat.PNG)

    with Image.open(destination) as reopened:
        rgb = reopened.convert("RGB")
        for xy in [(3, 3), (60, 3), (3, 60), (60, 60), (32, 32)]:
            value = pixel(rgb, xy)
            assert all(abs(channel - 128) <= 12 for channel in value), (xy, value)


def test_avatar_record_describes_the_written_file(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    destination = tmp_path / "avatar.webp"

    made = avatar(source, destination, image_format=ImageFormat.WEBP)

    assert made.size_bytes == destination.stat().st_size
    assert made.format is ImageFormat.WEBP
    assert made.size_bytes == destination.stat().st_size > 0


@pytest.mark.parametrize("input_format", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(tmp_path: Path, input_format: str) -> None:
    source = write(tmp_path, "photo", phone_photo(600, 400, image_format=input_format))
    destination = tmp_path / "avatar.png"

    avatar(source, destination, image_format=ImageFormat.PNG)

    with Image.open(destination) as reopened:
        assert_upright(reopened)


def test_large_jpeg_decoded_in_draft_mode_keeps_orientation_and_colours(tmp_path: Path) -> None:
    source = write(tmp_path, "big.jpg", phone_photo(4000, 3000))
    destination = tmp_path / "avatar.jpg"

    made = avatar(source, destination, size=64)

    assert (made.width, made.height) == (64, 64)
    with Image.open(destination) as reopened:
        assert reopened.size == (64, 64)
        assert_upright(reopened)


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_exif_and_gps_are_stripped(tmp_path: Path, image_format: ImageFormat) -> None:
    data = phone_photo(600, 400)
    with Image.open(io.BytesIO(data)) as original:  # the input really carries GPS
        assert original.getexif().get_ifd(0x8825)
    source = write(tmp_path, "photo.jpg", data)
    destination = tmp_path / f"avatar.{image_format.extension}"

    avatar(source, destination, image_format=image_format)

    assert_no_metadata(destination)
    assert b"PhoneMaker" not in destination.read_bytes()


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_icc_profile_xmp_and_comment_are_dropped(tmp_path: Path, image_format: ImageFormat) -> None:
    data = icc_photo()
    with Image.open(io.BytesIO(data)) as original:  # the input really carries them
        assert original.info.get("icc_profile")
        assert original.info.get("xmp")
        assert original.info.get("comment")
    source = write(tmp_path, "icc.jpg", data)
    destination = tmp_path / f"avatar.{image_format.extension}"

    avatar(source, destination, image_format=image_format)

    assert_no_metadata(destination)
    written = destination.read_bytes()
    for marker in (b"secret", b"taken at home", b"PhoneMaker", b"sRGB"):
        assert marker not in written, marker


# --- transparency ---------------------------------------------------------------------------


def test_transparent_png_to_jpeg_is_flattened_onto_white(tmp_path: Path) -> None:
    source = write(tmp_path, "logo.png", transparent_png())
    destination = tmp_path / "avatar.jpg"

    avatar(source, destination, size=100)

    with Image.open(destination) as reopened:
        assert reopened.mode == "RGB"
        corner = pixel(reopened, (2, 2))
        centre = pixel(reopened, (50, 50))
    assert all(channel > 240 for channel in corner), corner
    assert centre[1] > 150 and centre[0] < 60 and centre[2] < 60, centre


def test_transparent_png_to_png_keeps_alpha(tmp_path: Path) -> None:
    source = write(tmp_path, "logo.png", transparent_png())
    destination = tmp_path / "avatar.png"

    avatar(source, destination, size=100, image_format=ImageFormat.PNG)

    with Image.open(destination) as reopened:
        rgba = reopened.convert("RGBA")
        assert pixel(rgba, (2, 2))[3] == 0
        assert pixel(rgba, (50, 50)) == (0, 200, 0, 255)


def test_transparent_gif_to_jpeg_is_flattened_onto_white(tmp_path: Path) -> None:
    image = Image.open(io.BytesIO(transparent_png())).convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    source = write(tmp_path, "logo.gif", buffer.getvalue())
    destination = tmp_path / "avatar.jpg"

    avatar(source, destination, size=100)

    with Image.open(destination) as reopened:
        corner = pixel(reopened, (2, 2))
        centre = pixel(reopened, (50, 50))
    assert all(channel > 240 for channel in corner), corner
    assert centre[1] > 150 and centre[0] < 60 and centre[2] < 60, centre


# --- output formats -------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_each_output_format_is_written_as_that_format(
    tmp_path: Path, image_format: ImageFormat
) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    # A misleading extension: the format parameter decides, not the name.
    destination = tmp_path / "avatar.bin"

    avatar(source, destination, image_format=image_format)

    with Image.open(destination) as reopened:
        assert reopened.format == image_format.value
        reopened.load()
        assert reopened.size == (SIZE, SIZE)
        assert_upright(reopened)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1"])
@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_unusual_input_modes_are_converted(
    tmp_path: Path, mode: str, image_format: ImageFormat
) -> None:
    image = Image.new("RGB", (200, 200), (255, 255, 255)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    source = write(tmp_path, "input", buffer.getvalue())
    destination = tmp_path / "avatar"

    avatar(source, destination, size=32, image_format=image_format)

    with Image.open(destination) as reopened:
        assert reopened.format == image_format.value
        assert reopened.size == (32, 32)
        rgb = reopened.convert("RGB")
        assert all(channel > 240 for channel in pixel(rgb, (16, 16)))


# --- progress -------------------------------------------------------------------------------


def test_progress_is_strictly_increasing_within_0_to_100(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    reported: list[int] = []

    make_avatar(
        source,
        to(tmp_path / "avatar.jpg"),
        size=SIZE,
        quality=85,
        image_format=ImageFormat.JPEG,
        max_pixels=MAX_PIXELS,
        max_decoded_bytes=MAX_DECODED_BYTES,
        progress=reported.append,
    )

    assert len(reported) >= 2
    assert all(0 <= percent <= 100 for percent in reported)
    assert all(earlier < later for earlier, later in itertools.pairwise(reported))


def test_progress_is_not_reported_past_decoding_on_failure(tmp_path: Path) -> None:
    source = write(tmp_path, "broken.jpg", truncated_jpeg())
    reported: list[int] = []

    with pytest.raises(InvalidImage):
        make_avatar(
            source,
            to(tmp_path / "avatar.jpg"),
            size=SIZE,
            quality=85,
            image_format=ImageFormat.JPEG,
            max_pixels=MAX_PIXELS,
            max_decoded_bytes=MAX_DECODED_BYTES,
            progress=reported.append,
        )

    assert reported == []


# --- atomic write ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_success_leaves_only_the_destination(tmp_path: Path, image_format: ImageFormat) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    folder = tmp_path / "avatars"
    destination = folder / f"avatar.{image_format.extension}"

    avatar(source, destination, image_format=image_format)

    assert files_in(folder) == [destination.name]


def test_success_replaces_an_existing_avatar(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    folder = tmp_path / "avatars"
    folder.mkdir()
    destination = write(folder, "avatar.jpg", b"old avatar")

    avatar(source, destination)

    assert files_in(folder) == ["avatar.jpg"]
    with Image.open(destination) as reopened:
        assert reopened.format == "JPEG"


def test_failure_writes_nothing(tmp_path: Path) -> None:
    source = write(tmp_path, "broken.jpg", truncated_jpeg())
    folder = tmp_path / "avatars"
    folder.mkdir()

    with pytest.raises(InvalidImage):
        avatar(source, folder / "avatar.jpg")

    assert files_in(folder) == []


def test_failure_keeps_the_previous_avatar(tmp_path: Path) -> None:
    source = write(tmp_path, "notes.txt", b"not an image at all\n" * 10)
    folder = tmp_path / "avatars"
    folder.mkdir()
    destination = write(folder, "avatar.jpg", b"previous avatar")

    with pytest.raises(InvalidImage):
        avatar(source, destination)

    assert files_in(folder) == ["avatar.jpg"]
    assert destination.read_bytes() == b"previous avatar"


def test_failure_while_saving_leaves_no_temporary_file(tmp_path: Path) -> None:
    # The destination is an existing non-empty directory, so the final rename fails.
    source = write(tmp_path, "photo.jpg", phone_photo(600, 400))
    folder = tmp_path / "avatars"
    destination = folder / "avatar.jpg"
    destination.mkdir(parents=True)
    (destination / "occupied").write_bytes(b"x")

    with pytest.raises(IsADirectoryError):
        avatar(source, destination)

    assert files_in(folder) == ["avatar.jpg"]
    assert destination.is_dir()


# --- invalid input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("truncated.jpg", truncated_jpeg()),
        ("notes.txt", b"Hello, this is a text file and not an image.\n" * 20),
        ("empty.jpg", b""),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    ],
)
def test_unreadable_input_raises_invalid_image(tmp_path: Path, name: str, data: bytes) -> None:
    source = write(tmp_path, name, data)
    destination = tmp_path / "out" / "avatar.jpg"

    with pytest.raises(InvalidImage):
        avatar(source, destination)

    assert not destination.exists()


def test_more_pixels_than_max_pixels_raises_invalid_image(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(300, 200))
    destination = tmp_path / "avatar.jpg"

    with pytest.raises(InvalidImage, match="pixels"):
        avatar(source, destination, max_pixels=300 * 200 - 1)

    assert not destination.exists()


def test_exactly_max_pixels_is_accepted(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(300, 200))
    destination = tmp_path / "avatar.jpg"

    avatar(source, destination, max_pixels=300 * 200)

    assert destination.exists()


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_16_bit_greyscale_png_keeps_its_tone(tmp_path: Path, image_format: ImageFormat) -> None:
    buffer = io.BytesIO()
    Image.new("I;16", (64, 64), 30_000).save(buffer, format="PNG")  # 46% grey
    source = write(tmp_path, "grey16.png", buffer.getvalue())
    destination = tmp_path / "avatar"

    avatar(source, destination, size=32, image_format=image_format)

    with Image.open(destination) as reopened:
        value = pixel(reopened.convert("RGB"), (16, 16))
    expected = round(30_000 / 65_535 * 255)
    assert all(abs(channel - expected) <= 10 for channel in value), value


def test_existing_avatar_reads_back_a_finished_one(tmp_path: Path) -> None:
    source = write(tmp_path, "photo.jpg", phone_photo(800, 600))
    made = make_avatar(
        source, to(tmp_path / "a.webp"), 128, 80, ImageFormat.WEBP, 10**8, MAX_DECODED_BYTES
    )
    again = existing_avatar(tmp_path / "a.webp", ImageFormat.WEBP)
    assert again == made
    with (tmp_path / "a.webp").open("rb") as file:  # as the store hands it
        assert existing_avatar(file, ImageFormat.WEBP) == made
    assert existing_avatar(tmp_path / "missing.webp", ImageFormat.WEBP) is None


def test_a_missing_source_is_not_taken_for_a_bad_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_avatar(
            tmp_path / "gone.jpg", to(tmp_path / "a.jpg"), 64, 80, ImageFormat.JPEG, 10**8, 10**8
        )


def test_remove_partials_removes_only_this_files_temporary_files(tmp_path: Path) -> None:
    destination = tmp_path / "job.jpg"
    mine = [tmp_path / ".job.jpg.101.tmp", tmp_path / ".job.jpg.202.tmp"]
    others = [destination, tmp_path / ".other.jpg.101.tmp", tmp_path / "job.jpg.101.tmp"]
    for path in mine + others:
        path.write_bytes(b"x")
    remove_partials(destination)
    assert [path.exists() for path in mine] == [False, False]
    assert all(path.exists() for path in others)


# --- images that cost more than they look ---------------------------------------------------


def test_a_small_16_bit_png_too_large_once_decoded_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    data = sixteen_bit_png(8000, 8000)
    source = write(tmp_path, "bomb.png", data)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with pytest.raises(InvalidImage, match="bytes once decoded"):
        avatar(source, tmp_path / "avatar.png", max_pixels=64_000_000)

    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    print(f"\n{len(data)} byte 16-bit 8000x8000 PNG refused; peak RSS grew {grown_kib} KiB")
    assert len(data) < 200_000
    assert grown_kib < 128_000_000 // 1024 // 4  # nowhere near its 128 MB of pixels


def test_a_jpeg_whose_header_claims_more_than_its_data_holds_is_invalid(tmp_path: Path) -> None:
    source = write(tmp_path, "claims.jpg", jpeg_claiming(8000, 8000))
    with Image.open(source) as opened:
        assert opened.size == (8000, 8000)  # what libjpeg would pad out, in grey

    with pytest.raises(InvalidImage, match="truncated"):
        avatar(source, tmp_path / "avatar.jpg", max_pixels=64_000_000)


def test_the_same_jpeg_with_its_true_size_is_fine(tmp_path: Path) -> None:
    made = avatar(write(tmp_path, "true.jpg", jpeg_claiming(64, 64)), tmp_path / "a.jpg", size=32)
    assert (made.width, made.height) == (32, 32)
