"""Document size limits: measured as if fragments were expanded, in time linear in the document."""

from __future__ import annotations

import statistics
import time

import pytest
from graphql import (
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
    get_introspection_query,
    parse,
    specified_rules,
)

from jobql.registry import built_in_kinds
from jobql.schema import build_schema
from jobql.schema.documents import MAX_TOKENS, limit_rules, validate
from jobql.schema.limits import (
    MAX_ALIASES,
    MAX_FIELDS,
    MAX_FRAGMENT_SPREADS,
    MAX_FRAGMENTS,
    Measure,
    measure_fragments,
    measure_selections,
    size_errors,
)
from tests.hostile_documents import (
    NORMAL,
    aliased_fan,
    fragment_fan,
    hostile_documents,
    repeated_field,
)

SCHEMA = build_schema(built_in_kinds(), introspection=False)._schema
RULES = (*specified_rules, *limit_rules(introspection=False))
# A hostile document may cost this many normal ones to parse and validate, at most.
COST_RATIO_BOUND = 25


def measure(document: str) -> Measure:
    parsed = parse(document)
    definitions = parsed.definitions
    fragments = measure_fragments(
        {d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)}
    )
    [operation] = [d for d in definitions if isinstance(d, OperationDefinitionNode)]
    return measure_selections(operation.selection_set, fragments)


def messages(document: str) -> list[str]:
    return [error.message for error in size_errors(parse(document))]


def test_depth_counts_fields_with_selections_through_fragments() -> None:
    document = "{ a { b { c { ...F } } } } fragment F on X { d { e } ... on X { f { g { h } } } }"
    assert measure(document).depth == 5  # a b c, then f g inside F


def test_introspection_fields_add_no_depth() -> None:
    assert measure("{ __schema { types { fields { type { name } } } } job { id } }").depth == 1


def test_aliases_count_once_per_expansion() -> None:
    document = "{ ...A ...A } fragment A on Q { x: a y: b ...B ...B } fragment B on Q { z: c }"
    assert measure(document).aliases == 2 * (2 + 2 * 1)


def test_alias_count_stops_just_past_the_limit() -> None:
    # 2 * 3 ** 39 aliases once expanded: the count does not grow with them.
    assert measure(aliased_fan(40)).aliases == MAX_ALIASES + 1


def test_a_fragment_cycle_is_measured_and_left_to_graphql_core() -> None:
    document = "{ ...A } fragment A on Query { __typename ...B } fragment B on Query { ...A }"

    assert size_errors(parse(document)) == []
    errors = validate(SCHEMA, parse(document), RULES)
    assert any("Cannot spread fragment 'A' within itself" in error.message for error in errors)


@pytest.mark.parametrize(
    ("document", "word"),
    [
        (fragment_fan(MAX_FRAGMENTS + 1), "fragments"),
        ("{ " + "...F " * (MAX_FRAGMENT_SPREADS + 1) + "} fragment F on Query { id }", "spreads"),
        (repeated_field(MAX_FIELDS + 1), "fields"),
        (aliased_fan(3), "aliases"),
        ("{ " + " ".join(f"a{i}: __typename" for i in range(MAX_ALIASES + 1)) + " }", "aliases"),
    ],
    ids=["fragments", "spreads", "fields", "aliases through fragments", "aliases"],
)
def test_documents_over_a_limit_are_refused(document: str, word: str) -> None:
    [message] = messages(document)
    assert word in message


@pytest.mark.parametrize(
    "document",
    [
        NORMAL,
        fragment_fan(MAX_FRAGMENTS),  # 31 * 3 + 1 spreads
        aliased_fan(2),
        repeated_field(MAX_FIELDS),
        "{ " + " ".join(f"a{i}: __typename" for i in range(MAX_ALIASES)) + " }",
    ],
    ids=["normal", "largest fan", "aliases through fragments", "fields", "aliases"],
)
def test_documents_at_a_limit_pass(document: str) -> None:
    assert messages(document) == []


def test_the_graphiql_introspection_query_passes() -> None:
    query = get_introspection_query(descriptions=True, directive_is_repeatable=True)
    assert messages(query) == []


def cost(document: str) -> float:
    """Seconds to parse and validate `document` as a request would, without any cache."""
    started = time.perf_counter()
    try:
        parsed = parse(document, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return time.perf_counter() - started
    validate(SCHEMA, parsed, RULES)
    return time.perf_counter() - started


def median_cost(make: str, runs: int) -> float:
    return statistics.median(cost(make + " " * run) for run in range(runs))


def test_no_hostile_document_costs_more_than_a_few_normal_ones() -> None:
    normal = median_cost(NORMAL, 21)
    ratios = {name: median_cost(document, 5) / normal for name, document in hostile_documents()}

    print(f"\nnormal document: {normal * 1000:.2f} ms to parse and validate")
    for name, ratio in ratios.items():
        print(f"  {name:40} {ratio:6.1f}x")
    assert max(ratios.values()) <= COST_RATIO_BOUND, ratios
