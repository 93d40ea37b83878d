"""Unit tests for `read_form`: GraphQL multipart bodies parsed as they stream in."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from jobql.jobs import is_job_id
from jobql.multipart import MAX_HEADER_BYTES, FormLimits, FormRejected, IncomingUpload, read_form
from jobql.storage import FilesystemStorage, FileUpload

if TYPE_CHECKING:
    from pathlib import Path

    from jobql.multipart import Form

BOUNDARY = "----jobqlTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMITS = FormLimits(max_file_bytes=1024 * 1024)
KIB = 1024
MIB = 1024 * KIB

OPERATIONS = json.dumps(
    {
        "query": "mutation ($file: Upload!) { uploadAvatar(file: $file) { id } }",
        "variables": {"file": None, "note": "café, 日本語"},  # multi-byte UTF-8
    },
    ensure_ascii=False,
)
FILES_MAP = json.dumps({"0": ["variables.file"]})

CHUNK_SIZES = [
    pytest.param(1, id="1-byte"),
    pytest.param(3, id="3-bytes"),
    pytest.param(70, id="70-bytes"),
    pytest.param(64 * KIB, id="64KiB"),
    pytest.param(1 << 30, id="whole"),
]


# --- building bodies ------------------------------------------------------------------------


def part(headers: list[bytes], body: bytes, boundary: str = BOUNDARY) -> bytes:
    """One encapsulated part: delimiter line, header lines, blank line, body, CRLF."""
    lines = [b"--" + boundary.encode(), *headers, b"", body]
    return b"\r\n".join(lines) + b"\r\n"


def form_field(name: str, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return part([f'Content-Disposition: form-data; name="{name}"'.encode()], data)


def file_part(
    name: str,
    filename: str | bytes,
    data: bytes,
    content_type: str | None = "image/png",
    extra_headers: list[bytes] | None = None,
) -> bytes:
    raw_name = filename.encode() if isinstance(filename, str) else filename
    headers = [
        f'Content-Disposition: form-data; name="{name}"; filename="'.encode() + raw_name + b'"'
    ]
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}".encode())
    return part([*headers, *(extra_headers or [])], data)


def body(*parts: bytes, boundary: str = BOUNDARY, closed: bool = True) -> bytes:
    closing = b"--" + boundary.encode() + b"--\r\n" if closed else b""
    return b"".join(parts) + closing


def graphql_body(data: bytes, filename: str = "avatar.png") -> bytes:
    return body(
        form_field("operations", OPERATIONS),
        form_field("map", FILES_MAP),
        file_part("0", filename, data),
    )


def tricky_bytes(size: int, seed: int = 0) -> bytes:
    """Random bytes salted with CRLFs and near-boundaries, to trip a naive boundary search."""
    rng = random.Random(seed)
    near_miss = b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n"
    pieces: list[bytes] = []
    while sum(len(piece) for piece in pieces) < size:
        pieces.append(rng.randbytes(rng.randrange(1, 300)))
        pieces.append(rng.choice([b"\r\n", b"\r\n--", b"\r", near_miss, b"--" + BOUNDARY.encode()]))
    data = b"".join(pieces)[:size]
    assert b"\r\n--" + BOUNDARY.encode() not in data
    return data


@dataclass
class Chunks:
    """The body as an async iterator of `size`-byte chunks; counts the chunks pulled."""

    data: bytes
    size: int
    pulled: int = 0
    _offset: int = field(default=0, repr=False)

    @property
    def total(self) -> int:
        return -(-len(self.data) // self.size)

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= len(self.data):
            raise StopAsyncIteration
        chunk = self.data[self._offset : self._offset + self.size]
        self._offset += self.size
        self.pulled += 1
        return chunk


# --- running read_form ----------------------------------------------------------------------


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    directory = tmp_path / "incoming"
    directory.mkdir()
    return directory


def stored(upload: IncomingUpload) -> Path:
    """Where the filesystem store keeps the upload."""
    assert isinstance(upload.sink, FileUpload)
    return upload.sink.path


async def read(
    directory: Path,
    data: bytes,
    chunk_size: int = 64 * KIB,
    limits: FormLimits = LIMITS,
    content_type: str = CONTENT_TYPE,
) -> tuple[Form, list[IncomingUpload]]:
    uploads: list[IncomingUpload] = []
    form = await read_form(
        Chunks(data, chunk_size), content_type, FilesystemStorage(directory.parent), limits, uploads
    )
    return form, uploads


async def rejected(
    directory: Path,
    data: bytes,
    chunk_size: int = 64 * KIB,
    limits: FormLimits = LIMITS,
    content_type: str = CONTENT_TYPE,
    chunks: Chunks | None = None,
) -> tuple[FormRejected, list[IncomingUpload]]:
    uploads: list[IncomingUpload] = []
    source = chunks if chunks is not None else Chunks(data, chunk_size)
    with pytest.raises(FormRejected) as raised:
        await read_form(source, content_type, FilesystemStorage(directory.parent), limits, uploads)
    return raised.value, uploads


def assert_bad_input(error: FormRejected) -> None:
    assert (error.code, error.status) == ("BAD_USER_INPUT", 400)


# --- a well-formed request ------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
async def test_fields_and_file_are_read_across_any_chunking(
    incoming: Path, chunk_size: int
) -> None:
    data = tricky_bytes(5000)

    form, uploads = await read(incoming, graphql_body(data), chunk_size)

    assert form.fields == {"operations": OPERATIONS, "map": FILES_MAP}
    assert list(form.files) == ["0"]
    upload = form.files["0"]
    assert uploads == [upload] and uploads[0] is upload
    assert upload.filename == "avatar.png"
    assert upload.content_type == "image/png"
    assert upload.size == len(data)
    assert upload.claimed is False
    assert stored(upload).parent == incoming
    assert stored(upload).name == f"{upload.id}.upload"
    assert is_job_id(upload.id)
    assert stored(upload).read_bytes() == data
    assert list(incoming.iterdir()) == [stored(upload)]


async def test_each_upload_gets_its_own_uuid_path(incoming: Path) -> None:
    first, _ = await read(incoming, graphql_body(b"one"))
    second, _ = await read(incoming, graphql_body(b"two"))

    one, two = first.files["0"], second.files["0"]
    assert one.id != two.id and is_job_id(one.id) and is_job_id(two.id)
    assert (stored(one).read_bytes(), stored(two).read_bytes()) == (b"one", b"two")


async def test_empty_file_is_written_as_an_empty_file(incoming: Path) -> None:
    form, uploads = await read(incoming, graphql_body(b""), chunk_size=1)

    assert uploads == [form.files["0"]]
    assert form.files["0"].size == 0
    assert stored(form.files["0"]).read_bytes() == b""


async def test_file_without_content_type_is_octet_stream(incoming: Path) -> None:
    data = body(file_part("0", "a.jpg", b"\xff\xd8\xff", content_type=None))

    form, _ = await read(incoming, data)

    assert form.files["0"].content_type == "application/octet-stream"


@pytest.mark.parametrize("filename", ["photo 1 (copy).jpg", "é.jpg", "..jpg", "x" * 255])
async def test_plain_file_names_are_kept(incoming: Path, filename: str) -> None:
    form, _ = await read(incoming, graphql_body(b"abc", filename=filename))

    assert form.files["0"].filename == filename


async def test_file_of_exactly_max_file_bytes_is_accepted(incoming: Path) -> None:
    data = tricky_bytes(1000)

    form, _ = await read(incoming, graphql_body(data), 7, FormLimits(max_file_bytes=1000))

    assert form.files["0"].size == 1000
    assert stored(form.files["0"]).read_bytes() == data


async def test_field_of_exactly_max_field_bytes_is_accepted(incoming: Path) -> None:
    limits = FormLimits(max_file_bytes=1000, max_field_bytes=100)

    form, _ = await read(incoming, body(form_field("operations", "o" * 100)), 1, limits)

    assert form.fields == {"operations": "o" * 100}


async def test_part_headers_under_the_limit_are_accepted(incoming: Path) -> None:
    padding = [f"X-Padding-{i}: {'p' * 3000}".encode() for i in range(2)]
    data = body(file_part("0", "a.png", b"abc", extra_headers=padding))

    form, _ = await read(incoming, data, chunk_size=1)

    assert stored(form.files["0"]).read_bytes() == b"abc"


# --- a file that is too large ---------------------------------------------------------------


async def test_large_file_is_cut_off_while_streaming(incoming: Path) -> None:
    max_file_bytes = 1000
    chunk_size = 64 * KIB
    chunks = Chunks(graphql_body(b"\x42" * (10 * MIB)), chunk_size)
    assert chunks.total >= 160

    error, uploads = await rejected(
        incoming, b"", limits=FormLimits(max_file_bytes=max_file_bytes), chunks=chunks
    )

    assert (error.code, error.status) == ("PAYLOAD_TOO_LARGE", 413)
    assert chunks.pulled <= 2  # the first chunk already holds more than 1000 file bytes
    # The partial file is left for the owner of `uploads` to delete.
    assert len(uploads) == 1
    assert stored(uploads[0]).exists()
    assert list(incoming.iterdir()) == [stored(uploads[0])]
    assert stored(uploads[0]).stat().st_size <= max_file_bytes + chunk_size


async def test_file_one_byte_over_is_cut_off_in_one_byte_chunks(incoming: Path) -> None:
    max_file_bytes = 1000
    chunks = Chunks(graphql_body(tricky_bytes(20_000)), 1)

    error, uploads = await rejected(
        incoming, b"", limits=FormLimits(max_file_bytes=max_file_bytes), chunks=chunks
    )

    assert (error.code, error.status) == ("PAYLOAD_TOO_LARGE", 413)
    assert chunks.pulled < chunks.total // 2
    assert len(uploads) == 1
    assert stored(uploads[0]).stat().st_size <= max_file_bytes + 1


async def test_file_one_byte_over_max_file_bytes_is_too_large(incoming: Path) -> None:
    error, uploads = await rejected(
        incoming, graphql_body(tricky_bytes(1001)), limits=FormLimits(max_file_bytes=1000)
    )

    assert (error.code, error.status) == ("PAYLOAD_TOO_LARGE", 413)
    assert len(uploads) == 1


# --- too many parts, or parts too big -------------------------------------------------------


async def test_two_files_are_rejected(incoming: Path) -> None:
    data = body(
        form_field("operations", OPERATIONS),
        form_field("map", json.dumps({"0": ["variables.a"], "1": ["variables.b"]})),
        file_part("0", "a.png", b"first"),
        file_part("1", "b.png", b"second"),
    )

    error, uploads = await rejected(incoming, data)

    assert_bad_input(error)
    assert "Too many files" in str(error)
    assert len(uploads) == 1  # only the first file was ever created


async def test_two_files_under_one_name_are_rejected(incoming: Path) -> None:
    data = body(file_part("0", "a.png", b"first"), file_part("0", "b.png", b"second"))

    error, uploads = await rejected(incoming, data)

    assert_bad_input(error)
    assert len(uploads) == 1


async def test_three_fields_are_rejected(incoming: Path) -> None:
    data = body(
        form_field("operations", OPERATIONS),
        form_field("map", FILES_MAP),
        form_field("extra", "x"),
        file_part("0", "a.png", b"abc"),
    )

    error, uploads = await rejected(incoming, data)

    assert_bad_input(error)
    assert "Too many fields" in str(error)
    assert uploads == []


@pytest.mark.parametrize("chunk_size", [1, 64 * KIB])
async def test_field_over_max_field_bytes_is_rejected(incoming: Path, chunk_size: int) -> None:
    limits = FormLimits(max_file_bytes=1000, max_field_bytes=100)

    error, _ = await rejected(
        incoming, body(form_field("operations", "o" * 101)), chunk_size, limits
    )

    assert_bad_input(error)
    assert "'operations'" in str(error)


# --- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        pytest.param("../x.jpg", id="parent"),
        pytest.param("a/b.jpg", id="slash"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("a\\b.jpg", id="backslash"),
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param("", id="empty"),
        pytest.param("a\x00b.jpg", id="nul"),
        pytest.param("a\nb.jpg", id="newline"),
        pytest.param("a\tb.jpg", id="tab"),
        pytest.param("x" * 256, id="too-long"),
    ],
)
async def test_file_names_with_a_path_or_odd_characters_are_rejected(
    incoming: Path, filename: str
) -> None:
    error, uploads = await rejected(incoming, graphql_body(b"abc", filename=filename))

    assert_bad_input(error)
    assert uploads == []  # rejected before anything is written
    assert list(incoming.iterdir()) == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            graphql_body(b"abc").removesuffix(f"--{BOUNDARY}--\r\n".encode()), id="no-close"
        ),
        pytest.param(graphql_body(tricky_bytes(3000))[:-1500], id="cut-mid-file"),
        pytest.param(body(form_field("operations", OPERATIONS), closed=False), id="fields-only"),
        pytest.param(b"", id="empty-body"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 64 * KIB])
async def test_body_without_closing_boundary_is_rejected(
    incoming: Path, data: bytes, chunk_size: int
) -> None:
    error, uploads = await rejected(incoming, data, chunk_size)

    assert_bad_input(error)
    assert len(uploads) <= 1


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; charset=utf-8",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary=""',
        "",
    ],
)
async def test_content_type_without_boundary_is_rejected_before_reading(
    incoming: Path, content_type: str
) -> None:
    chunks = Chunks(graphql_body(b"abc"), 64 * KIB)

    error, uploads = await rejected(incoming, b"", content_type=content_type, chunks=chunks)

    assert_bad_input(error)
    assert chunks.pulled == 0
    assert uploads == []


async def test_body_with_another_boundary_is_rejected(incoming: Path) -> None:
    error, uploads = await rejected(
        incoming, graphql_body(b"abc"), content_type="multipart/form-data; boundary=other"
    )

    assert_bad_input(error)
    assert uploads == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([b"Content-Type: text/plain"], id="no-disposition"),
        pytest.param([], id="no-headers"),
        pytest.param([b'Content-Disposition: attachment; name="operations"'], id="attachment"),
        pytest.param([b"Content-Disposition: form-data"], id="no-name"),
        pytest.param([b'Content-Disposition: form-data; filename="a.png"'], id="file-no-name"),
    ],
)
async def test_part_without_form_data_disposition_is_rejected(
    incoming: Path, headers: list[bytes]
) -> None:
    error, uploads = await rejected(incoming, body(part(headers, b"abc")))

    assert_bad_input(error)
    assert uploads == []


@pytest.mark.parametrize("chunk_size", [1, 64 * KIB])
async def test_non_utf8_field_is_rejected(incoming: Path, chunk_size: int) -> None:
    data = body(form_field("operations", b'{"query": "\xff\xfe\xc3"}'))

    error, _ = await rejected(incoming, data, chunk_size)

    assert_bad_input(error)
    assert "UTF-8" in str(error)


@pytest.mark.parametrize("chunk_size", [1, 64 * KIB])
async def test_oversized_part_headers_are_rejected(incoming: Path, chunk_size: int) -> None:
    # Each header line is within the parser's own line limit; together they pass 8 KiB.
    padding = [f"X-Padding-{i}: {'p' * 3000}".encode() for i in range(3)]
    assert sum(map(len, padding)) > MAX_HEADER_BYTES == 8 * KIB
    data = body(file_part("0", "a.png", b"abc", extra_headers=padding))

    error, uploads = await rejected(incoming, data, chunk_size)

    assert_bad_input(error)
    assert "headers are too large" in str(error)
    assert uploads == []


async def test_one_huge_part_header_is_rejected(incoming: Path) -> None:
    padding = [b"X-Padding: " + b"p" * (9 * KIB)]
    data = body(file_part("0", "a.png", b"abc", extra_headers=padding))

    error, uploads = await rejected(incoming, data)

    assert_bad_input(error)
    assert uploads == []


def test_form_rejected_defaults_to_bad_user_input() -> None:
    error = FormRejected("nope")

    assert (str(error), error.code, error.status) == ("nope", "BAD_USER_INPUT", 400)


@pytest.mark.parametrize(
    ("filename", "says"),
    [
        ("photo\u202egpj.exe", "right-to-left override"),
        ("photo\u2067.jpg", "U+2067"),
        ("pho\u200bto.jpg", "zero-width character (U+200B)"),
        ("\ufeffphoto.jpg", "zero-width character (U+FEFF)"),
        ("photo\x07.jpg", "control character"),
        ("../photo.jpg", "no path in it"),
        ("dir\\photo.jpg", "no path in it"),
    ],
    ids=["rlo", "rli", "zwsp", "bom", "bell", "dotdot", "backslash"],
)
async def test_a_refused_file_name_says_what_is_wrong(
    incoming: Path, filename: str, says: str
) -> None:
    error, uploads = await rejected(incoming, graphql_body(b"abc", filename=filename))
    assert_bad_input(error)
    assert says in str(error)
    assert uploads == []
