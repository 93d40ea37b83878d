"""Imports go one way: the web process never loads the task bodies, nor the worker the web."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

WEB_ONLY = ("jobql.app", "jobql.resolvers", "jobql.schema", "jobql.watcher", "jobql.store")
WORKER_ONLY = ("jobql.tasks", "flask", "flask_mail")


def loaded_modules(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def under(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_web_process_does_not_import_the_worker_side(tmp_path: Path) -> None:
    modules = loaded_modules(
        "from jobql.app import create_app\n"
        "from jobql.settings import Settings\n"
        f"create_app(Settings(secret_key='k' * 40, media_root={str(tmp_path)!r}))"
    )
    assert "jobql.app" in modules
    assert under(modules, WORKER_ONLY) == set()


def test_worker_does_not_import_the_web_side() -> None:
    modules = loaded_modules("import jobql.tasks.celery")
    assert "jobql.tasks.worker" in modules
    assert under(modules, (*WEB_ONLY, "strawberry", "fastapi")) == set()
