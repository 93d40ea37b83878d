"""The media store failing under a running jobql: a directory taken away, the file system
read-only, or full (a small tmpfs each test mounts; the tests run as root).

Uploads go over real HTTP to a real web process, jobs to a real worker. An upload the
store cannot take is `SERVICE_UNAVAILABLE` (HTTP 503, a GraphQL error body) with nothing
left on disk; `/readyz` names `media` until the store is fixed; an avatar the worker
cannot write is retried, then ends `STORAGE_UNAVAILABLE`, retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from jobql.health import MediaProbe
from jobql.s3_server import S3Server
from jobql.storage import FilesystemStorage
from tests.conftest import token
from tests.graphql_clients import follow, ws_client
from tests.images import phone_photo
from tests.support import UPLOAD_AVATAR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from jobql.settings import Settings
    from tests.support import Stack, WebServer

pytestmark = pytest.mark.slow

TMPFS_SIZE = "2m"
STORAGE_SETTINGS: dict[str, Any] = {
    "storage_max_retries": 2,
    "storage_retry_backoff": 0.2,
}
USER = "storage-faults"


# --- the media file system ---------------------------------------------------------------------


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted when the test ends, whatever happened (lazily if a process
    still has it open)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(point)], check=True
    )
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.fixture
def stack(mount_point: Path, make_stack: Callable[..., Stack]) -> Stack:
    """A private jobql whose media root is a folder on the tmpfs (a folder, so that the
    whole root can be taken away: a mount point cannot)."""
    media_root = mount_point / "media"
    media_root.mkdir()
    return make_stack(media_root=media_root, **STORAGE_SETTINGS)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def fill(mount_point: Path) -> None:
    """Write a file until the file system has no room left; `make_room` removes it."""
    filler = mount_point / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(chunk)
    # What a write of less than a page found room for, too.
    with contextlib.suppress(OSError), (mount_point / "filler-tail").open("wb", 0) as tail:
        while True:
            tail.write(b"\0")


def make_room(mount_point: Path) -> None:
    for name in ("filler", "filler-tail"):
        (mount_point / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Fault:
    """A way the media store fails, and what an operator does to fix it."""

    name: str
    cause: Callable[[Settings, Path], None]
    fix: Callable[[Settings, Path], None]


def _remove_incoming(settings: Settings, mount_point: Path) -> None:
    (settings.media_root / "incoming").rmdir()


def _restore_incoming(settings: Settings, mount_point: Path) -> None:
    (settings.media_root / "incoming").mkdir()


def _remove_media_root(settings: Settings, mount_point: Path) -> None:
    shutil.rmtree(settings.media_root)


def _restore_media_root(settings: Settings, mount_point: Path) -> None:
    (settings.media_root / "incoming").mkdir(parents=True)
    (settings.media_root / "avatars").mkdir()


FAULTS = [
    Fault("incoming removed", _remove_incoming, _restore_incoming),
    Fault("media root removed", _remove_media_root, _restore_media_root),
    Fault("read-only", lambda s, m: remount(m, "ro"), lambda s, m: remount(m, "rw")),
    Fault("full", lambda s, m: fill(m), lambda s, m: make_room(m)),
]


def files_under(settings: Settings) -> list[str]:
    """Every file in the media root (the filler lives beside it, not in it)."""
    if not settings.media_root.exists():
        return []
    return sorted(
        str(path.relative_to(settings.media_root))
        for path in settings.media_root.rglob("*")
        if path.is_file()
    )


# --- through HTTP ------------------------------------------------------------------------------


async def post_upload(web: WebServer, data: bytes, filename: str = "photo.jpg") -> httpx.Response:
    """`uploadAvatar` as a GraphQL multipart request, answered whatever its status."""
    operations = {"query": UPLOAD_AVATAR, "variables": {"file": None, "options": None}}
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(
            web.http_url,
            headers={"Authorization": f"Bearer {token(USER)}"},
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": (filename, data, "image/jpeg")},
        )


async def readyz(web: WebServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(web.url("/readyz"))


async def readyz_until(web: WebServer, status: int, within: float = 15) -> httpx.Response:
    """`/readyz` once it answers `status`, or its last answer (its media probe's answer
    stands for a second)."""
    deadline = time.monotonic() + within
    while True:
        answer = await readyz(web)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.2)


def assert_service_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    errors = answer.json()["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["SERVICE_UNAVAILABLE"]


async def follow_to_end(web: WebServer, job_id: str, within: float = 60) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in follow(ws_client(web, token(USER)), job_id)]

    return await asyncio.wait_for(collect(), within)


def small_photo() -> bytes:
    return phone_photo(600, 400)


def noise_png(side: int = 1000) -> bytes:
    """About 3 MB that do not compress: more than the whole tmpfs holds."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
