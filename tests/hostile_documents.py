"""Documents an attacker would send to make validation or execution expensive, each within the
token limit unless its name says otherwise. `salt` makes a document distinct, so that no cache
answers for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

NORMAL = """
query Job($id: ID!) {
  job(id: $id) {
    id kind state progress done createdAt
    result { ... on AvatarResult { url width height } ... on EmailResult { recipient } }
    error { code message retryable }
  }
}
"""


def fragment_fan(levels: int, width: int = 3, salt: str = "") -> str:
    """`query { ...F<top> }`, each fragment spreading the one below `width` times: expanded, the
    operation has width ** levels fields."""
    fragments = [f"fragment F0 on Query {{ __typename{salt} }}"]
    fragments += [
        f"fragment F{level} on Query {{ {' '.join([f'...F{level - 1}'] * width)} }}"
        for level in range(1, levels)
    ]
    return f"query {{ ...F{levels - 1} }} " + " ".join(fragments)


def aliased_fan(levels: int, salt: str = "") -> str:
    """A fan whose bottom fragment has two aliases: 2 * 3 ** (levels - 1) once expanded."""
    return fragment_fan(levels, salt=salt).replace(
        f"__typename{salt}", f"a: __typename{salt} b: __typename"
    )


def introspection_nest(depth: int, salt: str = "") -> str:
    """Introspection types nest without end (`ofType`); their depth is not counted."""
    return (
        f'{{ __type(name: "Job{salt}") {{ ' + "ofType { " * depth + "name " + "} " * depth + "} }"
    )


def directive_flood(count: int, salt: str = "") -> str:
    return "{ __typename" + salt + " @skip(if: false)" * count + " }"


def inline_fragment_nest(depth: int, salt: str = "") -> str:
    return "{ " + "... on Query { " * depth + f"__typename{salt} " + "} " * depth + "}"


def inline_fragment_list(count: int, salt: str = "") -> str:
    return "{ " + f"... on Query {{ __typename{salt} }} " * count + "}"


def variable_list(count: int, salt: str = "") -> str:
    variables = " ".join(f"$v{i}: ID" for i in range(count))
    return f"query Q{salt}({variables}) {{ __typename }}"


def repeated_field(count: int, salt: str = "") -> str:
    """The same field over and over: graphql-core compares fields of one name pairwise."""
    return "{ " + f"__typename{salt} " + "__typename " * (count - 1) + "}"


def nested_lists(depth: int, salt: str = "") -> str:
    return "{ job(id: " + "[" * depth + f'"x{salt}"' + "]" * depth + ") { id } }"


def hostile_documents(salt: str = "") -> Iterator[tuple[str, str]]:
    """(name, document) of every kind above, at sizes up to what the token limit admits."""
    for levels in (10, 20, 31, 40):
        yield f"fragment fan {levels}", fragment_fan(levels, salt=salt)
    yield "fragment fan, width 2", fragment_fan(31, width=2, salt=salt)
    yield "aliased fan", aliased_fan(12, salt=salt)
    yield "introspection nested", introspection_nest(190, salt=salt)
    yield "directive flood", directive_flood(190, salt=salt)
    yield "inline fragments nested", inline_fragment_nest(190, salt=salt)
    yield "inline fragments listed", inline_fragment_list(190, salt=salt)
    yield "variable list", variable_list(240, salt=salt)
    yield "repeated field", repeated_field(990, salt=salt)
    yield "repeated field, under the field limit", repeated_field(120, salt=salt)
    yield "nested lists", nested_lists(190, salt=salt)
