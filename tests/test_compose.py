"""docker-compose.yml cannot be started here; read it and check it against the code."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    used |= set(re.findall(r"\bJOBQL_[A-Z_]+", (ROOT / "Dockerfile").read_text()))
    assert used
    assert used <= SETTING_VARIABLES, used - SETTING_VARIABLES


def test_secret_is_required_and_redis_is_healthy_first() -> None:
    assert "healthcheck" in SERVICES["redis"]
    for name in ("web", "worker"):
        service = SERVICES[name]
        assert service["environment"]["JOBQL_SECRET_KEY"].startswith("${JOBQL_SECRET_KEY:?")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "media:/data/media" in service["volumes"]
        assert service["environment"]["JOBQL_MEDIA_ROOT"] == "/data/media"
    assert "flower" in SERVICES and "mailpit" in SERVICES


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
