"""Load clients, run as a separate process: `python -m bench.clients subscribe|poll ...`.

`subscribe` holds one graphql-transport-ws subscription per job id on one WebSocket
each; `poll` asks the reference's status route every `interval` seconds per job. Both
print `ready` once every client has its first answer, then one line per state change
they learn of: `<job id> <progress> <unix time>`, and stop at end of input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

OPENING_AT_ONCE = 200
SUBSCRIPTION = "subscription($id: ID!) { job(id: $id) { state progress } }"


async def subscribe(
    url: str, token: str, job_id: str, ready: asyncio.Event, out: list[str]
) -> None:
    async with websockets.connect(
        url,
        subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
        max_size=2**20,
        # As a browser: no WebSocket pings of its own.
        ping_interval=None,
    ) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        await ws.recv()  # connection_ack
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIPTION, "variables": {"id": job_id}},
                }
            )
        )
        first = True
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] != "next":
                return
            if first:
                first = False
                ready.set()
                continue
            job = message["payload"]["data"]["job"]
            out.append(f"{job_id} {job['progress']} {time.time():.6f}")
    if first:
        raise RuntimeError(f"the subscription to {job_id} ended before its first answer")


async def poll(
    url: str,
    job_id: str,
    interval: float,
    ready: asyncio.Event,
    out: list[str],
    client: httpx.AsyncClient,
) -> None:
    last = None
    while True:
        response = await client.get(f"{url}/api/status/{job_id}")
        progress = response.json().get("progress")
        if last is not None and progress != last:
            out.append(f"{job_id} {progress} {time.time():.6f}")
        if last is None:
            ready.set()
        last = progress if progress is not None else -1
        await asyncio.sleep(interval)


async def first_answers(tasks: list[asyncio.Task[None]], readies: list[asyncio.Event]) -> None:
    """Wait until each client has its first answer; end the run if one fails instead."""
    all_ready = asyncio.ensure_future(asyncio.gather(*(ready.wait() for ready in readies)))
    running: set[asyncio.Future[Any]] = {all_ready, *tasks}
    while not all_ready.done():
        done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        failed = [task for task in done if task is not all_ready and task.exception()]
        if failed:
            all_ready.cancel()
            print(f"failed: {failed[0].exception()}", flush=True)
            sys.exit(1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["subscribe", "poll"])
    parser.add_argument("url")
    parser.add_argument("ids_file", type=Path)
    parser.add_argument("--token", default="")
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    job_ids = args.ids_file.read_text().split()
    out: list[str] = []
    readies = [asyncio.Event() for _ in job_ids]
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        tasks: list[asyncio.Task[None]] = []
        for n, (job_id, ready) in enumerate(zip(job_ids, readies, strict=True)):
            if args.mode == "subscribe":
                tasks.append(
                    asyncio.create_task(subscribe(args.url, args.token, job_id, ready, out))
                )
            else:
                tasks.append(
                    asyncio.create_task(poll(args.url, job_id, args.interval, ready, out, client))
                )
            if n % OPENING_AT_ONCE == OPENING_AT_ONCE - 1:
                # Open in batches: a flood of handshakes overflows the server's accept queue.
                await first_answers(
                    tasks[-OPENING_AT_ONCE:], readies[n + 1 - OPENING_AT_ONCE : n + 1]
                )
        await first_answers(tasks, readies)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print("\n".join(out), flush=True)
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
