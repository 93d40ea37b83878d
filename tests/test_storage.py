"""The storage interface, on its filesystem backend: uploads stored as they stream, result
files published whole or not at all, the sweep's listing, the readiness probe."""

from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING, BinaryIO

import pytest
from pydantic import ValidationError

from jobql.files import BadFileName, FileArea
from jobql.jobs import new_job_id
from jobql.settings import Settings
from jobql.storage import (
    BATCH,
    FilesystemStorage,
    JobFiles,
    LeftoverKind,
    Storage,
    StorageUnavailable,
    UploadSink,
    create_storage,
    upload_name,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

AVATARS = FileArea("avatars")
EXPORTS = FileArea("exports", private=True)
AREAS = [AVATARS, EXPORTS]
OLD = time.time() - 3600


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    store = FilesystemStorage(tmp_path)
    store.prepare(AREAS)
    return store


def age(path: Path, mtime: float = OLD) -> None:
    os.utime(path, (mtime, mtime))


def writing(data: bytes) -> Callable[[BinaryIO], None]:
    return lambda file: file.writelines([data])


def test_the_filesystem_backend_is_a_storage(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    storage: Storage = create_storage(settings)
    assert isinstance(storage, FilesystemStorage)
    assert storage.root == settings.media_root


def test_a_backend_jobql_does_not_have_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError, match="filesystem"):
        Settings(storage="tape")  # type: ignore[arg-type]


def test_s3_needs_a_bucket() -> None:
    with pytest.raises(ValidationError, match="JOBQL_S3_BUCKET"):
        Settings(storage="s3")


def test_prepare_makes_the_upload_folder_and_each_public_area(tmp_path: Path) -> None:
    FilesystemStorage(tmp_path).prepare(AREAS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avatars", "incoming"]


# --- uploads -----------------------------------------------------------------------------------


async def test_an_upload_is_stored_as_it_streams_and_read_back(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    upload = storage.new_upload()
    for chunk in (b"first ", b"second ", b"third"):
        await upload.write(chunk)
    await upload.finish()

    assert upload.name == upload_name(upload.id) == f"{upload.id}.upload"
    assert [p.name for p in (tmp_path / "incoming").iterdir()] == [upload.name]
    with storage.open_upload(upload.name) as file:
        assert file.read() == b"first second third"

    storage.remove_upload(upload.name)
    storage.remove_upload(upload.name)  # gone already is fine
    assert list((tmp_path / "incoming").iterdir()) == []
    with pytest.raises(FileNotFoundError):
        storage.open_upload(upload.name)


async def test_each_upload_has_an_id_of_its_own(storage: FilesystemStorage) -> None:
    ids = set()
    for _ in range(20):
        upload = storage.new_upload()
        await upload.finish()
        ids.add(upload.id)
    assert len(ids) == 20


async def test_a_discarded_upload_is_removed_whatever_its_state(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    half = storage.new_upload()
    await half.write(b"x" * 100_000)
    whole = storage.new_upload()
    await whole.write(b"y")
    await whole.finish()

    await half.discard()
    await whole.discard()
    await whole.discard()

    assert list((tmp_path / "incoming").iterdir()) == []


def test_an_upload_folder_taken_away_is_storage_unavailable(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    (tmp_path / "incoming").rmdir()
    with pytest.raises(StorageUnavailable):
        storage.new_upload()
    # A missing upload is not the store failing: the job's upload is lost.
    with pytest.raises(FileNotFoundError):
        storage.open_upload(upload_name(new_job_id()))


@pytest.mark.parametrize("name", ["../secret.upload", "a/b.upload", "..", "", "x\0.upload"])
def test_an_upload_name_with_a_path_in_it_is_refused(storage: FilesystemStorage, name: str) -> None:
    with pytest.raises(BadFileName):
        storage.open_upload(name)
    with pytest.raises(BadFileName):
        storage.remove_upload(name)


# --- result files ------------------------------------------------------------------------------


def test_a_public_file_is_published_with_its_url(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    job_id = new_job_id()
    size = storage.publish(AVATARS, job_id, f"{job_id}.png", writing(b"image"))

    assert size == 5
    assert storage.exists(AVATARS, job_id, f"{job_id}.png")
    assert storage.url(AVATARS, job_id, f"{job_id}.png") == f"/media/avatars/{job_id}.png"
    assert storage.local_path(AVATARS, job_id, f"{job_id}.png") == tmp_path / "avatars" / (
        f"{job_id}.png"
    )
    assert storage.public_folder(AVATARS) == tmp_path / "avatars"
    with storage.open_file(AVATARS, job_id, f"{job_id}.png") as file:
        assert file.read() == b"image"


def test_a_private_file_is_kept_per_job_and_never_in_a_public_folder(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    job_id = new_job_id()
    files = JobFiles(storage, EXPORTS, job_id)
    files.publish("jobs.csv", writing(b"id\n"))

    assert files.url("jobs.csv") == f"/files/exports/{job_id}/jobs.csv"
    assert (tmp_path / "private" / "exports" / job_id / "jobs.csv").read_bytes() == b"id\n"
    assert storage.public_folder(EXPORTS) is None
    assert not storage.exists(EXPORTS, new_job_id(), "jobs.csv")
    with files.open("jobs.csv") as file:
        assert file.read() == b"id\n"


def test_a_file_appears_whole_or_not_at_all(storage: FilesystemStorage, tmp_path: Path) -> None:
    job_id = new_job_id()
    storage.publish(AVATARS, job_id, "a.png", writing(b"previous"))

    def dies_half_way(file: BinaryIO) -> None:
        file.write(b"half of it")
        raise RuntimeError("the encoder failed")

    with pytest.raises(RuntimeError):
        storage.publish(AVATARS, job_id, "a.png", dies_half_way)

    assert [p.name for p in (tmp_path / "avatars").iterdir()] == ["a.png"]
    with storage.open_file(AVATARS, job_id, "a.png") as file:
        assert file.read() == b"previous"


def test_publishing_after_a_lost_delivery_removes_what_it_left(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    avatars = tmp_path / "avatars"
    dead = [avatars / ".a.png.101.tmp", avatars / ".a.png.202.tmp"]
    others = [avatars / ".b.png.101.tmp"]
    for path in dead + others:
        path.write_bytes(b"x")

    storage.publish(AVATARS, "job", "a.png", writing(b"made"))
    assert all(path.exists() for path in dead)  # a first delivery does not list the folder
    storage.publish(AVATARS, "job", "a.png", writing(b"made"), after_a_lost_delivery=True)

    assert sorted(p.name for p in avatars.iterdir()) == [".b.png.101.tmp", "a.png"]


@pytest.mark.parametrize(
    ("job_id", "name"), [("job", "../a.png"), ("job", "a/b"), ("..", "a.csv"), ("j/k", "a.csv")]
)
def test_a_name_with_a_path_in_it_is_refused(
    storage: FilesystemStorage, job_id: str, name: str
) -> None:
    area = EXPORTS if "csv" in name else AVATARS
    for call in (
        lambda: storage.publish(area, job_id, name, writing(b"x")),
        lambda: storage.open_file(area, job_id, name),
        lambda: storage.exists(area, job_id, name),
        lambda: storage.url(area, job_id, name),
        lambda: storage.local_path(area, job_id, name),
    ):
        with pytest.raises(BadFileName):
            call()


# --- a media file system that fails (a tmpfs of 1 MiB; the tests run as root) -----------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


async def stream(upload: UploadSink, size: int) -> None:
    for _ in range(size // 65536):
        await upload.write(b"\0" * 65536)
    await upload.finish()


async def test_a_full_store_is_storage_unavailable_and_leaves_nothing(small_disk: Path) -> None:
    storage = FilesystemStorage(small_disk)
    storage.prepare(AREAS)
    upload = storage.new_upload()
    with pytest.raises(StorageUnavailable):
        await stream(upload, 6 * 1024 * 1024)  # on a disk of 1 MiB
    await upload.discard()

    with pytest.raises(StorageUnavailable):
        storage.publish(AVATARS, "job", "a.png", writing(b"\0" * 2 * 1024 * 1024))

    assert [p for p in small_disk.rglob("*") if p.is_file()] == []
    storage.probe()  # the room is back


async def test_a_read_only_store_is_storage_unavailable(small_disk: Path) -> None:
    storage = FilesystemStorage(small_disk)
    storage.prepare(AREAS)
    done = storage.new_upload()
    await done.write(b"photo")
    await done.finish()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with pytest.raises(StorageUnavailable):
            storage.new_upload()
        with pytest.raises(StorageUnavailable):
            storage.publish(AVATARS, "job", "a.png", writing(b"x"))
        with pytest.raises(StorageUnavailable):
            storage.probe()
        with storage.open_upload(done.name) as file:  # what is there can still be read
            assert file.read() == b"photo"
        storage.remove_upload(done.name)  # cannot be removed: left for the sweep, no error
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert [p.name for p in (small_disk / "incoming").iterdir()] == [done.name]


# --- the sweep's listing -----------------------------------------------------------------------


def test_leftovers_are_what_is_old_enough_of_each_kind(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    old_upload, young_upload, expired = new_job_id(), new_job_id(), new_job_id()
    for upload_id in (old_upload, young_upload):
        (tmp_path / "incoming" / upload_name(upload_id)).write_bytes(b"x")
    age(tmp_path / "incoming" / upload_name(old_upload))
    (tmp_path / "incoming" / "notes.txt").write_bytes(b"not an upload")
    age(tmp_path / "incoming" / "notes.txt")
    partial = tmp_path / "avatars" / ".a.png.101.tmp"
    partial.write_bytes(b"x")
    age(partial)
    age(tmp_path / "avatars")
    storage.publish(AVATARS, "job", "done.png", writing(b"x"))
    age(tmp_path / "avatars" / "done.png")
    JobFiles(storage, EXPORTS, expired).publish("jobs.csv", writing(b"id\n"))
    private_partial = tmp_path / "private" / "exports" / expired / ".jobs.csv.7.tmp"
    private_partial.write_bytes(b"x")
    age(private_partial)
    age(tmp_path / "private" / "exports" / expired)

    batches = list(storage.leftovers(AREAS, older_than=time.time() - 600))

    found = [(leftover.kind, leftover.job_id) for batch in batches for leftover in batch]
    assert found == [
        (LeftoverKind.UPLOAD, old_upload),
        (LeftoverKind.PARTIAL, ""),
        (LeftoverKind.PARTIAL, ""),
        (LeftoverKind.JOB_FILES, expired),
    ]
    assert all(len({leftover.kind for leftover in batch}) == 1 for batch in batches)

    for batch in batches:
        for leftover in batch:
            storage.remove(leftover)
            storage.remove(leftover)  # gone already is fine
    assert sorted(p.name for p in (tmp_path / "incoming").iterdir()) == sorted(
        ["notes.txt", upload_name(young_upload)]
    )
    assert [p.name for p in (tmp_path / "avatars").iterdir()] == ["done.png"]
    assert list((tmp_path / "private" / "exports").iterdir()) == []


def test_leftovers_come_a_batch_at_a_time(storage: FilesystemStorage, tmp_path: Path) -> None:
    for _ in range(BATCH + 3):
        path = tmp_path / "incoming" / upload_name(new_job_id())
        path.write_bytes(b"")
        age(path)

    batches = storage.leftovers(AREAS, older_than=time.time())
    first = next(batches)

    assert len(first) == BATCH
    assert [len(batch) for batch in batches] == [3]


def test_a_store_never_written_has_no_leftovers(tmp_path: Path) -> None:
    assert list(FilesystemStorage(tmp_path / "nothing").leftovers(AREAS, time.time())) == []


# --- readiness ---------------------------------------------------------------------------------


def test_the_probe_writes_and_removes_a_small_file(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    storage.probe()
    assert list((tmp_path / "incoming").iterdir()) == []
    (tmp_path / "incoming").rmdir()
    with pytest.raises(StorageUnavailable):
        storage.probe()
