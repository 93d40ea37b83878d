"""`jobql dev` as a new user runs it: all starts, a job runs, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

from jobql.redis_server import free_port
from tests.support import Process

SEND = 'mutation { sendWelcomeEmail(email: "dev@example.com", username: "Dev") { id state } }'
QUERY = "query($id: ID!) { job(id: $id) { state } }"


def post(url: str, token: str, query: str, variables: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dev_runs_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_")}
    env["JOBQL_MEDIA_ROOT"] = str(tmp_path / "media")
    port = free_port()
    dev = Process(
        [sys.executable, "-m", "jobql", "dev", "--port", str(port)], env, tmp_path / "dev.log"
    )
    try:
        dev.wait_for_log("Ctrl-C stops everything.", timeout=60)
        url = re.search(r"GraphiQL: (\S+)", dev.log)
        token = re.search(r"Bearer ([\w.-]+)", dev.log)
        assert url and token
        assert url.group(1) == f"http://127.0.0.1:{port}/graphql"

        job = post(url.group(1), token.group(1), SEND)["data"]["sendWelcomeEmail"]
        deadline = time.monotonic() + 30
        while (
            post(url.group(1), token.group(1), QUERY, {"id": job["id"]})["data"]["job"]["state"]
            != "SUCCESS"
        ):
            assert time.monotonic() < deadline, dev.log[-3000:]
            time.sleep(0.2)
        dev.wait_for_log("Subject: Welcome to jobql")  # the local SMTP server printed it

        family = descendants(dev.popen.pid)
        assert len(family) >= 4  # redis, smtp, worker (and its pool), web
        os.kill(dev.popen.pid, signal.SIGINT)
        assert dev.popen.wait(timeout=30) == 0
        time.sleep(0.5)
        assert [pid for pid in family if alive(pid)] == []
    finally:
        dev.stop()
