"""The root schema: Query, Mutation and Subscription, and the rules every operation obeys."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from jobql.errors import ApiError
from jobql.resolvers import mutation, query, subscription
from jobql.schema.documents import PreparedDocuments, limit_rules

if TYPE_CHECKING:
    from collections.abc import Callable


@strawberry.type
class Query:
    job = strawberry.field(resolver=query.job)


@strawberry.type
class Mutation:
    upload_avatar = strawberry.mutation(resolver=mutation.upload_avatar)
    send_welcome_email = strawberry.mutation(resolver=mutation.send_welcome_email)


@strawberry.type
class Subscription:
    job = strawberry.subscription(resolver=subscription.job)


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


def build_schema(introspection: bool = True) -> strawberry.Schema:
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        MaskUnexpectedErrors,
        partial(PreparedDocuments, limit_rules(introspection)),
    ]
    return strawberry.Schema(
        query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions
    )
