"""Soak: 2,000 mixed jobs while workers are killed at random; nothing may be lost.

The figures of the run are printed and written into RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import random
import re
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from jobql.auth import SCOPE_SEND_EMAIL
from jobql.jobs import TERMINAL_STATES, load_meta, meta_key, record_key
from tests.conftest import token

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support import Stack

pytestmark = pytest.mark.slow

JOBS = 2000
AVATAR_SHARE = 0.3
KILLS = 3
SUBMITTERS = 16
DEADLINE = 240  # seconds for every job to end
RELIABILITY = Path(__file__).resolve().parents[1] / "RELIABILITY.md"
SEND = 'mutation($e: String!) { sendWelcomeEmail(email: $e, username: "Soak") { id } }'
UPLOAD = "mutation($f: Upload!) { uploadAvatar(file: $f, options: {size: 64}) { id } }"


def small_photo(seed: int) -> bytes:
    image = Image.new("RGB", (160, 120), (seed % 256, 80, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if seed % 2 else "PNG")
    return buffer.getvalue()


async def submit(client: httpx.AsyncClient, url: str, n: int) -> str | None:
    """Queue job number `n`; its id, or None if the service did not accept it."""
    if n % round(1 / AVATAR_SHARE) == 0:
        operations = json.dumps({"query": UPLOAD, "variables": {"f": None}})
        response = await client.post(
            url,
            data={"operations": operations, "map": json.dumps({"0": ["variables.f"]})},
            files={"0": (f"p{n}.jpg", small_photo(n), "image/jpeg")},
        )
        field = "uploadAvatar"
    else:
        address = f"soak-{n}-{uuid.uuid4().hex[:6]}@example.com"
        response = await client.post(url, json={"query": SEND, "variables": {"e": address}})
        field = "sendWelcomeEmail"
    body = response.json()
    if body.get("errors"):
        return None
    return str(body["data"][field]["id"])


async def redeliveries(redis: Redis, job_ids: list[str]) -> tuple[int, int]:
    """How many jobs ran more than once, and how many recovery queued again."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(record_key(job_id), "deliveries:0", "requeued")
        rows = await pipe.execute()
    again = sum(1 for deliveries, _ in rows if int(deliveries or 0) > 1)
    return again, sum(int(requeued or 0) for _, requeued in rows)


async def states(redis: Redis, job_ids: list[str]) -> dict[str, str]:
    raw = await redis.mget([meta_key(job_id) for job_id in job_ids])
    return {
        job_id: (meta["status"] if (meta := load_meta(value)) else "PENDING")
        for job_id, value in zip(job_ids, raw, strict=True)
    }


async def kill_workers_at_random(stack: Stack, until: float, kills: list[float]) -> None:
    started = time.monotonic()
    moments = sorted(random.uniform(1, until) for _ in range(KILLS))
    for moment in moments:
        await asyncio.sleep(max(0, started + moment - time.monotonic()))
        victim = random.choice([w for w in stack.workers if w.popen.poll() is None])
        os.killpg(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait()
        kills.append(time.monotonic() - started)
        await asyncio.to_thread(stack.add_worker, 2)


async def test_soak_nothing_lost_under_worker_kills(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        visibility_timeout=6,
        task_time_limit=5,
        sweep_min_age=5,
        rate_limit_per_minute=0,
        max_uploads_per_user=SUBMITTERS,  # one backend user, uploading on every submitter
        mail_timeout=2.0,
        mail_retry_backoff=0.5,
        recover_after=4,
    )
    stack.add_worker(2)
    stack.add_worker(2)
    web = stack.start_web()
    started = time.monotonic()
    kills: list[float] = []
    killer = asyncio.create_task(kill_workers_at_random(stack, 12, kills))

    headers = {"Authorization": f"Bearer {token('soak', SCOPE_SEND_EMAIL)}"}
    limits = httpx.Limits(max_connections=SUBMITTERS)
    gate = asyncio.Semaphore(SUBMITTERS)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def one(n: int) -> str | None:
            async with gate:
                return await submit(client, web.http_url, n)

        submitted = await asyncio.gather(*(one(n) for n in range(JOBS)))
    accepted = [job_id for job_id in submitted if job_id]

    redis = Redis.from_url(stack.settings.redis_url)
    try:
        while True:
            current = await states(redis, accepted)
            unfinished = [j for j, state in current.items() if state not in TERMINAL_STATES]
            if not unfinished or time.monotonic() - started > DEADLINE:
                break
            await asyncio.sleep(1)
        ran_again, requeued = await redeliveries(redis, accepted)
    finally:
        await redis.aclose()
    await killer
    elapsed = time.monotonic() - started

    by_state = Counter(current.values())
    message_ids = Counter(m["Message-ID"] for m in stack.smtp.handler.messages)
    duplicates = sum(count - 1 for count in message_ids.values() if count > 1)
    incoming_left = len(list((stack.settings.media_root / "incoming").iterdir()))
    temp_left = len(list((stack.settings.media_root / "avatars").glob(".*.tmp")))
    figures = {
        "jobs submitted": JOBS,
        "jobs accepted": len(accepted),
        "jobs finished": sum(by_state[state] for state in TERMINAL_STATES),
        "by state": dict(sorted(by_state.items())),
        "workers killed (s after start)": [round(k, 1) for k in kills],
        "jobs run more than once (redelivered)": ran_again,
        "jobs queued again by recovery": requeued,
        "emails delivered": sum(message_ids.values()),
        "duplicate emails": duplicates,
        "incoming files left": incoming_left,
        "half-written avatars left": temp_left,
        "seconds": round(elapsed, 1),
    }
    print("\nsoak:", json.dumps(figures))
    record(figures)

    assert len(accepted) == JOBS
    assert unfinished == [], f"{len(unfinished)} jobs never ended: {unfinished[:5]}"
    assert by_state["SUCCESS"] == JOBS, by_state
    assert len(kills) == KILLS
    assert incoming_left == 0
    assert temp_left == 0


def record(figures: dict[str, Any]) -> None:
    """Replace the figures block of RELIABILITY.md with this run's."""
    rows = "\n".join(f"| {name} | {value} |" for name, value in figures.items())
    block = (
        f"<!-- soak:begin -->\nLast run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n<!-- soak:end -->"
    )
    text = RELIABILITY.read_text()
    RELIABILITY.write_text(
        re.sub(r"<!-- soak:begin -->.*<!-- soak:end -->", block, text, flags=re.S)
    )
