"""The areas jobs keep the files they make in, and the URLs those files are served at
(`jobql.storage` keeps the files).

A kind that makes files declares a `FileArea`. A public area's files are served to anyone
at `/media/<folder>/<name>` (an image meant to be shown on a page). A private area's
files are kept per job and served at `/files/<folder>/<job id>/<name>` only to the owner
of that job: guessing the URL is not enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC_URL = "/media"
PRIVATE_URL = "/files"
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


def plain_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BadFileName(f"Not a plain file name: {name!r}")
    return name
