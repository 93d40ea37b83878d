"""A kind of job from outside jobql (`examples/export_jobs.py`), loaded through JOBQL_KINDS:
queued over HTTP, run by a real worker, followed over the subscription, and its private file
downloaded by its owner only."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
from gql import gql

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.client import with_job_fields
from jobql.registry import KINDS_KEY, load_kinds
from tests.conftest import token
from tests.graphql_clients import execute, http_client, ws_client
from tests.support import ROOT, SEND_WELCOME, settings_env, start_web, start_worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobql.registry import Kinds
    from jobql.settings import Settings
    from tests.support import Stack, WebServer

EXAMPLE = "examples.export_jobs"
EXPORT_JOBS = "mutation { exportJobs { ...JobFields } }"
FOLLOW = "subscription Follow($id: ID!) { job(id: $id) { ...JobFields } }"


S3_SETTINGS = ("storage", "s3_bucket", "s3_endpoint_url", "s3_region", "s3_prefix")


@pytest.fixture(params=["filesystem", "s3"])
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """The example kind's files kept on the filesystem, and in S3 (served by jobql from the
    bucket to their owner alone)."""
    media: dict[str, object] = {}
    if request.param == "s3":
        s3 = request.getfixturevalue("make_s3_settings")(f"export-{uuid.uuid4().hex[:8]}")
        media = {name: getattr(s3, name) for name in S3_SETTINGS}
    stack = make_stack(kinds=EXAMPLE, **media)
    stack.add_worker(concurrency=2)
    stack.start_web()
    return stack


@pytest.fixture
def kinds(stack: Stack) -> Kinds:
    return load_kinds(stack.settings)


async def send_welcome(web: WebServer, user: str) -> str:
    address = f"export-{uuid.uuid4().hex[:8]}@example.com"
    client = http_client(web, token(user, SCOPE_SEND_EMAIL))
    result = await execute(client, SEND_WELCOME, email=address, username="Ex")
    return str(result["sendWelcomeEmail"]["id"])


async def follow_to_the_end(
    web: WebServer, user: str, job_id: str, kinds: Kinds, seen: list[Any] | None = None
) -> list[Any]:
    request = gql(with_job_fields(FOLLOW, kinds))
    request.variable_values = {"id": job_id}
    seen = [] if seen is None else seen
    async with ws_client(web, token(user)) as session:
        async for result in session.subscribe(request):
            seen.append(result["job"])
    return seen


async def test_export_runs_end_to_end_and_only_its_owner_can_download_it(
    stack: Stack, kinds: Kinds
) -> None:
    web = stack.web
    assert web is not None
    owner, stranger = f"exporter-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    earlier = [await send_welcome(web, owner) for _ in range(3)]
    others = await send_welcome(web, stranger)
    for job_id in earlier:
        assert (await follow_to_the_end(web, owner, job_id, kinds))[-1]["state"] == "SUCCESS"
    # No worker while the subscription starts: it sees the job from PENDING on.
    await asyncio.to_thread(stack.workers[0].stop)

    queued = await execute(http_client(web, token(owner)), with_job_fields(EXPORT_JOBS, kinds))
    job = queued["exportJobs"]
    assert (job["kind"], job["state"]) == ("EXPORT_JOBS", "PENDING")
    seen: list[Any] = []
    following = asyncio.create_task(follow_to_the_end(web, owner, job["id"], kinds, seen))
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.05)
    await asyncio.to_thread(stack.add_worker)
    async with asyncio.timeout(30):
        await following
    states = [event["state"] for event in seen]
    assert states[0] == "PENDING"
    assert states[-1] == "SUCCESS", seen
    assert "PROGRESS" in states, states
    result = seen[-1]["result"]
    assert result["__typename"] == "FileResult"
    assert result["contentType"] == "text/csv"
    assert result["url"] == f"/files/exports/{job['id']}/jobs.csv"

    mine = httpx.get(web.url(result["url"]), headers={"Authorization": f"Bearer {token(owner)}"})
    assert mine.status_code == 200
    assert mine.headers["content-type"].startswith("text/csv")
    assert len(mine.content) == result["sizeBytes"]
    rows = list(csv.DictReader(io.StringIO(mine.text)))
    assert len(rows) == result["rows"]
    by_id = {row["id"]: row for row in rows}
    # The caller's jobs, and no one else's: the emails, and the export itself (running).
    assert set(by_id) == {*earlier, job["id"]}
    assert others not in by_id
    assert {by_id[i]["kind"] for i in earlier} == {"welcome_email"}
    assert {by_id[i]["state"] for i in earlier} == {"SUCCESS"}
    assert by_id[job["id"]]["state"] == "STARTED"
    assert by_id[job["id"]]["finished_at"] == ""
    for row in rows:
        assert datetime.fromisoformat(row["created_at"]).tzinfo is not None
    for job_id in earlier:
        finished = datetime.fromisoformat(by_id[job_id]["finished_at"])
        assert finished >= datetime.fromisoformat(by_id[job_id]["created_at"])
    assert list(rows[0]) == ["id", "kind", "state", "created_at", "finished_at"]

    theirs = httpx.get(
        web.url(result["url"]), headers={"Authorization": f"Bearer {token(stranger)}"}
    )
    anonymous = httpx.get(web.url(result["url"]))
    guessed = httpx.get(
        web.url(f"/files/exports/{others}/jobs.csv"),
        headers={"Authorization": f"Bearer {token(stranger)}"},
    )
    assert (theirs.status_code, anonymous.status_code, guessed.status_code) == (404, 404, 404)
    assert theirs.content == anonymous.content  # nothing tells a stranger the file exists
    assert httpx.get(web.url(f"/media/exports/{job['id']}/jobs.csv")).status_code == 404
    # Even its owner gets nothing but the file itself at its own URL.
    owners = {"Authorization": f"Bearer {token(owner)}"}
    for path in [
        f"/files/exports/{job['id']}/..",
        f"/files/exports/{job['id']}/%2e%2e%2f%2e%2e%2fincoming",
        f"/files/exports/..%2f{job['id']}/jobs.csv",
        f"/files/exports/{job['id'].upper()}/jobs.csv",
        f"/files/avatars/{job['id']}/jobs.csv",
        f"/files/private/{job['id']}/jobs.csv",
    ]:
        assert httpx.get(web.url(path), headers=owners).status_code == 404, path


def test_the_schema_gains_only_what_the_example_adds(stack: Stack) -> None:
    env = settings_env(stack.settings)
    printed = subprocess.run(
        [sys.executable, "-m", "jobql", "schema"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # With the argument every kind's mutation gets: callbackUrl.
    assert "  exportJobs(\n    format: ExportFormat = CSV\n" in printed
    assert "    callbackUrl: String = null\n  ): Job!" in printed
    assert "union JobResult = AvatarResult | EmailResult | FileResult" in printed
    assert "type FileResult {\n  url: String!\n  sizeBytes: Int!\n  contentType: String!\n" in (
        printed
    )
    builtin = (ROOT / "schema.graphql").read_text()
    assert "exportJobs" not in builtin
    # Every line of the built-in schema is still there, but the union's, which grew.
    assert set(builtin.splitlines()) - set(printed.splitlines()) == {
        "union JobResult = AvatarResult | EmailResult"
    }


def test_a_worker_without_a_kind_the_web_accepts_refuses_to_start(
    stack: Stack, make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    """The web process runs the example kind; a worker started without it stops at once,
    saying why."""
    built_in_only = stack.settings.model_copy(update={"kinds": ""})
    with pytest.raises(RuntimeError) as refused:
        start_worker(built_in_only, tmp_path / "worker.log")
    assert "export_jobs" in str(refused.value)
    assert "JOBQL_KINDS" in str(refused.value)


def test_a_web_process_with_a_kind_the_workers_lack_refuses_to_start(
    make_stack: Callable[..., Stack], tmp_path: Any
) -> None:
    stack = make_stack()
    stack.add_worker()  # built-in kinds only
    with_example = stack.settings.model_copy(update={"kinds": EXAMPLE})
    done = subprocess.run(
        [sys.executable, "-m", "jobql", "web", "--port", "1"],
        env=settings_env(with_example),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "export_jobs" in done.stderr and "JOBQL_KINDS" in done.stderr
    assert "Traceback" not in done.stderr
    # The workers' list is what was checked against.
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        assert json.loads(client.get(KINDS_KEY.format(side="worker")) or "null") == [
            "avatar",
            "welcome_email",
        ]
    finally:
        client.close()
    with pytest.raises(RuntimeError):
        start_web(with_example, tmp_path / "web.log")


def test_the_terminal_client_runs_the_kinds_own_command(stack: Stack) -> None:
    """`jobql export-jobs`, a command the example kind brings, queues and follows its job
    and prints the file's URL, which works with the same token."""
    web = stack.web
    assert web is not None
    user = f"cli-{uuid.uuid4().hex[:6]}"
    env = settings_env(stack.settings)
    env.pop("JOBQL_SECRET_KEY")  # a client needs only the kinds, not the server's secrets
    command = ["export-jobs", "--wait", "--url", web.http_url, "--token", token(user)]
    done = subprocess.run(
        [sys.executable, "-m", "jobql", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    found = re.search(r"^file: (\S+) \(with your token\)$", done.stdout, re.MULTILINE)
    assert found, done.stdout
    assert "1 jobs" in done.stdout  # the export itself
    got = httpx.get(found[1], headers={"Authorization": f"Bearer {token(user)}"})
    assert got.status_code == 200
    assert got.text.splitlines()[0] == "id,kind,state,created_at,finished_at"
