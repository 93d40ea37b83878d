"""The processes a benchmark runs: a private Redis, an SMTP sink, workers and web servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller

from jobql.redis_server import RedisServer, free_port
from jobql.s3_server import BUCKET as S3_BUCKET
from jobql.s3_server import REGION as S3_REGION
from jobql.s3_server import S3Server

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEY = "benchmark-secret-key-that-is-long-enough-for-hs256"
SERVER_PROCESSES = 2
WORKER_CONCURRENCY = 2


@dataclass
class SmtpSink:
    """Counts the messages it accepts."""

    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received += 1
        return "250 OK"


class Process:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.log_path.name}: no {text!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, 15)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._log.close()


@dataclass
class Bench:
    """One private Redis and SMTP sink shared by jobql and the reference in a run."""

    workdir: Path
    redis: RedisServer
    smtp: SmtpSink
    smtp_port: int
    processes: list[Process] = field(default_factory=list)
    s3: S3Server | None = None  # started when a part first asks for it

    @property
    def media(self) -> Path:
        return self.workdir / "media"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_")}
        env.update(
            JOBQL_REDIS_URL=self.redis.url,
            JOBQL_SECRET_KEY=SECRET_KEY,
            JOBQL_MEDIA_ROOT=str(self.media / "jobql"),
            JOBQL_MAIL_SERVER="127.0.0.1",
            JOBQL_MAIL_PORT=str(self.smtp_port),
            JOBQL_RATE_LIMIT_PER_MINUTE="0",
            REFERENCE_REDIS_URL=self.redis.url,
            REFERENCE_MEDIA=str(self.media / "reference"),
            REFERENCE_MAIL_SERVER="127.0.0.1",
            REFERENCE_MAIL_PORT=str(self.smtp_port),
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def start(self, name: str, command: list[str], ready: str, **env: str) -> Process:
        process = Process(command, self.env(**env), self.workdir / f"{name}.log")
        self.processes.append(process)
        if ready.startswith("http"):
            _wait_for_http(ready, process)
        else:
            process.wait_for_log(ready)
        return process

    def jobql_web(self, workers: int = SERVER_PROCESSES, s3: bool = False) -> tuple[Process, str]:
        """`s3`: its media in the run's S3 server (SeaweedFS), not on the filesystem."""
        port = free_port()
        command = [sys.executable, "-m", "jobql", "web", "--port", str(port)]
        command += ["--workers", str(workers), "--no-access-log"]
        url = f"http://127.0.0.1:{port}"
        env = self.s3_env() if s3 else {}
        name = "jobql-web-s3" if s3 else "jobql-web"
        return self.start(name, command, f"{url}/healthz", **env), url

    def s3_env(self) -> dict[str, str]:
        if self.s3 is None:
            self.s3 = S3Server()
            self.s3.start()
        return {
            "JOBQL_STORAGE": "s3",
            "JOBQL_S3_BUCKET": S3_BUCKET,
            "JOBQL_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "JOBQL_S3_REGION": S3_REGION,
            "AWS_ACCESS_KEY_ID": self.s3.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.credentials.secret_access_key,
        }

    def reference_web(self) -> tuple[Process, str]:
        port = free_port()
        command = [
            sys.executable, "-m", "gunicorn", "--workers", str(SERVER_PROCESSES),
            "--bind", f"127.0.0.1:{port}", "bench.reference.app:app",
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        return self.start("reference-web", command, f"{url}/api/status/none"), url

    def jobql_worker(self, s3: bool = False) -> Process:
        """`s3`: its media in the run's S3 server (SeaweedFS), not on the filesystem."""
        command = [
            sys.executable, "-m", "jobql", "worker",
            "--concurrency", str(WORKER_CONCURRENCY), "--loglevel", "INFO",
        ]  # fmt: skip
        env = self.s3_env() if s3 else {}
        name = "jobql-worker-s3" if s3 else "jobql-worker"
        return self.start(name, command, " ready.", JOBQL_LOG_JSON="0", **env)

    def reference_worker(self) -> Process:
        command = [
            sys.executable, "-m", "celery", "-A", "bench.reference.tasks", "worker",
            "--concurrency", str(WORKER_CONCURRENCY), "--loglevel", "INFO",
        ]  # fmt: skip
        return self.start("reference-worker", command, " ready.")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def _wait_for_http(url: str, process: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.1)


@contextmanager
def open_bench(workdir: Path) -> Iterator[Bench]:
    redis = RedisServer()
    redis.start()
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    bench = Bench(workdir, redis, sink, port)
    try:
        yield bench
    finally:
        bench.stop_all()
        controller.stop()
        redis.close()
        if bench.s3 is not None:
            bench.s3.close()
