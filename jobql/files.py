"""Where jobs keep the files they make, and the URLs those files are served at.

A kind that makes files declares a `FileArea`. A public area's files are served to anyone
at `/media/<folder>/<name>` (an image meant to be shown on a page). A private area's
files are kept per job and served at `/files/<folder>/<job id>/<name>` only to the owner
of that job: guessing the URL is not enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

PUBLIC_URL = "/media"
PRIVATE_URL = "/files"
PRIVATE_DIR = "private"  # under the media root; never mounted as static files
_FOLDER = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class BadFileName(ValueError):
    """A folder or file name that is not a plain, single path segment."""


@dataclass(frozen=True, slots=True)
class FileArea:
    """A kind's files: a folder of their own, and whether only a job's owner may fetch them."""

    folder: str
    private: bool = False

    def __post_init__(self) -> None:
        if not _FOLDER.fullmatch(self.folder):
            raise BadFileName(f"A file area's folder must match {_FOLDER.pattern}: {self.folder!r}")


@dataclass(frozen=True, slots=True)
class JobFiles:
    """One job's files in one area: where to write them, and the URL each is served at."""

    root: Path
    url_prefix: str

    def path(self, name: str) -> Path:
        """Where the file `name` goes (its folder created)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / plain_name(name)

    def url(self, name: str) -> str:
        return f"{self.url_prefix}/{plain_name(name)}"


class ResultFiles:
    """Every area's files, under one media root."""

    def __init__(self, media_root: Path) -> None:
        self.media_root = media_root

    def public_dir(self, area: FileArea) -> Path:
        return self.media_root / area.folder

    def private_dir(self, area: FileArea) -> Path:
        return self.media_root / PRIVATE_DIR / area.folder

    def for_job(self, area: FileArea, job_id: str) -> JobFiles:
        if area.private:
            folder = self.private_dir(area) / plain_name(job_id)
            return JobFiles(folder, f"{PRIVATE_URL}/{area.folder}/{job_id}")
        return JobFiles(self.public_dir(area), f"{PUBLIC_URL}/{area.folder}")

    def private_file(self, area: FileArea, job_id: str, name: str) -> Path:
        return self.private_dir(area) / plain_name(job_id) / plain_name(name)

    def job_dirs(self, areas: Iterable[FileArea]) -> Iterator[Path]:
        """Every private job folder (named by its job id)."""
        for area in areas:
            if area.private and self.private_dir(area).is_dir():
                yield from self.private_dir(area).iterdir()

    def file_dirs(self, areas: Iterable[FileArea]) -> Iterator[Path]:
        """Every folder a task writes files in (where half-written ones may be left)."""
        for area in areas:
            if area.private:
                yield from self.job_dirs([area])
            else:
                yield self.public_dir(area)


def plain_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BadFileName(f"Not a plain file name: {name!r}")
    return name
