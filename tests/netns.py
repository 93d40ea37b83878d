"""A small network of hosts on this machine, for tests of what crosses a network.

Each host is a network namespace with its own loopback and one interface, wired by a veth pair
to a bridge that lives in a namespace of its own (the switch), so nothing is added to the
machine's own namespace. Addresses come from 198.18.0.0/15, the range set aside for network
tests. A process started on a host also gets a mount namespace of its own with a private tmpfs
on `Host.private_dir`, so no host can see another's files. Everything is removed when the
network is closed, pass or fail.

Needs root (the tests run as root).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

SUBNET_PREFIX = "198.18.0"
PREFIX_LENGTH = 24
# The same path on every host; each process mounts its host's own tmpfs there.
PRIVATE_DIR = Path("/var/tmp/jobql-host")


class NetworkError(Exception):
    """A network could not be set up (not root, no `ip`, a name taken)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    switch: str
    switch_port: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def private_dir(self) -> Path:
        return PRIVATE_DIR

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host: its network namespace, and a private tmpfs on
        `private_dir`."""
        inner = (
            f"mkdir -p {PRIVATE_DIR} && mount -t tmpfs -o size=512m tmpfs {PRIVATE_DIR}"
            f" && exec {shlex.join(argv)}"
        )
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", inner,
        ]  # fmt: skip

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start a process on this host; it is stopped when the network is closed."""
        process = subprocess.Popen(
            self.command(argv), env={**os.environ, **(env or {})}, start_new_session=True, **popen
        )
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def link(self, up: bool) -> None:
        """Plug this host's cable in or pull it out (at the switch)."""
        _ip("-n", self.switch, "link", "set", self.switch_port, "up" if up else "down")

    def stop_processes(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()


class Network:
    """Hosts on one switch. Use as a context manager, or call `close()`."""

    def __init__(self) -> None:
        # Interface names are at most 15 characters: a short tag keeps them unique.
        self.tag = f"jq{secrets.token_hex(3)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except NetworkError:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 2
        namespace = f"{self.tag}-{name}"
        port = f"{self.tag}p{number}"
        host = Host(
            name=name,
            namespace=namespace,
            address=f"{SUBNET_PREFIX}.{number}",
            switch=self.switch,
            switch_port=port,
        )
        self.hosts[name] = host
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", port, "netns", self.switch, "type", "veth", "peer", "eth0",
            "netns", namespace)  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_processes()
        for host in self.hosts.values():
            with contextlib.suppress(NetworkError):
                _ip("netns", "delete", host.namespace)
        with contextlib.suppress(NetworkError):
            _ip("netns", "delete", self.switch)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def network(*names: str) -> Iterator[Network]:
    """A network with these hosts, removed afterwards."""
    with Network() as net:
        for name in names:
            net.add_host(name)
        yield net


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
