"""What becomes of an operation's errors on the server: a client's mistake is one log line
with its code (and job id), a fault of ours is logged with its traceback, and a
subscription refused before its first result is counted by cause."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import strawberry
from graphql import GraphQLError
from strawberry.types.graphql import OperationType

from jobql.errors import ApiError, ServiceUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from strawberry.types import ExecutionContext

logger = logging.getLogger("jobql.graphql")

# Errors in the document or its variables, found before anything ran.
INVALID_REQUEST = "GRAPHQL_VALIDATION_FAILED"
INTERNAL = "INTERNAL"


def error_code(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, ApiError):
        return str(original.extensions["code"])
    if original is None or isinstance(original, GraphQLError):
        return INVALID_REQUEST
    return INTERNAL


class JobqlSchema(strawberry.Schema):
    """Strawberry's schema, with its documented `process_errors` hook doing the above."""

    def __init__(
        self, *args: Any, on_refusal: Callable[[str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_refusal = on_refusal

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        where, job_id = _describe(execution_context)
        for error in errors:
            log_error(error, where, job_id)
        if self.on_refusal is not None and _is_refused_subscription(execution_context):
            for error in errors:
                self.on_refusal(error_code(error))


def log_error(error: GraphQLError, where: str, job_id: str | None) -> None:
    code = error_code(error)
    about = f" (job {job_id})" if job_id else ""
    extra = {"code": code, "job_id": job_id}
    if code == INTERNAL:
        logger.error("%s in %s%s", code, where, about, exc_info=error.original_error, extra=extra)
        return
    # Redis being away is ours to fix, but not a bug: no traceback either.
    level = logging.WARNING if code == ServiceUnavailable.code else logging.INFO
    # One line, whatever the message echoes of the client's input.
    message = " ".join(error.message.splitlines())
    logger.log(level, "%s in %s%s: %s", code, where, about, message, extra=extra)


def _describe(context: ExecutionContext | None) -> tuple[str, str | None]:
    """Which operation it was ('subscription FollowJob'), and the job it named, if any."""
    if context is None:
        return "an operation", None
    job_id = (context.variables or {}).get("id")
    try:
        kind = context.operation_type.value
    except RuntimeError:  # the document did not parse
        kind = "operation"
    name = context.operation_name or ""
    return f"{kind} {name}".strip(), job_id if isinstance(job_id, str) else None


def _is_refused_subscription(context: ExecutionContext | None) -> bool:
    """A subscription's errors before it sent any result (Strawberry records each result
    on the context after this hook)."""
    if context is None or context.result is not None:
        return False
    try:
        return context.operation_type is OperationType.SUBSCRIPTION
    except RuntimeError:
        return False
