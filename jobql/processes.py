"""`jobql web --workers N`: N uvicorn processes behind one listening socket, handed
its connections in turn.

Processes that accept from one shared socket split a burst of new connections
unevenly: whichever wakes first takes most of them (Node's cluster module hands
connections out round robin for this reason). A keep-alive connection then stays where
it landed, and one process can end up serving most clients while another idles. Here
the parent accepts, and passes each connection to the next worker over a Unix socket.
A worker that dies is replaced; SIGINT or SIGTERM stops them all, gracefully.

The workers keep their metrics in files of a directory they share (prometheus_client's
multiprocess mode), so that whichever of them a scrape reaches reports them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import multiprocess

from jobql.metrics import MULTIPROCESS_DIR

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from types import FrameType

logger = logging.getLogger(__name__)

BACKLOG = 2048
GRACE_SECONDS = 10.0
HAND_OVER_TIMEOUT = 1.0


class HandedConnections(uvicorn.Server):
    """A uvicorn server with no socket of its own: it serves what the parent hands it."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self._connecting: set[asyncio.Future[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        # What uvicorn's own startup builds its listeners with.
        protocol = functools.partial(
            self.config.http_protocol_class,  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel, self._receive, protocol)

    def _receive(self, protocol: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
        except BlockingIOError:
            return
        if not data:  # the parent is gone
            loop.remove_reader(self.channel)
            self.should_exit = True
            return
        for fd in fds:
            future = asyncio.ensure_future(
                loop.connect_accepted_socket(protocol, socket.socket(fileno=fd))
            )
            self._connecting.add(future)
            future.add_done_callback(self._connecting.discard)


def _shared_metrics_dir() -> tempfile.TemporaryDirectory[str] | None:
    """A fresh directory for the workers' metrics, unless the operator named one."""
    if os.environ.get(MULTIPROCESS_DIR):
        return None
    directory = tempfile.TemporaryDirectory(prefix="jobql-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory.name  # the spawned workers inherit it
    return directory


def _work(channel: socket.socket, options: dict[str, Any]) -> None:
    HandedConnections(uvicorn.Config(**options), channel).run()


class Supervisor:
    def __init__(self, host: str, port: int, workers: int, options: dict[str, Any]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.options = options
        self._metrics_dir = _shared_metrics_dir()
        self.stopping = threading.Event()
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[tuple[BaseProcess, socket.socket]] = []
        for _ in range(workers):
            self._slots.append(self._spawn())

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._stop)
        threading.Thread(target=self._hand_out, name="jobql-accept", daemon=True).start()
        logger.info("Handing connections to %d worker processes", len(self._slots))
        while not self.stopping.wait(0.5):
            self._replace_dead()
        # Wakes the accepting thread (a plain close would leave it blocked in accept).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for process, channel in self._slots:
            channel.close()
            process.terminate()  # SIGTERM: uvicorn finishes what it is serving
        for process, _ in self._slots:
            process.join(GRACE_SECONDS)
            if process.is_alive():
                process.kill()
        if self._metrics_dir is not None:
            self._metrics_dir.cleanup()
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _spawn(self) -> tuple[BaseProcess, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(target=_work, args=(theirs, self.options))
        process.start()
        theirs.close()
        ours.settimeout(HAND_OVER_TIMEOUT)  # a worker that stopped reading is passed over
        return process, ours

    def _replace_dead(self) -> None:
        for n, (process, channel) in enumerate(self._slots):
            if process.is_alive():
                continue
            logger.warning("Worker %s ended (%s); starting another", process.pid, process.exitcode)
            channel.close()
            # Its open subscriptions are gone; what it counted stays counted.
            multiprocess.mark_process_dead(process.pid, os.environ[MULTIPROCESS_DIR])  # type: ignore[no-untyped-call]
            self._slots[n] = self._spawn()

    def _hand_out(self) -> None:
        turn = 0
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            with connection:
                for _ in range(len(self._slots)):
                    turn = (turn + 1) % len(self._slots)
                    with contextlib.suppress(OSError):  # that worker is gone: the next one
                        socket.send_fds(self._slots[turn][1], [b"c"], [connection.fileno()])
                        break


def serve(host: str, port: int, workers: int, **options: Any) -> int:
    """Run uvicorn with `options`: in this process for one worker, else under a Supervisor."""
    if workers <= 1:
        uvicorn.run(host=host, port=port, **options)
        return 0
    return Supervisor(host, port, workers, options).run()
