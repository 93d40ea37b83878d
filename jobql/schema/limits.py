"""How big an operation may be, checked in one pass over the document.

Depth and alias count are measured the way they would be on the operation with every fragment
spread expanded in place, but without expanding anything: each fragment is measured once, after
the fragments it spreads, and every spread of it reuses that measure. A document whose fragments
each spread the one below three times is as cheap to check as it is to read, not three times
dearer per level.

The walk keeps its own stack: a deeply nested document costs no Python recursion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from graphql import (
    ExecutableDefinitionNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from graphql import DocumentNode, SelectionNode, SelectionSetNode

MAX_DEPTH = 8
MAX_ALIASES = 10
MAX_FRAGMENTS = 32
MAX_FRAGMENT_SPREADS = 100
# OverlappingFieldsCanBeMergedRule compares fields pairwise: 128 cost 5 ms, 1,000 cost 200.
MAX_FIELDS = 128


@dataclass(frozen=True, slots=True)
class Measure:
    """An operation's or a fragment's size once its spreads are expanded: `depth` counts nested
    fields that have a selection set (introspection fields do not count), `aliases` every
    aliased field, capped just past the limit."""

    depth: int = 0
    aliases: int = 0


def measure_selections(
    selection_set: SelectionSetNode, fragments: Mapping[str, Measure]
) -> Measure:
    """The measure of a selection set, given the measure of each fragment it may spread (a
    fragment missing from `fragments` counts for nothing: it is unknown or part of a cycle, and
    graphql-core's own rules report both)."""
    depth = aliases = 0
    # (selection set, depth of the fields above it; None inside an introspection field)
    stack: list[tuple[SelectionSetNode, int | None]] = [(selection_set, 0)]
    while stack:
        current, level = stack.pop()
        for selection in current.selections:
            if isinstance(selection, FieldNode):
                aliases += selection.alias is not None
                if selection.selection_set is None:
                    continue
                inner = None if level is None or _is_introspection(selection) else level + 1
                depth = max(depth, inner or 0)
                stack.append((selection.selection_set, inner))
            elif isinstance(selection, InlineFragmentNode):
                stack.append((selection.selection_set, level))
            elif isinstance(selection, FragmentSpreadNode):
                spread = fragments.get(selection.name.value, Measure())
                aliases += spread.aliases
                if level is not None:
                    depth = max(depth, level + spread.depth)
        aliases = min(aliases, MAX_ALIASES + 1)
    return Measure(depth, aliases)


def measure_fragments(definitions: Mapping[str, FragmentDefinitionNode]) -> dict[str, Measure]:
    """Every fragment's measure, each taken once, dependencies first."""
    measures: dict[str, Measure] = {}
    for name in _dependencies_first(definitions):
        measures[name] = measure_selections(definitions[name].selection_set, measures)
    return measures


def _dependencies_first(definitions: Mapping[str, FragmentDefinitionNode]) -> Iterator[str]:
    """Fragment names, each after every fragment it spreads (a cycle is broken anywhere)."""
    spreads = {name: set(_spread_names(node.selection_set)) for name, node in definitions.items()}
    done: set[str] = set()
    for root in definitions:
        # Iterative depth-first search: (name, whether its dependencies were already pushed)
        stack = [(root, False)]
        entered: set[str] = set()
        while stack:
            name, expanded = stack.pop()
            if name in done:
                continue
            if expanded:
                done.add(name)
                yield name
                continue
            if name in entered:
                continue  # a cycle
            entered.add(name)
            stack.append((name, True))
            stack.extend((dep, False) for dep in spreads[name] if dep in definitions)


def _spread_names(selection_set: SelectionSetNode) -> Iterator[str]:
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                yield selection.name.value
            elif (inner := _inner_selections(selection)) is not None:
                stack.append(inner)


def _inner_selections(selection: SelectionNode) -> SelectionSetNode | None:
    if isinstance(selection, FieldNode | InlineFragmentNode):
        return selection.selection_set
    return None


def _is_introspection(field: FieldNode) -> bool:
    return field.name.value.startswith("__")


def size_errors(document: DocumentNode) -> list[GraphQLError]:
    """What makes the document too big to validate or run; checked before graphql-core's rules,
    some of which cost the square of the number of fields."""
    counts = _count(document)
    if counts.fragments > MAX_FRAGMENTS:
        return [GraphQLError(f"The document has more than {MAX_FRAGMENTS} fragments.")]
    if counts.spreads > MAX_FRAGMENT_SPREADS:
        message = f"The document has more than {MAX_FRAGMENT_SPREADS} fragment spreads."
        return [GraphQLError(message)]
    if counts.fields > MAX_FIELDS:
        return [GraphQLError(f"The document selects more than {MAX_FIELDS} fields.")]
    definitions = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    fragments = measure_fragments(definitions)
    errors: list[GraphQLError] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            measure = measure_selections(definition.selection_set, fragments)
            errors.extend(_over_limits(definition, measure))
    return errors


@dataclass(slots=True)
class _Counts:
    fragments: int = 0
    spreads: int = 0
    fields: int = 0


def _count(document: DocumentNode) -> _Counts:
    counts = _Counts()
    stack: list[SelectionSetNode] = []
    for definition in document.definitions:
        counts.fragments += isinstance(definition, FragmentDefinitionNode)
        if isinstance(definition, ExecutableDefinitionNode):
            stack.append(definition.selection_set)
    while stack:
        for selection in stack.pop().selections:
            counts.spreads += isinstance(selection, FragmentSpreadNode)
            counts.fields += isinstance(selection, FieldNode)
            if (inner := _inner_selections(selection)) is not None:
                stack.append(inner)
    return counts


def _over_limits(operation: OperationDefinitionNode, measure: Measure) -> Iterator[GraphQLError]:
    name = operation.name.value if operation.name else "anonymous"
    if measure.depth > MAX_DEPTH:
        yield GraphQLError(f"'{name}' exceeds maximum operation depth of {MAX_DEPTH}.", operation)
    if measure.aliases > MAX_ALIASES:
        yield GraphQLError(
            f"'{name}' has more than {MAX_ALIASES} aliases once its fragments are expanded.",
            operation,
        )
