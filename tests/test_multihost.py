"""jobql across several hosts: Redis and S3 on one, two web hosts, two worker hosts and a
client, each a network namespace with files of its own (tests/netns.py). Only Redis and
the S3 store connect them, by settings alone.

The client (tests/netns_client.py) reports on stdout as it goes; the test pulls a cable
at the moments it names (and tells it on stdin when to go on), and checks what it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jobql.s3_server import BUCKET, REGION
from jobql.settings import Settings
from tests.conftest import SECRET_KEY, token
from tests.netns import PRIVATE_DIR, Host, Network, namespaces, network
from tests.support import ROOT, settings_env

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

WEB_PORT = 8000
BATCH2 = 16  # heavy photos; worker1 is cut off while it holds one
BATCH3 = 6  # heavy photos, followed on web1 until it is cut off
VISIBILITY_TIMEOUT = 10  # seconds before a message a cut-off worker holds goes to another
CLIENT_SECONDS = 300


class HostProcess:
    """A process on a host, its output in a log file the test reads."""

    def __init__(self, host: Host, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.host = host
        self.log_path = log
        with log.open("wb") as out:
            self.popen = host.start(argv, env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The process and its children stopped (SIGSTOP) for the block."""
        os.killpg(self.popen.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.popen.pid, signal.SIGCONT)

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.popen.poll() is None, f"{self.host.name} exited:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{self.host.name}: no {text!r}:\n{self.log[-3000:]}"
            )
            time.sleep(0.1)


class Client:
    """The client host's script, read a JSON line at a time."""

    def __init__(self, host: Host, config: dict[str, Any], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        argv = [sys.executable, "-m", "tests.netns_client", json.dumps(config)]
        # Unbuffered: `select` sees what is left to read only when no buffer holds it.
        self.popen = host.start(
            argv, env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            bufsize=0,
        )  # fmt: skip
        self.deadline = time.monotonic() + CLIENT_SECONDS

    def next(self, event: str) -> dict[str, Any]:
        assert self.popen.stdout is not None
        while True:
            left = self.deadline - time.monotonic()
            ready, _, _ = select.select([self.popen.stdout], [], [], max(0.0, left))
            assert ready, f"the client said no {event!r} in time:\n{self.stderr()}"
            line = self.popen.stdout.readline()
            assert line, f"the client ended before {event!r}:\n{self.stderr()}"
            said = json.loads(line)
            if said["event"] == event:
                return dict(said)

    def go_on(self) -> None:
        """Let the client go on past a step it waits at."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(b"go\n")
        self.popen.stdin.flush()

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]


@pytest.fixture
def net() -> Iterator[Network]:
    with network("store", "web1", "web2", "worker1", "worker2", "client") as made:
        yield made
    assert not {ns for ns in namespaces() if ns.startswith(made.tag)}


def host_env(settings: Settings, store: dict[str, str]) -> dict[str, str]:
    """A jobql process's environment on a host: the settings, the S3 credentials, and
    temporary files in the host's own directory."""
    return {
        **settings_env(settings),
        "AWS_ACCESS_KEY_ID": store["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": store["secret_access_key"],
        "TMPDIR": str(PRIVATE_DIR),
        # Log lines as they happen: the test acts on them.
        "PYTHONUNBUFFERED": "1",
    }


def start_store(net: Network, logs: Path) -> dict[str, str]:
    store = net.hosts["store"]
    argv = [sys.executable, "-m", "tests.netns_store", store.address]
    popen = store.start(argv, {"TMPDIR": str(PRIVATE_DIR)}, cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=(logs / "store.log").open("wb"))  # fmt: skip
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], 60)
    line = popen.stdout.readline() if ready else b""
    assert line, (logs / "store.log").read_text(errors="replace")
    return dict(json.loads(line))


def stop_store(net: Network) -> None:
    """SIGTERM first, so that SeaweedFS's sockets and data go with it."""
    for process in net.hosts["store"].processes:
        process.terminate()
        # Not answering in time is left to the network's SIGKILL: no error here hides the test's.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


