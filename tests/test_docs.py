"""The README's settings table is the settings: no variable missing, none invented."""

from __future__ import annotations

import re
from pathlib import Path

from jobql.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_setting_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `(JOBQL_[A-Z0-9_]+)` \|", readme, flags=re.M))
    assert table == {f"JOBQL_{name.upper()}" for name in Settings.model_fields}


def test_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in lines[:8] if line.startswith("make ")]
    assert commands == ["make run", "make test"]
