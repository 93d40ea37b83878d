"""Where jobql keeps files: uploads on their way to a worker, and the files jobs make.

`Storage` is the one small interface both sides use; nothing else in jobql touches a
media path. The web process stores an upload as it streams in and removes it when no job
takes it; the worker opens it, publishes the job's result file (whole or not at all) and
removes the upload; the sweep lists what jobs left behind, a batch at a time; `/readyz`
asks whether the store takes a write. `JOBQL_STORAGE` chooses the backend:

- `filesystem` (`FilesystemStorage`), under `JOBQL_MEDIA_ROOT`: uploads in
  `incoming/<id>.upload`, a public area's files in `<folder>/<name>` (served at
  `/media/<folder>/<name>`), a private area's in `private/<folder>/<job id>/<name>`
  (served at `/files/<folder>/<job id>/<name>` to the job's owner only).
- `s3` (`jobql.s3_storage.S3Storage`), in an S3-compatible bucket: the same layout as keys,
  shared by web processes and workers on any number of hosts.

A store that cannot take or give a file for a reason that may pass (its file system is
full, read-only or gone) raises `StorageUnavailable`; a file that is not there,
`FileNotFoundError`. Every call blocks but an upload sink's, which the web process awaits as
the body streams in; it calls the slow others in a thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, assert_never

from jobql.files import PRIVATE_URL, PUBLIC_URL, plain_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from jobql.files import FileArea
    from jobql.settings import Settings

UPLOAD_SUFFIX = ".upload"
INCOMING_DIR = "incoming"
PRIVATE_DIR = "private"  # never mounted as static files
BATCH = 500  # leftovers listed at a time: what the sweep looks up in one round trip
logger = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The store cannot take or give a file now (full, read-only, gone); it may pass."""


def upload_name(upload_id: str) -> str:
    """The name an upload is kept under: its id (the id of the job it is queued for)."""
    return f"{upload_id}{UPLOAD_SUFFIX}"


class LeftoverKind(StrEnum):
    UPLOAD = "upload"  # an upload; its job may be over, or never have been queued
    PARTIAL = "partial"  # a result file whose writer died before publishing it
    JOB_FILES = "job_files"  # a private area's files of one job, kept while the job is


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something the sweep may remove. `job_id` names the job it belongs to (empty for a
    partial file); `location` is the store's own, for `Storage.remove`."""

    kind: LeftoverKind
    job_id: str
    location: str


class UploadSink(Protocol):
    """An upload being stored as it streams in."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    async def write(self, data: bytes) -> None:
        """Store the next bytes; `StorageUnavailable` if the store refuses them."""

    async def finish(self) -> None:
        """The whole upload is stored; `StorageUnavailable` if the last bytes were refused."""

    async def discard(self) -> None:
        """Remove what was stored, once or more (never raises: what cannot be removed, the
        sweep will)."""


class Storage(Protocol):
    def prepare(self, areas: Iterable[FileArea]) -> None:
        """Make what the store needs before the web process serves (folders, buckets)."""

    def new_upload(self) -> UploadSink:
        """Begin storing an upload, under a new id; `StorageUnavailable` if it cannot."""

    def open_upload(self, name: str) -> BinaryIO:
        """The upload `name`, for reading; `FileNotFoundError` if it is gone."""

    def remove_upload(self, name: str) -> None:
        """Remove the upload, if it is there (never raises: the sweep removes it later)."""

    def publish(
        self,
        area: FileArea,
        job_id: str,
        name: str,
        write: Callable[[BinaryIO], None],
        *,
        after_a_lost_delivery: bool = False,
    ) -> int:
        """Store the result file `name` of job `job_id` whole, or not at all: `write` is
        given a file object to write it to. Answers its size. `after_a_lost_delivery`:
        also remove what an earlier delivery of the job that died mid-write left."""

    def open_file(self, area: FileArea, job_id: str, name: str) -> BinaryIO:
        """A result file, for reading; `FileNotFoundError` if it is not there."""

    def exists(self, area: FileArea, job_id: str, name: str) -> bool: ...

    def url(self, area: FileArea, job_id: str, name: str) -> str:
        """Where clients fetch the file: a path on this API, or a full URL."""

    def local_path(self, area: FileArea, job_id: str, name: str) -> Path | None:
        """Where the file is on this host, for the web process to serve it; None if the
        store is not on this host."""

    def public_folder(self, area: FileArea) -> Path | None:
        """The folder a public area's files are served from on this host, if any."""

    def leftovers(self, areas: Iterable[FileArea], older_than: float) -> Iterator[list[Leftover]]:
        """What jobs may have left behind, last changed before `older_than` (a time), in
        batches of at most `BATCH`, each of one kind; read as it goes, never all at once."""

    def remove(self, leftover: Leftover) -> None:
        """Remove a leftover (gone already is fine)."""

    def probe(self) -> None:
        """Write something small and remove it; `StorageUnavailable` if the store refuses."""


