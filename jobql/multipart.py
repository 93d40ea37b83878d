"""GraphQL multipart requests, streamed: each file goes straight to the store.

The request body is parsed as it arrives. A file part is stored as a new upload chunk by
chunk (`Storage.new_upload`) and cut off the moment it passes the size limit; the other
parts are small fields (`operations`, `map`) kept in memory up to a limit of their own.
Nothing is copied twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from jobql.storage import StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from python_multipart.multipart import MultipartCallbacks

    from jobql.storage import Storage, UploadSink

MAX_HEADER_BYTES = 8 * 1024
logger = logging.getLogger(__name__)


class FormRejected(Exception):
    """The request body is not a multipart request jobql accepts; `code` says how."""

    def __init__(self, message: str, code: str = "BAD_USER_INPUT", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class UploadNotStored(FormRejected):
    """The media store could not take the file (its file system is full, read-only or gone):
    nothing the client did, and it may pass."""

    def __init__(self, exc: StorageUnavailable) -> None:
        super().__init__(
            "The upload could not be stored; try again shortly.",
            code="SERVICE_UNAVAILABLE",
            status=503,
        )
        logger.warning(
            "SERVICE_UNAVAILABLE: an upload could not be stored: %s",
            exc,
            extra={"code": "SERVICE_UNAVAILABLE"},
        )


@dataclass(frozen=True, slots=True)
class FormLimits:
    max_file_bytes: int
    max_files: int = 1
    max_fields: int = 2  # `operations` and `map`
    max_field_bytes: int = 64 * 1024


@dataclass(eq=False, slots=True)
class IncomingUpload:
    """A file the request carried, already in the store. Unless a resolver claims it, it
    is removed when the request ends."""

    sink: UploadSink
    filename: str
    content_type: str
    size: int = 0
    claimed: bool = False
    # Of the bytes as they streamed in: what an idempotency key's fingerprint compares.
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def id(self) -> str:
        return self.sink.id

    @property
    def name(self) -> str:
        """Its name in the store."""
        return self.sink.name

    async def remove(self) -> None:
        await self.sink.discard()


@dataclass(slots=True)
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, IncomingUpload] = field(default_factory=dict)


async def read_form(
    chunks: AsyncIterator[bytes],
    content_type: str,
    storage: Storage,
    limits: FormLimits,
    uploads: list[IncomingUpload],
) -> Form:
    """Parse a multipart body; every file created is appended to `uploads` at once, so
    that whoever owns that list can remove it whatever happens next."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormRejected("The multipart request has no boundary.")
    reader = _FormReader(storage, limits, uploads)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
            await reader.store()
        parser.finalize()
        await reader.store()
    except MultipartParseError as exc:
        raise FormRejected(f"The multipart body is malformed: {exc}") from exc
    if not reader.ended:
        raise FormRejected("The multipart body ended before its closing boundary.")
    return reader.form


class _FormReader:
    """The parser's callbacks: one part at a time, to a field buffer or to a file."""

    def __init__(self, storage: Storage, limits: FormLimits, uploads: list[IncomingUpload]) -> None:
        self.storage = storage
        self.limits = limits
        self.uploads = uploads
        self.form = Form()
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._header_bytes = 0
        self._name = ""
        self._field: bytearray | None = None
        self._upload: IncomingUpload | None = None
        self._writing = False
        # What the parser's (synchronous) callbacks read of files, stored by `store` after
        # each chunk: a file's bytes, or None where it ended.
        self._to_store: list[tuple[IncomingUpload, bytes | None]] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    async def store(self) -> None:
        """Store what the last chunk carried of files, in order. (A file left unfinished, the
        request failing, is removed by the owner of `uploads`.)"""
        to_store, self._to_store = self._to_store, []
        try:
            for upload, data in to_store:
                if data is None:
                    await upload.sink.finish()
                else:
                    await upload.sink.write(data)
        except StorageUnavailable as exc:
            raise UploadNotStored(exc) from exc

    def _finish_file(self) -> None:
        """The file part has ended: what is still buffered is stored next."""
        if self._upload is not None and self._writing:
            self._writing = False
            self._to_store.append((self._upload, None))

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._field = None
        self._upload = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise FormRejected("A multipart part's headers are too large.")

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise FormRejected("Every multipart part needs 'Content-Disposition: form-data'.")
        self._name = options[b"name"].decode(errors="replace")
        if self._name in self.form.fields or self._name in self.form.files:
            raise FormRejected(f"The part name '{self._name}' is used twice.")
        if b"filename" in options:
            self._begin_file(options[b"filename"].decode(errors="replace"))
        else:
            self._begin_field()

    def _begin_field(self) -> None:
        if len(self.form.fields) >= self.limits.max_fields:
            raise FormRejected(
                f"Too many fields: a request carries at most {self.limits.max_fields} "
                "(operations and map)."
            )
        self._field = bytearray()

    def _begin_file(self, filename: str) -> None:
        if len(self.form.files) >= self.limits.max_files:
            raise FormRejected(
                f"Too many files: a request carries at most {self.limits.max_files}."
            )
        problem = _filename_problem(filename)
        if problem is not None:
            raise FormRejected(f"The file name {problem}.")
        content_type = self._headers.get(b"content-type", b"application/octet-stream")
        try:
            sink = self.storage.new_upload()
        except StorageUnavailable as exc:
            raise UploadNotStored(exc) from exc
        self._upload = IncomingUpload(sink, filename, content_type.decode(errors="replace"))
        self.uploads.append(self._upload)
        self._writing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._upload is not None and self._writing:
            self._upload.size += end - start
            if self._upload.size > self.limits.max_file_bytes:
                raise FormRejected(
                    f"The file is larger than {self.limits.max_file_bytes} bytes.",
                    code="PAYLOAD_TOO_LARGE",
                    status=413,
                )
            self._to_store.append((self._upload, data[start:end]))
            self._upload.digest.update(data[start:end])
        elif self._field is not None:
            if len(self._field) + end - start > self.limits.max_field_bytes:
                raise FormRejected(
                    f"The field '{self._name}' is larger than {self.limits.max_field_bytes} bytes."
                )
            self._field += data[start:end]

    def _part_end(self) -> None:
        if self._upload is not None:
            self._finish_file()
            self.form.files[self._name] = self._upload
        elif self._field is not None:
            try:
                self.form.fields[self._name] = self._field.decode()
            except UnicodeDecodeError as exc:
                raise FormRejected(f"The field '{self._name}' is not UTF-8.") from exc

    def _end(self) -> None:
        self.ended = True


# Characters that make a name read otherwise than it is: "photo\u202egpj.exe" shows as
# "photoexe.jpg", and zero-width ones make two names that look alike differ.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def _filename_problem(filename: str) -> str | None:
    """What is wrong with an upload's file name, or None for a plain one."""
    if not filename:
        return "is empty"
    if len(filename) > 255:
        return "is longer than 255 characters"
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        return "must be a plain name, with no path in it"
    for character in filename:
        if character in BIDI_CONTROLS:
            return (
                f"contains a right-to-left override or other direction control character "
                f"(U+{ord(character):04X}), which makes it read otherwise than it is"
            )
        if character in ZERO_WIDTH:
            return f"contains an invisible zero-width character (U+{ord(character):04X})"
    if not filename.isprintable():
        return "contains a control character"
    return None
