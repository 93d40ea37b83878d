"""Logging for both processes: plain lines, or one JSON object a line (`JOBQL_LOG_JSON=1`).

JSON lines are python-json-logger's: every `extra=` field a line was logged with is
kept. Every line about a job carries its id as `job_id`: from `extra={"job_id": ...}`,
from the job a worker process is running, or from Celery's own log arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter

current_job_id: ContextVar[str | None] = ContextVar("jobql_current_job_id", default=None)

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "message")
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"}


class JobIdFilter(logging.Filter):
    """Adds `job_id` to every record about a job that does not carry one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", None):
            job_id = job_id_of(record)
            if job_id:
                record.job_id = job_id
        return True


class UtcJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat()


def job_id_of(record: logging.LogRecord) -> str | None:
    # Celery logs tasks as 'Task %(name)s[%(id)s] ...' with a mapping of arguments.
    if isinstance(record.args, Mapping) and isinstance(record.args.get("id"), str):
        return str(record.args["id"])
    return current_job_id.get()


def configure_logging(json_lines: bool, level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(UtcJsonFormatter(JSON_FIELDS, rename_fields=JSON_NAMES))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def route_uvicorn_logs_to_root() -> None:
    """uvicorn installs handlers of its own; send its lines through the root's instead."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not logger.handlers and not logger.propagate:
            continue  # turned off, as `--no-access-log` does: it stays off
        logger.handlers.clear()
        logger.propagate = True
