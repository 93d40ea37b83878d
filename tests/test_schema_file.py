"""schema.graphql at the root is what `jobql schema` prints, so code generators can rely on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_schema_file_is_what_jobql_schema_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "jobql", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert (ROOT / "schema.graphql").read_text() == printed, (
        "schema.graphql is stale: run `jobql schema > schema.graphql`"
    )
