"""The --where / --near grammar (indexer/search/where.py): every form gives the query filter it documents,
the filter keeps exactly the points the reference meaning says, and a bad expression is refused
with the column of the bad token and a caret under it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from indexer.errors import InvalidFilter
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.search.where import parse_expression, tokens, where_filter
from indexer.stores.filters import Filter, matches
from tests.helpers import PAYLOAD_FIELDS, random_payloads

FIELDS = {**PAYLOAD_FIELDS, "title": "text"}
SCHEMA = CollectionSchema.new(ModelIdentity("t", "", "t", "", 4), fields=dict(FIELDS))  # type: ignore[arg-type]

FORMS: dict[str, dict[str, Any]] = {
    "brand = acme": {"key": "brand", "match": {"value": "acme"}},
    "brand == acme": {"key": "brand", "match": {"value": "acme"}},
    "brand=acme": {"key": "brand", "match": {"value": "acme"}},
    "brand != acme": {"key": "brand", "match": {"except": ["acme"]}},
    "price < 50": {"key": "price", "range": {"lt": "50"}},
    "price<=50.5": {"key": "price", "range": {"lte": "50.5"}},
    "stock > 3": {"key": "stock", "range": {"gt": "3"}},
    "stock >= 3": {"key": "stock", "range": {"gte": "3"}},
    "when >= 2024-06-01": {"key": "when", "range": {"gte": "2024-06-01"}},
    "when < 2024-06-01T12:00:00+02:00": {"key": "when", "range": {"lt": "2024-06-01T12:00:00+02:00"}},
    "brand in (acme, bolt)": {"key": "brand", "match": {"any": ["acme", "bolt"]}},
    "brand IN (acme)": {"key": "brand", "match": {"any": ["acme"]}},
    "tags not in (red, 'gold')": {"key": "tags", "match": {"except": ["red", "gold"]}},
    "brand is empty": {"is_empty": {"key": "brand"}},
    "brand is not empty": {"must_not": [{"is_empty": {"key": "brand"}}]},
    'title = "red dress"': {"key": "title", "match": {"value": "red dress"}},
    "title = 'it''s'": None,  # two quoted values in a row: refused below
    'brand = "a \\"quoted\\" (b, c)"': {"key": "brand", "match": {"value": 'a "quoted" (b, c)'}},
    "new = true": {"key": "new", "match": {"value": "true"}},
    "new != true": {"key": "new", "match": {"value": "false"}},
    "price = 12.5": {"key": "price", "range": {"gte": "12.5", "lte": "12.5"}},
    "stock = 3": {"key": "stock", "match": {"value": "3"}},
    "brand = in": {"key": "brand", "match": {"value": "in"}},  # operator words are values after the operator
}


@pytest.mark.parametrize("expression", [e for e, c in FORMS.items() if c is not None])
def test_each_form_gives_the_documented_condition(expression: str) -> None:
    built = where_filter([expression], fields=FIELDS)
    assert built is not None
    assert built.to_json() == {"must": [FORMS[expression]]}
    # without the fields the grammar gives the same (floats aside, whose `=` needs the type)
    if not expression.startswith(("price =", "new !=")):
        assert where_filter([expression]) == built


@pytest.mark.parametrize("expression", [e for e, c in FORMS.items() if c is not None])
def test_each_form_keeps_what_the_reference_keeps(expression: str) -> None:
    """The parsed filter, resolved against the schema, agrees with a hand-written predicate."""
    payloads = random_payloads(np.random.default_rng(3), 300, PAYLOAD_FIELDS)
    store_filter = where_filter([expression], fields=FIELDS).resolve(SCHEMA)  # type: ignore[union-attr]
    kept = [matches(store_filter, str(i), p) for i, p in enumerate(payloads)]
    assert 0 <= sum(kept) <= len(payloads)
    predicate = _PREDICATES.get(expression)
    if predicate is not None:
        assert kept == [predicate(_values(p, expression.split()[0].split("=")[0].split("<")[0]))
                        for p in payloads]


def _values(payload: dict[str, Any], field: str) -> list[Any]:
    value = payload["metadata"].get(field)
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


_PREDICATES = {
    "brand = acme": lambda vs: "acme" in vs,
    "brand != acme": lambda vs: any(v != "acme" for v in vs),
    "price < 50": lambda vs: any(v < 50 for v in vs),
    "stock >= 3": lambda vs: any(v >= 3 for v in vs),
    "brand in (acme, bolt)": lambda vs: any(v in ("acme", "bolt") for v in vs),
    "tags not in (red, 'gold')": lambda vs: any(v not in ("red", "gold") for v in vs),
    "brand is empty": lambda vs: not vs,
    "brand is not empty": lambda vs: bool(vs),
    "new = true": lambda vs: True in vs,
    "new != true": lambda vs: False in vs,
}


def test_several_wheres_are_anded_and_near_adds_a_radius() -> None:
    built = where_filter(["brand = acme", "price < 50"], near="38.72,-9.14,5", fields=FIELDS)
    assert built is not None
    assert built.to_json() == {"must": [
        {"key": "brand", "match": {"value": "acme"}},
        {"key": "price", "range": {"lt": "50"}},
        {"key": "where", "geo_radius": {"center": {"lat": 38.72, "lon": -9.14}, "radius": 5000.0}},
    ]}
    assert where_filter([]) is None


def test_near_uses_the_one_geo_field_or_the_one_named() -> None:
    two = {**FIELDS, "shop": "geo"}
    with pytest.raises(InvalidFilter, match="2 geo fields.*--near-field"):
        where_filter([], near="1,2,3", fields=two)
    built = where_filter([], near="1,2,3", near_field="shop", fields=two)
    assert built is not None and built.must[0].key == "shop"  # type: ignore[union-attr]
    with pytest.raises(InvalidFilter, match="not a geo field"):
        where_filter([], near="1,2,3", near_field="brand", fields=FIELDS)
    for bad in ("1,2", "a,b,c", "91,0,1", "0,181,1", "0,0,0", "0,0,-1"):
        with pytest.raises(InvalidFilter, match="--near"):
            where_filter([], near=bad, fields=FIELDS)


# expression, column (1-based) of the caret, words of the message
ERRORS = [
    ("price << 50", 8, "expected a value after '<'"),
    ("price < abc", 9, "not a number"),
    ("colour = red", 1, "not declared"),
    ("brand < 3", 7, "compares numbers and dates"),
    ("where = 3", 7, "use --near"),
    ("brand in (a, b", 15, "expected , or )"),
    ("brand in a", 10, "expected ( and a list"),
    ("brand in ()", 11, "expected a value in the list"),
    ("brand in (a,,b)", 13, "expected a value in the list"),
    ("brand in (a) x", 14, "after the list"),
    ("", 1, "empty expression"),
    ("brand = 'x", 9, "never closed"),
    ("brand = a b", 11, "quote a value with spaces"),
    ("9x = 1", 1, "expected a field name"),
    ("brand", 6, "expected an operator"),
    ("brand ~ acme", 7, "expected an operator"),
    ("brand is full", 7, "expected an operator"),
    ("brand is empty now", 16, "unexpected 'now'"),
    ("when > 2024-13-01", 8, "not a date"),
    ("stock = 1.5", 9, "not a whole number"),
    ("stock in (1, x, 3)", 14, "not a number"),
    ("new = maybe", 7, "true or false"),
    ("price in (1, 2)", 7, "does not apply"),
    ("title = 'it''s'", 13, "after the value"),
]


@pytest.mark.parametrize(("expression", "column", "words"), ERRORS)
def test_a_bad_expression_points_at_its_bad_token(expression: str, column: int, words: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        where_filter([expression], fields=FIELDS)
    message = str(caught.value)
    first, shown, caret = message.split("\n")
    assert first.startswith(f"--where {expression!r}, column {column}: ")
    assert words in first
    assert shown == f"  {expression}"
    assert caret == "  " + " " * (column - 1) + "^"


def test_grammar_errors_come_without_the_schema_too() -> None:
    """The grammar alone (a remote collection's fields unknown) still points at the token."""
    with pytest.raises(InvalidFilter, match="column 8"):
        where_filter(["price << 50"])
    with pytest.raises(InvalidFilter, match="not declared"):  # then the schema refuses it, plainly
        Filter.parse(where_filter(["colour = red"])).resolve(SCHEMA)  # type: ignore[union-attr]


def test_tokens_and_positions() -> None:
    assert [(t.kind, t.text, t.column) for t in tokens("a>=1")] == [
        ("name", "a", 0), ("op", ">=", 1), ("value", "1", 3), ("end", "", 4)]
    parsed = parse_expression("brand not in ( 'x y' , z )")
    assert parsed.op.text == "not in" and [v.text for v in parsed.values] == ["x y", "z"]
    assert [v.column for v in parsed.values] == [15, 23]
