"""Errors a GraphQL caller can act on, each with the `extensions.code` clients read."""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    code: ClassVar[str]

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.extensions: dict[str, Any] = {"code": self.code, **extensions}


class BadUserInput(ApiError):
    code = "BAD_USER_INPUT"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class NotFound(ApiError):
    code = "NOT_FOUND"


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"


class JobLost(ApiError):
    """The job was accepted, but Redis lost its data (a restart without persistence, a
    FLUSHALL, a failover to an empty replica) and the job with it: it will never end."""

    code = "JOB_LOST"


class IdempotencyKeyReused(ApiError):
    """The idempotency key was used, within its 24 hours, for a request with other
    arguments."""

    code = "IDEMPOTENCY_KEY_REUSED"


class RateLimited(ApiError):
    code = "RATE_LIMITED"
