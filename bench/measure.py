"""Each benchmark: jobql and the reference measured in the same run, on the same machine."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from celery import Celery
from PIL import Image
from pydantic import SecretStr
from redis import Redis

from bench.harness import ROOT, SECRET_KEY, Bench
from bench.reference.tasks import thumbnail
from jobql.auth import ALL_SCOPES, issue_token
from jobql.connections import create_redis
from jobql.images import ImageFormat, make_avatar
from jobql.jobs import meta_key
from jobql.settings import Settings
from jobql.storage import create_storage, write_atomically
from jobql.store import JobStore

if TYPE_CHECKING:
    from collections.abc import Callable

TOKEN = issue_token(SECRET_KEY, "bench", ALL_SCOPES)
WRK_DIR = Path(__file__).parent / "wrk"


@dataclass(frozen=True)
class Size:
    """How big a run is: `full` for `make bench`, `smoke` for the test suite."""

    wrk_seconds: int
    wrk_connections: int
    uploads: int
    subscriptions: tuple[int, ...]
    samples: int
    processing_runs: int
    emails: int
    avatars: int
    big: bool
    rounds: int  # runs a side of enqueue and completion, taking turns with the other side's
    backlog: int  # jobs queued for the depth part
    stall_seconds: int  # how long the depth part watches Redis with a worker's timers running
    listed_jobs: int  # the jobs of the user whose `jobs` pages are timed


FULL = Size(10, 32, 15, (1000, 10000), 300, 15, 2000, 300, True, 3, 1_000_000, 30, 10_000)
SMOKE = Size(1, 4, 2, (20,), 10, 1, 10, 4, False, 1, 2_000, 3, 200)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def flush(bench: Bench) -> None:
    with Redis.from_url(bench.redis.url) as client:
        client.flushdb()


# 1. Enqueue throughput and latency


def wrk(
    url: str,
    script: str,
    size: Size,
    token: str = TOKEN,
    connections: int | None = None,
    **env_vars: str,
) -> dict[str, Any]:
    connections = connections or size.wrk_connections
    command = [
        "wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{size.wrk_seconds}s",
        "--latency", "-s", str(WRK_DIR / script), url,
    ]  # fmt: skip
    env = {**os.environ, "WRK_DIR": str(WRK_DIR), "TOKEN": token, **env_vars}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


def enqueue(bench: Bench, size: Size) -> dict[str, Any]:
    """Both servers up, wrk runs taking turns, and each side's median over its runs: a
    passing disturbance of the machine then lands on one run, not on one side."""
    ours, our_url = bench.jobql_web()
    theirs, their_url = bench.reference_web()
    runs: dict[str, list[dict[str, Any]]] = {"jobql": [], "reference": []}
    for _ in range(size.rounds):
        runs["jobql"].append(wrk(our_url, "jobql.lua", size))
        flush(bench)
        runs["reference"].append(wrk(their_url, "reference.lua", size))
        flush(bench)
    ours.stop()
    theirs.stop()
    return {side: _median_run(side_runs) for side, side_runs in runs.items()}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over `runs`; errors add up. All runs are kept too."""
    figures: dict[str, Any] = {
        name: statistics.median(run[name] for run in runs)
        for name in ("rps", "p50_ms", "p90_ms", "p99_ms")
    }
    for name in ("requests", "errors", "socket_errors"):
        figures[name] = sum(run[name] for run in runs)
    figures["runs"] = runs
    return figures


# 2. Upload acknowledgement


