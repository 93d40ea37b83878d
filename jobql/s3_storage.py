"""Media in an S3-compatible object store (`JOBQL_STORAGE=s3`), through obstore.

Keys, under `JOBQL_S3_PREFIX` in `JOBQL_S3_BUCKET`: uploads at `incoming/<id>.upload`, a
public area's files at `<folder>/<name>`, a private area's at `private/<folder>/<job
id>/<name>`. The web process streams an upload into the bucket as it arrives (a multipart
upload once it passes `PART_BYTES`), holding at most a part in memory and nothing on disk;
a request that ends without a job aborts it. A result file is one PUT, so it appears
whole or not at all. A public file's URL is `JOBQL_MEDIA_PUBLIC_URL` plus its key when
that is set (a CDN or a public bucket), else a presigned GET valid until the job
expires; a private file is served by this API to its owner, as on the filesystem.

obstore is one client for both sides: asyncio for the web's uploads, blocking calls for
the worker (and the web's few others, which it runs in a thread). Credentials come from
the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
"""

from __future__ import annotations

import io
import itertools
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, assert_never

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from jobql.files import PRIVATE_URL, plain_name
from jobql.storage import (
    BATCH,
    INCOMING_DIR,
    PRIVATE_DIR,
    UPLOAD_SUFFIX,
    Leftover,
    LeftoverKind,
    StorageUnavailable,
    upload_name,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from _typeshed import WriteableBuffer
    from obstore import AsyncWritableFile, ObjectMeta
    from obstore.store import S3Config

    from jobql.files import FileArea
    from jobql.settings import Settings

HEAD_BYTES = 256 * 1024  # what an object's reader fetches first
PART_BYTES = 8 * 1024 * 1024  # an upload's part: what the web process holds of it at most
PROBE_DIR = "probe"  # never listed by the sweep
# What obstore raises when the store fails: its own errors, and OSError (ConnectionError,
# TimeoutError...) for what it maps to Python's. FileNotFoundError, an OSError too, is
# caught before these wherever a missing key means something.
STORE_ERRORS = (BaseError, OSError)
CONNECT_TIMEOUT = timedelta(seconds=5)
RETRY_TIMEOUT = timedelta(seconds=10)
logger = logging.getLogger(__name__)


def s3_store(settings: Settings) -> S3Store:
    """The bucket, as settings name it; what they leave out comes from the AWS variables."""
    config: S3Config = {"region": settings.s3_region}
    if settings.s3_endpoint_url:
        config["endpoint"] = settings.s3_endpoint_url
    return S3Store(
        settings.s3_bucket,
        prefix=settings.s3_prefix or None,
        config=config,
        client_options={
            "allow_http": settings.s3_endpoint_url.startswith("http://"),
            "connect_timeout": CONNECT_TIMEOUT,
        },
        # A few quick retries, not obstore's ten over three minutes: an upload waiting on a
        # store that is away holds its client, and the worker retries the job anyway.
        retry_config={"max_retries": 3, "retry_timeout": RETRY_TIMEOUT},
    )


class S3Storage:
    """Media in a bucket, shared by every web process and worker whatever their host."""

    def __init__(
        self, store: S3Store, prefix: str, public_url: str, url_lifetime: timedelta
    ) -> None:
        """`prefix`: the store's own, which a public URL names too."""
        self.store = store
        parts = (public_url.rstrip("/"), prefix.strip("/"))
        self.public_url = "/".join(filter(None, parts)) if public_url else ""
        self.url_lifetime = url_lifetime

    # --- uploads -----------------------------------------------------------------------------

    def prepare(self, areas: Iterable[FileArea]) -> None:
        """Nothing to make: keys need no folders, and the bucket is the operator's."""

    def new_upload(self) -> ObjectUpload:
        upload_id = str(uuid.uuid4())
        return ObjectUpload(self.store, upload_id, f"{INCOMING_DIR}/{upload_name(upload_id)}")

    def open_upload(self, name: str) -> BinaryIO:
        return self._read(f"{INCOMING_DIR}/{plain_name(name)}")

    def remove_upload(self, name: str) -> None:
        self._delete(f"{INCOMING_DIR}/{plain_name(name)}")

    # --- result files --------------------------------------------------------------------------

    def publish(
        self,
        area: FileArea,
        job_id: str,
        name: str,
        write: Callable[[BinaryIO], None],
        *,
        after_a_lost_delivery: bool = False,
    ) -> int:
        """One PUT of the whole file: nothing half-written is ever seen, so an earlier
        delivery that died mid-write left nothing to clean up."""
        buffer = io.BytesIO()
        write(buffer)
        try:
            obstore.put(self.store, self._key(area, job_id, name), buffer.getbuffer())
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The file cannot be written: {exc}") from exc
        return buffer.getbuffer().nbytes

    def open_file(self, area: FileArea, job_id: str, name: str) -> BinaryIO:
        return self._read(self._key(area, job_id, name))

    def exists(self, area: FileArea, job_id: str, name: str) -> bool:
        try:
            obstore.head(self.store, self._key(area, job_id, name))
        except FileNotFoundError:
            return False
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The store cannot be read: {exc}") from exc
        return True

    def url(self, area: FileArea, job_id: str, name: str) -> str:
        if area.private:
            return f"{PRIVATE_URL}/{area.folder}/{plain_name(job_id)}/{plain_name(name)}"
        key = self._key(area, job_id, name)
        if self.public_url:
            return f"{self.public_url}/{key}"
        return obstore.sign(self.store, "GET", key, self.url_lifetime)

    def local_path(self, area: FileArea, job_id: str, name: str) -> Path | None:
        return None

    def public_folder(self, area: FileArea) -> Path | None:
        return None

    def _key(self, area: FileArea, job_id: str, name: str) -> str:
        if area.private:
            return f"{PRIVATE_DIR}/{area.folder}/{plain_name(job_id)}/{plain_name(name)}"
        return f"{area.folder}/{plain_name(name)}"

    # --- the sweep -----------------------------------------------------------------------------

    def leftovers(self, areas: Iterable[FileArea], older_than: float) -> Iterator[list[Leftover]]:
        """Listed a page at a time (`BATCH` keys a request), never the whole bucket at once."""
        uploads = (
            Leftover(
                LeftoverKind.UPLOAD,
                meta["path"].rsplit("/", 1)[-1].removesuffix(UPLOAD_SUFFIX),
                meta["path"],
            )
            for meta in self._listed(f"{INCOMING_DIR}/")
            if meta["path"].endswith(UPLOAD_SUFFIX) and _older(meta, older_than)
        )
        job_files = (
            Leftover(LeftoverKind.JOB_FILES, job_id, f"{PRIVATE_DIR}/{area.folder}/{job_id}/")
            for area in areas
            if area.private
            for job_id in self._job_folders(area, older_than)
        )
        for leftovers in (uploads, job_files):
            while batch := list(itertools.islice(leftovers, BATCH)):
                yield batch

    def _listed(self, prefix: str) -> Iterator[ObjectMeta]:
        for page in self._pages(prefix):
            yield from page

    def _pages(self, prefix: str) -> Iterator[Sequence[ObjectMeta]]:
        try:
            yield from obstore.list(self.store, prefix, chunk_size=BATCH)
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The store cannot be listed: {exc}") from exc

    def _job_folders(self, area: FileArea, older_than: float) -> Iterator[str]:
        """The job ids with files in a private area, all of them older than `older_than`
        (keys come sorted, so one job's files come together)."""
        prefix = f"{PRIVATE_DIR}/{area.folder}/"
        by_job = itertools.groupby(self._listed(prefix), key=lambda meta: _job_of(meta, prefix))
        for job_id, files in by_job:
            if job_id and all(_older(meta, older_than) for meta in files):
                yield job_id

    def remove(self, leftover: Leftover) -> None:
        match leftover.kind:
            case LeftoverKind.UPLOAD | LeftoverKind.PARTIAL:
                self._delete(leftover.location)
            case LeftoverKind.JOB_FILES:
                for page in self._pages(leftover.location):
                    self._delete_many([meta["path"] for meta in page])
            case _:
                assert_never(leftover.kind)

    # --- readiness -----------------------------------------------------------------------------

    def probe(self) -> None:
        key = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        try:
            obstore.put(self.store, key, b"jobql readiness probe\n")
            obstore.delete(self.store, key)
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The media store cannot be written: {exc}") from exc

    # --- one key ---------------------------------------------------------------------------------

    def _read(self, key: str) -> BinaryIO:
        try:
            return io.BufferedReader(ObjectReader(self.store, key))
        except FileNotFoundError:
            raise
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The store cannot be read: {exc}") from exc

    def _delete(self, key: str) -> None:
        self._delete_many([key])

    def _delete_many(self, keys: list[str]) -> None:
        try:
            obstore.delete(self.store, keys)
        except STORE_ERRORS as exc:  # the store is away: the sweep removes them later
            logger.warning("Could not remove %d objects: %s", len(keys), exc)


class ObjectReader(io.RawIOBase):
    """An object read as a file in at most two GETs: its first `HEAD_BYTES` when they are
    first read (all that checking an upload's header needs), the rest when it is."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._size = int(obstore.head(store, key)["size"])  # FileNotFoundError if gone
        self._data = bytearray()
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._position))
        self._fetch_to(self._position + count)
        view[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count

    def _fetch_to(self, end: int) -> None:
        if end <= len(self._data):
            return
        until = HEAD_BYTES if end <= HEAD_BYTES else self._size
        try:
            self._data += obstore.get_range(
                self._store, self._key, start=len(self._data), end=until
            )
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"The store cannot be read: {exc}") from exc


class ObjectUpload:
    """An upload streaming into the bucket: parts go up as they fill, the rest at `finish`."""

    def __init__(self, store: S3Store, upload_id: str, key: str) -> None:
        self._store = store
        self._id = upload_id
        self._key = key
        self._writer: AsyncWritableFile | None = None
        self._finished = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._key.rsplit("/", 1)[-1]

    async def write(self, data: bytes) -> None:
        try:
            if self._writer is None:
                self._writer = obstore.open_writer_async(
                    self._store, self._key, buffer_size=PART_BYTES
                )
            await self._writer.write(data)
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"An upload cannot be stored: {exc}") from exc

    async def finish(self) -> None:
        try:
            if self._writer is None:  # an empty file: nothing was written
                await obstore.put_async(self._store, self._key, b"")
            else:
                await self._writer.close()
        except STORE_ERRORS as exc:
            raise StorageUnavailable(f"An upload cannot be stored: {exc}") from exc
        self._finished = True

    async def discard(self) -> None:
        try:
            if self._writer is not None and not self._finished:
                # Leaving the writer with an error aborts its multipart upload: no parts kept.
                await self._writer.__aexit__(UploadDiscarded, UploadDiscarded(), None)
            elif self._finished:
                await obstore.delete_async(self._store, self._key)
        except STORE_ERRORS as exc:  # the sweep removes it later
            logger.warning("Could not remove an upload: %s", exc)
        self._writer = None


class UploadDiscarded(Exception):
    """Why an unfinished upload's writer is left: its parts are thrown away."""


def _job_of(meta: ObjectMeta, prefix: str) -> str:
    return meta["path"].removeprefix(prefix).split("/", 1)[0]


def _older(meta: ObjectMeta, than: float) -> bool:
    return meta["last_modified"] < datetime.fromtimestamp(than, UTC)


def create_s3_storage(settings: Settings) -> S3Storage:
    return S3Storage(
        s3_store(settings),
        settings.s3_prefix,
        settings.media_public_url,
        timedelta(seconds=settings.result_expires),
    )
