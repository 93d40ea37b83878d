"""How the server logs and counts an operation's errors (jobql.schema.errors)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from graphql import GraphQLError
from strawberry.types import ExecutionResult

from jobql.auth import TokenVerifier
from jobql.errors import BadUserInput, ServiceUnavailable
from jobql.registry import built_in_kinds
from jobql.resolvers.context import Context
from jobql.schema import build_schema
from tests.conftest import SECRET_KEY, token

if TYPE_CHECKING:
    import pytest

    from jobql.resolvers.context import Services

FOLLOW = "subscription FollowJob($id: ID!) { job(id: $id) { id } }"


def wrapped(exc: Exception) -> GraphQLError:
    return GraphQLError(str(exc), original_error=exc)


def test_client_errors_are_one_info_line_and_faults_keep_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schema = build_schema(built_in_kinds())
    with caplog.at_level(logging.INFO, logger="jobql.graphql"):
        schema.process_errors(
            [
                wrapped(BadUserInput("not an address:\r\n2026-01-01 ERROR forged line")),
                wrapped(ServiceUnavailable("Redis is away.")),
                GraphQLError("Cannot query field 'nope' on type 'Query'."),
                wrapped(KeyError("a bug")),
            ]
        )
    records = caplog.records
    assert [record.levelname for record in records] == ["INFO", "WARNING", "INFO", "ERROR"]
    assert [getattr(record, "code", None) for record in records] == [
        "BAD_USER_INPUT",
        "SERVICE_UNAVAILABLE",
        "GRAPHQL_VALIDATION_FAILED",
        "INTERNAL",
    ]
    assert "\n" not in records[0].getMessage() and "\r" not in records[0].getMessage()
    assert [record.exc_info is not None for record in records] == [False, False, False, True]


async def test_a_subscription_refused_before_its_first_result_is_counted_by_cause() -> None:
    causes: list[str] = []
    schema = build_schema(built_in_kinds(), on_refusal=causes.append)
    # A real token check; nothing else of the services is reached for a malformed id.
    services = cast("Services", SimpleNamespace(tokens=TokenVerifier(SECRET_KEY)))
    context = Context(services, f"Bearer {token('someone')}")

    # Not a job id: refused with NOT_FOUND before anything is read.
    result = await schema.subscribe(FOLLOW, variable_values={"id": "x"}, context_value=context)
    assert not isinstance(result, ExecutionResult)
    errors = [error async for each in result for error in each.errors or ()]
    assert [(error.extensions or {}).get("code") for error in errors] == ["NOT_FOUND"]
    # A query's errors are no subscription's refusal.
    await schema.execute("{ nope }", context_value=context)
    assert causes == ["NOT_FOUND"]
