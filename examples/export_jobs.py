"""An example kind of job from outside jobql: export the caller's jobs as a CSV file.

Load it with `JOBQL_KINDS=examples.export_jobs` (the web process and the worker both).
It adds `exportJobs(format: ExportFormat = CSV): Job!`; the job's result is a
`FileResult`, a file that only the job's owner can download.

No `from __future__ import annotations`: Strawberry reads these annotations at run time.
"""

import csv
import io
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, BinaryIO, assert_never

import strawberry

from jobql.kinds import (
    Command,
    FileArea,
    JobSnapshot,
    Kind,
    MutationInfo,
    TaskContext,
    count_owner_jobs,
    enqueue,
    owner_jobs,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from jobql.client import JobData, JobqlClient

COLUMNS = ("id", "kind", "state", "created_at", "finished_at")


@strawberry.enum(description="The format of an export file.")
class ExportFormat(StrEnum):
    CSV = "CSV"


@dataclass(frozen=True, slots=True)
class ExportPayload:
    format: ExportFormat


@strawberry.type(description="A file made by a job; only the job's owner can download it.")
class FileResult:
    url: str
    size_bytes: int
    content_type: str
    rows: int


async def export_jobs(
    info: MutationInfo, format: ExportFormat | None = ExportFormat.CSV
) -> JobSnapshot:
    """Queue an export of the caller's jobs (id, kind, state, created and finished times)."""
    return await enqueue(info, kind, ExportPayload(format or ExportFormat.CSV))


def export(ctx: TaskContext, payload: ExportPayload) -> FileResult:
    assert ctx.files is not None, "the kind declares a file area"
    match payload.format:
        case ExportFormat.CSV:
            name, content_type = "jobs.csv", "text/csv"
        case _:
            assert_never(payload.format)
    total = max(1, count_owner_jobs(ctx))
    rows = 0

    def write(file: BinaryIO) -> None:
        nonlocal rows
        text = io.TextIOWrapper(file, newline="", write_through=True)
        writer = csv.writer(text)
        writer.writerow(COLUMNS)
        for jobs in owner_jobs(ctx):
            writer.writerows(_row(job) for job in jobs)
            rows += len(jobs)
            ctx.report_progress(min(99, rows * 100 // total))
        text.detach()  # the file is the store's to close

    size = ctx.files.publish(name, write)
    return FileResult(
        url=ctx.files.url(name),
        size_bytes=size,
        content_type=content_type,
        rows=rows,
    )


def _row(job: JobSnapshot) -> tuple[str, ...]:
    finished = job.finished_at.isoformat() if job.finished_at else ""
    return (job.id, job.kind, job.state.value, job.created_at.isoformat(), finished)


# --- the terminal client: `jobql export-jobs` -------------------------------------------------

EXPORT_JOBS = """
mutation ExportJobs($format: ExportFormat = CSV) { exportJobs(format: $format) { ...JobFields } }
"""


def _arguments(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument("--format", type=str.upper, choices=list(ExportFormat), default="CSV")


async def _queue(client: "JobqlClient", args: "argparse.Namespace") -> "JobData":
    return await client.mutate(EXPORT_JOBS, "ExportJobs", {"format": args.format})


def _describe(result: dict[str, Any], absolute: "Callable[[str], str]") -> list[str]:
    return [
        f"file: {absolute(result['url'])} (with your token)",
        f"{result['rows']} jobs, {result['sizeBytes']} bytes, {result['contentType']}",
    ]


kind = Kind(
    name="export_jobs",
    payload=ExportPayload,
    result=FileResult,
    run=export,
    mutation=export_jobs,
    files=FileArea("exports", private=True),
    command=Command(
        name="export-jobs",
        help="export your jobs as a file (only you can download it)",
        add_arguments=_arguments,
        queue=_queue,
    ),
    describe=_describe,
)
