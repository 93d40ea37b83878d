"""The S3 backend against a real S3 server (SeaweedFS): the same contract as the filesystem's."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
import pytest

from jobql.files import BadFileName, FileArea
from jobql.s3_server import S3Server
from jobql.s3_storage import PART_BYTES, S3Storage, create_s3_storage
from jobql.storage import LeftoverKind, StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from jobql.settings import Settings

AVATARS = FileArea("avatars")
EXPORTS = FileArea("exports", private=True)


@pytest.fixture
def s3_storage(make_s3_settings: Callable[..., Settings]) -> S3Storage:
    """A prefix of the test's own in the session's bucket."""
    return create_s3_storage(make_s3_settings(f"t-{uuid.uuid4().hex[:12]}"))


def keys(storage: S3Storage) -> list[str]:
    return sorted(meta["path"] for page in obstore.list(storage.store) for meta in page)


def writing(data: bytes) -> Callable[[BinaryIO], None]:
    def write(file: BinaryIO) -> None:
        file.write(data)

    return write


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


async def test_a_large_upload_streams_in_parts_and_reads_back(s3_storage: S3Storage) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 2 * PART_BYTES // len(chunk) + 3  # a multipart upload of three parts
    upload = s3_storage.new_upload()
    for _ in range(count):
        await upload.write(chunk)
    await upload.finish()

    assert keys(s3_storage) == [f"incoming/{upload.name}"]
    with s3_storage.open_upload(upload.name) as file:
        assert file.read() == chunk * count
    whole = chunk * count
    with s3_storage.open_upload(upload.name) as file:  # read as Pillow reads: a header, seeks
        assert file.read(16) == whole[:16]
        assert file.seek(-10, io.SEEK_END) == len(whole) - 10
        assert file.read() == whole[-10:]
        file.seek(300_000)
        assert file.read(5) == whole[300_000:300_005]
        assert file.tell() == 300_005

    s3_storage.remove_upload(upload.name)
    s3_storage.remove_upload(upload.name)  # gone already is fine
    assert keys(s3_storage) == []
    with pytest.raises(FileNotFoundError):
        s3_storage.open_upload(upload.name)


async def test_a_discarded_upload_leaves_nothing_whatever_its_state(s3_storage: S3Storage) -> None:
    empty = s3_storage.new_upload()
    half = s3_storage.new_upload()
    await half.write(b"x" * (PART_BYTES + 1))  # one part already sent
    whole = s3_storage.new_upload()
    await whole.write(b"y")
    await whole.finish()

    for upload in (empty, half, whole, whole):
        await upload.discard()

    assert keys(s3_storage) == []


async def test_an_empty_upload_is_an_empty_object(s3_storage: S3Storage) -> None:
    upload = s3_storage.new_upload()
    await upload.finish()
    with s3_storage.open_upload(upload.name) as file:
        assert file.read() == b""


@pytest.mark.parametrize("name", ["../secret.upload", "a/b.upload", "..", "", "x\0.upload"])
def test_an_upload_name_with_a_path_in_it_is_refused(s3_storage: S3Storage, name: str) -> None:
    with pytest.raises(BadFileName):
        s3_storage.open_upload(name)
    with pytest.raises(BadFileName):
        s3_storage.remove_upload(name)


def test_a_result_is_published_whole_and_served_at_a_presigned_url(s3_storage: S3Storage) -> None:
    size = s3_storage.publish(AVATARS, "job-1", "job-1.png", writing(b"png" * 1000))

    assert size == 3000
    assert s3_storage.exists(AVATARS, "job-1", "job-1.png")
    assert not s3_storage.exists(AVATARS, "job-2", "job-2.png")
    url = s3_storage.url(AVATARS, "job-1", "job-1.png")
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=3600" in url  # valid as long as the job is kept
    assert fetch(url) == b"png" * 1000
    tampered = url.replace("job-1.png", "job-2.png")
    with pytest.raises(urllib.error.HTTPError) as refused:
        fetch(tampered)
    assert refused.value.code == 403


def test_a_failed_write_publishes_nothing(s3_storage: S3Storage) -> None:
    def fail(file: BinaryIO) -> None:
        file.write(b"half an image")
        raise OSError("the encoder died")

    with pytest.raises(OSError, match="encoder died"):
        s3_storage.publish(AVATARS, "job-1", "job-1.png", fail)
    assert keys(s3_storage) == []


def test_a_public_url_is_the_base_the_prefix_and_the_key(
    make_s3_settings: Callable[..., Settings],
) -> None:
    storage = create_s3_storage(
        make_s3_settings("tenant/a", media_public_url="https://cdn.example.com/media/")
    )
    assert storage.url(AVATARS, "job-1", "job-1.jpg") == (
        "https://cdn.example.com/media/tenant/a/avatars/job-1.jpg"
    )
    # A private file is never given a public URL: this API serves it to its owner.
    assert storage.url(EXPORTS, "job-1", "jobs.csv") == "/files/exports/job-1/jobs.csv"


def test_private_files_are_kept_per_job(s3_storage: S3Storage) -> None:
    s3_storage.publish(EXPORTS, "job-1", "jobs.csv", writing(b"a,b\n"))
    assert keys(s3_storage) == ["private/exports/job-1/jobs.csv"]
    with s3_storage.open_file(EXPORTS, "job-1", "jobs.csv") as file:
        assert file.read() == b"a,b\n"
    with pytest.raises(FileNotFoundError):
        s3_storage.open_file(EXPORTS, "job-2", "jobs.csv")
    assert s3_storage.local_path(EXPORTS, "job-1", "jobs.csv") is None
    assert s3_storage.public_folder(AVATARS) is None


async def test_the_sweep_lists_leftovers_a_page_at_a_time_and_removes_them(
    s3_storage: S3Storage,
) -> None:
    uploads = []
    for _ in range(3):
        upload = s3_storage.new_upload()
        await upload.write(b"photo")
        await upload.finish()
        uploads.append(upload.id)
    for job in ("job-1", "job-2"):
        s3_storage.publish(EXPORTS, job, "a.csv", writing(b"1"))
        s3_storage.publish(EXPORTS, job, "b.csv", writing(b"2"))
    s3_storage.publish(AVATARS, "job-3", "job-3.jpg", writing(b"jpg"))

    assert list(s3_storage.leftovers([AVATARS, EXPORTS], older_than=time.time() - 3600)) == []
    batches = list(s3_storage.leftovers([AVATARS, EXPORTS], older_than=time.time() + 60))
    found = {(leftover.kind, leftover.job_id) for batch in batches for leftover in batch}
    assert found == {(LeftoverKind.UPLOAD, upload_id) for upload_id in uploads} | {
        (LeftoverKind.JOB_FILES, "job-1"),
        (LeftoverKind.JOB_FILES, "job-2"),
    }
    assert all(len({leftover.kind for leftover in batch}) == 1 for batch in batches)

    for batch in batches:
        for leftover in batch:
            s3_storage.remove(leftover)
    assert keys(s3_storage) == ["avatars/job-3.jpg"]  # a public file is kept


@pytest.fixture
def stopped_s3(make_s3_settings: Callable[..., Settings]) -> S3Storage:
    """A store whose server has stopped."""
    server = S3Server()
    server.start()
    storage = create_s3_storage(make_s3_settings("gone", s3_endpoint_url=server.endpoint_url))
    storage.probe()
    server.close()
    return storage


async def test_a_store_that_is_away_is_storage_unavailable(stopped_s3: S3Storage) -> None:
    with pytest.raises(StorageUnavailable):
        stopped_s3.probe()
    upload = stopped_s3.new_upload()
    await upload.write(b"x")  # buffered: nothing is sent before a part fills
    with pytest.raises(StorageUnavailable):
        await upload.finish()
    await upload.discard()  # never raises
    with pytest.raises(StorageUnavailable):
        stopped_s3.publish(AVATARS, "job-1", "job-1.jpg", writing(b"jpg"))
    with pytest.raises(StorageUnavailable):
        stopped_s3.open_upload("job-1.upload")


def test_the_lifetime_of_a_presigned_url_is_the_jobs(s3_storage: S3Storage) -> None:
    storage = S3Storage(s3_storage.store, "", "", timedelta(seconds=90))
    assert "X-Amz-Expires=90" in storage.url(AVATARS, "job-1", "job-1.jpg")
