"""The test network itself: hosts reach each other, see only their own files, can be cut off,
and leave nothing behind."""

from __future__ import annotations

import sys

import pytest

from jobql.redis_server import redis_server_binary
from tests.netns import PRIVATE_DIR, namespaces, network

pytestmark = pytest.mark.slow

REDIS_PORT = 6390


def ping(address: str) -> str:
    """A Python one-liner that PINGs Redis at `address` and prints the answer."""
    return (
        "import socket\n"
        "try:\n"
        f"    s = socket.create_connection(({address!r}, {REDIS_PORT}), timeout=1)\n"
        "    s.sendall(b'PING\\r\\n'); print(s.recv(16).decode().strip())\n"
        "except OSError as exc: print(type(exc).__name__)\n"
    )


def test_hosts_talk_see_their_own_files_and_can_be_cut_off() -> None:
    with network("store", "client") as net:
        store, client = net.hosts["store"], net.hosts["client"]
        tagged = {ns for ns in namespaces() if ns.startswith(net.tag)}
        assert tagged == {store.namespace, client.namespace, net.switch}
        store.start(
            [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", store.address,
             "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        )  # fmt: skip

        def ask() -> str:
            for _ in range(50):
                answer = client.run([sys.executable, "-c", ping(store.address)]).stdout.strip()
                if answer != "ConnectionRefusedError":
                    return answer
            return answer

        assert ask() == "+PONG"
        written = store.run(["sh", "-c", f"echo store > {PRIVATE_DIR}/mine && ls {PRIVATE_DIR}"])
        assert written.stdout.split() == ["mine"]
        assert client.run(["ls", str(PRIVATE_DIR)]).stdout.split() == []
        assert not (PRIVATE_DIR / "mine").exists()

        store.link(up=False)
        assert ask() == "TimeoutError"
        store.link(up=True)
        assert ask() == "+PONG"

    assert not {ns for ns in namespaces() if ns.startswith(net.tag)}
