"""One extension for what happens to a document before it runs: the caller's token, jobql's
limits, and a cache.

A caller without a valid token is refused before its document is parsed: nothing a stranger
sends costs more than reading it. Clients send the same few documents again and again, so each
distinct one is parsed and validated once. A document that does not parse is left to
Strawberry's own parser, whose error every transport reports. One extension, not four: each one
costs its hooks on every request.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import TYPE_CHECKING

from graphql import GraphQLError, GraphQLSchema, parse
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from jobql.schema.limits import size_errors

if TYPE_CHECKING:
    from collections.abc import Iterator

    from graphql import ASTValidationRule, DocumentNode

    from jobql.resolvers.context import Context

MAX_TOKENS = 1000
CACHED_DOCUMENTS = 256


@lru_cache(maxsize=CACHED_DOCUMENTS)
def _parse(query: str, max_tokens: int) -> DocumentNode:
    return parse(query, max_tokens=max_tokens)


def validate(
    schema: GraphQLSchema,
    document: DocumentNode,
    rules: tuple[type[ASTValidationRule], ...],
) -> list[GraphQLError]:
    """jobql's size limits first: graphql-core's rules are not all linear in the document."""
    return size_errors(document) or validate_document(schema, document, rules)


_validate = lru_cache(maxsize=CACHED_DOCUMENTS)(validate)


def limit_rules(introspection: bool) -> tuple[type[ASTValidationRule], ...]:
    """The rules added to graphql-core's, built once: rules made anew per request would never
    hit the validation cache."""
    return () if introspection else (NoSchemaIntrospectionCustomRule,)


class PreparedDocuments(SchemaExtension):
    def __init__(self, rules: tuple[type[ASTValidationRule], ...]) -> None:
        super().__init__()
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.validation_rules = (*context.validation_rules, *self.rules)
        context.parse_options["max_tokens"] = MAX_TOKENS
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        caller: Context = context.context
        caller.principal()  # UNAUTHENTICATED, before anything is parsed
        if context.query:
            with contextlib.suppress(GraphQLError):
                context.graphql_document = _parse(context.query, MAX_TOKENS)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        assert context.graphql_document is not None
        context.pre_execution_errors = _validate(
            context.schema._schema, context.graphql_document, context.validation_rules
        )
        yield