def private_dir_of(process: subprocess.Popen[bytes]) -> Path:
    """A host's own directory, as a process running there sees it (`ip netns exec`, `unshare`
    and `sh` exec one another: the process started is the host's program itself)."""
    return Path(f"/proc/{process.pid}/root") / PRIVATE_DIR.relative_to("/")


def ran_by(workers: dict[str, HostProcess], job_ids: list[str]) -> dict[str, list[str]]:
    """The workers that logged each job as succeeded. A worker logs it just after it stores
    the job's `SUCCESS`, so a job the client saw end may not be in the log yet: wait a little."""
    deadline = time.monotonic() + 15
    while True:
        logs = {name: worker.log for name, worker in workers.items()}
        ran = {
            job_id: [name for name, log in logs.items() if f"[{job_id}] succeeded in " in log]
            for job_id in job_ids
        }
        if all(ran.values()) or time.monotonic() > deadline:
            return ran
        time.sleep(0.1)


def test_web_and_workers_on_separate_hosts_share_only_redis_and_s3(
    net: Network, tmp_path: Path
) -> None:
    hosts = net.hosts
    try:
        store = start_store(net, tmp_path)
        settings = Settings(
            redis_url=store["redis_url"],
            storage="s3",
            s3_bucket=BUCKET,
            s3_endpoint_url=store["s3_endpoint_url"],
            s3_region=REGION,
            media_root=PRIVATE_DIR / "media",
            secret_key=SECRET_KEY,  # type: ignore[arg-type]
            rate_limit_per_minute=0,
            visibility_timeout=VISIBILITY_TIMEOUT,
            task_time_limit=VISIBILITY_TIMEOUT - 2,
            recover_after=VISIBILITY_TIMEOUT,
        )
        env = host_env(settings, store)
        webs = {
            name: HostProcess(
                hosts[name],
                [
                    sys.executable,
                    "-m",
                    "jobql",
                    "web",
                    "--host",
                    hosts[name].address,
                    "--port",
                    str(WEB_PORT),
                ],
                env,
                tmp_path / f"{name}.log",
            )
            for name in ("web1", "web2")
        }
        workers = {
            name: HostProcess(
                hosts[name],
                [
                    sys.executable,
                    "-m",
                    "jobql",
                    "worker",
                    "--concurrency",
                    "1",
                    "-n",
                    f"{name}@%h",
                    "--loglevel",
                    "INFO",
                ],
                env,
                tmp_path / f"{name}.log",
            )
            for name in ("worker1", "worker2")
        }
        for web in webs.values():
            web.wait_for_log("Application startup complete")
        for worker in workers.values():
            worker.wait_for_log(" ready.")
        config = {
            "web1": f"http://{hosts['web1'].address}:{WEB_PORT}",
            "web2": f"http://{hosts['web2'].address}:{WEB_PORT}",
            "tokens": {user: token(f"netns-{user}") for user in ("followed", "other", "third")},
            "batch2": BATCH2,
            "batch3": BATCH3,
            "bucket": BUCKET,
            "s3_endpoint_url": store["s3_endpoint_url"],
            "s3_region": REGION,
        }
        client = Client(hosts["client"], config, env, tmp_path / "client.log")

        # 1. 50 photos through web1; half of them followed by a subscription on web2.
        followed = client.next("followed")
        jobs = followed["jobs"]
        assert len(jobs) == 50
        for job in jobs:
            assert job["state"] == "SUCCESS", job
            avatar = job["avatar"]
            assert avatar["status"] == 200 and avatar["size"] == [64, 64], job
            assert all(
                abs(a - b) <= 12 for a, b in zip(avatar["center"], job["color"], strict=True)
            ), job
        for job in (job for job in jobs if job["followed"]):
            # Every state change, once each, in order (three steps: decoded, resized, written).
            assert job["feed"] == ["PENDING", "STARTED", *["PROGRESS"] * 3, "SUCCESS"], job
        assert sum(job["followed"] for job in jobs) == 25
        ran_first = ran_by(workers, [job["id"] for job in jobs])
        assert all(len(names) == 1 for names in ran_first.values()), ran_first
        assert {names[0] for names in ran_first.values()} == set(workers), ran_first

        # 2. worker1's cable pulled while it holds a job: the batch ends on worker2.
        batch2 = client.next("batch2")["ids"]
        deadline = time.monotonic() + 60
        while not any(f"[{job_id}] received" in workers["worker1"].log for job_id in batch2):
            assert time.monotonic() < deadline, "worker1 took none of the batch"
            time.sleep(0.05)
        hosts["worker1"].link(up=False)
        done2 = client.next("batch2_done")
        assert [job["state"] for job in done2["jobs"]] == ["SUCCESS"] * BATCH2, done2
        held = [job_id for job_id in batch2 if f"[{job_id}] received" in workers["worker1"].log]
        unfinished = [
            job_id for job_id in held if f"[{job_id}] succeeded" not in workers["worker1"].log
        ]
        assert unfinished, "worker1 had finished its job before its cable was pulled"
        ran_second = ran_by(workers, batch2)
        attempts = {job["id"]: job["attempts"] for job in done2["jobs"]}
        for job_id in unfinished:
            assert ran_second[job_id] == ["worker2"], ran_second
            assert attempts[job_id] == 2, attempts  # worker1's delivery, then worker2's

        # 3. web1's cable pulled under its subscribers: they see an error, and follow their
        # jobs to the end through web2. worker1 is cut off and worker2 held still until web1
        # is: no job can end before, so every subscriber on web1 is left waiting.
        client.next("batch3_ready")
        with workers["worker2"].paused():
            client.go_on()
            client.next("subscribed")
            hosts["web1"].link(up=False)
        done3 = client.next("batch3_done")
        for job in done3["jobs"]:
            assert job["on_web1"] == ["PENDING"], job  # no worker could start it yet
            assert job["error"] is not None, job  # told that web1 went away
            assert job["on_web2"][-1] == "SUCCESS", job

        # One avatar per job, whichever worker made it, and every worker's files its own.
        keys = client.next("avatars")["keys"]
        # (The probes are the jobs that showed the client web2's feed was listening.)
        probes = followed["probes"]
        all_ids = [job["id"] for job in jobs] + batch2 + [job["id"] for job in done3["jobs"]]
        all_ids += probes
        assert sorted(keys) == sorted(f"avatars/{job_id}.jpg" for job_id in all_ids)
        # Each host's directory is a file system of its own (SeaweedFS keeps its data in
        # the store's), and no host kept a file of a job: uploads and avatars went to S3.
        dirs = {name: private_dir_of(host.processes[0]) for name, host in hosts.items()}
        devices = {name: path.stat().st_dev for name, path in dirs.items()}
        assert len(set(devices.values())) == len(hosts), devices
        found = {
            name: [str(f.relative_to(path)) for f in path.rglob("*")] for name, path in dirs.items()
        }
        assert found["store"], found
        assert not [
            (name, f)
            for name, files in found.items()
            for f in files
            if any(job_id in f for job_id in all_ids)
        ]
        client.go_on()  # it waited for this look at its files
        assert client.popen.wait(timeout=30) == 0, client.stderr()

        # Every job run to its end by exactly one worker.
        ended_by = ran_by(workers, all_ids)
        assert all(len(names) == 1 for names in ended_by.values()), ended_by
        ran = {name: sum(names == [name] for names in ended_by.values()) for name in workers}
        table = [
            ("web1", f"{50} accepted", ""),
            ("web2", f"{BATCH2 + BATCH3 + len(probes)} accepted", f"{len(probes)} probe(s)"),
            ("worker1", f"{ran['worker1']} run", "cut off in batch 2"),
            ("worker2", f"{ran['worker2']} run", ""),
        ]
        print("\nhost     jobs")
        for name, what, note in table:
            print(f"{name:8} {what:14} {note}")
        print(
            f"batch 1 (50 photos) {followed['seconds']:.1f} s; batch 2 ({BATCH2}, worker1 cut "
            f"off) {done2['seconds']:.1f} s; batch 3 ({BATCH3}, web1 cut off) "
            f"{done3['seconds']:.1f} s"
        )
    finally:
        stop_store(net)
