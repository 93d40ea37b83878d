"""Real processes for the tests: a Celery worker, the web server and an SMTP server."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from pydantic import SecretStr

from jobql.client import with_job_fields
from jobql.kinds import avatar, welcome_email
from jobql.redis_server import free_port
from jobql.tasks.recovery import UNACKED_INDEX_KEY, UNACKED_KEY

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from email.message import EmailMessage

    from redis import Redis

    from jobql.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REJECTING_DOMAIN = "reject.example.org"  # every recipient here gets 550
DEFERRING_DOMAIN = "defer.example.org"  # each recipient here gets 451 once, then 250
BUSY_DOMAIN = "busy.example.org"  # every recipient here gets 451, every time
# The built-in kinds' mutations, as the terminal client sends them.
UPLOAD_AVATAR = with_job_fields(avatar.UPLOAD_AVATAR)
SEND_WELCOME = with_job_fields(welcome_email.SEND_WELCOME)


def file_as_held(client: Redis, message: dict[str, Any], queue: str) -> None:
    """What Kombu's Redis transport does with a message a worker took off `queue`: file it
    as unacknowledged under its delivery tag, in its hash and its index."""
    tag = message["properties"]["delivery_tag"]
    with client.pipeline() as pipe:
        pipe.zadd(UNACKED_INDEX_KEY, {tag: time.time()})
        pipe.hset(UNACKED_KEY, tag, json.dumps([message, "", queue]))
        pipe.execute()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read exactly `settings` (and import the
    kinds of job in `examples/`, when they name one)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBQL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"JOBQL_{name.upper()}"] = str(value)
    return env


class Process:
    """A child process whose output goes to a log file; stopped with its whole group."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited ({self.popen.returncode}):\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the log:\n{self.log[-3000:]}")
            time.sleep(0.05)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the whole process group (SIGSTOP) for the block, then let it go on."""
        os.killpg(self.popen.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.popen.pid, signal.SIGCONT)

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, 15)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._log.close()


def start_worker(
    settings: Settings, log_path: Path, concurrency: int = 2, extra: Sequence[str] = ()
) -> Process:
    """A worker; `extra` goes to `celery worker` (`-E` to send task events, say)."""
    command = [sys.executable, "-m", "jobql", "worker", "--concurrency", str(concurrency)]
    command += extra
    worker = Process(command, settings_env(settings), log_path)
    worker.wait_for_log(" ready.")
    return worker


@dataclass
class WebServer:
    process: Process
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_web(settings: Settings, log_path: Path, workers: int = 1) -> WebServer:
    port = free_port()
    command = [sys.executable, "-m", "jobql", "web", "--port", str(port)]
    command += ["--workers", str(workers)]
    process = Process(command, settings_env(settings), log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return WebServer(process, port)
        except OSError:
            if process.popen.poll() is not None or time.monotonic() > deadline:
                process.stop()
                raise RuntimeError(
                    f"the web server did not start:\n{process.log[-3000:]}"
                ) from None
            time.sleep(0.1)


@dataclass
class RecordingHandler:
    """An SMTP handler that keeps what it receives, and refuses or defers some recipients."""

    messages: list[EmailMessage] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)
    recipients_tried: Counter[str] = field(default_factory=Counter)
    # The client address and port that named each recipient: one per SMTP connection.
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    quit_by: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2]
        with self.lock:
            self.recipients_tried[address] += 1
            self.peers[address] = session.peer
        if domain == REJECTING_DOMAIN:
            return "550 5.1.1 No such mailbox"
        if domain == BUSY_DOMAIN:
            return "451 4.3.0 Try again later"
        with self.lock:
            if domain == DEFERRING_DOMAIN and address not in self.deferred:
                self.deferred.add(address)
                return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.quit_by.append(session.peer)
        return "221 Bye"

    def to(self, recipient: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == recipient]


class SmtpServer:
    """A real SMTP server in a thread; `stop()` and `start()` again keep its port."""

    def __init__(self, idle_timeout: float = 300) -> None:
        self.handler = RecordingHandler()
        self.port = free_port()
        self.idle_timeout = idle_timeout
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            timeout=self.idle_timeout,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@dataclass
class Stack:
    """A whole jobql of its own: Redis, SMTP, workers and a web server, for tests that break
    things."""

    settings: Settings
    redis: Any  # RedisServer
    smtp: SmtpServer
    logs: Path
    workers: list[Process] = field(default_factory=list)
    web: WebServer | None = None

    def add_worker(self, concurrency: int = 1, extra: Sequence[str] = ()) -> Process:
        log = self.logs / f"worker-{len(self.workers)}.log"
        worker = start_worker(self.settings, log, concurrency=concurrency, extra=extra)
        self.workers.append(worker)
        return worker

    def start_web(self) -> WebServer:
        self.web = start_web(self.settings, self.logs / "web.log")
        return self.web

    def close(self) -> None:
        if self.web is not None:
            self.web.process.stop()
        for worker in self.workers:
            worker.stop(timeout=5)
        self.smtp.stop()
        self.redis.close()
