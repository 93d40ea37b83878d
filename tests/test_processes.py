"""`jobql web --workers N`: connections handed out in turn, a dead worker replaced, and
all of them stopped together."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from jobql.redis_server import free_port
from tests.support import Process, settings_env, start_web

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from jobql.settings import Settings
    from tests.support import WebServer

pytestmark = pytest.mark.slow


@pytest.fixture
def web(settings: Settings, tmp_path: Path) -> Iterator[WebServer]:
    server = start_web(settings, tmp_path / "web.log", workers=2)
    yield server
    server.process.stop()


def workers(web: WebServer) -> set[int]:
    """The uvicorn worker processes (not multiprocessing's resource tracker)."""
    pid = web.process.popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def connections_held(port: int, pids: set[int]) -> Counter[int]:
    """How many established connections to `port` each process holds."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    held: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if str(fd.readlink()) in inodes:
                    held[pid] += 1
            except FileNotFoundError:
                continue
    return held


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_connections_are_handed_to_the_workers_in_turn(web: WebServer) -> None:
    wait_for(lambda: len(workers(web)) == 2)
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{web.port}") for _ in range(6)]
    try:
        for client in clients:  # keep-alive: each client holds one connection
            assert client.get("/healthz").status_code == 200
        held = connections_held(web.port, workers(web))
        assert sorted(held.values()) == [3, 3]
    finally:
        for client in clients:
            client.close()


def test_a_dead_worker_is_replaced(web: WebServer) -> None:
    wait_for(lambda: len(workers(web)) == 2)
    first, second = sorted(workers(web))
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(workers(web)) == 2 and first not in workers(web))
    assert second in workers(web)
    for _ in range(4):  # new connections, handed to each worker in turn, are all served
        assert httpx.get(f"http://127.0.0.1:{web.port}/healthz", timeout=10).status_code == 200


def test_sigterm_stops_every_worker(web: WebServer) -> None:
    wait_for(lambda: len(workers(web)) == 2)
    pids = workers(web)
    web.process.popen.send_signal(signal.SIGTERM)
    assert web.process.popen.wait(timeout=20) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_workers_listen_on_an_ipv6_address(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "jobql", "web", "--host", "::1", "--port", str(port)]
    process = Process([*command, "--workers", "2"], settings_env(settings), tmp_path / "web.log")
    try:
        wait_for(lambda: _answers(f"http://[::1]:{port}/healthz"))
    finally:
        process.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
