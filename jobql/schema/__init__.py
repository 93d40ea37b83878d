"""The root schema: Query, Mutation and Subscription, and the rules every operation obeys."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import strawberry
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)

from jobql.errors import ApiError
from jobql.resolvers import mutation, query, subscription

if TYPE_CHECKING:
    from collections.abc import Callable

    from graphql import GraphQLError


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
    """Errors raised by code, other than the ones meant for the caller, are masked."""
    original = error.original_error
    return original is not None and not isinstance(original, ApiError)


MAX_DEPTH = 8
MAX_ALIASES = 10
MAX_TOKENS = 1000
CACHED_DOCUMENTS = 256


def build_schema(introspection: bool = True) -> strawberry.Schema:
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        partial(MaskErrors, should_mask_error=is_unexpected),
        partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
        partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        # Clients send the same few documents again and again: parse and validate each once.
        partial(ParserCache, maxsize=CACHED_DOCUMENTS),
        partial(ValidationCache, maxsize=CACHED_DOCUMENTS),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(
        query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions
    )