def noise_png(megabytes: int) -> bytes:
    """A PNG of about `megabytes` MB: random pixels do not compress."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), random.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def photo_jpeg(width: int, height: int) -> bytes:
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(base, noise, 0.3).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def time_uploads(post: Callable[[], Any], count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = await post()
        timings.append(time.perf_counter() - started)
        body = response.json()
        if response.status_code >= 300 or "errors" in body:
            raise RuntimeError(f"an upload failed: {body}")
    return timings


async def upload_ack(bench: Bench, size: Size) -> dict[str, Any]:
    files = {
        "png_17mb": noise_png(17 if size.big else 1),
        "jpeg_12mp": photo_jpeg(4000, 3000) if size.big else photo_jpeg(400, 300),
    }
    operations = json.dumps(
        {
            "query": "mutation($f: Upload!) { uploadAvatar(file: $f) { id } }",
            "variables": {"f": None},
        }
    )
    results: dict[str, Any] = {}
    ours, our_url = bench.jobql_web()
    on_s3, s3_url = bench.jobql_web(s3=True)
    theirs, their_url = bench.reference_web()
    async with httpx.AsyncClient(timeout=120) as client:
        for name, data in files.items():

            def to_ours(data: bytes = data, url: str = our_url) -> Any:
                return client.post(
                    f"{url}/graphql",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    data={"operations": operations, "map": '{"0": ["variables.f"]}'},
                    files={"0": ("photo", data, "application/octet-stream")},
                )

            def to_theirs(data: bytes = data) -> Any:
                return client.post(
                    f"{their_url}/api/avatar",
                    files={"file": ("photo", data, "application/octet-stream")},
                )

            # One upload each in turn, so that both sides meet the same moments of the machine.
            jobql_times: list[float] = []
            s3_times: list[float] = []
            reference_times: list[float] = []
            for _ in range(size.uploads):
                jobql_times += await time_uploads(to_ours, 1)
                s3_times += await time_uploads(partial(to_ours, url=s3_url), 1)
                reference_times += await time_uploads(to_theirs, 1)
            results[name] = {
                "bytes": len(data),
                "jobql": _summary(jobql_times),
                "jobql_s3": _summary(s3_times),
                "reference": _summary(reference_times),
            }
    ours.stop()
    on_s3.stop()
    theirs.stop()
    flush(bench)
    return results


def _summary(seconds: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(seconds) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
    }


# 3 and 4. Status freshness and subscription scale


def backend(bench: Bench) -> Any:
    """Celery's Redis result backend, as a worker uses it to store a state."""
    app = Celery("bench", broker=bench.redis.url, backend=bench.redis.url)
    app.conf.update(result_extended=True, result_serializer="json")
    return app.backend


async def make_jobs(bench: Bench, count: int) -> list[str]:
    settings = Settings(redis_url=bench.redis.url, secret_key=SecretStr(SECRET_KEY))
    redis = create_redis(settings)
    store = JobStore(redis, result_expires=3600, queue="bench-nobody-consumes")
    jobs = [await store.enqueue("avatar", "bench", {}) for _ in range(count)]
    await redis.aclose()
    return [job.id for job in jobs]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def web_pids(process: Any) -> list[int]:
    """The uvicorn process and its children."""
    children = Path(f"/proc/{process.popen.pid}/task/{process.popen.pid}/children")
    return [process.popen.pid, *map(int, children.read_text().split())]


def commands_processed(client: Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def start_clients(mode: str, url: str, job_ids: list[str], workdir: Path) -> subprocess.Popen[str]:
    ids = workdir / f"{mode}-ids.txt"
    ids.write_text("\n".join(job_ids))
    command = [sys.executable, "-m", "bench.clients", mode, url, str(ids), "--token", TOKEN]
    clients = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert clients.stdout is not None
    line = clients.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"the {mode} clients did not start: {line!r}")
    return clients


def write_states(bench: Bench, job_ids: list[str], samples: int) -> dict[str, float]:
    """Store a new PROGRESS for sampled jobs, one at a time, as a worker would."""
    store = backend(bench)
    written = {}
    for n in range(samples):
        job_id = job_ids[(n * 7919) % len(job_ids)]
        progress = n % 100 + 1
        written[f"{job_id} {progress}"] = time.time()
        store.store_result(job_id, {"progress": progress, "attempt": 1}, "PROGRESS")
        time.sleep(0.02)
    return written


def latencies(output: str, written: dict[str, float]) -> list[float]:
    seen: dict[str, float] = {}
    for line in output.splitlines():
        job_id, progress, at = line.split()
        key = f"{job_id} {progress}"
        if key in written and key not in seen:
            seen[key] = float(at) - written[key]
    if len(seen) < len(written):
        raise RuntimeError(f"only {len(seen)} of {len(written)} state changes arrived")
    return list(seen.values())


