"""Backend-neutral filters in the shape of Qdrant's filter JSON, and their meaning in plain Python.

    {"must": [...], "should": [...], "must_not": [...]}       each a list of conditions:
    {"key": "price", "range": {"gte": 10, "lt": 50}}          numbers, or datetimes as RFC 3339 strings
    {"key": "brand", "match": {"value": "acme"}}               also {"any": [...]}, {"except": [...]}
    {"key": "where", "geo_radius": {"center": {"lat": 38.7, "lon": -9.1}, "radius": 5000}}  metres
    {"is_empty": {"key": "brand"}}                             missing, null or []
    {"has_id": ["<uuid>", ...]}
    {"has_vector": "<vector name>"}
    a nested filter                                            {"must": [...], ...}

Two levels: a *query filter* names declared fields (`price`); `Filter.resolve(schema)` checks it
against the collection's schema (declared, and a condition that fits the field's type) and gives
the *store filter*, whose keys are payload paths (`metadata.price`), which every backend pushes
down natively. `matches` is the reference meaning of a store filter, the one the backends must
agree with (the contract tests compare each backend against it). Array values match when any
element does, as in Qdrant.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from indexer.errors import InvalidFilter, SchemaError
from indexer.limits import check_depth
from indexer.schema import CollectionSchema, payload_path
from indexer.settings import LimitsSettings

EARTH_RADIUS_M = 6_371_008.8
Scalar = str | int | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MatchValue(_Strict):
    value: Scalar


class MatchAny(_Strict):
    any: list[Scalar]


class MatchExcept(_Strict):
    except_: list[Scalar] = Field(alias="except")


_GIVEN: dict[str, Any] = {"not": {"type": "null"}}


def _some_of(names: tuple[str, ...], exactly_one: bool) -> dict[str, Any]:
    """JSON schema saying that some (or exactly one) of these properties is given, not null: what the
    validators below enforce, in the schema the API publishes."""
    branches = [{"required": [n], "properties": {n: _GIVEN}} for n in names]
    return {"oneOf" if exactly_one else "anyOf": branches}


class Range(_Strict):
    """Bounds on a number or a datetime (RFC 3339 string); at least one."""

    model_config = ConfigDict(json_schema_extra=_some_of(("gt", "gte", "lt", "lte"), exactly_one=False))

    gt: float | str | None = None
    gte: float | str | None = None
    lt: float | str | None = None
    lte: float | str | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("range needs at least one of gt, gte, lt, lte")
        return self

    def bounds(self) -> dict[str, float | str]:
        return {
            k: v
            for k, v in (("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte))
            if v is not None
        }


class GeoPoint(_Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class GeoRadius(_Strict):
    center: GeoPoint
    radius: float = Field(gt=0, description="Metres.")


def _member_by_key(members: dict[str, str], default: str) -> Any:
    """A discriminator picking a union member (tagged with its class name) by which key the input
    has, so an error says what is wrong with the member meant, not with every member."""

    def member(data: Any) -> str:
        if isinstance(data, dict):
            return next((tag for key, tag in members.items() if key in data), default)
        return type(data).__name__

    return Discriminator(member)


# Class names (the union tags) and scalar type names are pydantic's, not the user's: kept out of
# the location an error message shows.
_NOT_A_LOCATION = {
    "MatchValue",
    "MatchAny",
    "MatchExcept",
    "FieldCondition",
    "IsEmptyCondition",
    "HasIdCondition",
    "HasVectorCondition",
    "Filter",
    "str",
    "int",
    "bool",
    "float",
}

Match = Annotated[
    Annotated[MatchValue, Tag("MatchValue")]
    | Annotated[MatchAny, Tag("MatchAny")]
    | Annotated[MatchExcept, Tag("MatchExcept")],
    _member_by_key({"any": "MatchAny", "except": "MatchExcept"}, "MatchValue"),
]


class FieldCondition(_Strict):
    """A condition on one field: exactly one of match, range, geo_radius."""

    model_config = ConfigDict(json_schema_extra=_some_of(("match", "range", "geo_radius"), exactly_one=True))

    key: str
    match: Match | None = None
    range: Range | None = None
    geo_radius: GeoRadius | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> FieldCondition:
        given = [n for n in ("match", "range", "geo_radius") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"condition on {self.key!r} needs exactly one of match, range, geo_radius")
        return self


class IsEmptyKey(_Strict):
    key: str


class IsEmptyCondition(_Strict):
    is_empty: IsEmptyKey


class HasIdCondition(_Strict):
    has_id: list[str]


class HasVectorCondition(_Strict):
    has_vector: str


Condition = Annotated[
    Annotated[FieldCondition, Tag("FieldCondition")]
    | Annotated[IsEmptyCondition, Tag("IsEmptyCondition")]
    | Annotated[HasIdCondition, Tag("HasIdCondition")]
    | Annotated[HasVectorCondition, Tag("HasVectorCondition")]
    | Annotated["Filter", Tag("Filter")],
    _member_by_key(
        {
            "key": "FieldCondition",
            "is_empty": "IsEmptyCondition",
            "has_id": "HasIdCondition",
            "has_vector": "HasVectorCondition",
        },
        "Filter",
    ),
]


class Filter(_Strict):
    """All of `must`, at least one of `should` (when given), none of `must_not`."""

    must: list[Condition] = Field(default_factory=list)
    should: list[Condition] = Field(default_factory=list)
    must_not: list[Condition] = Field(default_factory=list)

    @classmethod
    def parse(
        cls, data: Filter | dict[str, Any] | None, limits: LimitsSettings | None = None
    ) -> Filter | None:
        """A filter from its JSON shape; InvalidFilter saying what is wrong. With `limits`, also
        InvalidFilter when it is larger than they allow (`check_bounds`)."""
        if data is None:
            return None
        if not isinstance(data, Filter):
            if limits is not None:  # before validating: the validator recurses once per level
                check_depth(data, limits.json_depth, "filter")
            try:
                data = cls.model_validate(data)
            except ValidationError as exc:
                raise InvalidFilter(f"invalid filter: {_first_error(exc)}") from exc
        return data if limits is None else data.check_bounds(limits)

    def check_bounds(self, limits: LimitsSettings) -> Filter:
        """This filter, or InvalidFilter when it nests deeper (as JSON), has more conditions, more
        match.any/except values or more has_id ids than `limits` allow: counted without recursion,
        before any of it is resolved or sent to a store."""
        conditions = values = ids = deepest = 0
        stack: list[tuple[Any, int]] = [(self, 0)]
        while stack:
            condition, depth = stack.pop()
            if isinstance(condition, Filter):
                children = condition.conditions()
                conditions += len(children)
                deepest = max(deepest, depth + (2 if children else 1))  # the object and its lists
                stack.extend((child, depth + 2) for child in children)
                continue
            deepest = max(deepest, depth + _json_depth_of(condition))
            if isinstance(condition, HasIdCondition):
                ids += len(condition.has_id)
            elif isinstance(condition, FieldCondition) and isinstance(condition.match, MatchAny):
                values += len(condition.match.any)
            elif isinstance(condition, FieldCondition) and isinstance(condition.match, MatchExcept):
                values += len(condition.match.except_)
        for count, bound, what, variable in (
            (deepest, limits.json_depth, "levels deep", "CLIPSEARCH_LIMITS_JSON_DEPTH"),
            (conditions, limits.filter_conditions, "conditions", "CLIPSEARCH_LIMITS_FILTER_CONDITIONS"),
            (values, limits.filter_values, "match.any/except values", "CLIPSEARCH_LIMITS_FILTER_VALUES"),
            (ids, limits.ids, "has_id ids", "CLIPSEARCH_LIMITS_IDS"),
        ):
            if count > bound:
                raise InvalidFilter(f"filter too large: {count} {what}; the limit is {bound} ({variable})")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)

    def is_empty(self) -> bool:
        return not (self.must or self.should or self.must_not)

    def conditions(self) -> list[Condition]:
        return [*self.must, *self.should, *self.must_not]

    def resolve(self, schema: CollectionSchema) -> Filter:
        """The store filter for this query filter: keys checked against the schema and turned into
        payload paths, datetimes normalised to RFC 3339 UTC, ids canonical. InvalidFilter otherwise."""
        return Filter(
            must=[_resolve(c, schema) for c in self.must],
            should=[_resolve(c, schema) for c in self.should],
            must_not=[_resolve(c, schema) for c in self.must_not],
        )


Filter.model_rebuild()


def _json_depth_of(condition: Any) -> int:
    """How deeply a condition other than a filter nests as JSON."""
    if isinstance(condition, FieldCondition):
        if condition.range is not None:
            return 2  # {"key", "range": {...}}
        return 3  # {"match": {"any": [...]}}, {"geo_radius": {"center": {...}}}
    if isinstance(condition, HasVectorCondition):
        return 1
    return 2  # {"has_id": [...]}, {"is_empty": {"key"}}


def both(first: Filter | None, second: Filter | None) -> Filter | None:
    """A filter that needs both (either may be None)."""
    if first is None or first.is_empty():
        return second
    if second is None or second.is_empty():
        return first
    return Filter(must=[first, second])


# --- resolving a query filter against a schema -----------------------------------------------------


_KINDS_FOR = {
    "match": {"keyword", "integer", "bool", "text"},
    "range": {"integer", "float", "datetime"},
    "geo_radius": {"geo"},
}


def _resolve(condition: Condition, schema: CollectionSchema) -> Condition:
    if isinstance(condition, Filter):
        return condition.resolve(schema)
    if isinstance(condition, HasIdCondition):
        return HasIdCondition(has_id=[_canonical_id(i) for i in condition.has_id])
    if isinstance(condition, HasVectorCondition):
        schema.vector(condition.has_vector)
        return condition
    if isinstance(condition, IsEmptyCondition):
        _declared(schema, condition.is_empty.key)
        return IsEmptyCondition(is_empty=IsEmptyKey(key=payload_path(condition.is_empty.key)))
    kind = _declared(schema, condition.key)
    used = next(n for n in ("match", "range", "geo_radius") if getattr(condition, n) is not None)
    if kind not in _KINDS_FOR[used]:
        raise InvalidFilter(f"field {condition.key!r} is {kind}: {used} does not apply to it")
    resolved = condition.model_copy(update={"key": payload_path(condition.key)})
    if condition.range is not None:
        convert = _datetime_text if kind == "datetime" else _number
        bounds = {op: convert(value, condition.key) for op, value in condition.range.bounds().items()}
        resolved = resolved.model_copy(update={"range": Range(**bounds)})
    if condition.match is not None:
        resolved = resolved.model_copy(update={"match": _typed_match(condition.match, kind, condition.key)})
    return resolved


def _declared(schema: CollectionSchema, key: str) -> str:
    try:
        return schema.field_type(key)
    except SchemaError as exc:
        raise InvalidFilter(str(exc)) from exc


def _typed_match(match: MatchValue | MatchAny | MatchExcept, kind: str, key: str) -> Any:
    def typed(value: Scalar) -> Scalar:
        if kind == "integer":
            if isinstance(value, bool):  # an int to Python, never equal to a number in a store
                raise InvalidFilter(f"field {key!r} is integer: {value!r} is not a number")
            if isinstance(value, int):
                return value
            with contextlib.suppress(ValueError):
                return int(value)  # "42", exactly, however large
            number = _number(value, key)
            if not number.is_integer():
                raise InvalidFilter(f"field {key!r} is integer: {value!r} is not a whole number")
            return int(number)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false"):
                raise InvalidFilter(f"field {key!r} is bool: use true or false, not {value!r}")
            return text == "true"
        if kind in ("keyword", "text"):
            return str(value) if not isinstance(value, bool) else str(value).lower()
        return value

    if isinstance(match, MatchValue):
        return MatchValue(value=typed(match.value))
    if kind == "bool":
        raise InvalidFilter(f"field {key!r} is bool: match it with a value, not a list")
    if isinstance(match, MatchAny):
        return MatchAny(any=[typed(v) for v in match.any])
    return MatchExcept(except_=[typed(v) for v in match.except_])


def _number(value: float | str, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidFilter(f"field {key!r} is numeric: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidFilter(f"field {key!r}: {value!r} is not a finite number")
    return number


def parse_datetime(value: Any) -> datetime | None:
    """A datetime from an RFC 3339 / ISO 8601 string or a date (UTC when no zone); None if not one."""
    if not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_datetime(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, which every backend parses and orders the same way."""
    moment = moment.astimezone(timezone.utc)
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _datetime_text(value: float | str, key: str) -> str:
    parsed = parse_datetime(value)
    if parsed is None:
        raise InvalidFilter(f"field {key!r} is datetime: {value!r} is not a date or RFC 3339 datetime")
    return format_datetime(parsed)


