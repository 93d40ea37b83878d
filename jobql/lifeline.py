"""Child processes that die with the process that started them, however it ends.

A child started with `die_with_parent()` as its `preexec_fn` asks Linux for SIGKILL when
its parent dies (`PR_SET_PDEATHSIG`): a parent killed with SIGKILL, which runs no
clean-up of its own, leaves nothing running and no port held.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`; None where the kernel has no such request."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
