"""The registry of kinds and what a kind declares: loading, payloads that Celery checks,
bodies that run without Celery, and the web and worker agreeing on the list."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from typing import TYPE_CHECKING, Any

import pytest
import redis

from jobql.files import FileArea
from jobql.images import ImageFormat
from jobql.jobs import JobFailed, new_job_id, record_key
from jobql.kinds import JobCancelled, TaskContext
from jobql.kinds.avatar import AvatarPayload, AvatarResult
from jobql.kinds.avatar import kind as avatar
from jobql.kinds.welcome_email import WelcomePayload
from jobql.kinds.welcome_email import kind as welcome_email
from jobql.redis_server import free_port
from jobql.registry import (
    KINDS_KEY,
    BadKindModule,
    Kinds,
    KindsDisagree,
    agree,
    built_in_kinds,
    check_agreement,
    kind_modules,
    load_kind,
    load_kinds,
)
from jobql.storage import FilesystemStorage, JobFiles
from jobql.tasks.sweep import jobs_exist, sweep
from jobql.tasks.worker import create_worker_app
from tests.images import phone_photo
from tests.support import settings_env

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from jobql.redis_server import RedisServer
    from jobql.settings import Settings


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(own_redis.url)
    yield connection
    connection.close()


# --- loading ---------------------------------------------------------------------------------


def test_built_in_kinds_come_from_entry_points_in_order() -> None:
    assert built_in_kinds().names == ["avatar", "welcome_email"]


def test_the_setting_adds_modules_after_the_entry_points(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kinds=" examples.export_jobs , jobql.kinds.avatar,")
    modules = kind_modules(settings)
    assert modules == ["jobql.kinds.avatar", "jobql.kinds.welcome_email", "examples.export_jobs"]
    assert load_kinds(settings).names == ["avatar", "welcome_email", "export_jobs"]


@pytest.mark.parametrize(
    ("module", "says"),
    [("no_such_module_for_jobql", "Cannot import"), ("jobql.jobs", "has no `kind = Kind(...)`")],
)
def test_a_bad_kind_module_is_refused_with_its_name(module: str, says: str) -> None:
    with pytest.raises(BadKindModule) as refused:
        load_kind(module)
    assert says in str(refused.value) and module in str(refused.value)


def test_two_kinds_of_one_name_are_refused() -> None:
    with pytest.raises(BadKindModule):
        Kinds([avatar, avatar])


def test_job_kind_enum_is_made_of_the_kinds() -> None:
    enum = built_in_kinds().enum
    assert {member.name: member.value for member in enum} == {
        "AVATAR": "avatar",
        "WELCOME_EMAIL": "welcome_email",
    }


# --- payloads and results --------------------------------------------------------------------


def test_payload_crosses_as_plain_keyword_arguments_and_comes_back_typed() -> None:
    payload = AvatarPayload("x.upload", 64, 80, ImageFormat.WEBP)
    sent = avatar.dump_payload(payload)
    assert sent == {"incoming_name": "x.upload", "size": 64, "quality": 80, "image_format": "WEBP"}
    back = avatar.load_payload(sent)
    assert back == payload
    assert back.image_format is ImageFormat.WEBP


def test_result_is_stored_plain_and_read_back_as_its_type() -> None:
    result = AvatarResult(
        url="/media/avatars/a.png", width=1, height=1, size_bytes=9, format=ImageFormat.PNG
    )
    stored = avatar.dump_result(result)
    assert stored["format"] == "PNG"
    assert avatar.load_result(stored) == result


def test_celery_checks_each_kinds_arguments(make_settings: Callable[..., Settings]) -> None:
    """Each task has its payload's fields as keyword-only parameters: Celery's own check
    refuses a missing, unknown or positional argument before anything runs."""
    app = create_worker_app(make_settings(), built_in_kinds())
    try:
        task = app.tasks[welcome_email.task_name]
        check = task.__header__  # type: ignore[attr-defined]
        check(**welcome_email.dump_payload(WelcomePayload("a@example.com", "A")))
        with pytest.raises(TypeError):
            check(recipient="a@example.com")
        with pytest.raises(TypeError):
            check(recipient="a@example.com", username="A", extra=1)
        with pytest.raises(TypeError):
            check("a@example.com", "A")
        assert app.tasks[avatar.task_name].kind is avatar  # type: ignore[attr-defined]
    finally:
        app.close()


# --- a body without Celery -------------------------------------------------------------------


def context(
    settings: Settings, job_id: str, area: FileArea | None, **overrides: Any
) -> TaskContext:
    values: dict[str, Any] = {
        "job_id": job_id,
        "owner": "alice",
        "attempt": 1,
        "settings": settings,
        "mailer": None,
        "redis": None,
        "storage": FilesystemStorage(settings.media_root),
        "files": JobFiles(FilesystemStorage(settings.media_root), area, job_id) if area else None,
        "checkpoint": None,
        "report_progress": lambda percent: None,
        "save_checkpoint": lambda value, percent: None,
        **overrides,
    }
    return TaskContext(**values)


def test_avatar_body_stops_at_the_checkpoint_after_a_cancellation(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(media_root=tmp_path)
    (settings.media_root / "incoming").mkdir(parents=True)
    job_id = new_job_id()
    (settings.media_root / "incoming" / f"{job_id}.upload").write_bytes(phone_photo())
    checks: list[int] = []

    def cancelled_after_decoding() -> None:
        checks.append(1)
        raise JobCancelled

    ctx = context(settings, job_id, avatar.files, check_cancelled=cancelled_after_decoding)

    with pytest.raises(JobCancelled):
        avatar.run(ctx, AvatarPayload(f"{job_id}.upload", 64, 80, ImageFormat.PNG))

    assert checks == [1]
    assert not (tmp_path / "avatars" / f"{job_id}.png").exists()
    # Kept, for retryJob: the job ends REVOKED, which may be retried.
    assert (settings.media_root / "incoming" / f"{job_id}.upload").exists()


def test_avatar_body_runs_as_a_plain_function(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(media_root=tmp_path)
    (settings.media_root / "incoming").mkdir(parents=True)
    job_id = new_job_id()
    (settings.media_root / "incoming" / f"{job_id}.upload").write_bytes(phone_photo())
    progress: list[int] = []
    ctx = context(settings, job_id, avatar.files, report_progress=progress.append)

    result = avatar.run(ctx, AvatarPayload(f"{job_id}.upload", 64, 80, ImageFormat.PNG))

    assert result.url == f"/media/avatars/{job_id}.png"
    assert (tmp_path / "avatars" / f"{job_id}.png").stat().st_size == result.size_bytes
    assert progress == [50, 70, 90]
    assert not (settings.media_root / "incoming" / f"{job_id}.upload").exists()


def test_avatar_body_says_what_a_lost_upload_means(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(media_root=tmp_path)
    ctx = context(settings, new_job_id(), avatar.files)
    with pytest.raises(JobFailed) as failed:
        avatar.run(ctx, AvatarPayload("gone.upload", 64, 80, ImageFormat.PNG))
    assert (failed.value.code, failed.value.retryable) == ("UPLOAD_LOST", True)


def test_welcome_body_does_not_send_again_what_an_earlier_delivery_sent(
    make_settings: Callable[..., Settings],
) -> None:
    """With a checkpoint the body needs no mailer at all (None here would fail if used)."""
    ctx = context(make_settings(), new_job_id(), None, checkpoint="<x@jobql>")
    result = welcome_email.run(ctx, WelcomePayload("a@example.com", "A"))
    assert (result.recipient, result.message_id) == ("a@example.com", "<x@jobql>")


# --- the web process and the worker agree ----------------------------------------------------


def kinds_of(*names: str) -> Kinds:
    return Kinds([types.SimpleNamespace(name=name) for name in names])  # type: ignore[misc]


def test_a_worker_lacking_a_kind_the_web_accepts_is_refused(client: redis.Redis) -> None:
    agree(client, "web", kinds_of("a", "b", "c"))
    with pytest.raises(KindsDisagree) as refused:
        agree(client, "worker", kinds_of("a", "b"))
    assert "c" in str(refused.value) and "JOBQL_KINDS" in str(refused.value)
    # A worker with every kind the web accepts (and one more) starts.
    agree(client, "worker", kinds_of("a", "b", "c", "d"))


def test_a_web_process_with_a_kind_the_workers_lack_is_refused(client: redis.Redis) -> None:
    agree(client, "worker", kinds_of("a"))
    with pytest.raises(KindsDisagree):
        agree(client, "web", kinds_of("a", "b"))
    assert client.get(KINDS_KEY.format(side="web")) is None  # a refused side notes nothing
    agree(client, "web", kinds_of("a"))
    assert client.get(KINDS_KEY.format(side="web")) == b'["a"]'


def test_the_first_side_to_start_has_nothing_to_check(client: redis.Redis) -> None:
    agree(client, "worker", kinds_of("a"))
    assert client.get(KINDS_KEY.format(side="worker")) == b'["a"]'


def test_a_redis_out_of_reach_leaves_the_check_to_the_next_start(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Each side waits for Redis as it always has; no refusal, a warning."""
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    check_agreement(settings, "web", kinds_of("a"))
    assert "Could not check the kinds of job" in caplog.text