async def freshness_and_scale(bench: Bench, size: Size) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with Redis.from_url(bench.redis.url) as client:
        for count in size.subscriptions:
            job_ids = await make_jobs(bench, count)
            process, url = bench.jobql_web(workers=1)
            pid = process.popen.pid
            before = rss_kib(pid)
            clients = start_clients(
                "subscribe", url.replace("http", "ws") + "/graphql", job_ids, bench.workdir
            )
            after = rss_kib(pid)
            connections = [c for c in client.client_list() if c.get("name", "").startswith("jobql")]
            idle_before = commands_processed(client)
            time.sleep(5)
            idle_commands = commands_processed(client) - idle_before - 1
            written = write_states(bench, job_ids, size.samples)
            time.sleep(1)
            output, _ = clients.communicate("", timeout=120)
            seconds = latencies(output, written)
            process.stop()
            results[str(count)] = {
                "p50_ms": statistics.median(seconds) * 1000,
                "p99_ms": percentile(seconds, 99) * 1000,
                "memory_per_subscription_kib": (after - before) / count,
                "redis_connections": len(connections),
                "idle_commands_per_second": idle_commands / 5,
            }
            flush(bench)
        job_ids = await make_jobs(bench, min(size.subscriptions[0], 100))
        process, url = bench.reference_web()
        clients = start_clients("poll", url, job_ids, bench.workdir)
        written = write_states(bench, job_ids, min(size.samples, 100))
        time.sleep(1)
        output, _ = clients.communicate("", timeout=120)
        seconds = latencies(output, written)
        process.stop()
        results["reference"] = {
            "pollers": len(job_ids),
            "p50_ms": statistics.median(seconds) * 1000,
            "p99_ms": percentile(seconds, 99) * 1000,
        }
        flush(bench)
    return results


# 5. Avatar processing


