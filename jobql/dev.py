"""`jobql dev`: Redis, an SMTP server that prints mail, a worker and the web server, at once."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from typing import TYPE_CHECKING

from jobql.auth import ALL_SCOPES, issue_token
from jobql.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Sequence

DEV_USER = "dev"
STOP_GRACE_SECONDS = 10


class Stop(Exception):
    """A signal asked `jobql dev` to stop."""


def run_dev(host: str, port: int) -> int:
    env = dict(os.environ)
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    with ExitStack() as stack:
        try:
            if not env.get("JOBQL_REDIS_URL"):
                redis = RedisServer()
                redis.start()
                stack.callback(redis.close)
                env["JOBQL_REDIS_URL"] = redis.url
                print(f"redis:   private redis-server at {redis.url}")
            if not env.get("JOBQL_MAIL_SERVER"):
                smtp_port = free_port()
                env.update(JOBQL_MAIL_SERVER="127.0.0.1", JOBQL_MAIL_PORT=str(smtp_port))
                children.append(_spawn(
                    [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}"], env
                ))  # fmt: skip
                print(f"smtp:    mail is printed here (SMTP server at 127.0.0.1:{smtp_port})")
            env.setdefault("JOBQL_SECRET_KEY", secrets.token_urlsafe(32))
            env.setdefault("JOBQL_INTROSPECTION", "true")
            children.append(
                _spawn([sys.executable, "-m", "jobql", "worker", "--concurrency", "2"], env)
            )
            children.append(_spawn(
                [sys.executable, "-m", "jobql", "web", "--host", host, "--port", str(port)], env
            ))  # fmt: skip
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/graphql"
            _wait_for(url.replace("/graphql", "/healthz"), children)
            token = issue_token(env["JOBQL_SECRET_KEY"], DEV_USER, ALL_SCOPES)
            print(f"\njobql is running. GraphiQL: {url}")
            print("Paste this into GraphiQL's Headers tab (the token is valid for an hour):")
            print(
                f'  {{"Authorization": "Bearer {token}"}}\nCtrl-C stops everything.\n', flush=True
            )
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            print("A jobql process ended; stopping the rest.", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, Stop):
            print("\nStopping jobql dev...", file=sys.stderr)
            return 0
        finally:
            _stop_all(children)


def _spawn(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only `jobql dev`, which stops each child in order.
    return subprocess.Popen(command, env=env, start_new_session=True)


def _wait_for(url: str, children: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a jobql process exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the web server did not answer at {url}")


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each child's process group (a worker's pool too); SIGKILL what lingers."""
    for child in reversed(children):
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in reversed(children):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_group(child, signal.SIGKILL)
        child.wait()


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)
