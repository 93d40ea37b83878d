"""Imports go one way, and each side loads only what it needs.

The web process and the worker meet in the shared layer: settings, the job layer and the
kinds of job (whose modules both import). Everything either side loads of jobql is on
its allow-list below; a module that is not is a new dependency someone must decide on.
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jobql
from jobql.registry import built_in_kinds

ROOT = Path(__file__).resolve().parents[1]
SHARED = {
    "jobql",
    "jobql.auth",  # the scope a kind's mutation asks for
    "jobql.callbacks",
    "jobql.epoch",  # both look for Redis having lost its data
    "jobql.errors",
    "jobql.files",
    "jobql.image_formats",
    "jobql.images",
    "jobql.jobs",
    "jobql.kinds",
    "jobql.kinds.avatar",
    "jobql.kinds.welcome_email",
    "jobql.logs",
    "jobql.registry",
    "jobql.settings",
    "jobql.stats",
    "jobql.storage",
    "jobql.s3_storage",  # JOBQL_STORAGE=s3, on both sides
    "jobql.uploads",
}
WORKER = SHARED | {
    "jobql.tasks",
    "jobql.tasks.backend",
    "jobql.tasks.callback",
    "jobql.tasks.celery",
    "jobql.tasks.housekeeping",
    "jobql.tasks.mail",
    "jobql.tasks.recovery",
    "jobql.tasks.sweep",
    "jobql.tasks.worker",
}
WEB = SHARED | {
    "jobql.admission",
    "jobql.app",
    "jobql.connections",
    "jobql.deadline",
    "jobql.downloads",
    "jobql.graphql_app",
    "jobql.health",
    "jobql.listing",
    "jobql.messages",
    "jobql.metrics",
    "jobql.multipart",
    "jobql.provider_keys",
    "jobql.quotas",
    "jobql.rate_limit",
    "jobql.reclaim",
    "jobql.request_guard",
    "jobql.resolvers",
    "jobql.resolvers.context",
    "jobql.resolvers.listing",
    "jobql.resolvers.mutation",
    "jobql.resolvers.query",
    "jobql.resolvers.subscription",
    "jobql.schema",
    "jobql.schema.documents",
    "jobql.schema.errors",
    "jobql.schema.limits",
    "jobql.schema.listing",
    "jobql.schema.types",
    "jobql.security_headers",
    "jobql.store",
    "jobql.watcher",
    "jobql.ws_protocols",
}
# Libraries of one side only. The worker does load Strawberry: a kind's module declares
# its GraphQL types beside its task, and both sides import it.
WEB_LIBRARIES = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart")
WORKER_LIBRARIES = ("celery", "kombu", "flask", "flask_mail")


def loaded_modules(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def under(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_web_process_loads_only_its_allow_list(tmp_path: Path) -> None:
    modules = loaded_modules(
        "from jobql.app import create_app\n"
        "from jobql.settings import Settings\n"
        f"create_app(Settings(secret_key='k' * 40, media_root={str(tmp_path)!r}))"
    )
    assert "jobql.app" in modules
    assert under(modules, ("jobql",)) - WEB == set()
    assert under(modules, WORKER_LIBRARIES) == set()


def test_worker_loads_only_its_allow_list() -> None:
    modules = loaded_modules("import jobql.tasks.celery")
    assert "jobql.tasks.worker" in modules
    assert under(modules, ("jobql",)) - WORKER == set()
    assert under(modules, WEB_LIBRARIES) == set()


def all_modules() -> list[str]:
    found = ["jobql"]
    for module in pkgutil.walk_packages(jobql.__path__, "jobql."):
        found.append(module.name)
    return sorted(found)


def test_the_module_list_is_complete() -> None:
    """Every module is on an allow-list or is a command's own (cli, dev, client...)."""
    own = {
        "jobql.__main__",
        "jobql.cli",
        "jobql.client",
        "jobql.dev",
        "jobql.http_deadline",
        "jobql.lifeline",
        "jobql.processes",
        "jobql.children",  # the private servers' process handling
        "jobql.redis_server",
        "jobql.s3_server",  # `jobql dev --storage s3`
        "jobql.tasks.purge",  # `jobql purge`
    }
    assert set(all_modules()) - WEB - WORKER - own == set()


@pytest.mark.parametrize("module", all_modules())
def test_each_module_imports_on_its_own(module: str) -> None:
    """No import cycle hides behind an order of imports that happens to work."""
    if module == "jobql.__main__":
        pytest.skip("runs the command line when imported")
    subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def kind_words() -> dict[str, re.Pattern[str]]:
    """Per built-in kind, what names it: its name, JobKind member, mutation, result type."""
    words = {}
    for kind in built_in_kinds():
        names = {
            kind.name,
            kind.graphql_name,
            kind.task_name,
            kind.mutation.__name__,
            kind.result.__name__,
            kind.payload.__name__,
        }
        if kind.command is not None:
            names.add(kind.command.name)
        alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
        words[kind.name] = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])")
    return words


def test_no_code_outside_a_kind_names_it() -> None:
    """Adding or removing a kind touches its own module only."""
    found = []
    for path in sorted((ROOT / "jobql").rglob("*.py")):
        text = path.read_text()
        for name, pattern in kind_words().items():
            if path == ROOT / "jobql" / "kinds" / f"{name}.py":
                continue
            found += [f"{path.relative_to(ROOT)}: {m[0]}" for m in pattern.finditer(text)]
    assert found == []
