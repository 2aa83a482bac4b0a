"""Metadata field types: the one place that infers a field's type from values and converts a value to
a type. Catalogs (a column's type from all its values), the write API (a new field's type from the
values of one write) and `--field NAME:TYPE` overrides all go through it.

Types: bool, integer, float, datetime (RFC 3339 in UTC), geo ({"lat", "lon"}), keyword (exact text)
and text (words for keyword search; never inferred). What one value looks like (`kind_of`):
- a JSON/Parquet bool, or `true`/`false` in any case: bool;
- a whole number without leading zeros within 64 bits: integer; a decimal number: float;
- an ISO 8601 date or date-time (`2024-03-01`, `2024-03-01T10:00:00+02:00`), or a date object: datetime;
- a {"lat", "lon"} object in range: geo;
- anything else: keyword. A number with leading zeros (`01234`, a zip code or SKU) is a *code*: it
  makes its whole column a keyword, so no code loses its zeros.
A column's type (`infer`) is the type every value fits (integers mixed with decimals: float). When
all but a minority fit one type (at most one value in ten, `MINORITY`) and none is a code, that type
wins and the values that do not fit are reported (`Inferred.misfits`): one `price` of `cheap` among
prices does not make the column keyword. Otherwise a mix is keyword.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

FieldType = Literal["keyword", "integer", "float", "bool", "datetime", "geo", "text"]
FIELD_TYPES: tuple[str, ...] = ("keyword", "integer", "float", "bool", "datetime", "geo", "text")

MINORITY = 0.1  # the largest share of a column's values that may not fit the type the others have
_CODE = "code"  # what kind_of calls a number with leading zeros
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")  # leading zeros mean a code (zip, SKU): keyword
_LEADING_ZERO = re.compile(r"[+-]?0[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # what converts to a float
_FLOAT_LOOKING = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # infers one
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?)?")
_TRUE, _FALSE = frozenset({"true", "yes", "y", "1"}), frozenset({"false", "no", "n", "0"})
_INT64 = 2**63
# Which kinds of value a type takes without loss, beside its own.
_FITS: dict[str, frozenset[str]] = {"float": frozenset({"float", "integer"})}


def elements(value: Any) -> list[Any]:
    """A list value's elements, else the value alone."""
    return value if isinstance(value, list) else [value]


def kind_of(value: Any) -> str:
    """What one value looks like: bool, integer, float, datetime, geo, keyword, or code (a number
    with leading zeros)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer" if -_INT64 <= value < _INT64 else "float"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "keyword"
    if isinstance(value, (datetime, date)):
        return "datetime"
    if isinstance(value, dict):
        return "geo" if to_geo(value) is not None else "keyword"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return "bool"
        if _LEADING_ZERO.fullmatch(text):
            return _CODE
        if _INT.fullmatch(text):
            return "integer" if -_INT64 <= int(text) < _INT64 else "keyword"
        if _FLOAT_LOOKING.fullmatch(text):
            return "float"
        if _DATE.fullmatch(text) and to_datetime(text) is not None:
            return "datetime"
    return "keyword"


@dataclass
class Inferred:
    """A column's inferred type, and the values that do not fit it (only when a minority forced it)."""

    kind: FieldType
    total: int = 0  # values seen
    misfits: int = 0  # values that do not fit `kind`
    examples: list[tuple[Any, Any]] = field(default_factory=list)  # (where, value) of the first misfits


class TypeTally:
    """Values of one column seen one by one (with where each was), then `infer()`."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self._examples: dict[str, list[tuple[Any, Any]]] = {}  # kind -> the first (where, value) of it

    def add(self, value: Any, where: Any = None) -> None:
        for element in elements(value):
            kind = kind_of(element)
            self.kinds[kind] += 1
            examples = self._examples.setdefault(kind, [])
            if len(examples) < self.EXAMPLES:
                examples.append((where, element))

    def infer(self) -> Inferred:
        total = sum(self.kinds.values())
        kinds = set(self.kinds)
        if not kinds:
            return Inferred("keyword")
        if kinds == {"integer", "float"} or len(kinds) == 1 and _CODE not in kinds and "keyword" not in kinds:
            return Inferred("float" if "float" in kinds else next(iter(kinds)), total)  # type: ignore[arg-type]
        if _CODE in kinds:
            return Inferred("keyword", total)
        best = max(("bool", "integer", "float", "datetime", "geo"), key=lambda t: self._fitting(t))
        fits = self._fitting(best)
        if fits == 0 or (total - fits) > MINORITY * total:
            return Inferred("keyword", total)
        accepted = _FITS.get(best, frozenset({best}))
        misfits = (e for kind, found in self._examples.items() if kind not in accepted for e in found)
        examples = sorted(misfits, key=lambda e: (e[0] is None, e[0] if isinstance(e[0], int) else 0))
        return Inferred(best, total, total - fits, examples[: self.EXAMPLES])  # type: ignore[arg-type]

    def _fitting(self, kind: str) -> int:
        return sum(self.kinds[k] for k in _FITS.get(kind, frozenset({kind})))


def infer_type(value: Any) -> FieldType:
    """The type of a new field from the value(s) of one write (a list: its elements together); a mix
    is keyword, as for a catalog column whose values disagree."""
    tally = TypeTally()
    tally.add(value)
    inferred = tally.infer()
    return inferred.kind if inferred.misfits == 0 else "keyword"


def convert(value: Any, kind: FieldType | str, column: str) -> Any:
    """A value as a value of a field of type `kind` (lists element-wise; None when nothing is left);
    ValueError naming the column and the value when it does not fit."""
    if kind == "text":
        parts = [str(v) for v in elements(value) if v is not None]
        return " ".join(parts) or None
    if isinstance(value, list):
        values = [convert(v, kind, column) for v in value]
        values = [v for v in values if v is not None]
        return values or None
    converted = _CONVERTERS[kind](value)
    if converted is None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"column {column!r}: {shown} is not {article(kind)} {kind}")
    return converted


def article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def _keyword(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value).strip()


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            value = int(text)
        elif _FLOAT.fullmatch(text) and float(text).is_integer():
            value = int(float(text))
    return value if isinstance(value, int) and -_INT64 <= value < _INT64 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    return True if text in _TRUE else False if text in _FALSE else None


def to_datetime(value: Any) -> str | None:
    """RFC 3339 in UTC ("...Z"); a time without a zone is taken as UTC, a date as its midnight."""
    if isinstance(value, str):
        text = value.strip()
        if not _DATE.fullmatch(text):
            return None
        try:
            value = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        return None
    moment = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def to_geo(value: Any) -> dict[str, float] | None:
    """{"lat", "lon"} from such an object or a "lat,lon" string, in range."""
    if isinstance(value, str) and value.count(",") == 1:
        lat_text, lon_text = value.split(",")
        value = {"lat": _float(lat_text), "lon": _float(lon_text)}
    if not isinstance(value, dict) or set(value) != {"lat", "lon"}:
        return None
    lat, lon = _float(value["lat"]), _float(value["lon"])
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"lat": lat, "lon": lon}


_CONVERTERS = {
    "keyword": _keyword, "integer": _integer, "float": _float, "bool": _bool, "datetime": to_datetime,
    "geo": to_geo,
}


def convertible(values: Iterable[Any], kind: FieldType | str, column: str) -> list[str]:
    """The reasons the values that do not convert to `kind` give (empty: every one converts)."""
    reasons = []
    for value in values:
        try:
            convert(value, kind, column)
        except ValueError as exc:
            reasons.append(str(exc))
    return reasons
