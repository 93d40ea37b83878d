"""The `client` host of the multi-host test: a GraphQL client of two web hosts.

Run on that host (`python -m tests.netns_client CONFIG_JSON`). It tells the test how it is
going with one JSON object a line on stdout (`event` says which), and the test acts on
them (pulls a cable) while it goes on:

1. `followed`: 50 photos uploaded through web1 (half of them by a user whose every job a
   `jobs` subscription on web2 follows), each job's end, its avatar checked, and what the
   subscription saw.
2. `batch2`, then `batch2_done`: heavy photos through web2; the test takes worker1's link
   down while it holds one of them; each job's end.
3. `batch3_ready`, then (once the test answers with a line on stdin) `subscribed`, then
   `batch3_done`: heavy photos through web2, each followed by a `job` subscription on
   web1; the test takes web1's link down; the client sees the error, follows them again
   through web2 to their end. (The test holds the last worker still until web1 is cut off,
   so that no job can end before.)
4. `avatars`: the avatar objects in the bucket; then it waits for a line on stdin (or its
   end) before it ends, so that the test can look at the host's files meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from contextlib import suppress
from typing import Any, cast

import httpx
import obstore
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
from obstore.store import S3Store
from PIL import Image

from jobql.client import GRAPHQL_TRANSPORT_WS

UPLOAD = "mutation($f: Upload!) { uploadAvatar(file: $f, options: {size: 64}) { id state } }"
FEED = gql("subscription { jobs { id state progress } }")
FOLLOW = gql("subscription($id: ID!) { job(id: $id) { id state progress } }")
WAIT = (
    "query($id: ID!) { waitForJob(id: $id, timeoutSeconds: 60) "
    "{ id state attempts error { code } result { ... on AvatarResult { url width height } } } }"
)
FOLLOWED_USERS_JOBS = 25  # of the 50, those of the user whose jobs web2's feed follows
UPLOADS_AT_ONCE = 4  # jobql lets one user have 4 uploads open at once


def say(event: str, **values: Any) -> None:
    print(json.dumps({"event": event, **values}), flush=True)


def color_of(n: int) -> tuple[int, int, int]:
    """A distinct, saturated colour for photo `n`."""
    return ((n * 53) % 256, (n * 97 + 80) % 256, (n * 151 + 160) % 256)


def photo(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def heavy_photo() -> bytes:
    """Many pixels that compress to little: a second or so of work for a worker."""
    image = Image.linear_gradient("L").resize((7000, 7000))  # grey: 49 MB decoded
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def ws_client(web: str, token: str) -> Client:
    transport = WebsocketsTransport(
        url=web.replace("http://", "ws://") + "/graphql",
        init_payload={"Authorization": f"Bearer {token}"},
        subprotocols=[GRAPHQL_TRANSPORT_WS],
        # Pings both ways: a host that vanishes is noticed within seconds.
        ping_interval=1,
        pong_timeout=2,
    )
    return Client(transport=transport)


async def upload(http: httpx.AsyncClient, web: str, token: str, data: bytes) -> str:
    answer = await http.post(
        f"{web}/graphql",
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": json.dumps({"query": UPLOAD, "variables": {"f": None}}),
              "map": '{"0": ["variables.f"]}'},
        files={"0": ("photo", data, "application/octet-stream")},
    )  # fmt: skip
    body = answer.json()
    if "errors" in body:
        raise RuntimeError(f"upload refused: {body}")
    return str(body["data"]["uploadAvatar"]["id"])


async def wait_for(http: httpx.AsyncClient, web: str, token: str, job_id: str) -> dict[str, Any]:
    """The job once it is done (waitForJob, asked again while it is not)."""
    while True:
        answer = await http.post(
            f"{web}/graphql",
            headers={"Authorization": f"Bearer {token}"},
            json={"query": WAIT, "variables": {"id": job_id}},
            timeout=90,
        )
        job = answer.json()["data"]["waitForJob"]
        if job["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return dict(job)


async def avatar_check(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    answer = await http.get(url)
    if answer.status_code != 200:
        return {"status": answer.status_code}
    image = Image.open(io.BytesIO(answer.content)).convert("RGB")
    center = cast("tuple[int, int, int]", image.getpixel((32, 32)))
    return {"status": 200, "size": list(image.size), "center": list(center)}


async def followed_batch(config: dict[str, Any], http: httpx.AsyncClient) -> None:
    web1, web2 = config["web1"], config["web2"]
    follower, other = config["tokens"]["followed"], config["tokens"]["other"]
    seen: dict[str, list[str]] = {}
    feed_ready = asyncio.Event()

    async def feed() -> None:
        async with ws_client(web2, follower) as session:
            async for result in session.subscribe(FEED):
                job = result["jobs"]
                seen.setdefault(job["id"], []).append(job["state"])
                feed_ready.set()

    feeding = asyncio.create_task(feed())
    # The feed is listening once it has seen a job made after it opened (not one of the 50).
    probes = []
    while not feed_ready.is_set():
        probes.append(await upload(http, web2, follower, photo((0, 0, 0))))
        with suppress(TimeoutError):
            await asyncio.wait_for(feed_ready.wait(), 2)
    seen.clear()

    started = time.monotonic()
    limit = asyncio.Semaphore(UPLOADS_AT_ONCE)

    async def one(n: int) -> tuple[int, str, str]:
        token = follower if n < FOLLOWED_USERS_JOBS else other
        async with limit:
            return n, token, await upload(http, web1, token, photo(color_of(n)))

    accepted = await asyncio.gather(*(one(n) for n in range(50)))
    ends = await asyncio.gather(*(wait_for(http, web2, t, job_id) for _, t, job_id in accepted))
    seconds = time.monotonic() - started
    await asyncio.sleep(1)  # the feed's last events
    feeding.cancel()
    with suppress(asyncio.CancelledError):
        await feeding
    jobs = []
    for (n, token, job_id), end in zip(accepted, ends, strict=True):
        result = end["result"] or {}
        jobs.append(
            {
                "id": job_id,
                "followed": token == follower,
                "color": list(color_of(n)),
                "state": end["state"],
                "avatar": await avatar_check(http, result["url"]) if result else None,
                "feed": seen.get(job_id, []),
            }
        )
    say("followed", jobs=jobs, probes=probes, seconds=seconds)


async def worker_cut_off(config: dict[str, Any], http: httpx.AsyncClient, heavy: bytes) -> None:
    web2, token = config["web2"], config["tokens"]["other"]
    started = time.monotonic()
    ids = [await upload(http, web2, token, heavy) for _ in range(config["batch2"])]
    say("batch2", ids=ids)
    ends = await asyncio.gather(*(wait_for(http, web2, token, job_id) for job_id in ids))
    say("batch2_done", jobs=ends, seconds=time.monotonic() - started)


async def web_cut_off(config: dict[str, Any], http: httpx.AsyncClient, heavy: bytes) -> None:
    web1, web2, token = config["web1"], config["web2"], config["tokens"]["third"]
    say("batch3_ready")
    await asyncio.to_thread(sys.stdin.readline)  # the test is ready to cut web1 off
    started = time.monotonic()
    ids = [await upload(http, web2, token, heavy) for _ in range(config["batch3"])]
    before: dict[str, list[str]] = {job_id: [] for job_id in ids}
    errors: dict[str, str] = {}
    subscribed = asyncio.Event()

    async def on_web1(session: Any, job_id: str) -> None:
        try:
            async for result in session.subscribe(FOLLOW, variable_values={"id": job_id}):
                before[job_id].append(result["job"]["state"])
                if all(before.values()):  # every job has said how it is: all are followed
                    subscribed.set()
        except Exception as exc:  # what the client sees when web1 vanishes
            errors[job_id] = type(exc).__name__

    client = ws_client(web1, token)
    try:
        session = await client.connect_async()  # type: ignore[no-untyped-call]
        following = [asyncio.create_task(on_web1(session, job_id)) for job_id in ids]
        await asyncio.wait_for(subscribed.wait(), 30)
        say("subscribed", ids=ids)
        await asyncio.wait_for(asyncio.gather(*following), 60)
    finally:
        with suppress(Exception):
            await asyncio.wait_for(client.close_async(), 5)  # type: ignore[no-untyped-call]

    async def on_web2(job_id: str) -> list[str]:
        async with ws_client(web2, token) as again:
            states = []
            async for result in again.subscribe(FOLLOW, variable_values={"id": job_id}):
                states.append(result["job"]["state"])
            return states

    after = await asyncio.gather(*(on_web2(job_id) for job_id in ids))
    say(
        "batch3_done",
        jobs=[
            {"id": job_id, "on_web1": before[job_id], "error": errors.get(job_id),
             "on_web2": states}
            for job_id, states in zip(ids, after, strict=True)
        ],
        seconds=time.monotonic() - started,
    )  # fmt: skip


async def main(config: dict[str, Any]) -> None:
    heavy = heavy_photo()
    async with httpx.AsyncClient(timeout=60) as http:
        await followed_batch(config, http)
        await worker_cut_off(config, http, heavy)
        await web_cut_off(config, http, heavy)
    # Credentials from the standard AWS variables, as jobql's own processes take them.
    store = S3Store(
        config["bucket"],
        config={"endpoint": config["s3_endpoint_url"], "region": config["s3_region"]},
        client_options={"allow_http": True},
    )
    keys = [meta["path"] for batch in obstore.list(store, prefix="avatars/") for meta in batch]
    say("avatars", keys=keys)
    await asyncio.to_thread(sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