def processing(bench: Bench, size: Size) -> dict[str, Any]:
    inputs = {
        "jpeg_12mp": photo_jpeg(4000, 3000) if size.big else photo_jpeg(400, 300),
        "png_17mb": noise_png(17 if size.big else 1),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        our_avatar = directory / "ours.jpg"
        for name, data in inputs.items():
            source = directory / name
            source.write_bytes(data)
            ours, theirs = [], []
            for _ in range(size.processing_runs):
                started = time.perf_counter()
                make_avatar(
                    source,
                    lambda write: write_atomically(our_avatar, write),
                    256,
                    85,
                    ImageFormat.JPEG,
                    10**9,
                    10**10,
                )
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                thumbnail(source, directory / "theirs.jpg")
                theirs.append(time.perf_counter() - started)
            results[name] = {
                "jobql_ms": statistics.median(ours) * 1000,
                "reference_ms": statistics.median(theirs) * 1000,
            }
    return results


# 6. Jobs to completion


async def completion(bench: Bench, size: Size) -> dict[str, Any]:
    """Fill the queue, then start one worker of concurrency 2 and time how fast it empties it;
    each side's median over `size.rounds` runs."""
    from bench.reference.tasks import app as reference_app
    from bench.reference.tasks import process_avatar, send_welcome_email

    # This process queues the reference's tasks too: onto this run's private Redis.
    reference_app.conf.update(broker_url=bench.redis.url, result_backend=bench.redis.url)
    photo = photo_jpeg(1600, 1200)
    settings = Settings(
        redis_url=bench.redis.url,
        secret_key=SecretStr(SECRET_KEY),
        media_root=bench.media / "jobql",
    )
    (settings.media_root / "incoming").mkdir(parents=True, exist_ok=True)
    reference_incoming = bench.media / "reference" / "incoming"
    reference_incoming.mkdir(parents=True, exist_ok=True)
    redis = create_redis(settings)
    store = JobStore(redis, result_expires=3600)

    async def ours_emails() -> list[str]:
        jobs = [
            await store.enqueue(
                "welcome_email", "bench", {"recipient": f"c{n}@example.com", "username": "C"}
            )
            for n in range(size.emails)
        ]
        return [job.id for job in jobs]

    async def ours_avatars() -> list[str]:
        ids = []
        for n in range(size.avatars):
            (settings.media_root / "incoming" / f"a{n}.upload").write_bytes(photo)
            job = await store.enqueue(
                "avatar",
                "bench",
                {
                    "incoming_name": f"a{n}.upload",
                    "size": 256,
                    "quality": 85,
                    "image_format": "JPEG",
                },
            )
            ids.append(job.id)
        return ids

    s3_env = bench.s3_env()
    # This process writes the photos into the bucket, as the web process would.
    os.environ.update({name: value for name, value in s3_env.items() if name.startswith("AWS_")})
    s3_storage = create_storage(
        settings.model_copy(
            update={
                "storage": "s3",
                "s3_bucket": s3_env["JOBQL_S3_BUCKET"],
                "s3_endpoint_url": s3_env["JOBQL_S3_ENDPOINT_URL"],
                "s3_region": s3_env["JOBQL_S3_REGION"],
            }
        )
    )

    async def ours_avatars_on_s3() -> list[str]:
        ids = []
        for _ in range(size.avatars):
            upload = s3_storage.new_upload()
            await upload.write(photo)
            await upload.finish()
            payload = {"incoming_name": upload.name, "size": 256, "quality": 85}
            job = await store.enqueue("avatar", "bench", {**payload, "image_format": "JPEG"})
            ids.append(job.id)
        return ids

    async def theirs_emails() -> list[str]:
        return [send_welcome_email.delay(f"r{n}@example.com", "R").id for n in range(size.emails)]

    async def theirs_avatars() -> list[str]:
        ids = []
        for n in range(size.avatars):
            path = reference_incoming / f"a{n}.upload"
            path.write_bytes(photo)
            ids.append(process_avatar.delay(str(path)).id)
        return ids

    runs: dict[str, list[dict[str, float]]] = {"jobql": [], "reference": []}
    for _ in range(size.rounds):
        # Taking turns, so that a passing disturbance of the machine lands on one run.
        ours = await _drain(bench, bench.jobql_worker, await ours_emails())
        theirs = await _drain(bench, bench.reference_worker, await theirs_emails())
        runs["jobql"].append({"emails_per_second": ours})
        runs["reference"].append({"emails_per_second": theirs})
        ours = await _drain(bench, bench.jobql_worker, await ours_avatars())
        theirs = await _drain(bench, bench.reference_worker, await theirs_avatars())
        runs["jobql"][-1]["avatars_per_second"] = ours
        runs["reference"][-1]["avatars_per_second"] = theirs
        on_s3 = await _drain(
            bench, partial(bench.jobql_worker, s3=True), await ours_avatars_on_s3()
        )
        runs["jobql"][-1]["avatars_s3_per_second"] = on_s3
    await redis.aclose()
    return {
        side: {
            **{name: statistics.median(run[name] for run in side_runs) for name in side_runs[0]},
            "runs": side_runs,
        }
        for side, side_runs in runs.items()
    }


async def _drain(bench: Bench, start_worker: Callable[[], Any], job_ids: list[str]) -> float:
    """Jobs per second from a worker's start until every job succeeded."""
    worker = start_worker()
    started = time.perf_counter()
    with Redis.from_url(bench.redis.url) as client:
        waiting = job_ids
        while waiting := _not_succeeded(client, waiting):
            await asyncio.sleep(0.02)
            if time.perf_counter() - started > 600:
                raise RuntimeError("the worker did not finish in 10 minutes")
        elapsed = time.perf_counter() - started
        client.delete(*(meta_key(job_id) for job_id in job_ids))
    worker.stop()
    return len(job_ids) / elapsed


def _not_succeeded(client: Redis, job_ids: list[str]) -> list[str]:
    """The jobs still to finish (asking only for those keeps the polling light)."""
    metas = client.mget([meta_key(job_id) for job_id in job_ids])
    return [
        job_id
        for job_id, meta in zip(job_ids, metas, strict=True)
        if meta is None or b'"SUCCESS"' not in meta
    ]
