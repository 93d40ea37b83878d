"""`make bench`: jobql against the REST-and-polling design, in one run, as ratios.

Prints one markdown table, writes the figures as JSON under bench/results/ and the
table into bench/README.md. `--smoke` runs everything tiny (a few seconds per part),
writes only to `--out`, and is part of the test suite so that the benchmarks cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.depth import depth
from bench.harness import open_bench
from bench.listing import listing
from bench.measure import (
    FULL,
    SMOKE,
    completion,
    enqueue,
    freshness_and_scale,
    processing,
    upload_ack,
)
from bench.report import table

HERE = Path(__file__).parent


PARTS = ("enqueue", "upload_ack", "freshness", "processing", "completion", "depth", "listing")


async def run(smoke: bool, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    size = SMOKE if smoke else FULL
    figures: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="jobql-bench-") as folder,
        open_bench(Path(folder)) as bench,
    ):
        if "enqueue" in parts:
            figures["enqueue"] = enqueue(bench, size)
        if "upload_ack" in parts:
            figures["upload_ack"] = await upload_ack(bench, size)
        if "freshness" in parts:
            figures["freshness"] = await freshness_and_scale(bench, size)
        if "processing" in parts:
            figures["processing"] = processing(bench, size)
        if "completion" in parts:
            figures["completion"] = await completion(bench, size)
        if "depth" in parts:
            figures["depth"] = await depth(bench, size)
        if "listing" in parts:
            figures["listing"] = await listing(bench, size)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--only", help=f"comma-separated parts to run and print, not record: {', '.join(PARTS)}"
    )
    args = parser.parse_args()
    if args.only:
        figures = asyncio.run(run(args.smoke, tuple(args.only.split(","))))
        print(json.dumps(figures, indent=2))
        return
    figures = asyncio.run(run(args.smoke))
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    when = datetime.now(UTC)
    rendered = table(figures)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"date": when.isoformat(), "machine": machine, "smoke": args.smoke, **figures}
    (args.out / "latest.json").write_text(json.dumps(record, indent=2) + "\n")
    if not args.smoke:
        (args.out / f"{when:%Y%m%dT%H%M%S}.json").write_text(json.dumps(record, indent=2) + "\n")
        readme = HERE / "README.md"
        head = readme.read_text().split("<!-- results -->")[0]
        stamp = f"Last run: {when:%Y-%m-%d %H:%M} UTC on {machine}.\n\n"
        readme.write_text(f"{head}<!-- results -->\n{stamp}{rendered}\n")


if __name__ == "__main__":
    main()
