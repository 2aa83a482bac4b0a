"""Filters: parsing (readable InvalidFilter), resolving against a schema, and `matches`, the reference
meaning every store backend must agree with (tests/test_store_contract.py holds them to it)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from indexer.errors import InvalidFilter, VectorNotFound
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec
from indexer.stores.filters import (
    Filter,
    both,
    format_datetime,
    haversine_m,
    matches,
    parse_datetime,
    values_at,
)

MODEL = ModelIdentity("tiny", "", "tiny", "", 8)
SCHEMA = CollectionSchema.new(
    MODEL,
    fields={"brand": "keyword", "stock": "integer", "price": "float", "new": "bool", "when": "datetime",
            "where": "geo", "title": "text"},
).with_vector(VectorSpec("large", ModelIdentity("big", "", "big", "", 16)))
ID = str(uuid.UUID(int=1))


def parse(data: Any) -> Filter:
    parsed = Filter.parse(data)
    assert parsed is not None
    return parsed


def resolved(data: Any) -> dict[str, Any]:
    return parse(data).resolve(SCHEMA).to_json()


def passes(store_filter: Any, metadata: dict[str, Any] | None = None, *, point_id: str = ID,
           vectors: frozenset[str] = frozenset()) -> bool:
    payload = {"uri": "/x.jpg", "metadata": {} if metadata is None else metadata}
    return matches(parse(store_filter), point_id, payload, vectors)


def on(key: str, **condition: Any) -> dict[str, Any]:
    """A store filter with one must condition on metadata.<key>."""
    return {"must": [{"key": f"metadata.{key}", **condition}]}


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_accepts_the_qdrant_filter_shape_and_round_trips_it() -> None:
    data = {
        "must": [
            {"key": "brand", "match": {"value": "acme"}},
            {"key": "stock", "match": {"any": [1, 2]}},
            {"key": "brand", "match": {"except": ["x"]}},
            {"key": "price", "range": {"gte": 10, "lt": 50.5}},
            {"key": "when", "range": {"gt": "2024-01-01T00:00:00Z"}},
            {"key": "where", "geo_radius": {"center": {"lat": 38.7, "lon": -9.1}, "radius": 5000.0}},
            {"is_empty": {"key": "title"}},
            {"has_id": [ID]},
            {"has_vector": "large"},
            {"should": [{"key": "new", "match": {"value": True}}],
             "must_not": [{"is_empty": {"key": "brand"}}]},
        ],
    }
    assert parse(data).to_json() == data
    assert Filter.parse(None) is None
    already = parse({"must": []})
    assert Filter.parse(already) is already and already.is_empty()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"musts": []}, "musts: Extra inputs are not permitted"),
        ({"must": "brand"}, "must: Input should be a valid list"),
        ([1], "Input should be a valid dictionary"),
        ({"must": [{"key": "a"}]}, "must.0: condition on 'a' needs exactly one of match, range, geo_radius"),
        ({"must": [{"key": "a", "match": {"value": 1}, "range": {"gt": 1}}]}, "must.0: condition on 'a'"),
        ({"must": [{"key": "a", "range": {}}]}, "must.0.range: range needs at least one of gt, gte, lt, lte"),
        ({"must": [{"key": "a", "match": {"values": 1}}]}, "must.0.match.value: Field required"),
        ({"must": [{"key": "a", "match": {"value": 1.5}}]}, "must.0.match.value: Input should be a string"),
        ({"must": [{"key": "a", "match": {"any": "x"}}]}, "must.0.match.any: Input should be a valid list"),
        ({"must": [{"key": "a", "match": {"except": [[1]]}}]}, "must.0.match.except.0: Input should"),
        ({"should": [{"key": "a", "geo_radius": {"center": {"lat": 91, "lon": 0}, "radius": 1}}]},
         "should.0.geo_radius.center.lat: Input should be less than or equal to 90"),
        ({"must": [{"key": "a", "geo_radius": {"center": {"lat": 0, "lon": 0}, "radius": 0}}]},
         "must.0.geo_radius.radius: Input should be greater than 0"),
        ({"must": [{"has_id": "abc"}]}, "must.0.has_id: Input should be a valid list"),
        ({"must": [{"has_vector": 3}]}, "must.0.has_vector: Input should be a valid string"),
        ({"must": [{"is_empty": {}}]}, "must.0.is_empty.key: Field required"),
        ({"must": [{"colour": "red"}]}, "must.0.colour: Extra inputs are not permitted"),
        ({"must_not": [{"should": [{"key": "a"}]}]}, "must_not.0.should.0: condition on"),
    ],
)
def test_parse_errors_are_invalid_filter_saying_where_and_what(data: Any, message: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        Filter.parse(data)
    assert str(caught.value).startswith(f"invalid filter: {message}")
    assert "function-after" not in str(caught.value) and "FieldCondition" not in str(caught.value)
    assert caught.value.kind.value == "bad input"


# --- resolving against a schema -------------------------------------------------------------------


def test_resolve_turns_field_names_into_payload_paths_at_every_depth() -> None:
    assert resolved({"must": [{"key": "brand", "match": {"value": "acme"}}],
                     "should": [{"must_not": [{"is_empty": {"key": "title"}}]}]}) == {
        "must": [{"key": "metadata.brand", "match": {"value": "acme"}}],
        "should": [{"must_not": [{"is_empty": {"key": "metadata.title"}}]}],
    }


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"key": "colour", "match": {"value": "red"}}, r"'colour' is not declared.*\(declared: brand,"),
        ({"is_empty": {"key": "colour"}}, "field 'colour' is not declared"),
        ({"key": "price", "match": {"value": 3}}, "field 'price' is float: match does not apply to it"),
        ({"key": "brand", "range": {"gt": 1}}, "field 'brand' is keyword: range does not apply to it"),
        ({"key": "new", "range": {"gt": 1}}, "field 'new' is bool: range does not apply"),
        ({"key": "where", "match": {"value": "x"}}, "field 'where' is geo: match does not apply"),
        ({"key": "stock", "geo_radius": {"center": {"lat": 0, "lon": 0}, "radius": 1}}, "geo_radius does"),
        ({"key": "stock", "match": {"value": "many"}}, "field 'stock' is numeric: 'many' is not a number"),
        ({"key": "stock", "match": {"value": "2.5"}}, "'stock' is integer: '2.5' is not a whole number"),
        ({"key": "stock", "match": {"value": True}}, "field 'stock' is integer: True is not a number"),
        ({"key": "stock", "match": {"any": [1, "inf"]}}, "field 'stock': 'inf' is not a finite number"),
        ({"key": "new", "match": {"value": "yes"}}, "field 'new' is bool: use true or false, not 'yes'"),
        ({"key": "new", "match": {"any": [True]}}, "field 'new' is bool: match it with a value, not a list"),
        ({"key": "price", "range": {"gt": "cheap"}}, "field 'price' is numeric: 'cheap' is not a number"),
        ({"key": "price", "range": {"gt": "nan"}}, "field 'price': 'nan' is not a finite number"),
        ({"key": "when", "range": {"gt": "yesterday"}}, "'when' is datetime: 'yesterday' is not a date"),
        ({"key": "when", "range": {"gt": 1700000000}}, "field 'when' is datetime"),
        ({"has_id": ["not-an-id"]}, "has_id: 'not-an-id' is not an item id"),
    ],
)
def test_resolve_refuses_what_does_not_fit_the_schema(condition: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        parse({"must": [{"should": [condition]}]}).resolve(SCHEMA)


def test_resolve_of_an_unknown_vector_names_the_vectors_there_are() -> None:
    assert resolved({"must": [{"has_vector": "large"}]}) == {"must": [{"has_vector": "large"}]}
    with pytest.raises(VectorNotFound, match="no vector 'small'.*default, large"):
        parse({"must": [{"has_vector": "small"}]}).resolve(SCHEMA)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2024-03-01", "2024-03-01T00:00:00Z"),
        ("2024-03-01T10:30:00", "2024-03-01T10:30:00Z"),  # no zone: UTC
        ("2024-03-01T10:30:00+02:00", "2024-03-01T08:30:00Z"),
        ("2024-03-01T00:30:00-01:00", "2024-03-01T01:30:00Z"),
        ("2024-03-01T10:30:00.25Z", "2024-03-01T10:30:00.250000Z"),
        ("2024-03-01 10:30:00z", "2024-03-01T10:30:00Z"),
    ],
)
def test_resolve_normalises_datetimes_to_rfc3339_utc(given: str, stored: str) -> None:
    got = resolved({"must": [{"key": "when", "range": {"gte": given, "lt": given}}]})
    assert got["must"][0]["range"] == {"gte": stored, "lt": stored}


def test_resolve_types_match_values_by_the_fields_type() -> None:
    got = resolved({"must": [
        {"key": "stock", "match": {"value": "42"}},
        {"key": "stock", "match": {"any": [1, "2", "3.0", "12345678901234567890"]}},
        {"key": "stock", "match": {"except": ["7"]}},
        {"key": "new", "match": {"value": "TRUE"}},
        {"key": "new", "match": {"value": False}},
        {"key": "brand", "match": {"value": 5}},
        {"key": "brand", "match": {"any": [True, "x"]}},
        {"key": "title", "match": {"value": "red shoe"}},
    ]})["must"]
    assert [c["match"] for c in got] == [
        {"value": 42},
        {"any": [1, 2, 3, 12345678901234567890]},
        {"except": [7]},
        {"value": True},
        {"value": False},
        {"value": "5"},
        {"any": ["true", "x"]},
        {"value": "red shoe"},
    ]
    assert type(got[0]["match"]["value"]) is int and type(got[3]["match"]["value"]) is bool


def test_resolve_makes_numeric_range_bounds_numbers() -> None:
    got = resolved({"must": [{"key": "price", "range": {"gt": "9.5", "lte": 20}},
                             {"key": "stock", "range": {"gte": 3}}]})["must"]
    assert got[0]["range"] == {"gt": 9.5, "lte": 20.0} and got[1]["range"] == {"gte": 3.0}


def test_resolve_canonicalises_ids() -> None:
    upper = str(uuid.UUID(int=255)).upper()
    bare = uuid.UUID(int=256).hex
    got = resolved({"must": [{"has_id": [upper, bare, "{" + ID + "}"]}]})
    assert got == {"must": [{"has_id": [str(uuid.UUID(int=255)), str(uuid.UUID(int=256)), ID]}]}


def test_resolve_keeps_geo_and_leaves_the_query_filter_alone() -> None:
    query = parse({"must": [{"key": "where", "geo_radius": {"center": {"lat": 1, "lon": 2}, "radius": 3}}]})
    assert query.resolve(SCHEMA).to_json()["must"][0] == {
        "key": "metadata.where", "geo_radius": {"center": {"lat": 1.0, "lon": 2.0}, "radius": 3.0}}
    assert query.to_json()["must"][0]["key"] == "where"


def test_both_combines_two_filters_either_of_which_may_be_missing() -> None:
    a, b = parse(on("brand", match={"value": "a"})), parse({"must": [{"has_id": [ID]}]})
    assert both(None, b) is b and both(a, None) is a and both(Filter(), b) is b and both(None, None) is None
    assert both(a, b) == Filter(must=[a, b])


# --- matches: the reference meaning ----------------------------------------------------------------


def test_no_filter_and_an_empty_filter_match_everything() -> None:
    assert matches(None, ID, {}) and passes({}, {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("acme", True), ("other", False), (["x", "acme"], True), (["x", "y"], False), ([], False),
     (None, False)],
)
def test_match_value_matches_when_the_value_or_any_array_element_equals(value: Any, expected: bool) -> None:
    assert passes(on("brand", match={"value": "acme"}), {"brand": value}) is expected
    assert passes(on("brand", match={"value": "acme"}), {}) is False  # missing


def test_match_any_and_except() -> None:
    any_of = on("brand", match={"any": ["a", "b"]})
    assert passes(any_of, {"brand": "b"}) and passes(any_of, {"brand": ["z", "a"]})
    assert not passes(any_of, {"brand": "c"}) and not passes(any_of, {"brand": []}) and not passes(any_of, {})

    none_of = on("brand", match={"except": ["a", "b"]})
    assert passes(none_of, {"brand": "c"}) and not passes(none_of, {"brand": "a"})
    assert passes(none_of, {"brand": ["a", "c"]})  # some value that is not listed
    assert not passes(none_of, {"brand": ["a", "b"]})
    for absent in ({}, {"brand": None}, {"brand": []}):  # nothing there: no value to be "other"
        assert not passes(none_of, absent)


def test_booleans_and_integers_never_match_each_other() -> None:
    assert passes(on("new", match={"value": True}), {"new": True})
    assert not passes(on("new", match={"value": True}), {"new": 1})
    assert not passes(on("stock", match={"value": 1}), {"stock": True})
    assert not passes(on("stock", match={"value": 0}), {"stock": False})
    assert passes(on("stock", match={"any": [0, 1]}), {"stock": [False, 1]})
    assert passes(on("stock", match={"except": [1]}), {"stock": [1, 2]})
    assert not passes(on("new", match={"except": [True]}), {"new": True})
    assert passes(on("new", match={"except": [True]}), {"new": False})


@pytest.mark.parametrize(
    ("bounds", "inside", "outside"),
    [
        ({"gt": 10}, [10.5, 11], [10, 9]),
        ({"gte": 10}, [10, 10.0, 11], [9.99]),
        ({"lt": 10}, [9, -1e9], [10, 11]),
        ({"lte": 10}, [10, 9.5], [10.001]),
        ({"gt": 1, "lte": 3}, [1.5, 3], [1, 3.5]),
    ],
)
def test_range_bounds_on_numbers(bounds: dict[str, float], inside: list[float], outside: list[float]) -> None:
    for value in inside:
        assert passes(on("price", range=bounds), {"price": value}), value
    for value in outside:
        assert not passes(on("price", range=bounds), {"price": value}), value


def test_range_on_arrays_needs_one_element_inside_and_ignores_what_is_not_a_number() -> None:
    between = on("price", range={"gte": 5, "lte": 6})
    assert passes(between, {"price": [1, 5.5, 9]})
    assert not passes(between, {"price": [1, 9]})  # no single element is inside, though 1 < 5 and 9 > 6
    for other in ({}, {"price": None}, {"price": []}, {"price": True}, {"price": "5.5"}):
        assert not passes(between, other), other


def test_range_on_datetimes_compares_instants_whatever_the_stored_zone() -> None:
    after = on("when", range={"gte": "2024-03-01T00:00:00Z"})
    assert passes(after, {"when": "2024-03-01T01:00:00+01:00"})  # the same instant
    assert not passes(after, {"when": "2024-03-01T00:30:00+01:00"})
    assert passes(after, {"when": "2024-03-01"}) and not passes(after, {"when": "2024-02-29"})
    assert passes(after, {"when": ["2023-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]})
    assert not passes(after, {"when": "not a date"}) and not passes(after, {"when": 1e12})
    before = on("when", range={"lt": "2024-03-01T00:00:00.5Z"})
    assert passes(before, {"when": "2024-03-01T00:00:00.499Z"})
    assert not passes(before, {"when": "2024-03-01T00:00:00.5Z"})


def test_geo_radius_uses_great_circle_distance_in_metres() -> None:
    lisbon, porto = {"lat": 38.7223, "lon": -9.1393}, {"lat": 41.1579, "lon": -8.6291}
    distance = haversine_m(lisbon["lat"], lisbon["lon"], porto["lat"], porto["lon"])
    assert 273_000 < distance < 276_000  # about 274 km
    near = on("where", geo_radius={"center": lisbon, "radius": distance + 1})
    assert passes(near, {"where": porto}) and passes(near, {"where": lisbon})
    assert passes(near, {"where": [{"lat": 0, "lon": 0}, porto]})
    too_small = on("where", geo_radius={"center": lisbon, "radius": distance - 1})
    assert not passes(too_small, {"where": porto})
    for other in ({}, {"where": None}, {"where": []}, {"where": "Porto"}, {"where": {"lat": 41.1}}):
        assert not passes(near, other), other


def test_geo_radius_across_the_antimeridian() -> None:
    east, west = {"lat": 0.0, "lon": 179.99}, {"lat": 0.0, "lon": -179.99}
    assert passes(on("where", geo_radius={"center": east, "radius": 3000}), {"where": west})


@pytest.mark.parametrize(
    ("metadata", "empty"),
    [({}, True), ({"brand": None}, True), ({"brand": []}, True), ({"brand": [None]}, True),
     ({"brand": ""}, False), ({"brand": "a"}, False), ({"brand": ["a"]}, False), ({"brand": 0}, False),
     ({"brand": False}, False)],
)
def test_is_empty_means_missing_null_or_no_values(metadata: dict[str, Any], empty: bool) -> None:
    assert passes({"must": [{"is_empty": {"key": "metadata.brand"}}]}, metadata) is empty
    assert passes({"must_not": [{"is_empty": {"key": "metadata.brand"}}]}, metadata) is not empty


def test_has_id_and_has_vector() -> None:
    other = str(uuid.UUID(int=2))
    assert passes({"must": [{"has_id": [other, ID]}]}) and not passes({"must": [{"has_id": [other]}]})
    assert passes({"must": [{"has_id": [other]}]}, point_id=other)
    assert passes({"must": [{"has_vector": "large"}]}, vectors=frozenset({"default", "large"}))
    assert not passes({"must": [{"has_vector": "large"}]}, vectors=frozenset({"default"}))


def test_must_should_and_must_not_combine_as_all_some_none() -> None:
    a = {"key": "metadata.brand", "match": {"value": "a"}}
    b = {"key": "metadata.stock", "match": {"value": 1}}
    should = {"should": [a, b]}
    assert passes(should, {"brand": "a"}) and passes(should, {"stock": 1})
    assert not passes(should, {"brand": "z"})
    must = {"must": [a, b]}
    assert passes(must, {"brand": "a", "stock": 1}) and not passes(must, {"brand": "a"})
    must_not = {"must_not": [a, b]}
    assert passes(must_not, {}) and not passes(must_not, {"stock": 1})
    no_stock = {"is_empty": {"key": "metadata.stock"}}
    mixed = {"must": [a], "should": [b, no_stock], "must_not": [{"has_id": [ID]}]}
    assert passes(mixed, {"brand": "a"}, point_id=str(uuid.UUID(int=9)))
    assert not passes(mixed, {"brand": "a"})  # excluded by id
    assert not passes(mixed, {"brand": "a", "stock": 2}, point_id=str(uuid.UUID(int=9)))  # no should holds


def test_nested_filters_are_conditions() -> None:
    either = {"should": [
        {"must": [{"key": "metadata.brand", "match": {"value": "a"}},
                  {"key": "metadata.stock", "range": {"gt": 5}}]},
        {"must_not": [{"is_empty": {"key": "metadata.title"}}]},
    ]}
    assert passes(either, {"brand": "a", "stock": 6}) and passes(either, {"title": "t"})
    assert not passes(either, {"brand": "a", "stock": 5})
    assert passes({"must_not": [either]}, {"brand": "a", "stock": 5})


def test_values_at_follows_dotted_paths_and_flattens_arrays() -> None:
    payload = {"metadata": {"a": [1, None, 2], "b": None, "c": {"d": "x"}}, "uri": "u"}
    assert values_at(payload, "metadata.a") == [1, 2]
    assert values_at(payload, "metadata.b") == [] and values_at(payload, "metadata.zz") == []
    assert values_at(payload, "metadata.c.d") == ["x"] and values_at(payload, "uri.x") == []


def test_datetime_helpers() -> None:
    assert parse_datetime("2024-03-01") is not None and parse_datetime(5) is None
    assert parse_datetime("nope") is None
    moment = parse_datetime("2024-03-01T10:00:00.000001+05:00")
    assert moment is not None and format_datetime(moment) == "2024-03-01T05:00:00.000001Z"
