"""The kinds of job this deployment runs: those named by entry points of the group
`jobql.kinds` (jobql's own among them, in its pyproject.toml), then those named by
`JOBQL_KINDS`. The web process and the worker load the same list, and each refuses to
start when the other runs a different one."""

from __future__ import annotations

import importlib
import json
import logging
from enum import StrEnum
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal

from redis import Redis
from redis.exceptions import RedisError

from jobql.kinds import Kind

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobql.files import FileArea
    from jobql.jobs import JobSnapshot
    from jobql.settings import Settings

ENTRY_POINT_GROUP = "jobql.kinds"
OWN_DISTRIBUTION = "jobql"
# What each side last started with: a JSON list of kind names.
KINDS_KEY = "jobql:kinds:{side}"

Side = Literal["web", "worker"]
logger = logging.getLogger(__name__)


class BadKindModule(Exception):
    """A module named as a kind cannot be imported, or has no `kind = Kind(...)`."""


class KindsDisagree(Exception):
    """The web process accepts kinds of job that the workers cannot run."""


class UnknownKind(ValueError):
    """A job of a kind this process has not loaded."""


class Kinds:
    """The kinds loaded, in order, by name."""

    def __init__(self, kinds: list[Kind[Any, Any]]) -> None:
        self._by_name: dict[str, Kind[Any, Any]] = {}
        for kind in kinds:
            if kind.name in self._by_name:
                raise BadKindModule(f"Two kinds are named {kind.name!r}.")
            self._by_name[kind.name] = kind

    def __iter__(self) -> Iterator[Kind[Any, Any]]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> Kind[Any, Any]:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @cached_property
    def enum(self) -> type[StrEnum]:
        """`JobKind`: one member per kind, named in upper case, valued by the kind's name."""
        return StrEnum("JobKind", {kind.graphql_name: kind.name for kind in self})  # type: ignore[return-value]

    @property
    def file_areas(self) -> list[FileArea]:
        return [kind.files for kind in self if kind.files is not None]

    def load_result(self, kind: str, data: dict[str, Any]) -> Any:
        return self[kind].load_result(data)

    def known(self, job: JobSnapshot) -> JobSnapshot:
        """`job`, if its kind is loaded; `UnknownKind` (an unexpected error) if not."""
        if job.kind not in self._by_name:
            raise UnknownKind(f"Job {job.id} is of a kind not loaded here: {job.kind!r}")
        return job


def kind_modules(settings: Settings) -> list[str]:
    """The modules to load kinds from, each once: entry points by name, then the setting's."""
    named = [point.value for point in _entry_points()] + settings.kind_modules
    return list(dict.fromkeys(named))


def _entry_points(own_only: bool = False) -> list[EntryPoint]:
    points = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    if own_only:
        return [p for p in points if p.dist is not None and p.dist.name == OWN_DISTRIBUTION]
    return points


def load_kinds(settings: Settings) -> Kinds:
    return Kinds([load_kind(name) for name in kind_modules(settings)])


def built_in_kinds() -> Kinds:
    """jobql's own kinds only (what a client that was told of no others knows)."""
    return Kinds([load_kind(point.value) for point in _entry_points(own_only=True)])


def load_kind(module_name: str) -> Kind[Any, Any]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadKindModule(f"Cannot import the kind module {module_name!r}: {exc}") from exc
    kind = getattr(module, "kind", None)
    if not isinstance(kind, Kind):
        raise BadKindModule(f"The module {module_name!r} has no `kind = Kind(...)`.")
    return kind


def agree(client: Redis, side: Side, kinds: Kinds) -> None:
    """Note the kinds this process runs, and refuse (`KindsDisagree`) when the web process
    accepts a kind that the workers lack.

    Each side writes its list when it starts and checks it against the other side's last
    one: a kind is added to the workers first, then to the web process.
    """
    other: Side = "worker" if side == "web" else "web"
    raw = client.get(KINDS_KEY.format(side=other))
    theirs = set(json.loads(raw)) if raw else None
    ours = set(kinds.names)
    if theirs is not None:
        accepted, runnable = (ours, theirs) if side == "web" else (theirs, ours)
        missing = sorted(accepted - runnable)
        if missing:
            raise KindsDisagree(
                f"The web process accepts jobs of kinds {', '.join(missing)} that the workers "
                "cannot run. Give the worker and the web process the same JOBQL_KINDS (and "
                "the same `jobql.kinds` entry points); add a kind to the workers first."
            )
    client.set(KINDS_KEY.format(side=side), json.dumps(kinds.names))


def check_agreement(settings: Settings, side: Side, kinds: Kinds) -> None:
    """`agree`, over a connection of its own (one blocking call, before serving).

    A Redis that cannot be reached is not a reason to refuse to start (each side waits
    for Redis as it always has): the check is left to the next start, with a warning.
    """
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    try:
        agree(client, side, kinds)
    except RedisError as exc:
        logger.warning("Could not check the kinds of job against the %s: %s", side, exc)
    finally:
        client.close()
