"""The root schema: Query, Mutation (one field per kind of job) and Subscription, and the rules
every operation obeys."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from jobql.errors import ApiError
from jobql.resolvers import mutation, query, subscription
from jobql.schema.documents import PreparedDocuments, limit_rules
from jobql.schema.errors import JobqlSchema
from jobql.schema.listing import listing_fields
from jobql.schema.types import job_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobql.registry import Kinds


def root_types(kinds: Kinds) -> tuple[type, type, type]:
    """Query, Mutation and Subscription. Each kind's mutation is named after its resolver
    (a resolver `do_this` is the mutation `doThis`) and answers with the `Job`."""
    job = job_type(kinds)
    listing_queries, listing_subscriptions = listing_fields(kinds, job)
    query_fields: dict[str, Any] = {
        "job": strawberry.field(resolver=query.job, graphql_type=job | None),
        **listing_queries,
    }
    mutation_fields: dict[str, Any] = {
        kind.mutation.__name__: strawberry.mutation(
            resolver=mutation.with_callback_url(kind.mutation), graphql_type=job
        )
        for kind in kinds
    }
    mutation_fields["cancel_job"] = strawberry.mutation(
        resolver=mutation.cancel_job, graphql_type=job | None
    )
    mutation_fields["retry_job"] = strawberry.mutation(
        resolver=mutation.retry_job, graphql_type=job
    )
    subscription_fields: dict[str, Any] = {
        "job": strawberry.subscription(resolver=subscription.job, graphql_type=job),
        **listing_subscriptions,
    }
    return (
        strawberry.type(type("Query", (), query_fields)),
        strawberry.type(type("Mutation", (), mutation_fields)),
        strawberry.type(type("Subscription", (), subscription_fields)),
    )


def is_unexpected(error: GraphQLError) -> bool:
    """Errors raised by code, other than the ones meant for the caller, are masked.

    graphql-core's own errors (a variable of the wrong type, say) wrap a GraphQLError
    and are meant for the caller too.
    """
    original = error.original_error
    return original is not None and not isinstance(original, ApiError | GraphQLError)


class MaskUnexpectedErrors(MaskErrors):
    """Strawberry's MaskErrors, with `is_unexpected` deciding.

    Its own check of a result is an isinstance() against a runtime-checkable Protocol,
    which inspects the class on every call: a few per cent of a mutation's time.
    """

    def __init__(self) -> None:
        super().__init__(should_mask_error=is_unexpected)

    def _process_result(self, result: object) -> None:
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]


def build_schema(
    kinds: Kinds, introspection: bool = True, on_refusal: Callable[[str], None] | None = None
) -> strawberry.Schema:
    """The schema; `on_refusal` is told the code of each subscription refused."""
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        MaskUnexpectedErrors,
        partial(PreparedDocuments, limit_rules(introspection)),
    ]
    query, mutation, subscription = root_types(kinds)
    return JobqlSchema(
        query=query,
        mutation=mutation,
        subscription=subscription,
        extensions=extensions,
        on_refusal=on_refusal,
    )
