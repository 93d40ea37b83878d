"""The `jobql` command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import jwt
import pytest
from pydantic import SecretStr

from jobql.registry import built_in_kinds
from jobql.schema import build_schema
from tests.conftest import SECRET_KEY
from tests.support import settings_env


def jobql(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobql", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def env_without_secret() -> dict[str, str]:
    from jobql.settings import Settings

    env = settings_env(Settings(secret_key=None))
    env.pop("JOBQL_SECRET_KEY", None)
    return env


def test_schema_prints_the_sdl() -> None:
    done = jobql("schema")
    assert done.returncode == 0
    assert done.stdout == build_schema(built_in_kinds()).as_str() + "\n"
    assert "uploadAvatar(\n    file: Upload!\n    options: AvatarOptions = null\n" in done.stdout


@pytest.mark.parametrize("command", ["web", "worker", "token"])
def test_commands_that_need_the_secret_refuse_without_it(command: str) -> None:
    args = [command, "--user", "u"] if command == "token" else [command]
    done = jobql(*args, env=env_without_secret())
    assert done.returncode == 2
    assert "JOBQL_SECRET_KEY is not set" in done.stderr


def test_token_carries_user_and_scopes() -> None:
    from jobql.settings import Settings

    env = settings_env(Settings(secret_key=SecretStr(SECRET_KEY)))
    done = jobql("token", "--user", "backend", "--scope", "email:send", env=env)
    assert done.returncode == 0
    claims = jwt.decode(done.stdout.strip(), SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == "backend"
    assert claims["scope"] == "email:send"


def test_unknown_option_is_an_error() -> None:
    done = jobql("schema", "--bogus")
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr


@pytest.mark.parametrize(("ttl", "lifetime"), [([], 3600), (["--ttl", "90"], 90)])
def test_token_expires_after_an_hour_unless_told(ttl: list[str], lifetime: int) -> None:
    from jobql.settings import Settings

    env = settings_env(Settings(secret_key=SecretStr(SECRET_KEY)))
    done = jobql("token", "--user", "backend", *ttl, env=env)
    assert done.returncode == 0
    claims = jwt.decode(done.stdout.strip(), SECRET_KEY, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == lifetime


@pytest.mark.parametrize("command", ["web", "worker", "token"])
def test_commands_refuse_a_secret_key_under_32_bytes(command: str) -> None:
    from jobql.settings import Settings

    args = [command, "--user", "u"] if command == "token" else [command]
    done = jobql(*args, env=settings_env(Settings(secret_key=SecretStr("x"))))
    assert done.returncode == 2
    assert "at least 32 are needed" in done.stderr
