"""docker-compose.yml cannot be started here; read it and check it against the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import obstore
import pytest
import yaml
from obstore.store import S3Store

from jobql.s3_server import BUCKET, REGION, S3Server
from jobql.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SETTING_VARIABLES = {f"JOBQL_{name.upper()}" for name in Settings.model_fields}


def jobql_commands() -> list[tuple[str, list[str]]]:
    return [
        (name, service["command"])
        for name, service in SERVICES.items()
        if service.get("command", [None])[0] == "jobql"
    ]


def test_web_and_worker_run_jobql() -> None:
    assert {name for name, _ in jobql_commands()} >= {"web", "worker"}


@pytest.mark.parametrize(("service", "command"), jobql_commands())
def test_every_jobql_command_is_a_real_entry_point(service: str, command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobql", command[1], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{service}: {done.stderr}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jobql"] == "jobql.cli:main"


def test_every_jobql_variable_is_a_real_setting() -> None:
    used = {
        variable
        for service in SERVICES.values()
        for variable in service.get("environment", {})
        if variable.startswith("JOBQL_")
    }
    used |= set(re.findall(r"\bJOBQL_[A-Z0-9_]+", (ROOT / "Dockerfile").read_text()))
    assert used
    assert used <= SETTING_VARIABLES, used - SETTING_VARIABLES


def test_secret_is_required_and_redis_is_healthy_first() -> None:
    assert "healthcheck" in SERVICES["redis"]
    command = SERVICES["redis"]["command"]
    # Redis keeps the jobs it has accepted across a restart (the README's "Redis durability").
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    for name in ("web", "worker"):
        service = SERVICES[name]
        assert service["environment"]["JOBQL_SECRET_KEY"].startswith("${JOBQL_SECRET_KEY:?")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "flower" in SERVICES and "mailpit" in SERVICES


def test_web_and_workers_share_only_redis_and_the_s3_store() -> None:
    web, worker = SERVICES["web"], SERVICES["worker"]
    for service in (web, worker):
        assert not service.get("volumes"), "no shared media volume: they may be on two hosts"
        environment = service["environment"]
        assert environment["JOBQL_STORAGE"] == "s3"
        assert environment["JOBQL_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
        assert environment["AWS_SECRET_ACCESS_KEY"].startswith("${AWS_SECRET_ACCESS_KEY:?")
    assert worker["deploy"]["replicas"] == 2
    assert "8333:8333" in SERVICES["seaweedfs"]["ports"]


def test_the_stores_identities_let_anyone_read_avatars_and_nothing_else(
    s3_server: S3Server,
) -> None:
    """The compose file's identities, given to a real SeaweedFS."""
    text = COMPOSE["configs"]["s3-identities"]["content"]
    key, secret = s3_server.credentials.access_key_id, s3_server.credentials.secret_access_key
    text = text.replace("${AWS_ACCESS_KEY_ID:?}", key).replace("${AWS_SECRET_ACCESS_KEY:?}", secret)
    server = S3Server(identities=json.loads(text))
    server.start()
    try:
        store = S3Store(
            BUCKET, endpoint=server.endpoint_url, region=REGION, client_options={"allow_http": True}
        )
        obstore.put(store, "avatars/job.jpg", b"avatar")
        obstore.put(store, "private/exports/job/jobs.csv", b"export")
        obstore.put(store, "incoming/job.upload", b"photo")
        public = f"{server.endpoint_url}/{BUCKET}/avatars/job.jpg"
        assert urllib.request.urlopen(public, timeout=10).read() == b"avatar"
        for key_name in ("private/exports/job/jobs.csv", "incoming/job.upload"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{server.endpoint_url}/{BUCKET}/{key_name}", timeout=10)
            assert refused.value.code == 403
        put = urllib.request.Request(public, data=b"defaced", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=10)
        assert refused.value.code == 403
    finally:
        server.close()


def test_flower_asks_for_a_password_from_the_environment_and_listens_on_loopback() -> None:
    flower = SERVICES["flower"]
    command: list[str] = flower["command"]
    auth = [part for part in command if part.startswith(("--basic-auth", "--basic_auth"))]
    assert len(auth) == 1, command
    # From the environment, required, and no password written in the file.
    assert re.fullmatch(r"--basic[-_]auth=\$\{FLOWER_BASIC_AUTH:\?[^}]*\}", auth[0]), auth
    assert "FLOWER_BASIC_AUTH" not in flower.get("environment", {})
    # Published on the loopback interface only, or not at all.
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port
    # The web UI has no other way in: no host network, no other published port.
    assert flower.get("network_mode") != "host"
