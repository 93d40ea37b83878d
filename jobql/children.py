"""A private server run as a child process (`jobql dev`'s and the tests' Redis and S3):
waiting for it to answer, and stopping it."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class ServerDidNotStart(RuntimeError):
    """The child exited, or did not answer in time."""


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    every: float = 0.05,
) -> None:
    """Return once `ready()`; stop the child and raise `ServerDidNotStart` (saying `what`)
    if it exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_child(process)
            raise ServerDidNotStart(what)
        time.sleep(every)


def stop_child(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
