"""Store filters as SQL: one SELECT giving the iids of the points that pass, for FAISS to search among.

must -> INTERSECT, should -> UNION, must_not -> EXCEPT (from all live points when nothing else
narrows them); each condition is a SELECT of the (live) iids it holds for. Field conditions read
the indexed `fields` table (db.py), so they agree with `indexer.stores.filters.matches` by construction:
the same flattening (`values_at`), the same datetime parsing, types kept apart (true is not 1),
`except` needing some other value, is_empty meaning no row. geo_radius narrows by a bounding box in
SQL, then keeps the exact haversine distance (the reference's own function, registered in SQLite).
A key without rows (an undeclared path, or a version-1 collection before its first write) is
evaluated by `matches` itself over the payloads.
Differences left: integers beyond 2**53 compare exactly in SQL, as floats in the reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from indexer.errors import InvalidFilter
from indexer.stores import filters
from indexer.stores.faiss_store.db import BOOL, GEO, GEO_ODD, NUMBER, STRING, Database, epoch_us

ALL = "SELECT iid FROM points"
NONE = "SELECT iid FROM points WHERE 0"
MAX_CONDITIONS = 400  # per list: SQLite allows 500 terms in one compound SELECT
_ROWS = "SELECT iid FROM fields WHERE field = ?"


@dataclass
class Context:
    db: Database
    fields: dict[str, str]  # payload path -> field name, for fields with rows in `fields`
    vectors: dict[str, str]  # schema vector name -> FROM source with columns vid, iid, vector


def compile_filter(
    store_filter: filters.Filter, context: Context, distinct: bool = True
) -> tuple[str, list[Any]]:
    """(sql, params) selecting the iids that pass; distinct=False lets an iid repeat (an array field
    gives one row per element), for callers that dedupe anyway. Conditions left to Python are
    registered with the database: call `context.db.clear_pending()` once the query has run."""
    params: list[Any] = []
    sql = _filter(store_filter, context, params)
    if distinct and not _compound(store_filter):  # one condition's rows: one per array element
        sql = f"SELECT DISTINCT iid FROM ({sql})"
    return sql, params


def _compound(flt: filters.Filter) -> bool:
    """Whether `_filter` makes a compound SELECT (whose rows are distinct) of this filter."""
    return len(flt.must) + bool(flt.should) != 1 or bool(flt.must_not)


def _filter(flt: filters.Filter, ctx: Context, params: list[Any]) -> str:
    for part in (flt.must, flt.should, flt.must_not):
        if len(part) > MAX_CONDITIONS:
            raise InvalidFilter(f"a filter list has {len(part)} conditions; at most {MAX_CONDITIONS}")
    # Every condition selects live points only, so the first one, not all points, is the start:
    # intersecting with every point would cost a scan of the collection per query.
    parts = [_condition(condition, ctx, params) for condition in flt.must]
    if flt.should:
        union = " UNION ".join(_condition(c, ctx, params) for c in flt.should)
        parts.append(f"SELECT iid FROM ({union})")
    sql = " INTERSECT ".join(parts) if parts else ALL
    for condition in flt.must_not:
        sql += " EXCEPT " + _condition(condition, ctx, params)
    return sql


def _condition(condition: filters.Condition, ctx: Context, params: list[Any]) -> str:
    """A simple SELECT of iids (a compound one wrapped), so that it can join a compound."""
    if isinstance(condition, filters.Filter):
        return f"SELECT iid FROM ({_filter(condition, ctx, params)})"
    if isinstance(condition, filters.HasIdCondition):
        params.append(json.dumps(condition.has_id))
        return "SELECT iid FROM points WHERE uuid IN (SELECT value FROM json_each(?))"
    if isinstance(condition, filters.HasVectorCondition):
        source = ctx.vectors.get(condition.has_vector)
        return NONE if source is None else f"SELECT iid FROM {source}"
    key = condition.is_empty.key if isinstance(condition, filters.IsEmptyCondition) else condition.key
    name = ctx.fields.get(key)
    if name is None:
        params.append(ctx.db.python_match(filters.Filter(must=[condition])))
        return "SELECT iid FROM points WHERE clip_match(?, payload)"
    if isinstance(condition, filters.IsEmptyCondition):
        params.append(name)
        return f"SELECT iid FROM ({ALL} EXCEPT {_ROWS})"
    if condition.match is not None:
        return _match(condition.match, name, params)
    if condition.range is not None:
        return _range(condition, name, params)
    return _geo(condition, name, params)


def _match(
    match: filters.MatchValue | filters.MatchAny | filters.MatchExcept, name: str, params: list[Any]
) -> str:
    wanted = (
        [match.value]
        if isinstance(match, filters.MatchValue)
        else match.any
        if isinstance(match, filters.MatchAny)
        else match.except_
    )
    groups = _groups(wanted)
    if isinstance(match, filters.MatchExcept):  # some value equal to none of them
        equal = " OR ".join(f"(kind = {kind} AND {column} IN (SELECT value FROM json_each(?)))"
                            for kind, column, _ in groups)  # fmt: skip
        params += [name, *(json.dumps(values) for _, _, values in groups)]
        return f"{_ROWS} AND NOT ({equal})" if groups else f"{_ROWS}"
    selects = []
    for kind, column, values in groups:
        params += [name, json.dumps(values)]
        # Only strings have a text, and without `kind` SQLite picks the (field, text) index.
        narrow = "" if kind == STRING else f" AND kind = {kind}"
        selects.append(f"{_ROWS}{narrow} AND {column} IN (SELECT value FROM json_each(?))")
    if not selects:
        return NONE
    return selects[0] if len(selects) == 1 else f"SELECT iid FROM ({' UNION '.join(selects)})"


def _groups(values: list[Any]) -> list[tuple[int, str, list[Any]]]:
    """The wanted values by the kind of row they can equal: (kind, column, values)."""
    strings = [v for v in values if isinstance(v, str)]
    bools = [int(v) for v in values if isinstance(v, bool)]
    numbers = [_sql_int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]
    found = [(STRING, "text", strings), (BOOL, "num", bools), (NUMBER, "num", numbers)]
    return [group for group in found if group[2]]


def _sql_int(value: int) -> int | float:
    return value if -(2**63) <= value < 2**63 else float(value)  # SQLite integers are 64-bit


_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _range(condition: filters.FieldCondition, name: str, params: list[Any]) -> str:
    """Numbers against bounds read as floats, datetime strings against bounds read as datetimes;
    a bound that cannot be read that way keeps every value of that kind out, as in the reference."""
    assert condition.range is not None
    bounds = condition.range.bounds()
    selects = []
    numeric = {op: _float(v) for op, v in bounds.items()}
    if all(v is not None for v in numeric.values()):
        selects.append(_bounded(NUMBER, numeric, name, params))
    moments = {op: epoch_us(v) for op, v in bounds.items()}
    if all(v is not None for v in moments.values()):
        selects.append(_bounded(STRING, moments, name, params))
    if not selects:
        return NONE
    return selects[0] if len(selects) == 1 else f"SELECT iid FROM ({' UNION '.join(selects)})"


def _bounded(kind: int, bounds: dict[str, Any], name: str, params: list[Any]) -> str:
    params += [name, *bounds.values()]
    return f"{_ROWS} AND kind = {kind}" + "".join(f" AND num {_OPS[op]} ?" for op in bounds)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _geo(condition: filters.FieldCondition, name: str, params: list[Any]) -> str:
    """A bounding box on the (field, kind, num) index, then the exact distance."""
    assert condition.geo_radius is not None
    lat, lon = condition.geo_radius.center.lat, condition.geo_radius.center.lon
    radius = condition.geo_radius.radius
    angle = radius / filters.EARTH_RADIUS_M  # radians of arc
    margin = 1e-6  # degrees (~0.1 m), so rounding never cuts the box short of the exact test
    dlat = math.degrees(angle) + margin
    box = " AND num BETWEEN ? AND ?"
    box_params: list[Any] = [lat - dlat, lat + dlat]
    if lat - dlat > -90 and lat + dlat < 90:  # no pole inside: longitude is bounded too
        dlon = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(math.radians(lat))))) + margin
        if -180 <= lon - dlon and lon + dlon <= 180:  # not across the antimeridian
            box += " AND lon BETWEEN ? AND ?"
            box_params += [lon - dlon, lon + dlon]
    exact = " AND clip_haversine(?, ?, num, lon) <= ?"
    params += [name, *box_params, lat, lon, radius, name, lat, lon, radius]
    return f"SELECT iid FROM ({_ROWS} AND kind = {GEO}{box}{exact} UNION {_ROWS} AND kind = {GEO_ODD}{exact})"
