"""A tiny run of the benchmark suite, so that it cannot rot: every part runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_measures_every_part(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 20  # the header, and one row per figure
    assert "VOID" not in done.stdout
    figures = json.loads((tmp_path / "latest.json").read_text())
    assert figures["smoke"] is True
    for side in ("jobql", "reference"):
        assert figures["enqueue"][side]["requests"] > 0
        assert figures["enqueue"][side]["errors"] == 0
        assert figures["completion"][side]["emails_per_second"] > 0
    assert figures["completion"]["jobql"]["avatars_s3_per_second"] > 0
    assert 0 < figures["freshness"]["20"]["p99_ms"] < figures["freshness"]["reference"]["p99_ms"]
    assert figures["processing"]["jpeg_12mp"]["jobql_ms"] > 0
    assert figures["upload_ack"]["png_17mb"]["jobql_s3"]["median_ms"] > 0
    assert figures["depth"]["recovery_calls"] > 0
    assert 0 < figures["depth"]["per_job_bytes"] < 10_000
    listing = figures["listing"]
    assert listing["first20"]["requests"] > 0 and listing["first20"]["errors"] == 0
    assert listing["with_index"]["errors"] == listing["without_index"]["errors"] == 0
