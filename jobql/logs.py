"""Logging for both processes: plain lines, or one JSON object a line (`JOBQL_LOG_JSON=1`).

Every line about a job carries its id: from `extra={"job_id": ...}`, from the job a
worker process is running, or from Celery's own log arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

current_job_id: ContextVar[str | None] = ContextVar("jobql_current_job_id", default=None)

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = job_id_of(record)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def job_id_of(record: logging.LogRecord) -> str | None:
    explicit = getattr(record, "job_id", None)
    if explicit:
        return str(explicit)
    # Celery logs tasks as 'Task %(name)s[%(id)s] ...' with a mapping of arguments.
    if isinstance(record.args, Mapping) and isinstance(record.args.get("id"), str):
        return str(record.args["id"])
    return current_job_id.get()


def configure_logging(json_lines: bool, level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(PLAIN_FORMAT))
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