# --- private files are swept with their job ----------------------------------------------------


def test_private_files_of_expired_jobs_are_swept(tmp_path: Path, client: redis.Redis) -> None:
    storage = FilesystemStorage(tmp_path)
    area = FileArea("exports", private=True)
    folder = tmp_path / "private" / "exports"
    expired, kept, young = new_job_id(), new_job_id(), new_job_id()
    client.hset(record_key(kept), "owner", "alice")
    for job_id in (expired, kept, young):
        JobFiles(storage, area, job_id).publish("jobs.csv", lambda file: file.writelines([b"id\n"]))
    old = time.time() - 3600
    for job_id in (expired, kept):
        os.utime(folder / job_id, (old, old))

    removed = sweep(storage, [area], 600, set, lambda ids: jobs_exist(client, ids))

    assert [(leftover.location, leftover.job_id) for leftover in removed] == [
        (str(folder / expired), expired)
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted([kept, young])


@pytest.mark.parametrize("command", [["schema"], ["worker"], ["web", "--port", "1"]])
def test_a_kind_module_that_cannot_be_loaded_stops_every_command(
    make_settings: Callable[..., Settings], command: list[str]
) -> None:
    env = settings_env(make_settings(kinds="examples.no_such_kind"))
    done = subprocess.run(
        [sys.executable, "-m", "jobql", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Cannot import the kind module 'examples.no_such_kind'" in done.stderr
    assert "Traceback" not in done.stderr