def _canonical_id(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidFilter(f"has_id: {value!r} is not an item id (a UUID)") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    # Validator wrappers ("function-after[...]") and union tags are pydantic's, not the user's.
    where = ".".join(
        str(p)
        for p in error.get("loc", ())
        if p not in _NOT_A_LOCATION and not str(p).startswith("function-")
    )
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("loc", ())[-1:] in (("str",), ("int",), ("bool",)):  # no member of a match value's union
        message = "Input should be a string, an integer or a boolean"
    return f"{where}: {message}" if where else message


# --- the reference meaning of a store filter -----------------------------------------------------


def matches(
    store_filter: Filter | None, point_id: str, payload: dict[str, Any], vectors: frozenset[str] = frozenset()
) -> bool:
    """Whether a point passes a store filter (keys are payload paths). `vectors`: the names of the
    vectors the point has, for has_vector."""
    if store_filter is None:
        return True

    def check(condition: Condition) -> bool:
        return _condition(condition, point_id, payload, vectors)

    return (
        all(check(c) for c in store_filter.must)
        and (not store_filter.should or any(check(c) for c in store_filter.should))
        and not any(check(c) for c in store_filter.must_not)
    )


def values_at(payload: dict[str, Any], path: str) -> list[Any]:
    """The values at a dotted payload path, arrays flattened; [] when missing or null."""
    current: Any = payload
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return []
        current = current[part]
    if current is None:
        return []
    return [v for v in current if v is not None] if isinstance(current, list) else [current]


def _condition(condition: Condition, point_id: str, payload: dict[str, Any], vectors: frozenset[str]) -> bool:
    if isinstance(condition, Filter):
        return matches(condition, point_id, payload, vectors)
    if isinstance(condition, HasIdCondition):
        return point_id in condition.has_id
    if isinstance(condition, HasVectorCondition):
        return condition.has_vector in vectors
    if isinstance(condition, IsEmptyCondition):
        return not values_at(payload, condition.is_empty.key)
    values = values_at(payload, condition.key)
    if condition.match is not None:
        return _match(condition.match, values)
    if condition.range is not None:
        return any(_in_range(condition.range, v) for v in values)
    assert condition.geo_radius is not None
    return any(_within(condition.geo_radius, v) for v in values)


def _same(stored: Any, wanted: Scalar) -> bool:
    # bool is an int in Python; keep true from matching 1, as Qdrant does.
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    return stored == wanted


def _match(match: MatchValue | MatchAny | MatchExcept, values: list[Any]) -> bool:
    if isinstance(match, MatchValue):
        return any(_same(v, match.value) for v in values)
    if isinstance(match, MatchAny):
        return any(_same(v, w) for v in values for w in match.any)
    # except: some value that is none of the listed ones (a point without the field does not match)
    return any(not any(_same(v, w) for w in match.except_) for v in values)


def _in_range(bounds: Range, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        point: float | datetime = float(value)
        convert: Any = _float_or_none  # a number never passes a datetime bound (nor a date one a number)
    else:
        parsed = parse_datetime(value)
        if parsed is None:
            return False
        point, convert = parsed, parse_datetime
    for op, limit in bounds.bounds().items():
        bound = convert(limit)
        if bound is None:
            return False
        if (op == "gt" and not point > bound) or (op == "gte" and not point >= bound):
            return False
        if (op == "lt" and not point < bound) or (op == "lte" and not point <= bound):
            return False
    return True


def _float_or_none(value: float | str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _within(radius: GeoRadius, value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    lat, lon = value.get("lat"), value.get("lon")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lat, lon)):
        return False  # not a geo point: it matches no radius
    return haversine_m(radius.center.lat, radius.center.lon, lat, lon) <= radius.radius


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))