class FilesystemStorage:
    """Files under one media root (shared by web and workers: one host, or a shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING_DIR

    # --- uploads -----------------------------------------------------------------------------

    def prepare(self, areas: Iterable[FileArea]) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)
        for area in areas:
            if not area.private:
                self._area_dir(area).mkdir(parents=True, exist_ok=True)

    def new_upload(self) -> FileUpload:
        upload_id = str(uuid.uuid4())
        path = self.incoming / upload_name(upload_id)
        try:
            file = path.open("xb")
        except OSError as exc:
            raise StorageUnavailable(f"An upload cannot be stored: {exc}") from exc
        return FileUpload(upload_id, path, file)

    def open_upload(self, name: str) -> BinaryIO:
        path = self.incoming / plain_name(name)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(f"The upload cannot be read: {exc}") from exc

    def remove_upload(self, name: str) -> None:
        _unlink_or_leave(self.incoming / plain_name(name))

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
        destination = self._file(area, job_id, name)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            size = write_atomically(destination, write)
        except OSError as exc:
            raise StorageUnavailable(f"The file cannot be written: {exc}") from exc
        if after_a_lost_delivery:
            remove_partials(destination)
        return size

    def open_file(self, area: FileArea, job_id: str, name: str) -> BinaryIO:
        return self._file(area, job_id, name).open("rb")

    def exists(self, area: FileArea, job_id: str, name: str) -> bool:
        return self._file(area, job_id, name).is_file()

    def url(self, area: FileArea, job_id: str, name: str) -> str:
        if area.private:
            return f"{PRIVATE_URL}/{area.folder}/{plain_name(job_id)}/{plain_name(name)}"
        return f"{PUBLIC_URL}/{area.folder}/{plain_name(name)}"

    def local_path(self, area: FileArea, job_id: str, name: str) -> Path:
        return self._file(area, job_id, name)

    def public_folder(self, area: FileArea) -> Path | None:
        return None if area.private else self._area_dir(area)

    def _area_dir(self, area: FileArea) -> Path:
        if area.private:
            return self.root / PRIVATE_DIR / area.folder
        return self.root / area.folder

    def _file(self, area: FileArea, job_id: str, name: str) -> Path:
        if area.private:
            return self._area_dir(area) / plain_name(job_id) / plain_name(name)
        return self._area_dir(area) / plain_name(name)

    # --- the sweep -----------------------------------------------------------------------------

    def leftovers(self, areas: Iterable[FileArea], older_than: float) -> Iterator[list[Leftover]]:
        areas = list(areas)
        uploads = (
            Leftover(LeftoverKind.UPLOAD, entry.name.removesuffix(UPLOAD_SUFFIX), entry.path)
            for entry in _older(_entries(self.incoming, suffix=UPLOAD_SUFFIX), older_than)
        )
        partials = (
            Leftover(LeftoverKind.PARTIAL, "", entry.path)
            for folder in self._result_dirs(areas)
            for entry in _older(_entries(folder, prefix=".", suffix=".tmp"), older_than)
        )
        job_files = (
            Leftover(LeftoverKind.JOB_FILES, entry.name, entry.path)
            for area in areas
            if area.private
            for entry in _older(_entries(self._area_dir(area), folders=True), older_than)
        )
        for leftovers in (uploads, partials, job_files):
            while batch := list(itertools.islice(leftovers, BATCH)):
                yield batch

    def _result_dirs(self, areas: list[FileArea]) -> Iterator[str]:
        """Every folder a result file is written in (where half-written ones may be)."""
        for area in areas:
            if area.private:
                yield from (entry.path for entry in _entries(self._area_dir(area), folders=True))
            else:
                yield str(self._area_dir(area))

    def remove(self, leftover: Leftover) -> None:
        match leftover.kind:
            case LeftoverKind.UPLOAD | LeftoverKind.PARTIAL:
                Path(leftover.location).unlink(missing_ok=True)
            case LeftoverKind.JOB_FILES:
                shutil.rmtree(leftover.location, ignore_errors=True)
            case _:
                assert_never(leftover.kind)

    # --- readiness -----------------------------------------------------------------------------

    def probe(self) -> None:
        # Not named like an upload: the sweep never takes it for one.
        path = self.incoming / f".probe-{uuid.uuid4().hex}"
        try:
            with path.open("xb") as file:
                file.write(b"jobql readiness probe\n")
            path.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise StorageUnavailable(f"The media store cannot be written: {exc}") from exc


class FileUpload:
    """An upload streaming to a file in `incoming/`."""

    def __init__(self, upload_id: str, path: Path, file: BinaryIO) -> None:
        self._id = upload_id
        self._path = path
        self._file: BinaryIO | None = file

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def path(self) -> Path:
        return self._path

    async def write(self, data: bytes) -> None:
        assert self._file is not None, "written after it was finished"
        # A write of one chunk lands in the page cache in microseconds.
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageUnavailable(f"An upload cannot be stored: {exc}") from exc

    async def finish(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # what is still buffered is written now
            except OSError as exc:
                raise StorageUnavailable(f"An upload cannot be stored: {exc}") from exc

    async def discard(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # the buffer it could not write
                file.close()
        _unlink_or_leave(self._path)


@dataclass(frozen=True, slots=True)
class JobFiles:
    """One job's files in its kind's area: what a task body writes its results with."""

    storage: Storage
    area: FileArea
    job_id: str

    def publish(
        self, name: str, write: Callable[[BinaryIO], None], *, after_a_lost_delivery: bool = False
    ) -> int:
        """Store the file `name` whole or not at all (see `Storage.publish`); its size."""
        return self.storage.publish(
            self.area, self.job_id, name, write, after_a_lost_delivery=after_a_lost_delivery
        )

    def open(self, name: str) -> BinaryIO:
        return self.storage.open_file(self.area, self.job_id, name)

    def url(self, name: str) -> str:
        return self.storage.url(self.area, self.job_id, name)


def write_atomically(destination: Path, write: Callable[[BinaryIO], None]) -> int:
    """Write a file whole or not at all: to a temporary file beside it, then renamed.
    Answers its size."""
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            write(file)
        size = temporary.stat().st_size
        temporary.replace(destination)
    finally:
        # On a read-only file system even this fails; the sweep removes what is left.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    return size


def remove_partials(destination: Path) -> None:
    """Remove what writers that died mid-write left beside `destination`.

    This lists the whole folder: worth it only when there was an earlier delivery.
    """
    for leftover in destination.parent.glob(f".{destination.name}.*.tmp"):
        _unlink_or_leave(leftover)


def create_storage(settings: Settings) -> Storage:
    match settings.storage:
        case "filesystem":
            return FilesystemStorage(settings.media_root)
        case "s3":
            # Imported here: the S3 backend builds on this module's types.
            from jobql.s3_storage import create_s3_storage

            return create_s3_storage(settings)
        case _:
            assert_never(settings.storage)


def _unlink_or_leave(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a file system gone read-only: the sweep removes it later
        logger.warning("Could not remove %s: %s", path.name, exc)


def _entries(
    directory: str | Path, suffix: str = "", prefix: str = "", folders: bool = False
) -> Iterator[os.DirEntry[str]]:
    """The files (or folders) in `directory` named so, read as the walk goes (not listed
    first)."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return  # nothing was ever written there
    with entries:
        for entry in entries:
            if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) == folders:
                    yield entry


def _older(entries: Iterable[os.DirEntry[str]], cutoff: float) -> Iterator[os.DirEntry[str]]:
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                yield entry
        except FileNotFoundError:
            continue