async def test_an_upload_the_media_store_cannot_take_is_service_unavailable(
    stack: Stack, mount_point: Path, fault: Fault
) -> None:
    stack.add_worker()
    web = stack.start_web()
    assert (await readyz(web)).status_code == 200

    fault.cause(stack.settings, mount_point)
    answer = await post_upload(web, small_photo())
    not_ready = await readyz_until(web, 503)

    assert_service_unavailable(answer)
    assert files_under(stack.settings) == []  # nothing left on disk
    assert not_ready.status_code == 503
    assert not_ready.json() == {"redis": "ok", "workers": 1, "media": "unwritable"}
    assert "Traceback" not in web.process.log

    fault.fix(stack.settings, mount_point)
    ready = await readyz_until(web, 200)
    assert ready.status_code == 200, ready.text
    assert ready.json()["media"] == "ok"
    accepted = await post_upload(web, small_photo())
    assert accepted.status_code == 200, accepted.text
    job_id = accepted.json()["data"]["uploadAvatar"]["id"]
    events = await follow_to_end(web, job_id)
    assert events[-1]["state"] == "SUCCESS", events[-1]


async def test_a_disk_that_fills_while_an_upload_streams_is_service_unavailable(
    stack: Stack,
) -> None:
    """The file was begun and part written when the space ran out: it is removed."""
    stack.add_worker()
    web = stack.start_web()
    data = noise_png()
    assert len(data) > 2 * 1024 * 1024

    answer = await post_upload(web, data, "big.png")

    assert_service_unavailable(answer)
    assert files_under(stack.settings) == []
    assert (await readyz_until(web, 200)).status_code == 200  # the space is free again


