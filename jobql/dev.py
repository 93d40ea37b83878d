"""`jobql dev`: Redis, an SMTP server that prints mail, a worker and the web server, at once.

Each child dies with `jobql dev`, even a `jobql dev` killed with SIGKILL (a worker's pool
processes follow their worker). A port already taken is reported before anything starts,
and "running" is printed only once the server that answers is the one this run started.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from typing import TYPE_CHECKING
from urllib.parse import quote

from jobql.auth import ALL_SCOPES, issue_token
from jobql.lifeline import die_with_parent
from jobql.redis_server import RedisServer, RedisServerNotFound, free_port, redis_server_binary
from jobql.s3_server import BUCKET as S3_BUCKET
from jobql.s3_server import REGION as S3_REGION
from jobql.s3_server import S3Server, S3ServerNotFound, weed_binary

if TYPE_CHECKING:
    from collections.abc import Sequence

DEV_USER = "dev"
STOP_GRACE_SECONDS = 10
DEV_EXTRA = "pip install -e '.[dev]'"


class Stop(Exception):
    """A signal asked `jobql dev` to stop."""


class CannotStart(Exception):
    """Something `jobql dev` needs is missing or taken; the message says what to do."""


def run_dev(host: str, port: int, storage: str = "filesystem") -> int:
    """`storage`: "s3" starts a private S3 server (SeaweedFS) for the media, unless
    JOBQL_S3_ENDPOINT_URL names one."""
    env = dict(os.environ)
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C stops it even when it was started with SIGINT ignored, as a shell does for a
    # job it puts in the background (`make run &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ExitStack() as stack:
        try:
            _check_can_start(host, port, env, storage)
            env["JOBQL_STORAGE"] = storage
            if storage == "s3" and not env.get("JOBQL_S3_ENDPOINT_URL"):
                s3 = S3Server(with_parent=True)
                s3.start()
                stack.callback(s3.close)
                env.update(
                    JOBQL_S3_ENDPOINT_URL=s3.endpoint_url,
                    JOBQL_S3_BUCKET=S3_BUCKET,
                    JOBQL_S3_REGION=S3_REGION,
                    AWS_ACCESS_KEY_ID=s3.credentials.access_key_id,
                    AWS_SECRET_ACCESS_KEY=s3.credentials.secret_access_key,
                )
                print(f"s3:      private SeaweedFS at {s3.endpoint_url}, bucket {S3_BUCKET!r}")
            if not env.get("JOBQL_REDIS_URL"):
                redis = RedisServer(with_parent=True)
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
            env["JOBQL_RUN_ID"] = run_id = secrets.token_hex(8)
            children.append(
                _spawn([sys.executable, "-m", "jobql", "worker", "--concurrency", "2"], env)
            )
            children.append(_spawn(
                [sys.executable, "-m", "jobql", "web", "--host", host, "--port", str(port)], env
            ))  # fmt: skip
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/graphql"
            _wait_for(url.replace("/graphql", "/healthz"), run_id, children)
            token = issue_token(env["JOBQL_SECRET_KEY"], DEV_USER, ALL_SCOPES)
            print(f"\njobql is running. GraphiQL, signed in as {DEV_USER!r} (every scope):")
            print(f"  {graphiql_url(url, token)}")
            print("Its Headers tab holds the dev token (valid for an hour); elsewhere, send it as:")
            print(
                f'  {{"Authorization": "Bearer {token}"}}\nCtrl-C stops everything.\n', flush=True
            )
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            print("A jobql process ended; stopping the rest.", file=sys.stderr)
            return 1
        except CannotStart as exc:
            print(f"jobql dev: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, Stop):
            print("\nStopping jobql dev...", file=sys.stderr)
            return 0
        finally:
            _stop_all(children)


def graphiql_url(url: str, token: str) -> str:
    """GraphiQL with the token in its Headers tab. It travels in the URL's fragment, which
    browsers never send: only the page, in this browser, reads it."""
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    return f"{url}#headers={quote(headers, safe='')}"


def _check_can_start(host: str, port: int, env: dict[str, str], storage: str) -> None:
    if _port_taken(host, port):
        raise CannotStart(
            f"port {port} on {host} is already in use (another jobql dev?); "
            f"stop what holds it, or pick another with --port"
        )
    if not env.get("JOBQL_REDIS_URL"):
        try:
            redis_server_binary()
        except RedisServerNotFound as exc:
            raise CannotStart(str(exc)) from None
    if storage == "s3" and not env.get("JOBQL_S3_ENDPOINT_URL"):
        try:
            weed_binary()
        except S3ServerNotFound as exc:
            raise CannotStart(str(exc)) from None
    if not env.get("JOBQL_MAIL_SERVER") and not _importable("aiosmtpd"):
        raise CannotStart(
            f"no aiosmtpd for the local SMTP server: install the development extra "
            f"({DEV_EXTRA}), or set JOBQL_MAIL_SERVER"
        )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _port_taken(host: str, port: int) -> bool:
    """Whether a server listens there already (bound as uvicorn binds, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _spawn(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only `jobql dev`, which stops each child in order.
    # And a lifeline: if `jobql dev` is killed outright, the kernel kills the child.
    return subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # safe: `jobql dev` starts no threads
    )


def _wait_for(
    url: str, run_id: str, children: list[subprocess.Popen[bytes]], timeout: float = 60
) -> None:
    """Until the server at `url` answers as the one started with `run_id`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a jobql process exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if json.load(response).get("run") == run_id:
                    return
        except (OSError, ValueError):
            pass
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