async def test_readiness_probes_the_store_at_most_once_a_second(tmp_path: Path) -> None:
    """However many ask at once, one probe (a file written and removed) answers them all,
    and its answer stands for a second: a fault shows within that second."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    probe = MediaProbe(FilesystemStorage(tmp_path), max_age=1.0)
    assert all(await asyncio.gather(*(probe.writable() for _ in range(100))))
    incoming.rmdir()

    cached = await probe.writable()
    await asyncio.sleep(1.1)
    after_a_second = await probe.writable()

    assert cached is True  # the answer of a moment ago
    assert after_a_second is False
    incoming.mkdir()
    assert await probe.writable() is False  # still within the second of the last probe
    await asyncio.sleep(1.1)
    assert await probe.writable() is True
    assert list(incoming.iterdir()) == []  # no probe file left behind


async def test_many_readiness_checks_during_a_fault_never_fail_otherwise(
    stack: Stack, mount_point: Path
) -> None:
    stack.add_worker()
    web = stack.start_web()
    remount(mount_point, "ro")
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(*(client.get(web.url("/readyz")) for _ in range(50)))
    remount(mount_point, "rw")

    assert {answer.status_code for answer in answers} <= {200, 503}
    assert {answer.json()["media"] for answer in answers if answer.status_code == 503} <= {
        "unwritable"
    }
    assert (await readyz_until(web, 200)).status_code == 200
    assert files_under(stack.settings) == []  # no probe file left behind


# --- the worker --------------------------------------------------------------------------------


async def queue_avatar_without_a_worker(stack: Stack) -> tuple[WebServer, str]:
    web = stack.start_web()
    accepted = await post_upload(web, small_photo())
    assert accepted.status_code == 200, accepted.text
    return web, str(accepted.json()["data"]["uploadAvatar"]["id"])


WORKER_FAULTS = [fault for fault in FAULTS if fault.name in ("read-only", "full")]


@pytest.mark.parametrize("fault", WORKER_FAULTS, ids=[fault.name for fault in WORKER_FAULTS])
async def test_an_avatar_the_worker_cannot_write_ends_storage_unavailable_after_retries(
    stack: Stack, mount_point: Path, fault: Fault
) -> None:
    web, job_id = await queue_avatar_without_a_worker(stack)
    fault.cause(stack.settings, mount_point)
    stack.add_worker()

    events = await follow_to_end(web, job_id)

    states = [event["state"] for event in events]
    assert states.count("RETRY") == STORAGE_SETTINGS["storage_max_retries"], states
    assert events[-1]["state"] == "FAILURE", events[-1]
    error = events[-1]["error"]
    assert (error["code"], error["retryable"]) == ("STORAGE_UNAVAILABLE", True), error
    avatars = [name for name in files_under(stack.settings) if name.startswith("avatars/")]
    assert avatars == []  # no avatar, and no half-written one
    # The worker logs the failure just after it stores it: the client may hear first.
    stack.workers[0].wait_for_log("STORAGE_UNAVAILABLE", timeout=10)
    worker_log = stack.workers[0].log
    assert "Traceback" not in worker_log
    fault.fix(stack.settings, mount_point)
    # The job ended retryable: its upload is kept, for retryJob, until the job expires.
    assert files_under(stack.settings) == [f"incoming/{job_id}.upload"]


async def test_an_avatar_that_could_not_be_written_is_made_once_there_is_room(
    make_stack: Callable[..., Stack], mount_point: Path
) -> None:
    """The upload is kept for the retries, and the avatar made at the first one after the
    space came back."""
    media_root = mount_point / "media"
    media_root.mkdir()
    stack = make_stack(media_root=media_root, storage_max_retries=5, storage_retry_backoff=0.5)
    web, job_id = await queue_avatar_without_a_worker(stack)
    fill(mount_point)
    stack.add_worker()

    events = []
    async for event in follow(ws_client(web, token(USER)), job_id):
        events.append(event)
        if event["state"] == "RETRY" and [e["state"] for e in events].count("RETRY") == 1:
            make_room(mount_point)

    states = [event["state"] for event in events]
    assert "RETRY" in states, states
    assert events[-1]["state"] == "SUCCESS", events[-1]
    assert files_under(stack.settings) == [f"avatars/{job_id}.jpg"]
    with Image.open(stack.settings.media_root / "avatars" / f"{job_id}.jpg") as avatar:
        assert avatar.size == (256, 256)


# --- an S3 store that goes away -----------------------------------------------------------------


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """An S3 server of the test's own, that it may stop and start (its credentials are the
    session's server's, in the AWS variables: `s3_server` sets them)."""
    server = S3Server()
    server.start()
    yield server
    server.close()


async def test_an_s3_store_that_goes_away_is_service_unavailable_then_comes_back(
    make_stack: Callable[..., Stack], make_s3_settings: Callable[..., Settings], own_s3: S3Server
) -> None:
    s3 = make_s3_settings("away", s3_endpoint_url=own_s3.endpoint_url)
    overrides = {name: getattr(s3, name) for name in ("storage", "s3_bucket", "s3_endpoint_url")}
    stack = make_stack(s3_prefix="away", **overrides, **STORAGE_SETTINGS)
    with pytest.MonkeyPatch.context() as env:  # this server's own credentials, for the children
        env.setenv("AWS_ACCESS_KEY_ID", own_s3.credentials.access_key_id)
        env.setenv("AWS_SECRET_ACCESS_KEY", own_s3.credentials.secret_access_key)
        web = stack.start_web()
        stack.add_worker()
    assert (await readyz_until(web, 200)).status_code == 200

    own_s3.stop()
    answer = await post_upload(web, small_photo())
    assert_service_unavailable(answer)
    not_ready = await readyz_until(web, 503)
    assert not_ready.status_code == 503
    assert not_ready.json()["media"] != "ok"

    own_s3.start()
    assert (await readyz_until(web, 200, within=30)).status_code == 200
    answer = await post_upload(web, small_photo())
    job = answer.json()["data"]["uploadAvatar"]
    events = await follow_to_end(web, job["id"])
    assert events[-1]["state"] == "SUCCESS", events
